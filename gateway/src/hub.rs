//! The outbound hub: each gateway reads the outbound stream
//! once and fans every message out in memory to the sessions whose subscriptions
//! match it, as centrifuge's hub does. Nothing is declared on the broker per session
//! or per subscription.
//!
//! The hub keeps the newest `hub_buffer_messages` messages (the *ring*). A session is
//! either **live** — the hub pushes what it wants into its small bounded [`Inbox`] — or
//! **catching up** from a position: it pulls from the ring at its own pace (a resume,
//! or a slow client whose inbox filled), or, when its position is older than the
//! ring, from a stream reader shared with other sessions behind the ring
//! ([`crate::replay`]; one of its own, [`Reader`], when it falls out of the shared
//! one's window) until it reaches the ring. The
//! switch back to live happens under the hub's lock at the ring's end, and a session
//! never accepts a position below the one it asked to start from, so nothing is lost
//! and nothing is sent twice: positions only grow.
//!
//! A message's keys find the live sessions they are for by hash (exact keys) and by
//! one walk down a trie of the topic patterns held ([`crate::topics`]), so its cost
//! does not grow with the patterns the gateway's sessions hold.
//!
//! In tenant mode ([`Hub::with_tenants`]) a session joins with its tenant and receives
//! only messages whose `x-warren-tenant` header names that tenant (a message without
//! one reaches only sessions without a tenant); replies, addressed to one session,
//! are exempt.
//!
//! A stream deleted and declared again (by an operator clearing it, or a broker that
//! lost its data) starts its positions over at 0, below what the hub and its clients
//! hold; RabbitMQ would hand a reader asking for an old position nothing until the new
//! stream reached it. So the reader, when it starts again from a position, first
//! looks at the stream's tail ([`stream_tail`]): a tail below what the hub read, or
//! another message at the last position it read, means the stream was replaced, and
//! the hub starts over ([`Hub::reset`]) from the new stream's first position, ending
//! its sessions (their positions name the old stream). A resume naming a position
//! past the tail is likewise not resumed ([`Hub::holds_position`]).
//!
//! Everything here but [`run_reader`], [`stream_tail`], [`Hub::holds_position`] and
//! [`Reader`] is pure and unit-tested without a broker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use tokio::sync::{watch, Notify};
use warren_protocol::amqp::{topic_matches, H_CC, H_TENANT};

use crate::broker::Broker;
use crate::delivery::{stream_reply_id, text_value};
use crate::error::GatewayError;
use crate::topics::TopicIndex;

/// Messages a live session may have waiting between the hub and its socket; when they
/// are full the session falls back to catching up from the ring.
pub const LIVE_BACKLOG: usize = 64;

/// Room an emptied [`Inbox`] keeps (64 B).
const INBOX_KEPT: usize = 8;

/// A live session's messages on their way from the hub to its connection: at most
/// [`LIVE_BACKLOG`]. The hub pushes; a push that finds it full fails, and the session
/// is told it lagged (it then catches up from the ring).
///
/// One small allocation per session (a lock, a queue with no buffer until the first
/// message, two `Notify`s), where a tokio `mpsc` channel took about 800 B per session
/// before it carried anything (its cache-padded state and its first 32-slot block).
#[derive(Debug, Default)]
pub struct Inbox {
    queue: Mutex<VecDeque<Arc<Message>>>,
    /// Woken by each push.
    pushed: Notify,
    /// Woken when a push found the inbox full.
    lagged: Notify,
}

impl Inbox {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Arc<Message>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `m`; `false` (and `m` dropped) when [`LIVE_BACKLOG`] messages wait.
    fn push(&self, m: Arc<Message>) -> bool {
        {
            let mut q = self.queue();
            if q.len() >= LIVE_BACKLOG {
                return false;
            }
            q.push_back(m);
        }
        self.pushed.notify_one();
        true
    }

    /// The oldest waiting message, if any. An emptied queue keeps room for
    /// [`INBOX_KEPT`] messages and gives back the rest, so a session does not hold the
    /// room a burst took while a steady flow does not reallocate.
    pub fn try_recv(&self) -> Option<Arc<Message>> {
        let mut q = self.queue();
        let m = q.pop_front();
        if q.is_empty() && q.capacity() > INBOX_KEPT {
            q.shrink_to(INBOX_KEPT);
        }
        m
    }

    /// The oldest waiting message, once there is one. Cancel-safe: a message is only
    /// taken when returned, and a wake-up this future took without returning is passed
    /// on (`Notify::notify_one` keeps it as a permit).
    pub async fn recv(&self) -> Arc<Message> {
        loop {
            if let Some(m) = self.try_recv() {
                return m;
            }
            self.pushed.notified().await;
        }
    }

    /// Resolves when a push found the inbox full.
    pub async fn lagged(&self) {
        self.lagged.notified().await;
    }
}

/// The hub's reader acknowledges (for credit) once per this many messages; its
/// prefetch is [`HUB_PREFETCH`].
const ACK_EVERY: u32 = 200;

/// Unacknowledged messages the hub's reader may hold.
const HUB_PREFETCH: u16 = 2000;

/// Bytes of messages ([`Message::size`]: bodies, headers, keys) the ring holds at
/// most, whatever `hub_buffer_messages` says.
pub const RING_MAX_BYTES: usize = 256 * 1024 * 1024;

/// How long [`stream_tail`] waits for the stream's last chunk to go on before it takes
/// what came as all there is.
const TAIL_QUIET: Duration = Duration::from_millis(300);

/// The most messages of the ring one [`Hub::catch_up`] of a session with patterns
/// looks at. Each is matched against every key of the session under the hub's lock,
/// which every push, join and subscribe of the gateway waits for: a session with 256
/// patterns that match nothing, catching up from the start of a ring of 100,000
/// messages, held it for the whole scan. An empty batch with the position reached
/// sends nothing, and the session's next call goes on from there.
const CATCH_UP_SCAN: usize = 4096;

/// How long [`stream_tail`] reads at most. A look begins at the stream's last chunk,
/// so what it read by then reaches the tail as it was when the look began; without
/// this bound, a stream that services publish to more often than every
/// [`TAIL_QUIET`] would keep a look reading for as long as they publish (the hub's
/// reader starting again would read nothing meanwhile, resumes would wait).
const TAIL_LOOK_MAX: Duration = Duration::from_secs(2);

/// How long a resume naming a position the hub has not read yet waits for the hub to
/// read it (a client coming from another gateway may be a little ahead of this one)
/// before the stream's tail is looked at.
const AHEAD_WAIT: Duration = Duration::from_millis(300);

/// One message of the outbound stream.
#[derive(Debug)]
pub struct Message {
    /// Its offset in the stream: the position a `deliver` carries.
    pub offset: u64,
    /// Exchange it was published to (`""`: a reply, sent to the stream by name).
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// AMQP properties.
    pub properties: BasicProperties,
    /// Body.
    pub body: Vec<u8>,
    /// What routes it to sessions: its routing key and the `CC` header's keys, or
    /// for a reply the key of the session it answers ([`reply_key`]).
    keys: Vec<String>,
    /// Its `x-warren-tenant` header, if any.
    tenant: Option<String>,
    /// What it costs in memory ([`Message::size`]), measured once when it is read:
    /// the ring and the replay windows add and take away the same amount.
    size: usize,
}

/// The index key that routes a reply to its session: not a valid routing key of any
/// channel (it starts with a NUL), so no subscription can ask for it.
pub fn reply_key(session: &str) -> String {
    format!("\0reply.{session}")
}

/// Whether binding key `key` is a topic pattern (a `*` or `#` word).
pub(crate) fn is_pattern(key: &str) -> bool {
    key.split('.').any(|w| w == "*" || w == "#")
}

impl Message {
    /// The routing key a session receives this message by, given which keys it holds
    /// (`holds`: exact keys and patterns): its routing key when the session holds it,
    /// else the first of its `CC` keys the session holds. A message to several groups
    /// reaches a member of the second as that group's, so the client can tell which of
    /// its subscriptions it is for. A reply keeps its routing key.
    pub fn key_for(&self, holds: impl Fn(&str) -> bool) -> &str {
        if self.exchange.is_empty() || self.keys.len() < 2 || holds(&self.routing_key) {
            return &self.routing_key;
        }
        self.keys
            .iter()
            .find(|k| holds(k))
            .map_or(self.routing_key.as_str(), String::as_str)
    }

    /// A message read at `offset`, with the keys that route it.
    pub fn new(
        offset: u64,
        exchange: String,
        routing_key: String,
        properties: BasicProperties,
        body: Vec<u8>,
    ) -> Message {
        let mut keys = Vec::new();
        if exchange.is_empty() {
            if let Some(c) = properties.correlation_id() {
                if let Some((session, _)) = stream_reply_id(c.as_str()) {
                    keys.push(reply_key(session));
                }
            }
        } else {
            keys.push(routing_key.clone());
            let headers = properties.headers().as_ref().map(|h| h.inner());
            // A stream drops the `CC` array; `x-warren-cc` carries the same keys.
            match headers.and_then(|h| h.get("CC")) {
                // Strings as any client sends them: long, short, or bytes (Go's and
                // Java's AMQP clients send `[]byte` / `byte[]` as a byte array).
                Some(AMQPValue::FieldArray(cc)) => {
                    keys.extend(cc.as_slice().iter().filter_map(crate::delivery::text_value));
                }
                _ => {
                    if let Some(cc) = headers
                        .and_then(|h| h.get(H_CC))
                        .and_then(crate::delivery::text_value)
                    {
                        keys.extend(cc.split_ascii_whitespace().map(str::to_string));
                    }
                }
            }
        }
        // Each key once: the ring's index by key holds a position once per key, and a
        // catch-up counts the positions it takes per key (a publisher naming its routing
        // key again in `CC`, or a key twice, made it stop short and skip the rest).
        let mut seen = HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
        let tenant = tenant_of(&properties);
        let size = std::mem::size_of::<Message>()
            + MESSAGE_OVERHEAD
            + body.len()
            + exchange.len()
            + routing_key.len()
            + keys
                .iter()
                .map(|k| std::mem::size_of::<String>() + KEY_INDEX_OVERHEAD + 2 * k.len())
                .sum::<usize>()
            + tenant.as_ref().map_or(0, String::len)
            + properties_bytes(&properties);
        Message {
            offset,
            exchange,
            routing_key,
            properties,
            body,
            keys,
            tenant,
            size,
        }
    }

    /// The keys other than `by` that route this message to a session holding `holds`
    /// (exact keys and patterns): a message a service sent to several targets the
    /// session receives (a group and its user) is for the subscriptions of each, and
    /// the client is told them all (`deliver.keys`). Empty for most messages.
    pub fn other_keys(&self, by: &str, holds: impl Fn(&str) -> bool) -> Vec<String> {
        if self.exchange.is_empty() || self.keys.len() < 2 {
            return Vec::new();
        }
        self.keys
            .iter()
            .filter(|k| k.as_str() != by && holds(k))
            .cloned()
            .collect()
    }

    /// A delivery of the outbound stream, if it carries its offset.
    pub fn from_delivery(d: &Delivery) -> Option<Message> {
        let offset = stream_offset(d.properties.headers().as_ref())?;
        Some(Message::new(
            offset,
            d.exchange.to_string(),
            d.routing_key.to_string(),
            d.properties.clone(),
            d.data.clone(),
        ))
    }

    /// Whether `other` is the same message of the same stream: read at the same
    /// position, with the same routing key, `message_id` and body. A stream never
    /// changes what it holds at a position; a stream declared in its place does.
    pub fn same_as(&self, other: &Message) -> bool {
        self.offset == other.offset
            && self.exchange == other.exchange
            && self.routing_key == other.routing_key
            && self.properties.message_id() == other.properties.message_id()
            && self.body == other.body
    }

    /// What it costs in memory, roughly: the body, the routing key and the keys
    /// parsed from the headers, the properties' strings, and the headers as they are
    /// held (each entry, nested tables and arrays included; a `CC` key counts in the
    /// header and again among the keys, as it is held twice), plus
    /// [`MESSAGE_OVERHEAD`]. What bounds the ring ([`RING_MAX_BYTES`]) and the replay
    /// windows (`crate::replay::WINDOW_BYTES`): headers of up to 128 KiB are the
    /// publisher's to choose, and a fixed guess for them let a ring of such messages
    /// hold a hundred times its bound.
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}

/// What a message costs beyond what [`Message::size`] measures: its `Arc`, the
/// ring's slot, allocator rounding.
const MESSAGE_OVERHEAD: usize = 512;

/// What each of a message's keys costs the ring's index by key beyond the key's bytes
/// (counted again, for the index's copy): the map's slot (the key's `String`, its
/// list of positions, the table's control byte, spare room) and the key's position
/// in the list. A message to thousands of users (`CC`) has as many keys: counted as
/// 512 B a message, its ring took three times its byte bound.
const KEY_INDEX_OVERHEAD: usize = 96;

/// Above this capacity, the ring's index by key is shrunk once it is mostly empty
/// ([`evict_oldest`]): a burst of messages to many users grew it, and a hash table
/// keeps its size when emptied.
const RING_KEYS_KEPT: usize = 4096;

/// The bytes `properties` hold beyond their inline size: the short strings and the
/// headers ([`headers_bytes`]).
fn properties_bytes(p: &BasicProperties) -> usize {
    let strings = [
        p.content_type(),
        p.content_encoding(),
        p.correlation_id(),
        p.reply_to(),
        p.expiration(),
        p.message_id(),
        p.kind(),
        p.user_id(),
        p.app_id(),
        p.cluster_id(),
    ];
    strings
        .into_iter()
        .flatten()
        .map(|s| s.as_str().len())
        .sum::<usize>()
        + p.headers().as_ref().map_or(0, headers_bytes)
}

