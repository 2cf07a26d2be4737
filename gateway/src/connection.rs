//! One WebSocket connection: a `tokio::select!` loop over the socket, the session's
//! messages from the outbound stream (via the hub), publisher-confirm results, request
//! deadlines, the heartbeat timer, session takeover and gateway shutdown. Every client
//! frame is answered; bad input becomes an `error` frame with a registry code. A panic (a
//! bug) is caught: the session is still cleaned up and the socket closed with 1011.
//!
//! The decisions (what is valid, what a session may receive, positions, the delivery
//! window, heartbeats) are [`crate::session_core`]'s, pure and unit-tested there; where
//! a session's messages come from (live, the ring, a stream reader) is
//! [`crate::outbound`]'s. This loop does the IO around them: the socket, the broker
//! and the metrics.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::FutureExt;
use lapin::message::Delivery;
use tokio::sync::mpsc;
use tokio::time::Instant;
use warren_protocol::{
    decode_client, encode, ClientFrame, CloseCode, Correlator, Distribution, Drain, ErrorCode,
    Headers, Hello, Limits, Ping, PocAction, PocPacket, Positions, Refresh, ServerFrame, Subscribe,
    Welcome, PROTOCOL_VERSION,
};

use crate::auth::{AuthError, Identity};
use crate::config::RequestReplies;
use crate::delivery::{self, Incoming};
use crate::direct_reply::DIRECT_REPLY_TO;
use crate::inbound::{self, now_ms_epoch, Outcome, Refusal};
use crate::limits::{Slot, TokenBucket};
use crate::metrics;
use crate::outbound::{Event, Outbound, Step};
use crate::presence::PresenceEvent;
use crate::server::{Shared, Upgrade};
use crate::session::{self, Inflight, Subscriptions, Takeover, TakeoverSignal};
use crate::session_core::{self as core_, Clock, Due, Errors, Origin, Phase, Resume};
use crate::socket::{Received, Socket, SocketError};

/// How long a session starting in a stream (a `hello` opening a new session, a first
/// subscription to a channel with a stream of its own) waits for a hub that has not
/// read the stream's tail yet (see [`Conn`]'s `hello` and `join_wait`).
const HUB_READY_WAIT: Duration = Duration::from_secs(2);

/// `refresh` frames taken up per connection: one a second, in bursts of
/// [`REFRESH_BURST`]; one past them is answered `overloaded` without its token being
/// verified. A client renews its token at most every second or so (the SDK at 75 % of
/// its lifetime, a second at the least, and after a failure on its backoff); a
/// `refresh` costs a signature check (an RSA one some tens of µs), and a flood of them
/// at `max_frames_per_s` took a core per connection.
const REFRESHES_PER_S: u32 = 1;
const REFRESH_BURST: u32 = 5;

/// What a frame handler tells the loop.
enum Flow {
    Continue,
    Close(CloseCode, String),
}

#[derive(Debug)]
struct Confirmed {
    id: String,
    /// For a request: which request of that id ([`Connection::track_request`]), so
    /// that a late confirm of one that was answered (`timeout`) does not answer a
    /// newer one the client sent with the same id.
    serial: u64,
    origin: Origin,
    outcome: Outcome,
}

/// What a publish's background task reports to its connection: the broker's confirm,
/// then, for a request with `request_replies = "direct"`, its reply.
#[derive(Debug)]
enum Settled {
    Confirmed(Confirmed),
    /// A direct reply to request `id`, the one numbered `serial`.
    Answered {
        id: String,
        serial: u64,
        answer: Box<Delivery>,
    },
}

/// The open session of a connection.
struct Session {
    id: String,
    /// Who the verified token says the user is, and what it may do.
    identity: Identity,
    /// When the token expires (its `exp` plus the configured leeway).
    expires: Option<Instant>,
    /// This session's place in the per-user count (`max_connections_per_user`).
    _user_slot: Option<Slot>,
    /// The session's place in each stream's hub, the outbound stream first, as in
    /// `Shared::streams` (empty once cleanup took them). A channel stream's is `None`
    /// until the session subscribes to that channel (or resumes subscribed to it), so
    /// a session costs nothing in the hubs of channels it does not follow.
    streams: Vec<Option<Outbound>>,
    /// Which stream [`next_outbound`] looks at first, in turn, so a busy one cannot
    /// keep another's messages waiting.
    turn: usize,
    /// Which stream the next `ping` names a position in ([`Conn::ping_position`]).
    ping_turn: usize,
    /// Deliveries not yet acknowledged by the client.
    inflight: Inflight<()>,
    /// Direct replies (`request_replies = "direct"`) that came while the delivery
    /// window was full: sent, in order, as acknowledgements make room. Those whose
    /// request timed out are dropped ([`Conn::prune_held_answers`]), so
    /// `max_pending_requests` bounds them.
    held_answers: std::collections::VecDeque<(String, u64, Box<Delivery>)>,
    subs: Subscriptions,
    /// Nothing more is sent (drain).
    cancelled: bool,
    /// The oldest unacknowledged delivery when the window was full at the last stall
    /// check, and when that check was ([`core_::stalled`]).
    full_at_check: Option<u64>,
    checked: Instant,
}

/// Serves one upgraded WebSocket until it closes; `slot` (the peer IP's connection
/// count) is released when it does.
///
/// Not an `async fn`: the connection's state is built here, and the returned future
/// captures only that state and `slot`. An `async fn` would also keep its arguments
/// (the socket among them) for the whole life of the connection, and an idle session's
/// memory is mostly this future (BENCHMARKS.md, "Gateway memory per idle session").
pub(crate) fn serve<S: Send + 'static>(
    ws: Socket,
    shared: Arc<Shared>,
    pinned: Option<String>,
    upgrade: Upgrade,
    slot: S,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let id = shared.next_connection_id();
    let now = Instant::now();
    let frames = match shared.config.max_frames_per_s {
        0 => None,
        rate => Some(TokenBucket::new(
            rate,
            rate.saturating_mul(2),
            now.into_std(),
        )),
    };
    let clock = Clock::new(
        Duration::from_millis(shared.config.heartbeat_ms),
        Duration::from_millis(shared.config.hello_timeout_ms),
        now,
    );
    let mut conn = Conn {
        shared,
        pinned,
        id,
        ws,
        phase: Phase::AwaitingHello,
        clock,
        errors: Errors::default(),
        confirms: None,
        pending_confirms: 0,
        requests: Correlator::new(),
        request_serial: 0,
        direct_calls: 0,
        revoked: Vec::new(),
        refreshes: TokenBucket::new(REFRESHES_PER_S, REFRESH_BURST, std::time::Instant::now()),
        takeover: Arc::default(),
        session: None,
        taken_over: false,
        goodbye: false,
        upgrade,
        frames,
    };
    async move {
        let shared = conn.shared.clone();
        let _guard = shared.tracker.enter();
        // A panic in a handler is a bug; it must not skip the cleanup (leave the hub and
        // the registry, publish `client.disconnected`).
        let (code, reason) = match AssertUnwindSafe(conn.run()).catch_unwind().await {
            Ok(done) => done,
            Err(panic) => {
                metrics::add(&shared.metrics.connection_panics, 1);
                tracing::error!(
                    conn = id,
                    panic = panic_text(&panic),
                    "connection task panicked; cleaning up"
                );
                (Some(CloseCode::InternalError), String::new())
            }
        };
        if let Err(panic) = AssertUnwindSafe(conn.cleanup()).catch_unwind().await {
            metrics::add(&shared.metrics.connection_panics, 1);
            tracing::error!(
                conn = id,
                panic = panic_text(&panic),
                "connection cleanup panicked"
            );
        }
        if let Some(code) = code {
            // The close reason is the registry name (PROTOCOL.md); the sentence is logged.
            if !reason.is_empty() {
                tracing::info!(conn = id, code = code.code(), %reason, "closing");
            }
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                conn.ws.close(code.code(), code.as_str()),
            )
            .await;
            // Let the client's close reply arrive so the close handshake completes.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(Ok(m)) = conn.ws.recv().await {
                    if matches!(m, Received::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        } else {
            // The client closed: the WebSocket library queued the echo of its close frame
            // (RFC 6455 §5.5.1); write it out, or the client sees 1006 for its own 1000.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.ws.flush()).await;
        }
        tracing::debug!(conn = id, "connection finished");
        drop(slot);
    }
}

