//! The sans-IO client core: connection state machine, request correlation with
//! deadlines, reconnection over the URL list with backoff, session resume and
//! re-subscription, the outbox, duplicate suppression, batched acknowledgements and
//! heartbeat-based detection of a dead connection.
//!
//! "Methods only modify state, no network operations" (rumqtt): every input (`connect`,
//! `on_open`, `on_text`, `on_close`, `tick` and the app calls) takes the current time in
//! milliseconds and queues [`Action`]s, which the driver takes with
//! [`ClientCore::poll_action`] and performs in order.

use warren_protocol::registry::should_reconnect;
use warren_protocol::{
    AckDeliveries, ClientFrame, CloseCode, Deliver, ErrorCode, Hello, Positions, Publish, Refresh,
    Request, ServerFrame, Welcome, PROTOCOL_VERSION,
};

use crate::action::{Action, State, StateChange};
use crate::codec::{Codec, JsonCodec};
use crate::config::{Config, DEAD_AFTER_TENTHS, RENEW_AT_PERCENT, RENEW_MIN_MS, STABLE_AFTER_MS};
use crate::deadlines::Deadlines;
use crate::duplicate_filter::DuplicateFilter;
use crate::envelope::Envelope;
use crate::error::ClientError;
use crate::id_map::IdMap;
use crate::outbox::Outbox;
use crate::rng::Rng;
use crate::subscription::{SubscribeOptions, Subscriptions};
use crate::text::{concat, decimal};

/// Where the connection is. Internal: the app sees [`State`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// `connect()` was never called.
    Idle,
    /// Waiting for `getToken` call `fetch` before opening a socket; give up at `deadline`
    /// (the attempt's, from its start: it carries over to the next two phases).
    Fetching { fetch: u64, deadline: u64 },
    /// Socket `conn` is opening; give up at `deadline`.
    Opening { conn: u64, deadline: u64 },
    /// `hello` sent on socket `conn`; waiting for `welcome` until `deadline`.
    Greeting { conn: u64, deadline: u64 },
    /// Session open on socket `conn` since `since`.
    Connected { conn: u64, since: u64 },
    /// Waiting to try the next URL at `until`.
    Waiting { until: u64 },
    /// Gave up: the gateway closed with a code that forbids reconnecting.
    Disconnected,
    /// `close()` was called: closed for good.
    Closed,
}

impl Phase {
    fn state(&self) -> State {
        match self {
            Phase::Fetching { .. }
            | Phase::Opening { .. }
            | Phase::Greeting { .. }
            | Phase::Waiting { .. } => State::Connecting,
            Phase::Connected { .. } => State::Connected,
            Phase::Idle | Phase::Disconnected | Phase::Closed => State::Disconnected,
        }
    }

    /// The socket currently in use, if any.
    fn conn(&self) -> Option<u64> {
        match self {
            Phase::Opening { conn, .. }
            | Phase::Greeting { conn, .. }
            | Phase::Connected { conn, .. } => Some(*conn),
            _ => None,
        }
    }
}

/// What kind of answer an outstanding operation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A `publish`, resolved by `ack`.
    Write,
    /// A `request`, resolved by `reply`.
    Request,
}

/// Where the renewal of the token in force is (with `getToken`, while connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// Nothing scheduled: no `getToken`, a token without `exp`, or not connected.
    Idle,
    /// Ask `getToken` for a new token at this time.
    At(u64),
    /// `getToken` call `fetch` is under way.
    Fetching(u64),
    /// `refresh` frame `op` is sent; its token expires at `exp` (ms), if it says.
    Sent { op: u64, exp: Option<u64> },
}

/// Handled-but-unacknowledged deliveries of the current connection.
#[derive(Debug, Default, Clone, Copy)]
struct Acks {
    /// Highest `seq` handled.
    handled: u64,
    /// Highest `seq` acknowledged to the gateway.
    sent: u64,
    /// When the pending acknowledgement must go out at the latest.
    due: Option<u64>,
}

/// The client state machine, generic over the frame codec.
#[derive(Debug)]
pub struct ClientCore<C: Codec> {
    config: Config,
    codec: C,
    rng: Rng,
    /// Random prefix of every frame id, unique per client instance, so ids (and the
    /// gateway's `message_id = <user>:<id>`) never repeat across page loads.
    prefix: String,
    next_op: u64,
    phase: Phase,
    /// Last state reported to the app.
    reported: State,
    next_conn: u64,
    url_index: usize,
    /// Consecutive failed attempts since the last stable connection.
    failures: u32,
    session: Option<String>,
    /// The token sent in `hello`: the `token` option, or the last one from `getToken`.
    token: Option<String>,
    /// When the token in force expires on this client's clock, in ms, if it says
    /// ([`Codec::token_expiry_ms`]: from its lifetime when it names `iat`).
    token_exp: Option<u64>,
    renewal: Renewal,
    /// Consecutive failed renewals (backoff between them).
    renew_failures: u32,
    user: String,
    heartbeat_ms: u64,
    /// The gateway's `limits.max_frame_bytes` from the last `welcome` (0: not known
    /// yet). Larger frames are refused locally with `too_large`, never sent.
    max_frame_bytes: u64,
    /// When `connect()` gives up (its `give_up_after_ms`), while not connected.
    give_up_at: Option<u64>,
    /// Why the last connection attempt failed, for the give-up error.
    last_failure: Option<String>,
    /// Why the client stopped for good (`close()`, or a close code that forbids
    /// reconnecting, until `connect()` starts over): new writes, requests and `ready()`
    /// are rejected at once with it, since no connection attempt will come.
    stopped: Option<ClientError>,
    last_heard: u64,
    ack_batch: u64,
    outbox: Outbox,
    pending: Deadlines<Pending>,
    subscriptions: Subscriptions,
    /// `subscribe` frames awaiting their ack: frame op → subscription id.
    subscribe_frames: IdMap<u64>,
    ready_waiters: Vec<u64>,
    duplicates: DuplicateFilter,
    acks: Acks,
    /// Actions not taken yet, oldest first (a `Vec`: smaller wasm than a `VecDeque`,
    /// and the queue rarely holds more than a few).
    actions: Vec<Action<C::Payload>>,
    /// The timer the driver has armed.
    armed: Option<u64>,
}

