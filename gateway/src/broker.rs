//! The gateway's link to RabbitMQ: two AMQP connections per gateway (one for
//! publishing, one for consuming, so that broker flow control on publishers never
//! stalls deliveries), a pool of publisher channels in confirm mode, a few consumer
//! channels shared by the gateway's own listeners (takeovers, services, presence),
//! scratch channels for the stream readers, and control channels for declarations and
//! bindings (as many as publisher channels, so sessions do not queue behind one). Never
//! one connection (or channel) per client.
//!
//! Failures are noticed from lapin's connection events (errors, `connection.blocked`)
//! and by polling the connection status. Only the supervisor task reconnects: it opens
//! the replacement of whichever connection is down, trying the NEXT configured URI
//! first and then the others in turn, swaps it in, re-declares the topology, and
//! announces the new state on a watch channel. Callers never reconnect themselves and
//! never queue behind a reconnect: they wait on that watch channel, bounded by
//! `broker_wait_ms`, and then fail with [`GatewayError::Unavailable`].
//!
//! Every connection attempt (TCP, TLS, AMQP handshake and the connection's channels)
//! is bounded by `amqp_connect_timeout_ms`: a RabbitMQ address that takes the TCP
//! connection and never answers counts as unreachable, and the next URI is tried. The
//! supervisor runs until [`Broker::close`], so that connections lost while the
//! gateway drains come back for what the drain still publishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicQosOptions, ConfirmSelectOptions};
use lapin::tcp::{AsyncTcpStream, OwnedTLSConfig};
use lapin::types::LongString;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::{watch, Mutex, Notify};

use crate::config::{redact, Config};
use crate::confirms::Publisher;
use crate::error::GatewayError;
use crate::metrics::{self, Metrics};
use crate::topology::Topology;

/// Whether the gateway currently has its RabbitMQ connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Both connections are open.
    Connected,
    /// At least one connection is down; it is re-established on next use.
    Disconnected,
    /// [`Broker::close`] was called.
    Closed,
}

/// How long [`Broker::close`] waits for each connection's close-ok.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl BrokerState {
    /// Lower-case name for `/healthz`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Connected => "connected",
            BrokerState::Disconnected => "disconnected",
            BrokerState::Closed => "closed",
        }
    }
}

/// Which pool a channel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Publisher,
    Consumer,
}

struct Links {
    publish_conn: Arc<Connection>,
    consume_conn: Arc<Connection>,
    publishers: Vec<Publisher>,
    consumers: Vec<Channel>,
    controls: Vec<Channel>,
}

impl Links {
    fn intact(&self) -> bool {
        self.publish_conn.status().connected() && self.consume_conn.status().connected()
    }
}

/// A channel pool's element: a consumer channel, or a publisher channel with its
/// confirms' driver.
trait Pooled: Clone {
    const POOL: Pool;
    fn channel(&self) -> &Channel;
    fn wrap(channel: Channel) -> Self;
    fn slots(links: &Links) -> (&Arc<Connection>, &Vec<Self>);
    fn slots_mut(links: &mut Links) -> (&Arc<Connection>, &mut Vec<Self>);
}

impl Pooled for Publisher {
    const POOL: Pool = Pool::Publisher;
    fn channel(&self) -> &Channel {
        Publisher::channel(self)
    }
    fn wrap(channel: Channel) -> Self {
        Publisher::new(channel)
    }
    fn slots(links: &Links) -> (&Arc<Connection>, &Vec<Self>) {
        (&links.publish_conn, &links.publishers)
    }
    fn slots_mut(links: &mut Links) -> (&Arc<Connection>, &mut Vec<Self>) {
        (&links.publish_conn, &mut links.publishers)
    }
}

impl Pooled for Channel {
    const POOL: Pool = Pool::Consumer;
    fn channel(&self) -> &Channel {
        self
    }
    fn wrap(channel: Channel) -> Self {
        channel
    }
    fn slots(links: &Links) -> (&Arc<Connection>, &Vec<Self>) {
        (&links.consume_conn, &links.consumers)
    }
    fn slots_mut(links: &mut Links) -> (&Arc<Connection>, &mut Vec<Self>) {
        (&links.consume_conn, &mut links.consumers)
    }
}

/// Uses of a control channel before it is replaced by a fresh one (see
/// [`Broker::control`]).
const CONTROL_CHANNEL_USES: usize = 256;

/// The pooled AMQP connections and channels of one gateway.
pub struct Broker {
    uris: Vec<String>,
    node: String,
    publisher_channels: usize,
    consumer_channels: usize,
    delivery_window: u16,
    wait: Duration,
    /// Bound of one connection attempt to one URI (`amqp_connect_timeout_ms`).
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Held only briefly (to take or replace a channel), never across a reconnect.
    links: Mutex<Option<Links>>,
    /// The topology re-declared after every reconnect.
    topology: std::sync::Mutex<Option<Topology>>,
    state_tx: watch::Sender<BrokerState>,
    /// Wakes the supervisor when a failure is noticed.
    kick: Notify,
    /// Index of the URI the last connection was made to.
    current_uri: AtomicUsize,
    /// When a connection attempt to each URI (by index) last failed, cleared when one
    /// succeeds: such a URI is tried after the others for [`FAILED_URI_LAST_FOR`].
    uri_failed: std::sync::Mutex<Vec<Option<Instant>>>,
    closed: AtomicBool,
    /// Set while RabbitMQ blocks the publishing connection (resource alarm).
    blocked: AtomicBool,
    /// The largest frame the publishing connection agreed on ([`Broker::frame_max`]).
    frame_max: std::sync::atomic::AtomicU32,
    next_publisher: AtomicUsize,
    next_consumer: AtomicUsize,
    next_control: AtomicUsize,
    /// The channels for publishes to the outbound stream, by Warren channel
    /// ([`Broker::stream_publisher`]).
    stream_publisher: std::sync::Mutex<HashMap<String, Publisher>>,
    /// One lock per Warren channel, held while its stream publisher is opened: one
    /// channel each however many publishes ask at once, and a slow open for one
    /// channel holds up no other.
    stream_openers: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// When each publisher channel (by id) was opened ([`Broker::retire_nacked`]).
    opened: std::sync::Mutex<HashMap<u16, Instant>>,
    /// Pooled publisher channels (by id) being replaced right now: one replacement
    /// however many publishes on a channel fail at once.
    retiring: std::sync::Mutex<std::collections::HashSet<u16>>,
}

