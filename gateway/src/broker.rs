//! The gateway's link to RabbitMQ: two AMQP connections per gateway (one for
//! publishing, one for consuming, so that broker flow control on publishers never
//! stalls deliveries), a pool of publisher channels in confirm mode, a few channels
//! shared by every session's consumer, and a control channel for bindings. Never one
//! connection (or channel) per client.
//!
//! Channels or connections the broker closed are replaced on next use; a lost
//! connection is re-established from the configured URIs, in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lapin::options::{BasicQosOptions, ConfirmSelectOptions};
use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::config::{redact, Config};
use crate::error::GatewayError;

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
    publish_conn: Connection,
    consume_conn: Connection,
    publishers: Vec<Channel>,
    consumers: Vec<Channel>,
    control: Channel,
}

/// The pooled AMQP connections and channels of one gateway.
pub struct Broker {
    uris: Vec<String>,
    node: String,
    publisher_channels: usize,
    consumer_channels: usize,
    delivery_window: u16,
    links: Mutex<Option<Links>>,
    closed: std::sync::atomic::AtomicBool,
    /// Set while a reconnect is under way (then `state()` cannot look at the links).
    reconnecting: std::sync::atomic::AtomicBool,
    next_publisher: AtomicUsize,
    next_consumer: AtomicUsize,
}

impl Broker {
    /// Connects to the first URI that accepts and opens the channel pools.
    ///
    /// # Errors
    /// [`GatewayError::Connect`] when no URI accepts, [`GatewayError::Amqp`] when a
    /// channel cannot be opened.
    pub async fn connect(config: &Config) -> Result<Arc<Broker>, GatewayError> {
        let broker = Arc::new(Broker {
            uris: config.amqp_uri.clone(),
            node: config.node.clone(),
            publisher_channels: config.publisher_channels,
            consumer_channels: config.consumer_channels,
            delivery_window: config.delivery_window,
            links: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            reconnecting: std::sync::atomic::AtomicBool::new(false),
            next_publisher: AtomicUsize::new(0),
            next_consumer: AtomicUsize::new(0),
        });
        let mut guard = broker.links.lock().await;
        *guard = Some(broker.open().await?);
        drop(guard);
        Ok(broker)
    }

