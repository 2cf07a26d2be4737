//! Publisher confirms matched to their own publishes' returns.
//!
//! Why: lapin (4.12) hands a `basic.return` to whichever publisher confirm on the
//! channel completes next, not to the publish it returns, and completes the tags of a
//! multiple ack in `HashMap` order. RabbitMQ sends a message's return before its ack,
//! but the ack of an earlier publish (a quorum queue's, confirmed a moment later) or a
//! multiple ack can come in between. A routed publish was then answered `no_route`
//! while RabbitMQ stored it, and the unroutable one beside it was acked: lost in
//! silence (reproduced: 53–74 of 3,000 each way, two clients on one channel).
//!
//! How: every publish on a gateway publisher channel goes through its [`Publisher`],
//! whose driver task holds the channel's confirms in publish (delivery tag) order.
//! Each return a confirm carries is recorded by its `message_id` (every gateway
//! publish that can be returned has one), and a publish is decided only once it and
//! every earlier publish on the channel are confirmed: by then its own return, if
//! any, has reached one of the confirms completed. (A return waits in lapin's queue
//! for the next confirm to complete; counting the returns ahead of it shows it is
//! taken by the time every publish up to its own has completed.) So before deciding,
//! the driver records every confirm completed so far ([`settle`]), under the lock
//! that publishes hold from taking their tag until they reach the driver. A publish
//! whose own return was seen is told at once. One confirmed while an earlier one is
//! still out waits at most [`HOLD`] for it, then is decided on what was seen (a
//! quorum queue failing over must not hold up every later answer on the channel),
//! and a publish without a confirm for [`STUCK`] no longer holds up later ones.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::inbound::Outcome;

/// How long a confirmed publish waits for the confirms of earlier publishes on its
/// channel before it is decided without them. Confirms come within milliseconds
/// unless RabbitMQ is failing a queue over or blocking publishes.
pub const HOLD: Duration = Duration::from_secs(1);

/// A confirm-mode channel and the task that matches its confirms to their returns.
/// Every publish on the channel must go through [`Publisher::publish`]: a confirm
/// awaited elsewhere could take another publish's return.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// Held while a publish takes its delivery tag and enters the driver's order.
    order: Arc<Mutex<mpsc::UnboundedSender<Entry>>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("channel", &self.channel.id())
            .finish()
    }
}

struct Entry {
    id: Option<String>,
    confirm: BoxFuture<'static, lapin::Result<Confirmation>>,
    reply: oneshot::Sender<Outcome>,
}

impl Publisher {
    /// Wraps `channel`, in confirm mode, and starts its driver (which ends once every
    /// clone is dropped and every publish decided).
    pub fn new(channel: Channel) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let order = Arc::new(Mutex::new(tx));
        tokio::spawn(drive(rx, Arc::downgrade(&order)));
        Publisher { channel, order }
    }

    /// The channel (to close it, or to tell it from another).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes `body` and returns at once, the publish handed to lapin (publishes go
    /// out in the order of these calls), with its verdict to come.
    ///
    /// # Errors
    /// When the channel cannot take the publish (closed).
    pub(crate) async fn publish(
        &self,
        exchange: ShortString,
        key: ShortString,
        options: BasicPublishOptions,
        body: Vec<u8>,
        properties: BasicProperties,
    ) -> lapin::Result<Confirm> {
        let id = properties.message_id().as_ref().map(|s| s.to_string());
        let on = self.channel.clone();
        let mut confirm: Option<BoxFuture<'static, lapin::Result<Confirmation>>> =
            Some(Box::pin(async move {
                on.basic_publish(exchange, key, options, &body, properties)
                    .await?
                    .await
            }));
        let (reply, verdict) = oneshot::channel();
        let mut entry = Some((id, reply));
        std::future::poll_fn(|cx| {
            // The first poll takes the delivery tag and queues the frames; the lock
            // keeps the driver's order that of the tags.
            let order = self.order.lock().unwrap_or_else(|e| e.into_inner());
            let mut c = confirm.take().expect("polled once");
            let confirm = match c.as_mut().poll(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(done) => Box::pin(std::future::ready(done)),
                Poll::Pending => c,
            };
            let (id, reply) = entry.take().expect("polled once");
            let _ = order.send(Entry { id, confirm, reply });
            Poll::Ready(Ok(()))
        })
        .await?;
        Ok(Confirm(verdict))
    }
}

