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
//! any, has reached one of the confirms seen. (A return waits in lapin's queue for
//! the next confirm to complete; counting the returns ahead of it shows it is taken
//! by the time every publish up to its own has completed, and lapin completes them
//! in the order the driver sees them.) A publish confirmed while an earlier one is
//! still out waits at most [`HOLD`] for it, then is decided on what was seen (a
//! quorum queue failing over must not hold up every later answer on the channel).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
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

/// Returns recorded for no waiting publish kept at most; past this they are dropped.
const STRAY_RETURNS: usize = 10_000;

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
    while open || !ledger.is_empty() {
        let hold = ledger.next_deadline();
        tokio::select! {
            entry = entries.recv(), if open => match entry {
                Some(e) => take(&mut ledger, &mut confirms, e),
                None => open = false,
            },
            done = std::future::poll_fn(|cx| sweep(&mut confirms, cx)) => {
                let now = Instant::now();
                for (seq, confirm) in done {
                    ledger.resolve(seq, confirm, now);
                }
            }
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
        if let Some(done) = std::future::poll_fn(|cx| sweep(&mut confirms, cx)).now_or_never() {
            for (seq, confirm) in done {
                ledger.resolve(seq, confirm, now);
            }
        }
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
    let seq = ledger.push(id, reply);
    confirms.push(Box::pin(async move { (seq, confirm.await) }));
}

/// Every confirm complete now, in the order lapin completed them (the ready queue of
/// `FuturesUnordered` is first in, first out); pending while there is none.
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
    came: Option<(Came, Instant)>,
}

/// The publishes of one channel in delivery tag order, and the returns seen, by
/// message id. Pure: the driver feeds it.
struct Ledger<T> {
    /// The sequence number of `waiting`'s first entry.
    first: u64,
    waiting: VecDeque<Waiting<T>>,
    returned: HashMap<String, u32>,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            first: 0,
            waiting: VecDeque::new(),
            returned: HashMap::new(),
        }
    }
}

