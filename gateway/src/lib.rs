//! Warren's gateway: serves WebSocket clients speaking protocol `warren.v1` and bridges
//! them to RabbitMQ. Stateless: what services send to clients lives in one RabbitMQ
//! stream that every gateway reads, and a client resumes by its position in it, so
//! any gateway can resume any session.
//!
//! # Layout
//!
//! - [`auth`]: tokens verified into identities (`none`, `jwt`), permission checks.
//! - [`auth_service`]: `auth.mode = "service"`, the auth worker asked over RabbitMQ.
//! - `direct_reply`: request/reply over RabbitMQ's direct reply-to (auth service,
//!   HTTP API requests).
//! - [`config`]: one serde struct with defaults, TOML file → `WARREN_*` env → flags.
//! - [`topology`]: the exchanges and queues Warren declares, printable and idempotent.
//! - [`broker`]: two AMQP connections, pooled publisher (confirm) and consumer channels.
//! - [`presence`]: who is online across gateways; `client.disconnected` once per
//!   session, published through an ordered outbox at least once (a copy after a retry).
//! - [`services`]: the service registry's live view; `no_service` at once.
//! - [`session`]: session ids and ownership, takeover, subscriptions, seq/ack bookkeeping.
//! - [`http_api`]: the external HTTP API (`/external`, `/publish`, `/request`).
//! - [`hub`]: the outbound stream read once, fanned out in memory.
//! - [`delivery`]: an outbound-stream message → `deliver` / `reply` / `error` frame.
//! - `inbound`: the checks and AMQP properties of every client write, shared by the
//!   WebSocket connection and the HTTP API.
//! - `session_core`: a session's decisions, pure: validation, positions, flow control,
//!   heartbeats; unit-tested without a socket or a broker.
//! - `connection`: the per-WebSocket `select!` loop around `session_core`: socket IO,
//!   the hub, publishes and their confirms.
//! - `server`: axum listeners (`/ws`, `/healthz`, `/metrics`, `/services`), shared
//!   state, announcements.
//! - `routes`: the routes each listener serves, and the JSON `404` / `405` of the
//!   requests none of them takes.
//! - [`limits`]: connections per IP and per user, new connections and frames per second.
//! - [`listener`]: TCP listeners with a backlog, TCP_NODELAY and a header deadline.
//! - [`metrics`]: counters rendered at `/metrics` (Prometheus text format).
//! - [`error`]: the gateway's error type, [`GatewayError`].
//! - `fault`: delays tests inject (feature `fault-injection` only).
//!
//! [`Gateway::start`] connects, declares the topology and binds the listeners;
//! [`Gateway::shutdown`] drains: stops accepting, tells clients to move, waits
//! (bounded) for their pending confirms and for the HTTP API calls in progress, and
//! closes them with 1001 (going away); what a client did not acknowledge is replayed
//! from its position wherever it resumes.

pub mod auth;
pub mod auth_service;
pub mod broker;
pub mod config;
pub mod confirms;
mod connection;
pub mod delivery;
mod direct_reply;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod http_api;
pub mod hub;
mod inbound;
pub mod limits;
pub mod listener;
pub mod metrics;
mod outbound;
pub mod presence;
pub mod replay;
mod routes;
mod server;
pub mod services;
pub mod session;
mod session_core;
mod socket;
mod streams;
pub mod topics;
pub mod topology;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    AuthConfig, AuthMode, AuthServiceConfig, Cli, Command, Config, HttpApiConfig, JwtConfig,
    ListenerConfig, NoServiceMode, Overrides, QueueType, RequestReplies, TenantOptions,
    TenantsConfig, TopologyAction,
};
pub use error::GatewayError;
pub use topology::Topology;

use crate::broker::Broker;
use crate::server::Shared;

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    listeners: Vec<(SocketAddr, Option<String>)>,
    http_api: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    servers: Vec<JoinHandle<()>>,
    /// The admin listener's server and what stops it: it serves through the drain
    /// (`/healthz` answers 503 `draining`, `/metrics` can be scraped) and stops last.
    admin_server: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    announcer: JoinHandle<()>,
}