/// Whether `hello` resumes a session that a connection of this gateway still serves
/// (its client is gone, but it has not noticed yet) and the resume will go on (its
/// positions are within the streams): the new connection then replaces that one,
/// which the takeover closes at once, and does not add to the user's sessions. At
/// `max_connections_per_user` such a client was otherwise refused until the stale
/// connection's heartbeat timed out (up to 37 s), and the SDK's back-off made it
/// longer.
async fn replaces_a_connection(shared: &Shared, hello: &Hello, owner: &str) -> bool {
    let Resume::Resume(requested) = core_::resume_of(hello, owner) else {
        return false;
    };
    shared.registry.holds(requested) && position_past_tail(shared, hello).await.is_none()
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Whether `text` is a JSON object whose `type` is `hello` (read alone: the rest of the
/// frame may be what made it undecodable).
fn names_hello(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Kind>(text).is_ok_and(|k| k.kind.as_deref() == Some("hello"))
}

/// Seconds since the epoch.
fn now_epoch_s() -> u64 {
    now_ms_epoch() / 1000
}

/// The next outbound event of the session, and the index of the stream it is from;
/// pending while the delivery window is full or after a drain.
async fn next_outbound(session: Option<&mut Session>, window: usize) -> (usize, Event) {
    let Some(s) = session else {
        return std::future::pending().await;
    };
    if s.streams.is_empty() || !core_::may_deliver(s.cancelled, s.inflight.len(), window) {
        return std::future::pending().await;
    }
    let mut active = s
        .streams
        .iter_mut()
        .enumerate()
        .filter_map(|(i, out)| out.as_mut().map(|out| (i, out)));
    let first = active.next();
    let second = active.next();
    let third = active.next();
    drop(active);
    match (first, second, third) {
        (None, _, _) => return std::future::pending().await,
        (Some((i, out)), None, _) => return (i, out.next().await),
        // Two (the outbound stream and one channel stream, the common case): without
        // allocating; `select!` polls them in random order, so neither starves.
        (Some((i, a)), Some((j, b)), None) => {
            return tokio::select! {
                e = a.next() => (i, e),
                e = b.next() => (j, e),
            };
        }
        _ => {}
    }
    // More: the first ready wins, starting from a different one each time. Each
    // `next` is cancel-safe, so the others lose nothing.
    let mut nexts: Vec<_> = s
        .streams
        .iter_mut()
        .enumerate()
        .filter_map(|(i, out)| out.as_mut().map(|out| (i, out)))
        .map(|(i, out)| Box::pin(async move { (i, out.next().await) }))
        .collect();
    if nexts.is_empty() {
        return std::future::pending().await;
    }
    let start = s.turn % nexts.len();
    s.turn = s.turn.wrapping_add(1);
    nexts.rotate_left(start);
    futures_util::future::select_all(nexts).await.0
}

async fn next_confirm(confirms: Option<&mut Confirms>) -> Option<Settled> {
    match confirms {
        Some(c) => c.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A `hello` and when the client asked with it.
struct Asked {
    hello: Hello,
    at: session::AskedAt,
}

/// Publisher-confirm results of a connection's publishes; created with the first
/// publish, so connections that never publish do not carry a channel.
struct Confirms {
    tx: mpsc::UnboundedSender<Settled>,
    rx: mpsc::UnboundedReceiver<Settled>,
}

struct Conn {
    shared: Arc<Shared>,
    pinned: Option<String>,
    id: u64,
    ws: Socket,
    phase: Phase,
    /// Heartbeats and deadlines.
    clock: Clock,
    /// Bad frames in a row.
    errors: Errors,
    confirms: Option<Confirms>,
    pending_confirms: usize,
    /// Requests awaiting their answer, by id, with their serial number.
    requests: Correlator<String, u64>,
    /// The last request's serial number.
    request_serial: u64,
    /// Requests sent with direct reply-to so far: numbers their correlation ids.
    direct_calls: u64,
    /// The keys the last token renewal revoked, each until a `subscribe` naming it is
    /// refused ([`core_::excused_as_revoked`]).
    revoked: Vec<String>,
    /// The `refresh` frames it may still send now ([`REFRESHES_PER_S`]).
    refreshes: TokenBucket,
    /// Set by a newer connection (or gateway) that resumes this session.
    takeover: Arc<TakeoverSignal>,
    session: Option<Session>,
    /// The session was taken over by a newer connection (here or on a peer): its
    /// presence goes on there.
    taken_over: bool,
    /// The client closed the WebSocket itself (a close frame), not after a `drain`:
    /// its session ends now (`client.disconnected` at once).
    goodbye: bool,
    /// What the upgrade request said: peer address, `Origin`, a token.
    upgrade: Upgrade,
    /// `max_frames_per_s`; `None` when off.
    frames: Option<TokenBucket>,
}

impl Conn {
    fn elapsed_ms(&self) -> u64 {
        self.clock.elapsed_ms(Instant::now())
    }

    /// The loop. Returns the close code to send, if the gateway closes.
    ///
    /// Handlers are boxed: the task of an idle connection then holds only this loop's
    /// small state, not the largest handler's (which is what a connection costs while
    /// idle, times thousands of connections).
    async fn run(&mut self) -> (Option<CloseCode>, String) {
        let mut shutdown = self.shared.shutdown.clone();
        if *shutdown.borrow() {
            return (Some(CloseCode::GoingAway), String::new());
        }
        let takeover = self.takeover.clone();
        // One timer for heartbeats and request deadlines, moved only
        // when its deadline changes.
        let timer = tokio::time::sleep_until(self.next_wake());
        tokio::pin!(timer);
        loop {
            let wake = self.next_wake();
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let flow = tokio::select! {
                _ = shutdown.changed() => {
                    return Box::pin(self.drain()).await;
                }
                Takeover = takeover.asked() => {
                    self.taken_over = true;
                    tracing::info!(conn = self.id, "session taken over by a newer connection");
                    Flow::Close(CloseCode::SessionTaken, String::new())
                }
                // Backpressure: a client with too many unconfirmed publishes is not read
                // until confirms come back.
                msg = self.ws.recv(), if self.pending_confirms < self.shared.config.max_pending_confirms => {
                    Box::pin(self.on_message(msg)).await
                }
                (i, o) = next_outbound(self.session.as_mut(), usize::from(self.shared.config.delivery_window)) => {
                    Box::pin(self.on_stream(i, o)).await
                }
                Some(c) = next_confirm(self.confirms.as_mut()) => Box::pin(self.on_settled(c)).await,
                () = timer.as_mut() => Box::pin(self.on_timer()).await,
            };
            if let Flow::Close(code, reason) = flow {
                return (Some(code), reason);
            }
            if self.phase == Phase::Closed {
                return (None, String::new());
            }
        }
    }

    /// When the timer must fire next ([`Clock::next_wake`]).
    fn next_wake(&self) -> Instant {
        let expires = self.session.as_ref().and_then(|s| s.expires);
        let wake = self
            .clock
            .next_wake(self.phase, expires, self.requests.next_deadline());
        // While the delivery window is full: the next stall check.
        let window = usize::from(self.shared.config.delivery_window);
        match self.session.as_ref() {
            Some(s) if s.inflight.len() >= window => wake.min(s.checked + self.heartbeat()),
            _ => wake,
        }
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.shared.config.heartbeat_ms)
    }

    async fn on_timer(&mut self) -> Flow {
        self.park_if_stalled(Instant::now());
        if let Flow::Close(c, r) = self.on_deadlines().await {
            return Flow::Close(c, r);
        }
        self.on_tick().await
    }

    /// Gateway shutdown: stop sending deliveries, tell the client to move (`drain`),
    /// then keep serving its publishes until it has left or every confirm is in —
    /// bounded by `shutdown_grace_ms`; the caller then closes with 1001. What the
    /// client did not acknowledge is replayed from its position wherever it resumes.
    async fn drain(&mut self) -> (Option<CloseCode>, String) {
        self.phase = Phase::Draining;
        let grace = self.shared.config.shutdown_grace_ms;
        let deadline = Instant::now() + Duration::from_millis(grace);
        if let Some(s) = self.session.as_mut() {
            s.cancelled = true;
            let drain = ServerFrame::Drain(Drain {
                reason: "gateway shutting down".into(),
                deadline_ms: Some(grace),
            });
            let _ = self.send(&drain).await;
        }
        // A direct reply (`request_replies = "direct"`) is in no stream to replay where
        // the client resumes: the replies to requests in flight are waited for too.
        let direct = self.shared.config.request_replies == RequestReplies::Direct;
        loop {
            // With a stream, what the client has not acknowledged is replayed from its
            // position wherever it resumes: only confirms are waited for.
            let settled = self.pending_confirms == 0 && (!direct || self.requests.is_empty());
            if settled || self.phase == Phase::Closed {
                break;
            }
            // Only the requests' deadlines: the heartbeat and stall times `next_wake`
            // also names are not moved on during a drain, and once past would wake it
            // on every turn.
            let due = self.requests.next_deadline().map(|d| self.clock.at_ms(d));
            // As outside a drain: not read while `max_pending_confirms` are pending.
            let room = self.pending_confirms < self.shared.config.max_pending_confirms;
            let flow = tokio::select! {
                msg = self.ws.recv(), if room => self.on_message(msg).await,
                Some(c) = next_confirm(self.confirms.as_mut()) => self.on_settled(c).await,
                // A request whose own deadline passes is answered `timeout` as ever.
                () = tokio::time::sleep_until(due.unwrap_or(deadline)), if direct && due.is_some() => {
                    self.on_deadlines().await
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(
                        conn = self.id,
                        pending_confirms = self.pending_confirms,
                        direct_replies_pending = if direct { self.requests.len() } else { 0 },
                        unacked = self.session.as_ref().map_or(0, |s| s.inflight.len()),
                        "drain deadline passed"
                    );
                    break;
                }
            };
            // The connection's own reason to close (too many errors, a slow consumer)
            // is its close code, not the drain's 1001.
            if let Flow::Close(code, reason) = flow {
                return (Some(code), reason);
            }
        }
        if self.phase == Phase::Closed {
            return (None, String::new());
        }
        (Some(CloseCode::GoingAway), "gateway shutting down".into())
    }

    /// The WebSocket text of `frame`; an `error` is counted by code (`/metrics`).
    fn message(&self, frame: &ServerFrame) -> Utf8Bytes {
        if let ServerFrame::Error(e) = frame {
            self.shared.metrics.count_error(e.code);
        }
        Utf8Bytes::from(encode(frame))
    }

    async fn send(&mut self, frame: &ServerFrame) -> Flow {
        let message = self.message(frame);
        // A client that stops reading fills its TCP window; do not wait for it forever.
        let limit = self.send_limit();
        let sent = tokio::time::timeout(limit, self.ws.send(message)).await;
        self.sent(sent)
    }

    /// Queues a frame in the socket's write buffer without flushing it; see
    /// [`Conn::flush`]. Writes out only if the buffer is full.
    async fn feed(&mut self, frame: &ServerFrame) -> Flow {
        let message = self.message(frame);
        let limit = self.send_limit();
        let sent = tokio::time::timeout(limit, self.ws.feed(message)).await;
        self.sent(sent)
    }

    /// Writes out what [`Conn::feed`] queued.
    async fn flush(&mut self) -> Flow {
        let limit = self.send_limit();
        let sent = tokio::time::timeout(limit, self.ws.flush()).await;
        self.sent(sent)
    }

    fn send_limit(&self) -> Duration {
        self.clock.send_limit()
    }

    fn sent(
        &mut self,
        result: Result<Result<(), SocketError>, tokio::time::error::Elapsed>,
    ) -> Flow {
        match result {
            Err(_) => {
                tracing::info!(conn = self.id, "client does not read; closing");
                Flow::Close(CloseCode::SlowConsumer, String::new())
            }
            Ok(Ok(())) => {
                self.clock.sent(Instant::now());
                Flow::Continue
            }
            Ok(Err(e)) => {
                tracing::debug!(conn = self.id, error = %e, "send failed");
                self.phase = Phase::Closed;
                Flow::Continue
            }
        }
    }

    /// Answers a bad frame; closes after too many in a row.
    async fn bad(
        &mut self,
        id: Option<String>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Flow {
        let message = message.into();
        tracing::debug!(conn = self.id, %code, %message, "bad frame");
        if code == ErrorCode::Forbidden {
            metrics::add(&self.shared.metrics.refused_forbidden, 1);
        }
        if let Flow::Close(c, r) = self.send(&ServerFrame::error(id, code, message)).await {
            return Flow::Close(c, r);
        }
        self.bad_counted()
    }

    /// Counts one bad frame (already answered); closes after too many in a row.
    fn bad_counted(&mut self) -> Flow {
        if self.errors.bad(self.shared.config.max_consecutive_errors) {
            return Flow::Close(CloseCode::TooManyErrors, String::new());
        }
        Flow::Continue
    }

    async fn on_message(&mut self, msg: Option<Result<Received, SocketError>>) -> Flow {
        self.clock.heard(Instant::now());
        if let Some(wait) = self
            .frames
            .as_mut()
            .and_then(|b| b.take_or_wait(std::time::Instant::now()))
        {
            // Over max_frames_per_s: this connection waits, nobody else does.
            metrics::add(&self.shared.metrics.throttled, 1);
            tokio::time::sleep(wait).await;
        }
        match msg {
            Some(Ok(Received::Close(code))) => {
                self.goodbye = self.phase != Phase::Draining && core_::is_goodbye(code);
                self.phase = Phase::Closed;
                Flow::Continue
            }
            None => {
                self.phase = Phase::Closed;
                Flow::Continue
            }
            Some(Err(e)) => {
                let text = e.to_string();
                match core_::read_failure(&text) {
                    Some(code) => {
                        tracing::info!(conn = self.id, error = %text, "frame refused by the WebSocket layer");
                        Flow::Close(code, String::new())
                    }
                    None => {
                        tracing::debug!(conn = self.id, error = %text, "read failed");
                        self.phase = Phase::Closed;
                        Flow::Continue
                    }
                }
            }
            Some(Ok(Received::Control)) => Flow::Continue,
            Some(Ok(Received::Binary)) => {
                if let Flow::Close(c, r) = self.ensure_session(None).await {
                    return Flow::Close(c, r);
                }
                self.bad(
                    None,
                    ErrorCode::Unsupported,
                    "binary frames are not supported; send JSON text frames",
                )
                .await
            }
            Some(Ok(Received::Text(text))) => self.on_text(text.as_str()).await,
        }
    }

    async fn on_text(&mut self, text: &str) -> Flow {
        let max = self.shared.config.max_frame_bytes;
        if text.len() > max {
            let why = format!(
                "frame of {} bytes exceeds max_frame_bytes {max}",
                text.len()
            );
            // An oversized `hello` (a resume naming very many subscriptions) opens
            // nothing, as one that cannot be read: an empty hello's session would lack
            // its token (in jwt mode a 4501 that stops the client; without auth an
            // anonymous session for a named user).
            if self.session.is_none() && names_hello(text) {
                return self.bad(None, ErrorCode::TooLarge, why).await;
            }
            if let Flow::Close(c, r) = self.ensure_session(None).await {
                return Flow::Close(c, r);
            }
            return self.bad(None, ErrorCode::TooLarge, why).await;
        }
        match decode_client(text) {
            // A `hello` that cannot be read opens nothing: opened from an empty hello
            // the session would not carry the hello's token (in jwt mode, a 4501 that
            // stops the client; without auth, an anonymous session for a named user)
            // nor the resume it asked for. The client may send a correct one before
            // `hello_timeout_ms`.
            Err(e) if self.session.is_none() && names_hello(text) => {
                self.bad(e.id, e.code, e.message).await
            }
            Err(e) => {
                if let Flow::Close(c, r) = self.ensure_session(None).await {
                    return Flow::Close(c, r);
                }
                self.bad(e.id, e.code, e.message).await
            }
            Ok(ClientFrame::Hello(h)) if self.session.is_none() => {
                self.ensure_session(Some(h)).await
            }
            Ok(frame) => {
                if let Flow::Close(c, r) = self.ensure_session(None).await {
                    return Flow::Close(c, r);
                }
                self.on_frame(frame).await
            }
        }
    }

    /// Opens the session if none is open yet: the one `hello` names, or a fresh one.
    async fn ensure_session(&mut self, hello: Option<Hello>) -> Flow {
        if self.session.is_some() {
            return Flow::Continue;
        }
        // When the client asked: its claim of the session and a takeover it requests
        // elsewhere are dated by it (see `open_session`).
        let asked_at = session::AskedAt::now();
        let hello = hello.unwrap_or_default();
        let config = &self.shared.config;
        if let Err((code, why)) = core_::check_protocol(hello.protocol) {
            return Flow::Close(code, why);
        }
        // Nothing is declared on the broker before the token is verified.
        let token = hello.token.clone().or_else(|| self.upgrade.token.take());
        let anonymous = token.is_none();
        let shared = self.shared.clone();
        // Only a session this gateway could have issued is named to the auth service
        // (and keys its answer cache); any other opens a fresh session below. Passed as
        // sent, ever new strings of up to a frame each filled the cache.
        let asked_session = hello.session.as_deref().filter(|s| session::well_formed(s));
        let verified = shared
            .authenticate(token.as_deref(), "anonymous", asked_session, &self.upgrade)
            .await;
        let identity = match verified {
            Ok(identity) => identity,
            Err(e) => return self.unauthorized(None, e).await,
        };
        // Development mode without a token: the user is the session (set below), and
        // any anonymous client may resume an anonymous session, as before.
        // In tenant mode a user id is unique within its tenant only: the owner is both.
        let owner = if anonymous {
            String::new()
        } else {
            let tenant = inbound::tenant_of(config, &identity);
            session::owner_of(&identity.user, tenant)
        };
        // Sessions per user, before anything is declared for this one. Anonymous
        // development sessions are each their own user.
        let mut replacing = false;
        let user_slot = if anonymous {
            None
        } else {
            match self.shared.limiter.admit_user(&owner) {
                Ok(slot) => Some(slot),
                Err(_) if replaces_a_connection(&shared, &hello, &owner).await => {
                    replacing = true;
                    Some(self.shared.limiter.admit_user_replacing(&owner))
                }
                Err(_) => return self.refuse_user_limit().await,
            }
        };
        let asked = Asked {
            hello,
            at: asked_at,
        };
        self.open_session(asked, identity, owner, anonymous, user_slot, replacing)
            .await
    }

    /// Refuses a session over `max_connections_per_user`.
    async fn refuse_user_limit(&mut self) -> Flow {
        metrics::add(&self.shared.metrics.refused_limit, 1);
        let message = crate::limits::Refused::ConnectionsPerUser
            .message(self.shared.config.max_connections_per_user);
        let frame = ServerFrame::error(None, ErrorCode::Overloaded, message.clone());
        let _ = self.send(&frame).await;
        Flow::Close(CloseCode::RateLimited, message)
    }

    /// Opens or resumes a session: nothing is declared on the broker. A resume names its
    /// last position and its subscriptions; the session joins the hub catching up from
    /// there, so what was published while the client was away is replayed (filtered by
    /// these subscriptions and this identity) before the live flow.
    async fn open_session(
        &mut self,
        asked: Asked,
        mut identity: Identity,
        owner: String,
        anonymous: bool,
        user_slot: Option<Slot>,
        replacing: bool,
    ) -> Flow {
        let Asked {
            hello,
            at: asked_at,
        } = asked;
        // A subscription the identity may not hold (rights narrowed since, a crafted
        // `hello`) is refused below: its channel's stream is not followed for it (not
        // joined, which read that stream from the session's position, a day by default,
        // for nothing; not waited for; its position not checked).
        let pinned = self.pinned.as_deref();
        let followed = Hello {
            subscriptions: hello
                .subscriptions
                .iter()
                .filter(|s| {
                    core_::subscription_keys(&self.shared.config, pinned, s, &identity).is_ok()
                })
                .cloned()
                .collect(),
            ..hello.clone()
        };
        let mut notice = None;
        let mut resumed = false;
        let mut id = None;
        // Each hub's resets when the resume's positions were checked: a reset before
        // the join below makes them positions of a replaced stream.
        let checked: Vec<u64> = self
            .shared
            .streams
            .all()
            .iter()
            .map(|s| s.hub.resets())
            .collect();
        let resume = match core_::resume_of(&hello, &owner) {
            Resume::Resume(requested) => match position_past_tail(&self.shared, &followed).await {
                Some(stream) => {
                    tracing::warn!(conn = self.id, session = %requested, stream = %stream, position = ?hello.position, positions = ?hello.positions, "resume refused: a position past the stream's tail (the stream was deleted and declared again, or RabbitMQ lost its data)");
                    Resume::Fresh {
                        notice: Some(ErrorCode::SessionExpired),
                    }
                }
                None => Resume::Resume(requested),
            },
            fresh => fresh,
        };
        match resume {
            // Admitted over the user's limit to replace the connection serving this
            // session, which it no longer can (a stream was replaced since the look):
            // a fresh session would be one more.
            Resume::Fresh { .. } if replacing => return self.refuse_user_limit().await,
            Resume::Fresh { notice: why } => {
                if why == Some(ErrorCode::Forbidden) {
                    tracing::info!(conn = self.id, session = ?hello.session, "resume refused: another user's session");
                    metrics::add(&self.shared.metrics.refused_forbidden, 1);
                }
                if why == Some(ErrorCode::Invalid) {
                    tracing::info!(conn = self.id, session = ?hello.session, position = ?hello.position, "resume refused: a position past 2^53 - 1");
                }
                notice = why;
            }
            Resume::Resume(requested) => {
                // A connection of this gateway may still hold it (its client is gone but
                // it has not noticed yet): it is closed; one of another gateway is asked
                // to close. Neither holds anything the client needs.
                let local =
                    self.shared
                        .registry
                        .claim(requested, self.id, self.takeover.clone(), asked_at);
                // Dated by when the client asked, not now: a `hello` that waited
                // (for the auth service, a look at a stream's tail) may have been given
                // up by its client, which resumed the session again, here or on another
                // gateway, in the meantime. That newer connection must stay (it ignores
                // a takeover dated before it was asked for, and a claim here refuses
                // this one); dated now, it was closed with 4502, which clients do not
                // reconnect from.
                match local {
                    Ok(Some(old)) => {
                        let _ = old.ask(Takeover);
                    }
                    Ok(None) => self.shared.request_takeover(requested, asked_at.epoch_ms),
                    Err(session::Newer) => {
                        tracing::info!(conn = self.id, session = %requested, "resume given up: a connection asked for later serves the session here");
                        return Flow::Close(
                            CloseCode::SessionTaken,
                            "a newer connection resumed this session".into(),
                        );
                    }
                }
                resumed = true;
                id = Some(requested.to_string());
            }
        }
        // A new session starts after each stream's newest message: a hub that has not
        // read its stream's tail yet (its reader is starting, RabbitMQ is slow) cannot
        // name it, and is waited for a while. A welcome without a position would have
        // the session replay its stream from the start on resume (a day of retention
        // by default): a session that would follow such a stream is not opened here.
        if !resumed {
            if let Some(stream) = unready_stream(&self.shared, &followed).await {
                let why = format!("this gateway is not reading {stream} yet (it is starting, or RabbitMQ is slow or refuses it): try again, or another gateway");
                tracing::warn!(conn = self.id, stream = %stream, "new session refused: its stream is not read yet");
                let frame = ServerFrame::error(None, ErrorCode::BrokerUnavailable, why.clone());
                if let Flow::Close(c, r) = self.send(&frame).await {
                    return Flow::Close(c, r);
                }
                return Flow::Close(CloseCode::BrokerUnavailable, why);
            }
        }
        let id = id.unwrap_or_else(|| {
            let id = session::new_session_id(&owner);
            // A fresh id: nobody else holds it.
            let _ = self
                .shared
                .registry
                .claim(&id, self.id, self.takeover.clone(), asked_at);
            id
        });
        // An anonymous development session is its own user.
        if anonymous {
            identity.user = id.clone();
        }
        let tenant = inbound::tenant_of(&self.shared.config, &identity);
        let reader_user: Arc<str> = if anonymous {
            session::owner_of(&id, tenant).into()
        } else {
            owner.as_str().into()
        };
        // A resume without a position (the stream was empty when the session opened)
        // replays from the stream's start. Each stream has positions of its own; a
        // channel stream is joined only by a session subscribed to its channel.
        let mut streams = Vec::new();
        for (source, checked) in self.shared.streams.all().iter().zip(checked) {
            let Some(position) = core_::followed_position(&followed, source.channel.as_deref())
            else {
                streams.push(None);
                continue;
            };
            let resume_at = resumed.then(|| core_::resume_from(position));
            let (member, head) =
                source
                    .hub
                    .join_checked(self.id, &id, tenant, resume_at, Some(checked));
            tracing::debug!(conn = self.id, stream = %source.name, from = ?resume_at, "joined");
            streams.push(Some(Outbound::new(
                source.clone(),
                member,
                resumed,
                position,
                head,
                reader_user.clone(),
            )));
        }
        let user = identity.user.clone();
        let expires = self.expiry_of(&identity);
        tracing::info!(conn = self.id, session = %id, user = %user, resumed, from = ?hello.position, client = ?hello.client, "session open");
        self.session = Some(Session {
            id: id.clone(),
            identity,
            expires,
            _user_slot: user_slot,
            streams,
            turn: 0,
            ping_turn: 0,
            inflight: Inflight::default(),
            held_answers: std::collections::VecDeque::new(),
            subs: Subscriptions::default(),
            cancelled: false,
            full_at_check: None,
            checked: Instant::now(),
        });
        #[cfg(feature = "fault-injection")]
        if !resumed && !hello.subscriptions.is_empty() {
            crate::fault::delay(crate::fault::HELLO_SUBSCRIPTIONS_DELAY_MS).await;
        }
        // The subscriptions the client held, before anything is replayed; refusals are
        // reported when the client sends them again as `subscribe` frames.
        for s in &hello.subscriptions {
            if let Err(r) = self.apply_subscription(s, true, resumed) {
                tracing::debug!(conn = self.id, code = %r.code.as_str(), "a resumed subscription was refused");
            }
        }
        // A new session starts after each stream's newest message, taken once its
        // subscriptions are in place: a message read between its joining and them
        // did not reach it, and the welcome must not name a position before it. Nor
        // past one read since that waits in its inbox, sent after the welcome.
        let heads: Vec<_> = if resumed {
            Vec::new()
        } else {
            let streams = self.shared.streams.all();
            streams
                .iter()
                .map(|source| (source.channel.clone(), source.hub.welcome_head(self.id)))
                .collect()
        };
        let heads = heads.into_iter();
        let welcome = self.opened(id, resumed, user, notice, heads);
        // A resume naming none may still change them: the client dropped some while
        // disconnected (nothing is published when they are as they were).
        if resumed || !hello.subscriptions.is_empty() {
            self.subscriptions_changed();
        }
        self.send(&welcome).await
    }

    /// The session is open: the phase moves on, `client.connected` goes out, and the
    /// `welcome` to send is built.
    fn opened(
        &mut self,
        session: String,
        resumed: bool,
        user: String,
        notice: Option<ErrorCode>,
        heads: impl Iterator<Item = (Option<String>, Option<u64>)>,
    ) -> ServerFrame {
        let mut position = None;
        let mut positions = Positions::new();
        for (channel, head) in heads {
            match (channel, head) {
                (None, head) => position = head,
                (Some(channel), Some(head)) => {
                    positions.insert(channel, head);
                }
                (Some(_), None) => {}
            }
        }
        self.phase = Phase::Open;
        // The `hello` was accepted: a row of bad frames before it ends here.
        self.errors.good();
        if let Some(cap) = &self.upgrade.pre_hello {
            let waited = cap.opened();
            self.shared.metrics.session_open.observe(waited);
        }
        let pinned = self.pinned.as_deref();
        let tenant = self
            .session
            .as_ref()
            .and_then(|s| inbound::tenant_of(&self.shared.config, &s.identity))
            .map(str::to_string);
        let fresh = self
            .shared
            .presence_view()
            .opened(&session, &user, pinned, tenant.as_deref());
        if fresh {
            self.shared.presence(PresenceEvent {
                event: "client.connected".into(),
                session: session.clone(),
                user: user.clone(),
                node: self.shared.config.node.clone(),
                channel: pinned.map(str::to_string),
                reason: None,
                by: None,
                keys: None,
                tenant,
            });
        }
        let config = &self.shared.config;
        ServerFrame::Welcome(Welcome {
            session,
            resumed,
            user,
            node: config.node.clone(),
            heartbeat_ms: config.heartbeat_ms,
            limits: Limits {
                max_frame_bytes: config.max_frame_bytes as u64,
                max_subscriptions: config.max_subscriptions,
                delivery_window: u32::from(config.delivery_window),
            },
            protocol: PROTOCOL_VERSION,
            notice,
            position,
            positions,
        })
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Flow {
        match frame {
            ClientFrame::Hello(_) => {
                self.bad(None, ErrorCode::Invalid, "the session is already open")
                    .await
            }
            ClientFrame::Publish(p) => {
                #[cfg(feature = "fault-injection")]
                if p.id == "__warren_test_panic__" {
                    panic!("fault injection: a handler panics");
                }
                let res = self
                    .publish(
                        &p.id,
                        &p.channel,
                        p.subject.as_deref(),
                        p.distribution.as_ref(),
                        &p.headers,
                        p.message.get().as_bytes(),
                        None,
                        None,
                    )
                    .await;
                match res {
                    Ok(confirm) => {
                        self.errors.good();
                        self.await_confirms(
                            p.id,
                            0,
                            Origin::Publish,
                            vec![confirm],
                            inbound::CONFIRM_WAIT,
                        );
                        Flow::Continue
                    }
                    Err(r) => self.refuse(Some(p.id), r).await,
                }
            }
            ClientFrame::Request(r) => {
                let config = &self.shared.config;
                let timeout = match inbound::request_timeout(config, r.timeout_ms) {
                    Ok(timeout) => timeout,
                    Err(e) => return self.bad(Some(r.id), e.code, e.message).await,
                };
                let admitted = core_::admit_request(
                    self.requests.len(),
                    config.max_pending_requests,
                    self.requests.contains(&r.id),
                );
                if let Err(refused) = admitted {
                    if refused.code == ErrorCode::Overloaded {
                        metrics::add(&self.shared.metrics.refused_limit, 1);
                    }
                    return self.refuse(Some(r.id), refused).await;
                }
                if self.shared.config.request_replies == RequestReplies::Direct {
                    return self.request_direct(r, timeout).await;
                }
                let res = self
                    .publish(
                        &r.id,
                        &r.channel,
                        r.subject.as_deref(),
                        None,
                        &r.headers,
                        r.message.get().as_bytes(),
                        Some(timeout),
                        None,
                    )
                    .await;
                match res {
                    Ok(confirm) => {
                        self.errors.good();
                        let serial = self.track_request(&r.id, timeout);
                        self.await_confirms(
                            r.id,
                            serial,
                            Origin::Request,
                            vec![confirm],
                            inbound::request_confirm_wait(timeout),
                        );
                        Flow::Continue
                    }
                    Err(e) => self.refuse(Some(r.id), e).await,
                }
            }
            ClientFrame::Subscribe(s) => self.subscribe(s, true).await,
            ClientFrame::Unsubscribe(s) => self.subscribe(s, false).await,
            ClientFrame::AckDeliveries(a) => {
                if let Some(s) = self.session.as_mut() {
                    let acked = s.inflight.ack_upto(a.seq);
                    metrics::add(&self.shared.metrics.client_acks, acked.len() as u64);
                }
                self.send_held_answers().await
            }
            // Neither resets the count of bad frames in a row: a flood of pings
            // between bad frames must not keep a misbehaving client connected.
            ClientFrame::Ping(p) => self.send(&ServerFrame::Pong(p)).await,
            ClientFrame::Pong(_) => Flow::Continue,
            ClientFrame::Refresh(r) => self.refresh(r).await,
            ClientFrame::Poc(p) => self.poc(p).await,
        }
    }

    /// When an identity's token stops being valid, as a deadline of this connection.
    fn expiry_of(&self, identity: &Identity) -> Option<Instant> {
        let leeway = self.shared.config.auth.jwt.leeway_s;
        core_::expiry(identity.expires_at, leeway, now_epoch_s(), Instant::now())
    }

    /// Answers a refused token with `unauthorized`: an `error` frame naming `id` at
    /// `refresh`; at `hello`, an `error` frame then a close with 4501.
    /// An auth service that did not answer is `auth_unavailable` (retryable; at
    /// `hello`, a close with 4006), not a refusal.
    async fn unauthorized(&mut self, id: Option<String>, e: AuthError) -> Flow {
        let at_hello = self.session.is_none();
        if let AuthError::Unavailable(why) = &e {
            tracing::warn!(conn = self.id, reason = %why, "auth service unavailable");
            let frame = ServerFrame::error(id, ErrorCode::AuthUnavailable, e.to_string());
            if let Flow::Close(c, r) = self.send(&frame).await {
                return Flow::Close(c, r);
            }
            if at_hello {
                return Flow::Close(CloseCode::AuthUnavailable, e.to_string());
            }
            return Flow::Continue;
        }
        metrics::add(&self.shared.metrics.refused_token, 1);
        tracing::info!(conn = self.id, reason = %e, "token refused");
        let frame = ServerFrame::error(id, ErrorCode::Unauthorized, e.to_string());
        if let Flow::Close(c, r) = self.send(&frame).await {
            return Flow::Close(c, r);
        }
        if at_hello {
            return Flow::Close(CloseCode::Unauthorized, e.to_string());
        }
        self.bad_counted()
    }

    /// `refresh`: a new token for the same user replaces the session's identity
    /// (groups, permissions and expiry) without touching the connection or session.
    async fn refresh(&mut self, r: Refresh) -> Flow {
        let Some((current, session)) = self
            .session
            .as_ref()
            .map(|s| (s.identity.user.clone(), s.id.clone()))
        else {
            return Flow::Continue;
        };
        if !self.refreshes.take(std::time::Instant::now()) {
            let message = "too many refreshes (one a second, in bursts of 5): send it again \
                           in a second";
            return self.bad(Some(r.id), ErrorCode::Overloaded, message).await;
        }
        let shared = self.shared.clone();
        let verified = shared
            .authenticate(Some(&r.token), &current, Some(&session), &self.upgrade)
            .await;
        let identity = match verified {
            Ok(identity) => identity,
            Err(e) => return self.unauthorized(Some(r.id), e).await,
        };
        // Tenant mode: the hub admitted this session as its first tenant; a token of
        // another tenant needs a new session.
        let tenant_now = self
            .session
            .as_ref()
            .and_then(|s| inbound::tenant_of(&shared.config, &s.identity));
        let tenant_new = inbound::tenant_of(&shared.config, &identity);
        if let Err(refused) = core_::check_refresh(&current, tenant_now, &identity.user, tenant_new)
        {
            return self.refuse(Some(r.id), refused).await;
        }
        let expires = self.expiry_of(&identity);
        let mut revoked = Vec::new();
        if let Some(s) = self.session.as_mut() {
            s.identity = identity;
            s.expires = expires;
            revoked = core_::revoked_keys(&s.subs, &s.identity);
        }
        self.errors.good();
        tracing::debug!(conn = self.id, "token refreshed");
        self.revoked.clone_from(&revoked);
        if !revoked.is_empty() {
            // The new token's rights are in force from here: what it no longer grants
            // stops now, and the client is told before the `ack`.
            tracing::info!(conn = self.id, keys = ?revoked, "subscriptions revoked by a refreshed token");
            self.unbind(&revoked);
            self.subscriptions_changed();
            let message = format!(
                "the renewed token no longer grants {}: unsubscribed",
                revoked.join(", ")
            );
            let frame = ServerFrame::error(None, ErrorCode::Forbidden, message);
            if let Flow::Close(c, why) = self.send(&frame).await {
                return Flow::Close(c, why);
            }
        }
        self.send(&ServerFrame::ack(r.id)).await
    }

    /// Removes `keys` from the session's subscriptions and unbinds them from the hubs
    /// (an `unsubscribe`, or what a refreshed token no longer grants).
    fn unbind(&mut self, keys: &[String]) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let Ok(changed) = core_::change_subscriptions(&mut session.subs, keys, false, 0) else {
            return; // removing is never refused
        };
        let streams = self.shared.streams.all();
        for (i, keys) in self.shared.streams.split(&changed) {
            streams[i].hub.unsubscribe(self.id, &keys);
        }
    }

    /// Sends the `error` for a refused frame; input problems count towards
    /// `too_many_errors`, broker problems do not.
    async fn refuse(&mut self, id: Option<String>, r: Refusal) -> Flow {
        if core_::counts_as_bad(r.code) {
            self.bad(id, r.code, r.message).await
        } else {
            self.send(&ServerFrame::error(id, r.code, r.message)).await
        }
    }

    /// `message` checked as this session's ([`inbound::checked`]), ready to publish.
    // `&mut self`: `Conn` is not `Sync`, so a future holding `&Conn` is not `Send`.
    async fn check(
        &mut self,
        message: &inbound::Message<'_>,
    ) -> Result<inbound::Prepared, Refusal> {
        let session = self
            .session
            .as_ref()
            .ok_or_else(|| Refusal::new(ErrorCode::Internal, "no session"))?;
        let sender = inbound::Sender {
            identity: &session.identity,
            session: &session.id,
        };
        inbound::checked(&self.shared, self.pinned.as_deref(), &sender, message).await
    }

    /// A POC packet's publish on `channel`, checked as [`Conn::publish`] checks one
    /// (all of a packet's channels are, before the first is published).
    async fn checked_publish(
        &mut self,
        id: &str,
        channel: &str,
        distribution: &Distribution,
        publish_target: Option<&str>,
    ) -> Result<inbound::Prepared, Refusal> {
        let headers = Headers::new();
        self.check(&inbound::Message {
            id,
            channel,
            subject: None,
            distribution: Some(distribution),
            headers: &headers,
            publish_target,
            request: None,
        })
        .await
    }

    /// Validates and publishes one message to the inbound exchange; returns the
    /// publish with its confirm to come.
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &mut self,
        id: &str,
        channel: &str,
        subject: Option<&str>,
        distribution: Option<&Distribution>,
        client_headers: &Headers,
        body: &[u8],
        request_timeout: Option<u64>,
        publish_target: Option<&str>,
    ) -> Result<inbound::Pending, Refusal> {
        let session = self
            .session
            .as_ref()
            .ok_or_else(|| Refusal::new(ErrorCode::Internal, "no session"))?;
        // Replies come back through the outbound stream with the session in the
        // correlation id.
        let request = request_timeout.map(|timeout_ms| inbound::ReplyTo {
            reply_to: self.shared.names.outbound_stream(),
            correlation_id: delivery::stream_correlation(&session.id, id),
            timeout_ms,
        });
        let message = inbound::Message {
            id,
            channel,
            subject,
            distribution,
            headers: client_headers,
            publish_target,
            request,
        };
        let prepared = self.check(&message).await?;
        inbound::send_prepared(&self.shared, prepared, body).await
    }

    /// Awaits the confirms of one frame's publishes in a task of its own, so confirms
    /// are pipelined: many frames are in flight at once on the pooled channels.
    fn await_confirms(
        &mut self,
        id: String,
        serial: u64,
        origin: Origin,
        confirms: Vec<inbound::Pending>,
        wait: Duration,
    ) {
        let tx = self.confirm_pending(confirms.len());
        let broker = self.shared.broker.clone();
        tokio::spawn(async move {
            let mut outcome = Outcome::Acked;
            let outcomes = confirms
                .into_iter()
                .map(|c| c.outcome_within(&broker, wait));
            for this in futures_util::future::join_all(outcomes).await {
                if matches!(outcome, Outcome::Acked) {
                    outcome = this;
                }
            }
            let _ = tx.send(Settled::Confirmed(Confirmed {
                id,
                serial,
                origin,
                outcome,
            }));
        });
    }

    /// Records request `id` as awaiting its answer until its timeout; returns its
    /// serial number.
    fn track_request(&mut self, id: &str, timeout_ms: u64) -> u64 {
        self.request_serial += 1;
        let deadline = self.clock.request_deadline(Instant::now(), timeout_ms);
        let _ = self
            .requests
            .insert(id.to_string(), deadline, self.request_serial);
        self.request_serial
    }

    /// Counts one frame's `publishes` as awaiting their confirm; returns where its
    /// task reports.
    fn confirm_pending(&mut self, publishes: usize) -> mpsc::UnboundedSender<Settled> {
        self.pending_confirms += 1;
        let m = &self.shared.metrics;
        metrics::add(&m.publishes, publishes as u64);
        m.confirms_pending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.settled()
    }

    /// Where background tasks report confirms and direct replies.
    fn settled(&mut self) -> mpsc::UnboundedSender<Settled> {
        self.confirms
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                Confirms { tx, rx }
            })
            .tx
            .clone()
    }

    /// A `request` with `request_replies = "direct"`: published on the direct reply-to
    /// channel ([`crate::direct_reply`]) with a correlation id of this connection's
    /// own; its confirm (from a task) and its reply (from the answer consumer, as it
    /// arrives) come back through [`Conn::on_settled`].
    async fn request_direct(&mut self, r: warren_protocol::Request, timeout: u64) -> Flow {
        let to = self.settled();
        let Some(session) = self.session.as_ref() else {
            return Flow::Continue;
        };
        self.direct_calls += 1;
        // Not guessable: every WebSocket direct request shares one reply-to address,
        // which each service it reaches learns, and the answer consumer matches a
        // reply by its correlation id alone. `<connection>.<count>` (both counted from
        // 1) let a service answer other users' requests to other services.
        let call_id = format!(
            "{}.{}.{}",
            self.id,
            self.direct_calls,
            uuid::Uuid::new_v4().simple()
        );
        let message = inbound::Message {
            id: &r.id,
            channel: &r.channel,
            subject: r.subject.as_deref(),
            distribution: None,
            headers: &r.headers,
            publish_target: None,
            request: Some(inbound::ReplyTo {
                reply_to: DIRECT_REPLY_TO.to_string(),
                correlation_id: call_id.clone(),
                timeout_ms: timeout,
            }),
        };
        let sender = inbound::Sender {
            identity: &session.identity,
            session: &session.id,
        };
        let body = r.message.get().as_bytes();
        let id = r.id.clone();
        // The serial track_request gives it below: a late answer to an earlier request
        // of the same id (answered `timeout`) must not answer this one.
        let serial = self.request_serial + 1;
        let answered = move |answer| {
            // A connection that ended has nobody to answer.
            let answer = Box::new(answer);
            let _ = to.send(Settled::Answered { id, serial, answer });
        };
        let sent = inbound::send_direct(
            &self.shared,
            self.pinned.as_deref(),
            &sender,
            &message,
            body,
            answered,
        )
        .await;
        let pending = match sent {
            Ok(pending) => pending,
            Err(e) => return self.refuse(Some(r.id), e).await,
        };
        self.errors.good();
        let tracked = self.track_request(&r.id, timeout);
        debug_assert_eq!(tracked, serial);
        let tx = self.confirm_pending(1);
        let shared = self.shared.clone();
        let id = r.id;
        tokio::spawn(async move {
            let outcome = pending
                .direct_outcome(&shared, inbound::request_confirm_wait(timeout))
                .await;
            if !matches!(outcome, Outcome::Acked) {
                shared.ws_replies.forget(&call_id);
            }
            let confirmed = Confirmed {
                id,
                serial,
                origin: Origin::Request,
                outcome,
            };
            let _ = tx.send(Settled::Confirmed(confirmed));
        });
        Flow::Continue
    }

    async fn on_settled(&mut self, s: Settled) -> Flow {
        match s {
            Settled::Confirmed(c) => self.on_confirm(c).await,
            Settled::Answered { id, serial, answer } => self.on_answer(id, serial, answer).await,
        }
    }

    /// A direct reply to request `id` numbered `serial`: sent as the stream's would
    /// be, without a position (unless that request was answered already, by `timeout`;
    /// a pending request of the same id is then a newer one).
    async fn on_answer(&mut self, id: String, serial: u64, answer: Box<Delivery>) -> Flow {
        if self.requests.get(&id) != Some(&serial) {
            return Flow::Continue;
        }
        // Within the delivery window, as stream deliveries are: a client that never
        // acknowledges was sent every reply, each kept in `inflight` for the life of
        // the connection.
        let window = usize::from(self.shared.config.delivery_window);
        self.prune_held_answers();
        if let Some(s) = self.session.as_mut() {
            if s.inflight.len() >= window || !s.held_answers.is_empty() {
                s.held_answers.push_back((id, serial, answer));
                self.shared
                    .metrics
                    .direct_replies_held
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Flow::Continue;
            }
        }
        self.send_answer(id, answer).await
    }

    /// Drops the held direct replies whose request is no longer pending (its `timeout`
    /// went out): held ones are then at most the pending requests. Kept until an
    /// acknowledgement came, a client that never sent one had them pile up.
    fn prune_held_answers(&mut self) {
        let requests = &self.requests;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let before = s.held_answers.len();
        s.held_answers
            .retain(|(id, serial, _)| requests.get(id) == Some(serial));
        let dropped = before - s.held_answers.len();
        self.shared
            .metrics
            .direct_replies_held
            .fetch_sub(dropped as i64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The direct replies held while the window was full ([`Conn::on_answer`]), as
    /// far as it now has room; those whose request ended meanwhile (its `timeout`
    /// went out) are dropped.
    async fn send_held_answers(&mut self) -> Flow {
        let window = usize::from(self.shared.config.delivery_window);
        loop {
            let Some(s) = self.session.as_mut() else {
                return Flow::Continue;
            };
            if s.inflight.len() >= window {
                return Flow::Continue;
            }
            let Some((id, serial, answer)) = s.held_answers.pop_front() else {
                return Flow::Continue;
            };
            self.shared
                .metrics
                .direct_replies_held
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if self.requests.get(&id) != Some(&serial) {
                continue;
            }
            if let Flow::Close(c, r) = self.send_answer(id, answer).await {
                return Flow::Close(c, r);
            }
        }
    }

    /// Sends a direct reply to request `id` as a `reply` (or `error`) frame.
    async fn send_answer(&mut self, id: String, answer: Box<Delivery>) -> Flow {
        let properties = answer
            .properties
            .clone()
            .with_correlation_id(lapin::types::ShortString::from(id));
        let Some(frame) = self.frame_of(Incoming {
            exchange: "",
            routing_key: answer.routing_key.as_str(),
            redelivered: false,
            properties: &properties,
            body: &answer.data,
            position: None,
            stream: None,
            also: &[],
        }) else {
            return Flow::Continue;
        };
        self.send(&frame).await
    }

    async fn on_confirm(&mut self, c: Confirmed) -> Flow {
        self.pending_confirms = self.pending_confirms.saturating_sub(1);
        self.shared
            .metrics
            .confirms_pending
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if c.origin == Origin::Request && self.requests.get(&c.id) != Some(&c.serial) {
            // Already answered: by its reply, or `timeout` at its deadline (and the
            // pending request of this id, if any, is a newer one).
            return Flow::Continue;
        }
        let Some(frame) = core_::confirm_answer(&c.id, c.origin, &c.outcome) else {
            return Flow::Continue;
        };
        if c.origin == Origin::Request {
            self.requests.resolve(&c.id);
        }
        tracing::debug!(conn = self.id, id = %c.id, outcome = ?c.outcome, "confirm");
        self.send(&frame).await
    }

    async fn on_deadlines(&mut self) -> Flow {
        let expired = self.requests.expire(self.elapsed_ms());
        if !expired.is_empty() {
            self.prune_held_answers();
        }
        for (id, _) in expired {
            let frame =
                ServerFrame::error(Some(id), ErrorCode::Timeout, "no reply before the deadline");
            if let Flow::Close(c, r) = self.send(&frame).await {
                return Flow::Close(c, r);
            }
        }
        Flow::Continue
    }

    /// Heartbeats, the `hello` wait and the token's expiry, when the timer fires
    /// ([`Clock::due`]).
    async fn on_tick(&mut self) -> Flow {
        let expires = self.session.as_ref().and_then(|s| s.expires);
        let now = Instant::now();
        if self.pending_confirms >= self.shared.config.max_pending_confirms {
            self.clock.not_reading(now);
        }
        match self.clock.due(now, self.phase, expires) {
            Due::Nothing => Flow::Continue,
            Due::Ping => {
                let (position, stream) = self.ping_position().unzip();
                self.send(&ServerFrame::Ping(Ping {
                    ts: Some(now_ms_epoch()),
                    position,
                    stream: stream.flatten(),
                }))
                .await
            }
            Due::TokenExpired => {
                metrics::add(&self.shared.metrics.token_expired, 1);
                let _ = self
                    .send(&ServerFrame::error(
                        None,
                        ErrorCode::Unauthorized,
                        "the token expired without a refresh; reconnect with a new token",
                    ))
                    .await;
                Flow::Close(CloseCode::TokenExpired, String::new())
            }
            Due::Close(code, why) => Flow::Close(code, why.to_string()),
        }
    }

    /// Gives up the session's stream readers behind the ring when its client has
    /// acknowledged nothing for a whole heartbeat interval with its window full
    /// ([`core_::stalled`]).
    fn park_if_stalled(&mut self, now: Instant) {
        let window = usize::from(self.shared.config.delivery_window);
        let heartbeat = self.heartbeat();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // Checks a heartbeat apart, on a wake of their own ([`Conn::next_wake`]), not
        // tied to the pings' timing.
        if now < s.checked + heartbeat {
            return;
        }
        s.checked = now;
        let (park, full) = core_::stalled(
            s.full_at_check,
            s.inflight.first_seq(),
            s.inflight.len(),
            window,
        );
        s.full_at_check = full;
        if !park {
            return;
        }
        let parked = s
            .streams
            .iter_mut()
            .flatten()
            .map(Outbound::park)
            .filter(|parked| *parked)
            .count();
        if parked > 0 {
            metrics::add(&self.shared.metrics.stream_reader_parks, parked as u64);
            tracing::debug!(
                conn = self.id,
                parked,
                "stream readers given up: the client acknowledges nothing"
            );
        }
    }

    /// Writes what the session's outbound flow gives for `event` ([`Outbound::take`]:
    /// live messages, a batch from the ring, or what a stream reader read, after a
    /// `session_expired` notice when positions aged out) with one flush, and moves the
    /// session's position past it.
    async fn on_stream(&mut self, index: usize, event: Event) -> Flow {
        let window = usize::from(self.shared.config.delivery_window);
        let shared = self.shared.clone();
        let Some(s) = self.session.as_mut() else {
            return Flow::Continue;
        };
        let Some(Some(out)) = s.streams.get_mut(index) else {
            return Flow::Continue;
        };
        let channel = out.channel().map(str::to_string);
        let room = core_::batch_room(s.inflight.len(), window);
        let positions = out.positions();
        let (notice, batch, cursor) = match out.take(event, &shared, self.id, room).await {
            Step::Send {
                notice,
                messages,
                cursor,
            } => (notice, messages, cursor),
            Step::Nothing => return Flow::Continue,
            Step::Failed(why) => return Flow::Close(CloseCode::BrokerUnavailable, why),
        };
        if let Some(frame) = notice {
            if let Flow::Close(c, r) = self.send(&frame).await {
                return Flow::Close(c, r);
            }
        }
        let mut last = None;
        for m in &batch {
            last = Some(m.offset);
            // A message to several targets arrives by the key this session holds, and
            // names the others it holds.
            let (routing_key, also) = match &self.session {
                Some(s) => {
                    let by = m.key_for(|k| s.subs.receives(k));
                    (by, m.other_keys(by, |k| s.subs.receives(k)))
                }
                None => (m.routing_key.as_str(), Vec::new()),
            };
            let Some(frame) = self.frame_of(Incoming {
                exchange: m.exchange.as_str(),
                routing_key,
                redelivered: positions.redelivered(m.offset),
                properties: &m.properties,
                body: &m.body,
                position: Some(m.offset),
                stream: channel.as_deref(),
                also: &also,
            }) else {
                return Flow::Continue;
            };
            if let Flow::Close(c, r) = self.feed(&frame).await {
                return Flow::Close(c, r);
            }
        }
        if let Some(Some(out)) = self.session.as_mut().and_then(|s| s.streams.get_mut(index)) {
            if let Some(next) = cursor.or(last.map(|o| o + 1)) {
                out.advance(next);
            }
        }
        if batch.is_empty() || self.phase == Phase::Closed {
            return Flow::Continue;
        }
        self.flush().await
    }

    /// Records a message as unacknowledged under the next `seq` and builds its frame.
    fn frame_of(&mut self, m: Incoming<'_>) -> Option<ServerFrame> {
        let s = self.session.as_mut()?;
        let seq = s.inflight.push(());
        metrics::add(&self.shared.metrics.deliveries, 1);
        let max = self.shared.config.max_delivery_bytes;
        // Counted with the errors sent, by code (`/metrics`).
        let frame = if m.body.len() > max {
            delivery::too_large(m, seq, max)
        } else {
            delivery::to_frame(m, seq)
        };
        if let ServerFrame::Reply(r) = &frame {
            self.requests.resolve(&r.id);
        }
        if let ServerFrame::Error(e) = &frame {
            if let Some(id) = &e.id {
                self.requests.resolve(id);
            }
        }
        Some(frame)
    }

    async fn subscribe(&mut self, s: Subscribe, on: bool) -> Flow {
        if self.session.is_none() {
            return Flow::Continue;
        }
        if on {
            self.join_wait([s.channel.as_str()]).await;
        }
        let applied = self.apply_subscription(&s, on, false);
        self.subscriptions_changed();
        match applied {
            Ok(at) => {
                self.errors.good();
                // Where the session is up to in the subscription's stream: the client
                // keeps it, so a resume does not replay what came before.
                let (position, stream) = at.map_or((None, None), |(p, s)| (Some(p), s));
                let ack = warren_protocol::Ack {
                    id: s.id,
                    position,
                    stream,
                };
                self.send(&ServerFrame::Ack(ack)).await
            }
            Err(r) if r.code == ErrorCode::Forbidden && self.excused(&s) => {
                self.send(&ServerFrame::error(Some(s.id), r.code, r.message))
                    .await
            }
            Err(r) => self.refuse(Some(s.id), r).await,
        }
    }

    /// Whether a refused `subscribe` names a key the last renewal revoked (once each).
    fn excused(&mut self, s: &Subscribe) -> bool {
        if self.revoked.is_empty() {
            return false;
        }
        let Some(session) = self.session.as_ref() else {
            return false;
        };
        let anyone = Identity::unrestricted(session.identity.user.clone());
        let pinned = self.pinned.as_deref();
        match core_::subscription_keys(&self.shared.config, pinned, s, &anyone) {
            Ok(keys) => core_::excused_as_revoked(&mut self.revoked, &keys),
            Err(_) => false,
        }
    }

    /// Before a first subscription to a channel with a stream of its own, which joins
    /// that stream live after its newest message: waits a while for a hub that has not
    /// read the stream's tail yet, as a new session's `hello` does. Without it the
    /// subscription had no position (a resume replayed the whole stream), and the tail
    /// the hub read next reached the session though it came before it.
    async fn join_wait<'c>(&mut self, channels: impl IntoIterator<Item = &'c str>) {
        let Some(session) = &self.session else {
            return;
        };
        let unjoined: Vec<_> = channels
            .into_iter()
            .filter_map(|channel| {
                let all = self.shared.streams.all().iter().enumerate();
                all.into_iter()
                    .find(|(i, source)| {
                        source.channel.as_deref() == Some(channel)
                            && session.streams.get(*i).is_some_and(Option::is_none)
                    })
                    .map(|(_, source)| source.clone())
            })
            .collect();
        // One wait for them all: a POC `consume` may flag every channel.
        let until = Instant::now() + HUB_READY_WAIT;
        for source in unjoined {
            source.hub.wait_ready(until).await;
        }
    }

    /// Adds (`on`) or removes a subscription, if the session's identity may hold it
    /// ([`core_::subscription_keys`]); the hub learns the keys that changed. One the
    /// client `held` (named in its `hello`) gets what its keys had since the
    /// session's position; one added now only what comes next, also when the session
    /// catches up from before ([`Hub::subscribe_at`](crate::hub::Hub::subscribe_at)).
    /// Returns, for a subscription added now to a session that is up to date in its
    /// stream, the stream's newest position read (and its channel, for a channel
    /// stream).
    fn apply_subscription(
        &mut self,
        s: &Subscribe,
        on: bool,
        held: bool,
    ) -> Result<Option<(u64, Option<String>)>, Refusal> {
        let config = &self.shared.config;
        let pinned = self.pinned.as_deref();
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| Refusal::new(ErrorCode::Internal, "no session"))?;
        if !on {
            // Unsubscribing needs no permission: it only ever removes.
            let anyone = Identity::unrestricted(session.identity.user.clone());
            let keys = core_::subscription_keys(config, pinned, s, &anyone)?;
            self.unbind(&keys);
            return Ok(None);
        }
        let keys = core_::subscription_keys(config, pinned, s, &session.identity)?;
        let max = config.max_subscriptions as usize;
        let changed = core_::change_subscriptions(&mut session.subs, &keys, true, max)?;
        let mut at = None;
        let streams = self.shared.streams.all();
        for (i, keys) in self.shared.streams.split(&changed) {
            let source = &streams[i];
            if session.streams.get(i).is_some_and(Option::is_none) {
                // The first subscription to a channel with a stream of its own: the
                // session joins that stream live.
                let tenant = inbound::tenant_of(config, &session.identity);
                let (member, head) = source.hub.join_tenant(self.id, &session.id, tenant, None);
                let user = session::owner_of(&session.identity.user, tenant).into();
                session.streams[i] = Some(Outbound::new(
                    source.clone(),
                    member,
                    false,
                    None,
                    head,
                    user,
                ));
            }
            if held {
                source.hub.subscribe(self.id, &keys);
            } else if let Some(head) = source.hub.subscribe_at(self.id, &keys) {
                at = Some((head, source.channel.clone()));
            }
        }
        Ok(at)
    }

    /// The position a `ping` names. In a stream the session joined, each in turn: the
    /// newest read, when everything up to it the session wanted was sent
    /// ([`Hub::subscribe_at`](crate::hub::Hub::subscribe_at)). A session that receives
    /// nothing for longer than its stream's retention keeps a position the stream still
    /// holds: its resume then neither reads the whole stream for nothing nor reports as
    /// missed what it never wanted. Every other ping, when there are channel streams
    /// the session did not join (no subscription to their channel), names one of them
    /// in turn instead: the newest read, as `welcome.positions` names it. A client that
    /// subscribes to that channel while disconnected resumes it from there, as it
    /// resumes its other streams from where the outage began; with the position its
    /// welcome gave, hours before, it was replayed everything the channel had sent
    /// since, or told `session_expired`. Every other ping, not one in the turn of all
    /// streams: with many channel streams, the joined ones' pings would come too
    /// seldom for a short retention.
    fn ping_position(&mut self) -> Option<(u64, Option<String>)> {
        let s = self.session.as_mut()?;
        let all = self.shared.streams.all();
        let (joined, other): (Vec<usize>, Vec<usize>) =
            (0..all.len()).partition(|&i| matches!(s.streams.get(i), Some(Some(_))));
        s.ping_turn = s.ping_turn.wrapping_add(1);
        let turn = s.ping_turn;
        if other.is_empty() || turn % 2 == 0 {
            let k = if other.is_empty() { turn } else { turn / 2 };
            let source = &all[*joined.get(k % joined.len().max(1))?];
            let head = source.hub.subscribe_at(self.id, &[])?;
            Some((head, source.channel.clone()))
        } else {
            let source = &all[other[(turn / 2) % other.len()]];
            Some((source.hub.head()?, source.channel.clone()))
        }
    }

    /// Tells the presence view and the peers the session's subscriptions (once per
    /// frame, not per key: a resume naming 256 subscriptions is one event).
    fn subscriptions_changed(&self) {
        if let Some(session) = &self.session {
            self.shared.subscriptions_changed(
                &session.id,
                &session.identity.user,
                session.subs.keys().cloned().collect(),
            );
        }
    }

    /// The proof-of-concept packet: `publish` → a publish on each flagged channel,
    /// `consume` → a subscription on each.
    async fn poc(&mut self, p: PocPacket) -> Flow {
        let id =
            p.id.clone()
                .unwrap_or_else(|| format!("poc-{}", uuid::Uuid::new_v4().simple()));
        let channels: Vec<String> = p.channels().map(str::to_string).collect();
        if channels.is_empty() {
            return self
                .bad(Some(id), ErrorCode::Invalid, "no channel is flagged true")
                .await;
        }
        match p.packet_action {
            PocAction::Publish => {
                let Some(message) = p.message.as_ref() else {
                    return self
                        .bad(
                            Some(id),
                            ErrorCode::Invalid,
                            "a publish packet needs `message`",
                        )
                        .await;
                };
                let inbound = self.shared.names.inbound_exchange();
                if let Err(r) = core_::check_publish_target(&inbound, p.publish_target.as_deref()) {
                    return self.refuse(Some(id), r).await;
                }
                // Every channel checked first: a packet refused (a channel not served,
                // not granted) publishes nothing, as PROTOCOL.md says of any frame.
                let mut checked = Vec::with_capacity(channels.len());
                for ch in &channels {
                    let prepared = self
                        .checked_publish(&id, ch, &p.distribution, p.publish_target.as_deref())
                        .await;
                    match prepared {
                        Ok(prepared) => checked.push(prepared),
                        Err(r) => return self.refuse(Some(id), r).await,
                    }
                }
                let mut confirms = Vec::new();
                for prepared in checked {
                    let body = message.get().as_bytes();
                    match inbound::send_prepared(&self.shared, prepared, body).await {
                        Ok(c) => confirms.push(c),
                        Err(r) => {
                            // Already-sent copies still get confirmed; the client is told
                            // the packet failed as a whole.
                            return self.refuse(Some(id), r).await;
                        }
                    }
                }
                self.errors.good();
                self.await_confirms(id, 0, Origin::Publish, confirms, inbound::CONFIRM_WAIT);
                Flow::Continue
            }
            PocAction::Consume => {
                if self.session.is_none() {
                    return Flow::Continue;
                }
                // The flagged channels, not the subscriptions: made at once, a packet's
                // combinations can be gigabytes (see `poc_subscriptions`).
                self.join_wait(p.channels()).await;
                // All of them checked first: applied whole, or not at all.
                let checked = self.session.as_ref().map(|session| {
                    core_::check_subscriptions(
                        &self.shared.config,
                        self.pinned.as_deref(),
                        &session.identity,
                        &session.subs,
                        core_::poc_subscriptions(&p, &id),
                        self.shared.config.max_subscriptions as usize,
                    )
                });
                if let Some(Err(r)) = checked {
                    return self.refuse(Some(id), r).await;
                }
                let refused = core_::poc_subscriptions(&p, &id)
                    .find_map(|s| self.apply_subscription(&s, true, false).err());
                if let Some(r) = refused {
                    self.subscriptions_changed();
                    return self.refuse(Some(id), r).await;
                }
                self.subscriptions_changed();
                self.errors.good();
                self.send(&ServerFrame::ack(id)).await
            }
        }
    }

    /// Ends the session here: leave the hub and the registry. Nothing is given back to
    /// RabbitMQ: what the client did not acknowledge is replayed from its position
    /// wherever it resumes.
    async fn cleanup(&mut self) {
        // Confirms still on their way are no longer this connection's to count off.
        let left = std::mem::take(&mut self.pending_confirms);
        self.shared
            .metrics
            .confirms_pending
            .fetch_sub(left as i64, std::sync::atomic::Ordering::Relaxed);
        let Some(mut s) = self.session.take() else {
            return;
        };
        self.shared.metrics.direct_replies_held.fetch_sub(
            s.held_answers.len() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        // Nothing to give back: the client resumes from its positions anywhere.
        for out in s.streams.drain(..).flatten() {
            out.close();
        }
        let unacked = s.inflight.len();
        // A connection of this gateway that resumed the session before this one ended
        // holds it now (this one may have ended on its own, before it saw the
        // takeover): the session lives on, and presence must not say it left.
        let released = self.shared.registry.release(&s.id, self.id);
        if released && !self.taken_over {
            let ended =
                self.shared
                    .presence_view()
                    .ended(&s.id, self.goodbye, std::time::Instant::now());
            if let Some(held) = ended {
                self.shared.disconnected(&s.id, held, "closed");
            }
        }
        tracing::info!(conn = self.id, session = %s.id, unacked, "session closed");
    }
}

/// The name of a stream a new session opened by `hello` would follow (the outbound
/// stream, and the channel streams of the channels it subscribes to) whose hub has
/// not read its tail within [`HUB_READY_WAIT`]. Every hub is waited for, so that the
/// `welcome` names a position in each stream.
async fn unready_stream(shared: &Shared, hello: &Hello) -> Option<String> {
    let until = Instant::now() + HUB_READY_WAIT;
    let mut unready = None;
    for source in shared.streams.all().iter() {
        let ready = source.hub.wait_ready(until).await;
        let followed = core_::followed_position(hello, source.channel.as_deref()).is_some();
        if !ready && followed && unready.is_none() {
            unready = Some(source.name.clone());
        }
    }
    unready
}

/// The stream (its name) of the first position `hello` names past that stream's
/// tail ([`Hub::holds_position`](crate::hub::Hub::holds_position)): positions of a
/// stream that was deleted and declared again, or of another broker. Nothing after
/// such a position can be replayed: the session is not resumed. A channel stream's
/// position counts only when `hello` subscribes to its channel, as only then is it
/// read from (clients hold a position of every channel stream, from `welcome` and
/// pings): a replaced channel stream does not refuse the resumes of sessions that
/// do not follow it.
async fn position_past_tail(shared: &Shared, hello: &Hello) -> Option<String> {
    for source in shared.streams.all() {
        let Some(Some(position)) = core_::followed_position(hello, source.channel.as_deref())
        else {
            continue;
        };
        if !source
            .hub
            .holds_position(&shared.broker, &source.name, position)
            .await
        {
            return Some(source.name.clone());
        }
    }
    None
}