/// The bytes a header table holds: each entry's key and value, inline and on the
/// heap, nested tables and arrays included. Walked with a stack of its own, not by
/// recursion: a 128 KiB header may nest thousands of tables deep.
fn headers_bytes(table: &FieldTable) -> usize {
    /// What `v` holds itself; a table or an array goes on `nested`.
    fn value<'a>(v: &'a AMQPValue, nested: &mut Vec<&'a AMQPValue>) -> usize {
        match v {
            AMQPValue::ShortString(s) => s.as_str().len(),
            AMQPValue::LongString(s) => s.as_bytes().len(),
            AMQPValue::ByteArray(b) => b.as_slice().len(),
            AMQPValue::FieldArray(a) => {
                nested.push(v);
                std::mem::size_of_val(a.as_slice())
            }
            AMQPValue::FieldTable(_) => {
                nested.push(v);
                0
            }
            _ => 0,
        }
    }
    let entry = std::mem::size_of::<(ShortString, AMQPValue)>();
    // Nested tables and arrays, walked with a stack of their own (a header can nest
    // thousands deep); empty, it allocates nothing, as for most messages.
    let mut nested: Vec<&AMQPValue> = Vec::new();
    let mut bytes = 0;
    for (k, v) in table.inner() {
        bytes += entry + k.as_str().len() + value(v, &mut nested);
    }
    while let Some(v) = nested.pop() {
        match v {
            AMQPValue::FieldArray(a) => {
                for x in a.as_slice() {
                    bytes += value(x, &mut nested);
                }
            }
            AMQPValue::FieldTable(t) => {
                for (k, x) in t.inner() {
                    bytes += entry + k.as_str().len() + value(x, &mut nested);
                }
            }
            _ => {}
        }
    }
    bytes
}

/// The `x-stream-offset` header RabbitMQ puts on every stream delivery.
pub fn stream_offset(headers: Option<&FieldTable>) -> Option<u64> {
    match headers?.inner().get(crate::delivery::STREAM_OFFSET)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// A session as the hub knows it.
#[derive(Debug)]
struct Member {
    /// Where live messages go; its `lagged` is woken when the hub stops pushing (the
    /// inbox filled).
    inbox: Arc<Inbox>,
    /// Pushed to (true) or catching up (false).
    live: bool,
    /// Positions below this are never given to it (it has them already).
    from: u64,
    /// Its index keys, ref-counted (two subscriptions may share one), each with the
    /// position it holds from ([`Held`]).
    keys: HashMap<String, Held>,
    /// Tenant mode: the only tenant whose messages it receives (`None`: only
    /// messages without a tenant). `None` outside tenant mode: no filter.
    tenant: Option<Option<String>>,
    /// The stream was replaced under it ([`Hub::reset`]): its positions name a stream
    /// that is gone, so it is ended ([`CatchUp::Replaced`]).
    replaced: bool,
}

/// One of a session's index keys.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// How many of its subscriptions hold it.
    refs: u32,
    /// Messages of this key below this position are not the session's: it subscribed
    /// when the hub had read up to here ([`Hub::subscribe_at`]). 0 for a key it held
    /// when it resumed, whose messages since its position it wants.
    since: u64,
}

/// The tenant a message names (`x-warren-tenant`, as text). A header that is not text
/// names a tenant no session has: in tenant mode the message then reaches nobody
/// (read as no header, it went to the sessions without a tenant).
fn tenant_of(properties: &BasicProperties) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(H_TENANT)?;
    Some(text_value(value).unwrap_or_else(|| "\0unreadable".into()))
}

impl Member {
    /// Whether tenant mode lets it have `m`: always outside tenant mode and for a
    /// reply; else when the message names its tenant (or neither names one).
    fn admits(&self, m: &Message) -> bool {
        match &self.tenant {
            None => true,
            Some(t) => m.exchange.is_empty() || *t == m.tenant,
        }
    }

    fn wants(&self, m: &Message) -> bool {
        m.offset >= self.from && self.admits(m) && self.holds_key_of(m)
    }

    /// Whether one of its keys (exact or pattern) routes `m`, held since before `m`.
    fn holds_key_of(&self, m: &Message) -> bool {
        m.keys.iter().any(|k| {
            self.keys.get(k).is_some_and(|h| h.since <= m.offset)
                || self
                    .keys
                    .iter()
                    .any(|(p, h)| h.since <= m.offset && is_pattern(p) && topic_matches(p, k))
        })
    }
}

/// The hub's state, behind one lock.
#[derive(Debug, Default)]
struct State {
    ring: VecDeque<Arc<Message>>,
    ring_bytes: usize,
    /// The ring's positions by routing key (each message under each of its keys), so
    /// catching up costs what the session wants, not the ring's length.
    ring_keys: HashMap<String, VecDeque<u64>>,
    /// The offset after the newest message read (`None` before the first).
    next: Option<u64>,
    /// Positions `[start, end)` the reader never read: a message it got was two
    /// positions or more past `next` ([`lost_between`]). Retention dropped the rest
    /// before the reader got there: while it was away (it started again), or as it
    /// overtook a reader that lagged the stream, which RabbitMQ then moves on to the
    /// first segment kept. Kept while the ring holds messages from before them; a
    /// session that crosses them is told how many it missed ([`CatchUp::Missed`]).
    gap: Option<(u64, u64)>,
    /// How many times the stream was found replaced ([`Hub::reset`]): a look at the
    /// tail taken before a reset says nothing of the new stream.
    resets: u64,
    members: HashMap<u64, Member>,
    /// Exact key → members holding it.
    exact: HashMap<String, HashSet<u64>>,
    /// Pattern keys → members holding them, matched by walking a key's words once.
    patterns: TopicIndex,
}

/// What a catching-up session gets from [`Hub::catch_up`].
#[derive(Debug)]
pub enum CatchUp {
    /// Messages for it (possibly none), and the position to ask from next time.
    Batch(Vec<Arc<Message>>, u64),
    /// Its position is older than the ring: read the stream from `from` until the
    /// ring's first position, `ring_first` (`None`: the ring is empty).
    Behind {
        /// Where to read from.
        from: u64,
    },
    /// It is at the ring's end and live again.
    Live,
    /// Positions `from..to` were dropped by retention before the hub read them (its
    /// reader started again, or was moved on, past them): the session is told it missed `to - from`
    /// positions, and asks from `to` next time.
    Missed {
        /// The first position it missed.
        from: u64,
        /// The position after the last one it missed.
        to: u64,
    },
    /// The stream was deleted and declared again under it ([`Hub::reset`]): nothing
    /// it holds a position of is left, and the session must end (its client then
    /// resumes with positions past the new stream's tail and is given a fresh session
    /// with a `session_expired` notice).
    Replaced,
}

/// The in-memory fan-out of the outbound stream.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    max_messages: usize,
    /// Bytes ([`Message::size`]) the ring holds at most: [`RING_MAX_BYTES`].
    max_bytes: usize,
    /// Whether the reader has caught up with the stream's tail once (start-up).
    ready: watch::Sender<bool>,
    /// Tenant mode: members receive only their tenant's messages.
    tenants: bool,
    /// The last look at the stream's tail ([`Hub::holds_position`]); the lock makes
    /// concurrent resumes share one look.
    tail: tokio::sync::Mutex<Option<TailLook>>,
    /// The last look at the stream's first message ([`Hub::retention_took`]); the
    /// lock makes the sessions that found a gap together share one look.
    first: tokio::sync::Mutex<Option<FirstLook>>,
    /// Since when its reader has not been reading the stream (`None`: it is).
    not_reading_since: Mutex<Option<Instant>>,
}

/// One look at a stream's first message ([`first_position`]) and what it can answer.
#[derive(Debug, Clone, Copy)]
struct FirstLook {
    /// When the look began.
    began: Instant,
    /// The hub's resets when it began: the stream it looked at.
    resets: u64,
    /// The first message's position; `None` when the look failed or found none.
    first: Option<u64>,
}

impl FirstLook {
    /// Whether retention took positions from `from` on, for a gap found at `asked`
    /// with the hub at `resets` resets, as far as this look can tell: `None` when it
    /// cannot (a look must be taken). Retention only ever moves the first message
    /// forward, so a look that found it past `from` answers yes for good; any other
    /// answer only holds for gaps found before the look began. A look at a stream
    /// replaced since tells nothing.
    fn took(&self, from: u64, asked: Instant, resets: u64) -> Option<bool> {
        if self.resets != resets {
            None
        } else if self.first.is_some_and(|f| f > from) {
            Some(true)
        } else if self.began >= asked {
            Some(self.says_taken(from))
        } else {
            None
        }
    }

    /// What this look says of positions from `from` on when it answers: taken when
    /// the first message is past them, and when the look failed or found none (a
    /// loss told, never hidden).
    fn says_taken(&self, from: u64) -> bool {
        self.first.is_none_or(|f| f > from)
    }
}

/// One look at a stream's tail ([`stream_tail`]) and what it can answer.
#[derive(Debug, Clone, Copy)]
struct TailLook {
    /// When the look began.
    began: Instant,
    /// The hub's resets when it began: the stream it looked at.
    resets: u64,
    /// The highest position seen.
    tail: Option<u64>,
    /// Whether the look read to the tail. A look for a position stops at the first
    /// message at or past it, so its `tail` is then only a lower bound: it proves
    /// that the stream holds every position up to it, not that it holds no more.
    complete: bool,
    /// The tail could not be read (RabbitMQ away, not answering within
    /// `broker_wait_ms`): the resumes asked before it began go on, as the one that
    /// looked did.
    failed: bool,
}

impl TailLook {
    /// A look begun at `began`, after `resets` resets, that was asked about
    /// `at_least` and found `tail`.
    fn new(began: Instant, resets: u64, at_least: u64, tail: Option<u64>) -> TailLook {
        TailLook {
            began,
            resets,
            tail,
            complete: tail.is_none_or(|t| t < at_least),
            failed: false,
        }
    }

    /// A look begun at `began`, after `resets` resets, that could not read the tail.
    fn failed(began: Instant, resets: u64) -> TailLook {
        TailLook {
            began,
            resets,
            tail: None,
            complete: false,
            failed: true,
        }
    }

    /// Whether the stream holds `position`, for a resume asked at `asked` with the
    /// hub at `resets` resets, as far as this look can tell: `None` when it cannot
    /// (a look must be taken). It holds it when the look saw it; it does not when the
    /// look read to the tail without seeing it and began after the resume was asked
    /// (the client had the position then, so a look taken after would have seen it).
    /// A look at a stream replaced since tells nothing.
    fn holds(&self, position: u64, asked: Instant, resets: u64) -> Option<bool> {
        if self.resets != resets {
            None
        } else if self.failed {
            (self.began >= asked).then_some(true)
        } else if self.tail.is_some_and(|t| t >= position) {
            Some(true)
        } else if self.complete && self.began >= asked {
            Some(false)
        } else {
            None
        }
    }
}

/// A session's membership in the hub; leaves it when dropped.
#[derive(Debug)]
pub struct Membership {
    hub: Arc<Hub>,
    conn: u64,
    /// Live messages, and the signal that the hub stopped pushing to this session.
    pub inbox: Arc<Inbox>,
}

