//! Stream readers shared by the sessions that resume from positions older than the
//! hub's ring.
//!
//! Without them, a storm of resumes from before the ring (clients back after a long
//! absence, or a gateway with a small ring) would open one RabbitMQ stream consumer per
//! session. Here a session behind the ring joins a [`Replay`] whose window holds its
//! position — or one that is about to read it — and only when none does is a new
//! replay (one consumer) started at its position. Each replay reads the stream once
//! into a bounded window ([`Window`]); every session takes the messages at or after its
//! own cursor at its own pace. The window keeps what it read, like the hub's ring, so
//! sessions that resume a little later join it too; when it is full, the messages
//! every session has passed make room. When the window stays full for [`STALL`] and
//! its slowest session took nothing in that time, or less than half a window while
//! another waited at the window's end for more ([`Period`]), the replay drops the
//! older half anyway: sessions left behind get
//! [`Taken::Behind`] and read on with a reader of their own ([`crate::hub::Reader`]),
//! so one slow client cannot hold the others back. A session leaves its replay when it
//! reaches the ring, as before; a replay with no session left stops.
//!
//! Every such reader, shared or a session's own, holds one of the gateway's
//! `max_stream_readers` slots ([`ReaderSlots`]) while it is open: each is an AMQP
//! channel on the consuming connection and up to a window of memory, and sessions
//! name their positions, so without a bound a storm of resumes from scattered old
//! positions could take every channel RabbitMQ allows that connection. A reader that
//! finds none free waits for one; its sessions' connections are served meanwhile.
//!
//! [`Window`] is pure and unit-tested without a broker.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::broker::Broker;
use crate::hub::Message;
use crate::metrics::{self, Metrics};

/// Messages a replay's window holds at most.
pub const WINDOW_MESSAGES: usize = 2048;
/// Bytes (roughly, [`Message::size`]) a replay's window holds at most.
pub const WINDOW_BYTES: usize = 16 * 1024 * 1024;
/// The period over which a full window watches its slowest session before dropping
/// its oldest half ([`Period`]).
pub const STALL: Duration = Duration::from_secs(1);
/// Unacknowledged messages a replay's consumer may hold; it acknowledges (for credit)
/// every half of it.
const PREFETCH: u16 = 1000;

/// What a session gets from its replay.
#[derive(Debug)]
pub enum Taken {
    /// Its next message (at or after its cursor).
    Message(Arc<Message>),
    /// Nothing yet.
    Wait,
    /// The window dropped messages it still needed: read on from this position with
    /// a reader of its own.
    Behind(u64),
    /// The replay's consumer failed.
    Failed,
}

/// A replay's window over the stream: the messages read, where reading goes on, and
/// each session's cursor. Pure.
#[derive(Debug)]
pub struct Window {
    messages: VecDeque<Arc<Message>>,
    /// Every message the stream holds from here up to `next` is in `messages`.
    base: u64,
    /// The position after the newest message read (where the replay started, before).
    next: u64,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// Each session's next position.
    cursors: HashMap<u64, u64>,
    failed: bool,
    /// The replay stopped: nobody may join.
    closed: bool,
}

impl Window {
    /// A window starting at position `start`.
    pub fn new(start: u64, max_messages: usize, max_bytes: usize) -> Window {
        Window {
            messages: VecDeque::new(),
            base: start,
            next: start,
            bytes: 0,
            max_messages: max_messages.max(1),
            max_bytes,
            cursors: HashMap::new(),
            failed: false,
            closed: false,
        }
    }

    /// Adds session `id` reading from `from`, if this window can serve it: it holds
    /// `from`, or will read it within half a window.
    pub fn join(&mut self, id: u64, from: u64) -> bool {
        let near = self.next.saturating_add(self.max_messages as u64 / 2);
        if self.closed || self.failed || from < self.base || from > near {
            return false;
        }
        self.cursors.insert(id, from);
        true
    }

    /// Removes session `id`.
    pub fn leave(&mut self, id: u64) {
        self.cursors.remove(&id);
    }

    /// Sessions reading from this window.
    pub fn sessions(&self) -> usize {
        self.cursors.len()
    }

