//! The pure core of a connection: every decision about a session that needs neither
//! the socket nor the broker. Validation (protocol version, resume, subscriptions,
//! requests, token refresh, POC targets), positions (where a session reads from, what
//! counts as redelivered, what retention made it miss), flow control (the delivery
//! window, bad frames in a row) and heartbeats (when to ping, when to give up, when
//! the token or the `hello` wait runs out).
//!
//! Everything here takes its inputs, the time among them, as arguments and returns a
//! decision; nothing awaits, logs or counts. The tests below exercise it without a
//! broker, the way the SDK's core is tested. `connection.rs` is the loop around it: it
//! reads the socket and the hub, asks the core, and does what the answer says.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use warren_protocol::amqp::{self, keys, validate_dotted, validate_segment, validate_short};
use warren_protocol::{
    CloseCode, ErrorCode, Hello, PocAction, PocPacket, ServerFrame, Subscribe, PROTOCOL_VERSION,
};

use crate::auth::{Action, Identity};
use crate::config::Config;
use crate::inbound::{self, truncate, Outcome, Refusal};
use crate::session::{self, Subscriptions};

/// Most messages written to the socket together, with one flush (one `write` to the
/// kernel) at the end.
pub(crate) const MAX_WRITE_BATCH: usize = 64;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Upgraded; no frame yet.
    AwaitingHello,
    /// A session is open.
    Open,
    /// Finishing confirms before closing (gateway shutdown).
    Draining,
    /// The peer went away or the socket failed; only cleanup is left.
    Closed,
}

/// What kind of frame a publisher confirm answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Publish,
    Request,
}

// ---------------------------------------------------------------------------------
// Heartbeats and deadlines
// ---------------------------------------------------------------------------------

/// What is due when the connection's timer fires.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    Nothing,
    /// Send a `ping` (a heartbeat after the last one).
    Ping,
    /// The token expired without a `refresh`: say so, then close with 4xxx.
    TokenExpired,
    /// Close with this code; the sentence is for the log.
    Close(CloseCode, &'static str),
}

/// A connection's clock: when it started, last heard from and wrote to the client, and
/// last pinged it. Decides the heartbeat and the `hello` timeout.
#[derive(Debug)]
pub(crate) struct Clock {
    heartbeat: Duration,
    hello_timeout: Duration,
    started: Instant,
    last_heard: Instant,
    last_sent: Instant,
    last_ping: Instant,
}

impl Clock {
    pub(crate) fn new(heartbeat: Duration, hello_timeout: Duration, now: Instant) -> Clock {
        Clock {
            heartbeat,
            hello_timeout,
            started: now,
            last_heard: now,
            last_sent: now,
            last_ping: now,
        }
    }

    /// A frame (any frame) came from the client.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Something was written to the client.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// Milliseconds since the connection started: the time base of request deadlines.
    pub(crate) fn elapsed_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// The instant `ms` milliseconds after the connection started ([`Clock::elapsed_ms`]).
    pub(crate) fn at_ms(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// The deadline, on [`Clock::elapsed_ms`]'s base, of a request sent now with
    /// `timeout_ms`. `elapsed_ms` truncates: 1 ms more, so a request never times out
    /// before its full timeout has passed.
    pub(crate) fn request_deadline(&self, now: Instant, timeout_ms: u64) -> u64 {
        self.elapsed_ms(now)
            .saturating_add(timeout_ms)
            .saturating_add(1)
    }

    /// How long one write to the client may take before it counts as not reading.
    pub(crate) fn send_limit(&self) -> Duration {
        (self.heartbeat * 5 / 2).max(Duration::from_secs(1))
    }

    /// When the timer must fire next: the heartbeat timeout, the next ping (a heartbeat
    /// after the last one, whatever the traffic), the `hello` timeout, the
    /// token's expiry or the earliest request deadline (`request_deadline_ms`, on
    /// [`Clock::elapsed_ms`]'s base). Heartbeat work is rounded to a coarse grid
    /// ([`coarse`]); the other deadlines are exact.
    pub(crate) fn next_wake(
        &self,
        phase: Phase,
        expires: Option<Instant>,
        request_deadline_ms: Option<u64>,
    ) -> Instant {
        let hb = self.heartbeat;
        // Before the session opens only the `hello` timeout applies (no ping may
        // precede `welcome`, so no heartbeat is owed either).
        let mut at = if phase == Phase::AwaitingHello {
            self.started + self.hello_timeout
        } else {
            let mut at = self.last_heard + hb * 5 / 2;
            if phase == Phase::Open {
                at = at.min(self.last_ping + hb);
            }
            coarse(at, hb)
        };
        if let Some(expires) = expires {
            at = at.min(expires);
        }
        if let Some(d) = request_deadline_ms {
            at = at.min(self.at_ms(d));
        }
        at
    }

    /// The socket is not being read at `now` (backpressure: too many publishes await
    /// their confirms): what the client sent meanwhile, its pings and pongs included,
    /// waits unread, so its silence says nothing until reading resumes. Before, a
    /// client kept waiting longer than 2.5 heartbeats for confirms RabbitMQ held back
    /// was closed with `heartbeat_timeout` while it kept answering.
    pub(crate) fn not_reading(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// What is due at `now`, in order: the `hello` timeout, the token's expiry, the
    /// heartbeat timeout (nothing heard for 2.5 heartbeats, once the session is open:
    /// before, the `hello` timeout decides), a ping (a heartbeat after the last one,
    /// once the session is open). A ping is recorded as sent.
    pub(crate) fn due(&mut self, now: Instant, phase: Phase, expires: Option<Instant>) -> Due {
        let hb = self.heartbeat;
        if phase == Phase::AwaitingHello && now.duration_since(self.started) >= self.hello_timeout {
            return Due::Close(
                CloseCode::ProtocolViolation,
                "no hello within hello_timeout_ms",
            );
        }
        if expires.is_some_and(|e| now >= e) {
            return Due::TokenExpired;
        }
        if phase != Phase::AwaitingHello && now.duration_since(self.last_heard) >= hb * 5 / 2 {
            return Due::Close(CloseCode::HeartbeatTimeout, "");
        }
        // Once a heartbeat, quiet or busy: a ping carries a stream position
        // (`ping_position`), which a busy session needs as much as a quiet one for the
        // streams its deliveries do not cover (a channel stream it is not subscribed
        // in). Pinged only when quiet, a session receiving and acknowledging a
        // delivery a heartbeat never learnt those positions: a resume replayed such a
        // stream from its `welcome`, or found it aged out.
        if phase == Phase::Open && now.duration_since(self.last_ping) >= hb {
            self.last_ping = now;
            return Due::Ping;
        }
        Due::Nothing
    }
}

/// Rounds a housekeeping deadline up to a grid of `heartbeat / 32` (at most 1 s), so
/// that the pings and checks of many idle connections fall due together and the
/// runtime wakes once for a batch of them rather than once for each.
pub(crate) fn coarse(at: Instant, heartbeat: Duration) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let grain = (heartbeat / 32)
        .clamp(Duration::from_millis(1), Duration::from_secs(1))
        .as_nanos();
    let since = at.saturating_duration_since(epoch).as_nanos();
    let slots = since.div_ceil(grain);
    epoch + Duration::from_nanos(u64::try_from(slots * grain).unwrap_or(u64::MAX / 2))
}

/// When a token valid until `expires_at` (seconds since the epoch) plus `leeway_s`
/// stops being valid, as an instant; `now_epoch_s` and `now` are the same moment.
/// `None` also for an expiry too far ahead for the clock to hold (an issuer's "never",
/// such as `exp` = 2^64 − 1): the token does not expire while the connection lasts.
pub(crate) fn expiry(
    expires_at: Option<u64>,
    leeway_s: u64,
    now_epoch_s: u64,
    now: Instant,
) -> Option<Instant> {
    let exp = expires_at?.saturating_add(leeway_s);
    now.checked_add(Duration::from_secs(exp.saturating_sub(now_epoch_s)))
}

// ---------------------------------------------------------------------------------
// Flow control
// ---------------------------------------------------------------------------------

/// Bad frames in a row: the connection closes with `too_many_errors` at `max`.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    in_a_row: u32,
}