impl<C: Codec> ClientCore<C> {
    /// A client that has not connected yet. `seed` feeds backoff jitter and the id
    /// prefix (pass `Math.random()` bits in the browser).
    pub fn new(config: Config, codec: C, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut prefix = rng.base36(8);
        prefix.push('-');
        ClientCore {
            outbox: Outbox::new(config.outbox_limit),
            duplicates: DuplicateFilter::new(config.duplicate_window),
            ack_batch: config.ack_batch.max(1),
            token: config.token.clone(),
            config,
            codec,
            rng,
            prefix,
            next_op: 0,
            phase: Phase::Idle,
            reported: State::Disconnected,
            next_conn: 0,
            url_index: 0,
            failures: 0,
            session: None,
            token_exp: None,
            renewal: Renewal::Idle,
            renew_failures: 0,
            user: String::new(),
            heartbeat_ms: 0,
            max_frame_bytes: 0,
            give_up_at: None,
            last_failure: None,
            stopped: None,
            last_heard: 0,
            pending: Deadlines::default(),
            subscriptions: Subscriptions::default(),
            subscribe_frames: IdMap::default(),
            ready_waiters: Vec::new(),
            acks: Acks::default(),
            actions: Vec::new(),
            armed: None,
        }
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action<C::Payload>> {
        (!self.actions.is_empty()).then(|| self.actions.remove(0))
    }

    /// The connection state the app sees.
    pub fn state(&self) -> State {
        self.phase.state()
    }

    /// Whether `close()` was called.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The WebSocket close code for the socket an [`Action::Close`] closes, read when
    /// the driver performs it: `4000 heartbeat_timeout` when the client gave the
    /// connection up to resume the session elsewhere (no `welcome` in time, nothing
    /// heard for 2.5 heartbeats, a `drain`), so the gateway keeps the session for the
    /// resume grace as for a dropped connection; `1000` when it stopped (`close()`, or
    /// gave up trying): a goodbye, the session ends at once.
    pub fn close_code(&self) -> u16 {
        if self.state() == State::Disconnected {
            1000
        } else {
            CloseCode::HeartbeatTimeout.code()
        }
    }

    /// The session id, once a `welcome` named it.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// The URL of the current (or next) attempt.
    pub fn url(&self) -> Option<&str> {
        self.config.urls.get(self.url_index).map(String::as_str)
    }

    /// The id prefix of this client's frames (`<prefix><op>`).
    pub fn id_prefix(&self) -> &str {
        &self.prefix
    }

    /// Starts connecting (only arms the give-up deadline when already connecting; no-op
    /// when connected or closed). Every failed attempt is reported as an `error` event
    /// naming the URL and why; with `give_up_after_ms` the client stops trying after
    /// that long and rejects `ready()`, writes and requests with `timeout`.
    pub fn connect(&mut self, now: u64) {
        match self.phase {
            Phase::Idle | Phase::Disconnected => {
                self.failures = 0;
                // After a stop, which rejected every subscription, they are pending
                // again: the connection sends them.
                if self.stopped.take().is_some() {
                    for (sub, _) in self.subscriptions.iter() {
                        self.actions.push(Action::SubscriptionStatus(sub, None));
                    }
                }
                if self.config.urls.is_empty() {
                    self.actions.push(Action::Error(ClientError::new(
                        ErrorCode::Invalid,
                        "no gateway URL configured",
                    )));
                } else {
                    self.arm_give_up(now);
                    self.attempt(now);
                }
            }
            Phase::Fetching { .. }
            | Phase::Opening { .. }
            | Phase::Greeting { .. }
            | Phase::Waiting { .. } => self.arm_give_up(now),
            _ => {}
        }
        self.finish();
    }

    /// Closes the client for good: the socket is closed and every outstanding operation
    /// is rejected with `closed`.
    pub fn close(&mut self, _now: u64) {
        if self.phase == Phase::Closed {
            return;
        }
        if matches!(self.phase, Phase::Connected { .. }) {
            self.flush_acks();
        }
        if self.phase.conn().is_some() {
            self.actions.push(Action::Close);
        }
        self.phase = Phase::Closed;
        self.report(false);
        let err = ClientError::new(ErrorCode::Closed, "the client was closed");
        self.stopped = Some(err.clone());
        self.fail_everything(&err);
        self.subscriptions.clear();
        self.subscribe_frames.clear();
        self.finish();
    }

    /// Operation that resolves once connected (at once when already connected); it is
    /// rejected when the client is closed or gives up, at once when it already has.
    pub fn ready(&mut self, _now: u64) -> u64 {
        let op = self.next_op();
        if let Some(err) = &self.stopped {
            self.actions.push(Action::Reject(op, err.clone()));
        } else if matches!(self.phase, Phase::Connected { .. }) {
            self.actions.push(Action::Resolve(op));
        } else {
            self.ready_waiters.push(op);
        }
        self.finish();
        op
    }

    /// Sends a `publish`; the returned operation resolves on the gateway's `ack` or is
    /// rejected with its error, `too_large` at once when the frame is over the gateway's
    /// `max_frame_bytes` (nothing sent), `timeout` after the request timeout,
    /// `disconnected` when the outbox is full, `closed` after `close()`, at once with the
    /// close's error after a close code that forbids reconnecting (until `connect()`).
    /// Rejections name the frame id; a rejected write is never sent (again).
    pub fn write(&mut self, envelope: Envelope<C::Payload>, now: u64) -> u64 {
        let op = self.next_op();
        if let Some(frame) = self.admit(op, &envelope.channel) {
            let frame = ClientFrame::Publish(Publish {
                id: frame,
                channel: envelope.channel,
                subject: envelope.subject,
                distribution: envelope.distribution,
                headers: envelope.headers,
                message: envelope.message,
            });
            let deadline = now.saturating_add(self.config.request_timeout_ms);
            self.enqueue(op, deadline, Pending::Write, &frame);
        }
        self.finish();
        op
    }

    /// Sends a `request`; the returned operation resolves with the reply, or is rejected
    /// as [`write`](Self::write) is (`timeout` when `timeout_ms`, default the request
    /// timeout, passes).
    pub fn request(
        &mut self,
        envelope: Envelope<C::Payload>,
        timeout_ms: Option<u64>,
        now: u64,
    ) -> u64 {
        let op = self.next_op();
        let timeout = timeout_ms.unwrap_or(self.config.request_timeout_ms);
        if let Some(frame) = self.admit(op, &envelope.channel) {
            let frame = ClientFrame::Request(Request {
                id: frame,
                channel: envelope.channel,
                subject: envelope.subject,
                headers: envelope.headers,
                timeout_ms: Some(timeout),
                message: envelope.message,
            });
            self.enqueue(op, now.saturating_add(timeout), Pending::Request, &frame);
        }
        self.finish();
        op
    }

    /// Adds a subscription (sent now when connected, and again after every reconnect).
    /// After a stop (a close code that forbids reconnecting, or `give_up_after_ms`), its
    /// readiness is rejected at once with the stop's error, until `connect()`.
    ///
    /// # Errors
    /// `closed` after `close()`, `unknown_channel` for a channel this client may not use,
    /// `invalid` for an empty channel.
    pub fn subscribe(&mut self, options: SubscribeOptions, _now: u64) -> Result<u64, ClientError> {
        if self.phase == Phase::Closed {
            return Err(ClientError::new(ErrorCode::Closed, "the client was closed"));
        }
        if options.channel.is_empty() {
            return Err(ClientError::new(
                ErrorCode::Invalid,
                "`channel` is required",
            ));
        }
        if !self.config.allows(&options.channel) {
            return Err(unknown_channel(&options.channel));
        }
        let id = self.next_op();
        if matches!(self.phase, Phase::Connected { .. }) {
            self.send_subscribe(id, &options);
        } else if let Some(err) = &self.stopped {
            // No attempt will come: its readiness is rejected at once, as the stop
            // rejected those made before it. It still stands; `connect()` sends it.
            self.actions.push(Action::Reject(id, err.clone()));
        }
        self.subscriptions.insert(id, options);
        self.finish();
        Ok(id)
    }

    /// Removes a subscription; bindings no other subscription needs are unbound.
    pub fn unsubscribe(&mut self, id: u64, _now: u64) {
        if let Some(options) = self.subscriptions.remove(id) {
            // Also while `hello` is on its way: it named the subscription, and the
            // gateway reads this after it.
            if matches!(self.phase, Phase::Connected { .. } | Phase::Greeting { .. }) {
                let op = self.next_op();
                let frame = options.frame(self.frame_id(op));
                self.send(&ClientFrame::Unsubscribe(frame));
            }
        }
        self.subscribe_frames.retain(|_, sub| *sub != id);
        self.finish();
    }

    /// The socket of connection `conn` opened: say `hello`.
    pub fn on_open(&mut self, conn: u64, now: u64) {
        if let Phase::Opening { conn: c, deadline } = self.phase {
            if c == conn {
                // Same deadline: it is the attempt's, not the socket's.
                self.phase = Phase::Greeting { conn, deadline };
                self.last_heard = now;
                self.hello(true);
            }
        }
        self.finish();
    }

    /// A text frame arrived on connection `conn`.
    pub fn on_text(&mut self, conn: u64, text: &str, now: u64) {
        if self.phase.conn() == Some(conn) {
            self.last_heard = now;
            match self.codec.decode(text) {
                Ok(frame) => self.on_frame(frame, now),
                Err(e) => self
                    .actions
                    .push(Action::Error(ClientError::new(e.code, e.message))),
            }
        }
        self.finish();
    }

    /// Connection `conn` closed with WebSocket close `code` (1006 when it broke).
    pub fn on_close(&mut self, conn: u64, code: u16, now: u64) {
        if self.phase.conn() == Some(conn) {
            // A token refused once it expired: `getToken` gives a fresh one.
            let expired = code == CloseCode::Unauthorized.code()
                && self.config.fetch_token
                && self.token_exp.is_some_and(|exp| now >= exp);
            if should_reconnect(code) || expired {
                let when = match self.phase {
                    Phase::Opening { .. } => {
                        " before it opened (refused, unreachable or no WebSocket there)"
                    }
                    Phase::Greeting { .. } => " before welcome",
                    _ => "",
                };
                if !when.is_empty() {
                    self.attempt_failed("closed with code ", &decimal(code.into()), when);
                }
                self.lost(now);
            } else {
                self.give_up(code);
            }
        }
        self.finish();
    }

    /// The app's `getToken` call `fetch` (from [`Action::FetchToken`]) resolved with a
    /// token or failed (`Err` with the reason). Before a connection attempt the socket
    /// opens with the token, or the failure is reported as an `error` event and retried
    /// with backoff; while connected the token is sent in a `refresh`, or renewal is
    /// retried with backoff (until the token expires: the gateway then closes with
    /// `4004 token_expired` and the reconnect fetches a new one).
    pub fn on_token(&mut self, fetch: u64, token: Result<String, String>, now: u64) {
        match self.phase {
            Phase::Fetching { fetch: f, deadline } if f == fetch => match token {
                Ok(token) => {
                    self.token_exp = self.codec.token_expiry_ms(&token, now);
                    self.token = Some(token);
                    // The socket gets what is left of the attempt's time.
                    self.open(deadline);
                }
                Err(why) => {
                    self.attempt_failed("getToken failed: ", &why, "");
                    self.lost(now);
                }
            },
            _ if self.renewal == Renewal::Fetching(fetch) => match token {
                Ok(token) => {
                    let op = self.next_op();
                    self.renewal = Renewal::Sent {
                        op,
                        exp: self.codec.token_expiry_ms(&token, now),
                    };
                    let id = self.frame_id(op);
                    self.send(&ClientFrame::Refresh(Refresh { id, token }));
                }
                Err(why) => self.renewal_failed(
                    ErrorCode::Unauthorized,
                    "getToken failed: ",
                    &why,
                    true,
                    now,
                ),
            },
            _ => {}
        }
        self.finish();
    }

    /// Time passed: fire deadlines (request timeouts, connect and heartbeat deadlines,
    /// backoff, batched acks). Call it at the time of the last `SetTimer`.
    pub fn tick(&mut self, now: u64) {
        self.armed = None;
        for (op, _) in self.pending.expire(now) {
            self.outbox.remove(op);
            let err = ClientError::new(ErrorCode::Timeout, "no answer before the deadline");
            self.reject_op(op, err);
        }
        if self.give_up_at.is_some_and(|at| now >= at) && self.state() == State::Connecting {
            self.stop_trying();
        }
        match self.phase {
            Phase::Waiting { until } if now >= until => self.attempt(now),
            Phase::Fetching { deadline, .. } if now >= deadline => {
                let ms = decimal(self.config.connect_timeout_ms);
                self.attempt_failed("getToken did not answer within ", &ms, " ms");
                self.lost(now);
            }
            Phase::Opening { deadline, .. } | Phase::Greeting { deadline, .. }
                if now >= deadline =>
            {
                self.actions.push(Action::Close);
                let ms = decimal(self.config.connect_timeout_ms);
                self.attempt_failed("no welcome within ", &ms, " ms (handshake timeout)");
                self.lost(now);
            }
            Phase::Connected { .. } => {
                if self.dead_at().is_some_and(|at| now >= at) {
                    self.actions.push(Action::Close);
                    self.lost(now);
                } else {
                    if self.acks.due.is_some_and(|due| now >= due) {
                        self.flush_acks();
                    }
                    if matches!(self.renewal, Renewal::At(at) if now >= at) {
                        let fetch = self.next_op();
                        self.renewal = Renewal::Fetching(fetch);
                        self.actions.push(Action::FetchToken(fetch));
                    }
                }
            }
            _ => {}
        }
        self.finish();
    }

    // ----- frames -----

    fn on_frame(&mut self, frame: ServerFrame<C::Payload>, now: u64) {
        match frame {
            ServerFrame::Welcome(w) => self.on_welcome(w, now),
            ServerFrame::Ack(a) => {
                if let Some(op) = self.op_of(&a.id) {
                    if let Renewal::Sent { op: sent, exp } = self.renewal {
                        if sent == op {
                            // The new token is in force: renew it in its turn.
                            self.token_exp = exp;
                            self.renew_failures = 0;
                            self.schedule_renewal(now);
                        }
                    }
                    if self.pending.resolve(op).is_some() {
                        self.outbox.remove(op);
                        self.actions.push(Action::Resolve(op));
                    }
                    if let Some(sub) = self.subscribe_frames.remove(op) {
                        // The subscription is in force: its readiness resolves (the
                        // first time), and its status is `active` (every time).
                        self.actions.push(Action::Resolve(sub));
                    }
                }
            }
            ServerFrame::Error(e) => {
                if let Some(seq) = e.seq {
                    self.handled(seq, now);
                }
                let mut err = ClientError::new(e.code, e.message);
                err.stream = e.stream;
                match e.id.as_deref().map(|id| self.op_of(id)) {
                    Some(Some(op)) if matches!(self.renewal, Renewal::Sent { op: o, .. } if o == op) => {
                        self.renewal_failed(
                            err.code,
                            "the gateway refused the new token: ",
                            &err.message,
                            err.retry(),
                            now,
                        )
                    }
                    Some(Some(op)) if self.pending.resolve(op).is_some() => {
                        // Rejected for whatever reason: out of the outbox, never re-sent.
                        self.outbox.remove(op);
                        self.reject_op(op, err);
                    }
                    Some(Some(op)) => {
                        if let Some(sub) = self.subscribe_frames.remove(op) {
                            // A refusal that retrying cannot fix is not sent again after
                            // reconnecting: the subscription is dropped. Another leaves
                            // its readiness pending. Either way its status is `error`,
                            // also after a reconnect, long after its readiness settled
                            // (e.g. a new token no longer grants it).
                            if err.retry() {
                                self.actions
                                    .push(Action::SubscriptionStatus(sub, Some(err.clone())));
                            } else {
                                self.subscriptions.forget(sub);
                                self.actions.push(Action::Reject(sub, err.clone()));
                            }
                            self.actions.push(Action::Error(err));
                        }
                    }
                    Some(None) => {}
                    None => {
                        match err.code {
                            // A refreshed token revoked subscriptions: the gateway
                            // unbound them and says so here, before the refresh's `ack`.
                            // Sent again, each revoked one is refused with its id,
                            // dropped and its status `error`; the others are
                            // acknowledged as they stand.
                            ErrorCode::Forbidden
                                if matches!(self.renewal, Renewal::Sent { .. }) =>
                            {
                                self.resubscribe()
                            }
                            // A `hello` over the gateway's max_frame_bytes (thousands of
                            // distinct subscriptions) opened nothing: the resume goes on
                            // without them (what they matched meanwhile is not
                            // replayed); they are sent again after welcome, as always.
                            // (Refused again, it is said again, until the gateway's
                            // max_consecutive_errors closes with 4003 and the client
                            // reconnects with backoff, each refusal an `error` event.)
                            ErrorCode::TooLarge if matches!(self.phase, Phase::Greeting { .. }) => {
                                self.hello(false)
                            }
                            _ => {}
                        }
                        self.actions.push(Action::Error(err))
                    }
                }
            }
            ServerFrame::Reply(r) => {
                if let Some(op) = self.op_of(&r.id) {
                    if self.pending.resolve(op).is_some() {
                        self.outbox.remove(op);
                        self.actions.push(Action::Reply(op, r.message));
                    }
                }
                self.handled(r.seq, now);
            }
            ServerFrame::Deliver(d) => {
                let seq = d.seq;
                self.deliver(d);
                self.handled(seq, now);
            }
            ServerFrame::Ping(p) => self.send(&ClientFrame::Pong(p)),
            ServerFrame::Pong(_) => {}
            ServerFrame::Drain(d) => {
                self.actions.push(Action::Drain(d));
                self.flush_acks();
                self.actions.push(Action::Close);
                // Move at once: the gateway is going away, not failing.
                self.failures = 0;
                self.lost(now);
            }
            ServerFrame::Overflow(o) => self.actions.push(Action::Error(ClientError::new(
                ErrorCode::Overloaded,
                concat(&[
                    "the gateway dropped ",
                    &decimal(o.dropped),
                    " messages: the client fell behind",
                ]),
            ))),
        }
    }

    fn on_welcome(&mut self, w: Welcome, now: u64) {
        let Phase::Greeting { conn, .. } = self.phase else {
            return;
        };
        let asked = self.session.is_some();
        self.session = Some(w.session);
        self.user = w.user;
        // At most 2^40 ms (35 years, a gateway's "never"): deadlines stay in range.
        self.heartbeat_ms = w.heartbeat_ms.min(1 << 40);
        self.max_frame_bytes = w.limits.max_frame_bytes;
        self.give_up_at = None;
        self.last_failure = None;
        self.ack_batch = self
            .config
            .ack_batch
            .min(u64::from(w.limits.delivery_window / 2))
            .max(1);
        self.acks = Acks::default();
        self.phase = Phase::Connected { conn, since: now };
        self.renew_failures = 0;
        self.schedule_renewal(now);
        let resumed = w.resumed && asked;
        self.report(resumed);
        if asked && !w.resumed {
            let why = w.notice.unwrap_or(ErrorCode::SessionExpired);
            self.actions.push(Action::Error(ClientError::new(
                why,
                "the session could not be resumed: a fresh session was opened",
            )));
        }
        self.resubscribe();
        // Writes made before this gateway's limit was known are checked against it now.
        let frames: Vec<(u64, String)> = self
            .outbox
            .entries()
            .map(|(op, f)| (op, f.to_string()))
            .collect();
        for (op, text) in frames {
            match self.oversized(&text) {
                Some(err) => {
                    self.outbox.remove(op);
                    self.pending.resolve(op);
                    self.reject_op(op, err);
                }
                None => self.actions.push(Action::Send(text)),
            }
        }
        for op in std::mem::take(&mut self.ready_waiters) {
            self.actions.push(Action::Resolve(op));
        }
    }

    fn deliver(&mut self, d: Deliver<C::Payload>) {
        if !self.duplicates.first_time(&d.message_id) {
            return;
        }
        let subscriptions =
            self.subscriptions
                .targets(&d.channel, &d.routing_key, &d.keys, &self.user);
        if !subscriptions.is_empty() {
            self.actions.push(Action::Deliver {
                subscriptions,
                delivery: d,
            });
        }
    }

    // ----- acknowledgements -----

    fn handled(&mut self, seq: u64, now: u64) {
        self.acks.handled = self.acks.handled.max(seq);
        if self.acks.handled - self.acks.sent >= self.ack_batch {
            self.flush_acks();
        } else if self.acks.due.is_none() && self.acks.handled > self.acks.sent {
            self.acks.due = Some(now.saturating_add(self.config.ack_delay_ms));
        }
    }

    fn flush_acks(&mut self) {
        if self.acks.handled > self.acks.sent {
            self.acks.sent = self.acks.handled;
            let seq = self.acks.sent;
            self.send(&ClientFrame::AckDeliveries(AckDeliveries { seq }));
        }
        self.acks.due = None;
    }

    // ----- connection -----

    /// A new connection attempt: ask `getToken` first, when the app gave one. The
    /// attempt (token, socket, `welcome`) has `connect_timeout_ms` in all.
    fn attempt(&mut self, now: u64) {
        let deadline = now.saturating_add(self.config.connect_timeout_ms);
        if self.config.fetch_token {
            let fetch = self.next_op();
            self.phase = Phase::Fetching { fetch, deadline };
            // The state event first: the app sees `connecting` before getToken runs.
            self.report(false);
            self.actions.push(Action::FetchToken(fetch));
        } else {
            self.open(deadline);
        }
    }

    /// Opens a socket to the current URL, to say `hello` and get `welcome` by `deadline`.
    fn open(&mut self, deadline: u64) {
        self.next_conn += 1;
        let conn = self.next_conn;
        let url = self.url().unwrap_or_default().to_string();
        self.phase = Phase::Opening { conn, deadline };
        self.actions.push(Action::Open { conn, url });
        self.report(false);
    }

    /// The connection broke (or was abandoned): try the next URL, at once the first
    /// time, then with backoff.
    fn lost(&mut self, now: u64) {
        if let Phase::Connected { since, .. } = self.phase {
            if now.saturating_sub(since) >= STABLE_AFTER_MS {
                self.failures = 0;
            }
        }
        self.acks = Acks::default();
        self.renewal = Renewal::Idle;
        self.subscribe_frames.clear();
        self.url_index = (self.url_index + 1) % self.config.urls.len().max(1);
        let delay = match self.failures {
            0 => 0,
            // Never 0 after a failure (`minDelayMs: 0`): a URL the browser refuses
            // at once would otherwise be retried in the same call, for ever.
            n => self.config.backoff.delay(n - 1, &mut self.rng).max(1),
        };
        self.failures = self.failures.saturating_add(1);
        if delay == 0 {
            self.attempt(now);
        } else {
            self.phase = Phase::Waiting {
                until: now.saturating_add(delay),
            };
            self.report(false);
        }
    }

    /// Schedules the renewal of the token in force at [`RENEW_AT_PERCENT`] of its
    /// remaining lifetime (with `getToken` and a token that names its `exp`). None for a
    /// token that looks expired already (no `iat`, and this clock is ahead of its
    /// issuer's): its lifetime is not known, so the gateway's 4004 at its real expiry
    /// and the reconnect renew it, rather than a renewal every second.
    fn schedule_renewal(&mut self, now: u64) {
        self.renewal = match self.token_exp {
            Some(exp) if self.config.fetch_token && exp > now => {
                // Divided first: an `exp` of `Number.MAX_SAFE_INTEGER` (an issuer's "never")
                // would overflow the product.
                let wait = exp.saturating_sub(now) / 100 * RENEW_AT_PERCENT;
                Renewal::At(now.saturating_add(wait.max(RENEW_MIN_MS)))
            }
            _ => Renewal::Idle,
        };
    }

    /// A renewal failed: an `error` event and, when trying `again` can help, another
    /// try after the backoff delay. None past the token's expiry, nor after a refusal
    /// the registry calls final (`unauthorized`, `forbidden`: the gateway counts
    /// refused frames): the gateway then closes with 4004 at expiry, and the reconnect
    /// asks `getToken` again.
    fn renewal_failed(&mut self, code: ErrorCode, what: &str, why: &str, again: bool, now: u64) {
        let message = concat(&["token renewal: ", what, why]);
        self.actions
            .push(Action::Error(ClientError::new(code, message)));
        let at = now.saturating_add(
            self.config
                .backoff
                .delay(self.renew_failures, &mut self.rng),
        );
        self.renew_failures = self.renew_failures.saturating_add(1);
        self.renewal = match self.token_exp {
            Some(exp) if at >= exp => Renewal::Idle,
            _ if !again => Renewal::Idle,
            _ => Renewal::At(at),
        };
    }

    /// Arms the give-up deadline of `connect()`, unless one is armed.
    fn arm_give_up(&mut self, now: u64) {
        if self.give_up_at.is_none() {
            self.give_up_at = self
                .config
                .give_up_after_ms
                .map(|ms| now.saturating_add(ms));
        }
    }

    /// Reports the failure of the current connection attempt as an `error` event:
    /// "cannot connect to <url>: <a><b><c>".
    fn attempt_failed(&mut self, a: &str, b: &str, c: &str) {
        let url = self.url().unwrap_or_default();
        let message = concat(&["cannot connect to ", url, ": ", a, b, c]);
        self.last_failure = Some(message.clone());
        self.actions.push(Action::Error(ClientError::new(
            ErrorCode::Disconnected,
            message,
        )));
    }

    /// `connect()` tried for `give_up_after_ms` without a session: stop, and reject what
    /// waits for the connection with `timeout`.
    fn stop_trying(&mut self) {
        if self.phase.conn().is_some() {
            self.actions.push(Action::Close);
        }
        self.give_up_at = None;
        self.phase = Phase::Disconnected;
        self.report(false);
        let err = ClientError::new(
            ErrorCode::Timeout,
            concat(&[
                "gave up after ",
                &decimal(self.config.give_up_after_ms.unwrap_or_default()),
                " ms (connectTimeoutMs); last: ",
                self.last_failure.as_deref().unwrap_or("none"),
            ]),
        );
        self.actions.push(Action::Error(err.clone()));
        self.fail_everything(&err);
        // Until connect(): ready() and writes are rejected at once, not left waiting.
        self.stopped = Some(err);
    }

    /// The gateway closed with a code that forbids reconnecting: `closed` (not
    /// retryable) unless the code has an error of its own.
    fn give_up(&mut self, code: u16) {
        self.phase = Phase::Disconnected;
        self.report(false);
        let (error, name) = match CloseCode::from_code(code) {
            Some(CloseCode::Unauthorized) => (ErrorCode::Unauthorized, "unauthorized"),
            Some(CloseCode::UnsupportedProtocol) => {
                (ErrorCode::Unsupported, "unsupported_protocol")
            }
            Some(c) => (ErrorCode::Closed, c.as_str()),
            None => (ErrorCode::Closed, "unknown"),
        };
        let err = ClientError::new(
            error,
            concat(&[
                "the gateway closed the connection with ",
                &decimal(code.into()),
                " (",
                name,
                "); not reconnecting",
            ]),
        );
        self.actions.push(Action::Error(err.clone()));
        self.fail_everything(&err);
        self.stopped = Some(err);
    }

    fn fail_everything(&mut self, err: &ClientError) {
        self.give_up_at = None;
        // A renewal's `getToken` answered after this reports nothing.
        self.renewal = Renewal::Idle;
        for (op, _) in self.pending.drain_all() {
            self.reject_op(op, err.clone());
        }
        self.outbox.clear();
        // Every subscription is rejected too: a stop must not leave an app showing
        // "subscribing" for ever (the readiness of those in force settled already:
        // only their status says `error`). They still stand, and `connect()` sends
        // them again.
        for (sub, _) in self.subscriptions.iter() {
            self.ready_waiters.push(sub);
        }
        for op in std::mem::take(&mut self.ready_waiters) {
            self.actions.push(Action::Reject(op, err.clone()));
        }
    }

    /// When silence means the connection is dead: 2.5 heartbeat intervals after the
    /// last frame heard (never when the gateway announced no heartbeat).
    fn dead_at(&self) -> Option<u64> {
        (self.heartbeat_ms > 0)
            .then(|| self.last_heard + self.heartbeat_ms * DEAD_AFTER_TENTHS / 10)
    }

    // ----- helpers -----

    fn next_op(&mut self) -> u64 {
        self.next_op += 1;
        self.next_op
    }

    fn frame_id(&self, op: u64) -> String {
        concat(&[&self.prefix, &decimal(op)])
    }

    fn op_of(&self, id: &str) -> Option<u64> {
        id.strip_prefix(self.prefix.as_str())?.parse().ok()
    }

    /// Checks a new write; returns its frame id, or rejects it.
    fn admit(&mut self, op: u64, channel: &str) -> Option<String> {
        let refusal = if let Some(err) = &self.stopped {
            Some(err.clone())
        } else if channel.is_empty() {
            Some(ClientError::new(
                ErrorCode::Invalid,
                "`channel` is required",
            ))
        } else if !self.config.allows(channel) {
            Some(unknown_channel(channel))
        } else if !matches!(self.phase, Phase::Connected { .. }) && !self.outbox.has_room() {
            Some(ClientError::new(
                ErrorCode::Disconnected,
                concat(&[
                    "not connected and ",
                    &decimal(self.outbox.len() as u64),
                    " writes already wait for the connection",
                ]),
            ))
        } else {
            None
        };
        match refusal {
            Some(err) => {
                self.reject_op(op, err);
                None
            }
            None => Some(self.frame_id(op)),
        }
    }

    fn enqueue(&mut self, op: u64, deadline: u64, kind: Pending, frame: &ClientFrame<C::Payload>) {
        let text = match self.codec.encode(frame) {
            Ok(text) => text,
            Err(err) => return self.reject_op(op, err),
        };
        if let Some(err) = self.oversized(&text) {
            return self.reject_op(op, err);
        }
        self.pending.insert(op, deadline, kind);
        if matches!(self.phase, Phase::Connected { .. }) {
            self.actions.push(Action::Send(text.clone()));
        }
        self.outbox.push(op, text);
    }

    /// Says `hello`. A resume names the last position in each stream and, `with` them,
    /// the subscriptions, so that a stream gateway replays what they match before the
    /// live flow: identical ones once (the gateway's bindings are a set, and nothing
    /// reads these ids), or thousands of components on one room made a `hello` over
    /// `max_frame_bytes`, refused for ever. The codec names the stream positions it
    /// recorded (crate::codec).
    fn hello(&mut self, with: bool) {
        let mut subscriptions = Vec::new();
        if with && self.session.is_some() {
            for (id, o) in self.subscriptions.iter() {
                if self
                    .subscriptions
                    .iter()
                    .find(|(_, p)| *p == o)
                    .is_some_and(|(j, _)| j == id)
                {
                    // `r<id>` (smaller in the wasm than `concat`).
                    let mut r = decimal(id);
                    r.insert(0, 'r');
                    subscriptions.push(o.frame(r));
                }
            }
        }
        let named = !subscriptions.is_empty();
        self.send(&ClientFrame::Hello(Hello {
            session: self.session.clone(),
            token: self.token.clone(),
            client: Some(self.config.client_name.clone()),
            protocol: Some(PROTOCOL_VERSION),
            position: None,
            positions: Positions::new(),
            subscriptions,
        }));
        // Over the known max_frame_bytes: said without them at once, as after a
        // `too_large` (a gateway drops a `hello` over 4 KiB past its limit without an
        // answer, and the client sent the same `hello` for ever).
        let over = match self.actions.last() {
            Some(Action::Send(text)) if named => self.oversized(text),
            _ => None,
        };
        if let Some(err) = over {
            self.actions.pop();
            self.actions.push(Action::Error(err));
            self.hello(false)
        }
    }

    /// Sends every subscription again (after `welcome`, or a refresh that revoked some).
    fn resubscribe(&mut self) {
        let subs: Vec<(u64, SubscribeOptions)> = self
            .subscriptions
            .iter()
            .map(|(id, s)| (id, s.clone()))
            .collect();
        self.subscribe_frames.clear();
        for (id, options) in subs {
            self.send_subscribe(id, &options);
        }
    }

    fn send_subscribe(&mut self, sub: u64, options: &SubscribeOptions) {
        let op = self.next_op();
        self.subscribe_frames.insert(op, sub);
        self.actions.push(Action::SubscriptionStatus(sub, None));
        let frame = options.frame(self.frame_id(op));
        self.send(&ClientFrame::Subscribe(frame));
    }

    /// Sends a frame of the core's own (never carrying app data, so it always encodes).
    fn send(&mut self, frame: &ClientFrame<C::Payload>) {
        match self.codec.encode(frame) {
            Ok(text) => self.actions.push(Action::Send(text)),
            Err(err) => self.actions.push(Action::Error(err)),
        }
    }

    /// `too_large` when `text` exceeds the gateway's known `max_frame_bytes`.
    fn oversized(&self, text: &str) -> Option<ClientError> {
        let (len, max) = (text.len() as u64, self.max_frame_bytes);
        (max > 0 && len > max).then(|| {
            ClientError::new(
                ErrorCode::TooLarge,
                concat(&[
                    "frame of ",
                    &decimal(len),
                    " B > the gateway's max_frame_bytes ",
                    &decimal(max),
                ]),
            )
        })
    }

    /// Rejects write or request `op`, naming its frame id.
    fn reject_op(&mut self, op: u64, err: ClientError) {
        let err = err.with_id(self.frame_id(op));
        self.actions.push(Action::Reject(op, err));
    }

    /// Emits `state` when the public state changed.
    fn report(&mut self, resumed: bool) {
        let new = self.phase.state();
        if new != self.reported {
            let change = StateChange {
                old: self.reported,
                new,
                url: self.url().map(str::to_string),
                session: self.session.clone(),
                resumed,
            };
            self.reported = new;
            self.actions.push(Action::StateChanged(change));
        }
    }

    /// Re-arms the driver's timer when the next deadline moved.
    fn finish(&mut self) {
        let phase_at = match self.phase {
            Phase::Fetching { deadline, .. }
            | Phase::Opening { deadline, .. }
            | Phase::Greeting { deadline, .. } => Some(deadline),
            Phase::Waiting { until } => Some(until),
            Phase::Connected { .. } => {
                let renew_at = match self.renewal {
                    Renewal::At(at) => Some(at),
                    _ => None,
                };
                earliest(earliest(self.dead_at(), self.acks.due), renew_at)
            }
            _ => None,
        };
        let next = earliest(
            earliest(phase_at, self.give_up_at),
            self.pending.next_deadline(),
        );
        if next != self.armed {
            self.armed = next;
            self.actions.push(Action::SetTimer(next));
        }
    }
}

/// The earlier of two optional times.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn unknown_channel(channel: &str) -> ClientError {
    ClientError::new(
        ErrorCode::UnknownChannel,
        concat(&["channel `", channel, "` is not served by this client"]),
    )
}

impl ClientCore<JsonCodec> {
    /// The outbound stream position a resume would name (the codec keeps it).
    pub fn position(&self) -> Option<u64> {
        self.codec.position()
    }

    /// The channel stream positions a resume would name, by channel.
    pub fn positions(&self) -> Positions {
        self.codec.positions()
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;

#[cfg(all(test, not(target_arch = "wasm32")))]
#[path = "client_fuzz_tests.rs"]
mod fuzz_tests;