    /// Whether no session needs what the replay would read next: none reads from it,
    /// or every one was left behind by [`Window::stalled`] (each reads on with a
    /// reader of its own once it takes again). A window whose only sessions were left
    /// behind is never full ([`Window::full`] does not count them), so without this
    /// its reader would read the stream to its tail and follow it for as long as a
    /// client that stopped reading stayed connected.
    pub fn idle(&self) -> bool {
        self.cursors.values().all(|&c| c < self.base)
    }

    /// Where the replay reads next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The next message of session `id` at or after its cursor.
    pub fn take(&mut self, id: u64) -> Taken {
        let Some(&cursor) = self.cursors.get(&id) else {
            return Taken::Failed;
        };
        if cursor < self.base {
            return Taken::Behind(cursor);
        }
        let at = self.messages.partition_point(|m| m.offset < cursor);
        match self.messages.get(at) {
            Some(m) => {
                let m = m.clone();
                self.cursors.insert(id, m.offset + 1);
                Taken::Message(m)
            }
            None if self.failed => Taken::Failed,
            None => Taken::Wait,
        }
    }

    /// Adds a message the replay read; one below where it reads is skipped (a stream
    /// consumer may start at the beginning of the chunk holding its offset: the
    /// stream protocol's do; RabbitMQ 3.10.8 was measured starting an AMQP consumer
    /// at the offset itself, so this is a guard).
    ///
    /// One past where it reads is taken as it comes: retention may have deleted the
    /// segments ahead of a slow replay, which then goes on at the first one kept.
    /// Each session takes every message in order, so its next take after the jump
    /// tells it what it missed ([`crate::session_core::Positions::read`] checks
    /// every message against the session's position), as the first message of a
    /// replay started past retention does.
    pub fn push(&mut self, m: Arc<Message>) {
        if m.offset < self.next {
            return;
        }
        self.next = m.offset + 1;
        self.bytes += m.size();
        self.messages.push_back(m);
    }

    /// Whether the window has no room for another message, once the messages every
    /// session has passed made what room they can.
    pub fn full(&mut self) -> bool {
        // Sessions the window already left behind hold nothing back.
        let slowest = self.slowest();
        while self.at_capacity() && self.messages.front().is_some_and(|m| m.offset < slowest) {
            self.drop_oldest();
        }
        self.at_capacity()
    }

    fn at_capacity(&self) -> bool {
        self.messages.len() >= self.max_messages || self.bytes >= self.max_bytes
    }

    /// Drops the oldest message.
    fn drop_oldest(&mut self) {
        if let Some(m) = self.messages.pop_front() {
            self.base = m.offset + 1;
            self.bytes -= m.size();
        }
    }

    /// Whether a session has taken everything the window read and waits for more: with
    /// the window full, the slowest session holds it back.
    pub fn holds_back(&self) -> bool {
        self.cursors.values().any(|&c| c >= self.next)
    }

    /// Messages it holds.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// The slowest cursor of the sessions not left behind (where the replay reads
    /// next when there are none).
    pub fn slowest(&self) -> u64 {
        (self.cursors.values().copied())
            .filter(|&c| c >= self.base)
            .min()
            .unwrap_or(self.next)
    }

    /// The window stayed full for [`STALL`]: drops its older half though sessions
    /// still need it. They get [`Taken::Behind`] and no longer hold the window.
    pub fn stalled(&mut self) {
        for _ in 0..self.messages.len().div_ceil(2) {
            self.drop_oldest();
        }
    }

    /// The consumer failed: sessions get what was read, then [`Taken::Failed`].
    pub fn fail(&mut self) {
        self.failed = true;
    }
}

/// A period of [`STALL`] over which a reader watches its full window, from the first
/// time it found it full: at its end the window drops its older half when its
/// slowest session holds the others back ([`Period::holds_back`]). Pure.
#[derive(Debug, Clone, Copy)]
pub struct Period {
    /// When it began.
    pub start: tokio::time::Instant,
    /// The slowest cursor then ([`Window::slowest`]).
    pub slowest: u64,
    /// Whether a session waited at the window's end in it ([`Window::holds_back`]).
    pub held: bool,
}

impl Period {
    /// Whether the slowest session, now at `slowest`, held the others back over the
    /// period: it took nothing, or less than `half` a window while another waited at
    /// the end for more. (A slowest session taking a little every second held the
    /// others to its pace: only one that took nothing at all was left behind.)
    pub fn holds_back(&self, slowest: u64, half: u64) -> bool {
        let progress = slowest.saturating_sub(self.slowest);
        progress == 0 || (self.held && progress < half)
    }
}