impl Errors {
    /// Counts one bad frame; true when the connection must now close.
    pub(crate) fn bad(&mut self, max: u32) -> bool {
        self.in_a_row += 1;
        self.in_a_row >= max
    }

    /// A frame was accepted. (Pings and pongs are not: a flood of them between bad
    /// frames must not keep a misbehaving client connected.)
    pub(crate) fn good(&mut self) {
        self.in_a_row = 0;
    }
}

/// Whether a refusal counts towards `too_many_errors`: input problems do; what the
/// client may retry (problems of the broker or the gateway, limits, no service on the
/// channel right now: the registry's `retry` codes) does not.
pub(crate) fn counts_as_bad(code: ErrorCode) -> bool {
    !code.retry()
}

/// Whether a `subscribe` refused `forbidden` is excused from `too_many_errors`: it
/// names a key the last token renewal revoked (`revoked`, from [`revoked_keys`]). The
/// SDK sends every subscription again after such a renewal, so that each revoked one
/// is refused with its id; a renewal revoking more subscriptions than
/// `max_consecutive_errors` must not close the connection for it. Each key is excused
/// once (it is taken out of `revoked`), so a client repeating the refusal still counts.
pub(crate) fn excused_as_revoked(revoked: &mut Vec<String>, keys: &[String]) -> bool {
    let before = revoked.len();
    revoked.retain(|k| !keys.contains(k));
    revoked.len() < before
}

/// Whether a client's close frame with `code` ends its session at once (a goodbye:
/// `client.disconnected closed`). Not with `4000 heartbeat_timeout`: the client gives
/// up a connection it did not hear from in time, or got no `welcome` on in time, and
/// resumes its session elsewhere; the session stays for the grace, as for a dropped
/// connection (a goodbye announced a live session gone, and back when it resumed).
pub(crate) fn is_goodbye(code: Option<u16>) -> bool {
    code != Some(CloseCode::HeartbeatTimeout.code())
}

/// Whether the session may be given more deliveries: not after a drain, and not while
/// `window` of them await acknowledgement.
pub(crate) fn may_deliver(cancelled: bool, unacked: usize, window: usize) -> bool {
    !cancelled && unacked < window
}

/// At a stall check (a heartbeat interval after the last, while the delivery window
/// is full): whether the session gives up its stream readers behind the ring
/// ([`crate::outbound::Outbound::park`]), and what to remember for the next check.
/// `full_at_last` is the oldest delivery not acknowledged when the window was full at
/// the previous check; `oldest` is that now. A reader behind the ring
/// holds one of `max_stream_readers`, and one of a client that stopped acknowledging
/// (while it still answers pings) was held for as long as it stayed connected: a few
/// such clients held every slot, and other sessions' resumes waited. Given up when the
/// window was full at two checks in a row with the same delivery first (nothing
/// acknowledged for a whole heartbeat interval); opened again from the session's
/// position once it acknowledges.
pub(crate) fn stalled(
    full_at_last: Option<u64>,
    oldest: Option<u64>,
    unacked: usize,
    window: usize,
) -> (bool, Option<u64>) {
    let full = oldest.filter(|_| unacked >= window);
    (full.is_some() && full == full_at_last, full)
}

/// How many deliveries to write in one batch: what the window has room for (at least
/// one, as the loop only asks when there is room), at most [`MAX_WRITE_BATCH`].
pub(crate) fn batch_room(unacked: usize, window: usize) -> usize {
    window.saturating_sub(unacked).clamp(1, MAX_WRITE_BATCH)
}

/// The close code of a failed socket read, by the WebSocket library's error text;
/// `None`: the peer is simply gone.
pub(crate) fn read_failure(text: &str) -> Option<CloseCode> {
    // tungstenite says "Space limit exceeded: Message too long", yawc "Frame too large".
    if text.contains("too long") || text.contains("Space limit") || text == "Frame too large" {
        Some(CloseCode::MessageTooBig)
    } else if text.contains("UTF-8") || text.contains("utf-8") {
        Some(CloseCode::InvalidPayload)
    } else {
        None
    }
}

/// What to tell the client when a frame's publisher confirms are in: `ack` for a
/// publish, nothing for a request (its `reply` answers it), `error` when the broker did
/// not take it.
pub(crate) fn confirm_answer(id: &str, origin: Origin, outcome: &Outcome) -> Option<ServerFrame> {
    match (outcome.refusal(), origin) {
        (None, Origin::Publish) => Some(ServerFrame::ack(id.to_string())),
        (None, Origin::Request) => None,
        (Some(r), _) => Some(ServerFrame::error(Some(id.to_string()), r.code, r.message)),
    }
}

// ---------------------------------------------------------------------------------
// Opening, resuming and refreshing a session
// ---------------------------------------------------------------------------------

/// Refuses a `hello` that asks for a protocol version this gateway does not speak.
pub(crate) fn check_protocol(asked: Option<u32>) -> Result<(), (CloseCode, String)> {
    match asked {
        Some(v) if v != PROTOCOL_VERSION => Err((
            CloseCode::UnsupportedProtocol,
            format!("protocol {v} is not supported; this gateway speaks {PROTOCOL_VERSION}"),
        )),
        _ => Ok(()),
    }
}

/// What a `hello` naming `requested` opens for `owner` (the verified user; empty for
/// an anonymous development session).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resume<'a> {
    /// A fresh session; `notice` says why the one asked for is not resumed.
    Fresh { notice: Option<ErrorCode> },
    /// The session `requested`, resumed.
    Resume(&'a str),
}

/// The furthest stream position a client may name: 2^53 − 1, the largest integer a
/// browser's JSON numbers hold exactly. No stream gets there (9 × 10^15 messages), so
/// a position past it is corrupt, and resuming after it would read from nowhere.
pub(crate) const MAX_POSITION: u64 = (1 << 53) - 1;

/// What `hello` opens for `owner` (the verified user; empty for an anonymous
/// development session): the session it names, unless that is not an id this gateway
/// issues (`session_expired`), belongs to another user (`forbidden`) or comes with a
/// position past [`MAX_POSITION`] (`invalid`).
pub(crate) fn resume_of<'a>(hello: &'a Hello, owner: &str) -> Resume<'a> {
    let Some(requested) = hello.session.as_deref() else {
        return Resume::Fresh { notice: None };
    };
    let furthest = hello
        .positions
        .iter()
        .map(|(_, p)| p)
        .chain(hello.position)
        .max();
    if validate_segment("session", requested).is_err() || !session::well_formed(requested) {
        // Not an id this gateway could have issued.
        Resume::Fresh {
            notice: Some(ErrorCode::SessionExpired),
        }
    } else if !session::owned_by(requested, owner) {
        Resume::Fresh {
            notice: Some(ErrorCode::Forbidden),
        }
    } else if furthest.is_some_and(|p| p > MAX_POSITION) {
        Resume::Fresh {
            notice: Some(ErrorCode::Invalid),
        }
    } else {
        Resume::Resume(requested)
    }
}