/// The verdict on one publish: [`Outcome::Acked`], `Returned`, `Nacked` or `Failed`.
pub(crate) struct Confirm(oneshot::Receiver<Outcome>);

impl Future for Confirm {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| Outcome::Failed("the channel's confirms were dropped".into()))
        })
    }
}

/// The driver of one channel: takes publishes in order, records their confirms as
/// they complete and sends each verdict once [`Ledger::decide`] can tell it.
///
/// Before it decides, it takes `order` (held by a publish from taking its delivery
/// tag until it is queued here), so that every publish made by then is in the ledger
/// and every confirm complete by then is recorded: a confirm can complete before its
/// publish reaches the driver, and it may carry an earlier publish's return.
async fn drive(
    mut entries: mpsc::UnboundedReceiver<Entry>,
    order: std::sync::Weak<Mutex<mpsc::UnboundedSender<Entry>>>,
) {
    let mut ledger: Ledger<oneshot::Sender<Outcome>> = Ledger::default();
    let mut confirms = FuturesUnordered::new();
    let mut open = true;
    let mut completed = Vec::new();
    while open || !ledger.is_empty() {
        let hold = ledger.next_deadline();
        tokio::select! {
            entry = entries.recv(), if open => match entry {
                Some(e) => take(&mut ledger, &mut confirms, e),
                None => open = false,
            },
            // Recorded below, once every publish made by now is in the ledger: a
            // return is kept for the publishes made before it was seen.
            done = std::future::poll_fn(|cx| sweep(&mut confirms, cx)) => completed = done,
            () = tokio::time::sleep_until(hold.unwrap_or_else(Instant::now)), if hold.is_some() => {}
        }
        let order = order.upgrade();
        let _publishing = order
            .as_ref()
            .map(|o| o.lock().unwrap_or_else(|e| e.into_inner()));
        while let Ok(e) = entries.try_recv() {
            take(&mut ledger, &mut confirms, e);
        }
        let now = Instant::now();
        for (seq, confirm) in completed.drain(..) {
            ledger.resolve(seq, confirm, now);
        }
        settle(&mut confirms, &mut ledger, now);
        for (reply, outcome) in ledger.decide(now) {
            let _ = reply.send(outcome);
        }
    }
}

type Confirming = BoxFuture<'static, (u64, lapin::Result<Confirmation>)>;

/// Enters publish `e` in the ledger and its confirm among those awaited.
fn take(
    ledger: &mut Ledger<oneshot::Sender<Outcome>>,
    confirms: &mut FuturesUnordered<Confirming>,
    e: Entry,
) {
    let Entry { id, confirm, reply } = e;
    let seq = ledger.push(id, reply, Instant::now());
    confirms.push(Box::pin(async move { (seq, confirm.await) }));
}