/// The gateway's slots for stream readers behind a ring (`max_stream_readers`),
/// shared by every stream's replays and the sessions' own readers; and each user's
/// share of the sessions reading behind a ring (`max_stream_readers_per_user`).
///
/// A session holds a [`Share`] of its user while it reads behind a ring (in a
/// replay, or with a reader of its own), and each reader holds a [`Slot`]. A reader
/// is opened for a session that holds a share (a replay by the first session that
/// needs it), so one user's sessions open at most their share of the slots: a user's
/// sessions resuming from scattered old positions and reading slowly could otherwise
/// hold every slot, and every other user's resume would wait.
#[derive(Debug)]
pub struct ReaderSlots {
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    shares: Arc<Shares>,
}

/// Sessions reading behind a ring, per user.
#[derive(Debug)]
struct Shares {
    per_user: usize,
    held: Mutex<HashMap<Arc<str>, usize>>,
    /// A share was given back: sessions waiting for one look again.
    freed: Notify,
}

/// One of a user's `max_stream_readers_per_user`, held by a session while it reads
/// behind a ring; given back when dropped.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
    user: Arc<str>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.user);
            }
        }
        drop(held);
        self.shares.freed.notify_waiters();
    }
}

impl ReaderSlots {
    /// `max` slots (at least one), `per_user` shares for each user (at least one).
    pub fn new(max: usize, per_user: usize, metrics: Arc<Metrics>) -> Arc<ReaderSlots> {
        Arc::new(ReaderSlots {
            slots: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            metrics,
            shares: Arc::new(Shares {
                per_user: per_user.max(1),
                held: Mutex::new(HashMap::new()),
                freed: Notify::new(),
            }),
        })
    }

    /// One of `user`'s shares, if one is free now.
    pub fn try_share(&self, user: &Arc<str>) -> Option<Share> {
        let mut held = self.shares.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(user.clone()).or_default();
        if *n >= self.shares.per_user {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self.shares.clone(),
            user: user.clone(),
        })
    }

    /// One of `user`'s shares, once one is free (counted in
    /// `stream_reader_waits_total`). Cancel-safe: dropped while waiting, it holds
    /// nothing.
    pub fn share(
        self: &Arc<Self>,
        user: Arc<str>,
    ) -> impl std::future::Future<Output = Share> + Send + 'static {
        let me = self.clone();
        async move {
            metrics::add(&me.metrics.stream_reader_waits, 1);
            loop {
                // Created before looking, so a share given back meanwhile wakes it.
                let freed = me.shares.freed.notified();
                if let Some(share) = me.try_share(&user) {
                    return share;
                }
                freed.await;
            }
        }
    }

    /// A slot, once one is free (first come, first served).
    pub async fn take(&self) -> Slot {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                metrics::add(&self.metrics.stream_reader_waits, 1);
                // Never closed, so `None` is never seen.
                self.slots.clone().acquire_owned().await.ok()
            }
        };
        self.metrics
            .stream_readers_open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
        }
    }
}

/// One of [`ReaderSlots`], held by an open reader; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics
            .stream_readers_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One shared reader of the stream.
pub struct Replay {
    window: Mutex<Window>,
    /// A message was added (or the replay failed): sessions waiting may take.
    added: Notify,
    /// A session moved on or left: the reader may have room, or nobody to read for.
    moved: Notify,
}

impl Replay {
    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The gateway's replays.
pub struct Replays {
    replays: Mutex<Vec<Arc<Replay>>>,
    broker: Arc<Broker>,
    stream: String,
    node: String,
    metrics: Arc<Metrics>,
    slots: Arc<ReaderSlots>,
}

impl Replays {
    /// No replays yet; they read `stream` through `broker`, each holding one of
    /// `slots` while it reads.
    pub fn new(
        broker: Arc<Broker>,
        stream: String,
        node: String,
        metrics: Arc<Metrics>,
        slots: Arc<ReaderSlots>,
    ) -> Replays {
        Replays {
            replays: Mutex::new(Vec::new()),
            broker,
            stream,
            node,
            metrics,
            slots,
        }
    }