/// A `refresh` keeps the session's user and tenant: a token naming another needs a new
/// session.
pub(crate) fn check_refresh(
    user_now: &str,
    tenant_now: Option<&str>,
    user_new: &str,
    tenant_new: Option<&str>,
) -> Result<(), Refusal> {
    if user_new != user_now {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            format!(
                "the new token names user `{}`, this session belongs to `{user_now}`",
                truncate(user_new, 64)
            ),
        ));
    }
    if tenant_now != tenant_new {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            format!(
                "the new token names tenant {tenant_new:?}, this session belongs to {tenant_now:?}"
            ),
        ));
    }
    Ok(())
}

/// Whether another request may await its reply: at most `max` at once, ids unique.
pub(crate) fn admit_request(pending: usize, max: usize, duplicate: bool) -> Result<(), Refusal> {
    if pending >= max {
        return Err(Refusal::new(
            ErrorCode::Overloaded,
            format!("at most {max} requests may await their reply (max_pending_requests)"),
        ));
    }
    if duplicate {
        return Err(Refusal::new(
            ErrorCode::Invalid,
            "a request with this id is pending",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// What a session may receive
// ---------------------------------------------------------------------------------

/// Binding keys of a subscription, if `identity` may hold it on this listener
/// (`pinned` to one channel or not): the channel's subscribe right, granted groups
/// only, topics within granted patterns, and direct messages of its own user only (the
/// only key `direct` makes).
pub(crate) fn subscription_keys(
    config: &Config,
    pinned: Option<&str>,
    s: &Subscribe,
    identity: &Identity,
) -> Result<Vec<String>, Refusal> {
    inbound::check_channel(config, pinned, &s.channel)?;
    let invalid = |e: amqp::NameError| Refusal::new(ErrorCode::Invalid, e.to_string());
    let forbidden = |m: String| Err(Refusal::new(ErrorCode::Forbidden, m));
    if !identity.may(Action::Subscribe, &s.channel) {
        return forbidden(identity.refusal(Action::Subscribe, &s.channel));
    }
    let mut out = Vec::new();
    if s.wants_broadcast() {
        out.push(keys::broadcast(&s.channel));
    }
    for g in &s.groups {
        validate_segment("group", g).map_err(invalid)?;
        if !identity.may_group(g) {
            return forbidden(format!("user `{}` is not in group `{g}`", identity.user));
        }
        out.push(keys::group(&s.channel, g));
    }
    if s.direct {
        out.push(keys::user(&s.channel, &identity.user));
    }
    if let Some(t) = &s.topic {
        validate_dotted("topic", t, true).map_err(invalid)?;
        if !identity.may_topic(t) {
            return forbidden(format!(
                "user `{}` may not subscribe to topic `{t}`",
                identity.user
            ));
        }
        out.push(keys::event(&s.channel, t));
    }
    for k in &out {
        validate_short("binding key", k).map_err(invalid)?;
    }
    // Each key once, wherever the frame repeats it (`groups: ["a", "b", "a"]`).
    let mut seen = std::collections::HashSet::new();
    out.retain(|k| seen.insert(k.clone()));
    Ok(out)
}

/// The keys of `subs` that `identity` may no longer hold (after a `refresh` with
/// narrower rights): those of a channel without its subscribe right, of a group not
/// granted, of another user's direct messages, or of a topic outside the granted
/// patterns — what [`subscription_keys`] would refuse now.
pub(crate) fn revoked_keys(subs: &Subscriptions, identity: &Identity) -> Vec<String> {
    let allowed = |key: &str| {
        let Some((channel, rest)) = key.split_once('.') else {
            return true;
        };
        if !identity.may(Action::Subscribe, channel) {
            return false;
        }
        if let Some(group) = rest.strip_prefix("group.") {
            identity.may_group(group)
        } else if let Some(user) = rest.strip_prefix("user.") {
            user == identity.user
        } else if let Some(topic) = rest.strip_prefix("event.") {
            identity.may_topic(topic)
        } else {
            true
        }
    };
    let mut out: Vec<String> = subs.keys().filter(|k| !allowed(k)).cloned().collect();
    out.sort();
    out
}

/// Applies `keys` (from [`subscription_keys`], each once) to the session's
/// subscriptions: adds them (`on`) within `max` distinct keys, or removes them. Returns
/// the keys added that were not held, or those removed: those the hub must learn.
pub(crate) fn change_subscriptions(
    subs: &mut Subscriptions,
    keys: &[String],
    on: bool,
    max: usize,
) -> Result<Vec<String>, Refusal> {
    if on {
        let new = keys.iter().filter(|k| !subs.contains(k)).count();
        if subs.len() + new > max {
            return Err(too_many_subscriptions(max));
        }
        Ok(keys.iter().filter(|k| subs.add(k)).cloned().collect())
    } else {
        Ok(keys.iter().filter(|k| subs.remove(k)).cloned().collect())
    }
}

fn too_many_subscriptions(max: usize) -> Refusal {
    Refusal::new(
        ErrorCode::Forbidden,
        format!("a session may hold at most {max} subscriptions"),
    )
}

/// Whether every one of `each` (a POC `consume` packet's subscriptions,
/// [`poc_subscriptions`]) may be held, all together on top of `subs`: the identity may
/// hold each ([`subscription_keys`]) and their keys fit within `max` distinct keys.
/// Checked before any is applied, so that a packet is applied whole or not at all:
/// refused part-way, the subscriptions applied before the refusal stayed, and
/// delivered for a packet the client was told failed. Stops at the first refusal
/// (a packet's combinations can be gigabytes); holds at most `max` keys meanwhile.
pub(crate) fn check_subscriptions(
    config: &Config,
    pinned: Option<&str>,
    identity: &Identity,
    subs: &Subscriptions,
    each: impl Iterator<Item = Subscribe>,
    max: usize,
) -> Result<(), Refusal> {
    let mut new = std::collections::HashSet::new();
    for s in each {
        for k in subscription_keys(config, pinned, &s, identity)? {
            if !subs.contains(&k) && new.insert(k) && subs.len() + new.len() > max {
                return Err(too_many_subscriptions(max));
            }
        }
    }
    Ok(())
}

/// A POC packet's `publish_target`: absent or empty, or the gateway's own inbound
/// exchange (where it publishes every client message), else refused with
/// `unsupported` — never silently published somewhere the client did not name.
pub(crate) fn check_publish_target(inbound: &str, target: Option<&str>) -> Result<(), Refusal> {
    match target {
        Some(t) if !t.is_empty() && t != inbound => Err(Refusal::new(
            ErrorCode::Unsupported,
            format!(
                "publish_target `{}` is not supported: this gateway publishes only to \
                 its inbound exchange `{inbound}` (omit publish_target or name that exchange)",
                truncate(t, 64)
            ),
        )),
        _ => Ok(()),
    }
}

/// The subscriptions a POC `consume` packet asks for, one per flagged channel and
/// consume target (the whole channel when it names none); each includes the user's
/// direct messages.
///
/// Made one at a time, as they are applied: a 26 KB packet flagging 300 channels with
/// 300 targets and 3,000 groups names 90,000 subscriptions of 3,000 groups each
/// (gigabytes if made at once), and the first one refused ends the packet. Targets
/// and groups are taken once each: repeated, they add no key (so nothing is refused)
/// but 8,000 of each in one 64 KiB packet would make 8,000 subscriptions of 8,000
/// groups, seconds of work on the connection's thread. Once each, a subscription adds
/// a key per new target, so `max_subscriptions` ends the packet soon.
pub(crate) fn poc_subscriptions<'a>(
    p: &'a PocPacket,
    id: &'a str,
) -> impl Iterator<Item = Subscribe> + 'a {
    debug_assert!(matches!(p.packet_action, PocAction::Consume));
    let topics: Vec<Option<&'a str>> = if p.consume_target.is_empty() {
        vec![None]
    } else {
        once_each(&p.consume_target).into_iter().map(Some).collect()
    };
    let groups: Vec<String> = once_each(&p.distribution.groups)
        .into_iter()
        .map(str::to_string)
        .collect();
    p.channels().flat_map(move |ch| {
        let groups = groups.clone();
        topics.clone().into_iter().map(move |topic| Subscribe {
            id: id.to_string(),
            channel: ch.to_string(),
            broadcast: Some(topic.is_none() || p.distribution.broadcast),
            groups: groups.clone(),
            direct: true,
            topic: topic.map(str::to_string),
        })
    })
}

/// `items` without repeats, in their first order.
fn once_each(items: &[String]) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    items
        .iter()
        .map(String::as_str)
        .filter(|i| seen.insert(*i))
        .collect()
}