/// How long a URI whose connection attempt failed is tried after the others: the
/// consuming connection, opened right after the publishing one passed over a frozen
/// address, does not wait `amqp_connect_timeout_ms` on it again.
const FAILED_URI_LAST_FOR: Duration = Duration::from_secs(30);

/// The order in which to try the URIs (by index; `failed.len()` of them): from `first`
/// on in turn, those that failed within [`FAILED_URI_LAST_FOR`] before `now` after the
/// others, in the same turn.
fn attempt_order(first: usize, failed: &[Option<Instant>], now: Instant) -> Vec<usize> {
    let n = failed.len();
    let recently = |i: &usize| {
        failed[*i].is_some_and(|at| now.saturating_duration_since(at) < FAILED_URI_LAST_FOR)
    };
    let (fine, failed): (Vec<usize>, Vec<usize>) =
        (0..n).map(|k| (first + k) % n).partition(|i| !recently(i));
    fine.into_iter().chain(failed).collect()
}

/// A nacked publisher channel younger than this is kept ([`Broker::retire_nacked`]).
pub(crate) const NACKED_CHANNEL_MIN_AGE: Duration = Duration::from_secs(1);

impl Broker {
    /// Connects to the first URI that accepts and opens the channel pools.
    ///
    /// # Errors
    /// [`GatewayError::Connect`] when no URI accepts, [`GatewayError::Amqp`] when a
    /// channel cannot be opened.
    pub async fn connect(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Broker>, GatewayError> {
        let (state_tx, _) = watch::channel(BrokerState::Disconnected);
        let broker = Arc::new(Broker {
            uris: config.amqp_uri.clone(),
            node: config.node.clone(),
            publisher_channels: config.publisher_channels,
            consumer_channels: config.consumer_channels,
            delivery_window: config.delivery_window,
            wait: Duration::from_millis(config.broker_wait_ms),
            connect_timeout: Duration::from_millis(config.amqp_connect_timeout_ms),
            metrics,
            links: Mutex::new(None),
            topology: std::sync::Mutex::new(None),
            state_tx,
            kick: Notify::new(),
            current_uri: AtomicUsize::new(config.amqp_uri.len().saturating_sub(1)),
            uri_failed: std::sync::Mutex::new(vec![None; config.amqp_uri.len()]),
            closed: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            frame_max: std::sync::atomic::AtomicU32::new(0),
            next_publisher: AtomicUsize::new(0),
            next_consumer: AtomicUsize::new(0),
            next_control: AtomicUsize::new(0),
            stream_publisher: std::sync::Mutex::new(HashMap::new()),
            stream_openers: std::sync::Mutex::new(HashMap::new()),
            opened: std::sync::Mutex::new(HashMap::new()),
            retiring: std::sync::Mutex::new(std::collections::HashSet::new()),
        });
        let links = broker.open_at_start(config.broker_start_wait_ms).await?;
        *broker.links.lock().await = Some(links);
        broker.state_tx.send_replace(BrokerState::Connected);
        Ok(broker)
    }

    /// Remembers the topology to re-declare after every reconnect.
    pub fn set_topology(&self, topology: Topology) {
        *self.topology.lock().unwrap_or_else(|e| e.into_inner()) = Some(topology);
    }

    /// Declares the remembered topology again (idempotent): after every reconnect, and
    /// for a stream deleted while the gateway reads it. Nothing when none was set.
    ///
    /// # Errors
    /// As [`Topology::apply`].
    pub async fn declare_topology_again(&self) -> Result<(), GatewayError> {
        let topology = self
            .topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match topology {
            Some(t) => t.apply(self).await.map(|_kept| ()),
            None => Ok(()),
        }
    }

    /// Connects to the URI after the current one, then the others in turn, each within
    /// `amqp_connect_timeout_ms`; URIs that failed in the last [`FAILED_URI_LAST_FOR`]
    /// are tried after the others ([`attempt_order`]).
    async fn open_connection(
        self: &Arc<Self>,
        role: &'static str,
    ) -> Result<Connection, GatewayError> {
        let mut last = None;
        let n = self.uris.len();
        let first = (self.current_uri.load(Ordering::Acquire) + 1) % n;
        let order = attempt_order(first, &self.lock_uri_failed(), Instant::now());
        for index in order {
            let uri = &self.uris[index];
            let props = ConnectionProperties::default().with_connection_name(LongString::from(
                format!("warren-gateway {} {role}", self.node),
            ));
            match connect_within(uri, props, self.connect_timeout).await {
                Ok(conn) => {
                    tracing::info!(uri = %redact(uri), role, node = %self.node, "connected to RabbitMQ");
                    self.current_uri.store(index, Ordering::Release);
                    self.lock_uri_failed()[index] = None;
                    // Publishes are checked against it, and they go out on the
                    // publishing connection only.
                    if role == PUBLISH {
                        self.frame_max
                            .store(conn.configuration().frame_max(), Ordering::Release);
                    }
                    self.watch_events(&conn, role);
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::warn!(uri = %redact(uri), role, error = %e, "RabbitMQ connection failed");
                    self.lock_uri_failed()[index] = Some(Instant::now());
                    last = Some(e);
                }
            }
        }
        Err(GatewayError::Connect {
            uris: self
                .uris
                .iter()
                .map(|u| redact(u))
                .collect::<Vec<_>>()
                .join(", "),
            source: last.expect("at least one URI is configured"),
        })
    }

    fn lock_uri_failed(&self) -> std::sync::MutexGuard<'_, Vec<Option<Instant>>> {
        self.uri_failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows a connection's events: errors wake the supervisor, `connection.blocked`
    /// is logged, counted and makes publishers wait.
    fn watch_events(self: &Arc<Self>, conn: &Connection, role: &'static str) {
        let mut events = conn.events_listener();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let Some(broker) = me.upgrade() else { return };
                match ev {
                    // lapin reports a channel RabbitMQ closed (a passive declare of a
                    // missing queue, as `topology check` and the service check make)
                    // here too; the connection is fine.
                    Event::Error(e) if crate::error::is_channel_error(&e) => {
                        tracing::debug!(role, node = %broker.node, error = %e, "RabbitMQ closed a channel");
                    }
                    Event::Error(e) => {
                        tracing::warn!(role, node = %broker.node, error = %e, "AMQP connection failed");
                        broker.set_state(BrokerState::Disconnected);
                        broker.kick.notify_one();
                    }
                    Event::ConnectionBlocked(reason) if role == PUBLISH => {
                        #[cfg(feature = "fault-injection")]
                        crate::fault::delay(crate::fault::BLOCKED_NOTICE_DELAY_MS).await;
                        tracing::warn!(role, node = %broker.node, %reason, "RabbitMQ blocked publishing");
                        metrics::add(&broker.metrics.broker_blocked, 1);
                        broker.blocked.store(true, Ordering::Release);
                        broker.state_tx.send_modify(|_| {});
                    }
                    Event::ConnectionUnblocked if role == PUBLISH => {
                        tracing::info!(role, node = %broker.node, "RabbitMQ unblocked publishing");
                        broker.blocked.store(false, Ordering::Release);
                        broker.state_tx.send_modify(|_| {});
                    }
                    _ => {}
                }
            }
        });
    }

    /// [`Broker::open`], tried again while RabbitMQ is unreachable (not yet started,
    /// or restarting) for up to `wait_ms`, saying so at each attempt. A refused login
    /// or another error fails at once.
    async fn open_at_start(self: &Arc<Self>, wait_ms: u64) -> Result<Links, GatewayError> {
        let started = Instant::now();
        let wait = Duration::from_millis(wait_ms);
        for attempt in 1u32.. {
            let e = match self.open().await {
                Ok(links) => return Ok(links),
                Err(e) if e.is_unreachable() => e,
                Err(e) => return Err(e),
            };
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                if wait_ms == 0 {
                    return Err(e);
                }
                return Err(GatewayError::StartWait {
                    waited_ms: wait_ms,
                    source: Box::new(e),
                });
            }
            let pause = Duration::from_millis(250u64 << attempt.min(3)).min(left);
            tracing::warn!(
                node = %self.node,
                attempt,
                error = %e,
                "RabbitMQ is not reachable yet; trying again in {} ms (giving up {} s after \
                 start, broker_start_wait_ms)",
                pause.as_millis(),
                wait.as_secs()
            );
            tokio::time::sleep(pause).await;
        }
        unreachable!("the attempts never run out")
    }

    async fn open(self: &Arc<Self>) -> Result<Links, GatewayError> {
        let (publish_conn, publishers, controls) = self.open_publishing().await?;
        let (consume_conn, consumers) = match self.open_consuming().await {
            Ok(opened) => opened,
            Err(e) => {
                // Not left open behind a start that tries again (bounded: RabbitMQ may
                // not answer).
                let closing = publish_conn.close(0, "consuming connection failed".into());
                let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
                return Err(e);
            }
        };
        Ok(Links {
            publish_conn: Arc::new(publish_conn),
            consume_conn: Arc::new(consume_conn),
            publishers,
            consumers,
            controls,
        })
    }

    async fn open_publishing(
        self: &Arc<Self>,
    ) -> Result<(Connection, Vec<Publisher>, Vec<Channel>), GatewayError> {
        let conn = self.open_connection(PUBLISH).await?;
        let channels = async {
            let mut publishers = Vec::with_capacity(self.publisher_channels);
            let mut controls = Vec::with_capacity(self.publisher_channels);
            for _ in 0..self.publisher_channels {
                publishers.push(self.new_pooled::<Publisher>(&conn).await?);
                controls.push(
                    conn.create_channel()
                        .await
                        .map_err(|e| GatewayError::amqp("channel.open", e))?,
                );
            }
            Ok((publishers, controls))
        };
        // On failure the connection (and the channels opened) are dropped: lapin closes
        // a connection whose last handle goes.
        let (publishers, controls) = self.channels_within(PUBLISH, channels).await?;
        Ok((conn, publishers, controls))
    }

    async fn open_consuming(self: &Arc<Self>) -> Result<(Connection, Vec<Channel>), GatewayError> {
        let conn = self.open_connection(CONSUME).await?;
        let channels = async {
            let mut consumers = Vec::with_capacity(self.consumer_channels);
            for _ in 0..self.consumer_channels {
                consumers.push(self.new_pooled::<Channel>(&conn).await?);
            }
            Ok(consumers)
        };
        let consumers = self.channels_within(CONSUME, channels).await?;
        Ok((conn, consumers))
    }

    /// `opening` (a new connection's channels), within `amqp_connect_timeout_ms`; past
    /// it RabbitMQ counts as unreachable, as for a connection that does not open.
    async fn channels_within<T>(
        &self,
        role: &'static str,
        opening: impl std::future::Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        match tokio::time::timeout(self.connect_timeout, opening).await {
            Ok(opened) => opened,
            Err(_) => {
                tracing::warn!(role, node = %self.node, "RabbitMQ did not open the connection's channels in time");
                Err(GatewayError::Connect {
                    uris: redact(&self.uris[self.current_uri.load(Ordering::Acquire)]),
                    source: timed_out(self.connect_timeout, "opening the connection's channels"),
                })
            }
        }
    }

    /// A fresh element of pool `T` on `conn`: a consumer channel, or a publisher
    /// channel (confirm mode) with its confirms matched to their returns
    /// ([`Publisher`]).
    async fn new_pooled<T: Pooled>(&self, conn: &Connection) -> Result<T, GatewayError> {
        Ok(T::wrap(self.new_channel(conn, T::POOL).await?))
    }

    async fn new_channel(&self, conn: &Connection, pool: Pool) -> Result<Channel, GatewayError> {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| GatewayError::amqp("channel.open", e))?;
        match pool {
            Pool::Publisher => {
                ch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|e| GatewayError::amqp("confirm.select", e))?;
                self.opened
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ch.id(), Instant::now());
            }
            // global=false: RabbitMQ applies the prefetch to each consumer started on
            // the channel afterwards.
            Pool::Consumer => ch
                .basic_qos(self.delivery_window, BasicQosOptions { global: false })
                .await
                .map_err(|e| GatewayError::amqp("basic.qos", e))?,
        }
        Ok(ch)
    }

    /// Locks the links (briefly: callers copy what they need and let go before any
    /// round trip to the broker) when both connections are up; otherwise wakes the supervisor
    /// and waits (at most `broker_wait_ms`) for it to bring them back.
    async fn healthy(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Links>>, GatewayError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut state = self.state_tx.subscribe();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(GatewayError::Closed);
            }
            {
                let guard = self.links.lock().await;
                if guard.as_ref().is_some_and(Links::intact) {
                    return Ok(guard);
                }
            }
            self.set_state(BrokerState::Disconnected);
            self.kick.notify_one();
            state.borrow_and_update();
            let woke = tokio::time::timeout_at(deadline, state.changed()).await;
            if woke.is_err() {
                return Err(GatewayError::Unavailable);
            }
        }
    }

    async fn pick<T: Pooled>(&self) -> Result<T, GatewayError> {
        if T::POOL == Pool::Publisher && self.blocked.load(Ordering::Acquire) {
            self.wait_unblocked().await?;
        }
        let counter = match T::POOL {
            Pool::Publisher => &self.next_publisher,
            Pool::Consumer => &self.next_consumer,
        };
        let (i, conn) = {
            let guard = self.healthy().await?;
            let links = guard.as_ref().expect("healthy() leaves links in place");
            let (conn, channels) = T::slots(links);
            let i = counter.fetch_add(1, Ordering::Relaxed) % channels.len();
            if channels[i].channel().status().connected() {
                return Ok(channels[i].clone());
            }
            (i, conn.clone())
        };
        // Replace the closed channel without holding the links.
        tracing::debug!(pool = ?T::POOL, index = i, "replacing a closed channel");
        let fresh: T = self.within_wait(self.new_pooled(&conn)).await?;
        self.put_in_pool(&conn, fresh.clone(), |j, c: &T| {
            j == i && !c.channel().status().connected()
        })
        .await;
        Ok(fresh)
    }

    /// Puts `fresh` in the place of the first channel of its pool that `stale` picks
    /// (by index and channel), unless the pool now belongs to another connection than
    /// `conn`.
    async fn put_in_pool<T: Pooled>(
        &self,
        conn: &Arc<Connection>,
        fresh: T,
        stale: impl Fn(usize, &T) -> bool,
    ) {
        let mut guard = self.links.lock().await;
        let Some(links) = guard.as_mut() else {
            return;
        };
        let (current, channels) = T::slots_mut(links);
        if !Arc::ptr_eq(current, conn) {
            return;
        }
        if let Some(slot) = channels
            .iter_mut()
            .enumerate()
            .find_map(|(j, c)| stale(j, c).then_some(c))
        {
            *slot = fresh;
        }
    }

    /// While RabbitMQ blocks publishing, waits (bounded) for it to unblock.
    async fn wait_unblocked(&self) -> Result<(), GatewayError> {
        let mut state = self.state_tx.subscribe();
        let deadline = tokio::time::Instant::now() + self.wait;
        while self.blocked.load(Ordering::Acquire) {
            state.borrow_and_update();
            if tokio::time::timeout_at(deadline, state.changed())
                .await
                .is_err()
            {
                return Err(GatewayError::Blocked);
            }
        }
        Ok(())
    }

    /// The largest frame RabbitMQ takes on the publishing connection (0 before the
    /// first), where every publish goes: a publish's content header (its properties)
    /// must fit in one.
    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Acquire)
    }

    /// A publisher channel (confirm mode) from the pool, round robin.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] or [`GatewayError::Blocked`] when RabbitMQ cannot
    /// take publishes within `broker_wait_ms`.
    pub async fn publisher(&self) -> Result<Publisher, GatewayError> {
        self.pick::<Publisher>().await
    }

    /// The confirm-mode channel for publishes to clients of Warren channel `channel`
    /// (`POST /publish`), on which nothing else is published; opened when there is none
    /// or it closed. One per Warren channel, as a channel may have a stream of its own
    /// and one AMQP channel must publish to one stream only.
    ///
    /// Why its own: when a stream's leader changes, RabbitMQ 3.10.8 publishes a
    /// channel's unconfirmed stream messages again numbered by the channel's publish
    /// sequence instead of the stream writer's, so on a channel that also publishes
    /// elsewhere the stream takes that many later messages for copies: confirmed,
    /// never stored (`warren_service`'s `Lane` has the story). On a channel that
    /// publishes only to the stream the two numbers agree.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] or [`GatewayError::Blocked`] when RabbitMQ cannot
    /// take publishes within `broker_wait_ms`.
    pub async fn stream_publisher(&self, channel: &str) -> Result<Publisher, GatewayError> {
        if self.blocked.load(Ordering::Acquire) {
            self.wait_unblocked().await?;
        }
        let conn = {
            let guard = self.healthy().await?;
            let links = guard.as_ref().expect("healthy() leaves links in place");
            links.publish_conn.clone()
        };
        if let Some(ch) = self.open_stream_publisher(channel) {
            return Ok(ch);
        }
        let opener = Arc::clone(
            self.stream_openers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(channel.to_string())
                .or_default(),
        );
        let _opening = opener.lock().await;
        if let Some(ch) = self.open_stream_publisher(channel) {
            return Ok(ch); // another publish opened it meanwhile
        }
        let fresh = tokio::time::timeout(self.wait, self.new_pooled::<Publisher>(&conn))
            .await
            .map_err(|_| GatewayError::Unavailable)??;
        self.stream_publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.to_string(), fresh.clone());
        Ok(fresh)
    }

    /// The stream publisher of Warren channel `channel`, if it has one still open.
    fn open_stream_publisher(&self, channel: &str) -> Option<Publisher> {
        self.stream_publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .filter(|c| c.channel().status().connected())
            .cloned()
    }

    /// Takes publisher channel `channel` (a pooled one or the stream publisher) out of
    /// use after a publish on it got no confirm in time or a negative one (`reason`
    /// says which): a fresh channel takes its place, and it closes once its outstanding
    /// confirms came (at most `wait` later). Whoever still waits on it keeps their
    /// confirm or their own timeout.
    ///
    /// Why, with RabbitMQ 3.10.8:
    /// - no confirm: whatever holds it up may hold up the channel's later publishes
    ///   too (introduced against broadcasts confirmed and never stored after a stream
    ///   leader change, whose cause turned out to be the one
    ///   [`Broker::stream_publisher`] avoids; BENCHMARKS.md, "Fan-out through the loss
    ///   of one node of three");
    /// - a nack: a channel whose first publish to a quorum queue came while the
    ///   queue's record still named a leader on a node that is gone nacks every
    ///   publish to that queue for as long as the node stays down
    ///   (`fault_leader_change`); a fresh channel reads the record again.
    pub async fn retire_publisher(&self, channel: &Channel, wait: Duration, reason: &'static str) {
        if !channel.status().connected() {
            return; // closed already: the pool replaces it on its next use
        }
        if self.take_stream_publisher(channel) {
            tracing::warn!(
                channel = channel.id(),
                reason,
                "the stream publisher channel is replaced"
            );
            self.close_after_confirms(channel.clone(), wait, reason);
            return;
        }
        let conn = {
            let guard = self.links.lock().await;
            let Some(links) = guard.as_ref() else {
                return;
            };
            if !links
                .publishers
                .iter()
                .any(|c| c.channel().id() == channel.id())
            {
                return; // already replaced
            }
            let first = self
                .retiring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(channel.id());
            if !first {
                return; // being replaced
            }
            links.publish_conn.clone()
        };
        match self.new_pooled::<Publisher>(&conn).await {
            Ok(fresh) => {
                self.put_in_pool(&conn, fresh, |_, c: &Publisher| {
                    c.channel().id() == channel.id()
                })
                .await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot open a publisher channel to replace one"),
        }
        self.retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&channel.id());
        tracing::warn!(
            channel = channel.id(),
            reason,
            "a publisher channel leaves the pool"
        );
        self.close_after_confirms(channel.clone(), wait, reason);
    }

    /// [`Broker::retire_publisher`] for a publish that was nacked, unless the channel
    /// was opened less than [`NACKED_CHANNEL_MIN_AGE`] ago. A full `reject-publish`
    /// queue nacks every publish, and replacing a channel per nack would churn
    /// channels at the rate of the refusals; a channel stuck on a lost leader keeps
    /// being nacked, so it is replaced on its first nack once it is a second old.
    pub async fn retire_nacked(&self, channel: &Channel, wait: Duration) {
        let young = self
            .opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&channel.id())
            .is_some_and(|at| at.elapsed() < NACKED_CHANNEL_MIN_AGE);
        if !young {
            self.retire_publisher(channel, wait, "a publish was nacked")
                .await;
        }
    }

    /// Whether `channel` is a stream publisher; if so, it is one no more.
    fn take_stream_publisher(&self, channel: &Channel) -> bool {
        let mut slots = self
            .stream_publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = slots.len();
        slots.retain(|_, c| c.channel().id() != channel.id());
        slots.len() != before
    }

    /// Closes `channel` once its outstanding confirms came, at most `wait` from now.
    fn close_after_confirms(&self, channel: Channel, wait: Duration, reason: &'static str) {
        metrics::add(&self.metrics.publisher_channels_replaced, 1);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(wait, channel.wait_for_confirms()).await;
            let _ = channel.close(200, reason.into()).await;
        });
    }

    /// A consumer channel (round robin) for the gateway's own listeners (takeovers,
    /// services, presence), shared between them; stream readers take
    /// [`Broker::scratch`] channels of their own.
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached within `broker_wait_ms`.
    pub async fn consumer_channel(&self) -> Result<Channel, GatewayError> {
        self.pick::<Channel>().await
    }

    /// A control channel (round robin), for declarations and bindings that cannot
    /// fail in normal operation.
    ///
    /// Every [`CONTROL_CHANNEL_USES`] uses a control channel is replaced by a fresh
    /// one: lapin records each queue declared or bound on a channel (for its topology
    /// recovery) until that channel closes, so a long-lived channel would keep a record
    /// of everything it ever declared. The replaced channel closes once its last user
    /// drops it.
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached within `broker_wait_ms`.
    pub async fn control(&self) -> Result<Channel, GatewayError> {
        let n = self.next_control.fetch_add(1, Ordering::Relaxed);
        let (i, conn, recycle) = {
            let guard = self.healthy().await?;
            let links = guard.as_ref().expect("healthy() leaves links in place");
            let len = links.controls.len();
            let i = n % len;
            let recycle = (n / len) % CONTROL_CHANNEL_USES == CONTROL_CHANNEL_USES - 1;
            if !recycle && links.controls[i].status().connected() {
                return Ok(links.controls[i].clone());
            }
            (i, links.publish_conn.clone(), recycle)
        };
        let fresh = self
            .within_wait(async {
                conn.create_channel()
                    .await
                    .map_err(|e| GatewayError::amqp("channel.open", e))
            })
            .await?;
        let mut guard = self.links.lock().await;
        if let Some(links) = guard.as_mut() {
            if Arc::ptr_eq(&links.publish_conn, &conn)
                && (recycle || !links.controls[i].status().connected())
            {
                links.controls[i] = fresh.clone();
            }
        }
        Ok(fresh)
    }

    /// A fresh channel on the publishing connection for requests whose answers come
    /// back on the same channel (direct reply-to). Not on the consuming connection:
    /// during a resource alarm RabbitMQ stops reading a connection once it publishes,
    /// and one request sent there stalled every stream reader of the gateway (their
    /// acknowledgements went unread) until the alarm cleared.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] or [`GatewayError::Blocked`] when RabbitMQ cannot
    /// take publishes within `broker_wait_ms`.
    pub async fn request_channel(&self) -> Result<Channel, GatewayError> {
        if self.blocked.load(Ordering::Acquire) {
            self.wait_unblocked().await?;
        }
        self.fresh_channel(|links| &links.publish_conn).await
    }

    /// A fresh channel for one operation that may fail with a channel error (a passive
    /// declare of a queue that may be gone). The caller closes it.
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached within `broker_wait_ms`.
    pub async fn scratch(&self) -> Result<Channel, GatewayError> {
        self.fresh_channel(|links| &links.consume_conn).await
    }

    /// A fresh channel on the connection `which` picks.
    async fn fresh_channel(
        &self,
        which: impl FnOnce(&Links) -> &Arc<Connection>,
    ) -> Result<Channel, GatewayError> {
        let conn = {
            let guard = self.healthy().await?;
            let links = guard.as_ref().expect("healthy() leaves links in place");
            which(links).clone()
        };
        self.within_wait(async {
            conn.create_channel()
                .await
                .map_err(|e| GatewayError::amqp("channel.open", e))
        })
        .await
    }

    /// `open` (a channel's opening), given up after `broker_wait_ms` as
    /// [`GatewayError::Unavailable`]: on a connection that stays open while RabbitMQ
    /// answers nothing (a frozen node, a stalled network) it would wait until lapin's
    /// heartbeat gives the connection up, a minute or more. A channel whose opening
    /// is given up closes when lapin drops it.
    async fn within_wait<T>(
        &self,
        open: impl std::future::Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        tokio::time::timeout(self.wait, open)
            .await
            .map_err(|_| GatewayError::Unavailable)?
    }

    /// How long an operation waits for RabbitMQ (`broker_wait_ms`).
    pub(crate) fn wait_limit(&self) -> Duration {
        self.wait
    }

    /// The current state, without reconnecting.
    pub fn state(&self) -> BrokerState {
        if self.closed.load(Ordering::Acquire) {
            return BrokerState::Closed;
        }
        match self.links.try_lock() {
            Ok(guard) if guard.as_ref().is_some_and(Links::intact) => BrokerState::Connected,
            Ok(_) => BrokerState::Disconnected,
            // Someone is taking a channel right now: trust the last announced state.
            Err(_) => *self.state_tx.borrow(),
        }
    }

    /// Whether RabbitMQ currently blocks the publishing connection.
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// What keeps a publish from going out right now, when the gateway knows it:
    /// RabbitMQ blocking the publishing connection (a resource alarm), else RabbitMQ
    /// not connected. `None` when connected and not blocked (a publish that still
    /// stalls meets something the gateway has not been told of).
    pub fn known_obstacle(&self) -> Option<GatewayError> {
        if self.is_blocked() {
            Some(GatewayError::Blocked)
        } else if self.state() != BrokerState::Connected {
            Some(GatewayError::Unavailable)
        } else {
            None
        }
    }

    /// The supervisor: re-establishes lost connections — woken by connection errors
    /// and callers that found a connection down, and every `period` anyway — and
    /// re-declares the topology after each reconnect. Ends when the broker is closed
    /// ([`Broker::close`]), not at the start of shutdown: the drain still publishes
    /// (pending confirms, presence events, the last announcement). `gateway` is the
    /// gateway's shutdown flag: the flag set does not end the supervisor, its sender
    /// gone (a gateway dropped without its shutdown, which never closes the broker)
    /// does.
    pub async fn supervise(self: Arc<Self>, period: Duration, mut gateway: watch::Receiver<bool>) {
        let mut state = self.state_tx.subscribe();
        let mut failures: u32 = 0;
        loop {
            let pause = if failures == 0 {
                period
            } else {
                Duration::from_millis((100u64 << failures.min(5)).min(2_000))
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.kick.notified(), if failures == 0 => {}
                _ = state.wait_for(|s| *s == BrokerState::Closed) => return,
                Err(_) = gateway.changed() => return,
            }
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            match self.repair().await {
                Ok(true) => {
                    failures = 0;
                    metrics::add(&self.metrics.broker_reconnects, 1);
                    // Bounded: a RabbitMQ that stops answering here must not stop
                    // the supervisor for good.
                    let limit = self.connect_timeout.max(self.wait);
                    match tokio::time::timeout(limit, self.declare_topology_again()).await {
                        Ok(Err(e)) => {
                            tracing::warn!(node = %self.node, error = %e, "re-declaring the topology failed");
                        }
                        Err(_) => {
                            tracing::warn!(node = %self.node, "re-declaring the topology did not finish in time");
                        }
                        Ok(Ok(())) => {}
                    }
                    self.set_state(BrokerState::Connected);
                    tracing::info!(node = %self.node, "RabbitMQ connections re-established");
                }
                Ok(false) => {
                    failures = 0;
                    self.set_state(BrokerState::Connected);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(node = %self.node, error = %e, "RabbitMQ still unreachable");
                }
            }
        }
    }

    /// Replaces whichever connection is down (only that one: losing the publishing
    /// connection does not disturb the consumers). The links are locked only to
    /// look and to swap, not while connecting. `Ok(true)` when something was replaced.
    async fn repair(self: &Arc<Self>) -> Result<bool, GatewayError> {
        let (publish_ok, consume_ok) = {
            let guard = self.links.lock().await;
            match guard.as_ref() {
                Some(l) => (
                    l.publish_conn.status().connected(),
                    l.consume_conn.status().connected(),
                ),
                None => (false, false),
            }
        };
        if publish_ok && consume_ok {
            return Ok(false);
        }
        self.set_state(BrokerState::Disconnected);
        let publishing = if publish_ok {
            None
        } else {
            tracing::warn!(node = %self.node, "publishing connection lost; reconnecting");
            Some(self.open_publishing().await?)
        };
        let consuming = if consume_ok {
            None
        } else {
            tracing::warn!(node = %self.node, "consuming connection lost; reconnecting");
            Some(self.open_consuming().await?)
        };
        // Only a new publishing connection is unblocked: RabbitMQ blocks publishers
        // (a resource alarm), and a new consuming connection says nothing about them.
        let publisher_replaced = publishing.is_some();
        let mut guard = self.links.lock().await;
        match guard.as_mut() {
            Some(links) => {
                if let Some((conn, publishers, controls)) = publishing {
                    let old = std::mem::replace(&mut links.publish_conn, Arc::new(conn));
                    links.publishers = publishers;
                    links.controls = controls;
                    tokio::spawn(async move {
                        let _ = old.close(320, "reconnecting".into()).await;
                    });
                }
                if let Some((conn, consumers)) = consuming {
                    let old = std::mem::replace(&mut links.consume_conn, Arc::new(conn));
                    links.consumers = consumers;
                    tokio::spawn(async move {
                        let _ = old.close(320, "reconnecting".into()).await;
                    });
                }
            }
            None => return Err(GatewayError::Closed),
        }
        if publisher_replaced {
            self.blocked.store(false, Ordering::Release);
        }
        Ok(true)
    }

    /// Moves the state to `new`, telling its watchers when it changed, unless the
    /// broker was closed: it stays [`BrokerState::Closed`] (the supervisor runs through
    /// the drain, and a reconnect finishing after [`Broker::close`], or a connection's
    /// error as it closes, said `Connected` or `Disconnected` with no links).
    fn set_state(&self, new: BrokerState) {
        self.state_tx.send_if_modified(|s| {
            if *s == BrokerState::Closed || *s == new {
                return false;
            }
            *s = new;
            true
        });
    }

    /// Closes both connections (after the connections' own cleanup), together and
    /// each within [`CLOSE_WAIT`]: RabbitMQ does not read a connection it blocked (a
    /// resource alarm), so its close-ok may never come.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.state_tx.send_replace(BrokerState::Closed);
        if let Some(links) = self.links.lock().await.take() {
            let close = |c: Arc<Connection>| async move {
                let closing = c.close(200, "gateway shutdown".into());
                if tokio::time::timeout(CLOSE_WAIT, closing).await.is_err() {
                    tracing::warn!("a RabbitMQ connection did not close in time; leaving it");
                }
            };
            tokio::join!(close(links.publish_conn), close(links.consume_conn));
        }
    }
}