impl<T> Ledger<T> {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// A publish made, its confirm to come; its sequence number.
    fn push(&mut self, id: Option<String>, reply: T) -> u64 {
        self.waiting.push_back(Waiting {
            id,
            reply: Some(reply),
            came: None,
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
            self.record_return(id.to_string());
        }
        let Some(i) = seq.checked_sub(self.first) else {
            return;
        };
        if let Some(w) = self.waiting.get_mut(i as usize) {
            w.came = Some((came, now));
        }
    }

    fn record_return(&mut self, id: String) {
        if self.returned.len() >= STRAY_RETURNS {
            tracing::warn!(
                returns = self.returned.len(),
                "returned messages matched no publish waiting on their channel; dropped"
            );
            self.returned.clear();
        }
        *self.returned.entry(id).or_default() += 1;
    }

    /// When the first publish confirmed but held for an earlier one stops waiting.
    fn next_deadline(&self) -> Option<Instant> {
        let mut earlier_out = false;
        let mut next: Option<Instant> = None;
        for w in &self.waiting {
            if w.reply.is_none() {
                continue;
            }
            match &w.came {
                None => earlier_out = true,
                Some((_, at)) if earlier_out => {
                    let until = *at + HOLD;
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
                Some(_) => {}
            }
        }
        next
    }

    /// The publishes that can be told now, with their verdicts: each confirmed one
    /// whose earlier publishes are all confirmed, or that waited [`HOLD`] for them.
    fn decide(&mut self, now: Instant) -> Vec<(T, Outcome)> {
        let mut out = Vec::new();
        let mut earlier_out = false;
        for w in self.waiting.iter_mut() {
            if w.reply.is_none() {
                continue;
            }
            let Some((came, at)) = &w.came else {
                earlier_out = true;
                continue;
            };
            if earlier_out && now < *at + HOLD {
                continue;
            }
            if earlier_out {
                tracing::debug!(
                    id = w.id.as_deref().unwrap_or(""),
                    "a publish decided while an earlier one on its channel waits for its confirm"
                );
            }
            let own_return = w.id.as_ref().is_some_and(|id| {
                let Some(n) = self.returned.get_mut(id) else {
                    return false;
                };
                *n -= 1;
                if *n == 0 {
                    self.returned.remove(id);
                }
                true
            });
            let outcome = match came {
                Came::Failed(e) => Outcome::Failed(e.clone()),
                _ if own_return => Outcome::Returned,
                Came::Ack => Outcome::Acked,
                Came::Nack => Outcome::Nacked,
            };
            out.push((w.reply.take().expect("undecided"), outcome));
        }
        while self.waiting.front().is_some_and(|w| w.reply.is_none()) {
            self.waiting.pop_front();
            self.first += 1;
        }
        if self.waiting.is_empty() && !self.returned.is_empty() {
            tracing::warn!(
                returns = self.returned.len(),
                "returned messages matched no publish waiting on their channel"
            );
            self.returned.clear();
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

    fn ledger(ids: &[&str]) -> Ledger<&'static str> {
        let mut l = Ledger::default();
        for id in ids {
            let label: &'static str = Box::leak(id.to_string().into_boxed_str());
            l.push(Some(id.to_string()), label);
        }
        l
    }

    #[test]
    fn a_return_carried_by_another_publish_is_its_owners() {
        // routed, then unroutable: the routed one's ack completed first, with the
        // unroutable one's return; the unroutable one's ack came bare.
        let now = Instant::now();
        let mut l = ledger(&["routed", "unroutable"]);
        l.resolve(0, Ok(Confirmation::Ack(returning("unroutable"))), now);
        l.resolve(1, Ok(Confirmation::Ack(None)), now);
        let got = l.decide(now);
        assert!(matches!(got[0], ("routed", Outcome::Acked)), "{got:?}");
        assert!(
            matches!(got[1], ("unroutable", Outcome::Returned)),
            "{got:?}"
        );
        assert!(l.is_empty() && l.returned.is_empty());
    }

    #[test]
    fn a_publish_confirmed_first_waits_for_an_earlier_ones_confirm() {
        // The later publish's bare ack is seen before the earlier one's, which
        // carries the later one's return.
        let now = Instant::now();
        let mut l = ledger(&["a", "b"]);
        l.resolve(1, Ok(Confirmation::Ack(None)), now);
        assert!(l.decide(now).is_empty(), "b waits for a");
        assert_eq!(l.next_deadline(), Some(now + HOLD));
        l.resolve(0, Ok(Confirmation::Ack(returning("b"))), now);
        let got = l.decide(now);
        assert!(matches!(got[0], ("a", Outcome::Acked)), "{got:?}");
        assert!(matches!(got[1], ("b", Outcome::Returned)), "{got:?}");
    }

    #[test]
    fn a_held_publish_is_decided_after_the_hold() {
        let now = Instant::now();
        let mut l = ledger(&["a", "b", "c"]);
        l.resolve(1, Ok(Confirmation::Nack(None)), now);
        l.resolve(
            2,
            Err(lapin::ErrorKind::InvalidChannelState(
                lapin::ChannelState::Closed,
                "basic.publish",
            )
            .into()),
            now,
        );
        assert!(l.decide(now + HOLD / 2).is_empty());
        let got = l.decide(now + HOLD);
        assert!(matches!(got[0], ("b", Outcome::Nacked)), "{got:?}");
        assert!(matches!(got[1], ("c", Outcome::Failed(_))), "{got:?}");
        assert!(!l.is_empty(), "a still waits");
        assert_eq!(l.next_deadline(), None);
        l.resolve(0, Ok(Confirmation::Ack(None)), now + HOLD);
        assert!(matches!(l.decide(now + HOLD)[..], [("a", Outcome::Acked)]));
        assert!(l.is_empty());
    }

    #[test]
    fn returns_swapped_between_two_unroutable_publishes_return_both() {
        let now = Instant::now();
        let mut l = ledger(&["x", "x", "y"]);
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
    fn a_stray_return_is_dropped_once_the_channel_has_nothing_waiting() {
        let now = Instant::now();
        let mut l = ledger(&["a"]);
        l.resolve(0, Ok(Confirmation::Ack(returning("gone"))), now);
        assert!(matches!(l.decide(now)[..], [("a", Outcome::Acked)]));
        assert!(l.returned.is_empty());
    }
}
