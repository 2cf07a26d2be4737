//! The HTTP side: axum routers (`/ws` upgrading to the `warren.v1` subprotocol,
//! `/healthz`, `/metrics`, and the HTTP API when it is on), one per listener, each serving every channel or pinned to one; the
//! state shared by all connections; the tracker that lets shutdown wait for them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{
    HeaderName, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, AUTHORIZATION, COOKIE, ORIGIN, VARY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::BasicProperties;
use tokio::sync::{watch, Notify};
use warren_protocol::amqp::Names;
use warren_protocol::SUBPROTOCOL;

use crate::auth::{AuthError, Identity, Verifier};
use crate::auth_service::AuthClient;
use crate::broker::{Broker, BrokerState};
use crate::config::AuthMode;
use crate::config::Config;
use crate::direct_reply::DirectReply;
use crate::inbound::Outcome;
use crate::limits::{LimitSettings, Limiter};
use crate::listener::PeerAddr;
use crate::metrics::{self, Metrics};
use crate::session::{Registry, Release};

/// Counts live connections so shutdown can wait for every one to finish.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    active: AtomicUsize,
    idle: Notify,
}

/// Held by a connection task while it runs.
pub(crate) struct TrackerGuard<'a>(&'a Tracker);

impl Tracker {
    pub(crate) fn enter(&self) -> TrackerGuard<'_> {
        self.active.fetch_add(1, Ordering::AcqRel);
        TrackerGuard(self)
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is left.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackerGuard<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// State shared by every connection of a gateway.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) verifier: Verifier,
    pub(crate) limiter: Limiter,
    /// HTTP API calls made with a user's token ([`crate::limits::CallLimiter`]).
    pub(crate) http_calls: crate::limits::CallLimiter,
    /// The auth service link, in `auth.mode = "service"`.
    pub(crate) auth_client: Option<AuthClient>,
    pub(crate) names: Names,
    pub(crate) broker: Arc<Broker>,
    pub(crate) registry: Registry,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Set when a shutdown no longer needs to hear its peers (their announcements and
    /// takeover requests on `warren.gateways`), once it has decided whether it is left
    /// alone: the listener on that exchange goes on through the drain until then.
    pub(crate) done_hearing: watch::Sender<bool>,
    pub(crate) tracker: Tracker,
    /// The HTTP API calls in progress: a shutdown waits for them (within
    /// `shutdown_grace_ms`) before it closes the broker their answers need.
    pub(crate) api_calls: Tracker,
    pub(crate) metrics: Arc<Metrics>,
    /// The outbound fan-out: each stream read once by its hub, shared by the sessions;
    /// with each stream's readers for the sessions behind its hub's ring.
    pub(crate) streams: crate::streams::Streams,
    /// The service registry's live view (`warren.services`).
    pub(crate) services: crate::services::Services,
    /// The options of a permessage-deflate socket (with the gateway's one deflate
    /// pool), when `permessage_deflate` is on.
    pub(crate) deflate: Option<yawc::Options>,
    /// Who is online across the gateways, and whose `client.disconnected` is due.
    presence: std::sync::Mutex<crate::presence::PresenceView>,
    /// This process, in announcements: peers tell a restart of the same node by it.
    pub(crate) instance: String,
    /// Replies to the HTTP API's requests (direct reply-to; opened at the first).
    pub(crate) http_replies: DirectReply,
    /// Replies to WebSocket requests with `request_replies = "direct"` (opened at the
    /// first).
    pub(crate) ws_replies: DirectReply,
    next_conn: AtomicU64,
    /// Sessions resumed here whose takeover request waits to go out with others
    /// ([`Shared::request_takeover`]).
    takeovers: std::sync::Mutex<Vec<(String, u64)>>,
    /// This gateway's presence events on their way to RabbitMQ ([`publish_presence`]).
    pub(crate) outbox: PresenceOutbox,
    /// How many of the broker listeners ([`listen_exchange`]) have started consuming
    /// at least once ([`Shared::wait_listening`]).
    listening: watch::Sender<usize>,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        verifier: Verifier,
        broker: Arc<Broker>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        streams: crate::streams::Streams,
    ) -> Self {
        let names = Names::new(&config.namespace);
        Shared {
            streams,
            presence: std::sync::Mutex::new(
                crate::presence::PresenceView::new(
                    &config.node,
                    Duration::from_millis(config.session_expires_ms),
                )
                .expecting_announcements(Duration::from_millis(config.announce_interval_ms)),
            ),
            names: names.clone(),
            limiter: Limiter::new(LimitSettings {
                connections_per_ip: config.max_connections_per_ip,
                new_connections_per_ip_per_s: config.max_new_connections_per_ip_per_s,
                connections_per_user: config.max_connections_per_user,
            }),
            http_calls: crate::limits::CallLimiter::new(
                config.max_frames_per_s,
                u32::try_from(config.max_pending_requests).unwrap_or(u32::MAX),
            ),
            auth_client: (config.auth.mode == AuthMode::Service)
                .then(|| AuthClient::new(broker.clone(), &names, &config.auth.service)),
            http_replies: DirectReply::new(broker.clone()),
            ws_replies: DirectReply::new(broker.clone()),
            deflate: config
                .permessage_deflate
                .then(|| crate::socket::deflate_options(config.hard_frame_bytes())),
            takeovers: std::sync::Mutex::default(),
            outbox: PresenceOutbox::new(crate::presence::OUTBOX_MAX),
            listening: watch::Sender::new(0),
            config,
            verifier,
            broker,
            registry: Registry::default(),
            shutdown,
            done_hearing: watch::channel(false).0,
            tracker: Tracker::default(),
            api_calls: Tracker::default(),
            metrics,
            services: crate::services::Services::default(),
            instance: uuid::Uuid::new_v4().simple().to_string(),

            next_conn: AtomicU64::new(1),
        }
    }

    /// Turns a token into an identity as `auth.mode` says: verified here (`none`,
    /// `jwt`) or asked of the auth service (`service`).
    pub(crate) async fn authenticate(
        &self,
        token: Option<&str>,
        anonymous: &str,
        session: Option<&str>,
        upgrade: &Upgrade,
    ) -> Result<Identity, AuthError> {
        let Some(client) = &self.auth_client else {
            return self.verifier.verify_fetching(token, anonymous).await;
        };
        let token = token.ok_or(AuthError::Missing)?;
        client
            .ask(warren_protocol::auth::AuthRequest {
                token: token.to_string(),
                session: session.map(str::to_string),
                remote_addr: Some(upgrade.peer.to_string()),
                origin: upgrade.origin.clone(),
                node: self.config.node.clone(),
            })
            .await
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The presence view (locked briefly; never held across an await).
    pub(crate) fn presence_view(&self) -> std::sync::MutexGuard<'_, crate::presence::PresenceView> {
        self.presence.lock().expect("presence view lock")
    }

    /// Publishes a presence event on `warren.presence` (routing key = its name) through
    /// the outbox ([`publish_presence`]): in the background, in order, at least once,
    /// when `presence` is on.
    pub(crate) fn presence(&self, event: crate::presence::PresenceEvent) {
        if !self.config.presence {
            return;
        }
        let body = serde_json::to_string(&event).expect("a presence event serialises");
        self.outbox
            .push(&event.event, &event.session, body, &self.metrics);
    }

    /// Publishes `client.disconnected` for `session`, which `held` says where it was
    /// (naming its gateway's node name, also for an earlier process of a gateway that
    /// restarted: [`crate::presence::Held::disconnected`]).
    pub(crate) fn disconnected(&self, session: &str, held: crate::presence::Held, reason: &str) {
        tracing::info!(session, user = %held.user, node = %held.node, reason, "client.disconnected");
        self.presence(held.disconnected(session, reason, &self.config.node));
    }