impl Membership {
    /// Resolves once the hub found the stream replaced under this session
    /// ([`Hub::reset`]). For a session reading behind the ring (waiting for a share or
    /// a reader slot, or reading with a stream reader): without it such a session
    /// opened its reader on the new stream at its old position and heard nothing,
    /// for as long as the new stream took to get there. Waits for the hub's `lagged`
    /// wake-up first (a reset gives one, kept as a permit when nobody waits), so that
    /// the hub's lock is taken only then, not on every wait of a session behind the
    /// ring; other wake-ups mean nothing to a session that is not live. A reset
    /// before the session went behind the ring was told by [`Hub::catch_up`].
    pub async fn replaced(&self) {
        loop {
            self.inbox.lagged().await;
            let replaced = self
                .hub
                .lock()
                .members
                .get(&self.conn)
                .is_some_and(|m| m.replaced);
            if replaced {
                return;
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(self.conn);
    }
}

impl Hub {
    /// A hub keeping the newest `max_messages` messages.
    pub fn new(max_messages: usize) -> Arc<Hub> {
        Hub::with_tenants(max_messages, false)
    }

    /// A hub in tenant mode (`tenants = true`): each session receives only the
    /// messages of the tenant it joined with ([`Hub::join_tenant`]).
    pub fn with_tenants(max_messages: usize, tenants: bool) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State::default()),
            max_messages: max_messages.max(1),
            max_bytes: RING_MAX_BYTES,
            ready: watch::channel(false).0,
            tenants,
            tail: tokio::sync::Mutex::new(None),
            first: tokio::sync::Mutex::new(None),
            not_reading_since: Mutex::new(Some(Instant::now())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The offset after the newest message read, if any was.
    pub fn next_offset(&self) -> Option<u64> {
        self.lock().next
    }

    /// Where its reader starts reading: after the last position read; `None` (the
    /// stream's last chunk) at the first start. A hub that became ready having read
    /// nothing took the stream for empty ([`run_reader`]'s quiet start), and its
    /// sessions joined live from there: a reader starting again then reads from the
    /// stream's start, since all the stream holds came after. From its last chunk, it
    /// skipped in silence what services published in earlier chunks while it was away.
    pub(crate) fn start_from(&self) -> Option<u64> {
        let next = self.lock().next;
        next.or_else(|| (*self.ready.borrow()).then_some(0))
    }

    /// The newest message read, while the ring holds it.
    fn newest(&self) -> Option<Arc<Message>> {
        let st = self.lock();
        let newest = st.ring.back()?;
        (st.next == Some(newest.offset + 1)).then(|| newest.clone())
    }

    /// The position of the newest message read, if any was: where a session that
    /// joined now would start.
    pub fn head(&self) -> Option<u64> {
        self.next_offset().and_then(|n| n.checked_sub(1))
    }

    /// The position a fresh session's `welcome` names for this stream: the newest
    /// message read, or, while messages for `conn` still wait in its inbox, the one
    /// before the first of them. The `welcome` goes out before them: a client whose
    /// connection is lost in between resumes from there and gets them, instead of
    /// from a position past them. `None`: nothing before it (a resume without a
    /// position replays from the stream's start).
    pub fn welcome_head(&self, conn: u64) -> Option<u64> {
        let st = self.lock();
        let head = st.next?.checked_sub(1)?;
        let first = st
            .members
            .get(&conn)
            .and_then(|m| m.inbox.queue().front().map(|f| f.offset));
        match first {
            Some(first) => first.checked_sub(1).map(|p| p.min(head)),
            None => Some(head),
        }
    }

    /// Members (sessions) in the hub.
    pub fn members(&self) -> usize {
        self.lock().members.len()
    }

    /// Adds connection `conn` for `session`, replying to it from now on. With `from`
    /// (a resume: the position after the last one the client has) it starts catching
    /// up; without, it is live at once. Returns the membership and the position of the
    /// newest message read before it joined (what a fresh client names on resume).
    pub fn join(
        self: &Arc<Self>,
        conn: u64,
        session: &str,
        from: Option<u64>,
    ) -> (Membership, Option<u64>) {
        self.join_tenant(conn, session, None, from)
    }

    /// As [`Hub::join`], for a session of `tenant` (ignored outside tenant mode; in
    /// tenant mode `None` receives only messages without a tenant).
    pub fn join_tenant(
        self: &Arc<Self>,
        conn: u64,
        session: &str,
        tenant: Option<&str>,
        from: Option<u64>,
    ) -> (Membership, Option<u64>) {
        self.join_checked(conn, session, tenant, from, None)
    }

    /// How many times the stream was found replaced ([`Hub::reset`]).
    pub fn resets(&self) -> u64 {
        self.lock().resets
    }

    /// As [`Hub::join_tenant`], for a resume whose positions were checked against the
    /// stream ([`Hub::holds_position`]) when the hub had `checked` [`Hub::resets`]: a
    /// reset since then (between that check and this join) means they name the
    /// replaced stream, and the session ends at once ([`CatchUp::Replaced`]), as the
    /// sessions in the hub at the reset did.
    pub fn join_checked(
        self: &Arc<Self>,
        conn: u64,
        session: &str,
        tenant: Option<&str>,
        from: Option<u64>,
        checked: Option<u64>,
    ) -> (Membership, Option<u64>) {
        let inbox = Arc::new(Inbox::default());
        let mut st = self.lock();
        let head = st.next;
        let member = Member {
            inbox: inbox.clone(),
            live: from.is_none(),
            from: from.or(head).unwrap_or(0),
            keys: HashMap::new(),
            tenant: self.tenants.then(|| tenant.map(str::to_string)),
            replaced: from.is_some() && checked.is_some_and(|c| c != st.resets),
        };
        st.members.insert(conn, member);
        add_key(&mut st, conn, &reply_key(session), 0);
        drop(st);
        (
            Membership {
                hub: self.clone(),
                conn,
                inbox,
            },
            head.and_then(|n| n.checked_sub(1)),
        )
    }

    fn leave(&self, conn: u64) {
        let mut st = self.lock();
        if let Some(m) = st.members.remove(&conn) {
            for k in m.keys.keys() {
                unindex(&mut st, conn, k);
            }
        }
    }

    /// Adds index keys for `conn` (ref-counted) that it held before it joined: a
    /// resumed session's subscriptions, whose messages since its position it wants
    /// (caught up with, as what it missed).
    pub fn subscribe(&self, conn: u64, keys: &[String]) {
        let mut st = self.lock();
        for k in keys {
            add_key(&mut st, conn, k, 0);
        }
    }

    /// Adds index keys for `conn` (ref-counted) subscribed now: their messages the hub
    /// read before are not its, also when it catches up from a position before them
    /// (it fell behind, or is still catching up after a resume). Returns the position
    /// of the newest message read when `conn` has been sent everything up to it that
    /// it wanted: it is live (pushed to), its inbox is empty, and the hub has read as
    /// far as where it starts. Under the hub's lock, as every push: a message up to
    /// that position that `conn` wanted was pushed to its inbox before, and taken out
    /// (and written to its socket) since.
    pub fn subscribe_at(&self, conn: u64, keys: &[String]) -> Option<u64> {
        let mut st = self.lock();
        let since = st.next.unwrap_or(0);
        for k in keys {
            add_key(&mut st, conn, k, since);
        }
        let head = st.next?.checked_sub(1)?;
        let member = st.members.get(&conn)?;
        let sent = member.live && !member.replaced && member.inbox.queue().is_empty();
        (sent && head.saturating_add(1) >= member.from).then_some(head)
    }

    /// Drops one reference to each of `keys` for `conn`. Messages pushed to its inbox
    /// that none of its keys routes any more are taken out of it: after an
    /// `unsubscribe` (or a refreshed token no longer granting a key) nothing more of
    /// that key reaches the session, though up to [`LIVE_BACKLOG`] of them were waiting
    /// for its socket. Under the hub's lock, as every push; the cost is the
    /// unsubscribe's, not each delivery's.
    pub fn unsubscribe(&self, conn: u64, keys: &[String]) {
        let mut st = self.lock();
        let mut removed = false;
        for k in keys {
            let gone = match st.members.get_mut(&conn).and_then(|m| m.keys.get_mut(k)) {
                Some(h) if h.refs > 1 => {
                    h.refs -= 1;
                    false
                }
                Some(_) => true,
                None => false,
            };
            if gone {
                if let Some(m) = st.members.get_mut(&conn) {
                    m.keys.remove(k);
                }
                unindex(&mut st, conn, k);
                removed = true;
            }
        }
        if let Some(m) = st.members.get(&conn).filter(|_| removed) {
            m.inbox.queue().retain(|waiting| m.holds_key_of(waiting));
        }
    }

    /// The position the hub's reader expected, when a message at `offset` would skip
    /// two positions or more past it ([`lost_between`]): to be looked at
    /// ([`Hub::retention_took_now`]) before [`Hub::publish`] counts it a gap.
    pub fn skip_before(&self, offset: u64) -> Option<u64> {
        self.lock().next.filter(|n| lost_between(*n, offset) > 0)
    }

    /// The positions before `offset` the reader skipped held no message (the stream
    /// still holds positions before them: [`Hub::retention_took_now`]): no gap.
    pub fn no_gap_before(&self, offset: u64) {
        let mut st = self.lock();
        if st.next.is_some_and(|n| n <= offset) {
            st.next = Some(offset);
        }
    }

    /// Appends a message read from the stream and pushes it to the live members that
    /// want it. A member whose channel is full stops being live and is told so.
    /// Returns whether the message was new to the hub (`false`: read again after the
    /// reader started over, dropped).
    pub fn publish(&self, m: Message) -> bool {
        let m = Arc::new(m);
        let mut st = self.lock();
        if let Some(n) = st.next {
            if m.offset < n {
                return false; // read again after a reconnect: the ring has it
            }
            if lost_between(n, m.offset) > 0 {
                skipped(&mut st, n, m.offset);
            }
        }
        st.next = Some(m.offset + 1);
        st.ring_bytes += m.size();
        st.ring.push_back(m.clone());
        for k in &m.keys {
            st.ring_keys
                .entry(k.clone())
                .or_default()
                .push_back(m.offset);
        }
        while st.ring.len() > self.max_messages || st.ring_bytes > self.max_bytes {
            if !evict_oldest(&mut st) {
                break;
            }
        }
        let mut targets: HashSet<u64> = HashSet::new();
        for k in &m.keys {
            if let Some(set) = st.exact.get(k) {
                targets.extend(set);
            }
            st.patterns.matching(k, &mut targets);
        }
        for conn in targets {
            let Some(member) = st.members.get_mut(&conn) else {
                continue;
            };
            if !member.live || m.offset < member.from || !member.admits(&m) {
                continue;
            }
            if !member.inbox.push(m.clone()) {
                member.live = false;
                // Everything it wanted before `m` is in its inbox (or was taken out by an
                // unsubscribe): its catch-up starts at `m`, not at its last delivery,
                // which may be hours back when its other keys are quiet (read from
                // the stream for nothing, and told `session_expired` for positions it
                // missed none of when retention had dropped them).
                member.from = member.from.max(m.offset);
                member.inbox.lagged.notify_one();
            }
        }
        true
    }

    /// For a catching-up `conn` at position `from`: up to `max` messages it wants from
    /// the ring, or [`CatchUp::Behind`] when the ring starts later, or
    /// [`CatchUp::Live`] (and it is live again) when it has reached the ring's end.
    pub fn catch_up(&self, conn: u64, from: u64, max: usize) -> CatchUp {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(member) = st.members.get(&conn) else {
            return CatchUp::Batch(Vec::new(), from);
        };
        if member.replaced {
            return CatchUp::Replaced;
        }
        let from = from.max(member.from);
        let first = st.ring.front().map(|m| m.offset);
        match (first, st.next) {
            (Some(first), _) if from < first => return CatchUp::Behind { from },
            (None, Some(next)) if from < next => return CatchUp::Behind { from },
            // The hub has read nothing yet (its reader has not started, or waits for
            // RabbitMQ): it starts at the stream's last chunk, maybe past `from`. Read
            // from `from` meanwhile; the ring takes over where it begins.
            (None, None) => return CatchUp::Behind { from },
            _ => {}
        }
        // Positions the hub never read: told, not skipped. Before them, the ring is
        // served only up to where they start.
        let limit = match st.gap {
            Some((start, end)) if from >= start && from < end => {
                return CatchUp::Missed { from, to: end };
            }
            Some((start, end)) if from < start => Some((start, end)),
            _ => None,
        };
        let below = |o: u64| limit.is_none_or(|(start, _)| o < start);
        if !member.keys.keys().any(|k| is_pattern(k)) {
            // Exact keys only: the ring's index by key gives the positions at once.
            let mut offsets: Vec<u64> = Vec::new();
            for (k, held) in &member.keys {
                if let Some(list) = st.ring_keys.get(k) {
                    let from = from.max(held.since);
                    let i = list.partition_point(|o| *o < from);
                    offsets.extend(list.range(i..).take_while(|o| below(**o)).take(max));
                }
            }
            offsets.sort_unstable();
            offsets.dedup();
            offsets.truncate(max);
            if let (true, Some((start, end))) = (offsets.is_empty(), limit) {
                return CatchUp::Missed {
                    from: start,
                    to: end,
                };
            }
            if offsets.is_empty() {
                let end = st.next.unwrap_or(from).max(from);
                if let Some(m) = st.members.get_mut(&conn) {
                    m.live = true;
                    m.from = end;
                }
                return CatchUp::Live;
            }
            let out: Vec<Arc<Message>> = offsets
                .iter()
                .filter_map(|o| {
                    let i = st.ring.partition_point(|m| m.offset < *o);
                    st.ring
                        .get(i)
                        .filter(|m| m.offset == *o && member.admits(m))
                        .cloned()
                })
                .collect();
            let next = if offsets.len() >= max {
                offsets[offsets.len() - 1] + 1
            } else if let Some((start, _)) = limit {
                // Everything it wants before the gap: the next call is told of it.
                start
            } else {
                // Everything it wants in the ring: the next call finds it at the end.
                st.next.unwrap_or(from).max(from)
            };
            return CatchUp::Batch(out, next);
        }
        let start = st.ring.partition_point(|m| m.offset < from);
        let mut out = Vec::new();
        let mut next = from;
        for (scanned, m) in st
            .ring
            .range(start..)
            .take_while(|m| below(m.offset))
            .enumerate()
        {
            // The hub's lock is held: a session whose patterns match little of a full
            // ring goes on from `next` at its next call, not in one long scan.
            if scanned == CATCH_UP_SCAN {
                return CatchUp::Batch(out, next);
            }
            next = m.offset + 1;
            if member.wants(m) {
                out.push(m.clone());
                if out.len() >= max {
                    return CatchUp::Batch(out, next);
                }
            }
        }
        if let Some((start, end)) = limit {
            if out.is_empty() {
                return CatchUp::Missed {
                    from: start,
                    to: end,
                };
            }
            return CatchUp::Batch(out, start);
        }
        if out.is_empty() {
            if let Some(m) = st.members.get_mut(&conn) {
                m.live = true;
                m.from = next;
            }
            return CatchUp::Live;
        }
        CatchUp::Batch(out, next)
    }

    /// Whether `conn` wants `m` (a message its own stream reader read).
    pub fn wants(&self, conn: u64, m: &Message) -> bool {
        self.lock()
            .members
            .get(&conn)
            .is_some_and(|member| member.wants(m))
    }

    /// The stream was deleted and declared again: forgets what was read from the old
    /// one and reads the new one from its start (position 0 next, until a message
    /// is read: a reader that fails before its first message starts again there,
    /// not at the new stream's last chunk, which lost what came before it), and ends
    /// every session in the hub: each is told it lagged and then gets
    /// [`CatchUp::Replaced`]. Returns how many sessions there were.
    pub fn reset(&self) -> usize {
        let mut st = self.lock();
        st.ring.clear();
        st.ring_bytes = 0;
        st.ring_keys = HashMap::new();
        st.next = Some(0);
        st.gap = None;
        st.resets += 1;
        for m in st.members.values_mut() {
            m.replaced = true;
            m.live = false;
            m.inbox.lagged.notify_one();
        }
        st.members.len()
    }

    /// Whether position `position` of `stream` (this hub's) is one the stream has: a
    /// resume naming a position past the stream's tail names a stream that was
    /// replaced (or another broker's), and nothing after it can be replayed. True at
    /// once when the hub has read it; else after the hub reads it within
    /// [`AHEAD_WAIT`] (a client from a gateway a little ahead), else when the
    /// stream's tail has it. Resumes waiting together share looks at the tail: one
    /// that began after a resume was asked answers it (a storm of resumes with
    /// positions of a replaced stream looks about twice a second, not once each).
    /// When the tail cannot be read, true: the resume goes on as it would have; so
    /// do the resumes that waited for that look (RabbitMQ away, each would otherwise
    /// wait `broker_wait_ms` for a look of its own, one after another).
    pub(crate) async fn holds_position(
        &self,
        broker: &Broker,
        stream: &str,
        position: u64,
    ) -> bool {
        self.holds_position_by(stream, position, || stream_tail(broker, stream, position))
            .await
    }

    /// [`Hub::holds_position`], looking at the tail with `look`.
    async fn holds_position_by<F, Fut>(&self, stream: &str, position: u64, look: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<u64>, GatewayError>>,
    {
        // The client had the position before it asked: a look at the tail taken
        // after this would have seen it.
        let asked = Instant::now();
        let read = || self.lock().next.is_some_and(|n| n > position);
        let deadline = asked + AHEAD_WAIT;
        while !read() {
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if read() {
            return true;
        }
        let mut last = self.tail.lock().await;
        if read() {
            return true;
        }
        let resets = self.lock().resets;
        if let Some(answer) = last.and_then(|look| look.holds(position, asked, resets)) {
            return answer;
        }
        let began = Instant::now();
        match look().await {
            Ok(tail) => {
                *last = Some(TailLook::new(began, resets, position, tail));
                tail.is_some_and(|t| t >= position)
            }
            Err(e) => {
                tracing::warn!(stream, error = %e, "cannot read the stream's tail; the resume goes on");
                // Only RabbitMQ away (a wait of `broker_wait_ms`) answers the others:
                // a quick failure (the stream being declared again) may not last.
                if matches!(e, GatewayError::Unavailable) {
                    *last = Some(TailLook::failed(began, resets));
                }
                true
            }
        }
    }

    /// Whether retention took positions of `stream` from `from` on: a reader that
    /// skipped from `from` to a later position skipped messages only when the
    /// stream's first message is now past `from` ([`first_position`]). Sessions that
    /// found a gap together (a storm of resumes from positions retention took) share
    /// looks: one that began after a gap was found answers it, so they take two
    /// looks, not one reader each on the broker. A failed look is taken as a loss.
    pub(crate) async fn retention_took(&self, broker: &Broker, stream: &str, from: u64) -> bool {
        self.retention_took_by(from, || first_position(broker, stream))
            .await
    }

    /// [`Hub::retention_took`] for the hub's own reader: a look of its own, never
    /// waiting behind a session's (the live flow of every session waits for this
    /// one; a session's look under way may not answer it, so waiting doubled that
    /// wait when RabbitMQ was slow). What it finds answers the sessions' gaps found
    /// before it began.
    pub(crate) async fn retention_took_now(
        &self,
        broker: &Broker,
        stream: &str,
        from: u64,
    ) -> bool {
        let resets = self.lock().resets;
        let began = Instant::now();
        let look = FirstLook {
            began,
            resets,
            first: first_position(broker, stream).await,
        };
        if let Ok(mut last) = self.first.try_lock() {
            if last.is_none_or(|l| l.began < began) {
                *last = Some(look);
            }
        }
        look.says_taken(from)
    }

    /// [`Hub::retention_took`], looking at the first message with `look`.
    async fn retention_took_by<F, Fut>(&self, from: u64, look: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<u64>>,
    {
        let asked = Instant::now();
        let mut last = self.first.lock().await;
        let resets = self.lock().resets;
        if let Some(answer) = last.and_then(|l| l.took(from, asked, resets)) {
            return answer;
        }
        let began = Instant::now();
        let taken = FirstLook {
            began,
            resets,
            first: look().await,
        };
        *last = Some(taken);
        taken.says_taken(from)
    }

    /// Whether position `offset` is in the ring (a reader can hand over to it): not
    /// when it is one the hub never read ([`State::gap`]).
    pub fn holds(&self, offset: u64) -> bool {
        let st = self.lock();
        st.ring.front().is_some_and(|m| m.offset <= offset)
            && !st
                .gap
                .is_some_and(|(start, end)| start <= offset && offset < end)
    }

    /// Its reader started (`true`) or stopped reading the stream.
    fn set_reading(&self, reading: bool) {
        let mut since = self
            .not_reading_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match (reading, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// How long its reader has not been reading the stream (`None`: it is reading),
    /// for `/healthz`: sessions get nothing of the stream meanwhile.
    pub fn not_reading_for(&self) -> Option<Duration> {
        self.not_reading_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|since| since.elapsed())
    }

    /// Waits, until `until` at most, for the reader to have read the stream's tail once
    /// (or found the stream empty). Returns whether it has. A deadline, not a
    /// duration: waits for several hubs share one.
    pub async fn wait_ready(&self, until: tokio::time::Instant) -> bool {
        let mut rx = self.ready.subscribe();
        let waited = tokio::time::timeout_at(until, rx.wait_for(|r| *r)).await;
        matches!(waited, Ok(Ok(_)))
    }
}

/// How many positions from `from` retention dropped, when a reader asked to start at
/// `from` got its first message at `first` (or, reading on, got `first` next after
/// the message before `from`): none when `first` is `from` or the position after it.
/// RabbitMQ 3.10 begins each stream segment with a bookkeeping chunk of one position,
/// which readers are never given, so a reader asked for that position, or reading
/// into a new segment, gets the next message; a reader asked for a position
/// retention dropped, or overtaken by retention while it read, goes on at the first
/// kept segment, whose bookkeeping position comes first. So a loss always skips two
/// positions or more, and a skip of one is no loss. A skip of two or more is a loss
/// only if [`Hub::retention_took`] says so: offsets a stream-protocol consumer stores take
/// positions too. Every read of the hub's reader
/// ([`Hub::publish`]) and of a session's ([`crate::session_core::Positions::read`]) is
/// checked with it.
pub(crate) fn lost_between(from: u64, first: u64) -> u64 {
    match first.saturating_sub(from) {
        0 | 1 => 0,
        n => n,
    }
}

/// The reader, expecting position `start`, got `end`: retention dropped `start..end`
/// before it read them (while the reader was away, or overtaking it as it lagged the
/// stream). The ring keeps what it has but knows of the gap (one at most:
/// what lies before an older gap's end goes), and every live member that has not
/// reached `end` stops being live and catches up from `start` at the latest, where it
/// is told what it missed ([`CatchUp::Missed`]). It has been pushed everything it
/// wanted before `start`.
fn skipped(st: &mut State, start: u64, end: u64) {
    if let Some((_, old_end)) = st.gap.take() {
        while st.ring.front().is_some_and(|m| m.offset < old_end) {
            evict_oldest(st);
        }
    }
    if !st.ring.is_empty() {
        st.gap = Some((start, end));
    }
    tracing::warn!(
        from = start,
        to = end,
        "the stream no longer holds positions the hub had not read (retention dropped them while its reader was away or lagged the stream); its sessions are told what they missed"
    );
    for m in st.members.values_mut() {
        if m.live && m.from < end {
            m.from = m.from.max(start);
            m.live = false;
            m.inbox.lagged.notify_one();
        }
    }
}

/// Drops the ring's oldest message (and a gap nothing in the ring precedes any
/// more); `false` when the ring is empty.
fn evict_oldest(st: &mut State) -> bool {
    let Some(old) = st.ring.pop_front() else {
        return false;
    };
    st.ring_bytes -= old.size();
    for k in &old.keys {
        if let Some(list) = st.ring_keys.get_mut(k) {
            if list.front() == Some(&old.offset) {
                list.pop_front();
            }
            if list.is_empty() {
                st.ring_keys.remove(k);
            }
        }
    }
    let (len, capacity) = (st.ring_keys.len(), st.ring_keys.capacity());
    if capacity > RING_KEYS_KEPT && len < capacity / 4 {
        st.ring_keys.shrink_to(len * 2);
    }
    if st
        .gap
        .is_some_and(|(start, _)| st.ring.front().is_none_or(|m| m.offset >= start))
    {
        st.gap = None;
    }
    true
}

/// Adds one reference to `key` for `conn`, held from position `since` when new.
fn add_key(st: &mut State, conn: u64, key: &str, since: u64) {
    let Some(m) = st.members.get_mut(&conn) else {
        return;
    };
    let held = m
        .keys
        .entry(key.to_string())
        .or_insert(Held { refs: 0, since });
    held.refs += 1;
    if held.refs == 1 {
        if is_pattern(key) {
            st.patterns.insert(key, conn);
        } else {
            st.exact.entry(key.to_string()).or_default().insert(conn);
        }
    }
}

fn unindex(st: &mut State, conn: u64, key: &str) {
    if is_pattern(key) {
        st.patterns.remove(key, conn);
    } else if let Some(set) = st.exact.get_mut(key) {
        set.remove(&conn);
        if set.is_empty() {
            st.exact.remove(key);
        }
    }
}

/// The argument of a stream consumer starting at `offset` (`None`: the last chunk).
fn offset_arg(offset: Option<u64>) -> FieldTable {
    let mut t = FieldTable::default();
    let v = match offset {
        Some(n) => AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX)),
        None => AMQPValue::LongString("last".into()),
    };
    t.insert(ShortString::from(crate::delivery::STREAM_OFFSET), v);
    t
}

pub(crate) async fn consume_stream(
    broker: &Broker,
    stream: &str,
    tag: &str,
    offset: Option<u64>,
    prefetch: u16,
) -> Result<(Channel, Consumer), GatewayError> {
    let ch = broker.scratch().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| GatewayError::amqp("basic.qos", e))?;
    let consumer = ch
        .basic_consume(
            ShortString::from(stream),
            ShortString::from(tag),
            BasicConsumeOptions::default(),
            offset_arg(offset),
        )
        .await
        .map_err(|e| GatewayError::amqp(format!("basic.consume {stream}"), e))?;
    Ok((ch, consumer))
}

/// Reads the outbound stream into the hub until shutdown: from its last chunk at
/// start, and after a lost connection from the position after the newest message
/// read, so the ring has no gap.
/// A message to users that its publisher wants to hear about when nobody gets it: it
/// names a `reply_to` (the service library's returns queue).
#[derive(Debug, Clone)]
pub struct Addressed {
    /// The users its keys name (`<channel>.user.<u>`).
    pub users: Vec<String>,
    /// Its keys to users.
    pub keys: Vec<String>,
    /// Where to report.
    pub reply_to: String,
    /// Its `message_id`, if any.
    pub message_id: Option<String>,
    /// Its position in the stream.
    pub offset: u64,
    /// Its `x-warren-tenant` header, if any: in tenant mode it reaches only sessions
    /// of that tenant.
    pub tenant: Option<String>,
}

impl Message {
    /// The message as [`Addressed`], when it is one (not a reply, has a `reply_to`,
    /// names users).
    pub fn addressed(&self) -> Option<Addressed> {
        if self.exchange.is_empty() {
            return None;
        }
        let reply_to = self.properties.reply_to().as_ref()?.to_string();
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|k| user_of_key(k).is_some())
            .cloned()
            .collect();
        if keys.is_empty() {
            return None;
        }
        let mut users: Vec<String> = keys
            .iter()
            .filter_map(|k| user_of_key(k).map(str::to_string))
            .collect();
        users.sort();
        users.dedup();
        Some(Addressed {
            users,
            keys,
            reply_to,
            message_id: self.properties.message_id().as_ref().map(|m| m.to_string()),
            offset: self.offset,
            tenant: self.tenant.clone(),
        })
    }
}

/// The user a routing key `<channel>.user.<u>` addresses.
pub fn user_of_key(key: &str) -> Option<&str> {
    let (_, rest) = key.split_once('.')?;
    rest.strip_prefix("user.")
        .filter(|u| !u.is_empty() && !u.contains('.'))
}

/// Reads the outbound stream into `hub`; messages to users with a `reply_to` also go
/// to `addressed` (dropped, with a log line, when it is full).
pub async fn run_reader(
    hub: Arc<Hub>,
    broker: Arc<Broker>,
    stream: String,
    node: String,
    addressed: Option<tokio::sync::mpsc::Sender<Addressed>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
    // Whether a reader of this hub started before: the next start is a restart.
    let mut started_before = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let tag = format!("{node}.hub");
        let start = async {
            let mut from = hub.start_from();
            #[cfg(feature = "fault-injection")]
            if started_before {
                crate::fault::delay(crate::fault::HUB_RESTART_DELAY_MS).await;
            }
            if let Some(next) = from.filter(|n| *n > 0) {
                // Starting again after a read: the stream must still hold what was
                // read (a tail that cannot be read is not read past: tried again).
                let newest = hub.newest();
                if let Some(tail) = replaced(&broker, &stream, next - 1, newest.as_deref()).await? {
                    let sessions = hub.reset();
                    tracing::error!(
                        stream = %stream, read_up_to = next - 1, tail = ?tail, sessions,
                        "the stream no longer holds what was read from it (its tail is below it, or another message is at the last position read): it was deleted and declared again, or RabbitMQ lost its data. Reading the new stream from its start; its sessions are closed (4002) and their clients get fresh sessions with a session_expired notice"
                    );
                    from = Some(0);
                }
            }
            let (ch, consumer) = consume_stream(&broker, &stream, &tag, from, HUB_PREFETCH).await?;
            Ok::<_, GatewayError>((ch, consumer, from))
        };
        let started = tokio::select! {
            r = start => r,
            _ = shutdown.changed() => return,
        };
        let (ch, mut consumer, from) = match started {
            Ok(x) => x,
            Err(e) => {
                hub.set_reading(false);
                attempt += 1;
                tracing::warn!(error = %e, attempt, "outbound stream reader cannot start");
                if e.is_not_found() {
                    // Deleted (to empty it, by mistake): declared again, so that what
                    // services publish is kept and delivered again.
                    match broker.declare_topology_again().await {
                        Ok(()) => {
                            tracing::warn!(stream = %stream, "the stream was missing: the topology is declared again")
                        }
                        Err(e) => {
                            tracing::warn!(stream = %stream, error = %e, "the stream is missing and declaring the topology again failed")
                        }
                    }
                }
                let wait = Duration::from_millis((100u64 << attempt.min(5)).min(3000));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        tracing::info!(stream = %stream, from = ?from, restart = started_before, "outbound stream reader started");
        started_before = true;
        hub.set_reading(true);
        attempt = 0;
        // An empty stream sends nothing for `last`: ready once nothing came for a bit.
        let quiet = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(quiet);
        let mut unacked = 0u32;
        loop {
            tokio::select! {
                d = consumer.next() => {
                    let Some(Ok(d)) = d else {
                        tracing::warn!("outbound stream reader stopped; restarting");
                        break;
                    };
                    #[cfg(feature = "fault-injection")]
                    crate::fault::delay(crate::fault::HUB_READ_DELAY_MS).await;
                    if let Some(m) = Message::from_delivery(&d) {
                        if let Some(from) = hub.skip_before(m.offset) {
                            if !hub.retention_took_now(&broker, &stream, from).await {
                                hub.no_gap_before(m.offset);
                            }
                        }
                        take_read(&hub, m, addressed.as_ref());
                    }
                    unacked += 1;
                    // A stream consumer acks only to get more credit: one ack for many.
                    if unacked >= ACK_EVERY {
                        let _ = d.acker.ack(BasicAckOptions { multiple: true }).await;
                        unacked = 0;
                    }
                    if !*hub.ready.borrow() {
                        hub.ready.send_replace(true);
                    }
                }
                () = &mut quiet, if !*hub.ready.borrow() => {
                    hub.ready.send_replace(true);
                }
                _ = shutdown.changed() => {
                    let _ = ch.basic_cancel(ShortString::from(tag.as_str()), BasicCancelOptions::default()).await;
                    return;
                }
            }
        }
        hub.set_reading(false);
        let _ = ch.close(200, "restart".into()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A message the hub's reader read: into the hub, then to `addressed` when it is one
/// ([`Message::addressed`]) and the hub had not read it before. A reader started again
/// may read again messages the hub has (it may begin at the chunk holding the position
/// it asks for; RabbitMQ 3.10.8 was measured starting at the position itself): they
/// are dropped by [`Hub::publish`], and were reported the first time.
fn take_read(hub: &Hub, m: Message, addressed: Option<&tokio::sync::mpsc::Sender<Addressed>>) {
    let offset = m.offset;
    let report = addressed.and_then(|tx| m.addressed().map(|a| (tx, a)));
    if let (true, Some((tx, a))) = (hub.publish(m), report) {
        if tx.try_send(a).is_err() {
            tracing::warn!(offset, "undelivered-report queue full; not checked");
        }
    }
}

/// Whether `stream` was replaced under a reader that read up to `read_up_to`: its tail
/// is below that in three looks a second apart (one could catch a replica of a
/// cluster node that lags its leader for a moment). `Some(tail)` when it was; `None`
/// when it holds what was read.
///
/// When the tail has it and the hub still holds `newest`, the message read at
/// `read_up_to` (its last), the stream must hold that same message there: a stream
/// declared again that got as many messages before this look holds another.
///
/// A replica far behind does not pass for a replaced stream: measured on RabbitMQ
/// 3.10.8 (2026-12-02, three nodes), a replica restarted after 600 MB were written
/// without it refused consumers (`PRECONDITION_FAILED`, "does not have a replica on
/// the local node") for 24 s and then answered with the leader's tail; a look every
/// 50 ms never saw it part-way. A refused look is an error here, tried again.
///
/// # Errors
/// When the tail cannot be read (the stream is not there yet, the broker is away).
async fn replaced(
    broker: &Broker,
    stream: &str,
    read_up_to: u64,
    newest: Option<&Message>,
) -> Result<Option<Option<u64>>, GatewayError> {
    let mut tail = None;
    for look in 0..3 {
        if look > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match stream_tail(broker, stream, read_up_to).await? {
            Some(t) if t >= read_up_to => {
                let Some(newest) = newest.filter(|m| m.offset == read_up_to) else {
                    return Ok(None);
                };
                return Ok(match message_at(broker, stream, read_up_to).await? {
                    Some(there) if !there.same_as(newest) => Some(Some(t)),
                    // The same message, or none to compare (gone to retention).
                    _ => None,
                });
            }
            t => tail = t,
        }
    }
    Ok(Some(tail))
}

/// The position of `stream`'s first message, which says whether retention took
/// positions a reader skipped ([`Hub::retention_took`]). Positions hold more than
/// messages: RabbitMQ 3.10 begins each segment with one, and each offset a
/// stream-protocol consumer stores on the stream (server-side offset tracking) takes
/// one, so two stores with no message between them are a skip of two, which readers
/// are never given and nobody missed. Retention deletes whole segments from the
/// start, so positions at or after the first message it kept were not deleted.
/// `None` when the look fails or times out, or the stream holds no message.
async fn first_position(broker: &Broker, stream: &str) -> Option<u64> {
    let tag = format!("warren.first.{}", uuid::Uuid::new_v4().simple());
    // Each step bounded: the hub's reader and the sessions wait for the look.
    let bound = TAIL_QUIET * 10;
    let open = tokio::time::timeout(bound, Reader::open(broker, stream, tag, 0, 1)).await;
    let Ok(Ok(mut reader)) = open else {
        return None;
    };
    let first = tokio::time::timeout(bound, reader.next()).await;
    let _ = tokio::time::timeout(bound, reader.close()).await;
    first.ok().flatten().map(|m| m.offset)
}

/// The message at `offset` of `stream` (`None` when the stream no longer holds it,
/// or nothing came within [`TAIL_QUIET`] × 10), read with a [`Reader`] of its own.
///
/// # Errors
/// When the stream cannot be consumed (not there, broker away, the reader ended).
async fn message_at(
    broker: &Broker,
    stream: &str,
    offset: u64,
) -> Result<Option<Message>, GatewayError> {
    let tag = format!("warren.at.{}", uuid::Uuid::new_v4().simple());
    let mut reader = Reader::open(broker, stream, tag, offset, 1).await?;
    let read = match tokio::time::timeout(TAIL_QUIET * 10, reader.next()).await {
        Ok(Some(m)) => Ok((m.offset == offset).then_some(m)),
        Ok(None) => Err(GatewayError::Cancelled {
            what: format!("position {offset} of {stream}"),
        }),
        Err(_) => Ok(None),
    };
    reader.close().await;
    read
}

/// The position of the newest message in `stream`, read from its last chunk (`None`:
/// the stream is empty). Stops reading as soon as a position at or past `at_least`
/// came (the stream has it), else after [`TAIL_QUIET`] without a message, and after
/// [`TAIL_LOOK_MAX`] at most (messages still coming): then the highest position read.
///
/// # Errors
/// When the stream cannot be consumed (not there, broker away).
pub(crate) async fn stream_tail(
    broker: &Broker,
    stream: &str,
    at_least: u64,
) -> Result<Option<u64>, GatewayError> {
    let tag = format!("warren.tail.{}", uuid::Uuid::new_v4().simple());
    let (ch, mut consumer) = consume_stream(broker, stream, &tag, None, HUB_PREFETCH).await?;
    let mut tail: Option<u64> = None;
    let mut unacked = 0u32;
    let deadline = tokio::time::Instant::now() + TAIL_LOOK_MAX;
    let read = loop {
        let quiet = deadline.min(tokio::time::Instant::now() + TAIL_QUIET);
        let d = match tokio::time::timeout_at(quiet, consumer.next()).await {
            Err(_) => break Ok(tail),
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => {
                break Err(GatewayError::amqp(
                    format!("reading the tail of {stream}"),
                    e,
                ))
            }
            // Cancelled by the broker (the stream was deleted meanwhile): no answer.
            Ok(None) => {
                break Err(GatewayError::Cancelled {
                    what: format!("the tail of {stream}"),
                })
            }
        };
        if let Some(offset) = stream_offset(d.properties.headers().as_ref()) {
            tail = tail.max(Some(offset));
        }
        if tail.is_some_and(|t| t >= at_least) || tokio::time::Instant::now() >= deadline {
            break Ok(tail);
        }
        unacked += 1;
        if unacked >= ACK_EVERY {
            let _ = d.acker.ack(BasicAckOptions { multiple: true }).await;
            unacked = 0;
        }
    };
    let _ = ch.close(200, "tail read".into()).await;
    read
}

/// A session's own reader of the stream, for a position older than the ring.
pub struct Reader {
    channel: Channel,
    consumer: Consumer,
    tag: String,
    unacked: u16,
    ack_every: u16,
    to_ack: Option<lapin::Acker>,
    /// The `max_stream_readers` slot it holds while open ([`Reader::holding`]).
    slot: Option<crate::replay::Slot>,
}

impl Reader {
    /// Starts reading `stream` at `from`.
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached or refuses.
    pub async fn open(
        broker: &Broker,
        stream: &str,
        tag: String,
        from: u64,
        prefetch: u16,
    ) -> Result<Reader, GatewayError> {
        #[cfg(feature = "fault-injection")]
        crate::fault::delay(crate::fault::READER_OPEN_DELAY_MS).await;
        let (channel, consumer) =
            consume_stream(broker, stream, &tag, Some(from), prefetch).await?;
        Ok(Reader {
            channel,
            consumer,
            tag,
            unacked: 0,
            ack_every: (prefetch / 2).max(1),
            to_ack: None,
            slot: None,
        })
    }

    /// The reader, holding `slot` until it is closed or dropped.
    #[must_use]
    pub fn holding(mut self, slot: crate::replay::Slot) -> Reader {
        self.slot = Some(slot);
        self
    }

    /// The next message, `None` when the reader failed.
    ///
    /// Cancel-safe (it is raced against the socket in the connection's `select!`):
    /// the only await is the consumer's. The ack that gives the stream more credit is
    /// left for [`Reader::settle`], once per half prefetch.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            let d = self.consumer.next().await?.ok()?;
            self.unacked += 1;
            if self.unacked >= self.ack_every {
                self.unacked = 0;
                self.to_ack = Some(d.acker.clone());
            }
            if let Some(m) = Message::from_delivery(&d) {
                return Some(m);
            }
        }
    }

    /// Acknowledges (for credit) everything read up to the last batch boundary.
    pub async fn settle(&mut self) {
        if let Some(acker) = self.to_ack.take() {
            let _ = acker.ack(BasicAckOptions { multiple: true }).await;
        }
    }

    /// Stops reading and closes its channel.
    pub async fn close(self) {
        let _ = self
            .channel
            .basic_cancel(
                ShortString::from(self.tag.as_str()),
                BasicCancelOptions::default(),
            )
            .await;
        let _ = self.channel.close(200, "done".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(offset: u64, key: &str) -> Message {
        Message::new(
            offset,
            "warren.out".into(),
            key.into(),
            BasicProperties::default(),
            b"{}".to_vec(),
        )
    }

    /// What `conn` catches up from `from`, 16 at a time, until it is live again (the
    /// ring must hold it all).
    fn catch_up_from_ring(hub: &Hub, conn: u64, mut from: u64) -> Vec<u64> {
        let mut got = Vec::new();
        loop {
            match hub.catch_up(conn, from, 16) {
                CatchUp::Batch(ms, next) => {
                    got.extend(ms.iter().map(|m| m.offset));
                    from = next;
                }
                CatchUp::Live => return got,
                other => panic!("the ring holds everything: {other:?}"),
            }
        }
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    /// The offsets waiting in `inbox`, taken in order.
    fn offsets(inbox: &Inbox) -> Vec<u64> {
        std::iter::from_fn(|| inbox.try_recv())
            .map(|m| m.offset)
            .collect()
    }

    #[test]
    fn an_inbox_keeps_order_holds_its_bound_and_gives_back_a_bursts_room() {
        let inbox = Inbox::default();
        for i in 0..LIVE_BACKLOG as u64 {
            assert!(inbox.push(Arc::new(msg(i, "k"))), "room for {i}");
        }
        assert!(!inbox.push(Arc::new(msg(99, "k"))), "full at LIVE_BACKLOG");
        let got = offsets(&inbox);
        assert_eq!(got, (0..LIVE_BACKLOG as u64).collect::<Vec<_>>());
        assert!(
            inbox.queue().capacity() <= INBOX_KEPT,
            "an emptied inbox keeps room for {INBOX_KEPT}, not the burst's {LIVE_BACKLOG}"
        );
        assert_eq!(
            Inbox::default().queue().capacity(),
            0,
            "nothing before a message"
        );
    }

    #[tokio::test]
    async fn a_waiting_inbox_wakes_on_a_push_and_a_dropped_wait_loses_nothing() {
        let inbox = Arc::new(Inbox::default());
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.recv().await.offset }
        });
        tokio::task::yield_now().await;
        assert!(inbox.push(Arc::new(msg(1, "k"))));
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(got.expect("woken").expect("no panic"), 1);

        // A wait that is woken and then dropped (the connection's select took another
        // branch) leaves the message queued and the next wait finds it at once.
        let mut first = Box::pin(inbox.recv());
        assert!(futures_util::poll!(first.as_mut()).is_pending());
        assert!(inbox.push(Arc::new(msg(2, "k"))));
        drop(first);
        let next = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await;
        assert_eq!(next.expect("not lost").offset, 2);
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn a_live_member_gets_what_its_keys_and_patterns_match_once() {
        let hub = Hub::new(100);
        let (a, _) = hub.join(1, "s1", None);
        hub.subscribe(1, &keys(&["chat.all", "chat.event.order.*"]));
        hub.publish(msg(0, "chat.all"));
        hub.publish(msg(1, "chat.group.g"));
        hub.publish(msg(2, "chat.event.order.created"));
        hub.publish(msg(3, "chat.event.user.created"));
        let got = offsets(&a.inbox);
        assert_eq!(got, vec![0, 2]);
    }

    fn tenant_msg(offset: u64, key: &str, tenant: Option<&str>) -> Message {
        let mut h = FieldTable::default();
        if let Some(t) = tenant {
            h.insert(H_TENANT.into(), AMQPValue::LongString(t.into()));
        }
        Message::new(
            offset,
            "warren.out".into(),
            key.into(),
            BasicProperties::default().with_headers(h),
            b"{}".to_vec(),
        )
    }

    #[test]
    fn in_tenant_mode_a_member_gets_only_its_tenants_messages_live_and_catching_up() {
        let hub = Hub::with_tenants(100, true);
        let (acme, _) = hub.join_tenant(1, "s1", Some("acme"), None);
        let (globex, _) = hub.join_tenant(2, "s2", Some("globex"), None);
        let (none, _) = hub.join_tenant(3, "s3", None, None);
        for conn in 1..=3 {
            hub.subscribe(conn, &keys(&["chat.all", "chat.event.#"]));
        }
        hub.publish(tenant_msg(0, "chat.all", Some("acme")));
        hub.publish(tenant_msg(1, "chat.event.x", Some("globex")));
        hub.publish(tenant_msg(2, "chat.all", None));
        assert_eq!(offsets(&acme.inbox), vec![0]);
        assert_eq!(offsets(&globex.inbox), vec![1]);
        assert_eq!(offsets(&none.inbox), vec![2]);
        // A resume catching up from the ring is filtered alike (exact keys and patterns).
        let (_late, _) = hub.join_tenant(4, "s4", Some("acme"), Some(0));
        hub.subscribe(4, &keys(&["chat.all"]));
        match hub.catch_up(4, 0, 10) {
            CatchUp::Batch(b, _) => {
                assert_eq!(b.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![0])
            }
            other => panic!("{other:?}"),
        }
        let (_late, _) = hub.join_tenant(5, "s5", Some("globex"), Some(0));
        hub.subscribe(5, &keys(&["chat.#"]));
        match hub.catch_up(5, 0, 10) {
            CatchUp::Batch(b, _) => {
                assert_eq!(b.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![1])
            }
            other => panic!("{other:?}"),
        }
        // Outside tenant mode nobody is filtered.
        let open = Hub::new(100);
        let (any, _) = open.join_tenant(1, "s1", Some("acme"), None);
        open.subscribe(1, &keys(&["chat.all"]));
        open.publish(tenant_msg(0, "chat.all", Some("globex")));
        assert_eq!(offsets(&any.inbox), vec![0]);
    }

    #[test]
    fn in_tenant_mode_a_tenant_header_that_is_not_text_reaches_no_session_without_a_tenant() {
        let hub = Hub::with_tenants(100, true);
        let (acme, _) = hub.join_tenant(1, "s1", Some("acme"), None);
        let (none, _) = hub.join_tenant(2, "s2", None, None);
        for conn in 1..=2 {
            hub.subscribe(conn, &keys(&["chat.all"]));
        }
        let with = |offset, value| {
            let mut h = FieldTable::default();
            h.insert(H_TENANT.into(), value);
            Message::new(
                offset,
                "warren.out".into(),
                "chat.all".into(),
                BasicProperties::default().with_headers(h),
                b"{}".to_vec(),
            )
        };
        // Bytes are the tenant's name; a number names nobody's.
        hub.publish(with(0, AMQPValue::ByteArray(b"acme".to_vec().into())));
        hub.publish(with(1, AMQPValue::LongLongInt(7)));
        assert_eq!(offsets(&acme.inbox), vec![0]);
        assert_eq!(offsets(&none.inbox), Vec::<u64>::new());
    }

    /// A key subscribed now is not caught up with from before: a session that fell
    /// behind (its inbox filled), dropped that subscription (emptying its inbox) and
    /// took another, catching up from its last delivery, got the new key's messages
    /// the hub read before the subscribe, at positions below those its client already
    /// held. Exact keys (the ring's index), patterns (the scan) and a reader of its
    /// own alike; a key held at resume still gets what it had since its position.
    #[test]
    fn a_key_subscribed_while_catching_up_gets_nothing_from_before_it() {
        let hub = Hub::new(1000);
        let (a, _) = hub.join(1, "s1", None);
        let (p, _) = hub.join(2, "s2", None);
        hub.subscribe_at(1, &keys(&["chat.group.a"]));
        hub.subscribe_at(2, &keys(&["chat.group.a"]));
        hub.publish(msg(0, "chat.group.a"));
        assert_eq!((offsets(&a.inbox), offsets(&p.inbox)), (vec![0], vec![0]));
        for o in 1..=10 {
            hub.publish(msg(o, "chat.group.b"));
        }
        let burst = 11..11 + LIVE_BACKLOG as u64 + 1;
        for o in burst.clone() {
            hub.publish(msg(o, "chat.group.a"));
        }
        for (conn, new) in [(1, "chat.group.b"), (2, "chat.group.*")] {
            hub.unsubscribe(conn, &keys(&["chat.group.a"]));
            assert_eq!(hub.subscribe_at(conn, &keys(&[new])), None, "behind");
            assert!(!hub.wants(conn, &msg(5, "chat.group.b")), "{new}");
            assert!(hub.wants(conn, &msg(200, "chat.group.b")), "{new}");
        }
        assert!(offsets(&a.inbox).is_empty() && offsets(&p.inbox).is_empty());
        for conn in [1, 2] {
            assert_eq!(
                catch_up_from_ring(&hub, conn, 1),
                Vec::<u64>::new(),
                "session {conn}: b's messages came before its subscription"
            );
        }
        let next = burst.end;
        hub.publish(msg(next, "chat.group.b"));
        assert_eq!(
            (offsets(&a.inbox), offsets(&p.inbox)),
            (vec![next], vec![next])
        );
        // A key held at resume gets what it had since the session's position.
        let (_r, _) = hub.join(3, "s3", Some(1));
        hub.subscribe(3, &keys(&["chat.group.b"]));
        assert!(hub.wants(3, &msg(5, "chat.group.b")));
        let mut want: Vec<u64> = (1..=10).collect();
        want.push(next);
        assert_eq!(catch_up_from_ring(&hub, 3, 1), want);
    }

    #[test]
    fn a_cc_header_sent_as_bytes_routes_as_a_string_does() {
        let hub = Hub::new(100);
        let (a, _) = hub.join(1, "s1", None);
        let (b, _) = hub.join(2, "s2", None);
        let (c, _) = hub.join(3, "s3", None);
        hub.subscribe(1, &keys(&["chat.user.a"]));
        hub.subscribe(2, &keys(&["chat.user.b"]));
        hub.subscribe(3, &keys(&["chat.user.c"]));
        // As a service in Go or Java sends it: `x-warren-cc` as a byte array.
        let mut h = FieldTable::default();
        h.insert(
            H_CC.into(),
            AMQPValue::ByteArray(b"chat.user.b chat.user.c".to_vec().into()),
        );
        hub.publish(Message::new(
            7,
            "warren.out".into(),
            "chat.user.a".into(),
            BasicProperties::default().with_headers(h),
            b"1".to_vec(),
        ));
        for inbox in [&a.inbox, &b.inbox, &c.inbox] {
            assert_eq!(inbox.try_recv().unwrap().offset, 7);
        }
        // `CC` itself, its keys as byte arrays.
        let mut h = FieldTable::default();
        h.insert(
            "CC".into(),
            AMQPValue::FieldArray(
                vec![AMQPValue::ByteArray(b"chat.user.c".to_vec().into())].into(),
            ),
        );
        hub.publish(Message::new(
            8,
            "warren.out".into(),
            "chat.user.a".into(),
            BasicProperties::default().with_headers(h),
            b"1".to_vec(),
        ));
        assert_eq!(c.inbox.try_recv().unwrap().offset, 8);
    }

    #[test]
    fn a_live_member_whose_full_inbox_an_unsubscribe_emptied_catches_up_from_the_overflow() {
        let hub = Hub::new(10);
        let (a, _) = hub.join(1, "s", None);
        hub.subscribe_at(1, &keys(&["chat.all", "chat.group.b"]));
        hub.publish(msg(0, "chat.all"));
        assert_eq!(offsets(&a.inbox), vec![0]); // its position: 0, then chat.all is quiet
        for o in 1..=100 {
            hub.publish(msg(o, "chat.group.x")); // the ring moves past 1
        }
        let burst = 101..=101 + LIVE_BACKLOG as u64;
        for o in burst.clone() {
            hub.publish(msg(o, "chat.group.b")); // the last push finds the inbox full
        }
        hub.unsubscribe(1, &keys(&["chat.group.b"])); // what waited is taken out
        assert!(offsets(&a.inbox).is_empty());
        // Its catch-up from its position after 0 starts at the overflow, in the
        // ring: not `Behind` (a stream reader from position 1).
        match hub.catch_up(1, 1, 16) {
            CatchUp::Behind { from } => panic!("behind the ring from {from}"),
            CatchUp::Live | CatchUp::Batch(..) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reader_starting_again_before_it_read_anything_reads_from_the_start_once_ready() {
        let hub = Hub::new(100);
        // The first start reads the stream's last chunk.
        assert_eq!(hub.start_from(), None);
        // Ready having read nothing (the stream looked empty): sessions joined live
        // from there, so everything the stream holds at a restart is new to them.
        hub.ready.send_replace(true);
        assert_eq!(hub.start_from(), Some(0));
        // Once it read, after the last position read.
        hub.publish(msg(5, "chat.all"));
        assert_eq!(hub.start_from(), Some(6));
    }

    #[test]
    fn a_cc_header_routes_one_message_to_every_named_key() {
        let hub = Hub::new(100);
        let (a, _) = hub.join(1, "s1", None);
        let (b, _) = hub.join(2, "s2", None);
        hub.subscribe(1, &keys(&["chat.user.a"]));
        hub.subscribe(2, &keys(&["chat.user.b"]));
        let mut h = FieldTable::default();
        h.insert(
            "CC".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("chat.user.b".into())].into()),
        );
        hub.publish(Message::new(
            7,
            "warren.out".into(),
            "chat.user.a".into(),
            BasicProperties::default().with_headers(h),
            b"1".to_vec(),
        ));
        assert_eq!(a.inbox.try_recv().unwrap().offset, 7);
        assert_eq!(b.inbox.try_recv().unwrap().offset, 7);
        // Read back from a stream the array is gone; the string header stands in.
        let mut h = FieldTable::default();
        h.insert(H_CC.into(), AMQPValue::LongString("chat.user.b".into()));
        hub.publish(Message::new(
            8,
            "warren.out".into(),
            "chat.user.a".into(),
            BasicProperties::default().with_headers(h),
            b"1".to_vec(),
        ));
        let m = b.inbox.try_recv().unwrap();
        assert_eq!(a.inbox.try_recv().unwrap().offset, 8);
        assert_eq!(m.offset, 8);
        // Each receives it by the key it holds; one holding both, by the routing key.
        assert_eq!(m.key_for(|k| k == "chat.user.b"), "chat.user.b");
        assert_eq!(m.key_for(|k| k == "chat.user.a"), "chat.user.a");
        assert_eq!(m.key_for(|_| true), "chat.user.a");
        assert_eq!(m.key_for(|_| false), "chat.user.a", "none held: as it is");
    }

    #[test]
    fn a_message_naming_its_key_again_in_cc_does_not_cut_a_catch_up_short() {
        let hub = Hub::new(1000);
        let (_a, _) = hub.join(1, "s1", Some(0));
        hub.subscribe(1, &keys(&["chat.all"]));
        // Its routing key again, in both forms a publisher may send (as the service
        // library's and the HTTP API's never do).
        for i in 0..10 {
            let mut h = FieldTable::default();
            h.insert(
                H_CC.into(),
                AMQPValue::LongString("chat.all chat.all".into()),
            );
            hub.publish(Message::new(
                i,
                "warren.out".into(),
                "chat.all".into(),
                BasicProperties::default().with_headers(h),
                b"1".to_vec(),
            ));
        }
        for i in 10..100 {
            hub.publish(msg(i, "chat.all"));
        }
        let got = catch_up_from_ring(&hub, 1, 0);
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "none skipped");
    }

    #[test]
    fn a_resume_before_the_hub_read_anything_is_sent_to_the_stream() {
        // The reader starts at the stream's last chunk: the hub cannot tell what
        // came between the client's position and there.
        let hub = Hub::new(100);
        let (_a, head) = hub.join(1, "s1", Some(1));
        assert_eq!(head, None);
        hub.subscribe(1, &keys(&["chat.all"]));
        assert!(matches!(
            hub.catch_up(1, 1, 10),
            CatchUp::Behind { from: 1 }
        ));
    }

    #[test]
    fn a_reply_reaches_only_the_session_it_answers() {
        let hub = Hub::new(100);
        let (a, _) = hub.join(1, "s1", None);
        let (b, _) = hub.join(2, "s2", None);
        let p = BasicProperties::default().with_correlation_id("s2/r1".into());
        hub.publish(Message::new(
            0,
            String::new(),
            "warren.out.stream".into(),
            p,
            b"1".to_vec(),
        ));
        assert!(a.inbox.try_recv().is_none());
        assert_eq!(b.inbox.try_recv().unwrap().offset, 0);
    }

    #[test]
    fn a_subscription_names_the_head_only_once_everything_before_it_was_taken() {
        let hub = Hub::new(10_000);
        assert_eq!(
            hub.subscribe_at(9, &keys(&["chat.all"])),
            None,
            "nothing read yet"
        );
        let (a, _) = hub.join(1, "s1", None);
        hub.subscribe(1, &keys(&["chat.all"]));
        hub.publish(msg(0, "chat.group.r2"));
        hub.publish(msg(1, "chat.all"));
        // m1 waits in the inbox: not sent yet, so no position past it.
        assert_eq!(hub.subscribe_at(1, &keys(&["chat.group.r2"])), None);
        assert_eq!(offsets(&a.inbox), [1]);
        hub.publish(msg(2, "chat.group.r3"));
        assert_eq!(
            hub.subscribe_at(1, &keys(&["chat.group.r3"])),
            Some(2),
            "everything it wanted up to 2 was taken"
        );
        // A member that is not live (it lagged, or catches up) gets none.
        let (_b, _) = hub.join(2, "s2", Some(0));
        assert_eq!(hub.subscribe_at(2, &keys(&["chat.all"])), None);
    }

    #[test]
    fn a_welcome_names_no_position_past_a_message_still_waiting_in_the_inbox() {
        let hub = Hub::new(10_000);
        hub.publish(msg(0, "chat.all"));
        hub.publish(msg(1, "chat.group.r1"));
        let (a, _) = hub.join(1, "s1", None);
        assert_eq!(hub.welcome_head(1), Some(1), "nothing waits: the head");
        hub.subscribe(1, &keys(&["chat.all"]));
        // Read between the subscription and the welcome: not sent yet.
        hub.publish(msg(2, "chat.group.r2"));
        hub.publish(msg(3, "chat.all"));
        hub.publish(msg(4, "chat.all"));
        assert_eq!(hub.head(), Some(4));
        assert_eq!(hub.welcome_head(1), Some(2), "the one before m3");
        assert_eq!(offsets(&a.inbox), [3, 4]);
        assert_eq!(hub.welcome_head(1), Some(4), "taken: the head again");
        // The stream's first message waiting: no position (replay from the start).
        let hub = Hub::new(10_000);
        let (_b, _) = hub.join(2, "s2", None);
        hub.subscribe(2, &keys(&["chat.all"]));
        hub.publish(msg(0, "chat.all"));
        assert_eq!(hub.welcome_head(2), None);
    }

    #[test]
    fn a_full_member_stops_being_live_and_catches_up_from_the_ring_without_gap_or_duplicate() {
        let hub = Hub::new(10_000);
        let (a, head) = hub.join(1, "s1", None);
        assert_eq!(head, None);
        hub.subscribe(1, &keys(&["chat.all"]));
        let total = LIVE_BACKLOG as u64 + 50;
        for i in 0..total {
            hub.publish(msg(i, "chat.all"));
        }
        let mut got = offsets(&a.inbox);
        assert_eq!(got.len(), LIVE_BACKLOG, "the inbox holds its bound");
        got.extend(catch_up_from_ring(&hub, 1, got.last().unwrap() + 1));
        hub.publish(msg(total, "chat.all"));
        got.extend(offsets(&a.inbox));
        assert_eq!(got, (0..=total).collect::<Vec<_>>());
    }

    #[test]
    fn a_resume_from_before_the_ring_is_sent_to_the_stream_and_one_from_inside_is_served() {
        let hub = Hub::new(5);
        for i in 0..20 {
            hub.publish(msg(i, "chat.all"));
        }
        let (_a, head) = hub.join(1, "s1", Some(3));
        assert_eq!(head, Some(19));
        hub.subscribe(1, &keys(&["chat.all"]));
        assert!(matches!(
            hub.catch_up(1, 3, 10),
            CatchUp::Behind { from: 3 }
        ));
        assert!(hub.holds(15) && !hub.holds(14));
        let CatchUp::Batch(ms, next) = hub.catch_up(1, 17, 10) else {
            panic!()
        };
        assert_eq!(
            ms.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![17, 18, 19]
        );
        assert!(matches!(hub.catch_up(1, next, 10), CatchUp::Live));
    }

    #[test]
    fn a_member_is_never_given_a_position_below_where_it_started() {
        let hub = Hub::new(100);
        for i in 0..5 {
            hub.publish(msg(i, "chat.all"));
        }
        // A client that got up to 9 from a gateway ahead of this one.
        let (a, _) = hub.join(1, "s1", Some(10));
        hub.subscribe(1, &keys(&["chat.all"]));
        assert!(matches!(hub.catch_up(1, 10, 10), CatchUp::Live));
        for i in 5..12 {
            hub.publish(msg(i, "chat.all"));
        }
        let got = offsets(&a.inbox);
        assert_eq!(got, vec![10, 11]);
    }

    #[tokio::test]
    async fn after_a_reset_the_sessions_end_and_the_new_streams_positions_are_taken_from_0() {
        let hub = Hub::new(100);
        for i in 0..5 {
            hub.publish(msg(i, "chat.all"));
        }
        let (live, _) = hub.join(1, "s1", None);
        let (behind, _) = hub.join(2, "s2", Some(2));
        for conn in [1, 2] {
            hub.subscribe(conn, &keys(&["chat.all"]));
        }
        assert_eq!(hub.reset(), 2);
        // Both are told to look, and are then told the stream is gone.
        for m in [&live, &behind] {
            tokio::time::timeout(Duration::from_secs(1), m.inbox.lagged())
                .await
                .expect("told");
        }
        assert!(matches!(hub.catch_up(1, 5, 10), CatchUp::Replaced));
        assert!(matches!(hub.catch_up(2, 2, 10), CatchUp::Replaced));
        // The new stream is read from its start, also by a reader that starts again
        // before its first message.
        assert_eq!(hub.next_offset(), Some(0));
        // The new stream starts over at 0: taken, not dropped as read before, and
        // pushed to a session that joined after the reset; never to the ended ones.
        assert_eq!(hub.head(), None);
        let (fresh, head) = hub.join(3, "s3", None);
        assert_eq!(head, None);
        hub.subscribe(3, &keys(&["chat.all"]));
        for i in 0..3 {
            hub.publish(msg(i, "chat.all"));
        }
        assert_eq!(offsets(&fresh.inbox), vec![0, 1, 2]);
        assert!(offsets(&live.inbox).is_empty());
        assert_eq!(hub.head(), Some(2));
        assert!(hub.holds(0));
        assert!(matches!(hub.catch_up(3, 0, 10), CatchUp::Batch(..)));
    }

    #[tokio::test]
    async fn positions_the_reader_never_read_are_reported_to_every_session_not_skipped() {
        let hub = Hub::new(100);
        let (live, _) = hub.join(1, "s1", None);
        let (_behind, _) = hub.join(2, "s2", Some(2));
        let (_pattern, _) = hub.join(3, "s3", Some(0));
        hub.subscribe(1, &keys(&["chat.all"]));
        hub.subscribe(2, &keys(&["chat.all"]));
        hub.subscribe(3, &keys(&["chat.#"]));
        for i in 0..5 {
            hub.publish(msg(i, "chat.all"));
        }
        // The reader started again at 5; retention had dropped 5..=8 meanwhile.
        hub.publish(msg(9, "chat.all"));
        assert_eq!(offsets(&live.inbox), [0, 1, 2, 3, 4], "9 is not pushed");
        tokio::time::timeout(Duration::from_secs(1), live.inbox.lagged())
            .await
            .expect("the live member is told to catch up");
        // It had everything up to 4 (whatever position its connection names).
        for from in [0, 5] {
            assert!(
                matches!(
                    hub.catch_up(1, from, 10),
                    CatchUp::Missed { from: 5, to: 9 }
                ),
                "four missed after 4"
            );
        }
        assert!(matches!(hub.catch_up(1, 9, 10), CatchUp::Batch(ref b, 10) if b.len() == 1));
        assert!(matches!(hub.catch_up(1, 10, 10), CatchUp::Live));
        hub.publish(msg(10, "chat.all"));
        assert_eq!(offsets(&live.inbox), [10]);
        // Catching up from the ring: what it holds, then the notice, then the rest.
        let CatchUp::Batch(b, next) = hub.catch_up(2, 2, 10) else {
            panic!()
        };
        assert_eq!(
            (b.iter().map(|m| m.offset).collect::<Vec<_>>(), next),
            (vec![2, 3, 4], 5)
        );
        assert!(matches!(
            hub.catch_up(2, 5, 10),
            CatchUp::Missed { from: 5, to: 9 }
        ));
        // By pattern alike.
        assert!(matches!(hub.catch_up(3, 0, 3), CatchUp::Batch(_, 3)));
        assert!(matches!(hub.catch_up(3, 3, 10), CatchUp::Batch(ref b, 5) if b.len() == 2));
        assert!(matches!(
            hub.catch_up(3, 5, 10),
            CatchUp::Missed { from: 5, to: 9 }
        ));
        // The ring does not claim the positions it never read; a resume inside them
        // is told what it missed from there.
        assert!(hub.holds(4) && !hub.holds(5) && !hub.holds(8) && hub.holds(9));
        let (_resumed, _) = hub.join(4, "s4", Some(7));
        hub.subscribe(4, &keys(&["chat.all"]));
        assert!(matches!(
            hub.catch_up(4, 7, 10),
            CatchUp::Missed { from: 7, to: 9 }
        ));
    }

    #[test]
    fn a_pattern_catch_up_looks_at_a_bounded_part_of_the_ring_per_call() {
        let hub = Hub::new(3 * CATCH_UP_SCAN);
        let (_member, _) = hub.join(1, "s1", Some(0));
        hub.subscribe(1, &keys(&["tickets.#"]));
        let total = 2 * CATCH_UP_SCAN as u64 + 10;
        for i in 0..total {
            let key = if i == total - 1 {
                "tickets.x"
            } else {
                "chat.all"
            };
            hub.publish(msg(i, key));
        }
        let scan = CATCH_UP_SCAN as u64;
        let (mut from, mut calls) = (0, 0);
        let found = loop {
            calls += 1;
            match hub.catch_up(1, from, 10) {
                CatchUp::Batch(b, next) if b.is_empty() => {
                    assert_eq!(next, from + scan, "one scan's worth at most");
                    from = next;
                }
                CatchUp::Batch(b, next) => break (b[0].offset, next),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(found, (total - 1, total));
        assert_eq!(calls, 3);
        assert!(matches!(hub.catch_up(1, total, 10), CatchUp::Live));
    }

    #[test]
    fn a_gap_the_ring_no_longer_reaches_is_the_streams_to_report() {
        let hub = Hub::new(3);
        for i in (0..5).chain([9, 10]) {
            hub.publish(msg(i, "chat.all"));
        }
        assert!(hub.lock().gap.is_some(), "4 is still in the ring");
        hub.publish(msg(11, "chat.all"));
        assert!(hub.lock().gap.is_none());
        let (_a, _) = hub.join(1, "s1", Some(6));
        hub.subscribe(1, &keys(&["chat.all"]));
        assert!(!hub.holds(6));
        assert!(matches!(
            hub.catch_up(1, 6, 10),
            CatchUp::Behind { from: 6 }
        ));
        // A second gap while the first is in the ring: the ring keeps only one.
        let hub = Hub::new(100);
        for i in [0, 1, 5, 6, 9] {
            hub.publish(msg(i, "chat.all"));
        }
        assert_eq!(hub.lock().gap, Some((7, 9)));
        assert!(!hub.holds(1) && !hub.holds(3) && hub.holds(5) && !hub.holds(7));
    }

    #[tokio::test]
    async fn positions_without_messages_are_no_gap() {
        // A segment's bookkeeping position (one, never read), also where a reader
        // starts again: nobody is told anything is missing.
        let hub = Hub::new(100);
        let (live, _) = hub.join(1, "s1", None);
        hub.subscribe(1, &keys(&["chat.all"]));
        for i in [0, 1, 2, 4, 5, 7] {
            hub.publish(msg(i, "chat.all"));
        }
        assert_eq!(offsets(&live.inbox), [0, 1, 2, 4, 5, 7]);
        assert!(hub.lock().gap.is_none());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), live.inbox.lagged())
                .await
                .is_err()
        );
        assert_eq!(lost_between(5, 5), 0);
        assert_eq!(lost_between(5, 6), 0);
        assert_eq!(lost_between(5, 7), 2);
    }

    #[tokio::test]
    async fn a_reader_overtaken_by_retention_while_reading_on_is_a_gap() {
        // RabbitMQ moves a reader that retention overtook to the first segment kept:
        // the hub reads on from 20 after 7, and its live member is told.
        let hub = Hub::new(100);
        let (live, _) = hub.join(1, "s1", None);
        hub.subscribe(1, &keys(&["chat.all"]));
        for i in [0, 1, 2, 4, 5, 7, 20] {
            hub.publish(msg(i, "chat.all"));
        }
        assert_eq!(offsets(&live.inbox), [0, 1, 2, 4, 5, 7], "20 is not pushed");
        assert_eq!(hub.lock().gap, Some((8, 20)));
        tokio::time::timeout(Duration::from_secs(1), live.inbox.lagged())
            .await
            .expect("the live member is told to catch up");
        assert!(matches!(
            hub.catch_up(1, 8, 10),
            CatchUp::Missed { from: 8, to: 20 }
        ));
    }

    #[test]
    fn catching_up_by_key_and_by_pattern_gives_the_same_messages_once_in_order() {
        let hub = Hub::new(50);
        let (_a, _) = hub.join(1, "s1", Some(0));
        let (_b, _) = hub.join(2, "s2", Some(0));
        hub.subscribe(1, &keys(&["chat.user.a", "chat.all"]));
        hub.subscribe(2, &keys(&["chat.user.a", "chat.#"]));
        for i in 0..200u64 {
            let key = match i % 4 {
                0 => "chat.all",
                1 => "chat.user.a",
                2 => "chat.user.b",
                _ => "voice.all",
            };
            hub.publish(msg(i, key));
        }
        let drain = |conn: u64| {
            let mut got = Vec::new();
            let mut from = 150;
            loop {
                match hub.catch_up(conn, from, 7) {
                    CatchUp::Batch(ms, next) => {
                        got.extend(ms.iter().map(|m| m.offset));
                        from = next;
                    }
                    CatchUp::Live => return got,
                    CatchUp::Behind { .. } | CatchUp::Replaced | CatchUp::Missed { .. } => {
                        panic!("in the ring")
                    }
                }
            }
        };
        let want_a: Vec<u64> = (150..200).filter(|i| i % 4 < 2).collect();
        let want_b: Vec<u64> = (150..200).filter(|i| i % 4 < 3).collect();
        assert_eq!(drain(1), want_a, "exact keys: the index");
        assert_eq!(drain(2), want_b, "a pattern: the scan");
        // Evicted positions left the key index too.
        assert!(hub
            .lock()
            .ring_keys
            .values()
            .all(|l| l.iter().all(|o| *o >= 150)));
    }

    #[test]
    fn an_unsubscribe_takes_what_waits_in_the_inbox_for_that_key_out_of_it() {
        let hub = Hub::new(100);
        let (a, _) = hub.join(1, "s1", None);
        hub.subscribe(1, &keys(&["chat.group.g", "chat.all", "chat.event.#"]));
        hub.subscribe(1, &keys(&["chat.all"]));
        for (i, k) in ["chat.group.g", "chat.all", "chat.event.x", "chat.group.g"]
            .into_iter()
            .enumerate()
        {
            hub.publish(msg(i as u64, k));
        }
        // One of two references to chat.all: still held, nothing taken out.
        hub.unsubscribe(1, &keys(&["chat.all", "chat.group.g", "chat.event.#"]));
        assert_eq!(offsets(&a.inbox), [1], "only what it still holds is left");
        let p = BasicProperties::default().with_correlation_id("s1/r1".into());
        hub.publish(Message::new(
            4,
            String::new(),
            "warren.out.stream".into(),
            p,
            b"1".to_vec(),
        ));
        hub.unsubscribe(1, &keys(&["chat.all"]));
        assert_eq!(offsets(&a.inbox), [4], "a reply stays");
    }

    #[test]
    fn a_message_read_again_after_a_restart_is_not_reported_again() {
        let hub = Hub::new(100);
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        let to_user = |offset: u64| {
            Message::new(
                offset,
                "warren.out".into(),
                "chat.user.bob".into(),
                BasicProperties::default().with_reply_to("returns".into()),
                b"{}".to_vec(),
            )
        };
        for i in 0..4 {
            take_read(&hub, to_user(i), Some(&tx));
        }
        // Started again at 4, the reader gets the chunk holding it from 1.
        for i in 1..6 {
            take_read(&hub, to_user(i), Some(&tx));
        }
        drop(tx);
        let reported: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|a| a.offset)
            .collect();
        assert_eq!(reported, [0, 1, 2, 3, 4, 5]);
        assert_eq!(hub.next_offset(), Some(6));
    }

    #[test]
    fn leaving_removes_the_member_from_the_index() {
        let hub = Hub::new(10);
        let (a, _) = hub.join(1, "s1", None);
        hub.subscribe(
            1,
            &keys(&["chat.all", "chat.all", "chat.event.#", "chat.*.x"]),
        );
        hub.unsubscribe(1, &keys(&["chat.all", "chat.*.x"]));
        assert_eq!(hub.lock().exact.get("chat.all").map(HashSet::len), Some(1));
        let (b, _) = hub.join(2, "s2", None);
        hub.subscribe(2, &keys(&["chat.event.#"]));
        drop(a);
        assert_eq!(hub.members(), 1);
        assert!(!hub.lock().exact.contains_key("chat.all"));
        // The pattern the other member still holds still routes to it alone.
        hub.publish(msg(0, "chat.event.y"));
        assert_eq!(offsets(&b.inbox), [0]);
        drop(b);
        assert!(hub.lock().exact.is_empty());
        assert!(hub.lock().patterns.is_empty());
    }

    #[test]
    fn the_ring_keeps_the_newest_messages_and_the_offset_header_is_read() {
        let hub = Hub::new(3);
        for i in 0..10 {
            hub.publish(msg(i, "x"));
        }
        assert_eq!(hub.lock().ring.len(), 3);
        assert_eq!(hub.next_offset(), Some(10));
        let mut h = FieldTable::default();
        h.insert("x-stream-offset".into(), AMQPValue::LongLongInt(42));
        assert_eq!(stream_offset(Some(&h)), Some(42));
    }

    #[test]
    fn a_look_at_the_tail_answers_only_what_it_saw() {
        let asked = Instant::now();
        let after = asked + Duration::from_millis(5);
        let before = asked - Duration::from_millis(5);
        // Asked about 100, it stopped at the first message at or past it: 140 of a
        // last chunk that may hold more.
        let stopped = TailLook::new(after, 0, 100, Some(140));
        assert!(!stopped.complete);
        assert_eq!(stopped.holds(120, asked, 0), Some(true));
        assert_eq!(
            stopped.holds(150, asked, 0),
            None,
            "a look that stopped at 140 says nothing of 150: another look must tell"
        );
        // Read to the tail: 140 is the newest.
        let full = TailLook::new(after, 0, 150, Some(140));
        assert!(full.complete);
        assert_eq!(full.holds(150, asked, 0), Some(false));
        assert_eq!(full.holds(140, asked, 0), Some(true));
        let earlier = TailLook::new(before, 0, 150, Some(140));
        assert_eq!(
            earlier.holds(150, asked, 0),
            None,
            "a look from before the resume was asked may have missed its position"
        );
        let empty = TailLook::new(after, 0, 0, None);
        assert_eq!(empty.holds(0, asked, 0), Some(false));

        // A look at the stream before it was found replaced says nothing of the new
        // one: position 120 of the old stream is not one the new stream holds.
        let hub = Hub::new(10);
        let before_reset = TailLook::new(after, hub.lock().resets, 100, Some(140));
        assert_eq!(
            before_reset.holds(120, asked, hub.lock().resets),
            Some(true)
        );
        hub.reset();
        assert_eq!(before_reset.holds(120, asked, hub.lock().resets), None);
    }

    #[tokio::test]
    async fn resumes_waiting_for_a_look_that_failed_go_on_without_a_look_each() {
        // RabbitMQ away: a look fails after its wait. Six resumes naming a position
        // the hub has not read, asked together: one look, not six in a row.
        let hub = Hub::new(10);
        let looks = std::sync::atomic::AtomicUsize::new(0);
        let look = || async {
            looks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(GatewayError::Unavailable)
        };
        let resumes = (0..6).map(|_| hub.holds_position_by("s", 5, look));
        let answers = futures_util::future::join_all(resumes).await;
        assert_eq!(answers, vec![true; 6], "each resume goes on");
        assert_eq!(looks.load(std::sync::atomic::Ordering::Relaxed), 1);

        // A resume asked after the failed look began needs a look of its own.
        assert!(hub.holds_position_by("s", 5, look).await);
        assert_eq!(looks.load(std::sync::atomic::Ordering::Relaxed), 2);

        // A quick failure (not RabbitMQ away: the stream being declared again) is not
        // taken for the others: each looks again.
        let hub = Hub::new(10);
        let quick = std::sync::atomic::AtomicUsize::new(0);
        let fails = || async {
            quick.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(GatewayError::Closed)
        };
        let resumes = (0..3).map(|_| hub.holds_position_by("s", 5, fails));
        futures_util::future::join_all(resumes).await;
        assert_eq!(quick.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn sessions_that_found_a_gap_together_share_looks_at_the_first_message() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        // A storm of resumes from positions retention took: every session's reader
        // skips from its position to the first message kept, all at once. Twenty
        // gaps found together take one look, not twenty readers on the broker.
        let hub = Hub::new(10);
        let looks = AtomicUsize::new(0);
        let first_at = |at: Option<u64>| {
            let looks = &looks;
            move || async move {
                looks.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                at
            }
        };
        let gaps = (0..20).map(|i| hub.retention_took_by(100 + i, first_at(Some(500))));
        let answers = futures_util::future::join_all(gaps).await;
        assert_eq!(answers, vec![true; 20], "retention took 100..500");
        assert_eq!(looks.load(Relaxed), 1);

        // Retention only moves the first message forward: a gap from before it is
        // answered without a look, however old the look is.
        assert!(hub.retention_took_by(300, first_at(Some(500))).await);
        assert_eq!(looks.load(Relaxed), 1);

        // A gap from past the first message (positions that held no message) needs
        // a look that began after it was found: six found together take two.
        let gaps = (0..6).map(|_| hub.retention_took_by(600, first_at(Some(500))));
        let answers = futures_util::future::join_all(gaps).await;
        assert_eq!(answers, vec![false; 6], "no message was lost after 500");
        assert_eq!(looks.load(Relaxed), 3);

        // A failed look is a loss for the gaps found before it began; a gap found
        // after it looks again.
        let gaps = (0..4).map(|_| hub.retention_took_by(600, first_at(None)));
        let answers = futures_util::future::join_all(gaps).await;
        assert_eq!(answers, vec![true; 4], "told, never hidden");
        assert_eq!(looks.load(Relaxed), 5);
        assert!(!hub.retention_took_by(600, first_at(Some(500))).await);
        assert_eq!(looks.load(Relaxed), 6);

        // A look at the stream before it was found replaced says nothing of the new one.
        hub.reset();
        assert!(!hub.retention_took_by(300, first_at(Some(0))).await);
        assert_eq!(looks.load(Relaxed), 7);
    }

    #[test]
    fn the_newest_message_read_is_what_a_starting_reader_compares() {
        let hub = Hub::new(10);
        assert!(hub.newest().is_none());
        hub.publish(msg(4, "chat.all"));
        hub.publish(msg(5, "chat.all"));
        let newest = hub.newest().expect("the ring holds it");
        assert_eq!(newest.offset, 5);
        assert!(newest.same_as(&msg(5, "chat.all")));
        // Another message at that position: another stream.
        assert!(!newest.same_as(&msg(5, "chat.group.g")));
        let other_body = Message::new(
            5,
            "warren.out".into(),
            "chat.all".into(),
            BasicProperties::default(),
            b"{\"n\":1}".to_vec(),
        );
        assert!(!newest.same_as(&other_body));
        let other_id = Message::new(
            5,
            "warren.out".into(),
            "chat.all".into(),
            BasicProperties::default().with_message_id("m5".into()),
            b"{}".to_vec(),
        );
        assert!(!newest.same_as(&other_id));
        hub.reset();
        assert!(
            hub.newest().is_none(),
            "nothing read from the new stream yet"
        );
    }

    #[test]
    fn a_resume_checked_before_a_reset_and_joined_after_it_ends_at_once() {
        let hub = Hub::new(10);
        hub.publish(msg(7, "chat.all"));
        let checked = hub.resets();
        // Between the check and the join the stream is found replaced.
        hub.reset();
        let (late, _) = hub.join_checked(1, "s1", None, Some(8), Some(checked));
        assert!(matches!(hub.catch_up(1, 8, 10), CatchUp::Replaced));
        // Checked after the reset: a session like any other.
        let (fresh, _) = hub.join_checked(2, "s2", None, Some(0), Some(hub.resets()));
        hub.subscribe(2, &keys(&["chat.all"]));
        hub.publish(msg(0, "chat.all"));
        assert!(matches!(hub.catch_up(2, 0, 10), CatchUp::Batch(ref b, 1) if b.len() == 1));
        // A fresh session starts at the head: nothing of the old stream to name.
        let (head, _) = hub.join_checked(3, "s3", None, None, Some(checked));
        assert!(hub.lock().members.get(&3).is_some_and(|m| !m.replaced));
        drop((late, fresh, head));
    }

    /// A message to `chat.all` whose headers hold `header` bytes (`x-trace`).
    fn with_header(offset: u64, header: usize) -> Message {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-trace".into(),
            AMQPValue::LongString(vec![b'h'; header].into()),
        );
        Message::new(
            offset,
            "warren.out".into(),
            "chat.all".into(),
            BasicProperties::default().with_headers(headers),
            b"{}".to_vec(),
        )
    }

    #[test]
    fn a_messages_size_counts_its_headers_nested_ones_and_cc_keys_twice() {
        const K: usize = 1024;
        let plain = msg(0, "chat.all").size();
        let big = with_header(1, 100 * K).size();
        assert!(big >= 100 * K, "a 100 KiB header: {big}");
        assert!(big < plain + 101 * K, "counted once: {big}");
        // Inside an array inside a table.
        let mut inner = FieldTable::default();
        inner.insert(
            "blob".into(),
            AMQPValue::ByteArray(vec![0u8; 50 * K].into()),
        );
        let array = vec![
            AMQPValue::FieldTable(inner),
            AMQPValue::ShortString("x".repeat(200).into()),
        ];
        let mut headers = FieldTable::default();
        headers.insert("x-nested".into(), AMQPValue::FieldArray(array.into()));
        let nested = Message::new(
            2,
            "warren.out".into(),
            "chat.all".into(),
            BasicProperties::default().with_headers(headers),
            b"{}".to_vec(),
        );
        assert!(nested.size() >= plain + 50 * K + 200);
        // `x-warren-cc` is held as the header and again as the keys parsed from it.
        let cc: Vec<String> = (0..100).map(|i| format!("chat.user.u{i:04}")).collect();
        let cc = cc.join(" ");
        let mut headers = FieldTable::default();
        headers.insert(H_CC.into(), AMQPValue::LongString(cc.clone().into()));
        let to_many = Message::new(
            3,
            "warren.out".into(),
            "chat.all".into(),
            BasicProperties::default().with_headers(headers),
            b"{}".to_vec(),
        );
        assert_eq!(to_many.keys.len(), 101);
        assert!(to_many.size() >= plain + 2 * cc.len());
        // And each key's entry in the ring's index by key.
        assert!(to_many.size() >= plain + 3 * cc.len() + 100 * KEY_INDEX_OVERHEAD);
    }

    /// A message to many users indexes as many keys; once it left the ring, the
    /// index gives the room back instead of keeping its peak for good.
    #[test]
    fn the_ring_index_shrinks_once_a_message_to_many_users_left() {
        let hub = Hub::new(2);
        let cc: Vec<String> = (0..50_000).map(|i| format!("chat.user.u{i:05}")).collect();
        let mut headers = FieldTable::default();
        headers.insert(H_CC.into(), AMQPValue::LongString(cc.join(" ").into()));
        hub.publish(Message::new(
            0,
            "warren.out".into(),
            "chat.all".into(),
            BasicProperties::default().with_headers(headers),
            b"{}".to_vec(),
        ));
        assert!(hub.lock().ring_keys.capacity() > 50_000);
        hub.publish(msg(1, "chat.all"));
        hub.publish(msg(2, "chat.all"));
        let st = hub.lock();
        assert_eq!(st.ring.len(), 2);
        assert_eq!(st.ring_keys.len(), 1);
        assert!(
            st.ring_keys.capacity() <= RING_KEYS_KEPT,
            "capacity {} for one key",
            st.ring_keys.capacity()
        );
    }

    #[test]
    fn the_ring_holds_its_byte_bound_with_messages_of_large_headers() {
        const K: usize = 1024;
        let mut hub = Hub::new(1000);
        Arc::get_mut(&mut hub).expect("one owner").max_bytes = 1024 * K;
        for o in 0..40 {
            hub.publish(with_header(o, 100 * K));
        }
        let st = hub.lock();
        assert!(st.ring_bytes <= 1024 * K, "{} bytes held", st.ring_bytes);
        assert!(
            (8..=10).contains(&st.ring.len()),
            "about ten 100 KiB messages in 1 MiB, not {}",
            st.ring.len()
        );
        assert_eq!(
            st.ring.back().map(|m| m.offset),
            Some(39),
            "the newest kept"
        );
        drop(st);
        // What eviction takes away is what was added: nothing left when all go.
        let mut st = hub.lock();
        while evict_oldest(&mut st) {}
        assert_eq!(st.ring_bytes, 0);
    }
}