    /// The slots a session's own reader of this stream takes one of too.
    pub fn slots(&self) -> Arc<ReaderSlots> {
        self.slots.clone()
    }

    /// Session `id` reads from position `from`: it joins a replay that holds or will
    /// soon read `from`, or starts one there.
    pub fn join(self: &Arc<Self>, id: u64, from: u64) -> Handle {
        let mut replays = self.replays.lock().unwrap_or_else(|e| e.into_inner());
        for r in replays.iter() {
            if r.lock().join(id, from) {
                return Handle {
                    replay: r.clone(),
                    id,
                };
            }
        }
        let mut window = Window::new(from, WINDOW_MESSAGES, WINDOW_BYTES);
        window.join(id, from);
        let replay = Arc::new(Replay {
            window: Mutex::new(window),
            added: Notify::new(),
            moved: Notify::new(),
        });
        replays.push(replay.clone());
        metrics::add(&self.metrics.stream_readers, 1);
        tokio::spawn(self.clone().read(replay.clone(), from));
        Handle { replay, id }
    }

    /// Reads the stream from `from` into `replay` while any session reads from it,
    /// once it has a reader slot.
    async fn read(self: Arc<Self>, replay: Arc<Replay>, from: u64) {
        let take = self.slots.take();
        tokio::pin!(take);
        let _slot = loop {
            // Created before looking, so a session leaving meanwhile wakes it.
            let moved = replay.moved.notified();
            if replay.lock().idle() && self.stop_if_idle(&replay) {
                return; // every session left while it waited
            }
            tokio::select! {
                slot = &mut take => break slot,
                () = moved => {}
            }
        };
        let tag = format!("{}.replay.{from}", self.node);
        match crate::hub::consume_stream(&self.broker, &self.stream, &tag, Some(from), PREFETCH)
            .await
        {
            Ok((channel, mut consumer)) => {
                let mut unacked = 0u16;
                // The period of STALL the full window is watched over.
                let mut period: Option<Period> = None;
                loop {
                    // Created before looking, so a session moving on meanwhile wakes it.
                    let moved = replay.moved.notified();
                    let idle = replay.lock().idle();
                    if idle && self.stop_if_idle(&replay) {
                        break;
                    }
                    // The period is watched from the first time the window is full;
                    // each look costs a pass over the cursors only until a session
                    // was seen waiting at the end.
                    let watched = {
                        let mut w = replay.lock();
                        let full = w.full();
                        if full && period.is_none() {
                            period = Some(Period {
                                start: tokio::time::Instant::now(),
                                slowest: w.slowest(),
                                held: false,
                            });
                        }
                        if let Some(p) = period.as_mut() {
                            p.held = p.held || w.holds_back();
                        }
                        period.filter(|_| full)
                    };
                    if let Some(p) = watched {
                        let now = tokio::time::Instant::now();
                        let end = p.start + STALL;
                        let decide =
                            now >= end || tokio::time::timeout_at(end, moved).await.is_err();
                        if decide {
                            period = None;
                            let mut w = replay.lock();
                            let now_slowest = w.slowest();
                            let half = w.len() as u64 / 2;
                            if w.full() && p.holds_back(now_slowest, half) {
                                w.stalled();
                                drop(w);
                                // The sessions it left behind learn it at their next take.
                                replay.added.notify_waiters();
                            }
                        }
                        continue;
                    }
                    let delivery = tokio::select! {
                        d = consumer.next() => d,
                        () = moved => continue,
                    };
                    let Some(Ok(d)) = delivery else {
                        tracing::warn!(%tag, "replay reader of the outbound stream failed");
                        self.stop(&replay);
                        break;
                    };
                    unacked += 1;
                    if unacked >= PREFETCH / 2 {
                        unacked = 0;
                        let _ = d.acker.ack(BasicAckOptions { multiple: true }).await;
                    }
                    if let Some(m) = Message::from_delivery(&d) {
                        replay.lock().push(Arc::new(m));
                        replay.added.notify_waiters();
                    }
                }
                let _ = channel.close(200, "replay done".into()).await;
            }
            Err(e) => {
                tracing::warn!(%tag, error = %e, "cannot read the outbound stream");
                self.stop(&replay);
            }
        }
    }