    async fn open_connection(&self, role: &str) -> Result<Connection, GatewayError> {
        let mut last = None;
        for uri in &self.uris {
            let props = ConnectionProperties::default().with_connection_name(LongString::from(
                format!("warren-gateway {} {role}", self.node),
            ));
            match Connection::connect(uri, props).await {
                Ok(conn) => {
                    tracing::info!(uri = %redact(uri), role, node = %self.node, "connected to RabbitMQ");
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::warn!(uri = %redact(uri), role, error = %e, "RabbitMQ connection failed");
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

    async fn open(&self) -> Result<Links, GatewayError> {
        let (publish_conn, publishers, control) = self.open_publishing().await?;
        let (consume_conn, consumers) = self.open_consuming().await?;
        Ok(Links {
            publish_conn,
            consume_conn,
            publishers,
            consumers,
            control,
        })
    }

    async fn open_publishing(&self) -> Result<(Connection, Vec<Channel>, Channel), GatewayError> {
        let conn = self.open_connection("publish").await?;
        let mut publishers = Vec::with_capacity(self.publisher_channels);
        for _ in 0..self.publisher_channels {
            publishers.push(self.new_channel(&conn, Pool::Publisher).await?);
        }
        let control = conn
            .create_channel()
            .await
            .map_err(|e| GatewayError::amqp("channel.open", e))?;
        Ok((conn, publishers, control))
    }

    async fn open_consuming(&self) -> Result<(Connection, Vec<Channel>), GatewayError> {
        let conn = self.open_connection("consume").await?;
        let mut consumers = Vec::with_capacity(self.consumer_channels);
        for _ in 0..self.consumer_channels {
            consumers.push(self.new_channel(&conn, Pool::Consumer).await?);
        }
        Ok((conn, consumers))
    }

    async fn new_channel(&self, conn: &Connection, pool: Pool) -> Result<Channel, GatewayError> {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| GatewayError::amqp("channel.open", e))?;
        match pool {
            Pool::Publisher => ch
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| GatewayError::amqp("confirm.select", e))?,
            // global=false: RabbitMQ applies the prefetch to each consumer started on
            // the channel afterwards, so every session gets its own delivery window.
            Pool::Consumer => ch
                .basic_qos(self.delivery_window, BasicQosOptions { global: false })
                .await
                .map_err(|e| GatewayError::amqp("basic.qos", e))?,
        }
        Ok(ch)
    }

    /// Locks the links, re-establishing first whichever connection is down (only that
    /// one: losing the publishing connection does not disturb session consumers).
    async fn healthy(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Links>>, GatewayError> {
        let mut guard = self.links.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(GatewayError::Closed);
        }
        let intact = guard.as_ref().is_some_and(|l| {
            l.publish_conn.status().connected() && l.consume_conn.status().connected()
        });
        if !intact {
            self.reconnecting.store(true, Ordering::Release);
            let res = self.repair(&mut guard).await;
            self.reconnecting.store(false, Ordering::Release);
            res?;
        }
        Ok(guard)
    }

    async fn repair(&self, guard: &mut Option<Links>) -> Result<(), GatewayError> {
        match guard.as_mut() {
            None => *guard = Some(self.open().await?),
            Some(links) => {
                if !links.publish_conn.status().connected() {
                    tracing::warn!(node = %self.node, "publishing connection lost; reconnecting");
                    let _ = links.publish_conn.close(320, "reconnecting".into()).await;
                    let (conn, publishers, control) = self.open_publishing().await?;
                    links.publish_conn = conn;
                    links.publishers = publishers;
                    links.control = control;
                }
                if !links.consume_conn.status().connected() {
                    tracing::warn!(node = %self.node, "consuming connection lost; reconnecting");
                    let _ = links.consume_conn.close(320, "reconnecting".into()).await;
                    let (conn, consumers) = self.open_consuming().await?;
                    links.consume_conn = conn;
                    links.consumers = consumers;
                }
            }
        }
        Ok(())
    }

    async fn pick(&self, pool: Pool) -> Result<Channel, GatewayError> {
        let mut guard = self.healthy().await?;
        let links = guard.as_mut().expect("healthy() leaves links in place");
        let (counter, conn, channels) = match pool {
            Pool::Publisher => (
                &self.next_publisher,
                &links.publish_conn,
                &mut links.publishers,
            ),
            Pool::Consumer => (
                &self.next_consumer,
                &links.consume_conn,
                &mut links.consumers,
            ),
        };
        let i = counter.fetch_add(1, Ordering::Relaxed) % channels.len();
        if !channels[i].status().connected() {
            tracing::debug!(?pool, index = i, "replacing a closed channel");
            channels[i] = self.new_channel(conn, pool).await?;
        }
        Ok(channels[i].clone())
    }

    /// A publisher channel (confirm mode) from the pool, round robin.
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached.
    pub async fn publisher(&self) -> Result<Channel, GatewayError> {
        self.pick(Pool::Publisher).await
    }

    /// A channel to start a session consumer on, shared with other sessions.
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached.
    pub async fn consumer_channel(&self) -> Result<Channel, GatewayError> {
        self.pick(Pool::Consumer).await
    }

    /// The control channel, for declarations and bindings that cannot fail in normal
    /// operation.
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached.
    pub async fn control(&self) -> Result<Channel, GatewayError> {
        let mut guard = self.healthy().await?;
        let links = guard.as_mut().expect("healthy() leaves links in place");
        if !links.control.status().connected() {
            links.control = links
                .publish_conn
                .create_channel()
                .await
                .map_err(|e| GatewayError::amqp("channel.open", e))?;
        }
        Ok(links.control.clone())
    }

    /// A fresh channel for one operation that may fail with a channel error (a passive
    /// declare of a queue that may be gone). The caller closes it.
    ///
    /// # Errors
    /// When RabbitMQ cannot be reached.
    pub async fn scratch(&self) -> Result<Channel, GatewayError> {
        let guard = self.healthy().await?;
        let links = guard.as_ref().expect("healthy() leaves links in place");
        links
            .consume_conn
            .create_channel()
            .await
            .map_err(|e| GatewayError::amqp("channel.open", e))
    }

    /// The current state, without reconnecting.
    pub fn state(&self) -> BrokerState {
        if self.closed.load(Ordering::Acquire) {
            return BrokerState::Closed;
        }
        match self.links.try_lock() {
            Ok(guard) => match guard.as_ref() {
                Some(l)
                    if l.publish_conn.status().connected()
                        && l.consume_conn.status().connected() =>
                {
                    BrokerState::Connected
                }
                _ => BrokerState::Disconnected,
            },
            // Someone is using (or repairing) the links right now.
            Err(_) if self.reconnecting.load(Ordering::Acquire) => BrokerState::Disconnected,
            Err(_) => BrokerState::Connected,
        }
    }

    /// Re-establishes lost connections in the background (every `period`) even when no
    /// client uses them, so `/healthz` recovers on its own; ends at shutdown.
    pub async fn supervise(
        self: Arc<Self>,
        period: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if self.state() == BrokerState::Disconnected {
                if let Err(e) = self.control().await {
                    tracing::warn!(node = %self.node, error = %e, "RabbitMQ still unreachable");
                }
            }
        }
    }

    /// Closes both connections (after the connections' own cleanup).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(links) = self.links.lock().await.take() {
            let _ = links
                .publish_conn
                .close(200, "gateway shutdown".into())
                .await;
            let _ = links
                .consume_conn
                .close(200, "gateway shutdown".into())
                .await;
        }
    }
}
