//! The HTTP side: axum routers (`/ws` upgrading to the `warren.v1` subprotocol,
//! `/healthz`, `/metrics`, and the HTTP API when it is on), one per listener, each serving every channel or pinned to one; the
//! state shared by all connections; the tracker that lets shutdown wait for them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{AUTHORIZATION, COOKIE, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
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
use crate::limits::{LimitSettings, Limiter};
use crate::listener::PeerAddr;
use crate::metrics::{self, Metrics};
use crate::session::Registry;

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
    /// The auth service link, in `auth.mode = "service"`.
    pub(crate) auth_client: Option<AuthClient>,
    pub(crate) names: Names,
    pub(crate) broker: Arc<Broker>,
    pub(crate) registry: Registry,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) tracker: Tracker,
    pub(crate) metrics: Arc<Metrics>,
    /// The outbound fan-out, in `outbound = "stream"`.
    pub(crate) hub: Option<Arc<crate::hub::Hub>>,
    /// Replies to the HTTP API's requests (direct reply-to; opened at the first).
    pub(crate) http_replies: DirectReply,
    next_conn: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        verifier: Verifier,
        broker: Arc<Broker>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        hub: Option<Arc<crate::hub::Hub>>,
    ) -> Self {
        Shared {
            hub,
            names: Names::new(&config.namespace),
            limiter: Limiter::new(LimitSettings {
                connections_per_ip: config.max_connections_per_ip,
                new_connections_per_ip_per_s: config.max_new_connections_per_ip_per_s,
                connections_per_user: config.max_connections_per_user,
            }),
            auth_client: (config.auth.mode == AuthMode::Service).then(|| {
                AuthClient::new(
                    broker.clone(),
                    &Names::new(&config.namespace),
                    &config.auth.service,
                )
            }),
            http_replies: DirectReply::new(broker.clone()),
            config,
            verifier,
            broker,
            registry: Registry::default(),
            shutdown,
            tracker: Tracker::default(),
            metrics,
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

    /// Publishes a presence event (`client.connected` / `client.disconnected`), in the
    /// background; losing one is harmless.
    pub(crate) fn presence(
        &self,
        event: &'static str,
        session: &str,
        user: &str,
        channel: Option<&str>,
    ) {
        if !self.config.presence {
            return;
        }
        let body = serde_json::json!({
            "event": event,
            "session": session,
            "user": user,
            "node": self.config.node,
            "channel": channel,
        })
        .to_string();
        self.fire(self.names.presence_exchange(), event.to_string(), body);
    }

    /// Publishes a small JSON message without waiting for its confirm.
    pub(crate) fn fire(&self, exchange: String, key: String, body: String) {
        let broker = self.broker.clone();
        tokio::spawn(async move {
            let Ok(ch) = broker.publisher().await else {
                return;
            };
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_app_id("warren-gateway".into())
                .with_message_id(ShortString::from(uuid::Uuid::new_v4().simple().to_string()));
            match ch
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(key),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props,
                )
                .await
            {
                Ok(confirm) => {
                    let _ = confirm.await;
                }
                Err(e) => tracing::debug!(error = %e, "event publish failed"),
            }
        });
    }
}

/// What the WebSocket upgrade request told about the client.
#[derive(Debug, Clone)]
pub(crate) struct Upgrade {
    /// The peer's address.
    pub(crate) peer: SocketAddr,
    /// The `Origin` header, if any.
    pub(crate) origin: Option<String>,
    /// A token from `Authorization: Bearer` or the configured cookie.
    pub(crate) token: Option<String>,
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
    let router = Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(ListenerState {
            shared: shared.clone(),
            pinned,
        });
    if with_api {
        router.merge(crate::http_api::router(shared))
    } else {
        router
    }
}