// ---------------------------------------------------------------------------------
// Positions
// ---------------------------------------------------------------------------------

/// Where a session has reached in the outbound stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Positions {
    /// The position after the last message sent (or skipped as not this session's);
    /// `None` until the first.
    cursor: Option<u64>,
    /// A resume: positions below this were read before the client came back, so the
    /// client may have had them already (`redelivered`).
    replay_until: Option<u64>,
}

/// The position `hello` names in the stream of `channel` (`None`: the outbound
/// stream), or `None` when the session does not follow that stream: a channel stream
/// none of its subscriptions names is not read from (it is joined at the session's
/// first subscription to the channel). The inner `None`: no position named.
pub(crate) fn followed_position(hello: &Hello, channel: Option<&str>) -> Option<Option<u64>> {
    match channel {
        None => Some(hello.position),
        Some(channel) if hello.subscriptions.iter().any(|s| s.channel == channel) => {
            Some(hello.positions.get(channel))
        }
        Some(_) => None,
    }
}

/// Where a session that had position `last` resumes: the position after it, or the
/// stream's start when the client never had one (the stream was empty). A resumed
/// session's positions are at most [`MAX_POSITION`] ([`resume_of`]).
pub(crate) fn resume_from(last: Option<u64>) -> u64 {
    last.map_or(0, |p| p + 1)
}

/// What a message read by the session's own stream reader means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Before the session's position (the reader starts a little early): skip it.
    Stale,
    /// The session's next message.
    Next {
        /// How many positions retention dropped between where the session asked to
        /// read from and this message (0 when none).
        missed: u64,
        /// The ring has this message and everything after: leave the reader and
        /// catch up from the ring, starting with this message.
        to_ring: bool,
    },
}

impl Positions {
    /// A fresh session: it starts at the live flow.
    pub(crate) fn fresh() -> Positions {
        Positions::default()
    }

    /// A resume from the position after `last` (from the stream's start when the
    /// client never had one), when the stream's newest position is `head`.
    pub(crate) fn resumed(last: Option<u64>, head: Option<u64>) -> Positions {
        Positions {
            cursor: Some(resume_from(last)),
            replay_until: head.map(|h| h + 1),
        }
    }

    /// Where the session reads next.
    pub(crate) fn next(&self) -> u64 {
        self.cursor.unwrap_or(0)
    }

    /// Whether the message at `offset` may have reached the client before it came
    /// back: it was published before the resume.
    pub(crate) fn redelivered(&self, offset: u64) -> bool {
        self.replay_until.is_some_and(|r| offset < r)
    }

    /// The session's stream reader (its own, or a shared one) was opened at `from`
    /// (older than the ring).
    pub(crate) fn reader_opened(&mut self, from: u64) {
        self.cursor = Some(from);
    }

    /// A message at `offset` came from the session's stream reader (its own, or a
    /// shared one: each gives every message of the stream, in order); `ring_holds`:
    /// the hub's ring has that position.
    ///
    /// Every read is checked against the session's cursor, not only a reader's first:
    /// a reader starts where it was asked unless retention dropped that, and one that
    /// reads slowly while retention deletes the segments ahead of it goes on at the
    /// first segment kept. Either way the positions skipped are missed, and counted.
    /// A skip of one is a segment's bookkeeping position, which holds no message
    /// ([`crate::hub::lost_between`]); the caller looks at the stream before it reports
    /// a longer one ([`crate::hub::Hub::retention_took`]). A cursor moved on by other paths
    /// ([`Positions::advance`], a batch from the ring) only makes reads below it
    /// [`Read::Stale`], and the read that reaches it is counted from it.
    pub(crate) fn read(&mut self, offset: u64, ring_holds: bool) -> Read {
        let from = self.next();
        if offset < from {
            return Read::Stale;
        }
        let missed = crate::hub::lost_between(from, offset);
        // From the ring the session reads this message again.
        self.cursor = Some(if ring_holds { offset } else { offset + 1 });
        Read::Next {
            missed,
            to_ring: ring_holds,
        }
    }

    /// Messages up to the position before `next` were sent (or skipped); positions
    /// never go back.
    pub(crate) fn advance(&mut self, next: u64) {
        self.cursor = Some(self.cursor.map_or(next, |old| old.max(next)));
    }
}