impl Gateway {
    /// Validates the configuration, connects to RabbitMQ, declares the topology and
    /// binds every listener.
    ///
    /// # Errors
    /// [`GatewayError::Config`] for an invalid configuration, [`GatewayError::Connect`]
    /// or [`GatewayError::Amqp`] when RabbitMQ cannot be reached or refuses the
    /// topology, [`GatewayError::Bind`] when a listener address is taken.
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        config.validate()?;
        config.check_to_serve()?;
        let verifier = auth::Verifier::from_config(&config.auth)?;
        verifier.fetch_remote_keys().await;
        if config.auth.mode == AuthMode::None
            && config.listen.iter().any(|l| !l.bind.ip().is_loopback())
        {
            tracing::warn!(
                "AUTH IS OFF: auth.mode = \"none\" trusts any token as the user id and lets \
                 every client do everything, and this gateway listens beyond loopback. \
                 Use auth.mode = \"jwt\" anywhere but a development machine."
            );
        }
        let metrics = Arc::new(metrics::Metrics::default());
        let broker = Broker::connect(&config, metrics.clone()).await?;
        let topology = Topology::from_config(&config);
        topology.apply(&broker).await?;
        broker.set_topology(topology);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut bound = Vec::new();
        for l in &config.listen {
            let listener = listener::bind(l.bind, config.listen_backlog).map_err(|source| {
                GatewayError::Bind {
                    addr: l.bind,
                    source,
                }
            })?;
            let addr = listener.local_addr().map_err(|source| GatewayError::Bind {
                addr: l.bind,
                source,
            })?;
            bound.push((listener, addr, l.channel.clone()));
        }
        let bind_own = |bind: Option<SocketAddr>| match bind {
            Some(bind) => {
                let bind_error = |source| GatewayError::Bind { addr: bind, source };
                let listener = listener::bind(bind, config.listen_backlog).map_err(bind_error)?;
                let addr = listener.local_addr().map_err(bind_error)?;
                Ok(Some((listener, addr)))
            }
            None => Ok::<_, GatewayError>(None),
        };
        let api_listener = bind_own(config.http_api.listen.filter(|_| config.http_api.enabled))?;
        let admin_listener = bind_own(config.admin_listen)?;
        let (addressed_tx, addressed_rx) = tokio::sync::mpsc::channel(10_000);
        // Each stream (the outbound stream, and each channel's own) read once, by its hub.
        // Readers for sessions behind a ring, all streams together.
        let reader_slots = replay::ReaderSlots::new(
            config.max_stream_readers,
            config.max_stream_readers_per_user,
            metrics.clone(),
        );
        let streams = streams::Streams::new(&config, |(channel, name)| {
            let hub = hub::Hub::with_tenants(config.hub_buffer_messages, config.tenants.enabled);
            tokio::spawn(hub::run_reader(
                hub.clone(),
                broker.clone(),
                name.clone(),
                config.node.clone(),
                config.presence.then(|| addressed_tx.clone()),
                shutdown_rx.clone(),
            ));
            let replays = Arc::new(replay::Replays::new(
                broker.clone(),
                name.clone(),
                config.node.clone(),
                metrics.clone(),
                reader_slots.clone(),
            ));
            streams::Source {
                channel,
                name,
                hub,
                replays,
            }
        });
        drop(addressed_tx);
        // Sessions opened before a reader knows its stream's tail would have no
        // position to resume from: 3 s for all readers together.
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        for s in streams.all() {
            s.hub.wait_ready(until).await;
        }
        let shared = Arc::new(Shared::new(
            config,
            verifier,
            broker,
            metrics,
            shutdown_rx,
            streams,
        ));
        // The broker listeners consume before the gateway serves (its peers' events
        // meanwhile would be missed).
        tokio::spawn(server::listen_for_takeovers(shared.clone()));
        tokio::spawn(server::listen_for_services(shared.clone()));
        tokio::spawn(server::keep_presence(shared.clone()));
        tokio::spawn(server::publish_presence(shared.clone()));
        if !shared.wait_listening(3, Duration::from_secs(3)).await {
            tracing::warn!("the broker listeners (takeovers, services, presence) did not start within 3 s; serving anyway");
        }
        let mut servers = Vec::new();
        let mut listeners = Vec::new();
        for (listener, addr, channel) in bound {
            let app = server::router(shared.clone(), channel.clone());
            servers.push(serve(&shared, shared.shutdown.clone(), listener, addr, app));
            tracing::info!(%addr, channel = channel.as_deref().unwrap_or("*"), node = %shared.config.node, "listening");
            listeners.push((addr, channel));
        }
        let http_api = match api_listener {
            Some((listener, addr)) => {
                servers.push(serve(
                    &shared,
                    shared.shutdown.clone(),
                    listener,
                    addr,
                    http_api::own_router(shared.clone()),
                ));
                Some(addr)
            }
            None if shared.config.http_api.enabled => listeners
                .iter()
                .find(|(_, channel)| channel.is_none())
                .map(|(addr, _)| *addr),
            None => None,
        };
        if let Some(addr) = http_api {
            tracing::info!(%addr, "HTTP API listening");
        }
        let mut admin_server = None;
        let admin = admin_listener.map(|(listener, addr)| {
            let (stop, stopped) = watch::channel(false);
            let server = serve(
                &shared,
                stopped,
                listener,
                addr,
                server::admin_router(shared.clone()),
            );
            admin_server = Some((stop, server));
            tracing::info!(%addr, "admin listener (/healthz, /metrics, /services)");
            addr
        });
        let announcer = tokio::spawn(server::announce(shared.clone(), listeners.clone()));
        tokio::spawn(server::report_undelivered(shared.clone(), addressed_rx));
        // Runs until the broker is closed, at the end of the drain, which still
        // publishes (pending confirms, presence events, the last announcement).
        tokio::spawn(
            shared
                .broker
                .clone()
                .supervise(Duration::from_secs(1), shared.shutdown.clone()),
        );
        Ok(Gateway {
            shared,
            shutdown_tx,
            listeners,
            http_api,
            admin,
            servers,
            admin_server,
            announcer,
        })
    }

    /// The bound listener addresses (port 0 resolved) and the channel each is pinned
    /// to (`None`: all channels).
    pub fn listeners(&self) -> Vec<(SocketAddr, Option<String>)> {
        self.listeners.clone()
    }

    /// The admin listener's address (`admin_listen`), if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Where the HTTP API is served (its own listener, or the first WebSocket listener
    /// serving all channels); `None` when it is off.
    pub fn http_api_addr(&self) -> Option<SocketAddr> {
        self.http_api
    }

    /// The configuration the gateway runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Graceful shutdown (drain): stop accepting, stop sending deliveries, send
    /// `drain`, let every client leave while pending confirms finish and the HTTP API
    /// calls in progress end (up to `shutdown_grace_ms`), close the sockets with 1001
    /// (going away), then close the AMQP connections. Clients resume elsewhere from
    /// their stream position.
    pub async fn shutdown(self) {
        tracing::info!(node = %self.shared.config.node, "shutting down");
        let began = std::time::Instant::now();
        let _ = self.shutdown_tx.send(true);
        let grace =
            Duration::from_millis(self.shared.config.shutdown_grace_ms) + Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + grace;
        // The HTTP API calls in progress finish as a WebSocket connection's drain does,
        // within `shutdown_grace_ms`: a request's reply, a publish's confirm (new calls
        // are not taken: the listeners stop accepting, and one that got in is refused
        // `broker_unavailable`). They had only the servers' 2 s below, then the broker
        // their answers need was closed under them.
        let calls_grace = Duration::from_millis(self.shared.config.shutdown_grace_ms);
        let (connections, calls) = tokio::join!(
            tokio::time::timeout(grace, self.shared.tracker.wait_idle()),
            tokio::time::timeout(calls_grace, self.shared.api_calls.wait_idle()),
        );
        if connections.is_err() {
            tracing::warn!(
                left = self.shared.tracker.active(),
                "connections still open after the grace period"
            );
        }
        if calls.is_err() {
            tracing::warn!(
                left = self.shared.api_calls.active(),
                "HTTP API calls still in progress after the grace period"
            );
        }
        for s in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.announcer).await;
        // With no live peer to announce them gone after the grace, this gateway does,
        // now: else services counted the users of sessions that never come back online
        // for good. Its peers were heard through the drain (their `down` when the whole
        // deployment stops, their takeovers of sessions resumed there), unless RabbitMQ
        // was away or blocked: then as they were when the drain began.
        let now = std::time::Instant::now();
        let broker = &self.shared.broker;
        let heard_until = if server::hears_peers(broker.state(), broker.is_blocked()) {
            now
        } else {
            began
        };
        let alone = self.shared.presence_view().left_alone(heard_until, now);
        self.shared.done_hearing.send_replace(true);
        for (session, held) in alone {
            self.shared.disconnected(&session, held, "gateway_lost");
        }
        // The presence events still in the outbox go out within the same grace (the
        // last announcement too).
        let flush = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(50));
        let left = self.shared.outbox.flush(flush).await;
        if left > 0 {
            tracing::warn!(
                left,
                "presence events not confirmed by RabbitMQ before shutdown; lost"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some((stop, server)) = self.admin_server {
            let _ = stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        }
        self.shared.broker.close().await;
        tracing::info!(node = %self.shared.config.node, "stopped");
    }
}

/// Serves `app` on `listener` (with the header deadline) until `stop` turns true.
fn serve(
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: axum::Router,
) -> JoinHandle<()> {
    let header_timeout = Duration::from_millis(shared.config.header_read_timeout_ms);
    // A hello (or a POC client's first packet) is one frame: at most max_frame_bytes,
    // plus room for WebSocket framing, before the session opens.
    let pre_hello_cap = shared.config.max_frame_bytes + 4096;
    let listener = listener::Deadlined::new(listener, header_timeout, pre_hello_cap);
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<listener::PeerAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(%addr, error = %e, "listener failed");
        }
    })
}