/// Some confirms complete now; pending while there is none. (`FuturesUnordered` may
/// also yield with some still to poll: [`settle`] is the sweep that misses none.)
fn sweep<F>(confirms: &mut FuturesUnordered<F>, cx: &mut Context<'_>) -> Poll<Vec<F::Output>>
where
    F: Future,
{
    let mut done = Vec::new();
    while let Poll::Ready(Some(c)) = confirms.poll_next_unpin(cx) {
        done.push(c);
    }
    if done.is_empty() {
        Poll::Pending
    } else {
        Poll::Ready(done)
    }
}

/// Records every confirm complete by now. `FuturesUnordered` answers pending also
/// when it yields (it wakes itself first) with confirms still to poll; a waker that
/// notes being woken tells the two apart, and the sweep goes on until a poll left
/// nothing ready and nothing woke it meanwhile.
fn settle(
    confirms: &mut FuturesUnordered<Confirming>,
    ledger: &mut Ledger<oneshot::Sender<Outcome>>,
    now: Instant,
) {
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = std::task::Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        woken.0.store(false, Ordering::SeqCst);
        match confirms.poll_next_unpin(&mut cx) {
            Poll::Ready(Some((seq, confirm))) => ledger.resolve(seq, confirm, now),
            Poll::Ready(None) => return,
            Poll::Pending if woken.0.load(Ordering::SeqCst) => {}
            Poll::Pending => return,
        }
    }
}

/// A waker that only notes that it was woken.
struct Woken(AtomicBool);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How a confirm came, its carried return set aside.
#[derive(Debug, Clone, PartialEq)]
enum Came {
    Ack,
    Nack,
    Failed(String),
}

struct Waiting<T> {
    id: Option<String>,
    /// Taken when decided.
    reply: Option<T>,
    came: Option<Came>,
    published: Instant,
}

/// The publishes of one channel in delivery tag order, and the returns seen, by
/// message id. Pure: the driver feeds it.
struct Ledger<T> {
    /// The sequence number of `waiting`'s first entry.
    first: u64,
    /// From the first undecided publish on.
    waiting: VecDeque<Waiting<T>>,
    /// The first publish not confirmed yet: every one before is confirmed, decided or
    /// given up waiting for ([`STUCK`]).
    next: u64,
    /// Publishes confirmed while an earlier one was out, with when they stop waiting.
    held: VecDeque<(Instant, u64)>,
    /// Publishes whose confirm was given up waiting for, decided when it comes.
    stuck: HashMap<u64, (Option<String>, T)>,
    /// Verdicts of stuck publishes whose confirm came.
    late: Vec<(T, Outcome)>,
    /// Returns seen and not yet matched, by message id: for each, the sequence number
    /// before which its publish was made (the publishes made when it was seen).
    returned: HashMap<String, VecDeque<u64>>,
    /// The same returns in the order seen, to drop those whose publish was decided
    /// without them.
    seen: VecDeque<(u64, String)>,
}

/// How long a publish without a confirm holds up the verdicts of later ones before it
/// is set aside (and decided when its confirm comes). Callers give up sooner
/// ([`crate::inbound::CONFIRM_WAIT`]) and take the channel out of use; this bounds what
/// a confirm that never comes costs the channel.
const STUCK: Duration = Duration::from_secs(60);

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            first: 0,
            waiting: VecDeque::new(),
            next: 0,
            held: VecDeque::new(),
            stuck: HashMap::new(),
            late: Vec::new(),
            returned: HashMap::new(),
            seen: VecDeque::new(),
        }
    }
}