/// The `error` telling a session that retention dropped `missed` positions after the
/// one it had reached (`from` is the first it asked for) in the outbound stream, or in
/// the own stream of `channel`.
pub(crate) fn missed_notice(missed: u64, from: u64, channel: Option<&str>) -> ServerFrame {
    let stream = match channel {
        None => "the outbound stream's".to_string(),
        Some(c) => format!("channel `{c}`'s stream's"),
    };
    let mut frame = ServerFrame::error(
        None,
        ErrorCode::SessionExpired,
        format!(
            "{missed} stream positions after position {} aged out of \
             {stream} retention before they were replayed; any \
             messages for this session among them were missed",
            from.saturating_sub(1)
        ),
    );
    if let ServerFrame::Error(e) = &mut frame {
        e.stream = channel.map(str::to_string);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use warren_protocol::Distribution;

    use crate::auth::Rights;

    const HB: Duration = Duration::from_millis(1_000);
    const HELLO: Duration = Duration::from_millis(5_000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn housekeeping_deadlines_round_up_to_a_shared_grid_of_a_32nd_heartbeat() {
        let hb = Duration::from_millis(3_200);
        let grain = Duration::from_millis(100);
        let base = Instant::now();
        for offset_ms in [0, 1, 37, 99, 100, 101, 250, 5_000] {
            let at = base + Duration::from_millis(offset_ms);
            let rounded = coarse(at, hb);
            assert!(rounded >= at, "never earlier than asked");
            assert!(rounded < at + grain, "at most one grain later");
        }
        // Deadlines within one grain of each other fall due together.
        let a = coarse(base + Duration::from_millis(1_010), hb);
        let b = coarse(
            base + Duration::from_millis(1_010) + Duration::from_micros(1),
            hb,
        );
        let c = coarse(a + Duration::from_millis(1), hb);
        assert!(b == a || b == a + grain);
        assert_eq!(c, a + grain);
        // The grain is capped at one second for long heartbeats.
        let long = Duration::from_secs(120);
        let at = base + Duration::from_millis(10);
        assert!(coarse(at, long) < at + Duration::from_secs(1));
    }

    #[test]
    fn a_connection_without_hello_closes_at_the_hello_timeout_and_is_never_pinged() {
        let t0 = Instant::now();
        let mut clock = Clock::new(HB, HELLO, t0);
        // The wake is the hello timeout, exactly (it is shorter than 2.5 heartbeats
        // here only if configured so; take the earlier of the two).
        let wake = clock.next_wake(Phase::AwaitingHello, None, None);
        assert!(wake <= t0 + HELLO);
        // Quiet for two heartbeats while waiting for hello: no ping (nothing may
        // precede `welcome`), and the client keeps talking so no heartbeat timeout.
        clock.heard(t0 + ms(1_900));
        assert_eq!(
            clock.due(t0 + ms(2_000), Phase::AwaitingHello, None),
            Due::Nothing
        );
        clock.heard(t0 + ms(4_000));
        assert_eq!(
            clock.due(t0 + HELLO, Phase::AwaitingHello, None),
            Due::Close(
                CloseCode::ProtocolViolation,
                "no hello within hello_timeout_ms"
            )
        );
        // Once open, the hello timeout no longer applies.
        assert_ne!(
            clock.due(t0 + HELLO, Phase::Open, None),
            Due::Close(
                CloseCode::ProtocolViolation,
                "no hello within hello_timeout_ms"
            )
        );
    }

    #[test]
    fn before_the_session_a_short_heartbeat_does_not_close_a_silent_client_before_the_hello_timeout(
    ) {
        // heartbeat_ms 1 s, hello_timeout_ms 10 s: a client silent from the start is a
        // protocol violation at 10 s (4500, do not reconnect), not a heartbeat timeout
        // at 2.5 s (4000, reconnect).
        let t0 = Instant::now();
        let mut clock = Clock::new(ms(1_000), ms(10_000), t0);
        assert_eq!(
            clock.next_wake(Phase::AwaitingHello, None, None),
            t0 + ms(10_000)
        );
        assert_eq!(
            clock.due(t0 + ms(3_000), Phase::AwaitingHello, None),
            Due::Nothing
        );
        assert_eq!(
            clock.due(t0 + ms(10_000), Phase::AwaitingHello, None),
            Due::Close(
                CloseCode::ProtocolViolation,
                "no hello within hello_timeout_ms"
            )
        );
        // Open, the heartbeat applies.
        assert_eq!(
            clock.due(t0 + ms(3_000), Phase::Open, None),
            Due::Close(CloseCode::HeartbeatTimeout, "")
        );
    }

    #[test]
    fn a_client_not_read_for_backpressure_is_timed_out_only_once_reading_resumes() {
        let t0 = Instant::now();
        let mut clock = Clock::new(HB, HELLO, t0);
        clock.heard(t0);
        // Not read for four heartbeats (confirms held back), checked as the timer does.
        let mut at = t0;
        while at < t0 + HB * 4 {
            at += HB / 4;
            clock.not_reading(at);
            let due = clock.due(at, Phase::Open, None);
            assert_ne!(
                due,
                Due::Close(CloseCode::HeartbeatTimeout, ""),
                "at {at:?}"
            );
        }
        // Read again: silent for 2.5 heartbeats from then, it is closed.
        assert_ne!(
            clock.due(at + HB * 2, Phase::Open, None),
            Due::Close(CloseCode::HeartbeatTimeout, "")
        );
        assert_eq!(
            clock.due(at + HB * 5 / 2, Phase::Open, None),
            Due::Close(CloseCode::HeartbeatTimeout, "")
        );
    }

    #[test]
    fn an_open_session_is_pinged_once_per_heartbeat_and_closed_after_two_and_a_half_silent() {
        let t0 = Instant::now();
        let mut clock = Clock::new(HB, HELLO, t0);
        // Traffic both ways, within the first heartbeat: nothing due.
        clock.heard(t0 + ms(600));
        clock.sent(t0 + ms(600));
        assert_eq!(clock.due(t0 + ms(900), Phase::Open, None), Due::Nothing);
        // The next wake is a heartbeat after the last ping (the start), on the grid.
        let wake = clock.next_wake(Phase::Open, None, None);
        assert!(wake >= t0 + HB && wake < t0 + HB + HB / 32 + ms(1));
        // Quiet one way (the client sends, the gateway does not): a ping, once.
        clock.heard(t0 + ms(1_500));
        assert_eq!(clock.due(t0 + ms(1_650), Phase::Open, None), Due::Ping);
        assert_eq!(clock.due(t0 + ms(1_700), Phase::Open, None), Due::Nothing);
        // Another heartbeat later, still quiet: another ping.
        assert_eq!(clock.due(t0 + ms(2_650), Phase::Open, None), Due::Ping);
        // Nothing heard for 2.5 heartbeats: closed.
        assert_eq!(
            clock.due(t0 + ms(1_500) + HB * 5 / 2, Phase::Open, None),
            Due::Close(CloseCode::HeartbeatTimeout, "")
        );
        // A draining connection is not pinged.
        let mut draining = Clock::new(HB, HELLO, t0);
        assert_eq!(
            draining.due(t0 + ms(1_200), Phase::Draining, None),
            Due::Nothing
        );
    }

    #[test]
    fn a_busy_session_is_pinged_once_per_heartbeat_too() {
        // Deliveries out and acknowledgements in every 100 ms, never quiet either
        // way: still a ping (with its stream position) once per heartbeat.
        let t0 = Instant::now();
        let mut clock = Clock::new(HB, HELLO, t0);
        let mut pings = Vec::new();
        for step in 1..=100u64 {
            let now = t0 + ms(step * 100);
            clock.sent(now);
            clock.heard(now);
            if clock.due(now, Phase::Open, None) == Due::Ping {
                pings.push(step * 100);
            }
            assert!(clock.next_wake(Phase::Open, None, None) <= now + HB + HB / 32);
        }
        assert_eq!(pings, (1..=10).map(|k| k * 1_000).collect::<Vec<u64>>());
    }

    #[test]
    fn the_token_expiry_and_request_deadlines_wake_the_connection_exactly() {
        let t0 = Instant::now();
        let mut clock = Clock::new(HB, HELLO, t0);
        let expires = expiry(Some(1_000), 2, 999, t0);
        assert_eq!(expires, Some(t0 + Duration::from_secs(3)));
        assert_eq!(expiry(None, 2, 999, t0), None);
        // A token already past its expiry (and leeway) expires now.
        assert_eq!(expiry(Some(10), 2, 999, t0), Some(t0));
        // An expiry the clock cannot hold (an issuer's "never") is no deadline.
        assert_eq!(expiry(Some(u64::MAX), 2, 999, t0), None);
        assert_eq!(expiry(Some(u64::MAX - 1), 0, 0, t0), None);
        let soon = t0 + ms(300);
        assert_eq!(clock.next_wake(Phase::Open, Some(soon), None), soon);
        // A request sent at 100 ms with a 50 ms timeout: deadline 151 ms, exact.
        let d = clock.request_deadline(t0 + ms(100), 50);
        assert_eq!(d, 151);
        assert_eq!(clock.request_deadline(t0 + ms(100), u64::MAX), u64::MAX);
        assert_eq!(
            clock.next_wake(Phase::Open, Some(soon), Some(d)),
            t0 + ms(151)
        );
        assert_eq!(clock.due(soon, Phase::Open, Some(soon)), Due::TokenExpired);
        // The send limit: 2.5 heartbeats, at least a second.
        assert_eq!(clock.send_limit(), ms(2_500));
        assert_eq!(Clock::new(ms(100), HELLO, t0).send_limit(), ms(1_000));
    }

    #[test]
    fn bad_frames_in_a_row_close_the_connection_and_an_accepted_frame_resets_the_count() {
        let mut errors = Errors::default();
        assert!(!errors.bad(3));
        assert!(!errors.bad(3));
        errors.good();
        assert!(!errors.bad(3));
        assert!(!errors.bad(3));
        assert!(errors.bad(3));
        // Broker trouble and limits do not count; bad input does.
        assert!(!counts_as_bad(ErrorCode::BrokerUnavailable));
        assert!(!counts_as_bad(ErrorCode::Overloaded));
        assert!(!counts_as_bad(ErrorCode::Internal));
        assert!(
            !counts_as_bad(ErrorCode::NoService),
            "a service restarting is not the client's mistake"
        );
        assert!(counts_as_bad(ErrorCode::Invalid));
        assert!(counts_as_bad(ErrorCode::Forbidden));
        assert!(counts_as_bad(ErrorCode::NoRoute));
    }

    #[test]
    fn deliveries_stop_at_a_full_window_or_a_drain_and_batches_fit_the_window() {
        assert!(may_deliver(false, 0, 256));
        assert!(may_deliver(false, 255, 256));
        assert!(!may_deliver(false, 256, 256));
        assert!(!may_deliver(true, 0, 256));
        assert_eq!(batch_room(0, 256), MAX_WRITE_BATCH);
        assert_eq!(batch_room(250, 256), 6);
        assert_eq!(batch_room(256, 256), 1);
        assert_eq!(batch_room(0, 8), 8);
    }

    #[test]
    fn read_failures_map_to_the_registry_close_codes() {
        assert_eq!(
            read_failure("Space limit exceeded: Message too long: 2000000 > 1048576"),
            Some(CloseCode::MessageTooBig)
        );
        assert_eq!(
            read_failure("Could not decode a text frame as UTF-8."),
            Some(CloseCode::InvalidPayload)
        );
        assert_eq!(
            read_failure("Frame too large"),
            Some(CloseCode::MessageTooBig)
        );
        assert_eq!(
            read_failure("Invalid UTF-8"),
            Some(CloseCode::InvalidPayload)
        );
        assert_eq!(
            read_failure("Connection reset without closing handshake"),
            None
        );
    }

    #[test]
    fn confirms_answer_publishes_with_ack_requests_with_nothing_and_refusals_with_their_code() {
        let ack = confirm_answer("p1", Origin::Publish, &Outcome::Acked);
        assert!(matches!(ack, Some(ServerFrame::Ack(a)) if a.id == "p1"));
        assert!(confirm_answer("r1", Origin::Request, &Outcome::Acked).is_none());
        for (outcome, code) in [
            (Outcome::Returned, ErrorCode::NoRoute),
            (Outcome::Nacked, ErrorCode::Overloaded),
            (Outcome::Failed("gone".into()), ErrorCode::BrokerUnavailable),
            (Outcome::Unconfirmed, ErrorCode::BrokerUnavailable),
        ] {
            for origin in [Origin::Publish, Origin::Request] {
                match confirm_answer("x", origin, &outcome) {
                    Some(ServerFrame::Error(e)) => {
                        assert_eq!(e.code, code);
                        assert_eq!(e.id.as_deref(), Some("x"));
                    }
                    other => panic!("{outcome:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn hello_checks_the_protocol_version_and_resumes_only_well_formed_sessions_of_their_owner() {
        assert!(check_protocol(None).is_ok());
        assert!(check_protocol(Some(PROTOCOL_VERSION)).is_ok());
        let (code, why) = check_protocol(Some(PROTOCOL_VERSION + 1)).unwrap_err();
        assert_eq!(code, CloseCode::UnsupportedProtocol);
        assert!(why.contains("is not supported"), "{why}");

        let hello = |session: Option<&str>| Hello {
            session: session.map(str::to_string),
            position: Some(41),
            ..Hello::default()
        };
        let alice = session::new_session_id("alice");
        let resuming = hello(Some(&alice));
        assert_eq!(
            resume_of(&hello(None), "alice"),
            Resume::Fresh { notice: None }
        );
        assert_eq!(resume_of(&resuming, "alice"), Resume::Resume(&alice));
        assert_eq!(
            resume_of(&resuming, "mallory"),
            Resume::Fresh {
                notice: Some(ErrorCode::Forbidden)
            }
        );
        for invented in ["s1", "", "a.b", &"f".repeat(300)] {
            assert_eq!(
                resume_of(&hello(Some(invented)), "alice"),
                Resume::Fresh {
                    notice: Some(ErrorCode::SessionExpired)
                },
                "{invented}"
            );
        }
        // Anonymous development sessions resume among anonymous clients only.
        let anon = session::new_session_id("");
        let anonymous = hello(Some(&anon));
        assert_eq!(resume_of(&anonymous, ""), Resume::Resume(&anon));
        assert!(matches!(
            resume_of(&anonymous, "alice"),
            Resume::Fresh { .. }
        ));

        // Positions up to 2^53 - 1 resume; one past it, in the outbound stream or a
        // channel stream, is corrupt: a fresh session, and the client is told why.
        let at = |position: Option<u64>, voice: Option<u64>| {
            let mut h = hello(Some(&alice));
            h.position = position;
            if let Some(p) = voice {
                h.positions.insert("voice".into(), p);
            }
            h
        };
        let invalid = Resume::Fresh {
            notice: Some(ErrorCode::Invalid),
        };
        for ok in [at(None, None), at(Some(MAX_POSITION), Some(MAX_POSITION))] {
            assert_eq!(resume_of(&ok, "alice"), Resume::Resume(&alice), "{ok:?}");
            assert_eq!(resume_from(ok.position), ok.position.map_or(0, |p| p + 1));
        }
        for bad in [
            at(Some(MAX_POSITION + 1), None),
            at(Some(u64::MAX), None),
            at(Some(3), Some(u64::MAX)),
            at(None, Some(MAX_POSITION + 1)),
        ] {
            assert_eq!(resume_of(&bad, "alice"), invalid, "{bad:?}");
        }
    }

    #[test]
    fn a_refresh_keeps_user_and_tenant_and_requests_are_bounded_and_unique() {
        assert!(check_refresh("alice", Some("t1"), "alice", Some("t1")).is_ok());
        let r = check_refresh("alice", None, "bob", None).unwrap_err();
        assert_eq!(r.code, ErrorCode::Forbidden);
        assert!(r.message.contains("`bob`") && r.message.contains("`alice`"));
        let r = check_refresh("alice", Some("t1"), "alice", Some("t2")).unwrap_err();
        assert_eq!(r.code, ErrorCode::Forbidden);

        assert!(admit_request(0, 2, false).is_ok());
        let full = admit_request(2, 2, false).unwrap_err();
        assert_eq!(full.code, ErrorCode::Overloaded);
        assert!(
            !counts_as_bad(full.code),
            "a full request table may be retried"
        );
        let dup = admit_request(1, 2, true).unwrap_err();
        assert_eq!(dup.code, ErrorCode::Invalid);
        assert!(counts_as_bad(dup.code));
    }

    fn sub(channel: &str) -> Subscribe {
        Subscribe {
            id: "s".into(),
            channel: channel.into(),
            broadcast: None,
            groups: vec![],
            direct: false,
            topic: None,
        }
    }

    #[test]
    fn a_session_may_receive_only_what_its_identity_grants_on_channels_served_here() {
        let config = Config::default();
        let mut alice = Identity::unrestricted("alice");
        alice.groups = vec!["ops".into()];
        alice.topics = vec!["orders.*".into()];

        // The broadcast by default; groups, own direct messages and topics on request.
        let keys = subscription_keys(&config, None, &sub("chat"), &alice).unwrap();
        assert_eq!(keys, vec![keys::broadcast("chat")]);
        let s = Subscribe {
            groups: vec!["ops".into()],
            direct: true,
            topic: Some("orders.new".into()),
            ..sub("chat")
        };
        let keys = subscription_keys(&config, None, &s, &alice).unwrap();
        assert_eq!(
            keys,
            vec![
                keys::group("chat", "ops"),
                keys::user("chat", "alice"),
                keys::event("chat", "orders.new"),
            ]
        );

        let refused = |s: &Subscribe, pinned: Option<&str>, who: &Identity| {
            subscription_keys(&config, pinned, s, who).unwrap_err().code
        };
        // A group the user is not in; a topic outside its patterns.
        let other_group = Subscribe {
            groups: vec!["admins".into()],
            ..sub("chat")
        };
        assert_eq!(refused(&other_group, None, &alice), ErrorCode::Forbidden);
        let other_topic = Subscribe {
            topic: Some("payments.new".into()),
            ..sub("chat")
        };
        assert_eq!(refused(&other_topic, None, &alice), ErrorCode::Forbidden);
        // A channel without the subscribe right.
        let mut no_subscribe = Identity::unrestricted("bob");
        let mut rights = BTreeMap::new();
        rights.insert(
            "chat".to_string(),
            Rights {
                subscribe: false,
                ..Rights::ALL
            },
        );
        no_subscribe.channels = Some(rights);
        assert_eq!(
            refused(&sub("chat"), None, &no_subscribe),
            ErrorCode::Forbidden
        );
        // A channel not served, or not on this pinned port.
        let unknown = refused(&sub("nope"), None, &alice);
        assert_eq!(unknown, ErrorCode::UnknownChannel);
        assert_eq!(refused(&sub("voice"), Some("chat"), &alice), unknown);
        // Bad names are `invalid`, not a panic.
        let bad_group = Subscribe {
            groups: vec!["a.b".into()],
            ..sub("chat")
        };
        let mut everyone = alice.clone();
        everyone.groups = vec!["*".into()];
        assert_eq!(refused(&bad_group, None, &everyone), ErrorCode::Invalid);
        let bad_topic = Subscribe {
            topic: Some("..".into()),
            ..sub("chat")
        };
        let mut any_topic = alice.clone();
        any_topic.topics = vec!["#".into()];
        assert_eq!(refused(&bad_topic, None, &any_topic), ErrorCode::Invalid);
    }

    #[test]
    fn a_poc_packets_subscriptions_are_checked_together_before_any_is_applied() {
        let config = Config::default();
        let alice = Identity::unrestricted("alice");
        let mut subs = Subscriptions::default();
        subs.add(&keys::broadcast("chat"));
        let topic = |t: &str| Subscribe {
            topic: Some(t.into()),
            ..sub("chat")
        };
        let check = |each: Vec<Subscribe>, max| {
            check_subscriptions(&config, None, &alice, &subs, each.into_iter(), max)
        };
        assert!(check(vec![topic("ok"), topic("fine")], 3).is_ok());
        // The second is invalid: the packet is refused before the first is applied.
        let refused = check(vec![topic("ok"), topic("bad topic!")], 10).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Invalid);
        // Together over `max` distinct keys (one held already; a key named twice
        // counts once), though each alone fits.
        assert!(check(vec![topic("a"), topic("a"), topic("b")], 3).is_ok());
        let over = check(vec![topic("a"), topic("b"), topic("c")], 3).unwrap_err();
        assert_eq!(over.code, ErrorCode::Forbidden);
        assert_eq!(over.message, "a session may hold at most 3 subscriptions");
        // A channel not served: its own code.
        let unknown = check(vec![topic("a"), sub("nope")], 10).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::UnknownChannel);
    }

    #[test]
    fn subscriptions_are_a_bounded_set_and_the_hub_learns_only_changes() {
        let mut subs = Subscriptions::default();
        let ab = vec!["a".to_string(), "b".to_string()];
        assert_eq!(change_subscriptions(&mut subs, &ab, true, 3).unwrap(), ab);
        // Held already (a frame sent again): nothing new for the hub.
        let b = vec!["b".to_string()];
        assert!(change_subscriptions(&mut subs, &b, true, 3)
            .unwrap()
            .is_empty());
        // Over the limit: refused whole, nothing changed.
        let cd = vec!["c".to_string(), "d".to_string()];
        let over = change_subscriptions(&mut subs, &cd, true, 3).unwrap_err();
        assert_eq!(over.code, ErrorCode::Forbidden);
        assert_eq!(subs.len(), 2);
        // One removal unbinds `b`, however many frames added it.
        assert_eq!(change_subscriptions(&mut subs, &b, false, 3).unwrap(), b);
        assert!(!subs.contains("b") && subs.contains("a"));
    }

    #[test]
    fn a_refresh_with_narrower_rights_revokes_what_they_no_longer_allow() {
        let config = Config::default();
        let mut wide = Identity::unrestricted("alice");
        wide.groups = vec!["room-1".into(), "room-2".into()];
        wide.topics = vec!["orders.*".into()];
        let mut subs = Subscriptions::default();
        let s = Subscribe {
            broadcast: Some(true),
            groups: vec!["room-1".into(), "room-2".into()],
            direct: true,
            topic: Some("orders.created".into()),
            ..sub("chat")
        };
        let keys = subscription_keys(&config, None, &s, &wide).unwrap();
        change_subscriptions(&mut subs, &keys, true, 16).unwrap();
        assert!(revoked_keys(&subs, &wide).is_empty(), "the same rights");
        let mut narrower = wide.clone();
        narrower.groups = vec!["room-2".into()];
        narrower.topics = vec![];
        assert_eq!(
            revoked_keys(&subs, &narrower),
            ["chat.event.orders.created", "chat.group.room-1"]
        );
        let mut no_chat = wide.clone();
        no_chat.channels = Some(Default::default());
        assert_eq!(
            revoked_keys(&subs, &no_chat).len(),
            5,
            "every key of the channel"
        );
    }

    #[test]
    fn a_key_a_frame_names_twice_counts_once() {
        let config = Config::default();
        let everyone = Identity::unrestricted("alice");
        let s = Subscribe {
            groups: vec!["a".into(), "b".into(), "a".into()],
            ..sub("chat")
        };
        let keys = subscription_keys(&config, None, &s, &everyone).unwrap();
        assert_eq!(keys, ["chat.group.a", "chat.group.b"]);
        // Within a limit of 2 distinct keys.
        let mut subs = Subscriptions::default();
        assert_eq!(
            change_subscriptions(&mut subs, &keys, true, 2).unwrap(),
            keys
        );
    }

    #[test]
    fn poc_packets_name_only_the_inbound_exchange_and_consume_each_flagged_channel() {
        assert!(check_publish_target("ns.warren.in", None).is_ok());
        assert!(check_publish_target("ns.warren.in", Some("")).is_ok());
        assert!(check_publish_target("ns.warren.in", Some("ns.warren.in")).is_ok());
        let r = check_publish_target("ns.warren.in", Some("amq.topic")).unwrap_err();
        assert_eq!(r.code, ErrorCode::Unsupported);

        let mut channels = BTreeMap::new();
        channels.insert("chat".to_string(), true);
        channels.insert("voice".to_string(), false);
        channels.insert("tickets".to_string(), true);
        let p = PocPacket {
            id: None,
            packet_action: PocAction::Consume,
            channel: channels,
            distribution: Distribution {
                broadcast: false,
                groups: vec!["ops".into()],
                direct: vec![],
            },
            consume_target: vec!["a.b".into(), "c".into()],
            publish_target: None,
            message: None,
        };
        let subs: Vec<_> = poc_subscriptions(&p, "id1").collect();
        assert_eq!(subs.len(), 4, "two channels × two targets");
        assert!(subs
            .iter()
            .all(|s| s.direct && s.id == "id1" && s.groups == ["ops"]));
        assert!(subs.iter().all(|s| s.broadcast == Some(false)));
        assert!(subs.iter().all(|s| s.channel != "voice"));
        // No consume target: the whole channel, broadcast included.
        let whole = PocPacket {
            consume_target: vec![],
            ..p
        };
        let subs: Vec<_> = poc_subscriptions(&whole, "id2").collect();
        assert_eq!(subs.len(), 2);
        assert!(subs
            .iter()
            .all(|s| s.topic.is_none() && s.broadcast == Some(true)));

        // 8,000 repeats of one target and of one group (a 64 KiB packet): each once,
        // not 8,000 subscriptions of 8,000 groups for each channel.
        let repeated = PocPacket {
            consume_target: vec!["x".into(); 8000],
            distribution: Distribution {
                broadcast: false,
                groups: [vec!["g".into(); 8000], vec!["h".into(), "g".into()]].concat(),
                direct: vec![],
            },
            ..whole
        };
        let subs: Vec<_> = poc_subscriptions(&repeated, "id3").collect();
        assert_eq!(subs.len(), 2, "one per flagged channel");
        assert!(subs
            .iter()
            .all(|s| s.groups == ["g", "h"] && s.topic.as_deref() == Some("x")));
    }

    #[test]
    fn a_channel_streams_position_counts_only_when_the_hello_subscribes_to_its_channel() {
        let mut h = Hello {
            position: Some(7),
            ..Hello::default()
        };
        h.positions.insert("voice".into(), 3);
        assert_eq!(followed_position(&h, None), Some(Some(7)));
        assert_eq!(followed_position(&h, Some("voice")), None, "not followed");
        h.subscriptions.push(Subscribe {
            id: "v".into(),
            channel: "voice".into(),
            ..Subscribe::default()
        });
        assert_eq!(followed_position(&h, Some("voice")), Some(Some(3)));
        h.subscriptions.push(Subscribe {
            id: "c".into(),
            channel: "chat".into(),
            ..Subscribe::default()
        });
        assert_eq!(
            followed_position(&h, Some("chat")),
            Some(None),
            "no position named"
        );
    }

    #[test]
    fn a_resume_replays_from_the_position_after_the_last_and_marks_what_came_before_as_redelivered()
    {
        // A fresh session starts at the live flow; nothing is redelivered.
        let fresh = Positions::fresh();
        assert_eq!(fresh.next(), 0);
        assert!(!fresh.redelivered(0));
        // The client had position 41; the stream's head was 50 when it came back.
        let mut p = Positions::resumed(Some(41), Some(50));
        assert_eq!(p.next(), 42);
        assert!(p.redelivered(42) && p.redelivered(50));
        assert!(!p.redelivered(51));
        // A client that never had a position replays from the stream's start.
        assert_eq!(Positions::resumed(None, Some(3)).next(), 0);
        // An empty stream: nothing before the resume.
        assert!(!Positions::resumed(None, None).redelivered(0));
        // Positions never go back.
        p.advance(60);
        p.advance(55);
        assert_eq!(p.next(), 60);
    }

    #[test]
    fn a_reader_older_than_the_ring_reports_what_retention_dropped_once_and_hands_over_to_the_ring()
    {
        let mut p = Positions::resumed(Some(9), None);
        p.reader_opened(10);
        // The reader begins at the start of the segment, before the position: skipped.
        assert_eq!(p.read(7, false), Read::Stale);
        // Retention dropped 10..=14: the first message says how many were missed.
        assert_eq!(
            p.read(15, false),
            Read::Next {
                missed: 5,
                to_ring: false
            }
        );
        assert_eq!(p.next(), 16);
        // Only once.
        assert_eq!(
            p.read(16, false),
            Read::Next {
                missed: 0,
                to_ring: false
            }
        );
        // The ring holds 17: hand over, and read 17 again from the ring.
        assert_eq!(
            p.read(17, true),
            Read::Next {
                missed: 0,
                to_ring: true
            }
        );
        assert_eq!(p.next(), 17);
        // Nothing dropped: no gap reported.
        let mut q = Positions::fresh();
        q.reader_opened(100);
        assert_eq!(
            q.read(100, false),
            Read::Next {
                missed: 0,
                to_ring: false
            }
        );
        // Asked for a segment's bookkeeping position (no message): the reader starts
        // with the next message, and nothing was dropped.
        let mut r = Positions::fresh();
        r.reader_opened(65);
        assert_eq!(
            r.read(66, false),
            Read::Next {
                missed: 0,
                to_ring: false
            }
        );
        match missed_notice(5, 10, None) {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::SessionExpired);
                assert!(e.message.starts_with("5 stream positions after position 9"));
                assert!(e.message.contains("the outbound stream's retention"));
                assert_eq!(e.stream, None);
            }
            other => panic!("{other:?}"),
        }
        // In a channel's own stream the notice names it, as its positions are its own.
        match missed_notice(2, 4, Some("voice")) {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::SessionExpired);
                assert!(e.message.contains("channel `voice`'s stream's retention"));
                assert_eq!(e.stream.as_deref(), Some("voice"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reader_overtaken_by_retention_while_reading_reports_each_jump_and_a_cursor_moved_on_is_no_loss(
    ) {
        let next = |missed| Read::Next {
            missed,
            to_ring: false,
        };
        let mut p = Positions::resumed(Some(9), None);
        p.reader_opened(10);
        assert_eq!(p.read(10, false), next(0));
        assert_eq!(p.read(11, false), next(0));
        // 12 begins a segment: its bookkeeping position holds no message.
        assert_eq!(p.read(13, false), next(0));
        // The client read slowly; retention deleted the segments after the one being
        // read, and the reader went on at the first kept segment (50 its bookkeeping
        // position): 14..=50 were missed, though this is not the reader's first read.
        assert_eq!(p.read(51, false), next(37));
        assert_eq!(p.next(), 52);
        assert_eq!(p.read(52, false), next(0));
        // Moved on by other paths: below the cursor is stale, reaching it is no loss,
        // nor is a bookkeeping position just past it.
        p.advance(60);
        assert_eq!(p.read(55, false), Read::Stale);
        assert_eq!(p.read(61, false), next(0));
        // Handed over to the ring at 70 (read again from there) ...
        assert_eq!(
            p.read(70, true),
            Read::Next {
                missed: 8,
                to_ring: true
            }
        );
        assert_eq!(p.next(), 70);
        // ... which served it up to 90 before it fell behind again: a new reader
        // starts early, and reading on from 90 is no loss.
        p.advance(90);
        p.reader_opened(90);
        assert_eq!(p.read(70, false), Read::Stale);
        assert_eq!(p.read(90, false), next(0));
        assert_eq!(p.read(91, false), next(0));
    }

    #[test]
    fn a_session_whose_window_stays_full_between_two_checks_gives_up_its_readers() {
        // Full with delivery 1 oldest: remembered, nothing given up yet.
        assert_eq!(stalled(None, Some(1), 4, 4), (false, Some(1)));
        // Still full, still 1 oldest: a whole interval without an ack.
        assert_eq!(stalled(Some(1), Some(1), 4, 4), (true, Some(1)));
        // Full again, but the client acknowledged meanwhile: starts over.
        assert_eq!(stalled(Some(1), Some(3), 4, 4), (false, Some(3)));
        // Room in the window: the client reads at its pace; nothing remembered.
        assert_eq!(stalled(Some(1), Some(1), 3, 4), (false, None));
        assert_eq!(stalled(None, None, 0, 4), (false, None));
    }
    #[test]
    fn a_refused_subscription_the_renewal_revoked_is_excused_once() {
        let mut revoked = vec!["chat.group.g1".to_string(), "chat.group.g2".to_string()];
        let g1 = ["chat.group.g1".to_string()];
        assert!(excused_as_revoked(&mut revoked, &g1));
        assert!(!excused_as_revoked(&mut revoked, &g1), "once");
        assert!(!excused_as_revoked(
            &mut revoked,
            &["voice.all".to_string()]
        ));
        let both = ["chat.all".to_string(), "chat.group.g2".to_string()];
        assert!(excused_as_revoked(&mut revoked, &both));
        assert!(revoked.is_empty());
    }
}