    /// A session's subscriptions may have changed: the view learns them, and the peers
    /// too (`client.subscriptions`) when they differ from what the view had. A resume
    /// naming the subscriptions its session had, or a `subscribe` the client sends
    /// again after it, publishes nothing: in a storm of resumes these were one
    /// broker message per resume and per subscription, each read by every gateway.
    pub(crate) fn subscriptions_changed(&self, session: &str, user: &str, keys: Vec<String>) {
        let (changed, tenant) = {
            let mut view = self.presence_view();
            let changed = view.subscriptions(session, keys.iter().cloned().collect());
            (changed, view.tenant_of(session))
        };
        if !changed || !self.config.presence {
            return;
        }
        let event = crate::presence::PresenceEvent {
            event: "client.subscriptions".into(),
            session: session.to_string(),
            user: user.to_string(),
            node: self.config.node.clone(),
            channel: None,
            reason: None,
            by: None,
            keys: Some(keys),
            tenant,
        };
        // One publish in flight per session, and only the newest keys wait behind it
        // (the outbox replaces a waiting one): a client toggling a subscription at its
        // frame rate made one broker message per frame.
        self.presence(event);
    }

    /// Waits (at most `wait`) until `listeners` broker listeners consume: a gateway
    /// that serves before its presence listener is bound misses the events its peers'
    /// sessions publish meanwhile (their subscriptions, for as long as they last).
    /// Returns whether they all did.
    pub(crate) async fn wait_listening(&self, listeners: usize, wait: Duration) -> bool {
        let mut bound = self.listening.subscribe();
        tokio::time::timeout(wait, bound.wait_for(|n| *n >= listeners))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Publishes a small JSON message without waiting for its confirm.
    pub(crate) fn fire(&self, exchange: String, key: String, body: String) {
        let broker = self.broker.clone();
        tokio::spawn(async move { publish_event(&broker, &exchange, &key, &body).await });
    }
}

/// How long an event's publish and confirm may take: an event is news, not worth a
/// task held for a whole resource alarm. For the presence outbox, how long a batch's
/// confirms may take before it is published again.
const EVENT_PUBLISH_WAIT: Duration = Duration::from_secs(30);

/// Presence events published at once by [`publish_presence`] (their confirms awaited
/// in order).
const OUTBOX_BATCH: usize = 64;

/// This gateway's presence events on their way ([`crate::presence::Outbox`]), what
/// wakes [`publish_presence`] and how many are left (for shutdown's flush).
pub(crate) struct PresenceOutbox {
    queue: std::sync::Mutex<crate::presence::Outbox>,
    wake: Notify,
    left: watch::Sender<usize>,
}

impl PresenceOutbox {
    fn new(max: usize) -> Self {
        PresenceOutbox {
            queue: std::sync::Mutex::new(crate::presence::Outbox::new(max)),
            wake: Notify::new(),
            left: watch::Sender::new(0),
        }
    }

    /// Queues event `key` of `session`; a full outbox drops one (logged, counted in
    /// `warren_gateway_presence_events_dropped_total`).
    fn push(&self, key: &str, session: &str, body: String, metrics: &Metrics) {
        let message_id = uuid::Uuid::new_v4().simple().to_string();
        let (dropped, left) = {
            let mut q = lock(&self.queue);
            let dropped = q.push(key, session, message_id, body);
            (dropped, q.len())
        };
        self.left.send_replace(left);
        self.wake.notify_one();
        if let Some(d) = dropped {
            let total = metrics.presence_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Once per 10,000 drops: an outage long enough to fill the outbox drops many.
            if total % 10_000 == 1 {
                tracing::warn!(
                    event = %d.key,
                    session = %d.session,
                    dropped_total = total,
                    max = crate::presence::OUTBOX_MAX,
                    "presence outbox full: an event RabbitMQ has not taken yet is dropped"
                );
            }
        }
    }