async fn upgrade(
    State(st): State<ListenerState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if *st.shared.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let config = &st.shared.config;
    let origin = headers
        .get(ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(origin) = origin {
        if !origin_allowed(&config.auth.allowed_origins, origin) {
            metrics::add(&st.shared.metrics.refused_origin, 1);
            tracing::info!(origin, "upgrade refused: origin not allowed");
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    let ip_slot = if config.ip_limits_on_loopback || !peer.ip().is_loopback() {
        match st
            .shared
            .limiter
            .admit_ip(peer.ip(), std::time::Instant::now())
        {
            Ok(slot) => Some(slot),
            Err(refused) => {
                metrics::add(&st.shared.metrics.refused_limit, 1);
                let limit = match refused {
                    crate::limits::Refused::ConnectionsPerIp => config.max_connections_per_ip,
                    _ => config.max_new_connections_per_ip_per_s,
                };
                tracing::info!(peer = %peer.ip(), "upgrade refused: {}", refused.message(limit));
                return (StatusCode::TOO_MANY_REQUESTS, refused.message(limit)).into_response();
            }
        }
    } else {
        None
    };
    let upgrade = Upgrade {
        peer,
        origin: origin.map(str::to_string),
        token: upgrade_token(&headers, config.auth.token_cookie.as_deref()),
    };
    // Small socket buffers: tungstenite's 128 KiB default read buffer (zero-filled on
    // every read) was most of an idle session's memory and CPU (BENCHMARKS.md). Larger
    // frames still work: the buffer grows for them.
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(4 * 1024)
        .max_message_size(config.hard_frame_bytes())
        .max_frame_size(config.hard_frame_bytes())
        .on_upgrade(move |socket| async move {
            let _ip_slot = ip_slot;
            crate::connection::serve(socket, st.shared, st.pinned, upgrade).await
        })
}

/// Whether `origin` may open a WebSocket: `allowed` empty allows all; otherwise an
/// exact entry, or an entry `scheme://*.domain[:port]` that matches any subdomain of
/// `domain` (not `domain` itself).
pub(crate) fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    allowed.iter().any(|a| {
        let a = a.trim_end_matches('/').to_ascii_lowercase();
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
fn upgrade_token(headers: &HeaderMap, cookie: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(t) = v.strip_prefix("Bearer ").map(str::trim) {
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

async fn healthz(State(st): State<ListenerState>) -> Response {
    let broker = st.shared.broker.state();
    let shutting_down = *st.shared.shutdown.borrow();
    let ok = broker == BrokerState::Connected && !shutting_down;
    let body = serde_json::json!({
        "status": if ok { "ok" } else if shutting_down { "draining" } else { "degraded" },
        "node": st.shared.config.node,
        "namespace": st.shared.config.namespace,
        "broker": broker.as_str(),
        "broker_blocked": st.shared.broker.is_blocked(),
        "connections": st.shared.tracker.active(),
        "sessions": st.shared.registry.len(),
        "overflow_dropped": st.shared.metrics.overflow_dropped.load(std::sync::atomic::Ordering::Relaxed),
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
}

impl Shared {
    /// Asks every other gateway to release `session` (its consumer is still there
    /// while a client resumes it here).
    pub(crate) fn request_takeover(&self, session: &str) {
        let body = serde_json::to_string(&TakeoverRequest {
            takeover: session.to_string(),
            node: self.config.node.clone(),
        })
        .expect("a takeover request serialises");
        self.fire(self.names.gateways_exchange(), String::new(), body);
    }
}

/// Listens on `warren.gateways` (an exclusive, server-named queue, no ack) for takeover
/// requests of other gateways and hands them to the local connection serving the
/// session. Re-subscribes after a broker reconnect; ends at shutdown.
pub(crate) async fn listen_for_takeovers(shared: Arc<Shared>) {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let mut shutdown = shared.shutdown.clone();
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
                .map_err(|e| crate::GatewayError::amqp("queue.declare takeover", e))?;
            ch.queue_bind(
                q.name().clone(),
                ShortString::from(shared.names.gateways_exchange()),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| crate::GatewayError::amqp("queue.bind takeover", e))?;
            let mut consumer = ch
                .basic_consume(
                    q.name().clone(),
                    ShortString::from(format!("{}.takeover", shared.config.node)),
                    BasicConsumeOptions {
                        no_ack: true,
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| crate::GatewayError::amqp("basic.consume takeover", e))?;
            while let Some(Ok(d)) = consumer.next().await {
                let Ok(req) = serde_json::from_slice::<TakeoverRequest>(&d.data) else {
                    continue; // an announcement
                };
                if req.node != shared.config.node && shared.registry.ask_to_release(&req.takeover) {
                    tracing::info!(session = %req.takeover, by = %req.node, "session resumed on another gateway; releasing it");
                }
            }
            Ok::<(), crate::GatewayError>(())
        };
        tokio::select! {
            res = listen => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "takeover listener failed; retrying");
                }
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
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
            "state": state,
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