    /// Stops `replay` if no session needs it ([`Window::idle`]; checked under the
    /// list's lock, so nobody joins it meanwhile); whether it stopped. Sessions left
    /// behind learn it at their next take ([`Taken::Behind`]).
    fn stop_if_idle(&self, replay: &Arc<Replay>) -> bool {
        let mut replays = self.replays.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = replay.lock();
        if !w.idle() {
            return false;
        }
        w.closed = true;
        replays.retain(|r| !Arc::ptr_eq(r, replay));
        true
    }

    /// Stops `replay` after its consumer failed: its sessions get what it read, then
    /// [`Taken::Failed`].
    fn stop(&self, replay: &Arc<Replay>) {
        {
            let mut replays = self.replays.lock().unwrap_or_else(|e| e.into_inner());
            let mut w = replay.lock();
            w.closed = true;
            w.fail();
            replays.retain(|r| !Arc::ptr_eq(r, replay));
        }
        replay.added.notify_waiters();
    }
}

/// A session's place in a replay; leaves it when dropped.
pub struct Handle {
    replay: Arc<Replay>,
    id: u64,
}

impl Handle {
    /// The session's next message, or why there is none.
    ///
    /// Cancel-safe (it is raced against the socket in the connection's `select!`): the
    /// cursor moves only when a message is returned.
    pub async fn next(&mut self) -> Taken {
        loop {
            let added = self.replay.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            let taken = self.replay.lock().take(self.id);
            match taken {
                Taken::Wait => added.await,
                Taken::Message(m) => {
                    self.replay.moved.notify_waiters();
                    return Taken::Message(m);
                }
                other => return other,
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.replay.lock().leave(self.id);
        self.replay.moved.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;

    fn msg(offset: u64) -> Arc<Message> {
        Arc::new(Message::new(
            offset,
            "warren.out".into(),
            "chat.all".into(),
            BasicProperties::default(),
            b"{}".to_vec(),
        ))
    }

    fn offset(t: Taken) -> u64 {
        match t {
            Taken::Message(m) => m.offset,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reader_past_max_stream_readers_waits_for_one_to_close() {
        let metrics = Arc::new(Metrics::default());
        let slots = ReaderSlots::new(1, 1, metrics.clone());
        let open = || {
            metrics
                .stream_readers_open
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let first = slots.take().await;
        assert_eq!(open(), 1);
        let mut second = Box::pin(slots.take());
        assert!(
            futures_util::poll!(second.as_mut()).is_pending(),
            "one slot"
        );
        let waits = metrics
            .stream_reader_waits
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(waits, 1);
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the freed slot");
        assert_eq!(open(), 1);
        drop(second);
        assert_eq!(open(), 0);
    }

    #[tokio::test]
    async fn a_user_holds_at_most_its_share_and_waits_for_one_of_its_own_given_back() {
        let slots = ReaderSlots::new(8, 2, Arc::new(Metrics::default()));
        let (mallory, alice): (Arc<str>, Arc<str>) = ("mallory".into(), "alice".into());
        let first = slots.try_share(&mallory).expect("a share");
        let _second = slots.try_share(&mallory).expect("a second");
        assert!(slots.try_share(&mallory).is_none(), "two per user");
        let theirs = slots
            .try_share(&alice)
            .expect("another user's share is free");
        let mut third = Box::pin(slots.share(mallory.clone()));
        assert!(futures_util::poll!(third.as_mut()).is_pending());
        drop(theirs);
        assert!(
            futures_util::poll!(third.as_mut()).is_pending(),
            "another user's share given back is not mallory's"
        );
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the share given back");
        // A wait given up holds nothing.
        drop(Box::pin(slots.share(alice.clone())));
        let _a = slots.try_share(&alice).expect("alice's first");
        let _b = slots.try_share(&alice).expect("alice's second");
        drop(third);
        assert!(slots.try_share(&mallory).is_some());
    }

    #[test]
    fn sessions_share_one_window_each_at_its_own_pace_in_order_once() {
        let mut w = Window::new(10, 100, usize::MAX);
        assert!(w.join(1, 10));
        // A chunk starts before the asked position: those are skipped.
        for o in 8..20 {
            w.push(msg(o));
        }
        assert!(w.join(2, 15), "a position the window holds");
        assert_eq!(
            (10..20).map(|_| offset(w.take(1))).collect::<Vec<_>>(),
            (10..20).collect::<Vec<_>>()
        );
        assert!(matches!(w.take(1), Taken::Wait));
        assert_eq!(offset(w.take(2)), 15);
        w.push(msg(20));
        assert_eq!(offset(w.take(1)), 20);
        assert_eq!(
            (16..21).map(|_| offset(w.take(2))).collect::<Vec<_>>(),
            (16..21).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_window_keeps_what_it_read_for_later_sessions_until_room_is_needed() {
        let mut w = Window::new(0, 5, usize::MAX);
        w.join(1, 0);
        for o in 0..5 {
            w.push(msg(o));
        }
        for _ in 0..5 {
            w.take(1);
        }
        // Session 1 passed everything; a session resuming at 0 a little later still
        // finds it.
        assert!(w.join(2, 0));
        assert!(w.full(), "session 2 needs all five");
        w.take(2);
        w.take(2);
        assert!(!w.full(), "room once nobody needs the oldest");
        assert_eq!(
            w.messages.len(),
            4,
            "only as much room as one message needs"
        );
        assert!(!w.join(3, 0), "below the window: a replay of its own");
        assert!(w.join(3, 1));
    }

    #[test]
    fn joining_needs_the_position_inside_the_window_or_just_ahead_of_it() {
        let mut w = Window::new(100, 10, usize::MAX);
        assert!(!w.join(1, 99));
        assert!(w.join(1, 100));
        assert!(w.join(2, 105), "within half a window ahead");
        assert!(!w.join(3, 106));
        for o in 100..104 {
            w.push(msg(o));
        }
        assert!(
            matches!(w.take(2), Taken::Wait),
            "its position is not read yet"
        );
        w.push(msg(104));
        w.push(msg(105));
        assert_eq!(offset(w.take(2)), 105);
    }

    #[test]
    fn a_full_window_drops_its_oldest_and_a_session_left_behind_is_told_where_it_was() {
        let mut w = Window::new(0, 4, usize::MAX);
        w.join(1, 0);
        w.join(2, 0);
        for o in 0..4 {
            w.push(msg(o));
        }
        assert!(w.full());
        for _ in 0..4 {
            w.take(1);
        }
        assert!(w.full(), "session 2 still needs all four");
        w.stalled();
        assert_eq!(w.messages.len(), 2, "the older half went");
        assert!(!w.full());
        assert!(matches!(w.take(2), Taken::Behind(0)));
        for o in 4..6 {
            w.push(msg(o));
        }
        assert!(!w.full(), "session 2, left behind, holds nothing back");
        assert_eq!(offset(w.take(1)), 4);
    }

    #[test]
    fn a_slowest_session_holds_the_others_back_when_it_took_nothing_or_little_while_one_waited() {
        let p = |held| Period {
            start: tokio::time::Instant::now(),
            slowest: 100,
            held,
        };
        assert!(p(false).holds_back(100, 1024), "took nothing");
        assert!(p(true).holds_back(100, 1024));
        assert!(p(true).holds_back(140, 1024), "a little, another waiting");
        assert!(!p(false).holds_back(140, 1024), "a little, nobody waiting");
        assert!(!p(true).holds_back(1200, 1024), "half a window or more");
    }

    #[test]
    fn a_session_that_took_everything_is_held_back_by_a_full_window() {
        let mut w = Window::new(0, 4, usize::MAX);
        assert!(w.join(1, 0) && w.join(2, 0));
        for o in 0..4 {
            w.push(msg(o));
        }
        assert!(w.full());
        assert!(!w.holds_back(), "both still have messages to take");
        for _ in 0..4 {
            offset(w.take(1));
        }
        assert!(w.full(), "2 has taken nothing");
        assert!(w.holds_back(), "1 waits at the end");
        w.stalled();
        assert!(!w.full());
        assert!(matches!(w.take(2), Taken::Behind(0)));
        assert!(
            w.holds_back(),
            "1 still waits for the reader, now with room"
        );
    }

    #[test]
    fn a_replay_whose_sessions_were_all_left_behind_reads_no_more() {
        let mut w = Window::new(0, 4, usize::MAX);
        assert!(w.idle(), "nobody to read for");
        w.join(1, 0);
        w.join(2, 0);
        assert!(!w.idle());
        for o in 0..4 {
            w.push(msg(o));
        }
        for _ in 0..4 {
            w.take(1);
        }
        // Session 2 stopped taking: the window stalls and leaves it behind.
        assert!(w.full());
        w.stalled();
        assert!(!w.idle(), "session 1 still reads");
        // Session 1 reaches the ring and leaves; session 2 never takes again.
        w.leave(1);
        assert!(!w.full(), "a session left behind holds nothing back");
        assert!(
            w.idle(),
            "and nothing is read for it: the replay stops instead of following the tail"
        );
        for o in 4..100 {
            w.push(msg(o));
            assert!(w.idle() && !w.full());
        }
        // When it takes again it is sent to a reader of its own.
        assert!(matches!(w.take(2), Taken::Behind(0)));
    }

    #[test]
    fn a_failed_replay_gives_what_it_read_then_failed_and_takes_nobody_new() {
        let mut w = Window::new(0, 10, usize::MAX);
        w.join(1, 0);
        w.push(msg(0));
        w.fail();
        assert!(!w.join(2, 0));
        assert_eq!(offset(w.take(1)), 0);
        assert!(matches!(w.take(1), Taken::Failed));
    }

    #[test]
    fn the_byte_bound_fills_the_window_too() {
        let one = msg(0).size();
        let mut w = Window::new(0, 100, one * 2);
        w.join(1, 0);
        w.push(msg(0));
        assert!(!w.full());
        w.push(msg(1));
        assert!(w.full());
    }

    #[test]
    fn the_byte_bound_counts_the_headers_of_the_messages() {
        let big = |offset: u64| {
            let mut headers = lapin::types::FieldTable::default();
            headers.insert(
                "x-trace".into(),
                lapin::types::AMQPValue::LongString(vec![b'h'; 100 * 1024].into()),
            );
            Arc::new(Message::new(
                offset,
                "warren.out".into(),
                "chat.all".into(),
                BasicProperties::default().with_headers(headers),
                b"{}".to_vec(),
            ))
        };
        let mut w = Window::new(0, 1000, 1024 * 1024);
        w.join(1, 0);
        let mut read = 0;
        while !w.full() {
            assert!(read < 20, "a 1 MiB window holds about ten 100 KiB headers");
            w.push(big(read));
            read += 1;
        }
        assert!(read >= 9, "{read}");
        // A session that passed them all lets the window make room again.
        while matches!(w.take(1), Taken::Message(_)) {}
        assert!(!w.full());
    }

    #[test]
    fn each_session_reading_a_shared_window_across_a_jump_of_its_stream_is_told_what_it_missed() {
        use crate::session_core::{Positions, Read};
        let mut w = Window::new(10, 100, usize::MAX);
        let mut sessions = Vec::new();
        for (id, from) in [(1, 10), (2, 12)] {
            assert!(w.join(id, from));
            let mut p = Positions::resumed(Some(from - 1), None);
            p.reader_opened(from);
            sessions.push((id, p));
        }
        // 14 begins a segment (no message); then the replay read slowly, retention
        // deleted the segments ahead of it, and it went on at 40.
        for o in [10, 11, 12, 13, 15, 40, 41] {
            w.push(msg(o));
        }
        // A session joining at a position inside the jump.
        assert!(w.join(3, 20));
        let mut p = Positions::resumed(Some(19), None);
        p.reader_opened(20);
        sessions.push((3, p));
        let mut told = Vec::new();
        for (id, p) in &mut sessions {
            let mut got = Vec::new();
            while let Taken::Message(m) = w.take(*id) {
                match p.read(m.offset, false) {
                    Read::Next { missed, .. } => got.push((m.offset, missed)),
                    Read::Stale => panic!("a window gives nothing below a cursor"),
                }
            }
            told.push(got);
        }
        assert_eq!(
            told,
            [
                vec![
                    (10, 0),
                    (11, 0),
                    (12, 0),
                    (13, 0),
                    (15, 0),
                    (40, 24),
                    (41, 0)
                ],
                vec![(12, 0), (13, 0), (15, 0), (40, 24), (41, 0)],
                vec![(40, 20), (41, 0)],
            ]
        );
    }
}