    /// Waits (at most `wait`) until every event was confirmed. Returns how many are
    /// left.
    pub(crate) async fn flush(&self, wait: Duration) -> usize {
        let mut left = self.left.subscribe();
        let _ = tokio::time::timeout(wait, left.wait_for(|n| *n == 0)).await;
        let n = *left.borrow();
        n
    }
}

/// Publishes the presence outbox's events, in order, on one publisher channel at a
/// time ([`OUTBOX_BATCH`] in flight, confirms awaited in order). What was not
/// confirmed (no channel within `broker_wait_ms`, a lost channel, a nack, no confirm
/// within [`EVENT_PUBLISH_WAIT`]) is published again, first and in the same order,
/// after a backoff — so an event RabbitMQ confirmed may go out twice. Ends once the
/// broker is closed (after shutdown's flush).
pub(crate) async fn publish_presence(shared: Arc<Shared>) {
    let exchange = shared.names.presence_exchange();
    let mut failures: u32 = 0;
    loop {
        if shared.broker.state() == BrokerState::Closed {
            return;
        }
        let batch = lock(&shared.outbox.queue).take(OUTBOX_BATCH);
        if batch.is_empty() {
            // Woken by a push; looks again now and then for a closed broker.
            let _ =
                tokio::time::timeout(Duration::from_secs(1), shared.outbox.wake.notified()).await;
            continue;
        }
        let confirmed = publish_in_order(&shared.broker, &exchange, &batch).await;
        let failed = confirmed < batch.len();
        let left = {
            let mut q = lock(&shared.outbox.queue);
            q.settle(batch.into_iter().skip(confirmed).collect());
            q.len()
        };
        shared.outbox.left.send_replace(left);
        if !failed {
            failures = 0;
            continue;
        }
        failures = failures.saturating_add(1);
        tracing::debug!(
            left,
            failures,
            "presence events not confirmed; publishing them again"
        );
        tokio::time::sleep(backoff(failures)).await;
    }
}

/// Full-jitter backoff after `failures` failures in a row: up to 100 ms doubled each
/// time, at most 5 s.
fn backoff(failures: u32) -> Duration {
    let cap = (100u64 << failures.min(6)).min(5_000);
    let random = (uuid::Uuid::new_v4().as_u128() as u64) % cap;
    Duration::from_millis(random.max(50))
}

/// Publishes `batch` in order on one publisher channel and awaits the confirms in
/// order. Returns how many from the start were confirmed: the rest is to be
/// published again. A channel that nacked or did not confirm is taken out of use.
async fn publish_in_order(
    broker: &Arc<Broker>,
    exchange: &str,
    batch: &[crate::presence::Outgoing],
) -> usize {
    let ch = match broker.publisher().await {
        Ok(ch) => ch,
        Err(e) => {
            tracing::debug!(error = %e, "no publisher channel for presence events");
            return 0;
        }
    };
    let mut confirms = Vec::with_capacity(batch.len());
    for e in batch {
        // Persistent: a durable queue of a service keeps a `client.disconnected` it
        // has not consumed yet across a broker restart (a transient one was gone, and
        // the service counted the user online for good).
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_app_id("warren-gateway".into())
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(e.message_id.as_str()));
        match ch
            .publish(
                ShortString::from(exchange),
                ShortString::from(e.key.as_str()),
                BasicPublishOptions::default(),
                e.body.as_bytes().to_vec(),
                props,
            )
            .await
        {
            Ok(confirm) => confirms.push(confirm),
            Err(err) => {
                tracing::debug!(error = %err, "presence event publish failed");
                break;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + EVENT_PUBLISH_WAIT;
    let mut confirmed = 0;
    for confirm in confirms {
        match tokio::time::timeout_at(deadline, confirm).await {
            // Not mandatory: an event no service listens to is acked.
            Ok(Outcome::Acked | Outcome::Returned) => confirmed += 1,
            Ok(Outcome::Nacked) => {
                let (broker, ch) = (broker.clone(), ch.channel().clone());
                tokio::spawn(async move { broker.retire_nacked(&ch, EVENT_PUBLISH_WAIT).await });
                break;
            }
            Ok(outcome) => {
                tracing::debug!(?outcome, "presence event not confirmed");
                break;
            }
            Err(_) => {
                let (broker, ch) = (broker.clone(), ch.channel().clone());
                tokio::spawn(async move {
                    broker
                        .retire_publisher(
                            &ch,
                            EVENT_PUBLISH_WAIT,
                            "a presence event got no confirm in time",
                        )
                        .await
                });
                break;
            }
        }
    }
    confirmed
}

/// Publishes event `body` (JSON) to `exchange` with `key` and waits for its confirm
/// (at most [`EVENT_PUBLISH_WAIT`]); a failure is only logged.
async fn publish_event(broker: &Broker, exchange: &str, key: &str, body: &str) {
    let publish = async {
        let Ok(ch) = broker.publisher().await else {
            return;
        };
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_app_id("warren-gateway".into())
            .with_message_id(ShortString::from(uuid::Uuid::new_v4().simple().to_string()));
        match ch
            .publish(
                ShortString::from(exchange),
                ShortString::from(key),
                BasicPublishOptions::default(),
                body.as_bytes().to_vec(),
                props,
            )
            .await
        {
            Ok(confirm) => {
                let _ = confirm.await;
            }
            Err(e) => tracing::debug!(error = %e, "event publish failed"),
        }
    };
    if tokio::time::timeout(EVENT_PUBLISH_WAIT, publish)
        .await
        .is_err()
    {
        tracing::debug!(key, "event publish not confirmed in time");
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the WebSocket upgrade request told about the client.
#[derive(Debug, Clone)]
pub(crate) struct Upgrade {
    /// The peer's address.
    pub(crate) peer: SocketAddr,
    /// The `Origin` header, if any, as [`normal_origin`] writes it (no trailing `/`,
    /// lowercase; at most [`MAX_ORIGIN_BYTES`]): the auth service is told it and its
    /// answers are cached by it.
    pub(crate) origin: Option<String>,
    /// A token from `Authorization: Bearer` or the configured cookie.
    pub(crate) token: Option<String>,
    /// The connection's pre-`hello` byte cap, told when the session opened.
    pub(crate) pre_hello: Option<Arc<crate::listener::PreHello>>,
}

/// Per-listener router state.
#[derive(Clone)]
struct ListenerState {
    shared: Arc<Shared>,
    pinned: Option<String>,
}

/// The router of one listener; one serving all channels also serves the HTTP API when
/// it is on and has no listener of its own.
pub(crate) fn router(shared: Arc<Shared>, pinned: Option<String>) -> Router {
    let api = &shared.config.http_api;
    let with_api = api.enabled && api.listen.is_none() && pinned.is_none();
    let mut served = vec![("/ws", "GET"), ("/presence", "GET, OPTIONS")];
    let mut router = Router::new()
        .route("/ws", get(upgrade))
        .route("/presence", get(presence).options(preflight));
    // With an admin listener these are served there only (`admin_router`).
    if shared.config.admin_listen.is_none() {
        served.extend([
            ("/healthz", "GET"),
            ("/metrics", "GET"),
            ("/services", "GET, OPTIONS"),
        ]);
        router = router
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/services", get(services).options(preflight));
    }
    let router = router.with_state(ListenerState {
        shared: shared.clone(),
        pinned,
    });
    let router = if with_api {
        served.extend_from_slice(crate::http_api::ROUTES);
        router.merge(crate::http_api::router(shared))
    } else {
        router
    };
    crate::routes::answer_the_rest(router, served)
}

/// The admin listener's router (`admin_listen`): `/healthz`, `/metrics`, `/services`.
pub(crate) fn admin_router(shared: Arc<Shared>) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/services", get(services))
        .with_state(ListenerState {
            shared,
            pinned: None,
        });
    let served = vec![
        ("/healthz", "GET"),
        ("/metrics", "GET"),
        ("/services", "GET"),
    ];
    crate::routes::answer_the_rest(router, served)
}

async fn upgrade(
    State(st): State<ListenerState>,
    ConnectInfo(PeerAddr(peer, pre_hello)): ConnectInfo<PeerAddr>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    // The WebSocket library that answers: yawc when the client offers permessage-deflate
    // and it is on (crate::socket), axum's otherwise.
    let upgrader = match st.shared.deflate.as_ref() {
        Some(options) if offers_deflate(&parts.headers) => {
            let protocol = offers_subprotocol(&parts.headers);
            match yawc::IncomingUpgrade::from_request_parts(&mut parts, &()).await {
                Ok(incoming) => Upgrader::Deflate(incoming, options.clone(), protocol),
                Err(status) => return not_an_upgrade(status, "not a WebSocket upgrade".into()),
            }
        }
        _ => match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => Upgrader::Plain(ws),
            Err(rejection) => return not_an_upgrade(rejection.status(), rejection.body_text()),
        },
    };
    let headers = &parts.headers;
    if *st.shared.shutdown.borrow() {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            warren_protocol::ErrorCode::BrokerUnavailable,
            "the gateway is shutting down; connect to another".into(),
        );
    }
    let config = &st.shared.config;
    let origin = headers
        .get(ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(origin) = origin {
        if origin.len() > MAX_ORIGIN_BYTES {
            metrics::add(&st.shared.metrics.refused_origin, 1);
            tracing::info!(bytes = origin.len(), "upgrade refused: origin too long");
            return origin_too_long();
        }
        if !origin_allowed(&config.auth.allowed_origins, origin) {
            metrics::add(&st.shared.metrics.refused_origin, 1);
            tracing::info!(origin, "upgrade refused: origin not allowed");
            return origin_refused();
        }
    }
    let ip_slot = if let Some(client) = limited_address(config, &peer) {
        match st
            .shared
            .limiter
            .admit_ip(client, std::time::Instant::now())
        {
            Ok(slot) => Some(slot),
            Err(refused) => {
                metrics::add(&st.shared.metrics.refused_limit, 1);
                let limit = match refused {
                    crate::limits::Refused::ConnectionsPerIp => config.max_connections_per_ip,
                    _ => config.max_new_connections_per_ip_per_s,
                };
                tracing::info!(peer = %client, "upgrade refused: {}", refused.message(limit));
                return refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    warren_protocol::ErrorCode::Overloaded,
                    refused.message(limit),
                );
            }
        }
    } else {
        None
    };
    pre_hello.watch();
    let upgrade = Upgrade {
        peer,
        origin: origin.map(normal_origin),
        token: upgrade_token(headers, config.auth.token_cookie.as_deref()),
        pre_hello: Some(pre_hello),
    };
    let ws = match upgrader {
        Upgrader::Plain(ws) => ws,
        Upgrader::Deflate(incoming, options, protocol) => {
            return upgrade_deflate(st, incoming, options, protocol, upgrade, ip_slot)
        }
    };
    // Small socket buffers: tungstenite's 128 KiB default read buffer (zero-filled on
    // every read) was most of an idle session's memory and CPU, and 4 KiB still was a
    // third of it (heaptrack, BENCHMARKS.md). 1 KiB holds a few ordinary frames per
    // read; larger frames still work: the buffer grows for them.
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(1024)
        .max_message_size(config.hard_frame_bytes())
        .max_frame_size(config.hard_frame_bytes())
        .on_upgrade(move |socket| {
            let socket = crate::socket::Socket::Plain(socket);
            crate::connection::serve(socket, st.shared, st.pinned, upgrade, ip_slot)
        })
}

/// A `/ws` request that cannot be upgraded: `status` as the WebSocket library says
/// (400, 405 for a method other than `GET`, 426), code `invalid`. A 405 names the
/// method `/ws` answers in `Allow`, as RFC 9110 requires (a `HEAD`, which reaches the
/// `GET` route, had none).
fn not_an_upgrade(status: StatusCode, why: String) -> Response {
    let mut response = refusal(status, warren_protocol::ErrorCode::Invalid, why);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(axum::http::header::ALLOW, HeaderValue::from_static("GET"));
    }
    response
}

/// The two WebSocket libraries' upgrades ([`crate::socket`]).
enum Upgrader {
    Plain(WebSocketUpgrade),
    /// With the options to answer with and whether the client asked for `warren.v1`.
    Deflate(yawc::IncomingUpgrade, yawc::Options, bool),
}

/// Answers an upgrade offering permessage-deflate with yawc, which negotiates it, and
/// serves the connection once upgraded.
fn upgrade_deflate(
    st: ListenerState,
    incoming: yawc::IncomingUpgrade,
    options: yawc::Options,
    protocol: bool,
    upgrade: Upgrade,
    ip_slot: Option<crate::limits::Slot>,
) -> Response {
    let (mut response, socket) = match incoming.upgrade(options) {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::info!(error = %e, "permessage-deflate upgrade refused");
            return not_an_upgrade(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    if protocol {
        response.headers_mut().insert(
            axum::http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    tokio::spawn(async move {
        match socket.await {
            Ok(ws) => {
                metrics::add(&st.shared.metrics.deflate_connections, 1);
                let socket = crate::socket::Socket::Deflate(Box::new(ws), false);
                crate::connection::serve(socket, st.shared, st.pinned, upgrade, ip_slot).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    response.map(axum::body::Body::new).into_response()
}

/// Whether the upgrade request offers permessage-deflate (RFC 7692).
fn offers_deflate(headers: &HeaderMap) -> bool {
    header_lists(headers, axum::http::header::SEC_WEBSOCKET_EXTENSIONS).any(|offer| {
        offer
            .split(';')
            .next()
            .is_some_and(|name| name.trim().eq_ignore_ascii_case("permessage-deflate"))
    })
}

/// Whether the upgrade request asks for the `warren.v1` subprotocol.
fn offers_subprotocol(headers: &HeaderMap) -> bool {
    header_lists(headers, axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// The comma-separated entries of every `name` header.
fn header_lists(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
}

/// Most bytes of an `Origin` header (a browser's is `scheme://host[:port]`): a longer
/// one is refused. Each distinct Origin was an auth service cache entry of its size,
/// so one valid token and upgrades with hundreds of KiB of `/` took gigabytes.
pub(crate) const MAX_ORIGIN_BYTES: usize = 1024;

/// `origin` as [`origin_allowed`] compares it: without trailing `/`, in lowercase.
/// Origins differing only so are one origin (and one auth service cache entry).
pub(crate) fn normal_origin(origin: &str) -> String {
    origin.trim_end_matches('/').to_ascii_lowercase()
}

/// Whether `origin` may open a WebSocket: `allowed` empty allows all; otherwise an
/// exact entry, or an entry `scheme://*.domain[:port]` that matches any subdomain of
/// `domain` (not `domain` itself).
pub(crate) fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let origin = normal_origin(origin);
    allowed.iter().any(|a| {
        let a = normal_origin(a);
        if a == origin {
            return true;
        }
        let Some((scheme, rest)) = a.split_once("://*.") else {
            return false;
        };
        let Some(host) = origin
            .strip_prefix(scheme)
            .and_then(|o| o.strip_prefix("://"))
        else {
            return false;
        };
        host.strip_suffix(rest)
            .and_then(|sub| sub.strip_suffix('.'))
            .is_some_and(|sub| !sub.is_empty() && !sub.contains('/') && !sub.contains(':'))
    })
}

/// A token carried by the upgrade request itself: `Authorization: Bearer <token>`, or
/// the configured cookie. `hello.token` takes precedence over both.
/// The address per-IP limits count `peer` under ([`crate::limits::client_address`]);
/// `None` for a loopback peer unless `ip_limits_on_loopback`.
pub(crate) fn limited_address(
    config: &crate::Config,
    peer: &std::net::SocketAddr,
) -> Option<std::net::IpAddr> {
    let client = crate::limits::client_address(peer.ip());
    (config.ip_limits_on_loopback || !client.is_loopback()).then_some(client)
}

/// The credential of an `Authorization: Bearer <credential>` header value; the scheme
/// is matched without regard to case (RFC 9110 §11.1: `bearer` is `Bearer`).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, credential) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credential.trim())
        .filter(|t| !t.is_empty())
}

fn upgrade_token(headers: &HeaderMap, cookie: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(t) = bearer(v) {
            if !t.is_empty() {
                return Some(t.to_string());
            }
        }
    }
    let name = cookie?;
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Query of `GET /presence`.
#[derive(Debug, serde::Deserialize)]
struct PresenceQuery {
    channel: Option<String>,
    group: Option<String>,
    /// In tenant mode, the tenant a backend (HTTP API key) asks about; a token's
    /// holder always sees its own tenant only.
    tenant: Option<String>,
}

/// `Access-Control-*` headers for a browser page on an allowed origin (the demo page
/// polls `/presence` and `/services`).
///
/// # Errors
/// What makes the refusal to answer, for an origin not allowed ([`origin_refused`]) or
/// too long ([`origin_too_long`]).
fn cors(shared: &Shared, headers: &HeaderMap) -> Result<HeaderMap, fn() -> Response> {
    let Some(origin) = headers
        .get(ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
    else {
        return Ok(HeaderMap::new());
    };
    if origin.len() > MAX_ORIGIN_BYTES {
        metrics::add(&shared.metrics.refused_origin, 1);
        return Err(origin_too_long);
    }
    if !origin_allowed(&shared.config.auth.allowed_origins, origin) {
        metrics::add(&shared.metrics.refused_origin, 1);
        return Err(origin_refused);
    }
    Ok(with_headers(vec![
        (ACCESS_CONTROL_ALLOW_ORIGIN, origin.to_string()),
        (VARY, "Origin".to_string()),
    ]))
}

/// An `Origin` not in `auth.allowed_origins`: `403 forbidden`.
fn origin_refused() -> Response {
    refusal(
        StatusCode::FORBIDDEN,
        warren_protocol::ErrorCode::Forbidden,
        "the request's Origin is not in auth.allowed_origins".into(),
    )
}

/// An `Origin` over [`MAX_ORIGIN_BYTES`]: `403 forbidden`, as an origin not allowed.
fn origin_too_long() -> Response {
    refusal(
        StatusCode::FORBIDDEN,
        warren_protocol::ErrorCode::Forbidden,
        format!("the request's Origin is longer than {MAX_ORIGIN_BYTES} bytes"),
    )
}

/// The CORS preflight of `/presence` and `/services` (a page sending `Authorization`).
async fn preflight(State(st): State<ListenerState>, headers: HeaderMap) -> Response {
    let mut h = match cors(&st.shared, &headers) {
        Ok(h) => h,
        Err(refused) => return refused(),
    };
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization"),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    (StatusCode::NO_CONTENT, h).into_response()
}

fn with_headers(h: Vec<(HeaderName, String)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in h {
        if let Ok(v) = HeaderValue::from_str(&v) {
            map.insert(k, v);
        }
    }
    map
}

/// A JSON error body with a registry code.
pub(crate) fn refusal(
    status: StatusCode,
    code: warren_protocol::ErrorCode,
    message: String,
) -> Response {
    let mut response = (
        status,
        Json(serde_json::json!({"code": code.as_str(), "message": message})),
    )
        .into_response();
    // A 401 names the scheme that answers it (RFC 9110), as the HTTP API's do.
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Who is online across the gateways (as this one's view has it), optionally in one
/// channel and/or group: `{"node", "users", "sessions": [{"session","user","node"}],
/// "per_node"}`. The caller proves who it is as a WebSocket client does (token in
/// `Authorization: Bearer` or the token cookie) and may ask only about a channel it
/// may subscribe to and a group it is granted; a backend sends an HTTP API key
/// (`http_api.api_keys`) and may ask about anything.
async fn presence(
    State(st): State<ListenerState>,
    ConnectInfo(PeerAddr(peer, _)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use warren_protocol::ErrorCode;
    // Waited for by a shutdown as the HTTP API's calls are: with `auth.mode =
    // "service"` it asks the auth service over RabbitMQ.
    let _call = st.shared.api_calls.enter();
    let cors = match cors(&st.shared, &headers) {
        Ok(h) => h,
        Err(refused) => return refused(),
    };
    // A query axum cannot read (a name given twice) is refused in a JSON body too.
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => {
            let refused = refusal(StatusCode::BAD_REQUEST, ErrorCode::Invalid, e.body_text());
            return (cors, refused).into_response();
        }
    };
    // Each call costs a token check (an auth service round trip in that mode) and a
    // scan of the sessions: it counts as a new connection from its address.
    let config = &st.shared.config;
    if let Some(client) = limited_address(config, &peer) {
        if let Err(refused) = st.shared.limiter.take_ip(client, std::time::Instant::now()) {
            metrics::add(&st.shared.metrics.refused_limit, 1);
            let message = refused.message(config.max_new_connections_per_ip_per_s);
            return (
                cors,
                refusal(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::Overloaded,
                    message,
                ),
            )
                .into_response();
        }
    }
    let token = upgrade_token(&headers, st.shared.config.auth.token_cookie.as_deref());
    let upgrade = Upgrade {
        peer,
        origin: headers
            .get(ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(normal_origin),
        token: token.clone(),
        pre_hello: None,
    };
    let by_key = token
        .as_deref()
        .is_some_and(|t| crate::http_api::is_api_key(&st.shared, t));
    let identity = match by_key {
        // A backend with an HTTP API key may ask about anyone.
        true => Ok(Identity::unrestricted(crate::http_api::API_USER)),
        false => {
            st.shared
                .authenticate(token.as_deref(), "anonymous", None, &upgrade)
                .await
        }
    };
    let identity = match identity {
        Ok(i) => i,
        // An auth service that did not answer is not a refused token: 503, retryable,
        // as the WebSocket path's `auth_unavailable`.
        Err(e @ crate::auth::AuthError::Unavailable(_)) => {
            return (
                cors,
                refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::AuthUnavailable,
                    e.to_string(),
                ),
            )
                .into_response();
        }
        Err(e) => {
            metrics::add(&st.shared.metrics.refused_token, 1);
            return (
                cors,
                refusal(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    e.to_string(),
                ),
            )
                .into_response();
        }
    };
    let forbidden = |m: String| {
        (
            cors.clone(),
            refusal(StatusCode::FORBIDDEN, ErrorCode::Forbidden, m),
        )
            .into_response()
    };
    match &q.channel {
        Some(c) => {
            if !identity.may(crate::auth::Action::Subscribe, c) {
                return forbidden(identity.refusal(crate::auth::Action::Subscribe, c));
            }
        }
        // No channel is a question about every channel: only for a caller that may
        // subscribe to each.
        None => {
            let config = &st.shared.config;
            if let Some(c) = config
                .channels
                .iter()
                .find(|c| !identity.may(crate::auth::Action::Subscribe, c))
            {
                return forbidden(format!(
                    "{}; name a channel it may subscribe to (`?channel=`)",
                    identity.refusal(crate::auth::Action::Subscribe, c)
                ));
            }
        }
    }
    if let Some(g) = &q.group {
        if !identity.may_group(g) {
            return forbidden(format!("user `{}` may not see group `{g}`", identity.user));
        }
    }
    let tenant = match by_key {
        true => q
            .tenant
            .clone()
            .filter(|_| st.shared.config.tenants.enabled),
        false => crate::inbound::tenant_of(&st.shared.config, &identity).map(str::to_string),
    };
    let (online, per_node) = {
        let view = st.shared.presence_view();
        (
            view.online(q.channel.as_deref(), q.group.as_deref(), tenant.as_deref()),
            view.per_node(
                st.shared
                    .config
                    .tenants
                    .enabled
                    .then_some(tenant.as_deref()),
            ),
        )
    };
    let mut users: Vec<&str> = online.iter().map(|o| o.user.as_str()).collect();
    users.dedup();
    // A session id is an internal handle of another user's connection: a token's
    // holder sees the ids of its own user's sessions only; a backend, and development
    // mode (where anyone may be anyone), all.
    let every_id = by_key || st.shared.config.auth.mode == AuthMode::None;
    let sessions: Vec<serde_json::Value> = online
        .iter()
        .map(|o| match every_id || o.user == identity.user {
            true => serde_json::json!({"session": o.session, "user": o.user, "node": o.node}),
            false => serde_json::json!({"user": o.user, "node": o.node}),
        })
        .collect();
    let body = serde_json::json!({
        "node": st.shared.config.node,
        "channel": q.channel,
        "group": q.group,
        "users": users,
        "sessions": sessions,
        "per_node": per_node,
    });
    (cors, Json(body)).into_response()
}

/// The service registry's live view: instances by service name, with their channels.
async fn services(State(st): State<ListenerState>, headers: HeaderMap) -> Response {
    let cors = match cors(&st.shared, &headers) {
        Ok(h) => h,
        Err(refused) => return refused(),
    };
    let body = serde_json::json!({
        "node": st.shared.config.node,
        "services": st.shared.services.live(),
    });
    (cors, Json(body)).into_response()
}

/// How long a stream's reader may not be reading before `/healthz` answers 503.
pub(crate) const READER_DOWN_GRACE: Duration = Duration::from_secs(10);

async fn healthz(State(st): State<ListenerState>) -> Response {
    let broker = st.shared.broker.state();
    let shutting_down = *st.shared.shutdown.borrow();
    // Streams whose reader has not been reading for a while (a restart takes well
    // under a second; after a broker outage, a few): their sessions get nothing.
    let not_read: Vec<&str> = st
        .shared
        .streams
        .all()
        .iter()
        .filter(|s| {
            s.hub
                .not_reading_for()
                .is_some_and(|d| d >= READER_DOWN_GRACE)
        })
        .map(|s| s.name.as_str())
        .collect();
    let ok = broker == BrokerState::Connected && !shutting_down && not_read.is_empty();
    let body = serde_json::json!({
        "status": if ok { "ok" } else if shutting_down { "draining" } else { "degraded" },
        "node": st.shared.config.node,
        "namespace": st.shared.config.namespace,
        "broker": broker.as_str(),
        "broker_blocked": st.shared.broker.is_blocked(),
        "streams_not_read": not_read,
        "connections": st.shared.tracker.active(),
        "sessions": st.shared.registry.len(),
        "confirms_pending": st.shared.metrics.confirms_pending.load(std::sync::atomic::Ordering::Relaxed).max(0),
        "channel": st.pinned,
        "channels": st.shared.config.channels,
        "protocol": SUBPROTOCOL,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(st): State<ListenerState>) -> Response {
    let s = &st.shared;
    let text = s.metrics.render(
        &s.config.node,
        s.tracker.active(),
        s.registry.len(),
        s.broker.state() == BrokerState::Connected,
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A request, sent on `warren.gateways`, that whichever gateway serves `takeover`
/// lets it go: a client resumed it on gateway `node`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct TakeoverRequest {
    pub(crate) takeover: String,
    pub(crate) node: String,
    /// When the client resumed it there, in ms since the epoch (absent from gateways
    /// older than this field: their requests are always obeyed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) at_ms: Option<u64>,
}

/// Several takeover requests of one gateway in one message (a reconnect storm resumes
/// thousands of sessions at once; one broker message each was most of its broker work).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct TakeoverBatch {
    pub(crate) takeovers: Vec<String>,
    pub(crate) node: String,
    /// `at_ms` of each session, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) at_ms: Vec<u64>,
}

/// How long a takeover request waits for others to go out with.
const TAKEOVER_BATCH_WAIT: Duration = Duration::from_millis(5);
/// Most sessions in one takeover message (~50 bytes each).
const TAKEOVER_BATCH_MAX: usize = 1_000;

/// A session another gateway resumed, and when (ms since the epoch), if it says.
pub(crate) type Resumed = (String, Option<u64>);

/// The sessions a `warren.gateways` message asks to release, each with when it was
/// resumed (if the asking gateway says), and the node asking, if it is a takeover
/// request (one session or a batch).
pub(crate) fn takeovers_in(body: &[u8]) -> Option<(Vec<Resumed>, String)> {
    if let Ok(req) = serde_json::from_slice::<TakeoverRequest>(body) {
        return Some((vec![(req.takeover, req.at_ms)], req.node));
    }
    serde_json::from_slice::<TakeoverBatch>(body).ok().map(|b| {
        let mut at = b.at_ms.into_iter();
        let sessions = b.takeovers.into_iter().map(|s| (s, at.next())).collect();
        (sessions, b.node)
    })
}

/// The message bodies for `sessions` (each with when it was resumed) asked by `node`:
/// a single session is sent as a [`TakeoverRequest`] (what every gateway version
/// reads), more as batches.
pub(crate) fn takeover_bodies(sessions: Vec<(String, u64)>, node: &str) -> Vec<String> {
    if sessions.len() == 1 {
        let (takeover, at) = sessions.into_iter().next().unwrap_or_default();
        let req = TakeoverRequest {
            takeover,
            node: node.to_string(),
            at_ms: Some(at),
        };
        return vec![serde_json::to_string(&req).expect("a takeover request serialises")];
    }
    sessions
        .chunks(TAKEOVER_BATCH_MAX)
        .map(|chunk| {
            let batch = TakeoverBatch {
                takeovers: chunk.iter().map(|(s, _)| s.clone()).collect(),
                node: node.to_string(),
                at_ms: chunk.iter().map(|(_, at)| *at).collect(),
            };
            serde_json::to_string(&batch).expect("a takeover batch serialises")
        })
        .collect()
}

impl Shared {
    /// Asks every other gateway to release `session` (its consumer is still there
    /// while a client resumes it here), which its client asked for at `at_ms`
    /// (milliseconds since the epoch). Requests made within [`TAKEOVER_BATCH_WAIT`] of
    /// each other go out together.
    pub(crate) fn request_takeover(self: &Arc<Self>, session: &str, at_ms: u64) {
        let first = {
            let mut pending = self.takeovers.lock().unwrap_or_else(|e| e.into_inner());
            pending.push((session.to_string(), at_ms));
            pending.len() == 1
        };
        if !first {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(TAKEOVER_BATCH_WAIT).await;
            let sessions =
                std::mem::take(&mut *shared.takeovers.lock().unwrap_or_else(|e| e.into_inner()));
            for body in takeover_bodies(sessions, &shared.config.node) {
                shared.fire(shared.names.gateways_exchange(), String::new(), body);
            }
        });
    }
}

/// What else travels on `warren.gateways` besides takeovers and announcements: a
/// starting gateway asks its peers what they know of the cluster's sessions, and each
/// answers with its presence view.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum PresenceSync {
    Request {
        presence_snapshot_for: String,
        /// A resync's request id ([`crate::presence::PresenceView::asking`]); every
        /// peer answers it, also with an empty view. Absent at start-up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asked: Option<u64>,
    },
    Snapshot {
        presence_snapshot: Vec<crate::presence::PresenceEvent>,
        to: String,
        /// The answering gateway, with the request's id, when it answers a resync.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asked: Option<u64>,
        /// In a resync's answer, the asking gateway's sessions announced
        /// `gateway_lost` and not connected again since
        /// ([`crate::presence::PresenceView::lost_of`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lost: Vec<String>,
        /// In a resync's answer, the sessions the answering gateway saw announced gone
        /// recently ([`crate::presence::PresenceView::tombstones`]): the asker forgets
        /// those it still holds for another node. Absent from older gateways' answers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gone: Vec<String>,
    },
}

/// When a gateway whose presence listener was bound again (after a broker reconnect)
/// asks its peers for their views, counted from the bind, one wait after the other:
/// a peer that is not back on RabbitMQ yet answers a later request.
const RESYNC_ASKS: [Duration; 4] = [
    Duration::from_millis(300),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// Listens on `warren.gateways`: takeover requests of other gateways (handed to the
/// local connection serving the session), their announcements and presence snapshots
/// (for the presence view).
pub(crate) async fn listen_for_takeovers(shared: Arc<Shared>) {
    let exchange = shared.names.gateways_exchange();
    let on = shared.clone();
    // Heard through a drain, until the gateway knows whether it is left alone: its
    // peers' `down` (the whole deployment stopping) and takeovers of its sessions
    // resumed on a peer decide which sessions it announces gone.
    let until = shared.done_hearing.subscribe();
    listen_exchange(shared, exchange, "", "takeover", until, || {}, move |body| {
        if let Some((sessions, node)) = takeovers_in(body) {
            let mine = node == on.config.node;
            let mut moved = Vec::with_capacity(sessions.len());
            let mut refused = Vec::new();
            for (session, at) in &sessions {
                if !mine {
                    match on.registry.ask_to_release(session, *at) {
                        Release::Newer { since_ms } => {
                            tracing::info!(session = %session, by = %node, "a takeover request older than this gateway's resume of the session; kept");
                            // Its gateway's connection is the older one (a `hello` done
                            // with after its client resumed here): told so, it ends
                            // without announcing the session gone and places it here.
                            // Only when strictly newer: two requests of the same time
                            // would answer each other for ever.
                            if at.is_some_and(|at| since_ms > at) {
                                on.request_takeover(session, since_ms);
                            }
                            // Its `client.subscriptions` for the session do not move
                            // the session there in the view.
                            refused.push(session);
                            continue;
                        }
                        Release::Asked => {
                            tracing::info!(session = %session, by = %node, "session resumed on another gateway; releasing it");
                        }
                        Release::NotHere => {}
                    }
                }
                moved.push(session);
            }
            // One lock for the whole batch.
            let mut view = on.presence_view();
            for session in moved {
                view.taken_over(session, &node);
            }
            for session in refused {
                view.refused(session, &node);
            }
        } else if let Ok(a) = serde_json::from_slice::<GatewayAnnouncement>(body) {
            if a.node == on.config.node && a.instance != on.instance {
                // Each takes the other's takeover requests and announcements for its
                // own, and ignores them: resumed sessions are not released.
                tracing::error!(
                    node = %a.node, other_instance = %a.instance,
                    "another gateway runs with this gateway's node name: give each gateway a node name of its own (--node, WARREN_NODE)"
                );
            }
            let interval = Duration::from_millis(a.interval_ms.unwrap_or(5_000).max(1));
            on.presence_view().on_gateway(
                &a.node,
                &a.instance,
                a.state == "up",
                interval,
                std::time::Instant::now(),
            );
        } else if let Ok(sync) = serde_json::from_slice::<PresenceSync>(body) {
            match sync {
                PresenceSync::Request { presence_snapshot_for: node, asked } if node != on.config.node => {
                    let (snapshot, lost, gone) = {
                        let view = on.presence_view();
                        let (lost, gone) = if asked.is_some() {
                            (view.lost_of(&node), view.tombstones(std::time::Instant::now()))
                        } else {
                            (Vec::new(), Vec::new())
                        };
                        (view.snapshot(), lost, gone)
                    };
                    if !snapshot.is_empty() || asked.is_some() {
                        let body = serde_json::to_string(&PresenceSync::Snapshot {
                            presence_snapshot: snapshot,
                            to: node,
                            from: asked.map(|_| on.config.node.clone()),
                            asked,
                            lost,
                            gone,
                        })
                        .expect("a snapshot serialises");
                        on.fire(on.names.gateways_exchange(), String::new(), body);
                    }
                }
                PresenceSync::Snapshot { presence_snapshot, to, from, asked, lost, gone } if to == on.config.node => {
                    tracing::info!(sessions = presence_snapshot.len(), lost = lost.len(), gone = gone.len(), from = ?from, "presence snapshot from a peer");
                    let now = std::time::Instant::now();
                    let liveness = on.config.announce_interval_ms > 0;
                    let again = {
                        let mut view = on.presence_view();
                        match (from, asked) {
                            (Some(from), Some(asked)) => {
                                view.told_gone(asked, &gone, now);
                                view.answer(&from, asked, presence_snapshot, &lost, now, liveness)
                            }
                            _ => {
                                view.merge(presence_snapshot, now, liveness);
                                Vec::new()
                            }
                        }
                    };
                    let sessions = again.iter().filter(|e| e.event == "client.connected").count();
                    if sessions > 0 {
                        tracing::warn!(sessions, "a peer announced sessions held here gone while this gateway was cut off from RabbitMQ: they are announced connected again");
                    }
                    for event in again {
                        on.presence(event);
                    }
                }
                _ => {}
            }
        }
    })
    .await;
}

/// Reports messages to users that nobody received (no session of the user anywhere)
/// to their publisher's `reply_to`, when this gateway is the elected one: JSON
/// `{"undelivered": true, "message_id", "users", "keys", "position", "node"}` through
/// the default exchange, `correlation_id` = the message's `message_id`, header
/// `x-warren-undelivered`.
///
/// Not before the view is synced ([`presence_synced`]); the messages meanwhile wait.
pub(crate) async fn report_undelivered(
    shared: Arc<Shared>,
    mut addressed: tokio::sync::mpsc::Receiver<crate::hub::Addressed>,
) {
    // Until the view is synced, what comes waits here (the channel is bounded and
    // filled without waiting: left in it, messages beyond its room were dropped).
    let start = std::time::Instant::now();
    let interval = Duration::from_millis(shared.config.announce_interval_ms);
    let mut held = std::collections::VecDeque::new();
    let mut dropped = 0u64;
    while !presence_synced(start.elapsed(), interval, shared.presence_view().merged()) {
        tokio::select! {
            a = addressed.recv() => match a {
                Some(a) => {
                    if held.len() >= HELD_WHILE_SYNCING {
                        held.pop_front();
                        dropped += 1;
                    }
                    held.push_back(a);
                }
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    if dropped > 0 {
        tracing::warn!(dropped, "messages to users not judged for undelivered reports: more came while the presence view synced than it holds");
    }
    for a in held {
        report_one(&shared, a).await;
    }
    while let Some(a) = addressed.recv().await {
        report_one(&shared, a).await;
    }
}

/// Messages to users held while a gateway that starts syncs its presence view.
const HELD_WHILE_SYNCING: usize = 100_000;

/// Reports `a` to its publisher when this gateway is the elected one and none of its
/// users has a session.
async fn report_one(shared: &Shared, a: crate::hub::Addressed) {
    let offline: Vec<&String> = {
        let view = shared.presence_view();
        if !view.elected(std::time::Instant::now()) {
            return;
        }
        let tenant = shared.config.tenants.enabled.then_some(a.tenant.as_deref());
        view.offline_users(&a.users, tenant)
    };
    if offline.is_empty() {
        return;
    }
    crate::metrics::add(&shared.metrics.undelivered, 1);
    tracing::info!(users = ?offline, message_id = ?a.message_id, "message to users with no session; reported to its publisher");
    let body = serde_json::to_string(&warren_protocol::services::Undelivered {
        undelivered: true,
        message_id: a.message_id.clone(),
        users: offline.into_iter().cloned().collect(),
        keys: a.keys,
        position: Some(a.offset),
        node: shared.config.node.clone(),
    })
    .expect("a report serialises");
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        ShortString::from(warren_protocol::amqp::H_UNDELIVERED),
        lapin::types::AMQPValue::Boolean(true),
    );
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_app_id("warren-gateway".into())
        .with_headers(headers);
    if let Some(id) = &a.message_id {
        props = props.with_correlation_id(ShortString::from(id.as_str()));
    }
    if let Ok(ch) = shared.broker.publisher().await {
        // Its confirm is not awaited: the report is best effort.
        let _ = ch
            .publish(
                ShortString::from(""),
                ShortString::from(a.reply_to.as_str()),
                BasicPublishOptions::default(),
                body.into_bytes(),
                props,
            )
            .await;
    }
}

/// How long a gateway that starts waits for a peer's snapshot before it takes its
/// view as all there is (a lone gateway gets none).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(1);

/// Whether the presence view of a gateway that started `since` ago can judge who is
/// offline: it took in a peer's snapshot (or waited [`SNAPSHOT_WAIT`] for one), and
/// one announcement period (`interval`) passed, so it heard its live peers and knows
/// whether it is the elected one. Before, a gateway that started had heard no peer
/// (elected) and held no session of theirs: it reported messages to users online on
/// its peers as undelivered.
fn presence_synced(since: Duration, interval: Duration, merged: bool) -> bool {
    (merged || since >= SNAPSHOT_WAIT) && since >= interval
}

/// A gateway's announcement on `warren.gateways`, as peers read it.
#[derive(Debug, serde::Deserialize)]
struct GatewayAnnouncement {
    node: String,
    #[serde(default)]
    instance: String,
    state: String,
    #[serde(default)]
    interval_ms: Option<u64>,
}

/// Keeps the presence view from the events on `warren.presence` (its own included),
/// and publishes the `client.disconnected` events that fall due here (sessions not
/// resumed in time, and those of a dead gateway when this one is elected).
pub(crate) async fn keep_presence(shared: Arc<Shared>) {
    let exchange = shared.names.presence_exchange();
    let on = shared.clone();
    let (bound_tx, mut bound) = watch::channel(0u64);
    let listen = listen_exchange(
        shared.clone(),
        exchange,
        "client.*",
        "presence",
        shared.shutdown.clone(),
        move || bound_tx.send_modify(|n| *n += 1),
        move |body| match serde_json::from_slice::<crate::presence::PresenceEvent>(body) {
            Ok(e) => {
                let again = on.presence_view().on_event(e, std::time::Instant::now());
                for event in again {
                    on.presence(event);
                }
            }
            Err(e) => tracing::debug!(error = %e, "not a presence event; ignored"),
        },
    );
    // Bound again (a broker reconnect): the peers' events meanwhile were missed, a
    // `client.disconnected` among them would leave its session online here for good.
    // Their views say what they hold now ([`RESYNC_ASKS`]).
    let resync = async {
        let mut seen = 1; // the first bind: the start-up request below
        let mut id = 0u64;
        loop {
            if bound.wait_for(|n| *n > seen).await.is_err() {
                return std::future::pending().await;
            }
            seen = *bound.borrow_and_update();
            tracing::info!("presence listener bound again; asking the peers for their views");
            for wait in RESYNC_ASKS {
                tokio::time::sleep(wait).await;
                id += 1;
                shared.presence_view().asking(id);
                let ask = serde_json::to_string(&PresenceSync::Request {
                    presence_snapshot_for: shared.config.node.clone(),
                    asked: Some(id),
                })
                .expect("a request serialises");
                shared.fire(shared.names.gateways_exchange(), String::new(), ask);
            }
        }
    };
    let mut shutdown = shared.shutdown.clone();
    let tick = async {
        // What the peers know of sessions opened before this gateway started (once its
        // listener on warren.gateways is likely bound).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ask = serde_json::to_string(&PresenceSync::Request {
            presence_snapshot_for: shared.config.node.clone(),
            asked: None,
        })
        .expect("a request serialises");
        shared.fire(shared.names.gateways_exchange(), String::new(), ask);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let now = std::time::Instant::now();
            let hears = hears_peers(shared.broker.state(), shared.broker.is_blocked());
            let due = presence_tick(&mut shared.presence_view(), hears, now);
            for (session, held, reason) in due {
                shared.disconnected(&session, held, reason);
            }
        }
    };
    tokio::select! {
        _ = listen => {}
        _ = tick => {}
        _ = resync => {}
        // A gateway that stops leaves its sessions to its peers (after its `down`).
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

/// Whether this gateway can hear its peers' announcements: not without RabbitMQ, and
/// not while RabbitMQ blocks its publishing (a memory or disk alarm): an alarm blocks
/// every publisher of the cluster, so its peers cannot announce themselves either.
/// Judged by their silence, every gateway counted every peer dead during an alarm
/// longer than three announcement periods and, elected, published `gateway_lost` for
/// all their sessions once it cleared.
pub(crate) fn hears_peers(state: crate::broker::BrokerState, blocked: bool) -> bool {
    state == crate::broker::BrokerState::Connected && !blocked
}

/// Moves `view` on to `now` ([`PresenceView::due`]); a gateway that `hears` nothing
/// ([`hears_peers`]) does not age its peers meanwhile ([`PresenceView::deaf`]).
fn presence_tick(
    view: &mut crate::presence::PresenceView,
    hears: bool,
    now: std::time::Instant,
) -> Vec<(String, crate::presence::Held, &'static str)> {
    if !hears {
        view.deaf(now);
    }
    view.due(now)
}

/// Keeps the service registry's view from the announcements on `warren.services`.
pub(crate) async fn listen_for_services(shared: Arc<Shared>) {
    let exchange = shared.names.services_exchange();
    let on = shared.clone();
    listen_fanout(shared, exchange, "services", move |body| {
        on.services.on_message(body)
    })
    .await;
}

/// Consumes fanout exchange `exchange`; see [`listen_exchange`].
pub(crate) async fn listen_fanout(
    shared: Arc<Shared>,
    exchange: String,
    what: &'static str,
    on: impl FnMut(&[u8]) + Send,
) {
    let until = shared.shutdown.clone();
    listen_exchange(shared, exchange, "", what, until, || {}, on).await;
}

/// Consumes `exchange` (bound with `key`) through an exclusive, server-named queue (no
/// ack), handing each message's body to `on`; `bound` is called each time it consumes
/// (again). Subscribes again after a broker reconnect; ends when `until` is set (the
/// shutdown, for most).
pub(crate) async fn listen_exchange(
    shared: Arc<Shared>,
    exchange: String,
    key: &'static str,
    what: &'static str,
    mut until: watch::Receiver<bool>,
    mut bound: impl FnMut() + Send,
    mut on: impl FnMut(&[u8]) + Send,
) {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let mut counted = false;
    loop {
        let listen = async {
            let ch = shared.broker.consumer_channel().await?;
            let q = ch
                .queue_declare(
                    ShortString::from(""),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| crate::GatewayError::amqp("queue.declare listener", e))?;
            ch.queue_bind(
                q.name().clone(),
                ShortString::from(exchange.as_str()),
                ShortString::from(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| crate::GatewayError::amqp("queue.bind listener", e))?;
            let mut consumer = ch
                .basic_consume(
                    q.name().clone(),
                    ShortString::from(format!("{}.{what}", shared.config.node)),
                    BasicConsumeOptions {
                        no_ack: true,
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| crate::GatewayError::amqp("basic.consume listener", e))?;
            if !std::mem::replace(&mut counted, true) {
                shared.listening.send_modify(|n| *n += 1);
            }
            bound();
            while let Some(Ok(d)) = consumer.next().await {
                on(&d.data);
            }
            Ok::<(), crate::GatewayError>(())
        };
        tokio::select! {
            res = listen => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, what, "listener failed; retrying");
                }
            }
            _ = until.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = until.wait_for(|s| *s) => return,
        }
    }
}

/// Announces the gateway on `warren.gateways` every `announce_interval_ms`.
pub(crate) async fn announce(shared: Arc<Shared>, listeners: Vec<(SocketAddr, Option<String>)>) {
    let period = shared.config.announce_interval_ms;
    if period == 0 {
        return;
    }
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(period));
    let listeners: Vec<_> = listeners
        .iter()
        .map(|(a, c)| serde_json::json!({"addr": a.to_string(), "channel": c}))
        .collect();
    loop {
        let state = tokio::select! {
            _ = tick.tick() => "up",
            _ = shutdown.changed() => "down",
        };
        let body = serde_json::json!({
            "node": shared.config.node,
            "instance": shared.instance,
            "state": state,
            "interval_ms": period,
            "listeners": listeners,
            "connections": shared.tracker.active(),
        })
        .to_string();
        shared.fire(shared.names.gateways_exchange(), String::new(), body);
        if state == "down" {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_alarm_longer_than_a_peers_lifetime_and_the_grace_loses_none_of_its_sessions() {
        use crate::broker::BrokerState;
        use crate::presence::{PresenceEvent, PresenceView};
        let t0 = std::time::Instant::now();
        let period = Duration::from_millis(100);
        let grace = Duration::from_secs(1);
        let mut a = PresenceView::new("a", grace);
        a.on_gateway("b", "1", true, period, t0);
        a.on_event(
            PresenceEvent {
                event: "client.connected".into(),
                session: "s1".into(),
                user: "ada".into(),
                node: "b".into(),
                channel: None,
                reason: None,
                by: None,
                keys: None,
                tenant: None,
            },
            t0,
        );
        // A memory alarm: connected, publishing blocked, b silent for three lifetimes
        // and twice the grace.
        let blocked = hears_peers(BrokerState::Connected, true);
        let mut now = t0;
        while now < t0 + period * 9 + grace * 2 {
            now += period;
            let due = presence_tick(&mut a, blocked, now);
            assert!(
                due.is_empty(),
                "nothing of b is lost during the alarm: {due:?}"
            );
        }
        assert!(a.user_online("ada", None));
        // The alarm clears: b announces itself again, and s1 stays.
        let hears = hears_peers(BrokerState::Connected, false);
        a.on_gateway("b", "1", true, period, now);
        assert!(presence_tick(&mut a, hears, now + period).is_empty());
        assert!(a.user_online("ada", None));
    }

    #[test]
    fn undelivered_reports_wait_for_a_snapshot_and_one_announcement_period() {
        let ms = Duration::from_millis;
        let period = ms(200);
        assert!(!presence_synced(ms(0), period, false), "at start");
        assert!(
            !presence_synced(ms(100), period, true),
            "peers not heard yet"
        );
        assert!(
            presence_synced(ms(200), period, true),
            "snapshot and a period"
        );
        assert!(
            !presence_synced(ms(900), period, false),
            "waiting for a snapshot"
        );
        assert!(
            presence_synced(SNAPSHOT_WAIT, period, false),
            "a lone gateway"
        );
        assert!(
            !presence_synced(ms(1_500), ms(5_000), true),
            "a long period"
        );
        assert!(
            presence_synced(SNAPSHOT_WAIT, ms(0), false),
            "no announcements"
        );
    }

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc "), Some("abc"));
        assert_eq!(bearer("BEARER  abc"), Some("abc"));
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
        assert_eq!(bearer(""), None);
    }

    #[test]
    fn one_takeover_keeps_the_single_form_and_many_go_out_in_batches_every_gateway_reads() {
        let one = takeover_bodies(vec![("s1".into(), 7)], "gw-a");
        assert_eq!(
            one,
            vec![r#"{"takeover":"s1","node":"gw-a","at_ms":7}"#.to_string()]
        );
        assert_eq!(
            takeovers_in(one[0].as_bytes()),
            Some((vec![("s1".to_string(), Some(7))], "gw-a".to_string()))
        );
        // From a gateway that does not say when: no time.
        assert_eq!(
            takeovers_in(br#"{"takeover":"s1","node":"gw-a"}"#),
            Some((vec![("s1".to_string(), None)], "gw-a".to_string()))
        );
        assert_eq!(
            takeovers_in(br#"{"takeovers":["s1","s2"],"node":"gw-a"}"#),
            Some((
                vec![("s1".to_string(), None), ("s2".to_string(), None)],
                "gw-a".to_string()
            ))
        );
        let many: Vec<(String, u64)> = (0..2_500).map(|i| (format!("s{i}"), i)).collect();
        let bodies = takeover_bodies(many.clone(), "gw-b");
        assert_eq!(bodies.len(), 3, "at most 1,000 sessions a message");
        let mut back = Vec::new();
        for b in &bodies {
            let (sessions, node) = takeovers_in(b.as_bytes()).expect("a batch is read");
            assert_eq!(node, "gw-b");
            back.extend(sessions);
        }
        let many: Vec<(String, Option<u64>)> =
            many.into_iter().map(|(s, at)| (s, Some(at))).collect();
        assert_eq!(back, many, "every session once, in order, with its time");
        assert!(takeovers_in(br#"{"node":"gw-a","instance":"i","state":"up"}"#).is_none());
        assert!(takeover_bodies(Vec::new(), "gw-a").is_empty());
    }
}