/// The role of the publishing connection (its name in logs and in RabbitMQ).
const PUBLISH: &str = "publish";
/// The role of the consuming connection.
const CONSUME: &str = "consume";

/// The error of an attempt that did not finish within `limit`: an IO error (timed
/// out), so that it counts as unreachable ([`GatewayError::is_unreachable`]).
fn timed_out(limit: Duration, what: &str) -> lapin::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "{what}: no answer within amqp_connect_timeout_ms ({} ms)",
            limit.as_millis()
        ),
    )
    .into()
}

/// One connection attempt to `uri` (TCP, TLS, AMQP handshake), within `limit`.
///
/// lapin's own connect has no time limit (the URI's `connection_timeout` bounds only
/// its blocking connect, not the async one), and its IO thread waits for the server's
/// answer to the protocol header for ever. So the socket is opened here, a duplicate
/// of it kept ([`Attempt`]), and an attempt that runs out of time is shut down: lapin's
/// IO thread sees the socket close and ends, instead of one thread and one socket
/// left behind per attempt on a server that never answers.
///
/// # Errors
/// lapin's error, or an IO error (timed out) when `limit` passed.
async fn connect_within(
    uri: &str,
    props: ConnectionProperties,
    limit: Duration,
) -> Result<Connection, lapin::Error> {
    let parsed: AMQPUri = uri
        .parse()
        .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
    let runtime = lapin::runtime::default_runtime()?;
    let attempt = Arc::new(Attempt::default());
    let socket = attempt.clone();
    // The closure inline: its argument types come from `runtime`'s, which gives the
    // plain stream's type (a tokio socket).
    let connecting = Connection::connector(
        parsed,
        runtime,
        async move |uri: AMQPUri, runtime| {
            if socket.given_up.load(Ordering::Acquire) {
                return Err(timed_out(limit, "connecting"));
            }
            let host = uri.authority.host.clone();
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), uri.authority.port))
                    .await?
                    .collect();
            let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
            if let AsyncTcpStream::Plain(plain) = &stream {
                socket.hold(plain.get_ref())?;
            }
            Ok(match uri.scheme {
                AMQPScheme::AMQPS => {
                    stream
                        .into_tls(&host, OwnedTLSConfig::default().as_ref())
                        .await?
                }
                AMQPScheme::AMQP => stream,
            })
        },
        props,
    );
    match tokio::time::timeout(limit, connecting).await {
        Ok(result) => {
            attempt.settle();
            result
        }
        Err(_) => {
            attempt.give_up();
            Err(timed_out(limit, "connecting"))
        }
    }
}