impl<T> Ledger<T> {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.stuck.is_empty() && self.late.is_empty()
    }

    /// A publish made at `now`, its confirm to come; its sequence number.
    fn push(&mut self, id: Option<String>, reply: T, now: Instant) -> u64 {
        self.waiting.push_back(Waiting {
            id,
            reply: Some(reply),
            came: None,
            published: now,
        });
        self.first + self.waiting.len() as u64 - 1
    }

    /// Publish `seq`'s confirm came (at `now`); a return it carries, whoever's, is
    /// recorded by its message id.
    fn resolve(&mut self, seq: u64, confirm: lapin::Result<Confirmation>, now: Instant) {
        let (came, carried) = match confirm {
            Ok(Confirmation::Ack(r)) => (Came::Ack, r),
            Ok(Confirmation::NotRequested) => (Came::Ack, None),
            Ok(Confirmation::Nack(r)) => (Came::Nack, r),
            Err(e) => (Came::Failed(e.to_string()), None),
        };
        if let Some(id) = carried.and_then(|r| r.delivery.properties.message_id().clone()) {
            let before = self.first + self.waiting.len() as u64;
            self.returned
                .entry(id.to_string())
                .or_default()
                .push_back(before);
            self.seen.push_back((before, id.to_string()));
        }
        if let Some((id, reply)) = self.stuck.remove(&seq) {
            let outcome = self.verdict(id.as_deref(), &came);
            self.late.push((reply, outcome));
            return;
        }
        let Some(w) = seq
            .checked_sub(self.first)
            .and_then(|i| self.waiting.get_mut(i as usize))
        else {
            return;
        };
        w.came = Some(came);
        if seq > self.next {
            self.held.push_back((now + HOLD, seq));
        }
    }

    /// Takes a return seen for `id`, if any.
    fn take_return(&mut self, id: &str) -> bool {
        let Some(bounds) = self.returned.get_mut(id) else {
            return false;
        };
        bounds.pop_front();
        if bounds.is_empty() {
            self.returned.remove(id);
        }
        true
    }

    fn verdict(&mut self, id: Option<&str>, came: &Came) -> Outcome {
        let own_return = id.is_some_and(|id| self.take_return(id));
        match came {
            Came::Failed(e) => Outcome::Failed(e.clone()),
            _ if own_return => Outcome::Returned,
            Came::Ack => Outcome::Acked,
            Came::Nack => Outcome::Nacked,
        }
    }

    /// When the first publish held for an earlier one, or the first one without a
    /// confirm, stops waiting.
    fn next_deadline(&self) -> Option<Instant> {
        let held = self.held.front().map(|(at, _)| *at);
        let stuck = self
            .next
            .checked_sub(self.first)
            .and_then(|i| self.waiting.get(i as usize))
            .map(|w| w.published + STUCK);
        match (held, stuck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Decides publish `i` (an index in `waiting`), confirmed, unless it was already.
    fn decide_at(&mut self, i: usize, out: &mut Vec<(T, Outcome)>) {
        let Some(w) = self.waiting.get_mut(i) else {
            return;
        };
        let Some(came) = w.came.clone() else {
            return;
        };
        let Some(reply) = w.reply.take() else {
            return;
        };
        let id = w.id.take();
        out.push((reply, self.verdict(id.as_deref(), &came)));
    }

    /// The publishes that can be told now, with their verdicts: each confirmed one
    /// whose earlier publishes are all confirmed, each whose own return was seen, and
    /// each that waited [`HOLD`] for an earlier one.
    fn decide(&mut self, now: Instant) -> Vec<(T, Outcome)> {
        let mut out = std::mem::take(&mut self.late);
        // In order, up to the first publish not confirmed.
        while let Some(i) = self.next.checked_sub(self.first).map(|i| i as usize) {
            let Some(w) = self.waiting.get_mut(i) else {
                break;
            };
            if w.came.is_some() {
                self.decide_at(i, &mut out);
            } else if now >= w.published + STUCK {
                tracing::warn!(
                    id = w.id.as_deref().unwrap_or(""),
                    "a publish got no confirm in {} s; later publishes on its channel no \
                     longer wait for it",
                    STUCK.as_secs()
                );
                let id = w.id.take();
                let reply = w.reply.take().expect("undecided until confirmed");
                // Decided here: its verdict is sent when its confirm comes.
                w.came = Some(Came::Ack);
                self.stuck.insert(self.next, (id, reply));
            } else {
                break;
            }
            self.next += 1;
        }
        // Held ones: their own return seen, or waited long enough.
        let mut still = VecDeque::with_capacity(self.held.len());
        while let Some((until, seq)) = self.held.pop_front() {
            let Some(i) = seq.checked_sub(self.first).map(|i| i as usize) else {
                continue;
            };
            let Some(w) = self.waiting.get(i) else {
                continue;
            };
            if w.reply.is_none() {
                continue;
            }
            let own_return =
                w.id.as_ref()
                    .is_some_and(|id| self.returned.contains_key(id));
            if own_return || now >= until {
                if !own_return {
                    tracing::debug!(
                        id = w.id.as_deref().unwrap_or(""),
                        "a publish decided while an earlier one on its channel waits for its confirm"
                    );
                }
                self.decide_at(i, &mut out);
            } else {
                still.push_back((until, seq));
            }
        }
        self.held = still;
        while self.waiting.front().is_some_and(|w| w.reply.is_none()) {
            self.waiting.pop_front();
            self.first += 1;
        }
        // Returns whose publish can only have been one decided already.
        let undecided = self.stuck.keys().copied().fold(self.first, u64::min);
        while let Some((before, _)) = self.seen.front() {
            if *before > undecided {
                break;
            }
            let (before, id) = self.seen.pop_front().expect("front");
            if self.returned.get(&id).and_then(VecDeque::front) == Some(&before) {
                tracing::warn!(
                    id,
                    "a returned message matched no publish waiting on its channel"
                );
                self.take_return(&id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::message::BasicReturnMessage;

    fn returning(id: &str) -> Option<BasicReturnMessage> {
        let mut m = BasicReturnMessage {
            delivery: lapin::message::Delivery::mock(0, "".into(), "".into(), false, Vec::new()),
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        };
        m.delivery.properties = BasicProperties::default().with_message_id(id.into());
        Some(m)
    }

    fn ledger(ids: &[&str], now: Instant) -> Ledger<&'static str> {
        let mut l = Ledger::default();
        for id in ids {
            let label: &'static str = Box::leak(id.to_string().into_boxed_str());
            l.push(Some(id.to_string()), label, now);
        }
        l
    }

    #[test]
    fn a_return_carried_by_another_publish_is_its_owners() {
        // routed, then unroutable: the routed one's ack completed first, with the
        // unroutable one's return; the unroutable one's ack came bare.
        let now = Instant::now();
        let mut l = ledger(&["routed", "unroutable"], now);
        l.resolve(0, Ok(Confirmation::Ack(returning("unroutable"))), now);
        l.resolve(1, Ok(Confirmation::Ack(None)), now);
        let got = l.decide(now);
        assert!(matches!(got[0], ("routed", Outcome::Acked)), "{got:?}");
        assert!(
            matches!(got[1], ("unroutable", Outcome::Returned)),
            "{got:?}"
        );
        assert!(l.is_empty() && l.returned.is_empty() && l.seen.is_empty());
    }

    #[test]
    fn a_publish_confirmed_first_waits_for_an_earlier_ones_confirm() {
        // The later publish's bare ack is seen before the earlier one's, which
        // carries the later one's return.
        let now = Instant::now();
        let mut l = ledger(&["a", "b"], now);
        l.resolve(1, Ok(Confirmation::Ack(None)), now);
        assert!(l.decide(now).is_empty(), "b waits for a");
        assert_eq!(l.next_deadline(), Some(now + HOLD));
        l.resolve(0, Ok(Confirmation::Ack(returning("b"))), now);
        let got = l.decide(now);
        assert!(matches!(got[0], ("a", Outcome::Acked)), "{got:?}");
        assert!(matches!(got[1], ("b", Outcome::Returned)), "{got:?}");
    }

    #[test]
    fn a_publish_whose_own_return_was_seen_is_told_at_once() {
        let now = Instant::now();
        let mut l = ledger(&["a", "b"], now);
        l.resolve(1, Ok(Confirmation::Ack(returning("b"))), now);
        assert!(matches!(l.decide(now)[..], [("b", Outcome::Returned)]));
        l.resolve(0, Ok(Confirmation::Ack(None)), now);
        assert!(matches!(l.decide(now)[..], [("a", Outcome::Acked)]));
        assert!(l.is_empty());
    }

    #[test]
    fn a_held_publish_is_decided_after_the_hold() {
        let now = Instant::now();
        let mut l = ledger(&["a", "b", "c"], now);
        l.resolve(1, Ok(Confirmation::Nack(None)), now);
        let closed =
            lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, "basic.publish");
        l.resolve(2, Err(closed.into()), now);
        assert!(l.decide(now + HOLD / 2).is_empty());
        let got = l.decide(now + HOLD);
        assert!(matches!(got[0], ("b", Outcome::Nacked)), "{got:?}");
        assert!(matches!(got[1], ("c", Outcome::Failed(_))), "{got:?}");
        assert!(!l.is_empty(), "a still waits");
        assert_eq!(l.next_deadline(), Some(now + STUCK));
        l.resolve(0, Ok(Confirmation::Ack(None)), now + HOLD);
        assert!(matches!(l.decide(now + HOLD)[..], [("a", Outcome::Acked)]));
        assert!(l.is_empty());
    }

    #[test]
    fn a_publish_without_a_confirm_is_set_aside_and_told_when_it_comes() {
        let now = Instant::now();
        let mut l = ledger(&["a", "b"], now);
        l.resolve(1, Ok(Confirmation::Ack(None)), now);
        let later = now + STUCK;
        let got = l.decide(later);
        assert!(matches!(got[..], [("b", Outcome::Acked)]), "{got:?}");
        assert!(l.waiting.is_empty(), "nothing waits behind a");
        assert_eq!(l.next_deadline(), None);
        l.resolve(0, Ok(Confirmation::Ack(returning("a"))), later);
        assert!(matches!(l.decide(later)[..], [("a", Outcome::Returned)]));
        assert!(l.is_empty());
    }

    #[test]
    fn a_return_for_a_publish_set_aside_is_kept_for_it() {
        let now = Instant::now();
        let later = now + STUCK;
        let mut l = ledger(&["a", "b"], now);
        assert!(l.decide(later).is_empty(), "a set aside");
        l.resolve(1, Ok(Confirmation::Ack(returning("a"))), later);
        assert!(matches!(l.decide(later)[..], [("b", Outcome::Acked)]));
        l.resolve(0, Ok(Confirmation::Ack(None)), later);
        assert!(matches!(l.decide(later)[..], [("a", Outcome::Returned)]));
        assert!(l.is_empty() && l.returned.is_empty());
    }

    #[test]
    fn returns_swapped_between_two_unroutable_publishes_return_both() {
        let now = Instant::now();
        let mut l = ledger(&["x", "x", "y"], now);
        l.resolve(2, Ok(Confirmation::Ack(returning("x"))), now);
        l.resolve(0, Ok(Confirmation::Ack(returning("y"))), now);
        l.resolve(1, Ok(Confirmation::Ack(None)), now);
        let got = l.decide(now);
        // Two publishes with one id (a client's retry): one return, one of them.
        assert!(matches!(got[0], ("x", Outcome::Returned)), "{got:?}");
        assert!(matches!(got[1], ("x", Outcome::Acked)), "{got:?}");
        assert!(matches!(got[2], ("y", Outcome::Returned)), "{got:?}");
    }

    #[test]
    fn a_stray_return_is_dropped_once_every_publish_before_it_is_decided() {
        let now = Instant::now();
        let mut l = ledger(&["a", "b"], now);
        l.resolve(0, Ok(Confirmation::Ack(returning("gone"))), now);
        assert!(matches!(l.decide(now)[..], [("a", Outcome::Acked)]));
        assert!(!l.returned.is_empty(), "b may still be its publish");
        l.resolve(1, Ok(Confirmation::Ack(None)), now);
        assert!(matches!(l.decide(now)[..], [("b", Outcome::Acked)]));
        assert!(l.returned.is_empty() && l.seen.is_empty());
    }
}