/// The socket of one connection attempt ([`connect_within`]): a duplicate of its
/// descriptor, to shut the socket down if the attempt is given up.
#[derive(Default)]
struct Attempt {
    socket: std::sync::Mutex<Option<std::net::TcpStream>>,
    /// The attempt ran out of time: lapin's IO thread may not connect again.
    given_up: AtomicBool,
    /// The attempt finished: nothing more is kept.
    settled: AtomicBool,
}

impl Attempt {
    /// Keeps a duplicate of `stream`'s socket, unless the attempt finished; shuts it
    /// down at once if the attempt was given up meanwhile.
    fn hold(&self, stream: &tokio::net::TcpStream) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            let mut slot = self.socket.lock().unwrap_or_else(|e| e.into_inner());
            if self.settled.load(Ordering::Acquire) {
                return Ok(());
            }
            let copy = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
            if self.given_up.load(Ordering::Acquire) {
                let _ = copy.shutdown(std::net::Shutdown::Both);
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            *slot = Some(copy);
        }
        #[cfg(not(unix))]
        let _ = stream;
        Ok(())
    }

    /// The attempt finished (either way): the duplicate is let go.
    fn settle(&self) {
        self.settled.store(true, Ordering::Release);
        self.socket.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The attempt ran out of time: its socket is shut down, which ends lapin's IO
    /// thread, and it may not connect again.
    fn give_up(&self) {
        self.given_up.store(true, Ordering::Release);
        let held = self.socket.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(socket) = held {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_that_failed_lately_are_tried_after_the_others() {
        let now = Instant::now();
        let lately = Some(now - Duration::from_secs(1));
        let long_ago = now.checked_sub(FAILED_URI_LAST_FOR * 2);
        assert_eq!(attempt_order(1, &[None, None, None], now), vec![1, 2, 0]);
        // The consuming connection, right after the publishing one passed over a
        // frozen first address, starts at the next URI: the frozen one goes last.
        assert_eq!(attempt_order(0, &[lately, None], now), vec![1, 0]);
        assert_eq!(attempt_order(2, &[None, None, lately], now), vec![0, 1, 2]);
        assert_eq!(
            attempt_order(0, &[lately, lately, None], now),
            vec![2, 0, 1]
        );
        // A failure long ago no longer counts.
        if long_ago.is_some() {
            assert_eq!(attempt_order(0, &[long_ago, None], now), vec![0, 1]);
        }
        // Every URI is still tried when all failed.
        assert_eq!(attempt_order(1, &[lately, lately], now), vec![1, 0]);
    }
}
