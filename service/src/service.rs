//! A running service: one AMQP connection, a publisher, and one consumer per channel
//! it serves. Start with [`Service::connect`], add handlers with [`Service::consume`],
//! stop with [`Service::stop`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use warren_protocol::amqp::Names;

use crate::config::ServiceConfig;
use crate::consumer::{self, LoopEnd, Shared};
use crate::duplicate_window::DuplicateWindow;
use crate::error::{Result, ServiceError};
use crate::handler::{Context, Handler};
use crate::publisher::Publisher;
use crate::topology;

/// How long [`Service::stop`] lets in-flight handlers finish before their messages
/// are handed back to RabbitMQ.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The state of a [`Service`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Connected; consumers run.
    Running,
    /// A consumer lost its channel or the connection; the reason. The process should
    /// restart (or reconnect) the service.
    Failed(String),
    /// Stopped on request.
    Stopped,
}

/// A service connected to RabbitMQ.
#[derive(Debug)]
pub struct Service {
    connection: Arc<Connection>,
    names: Names,
    config: ServiceConfig,
    publisher: Publisher,
    stop: watch::Sender<bool>,
    state: watch::Sender<ServiceState>,
    consumers: Mutex<Vec<JoinHandle<()>>>,
}

impl Service {
    /// Connects to `amqp_uri` with the default [`ServiceConfig`] and declares the
    /// `warren.in` / `warren.out` exchanges of `names`.
    ///
    /// # Errors
    /// When the connection or a declaration fails.
    pub async fn connect(amqp_uri: &str, names: Names) -> Result<Self> {
        Service::connect_with(amqp_uri, names, ServiceConfig::default()).await
    }

    /// Connects with the given configuration.
    ///
    /// # Errors
    /// When the connection or a declaration fails.
    pub async fn connect_with(amqp_uri: &str, names: Names, config: ServiceConfig) -> Result<Self> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(config.app_id.as_str()));
        let connection = Arc::new(Connection::connect(amqp_uri, properties).await?);
        topology::declare_exchanges(&connection, &names).await?;
        let publisher = Publisher::new(connection.clone(), names.clone(), config.app_id.clone());
        info!(namespace = %names.prefix(), app_id = %config.app_id, "service connected");
        Ok(Service {
            connection,
            names,
            config,
            publisher,
            stop: watch::Sender::new(false),
            state: watch::Sender::new(ServiceState::Running),
            consumers: Mutex::new(Vec::new()),
        })
    }

    /// The AMQP names in use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The configuration in use.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// A publisher sharing the service's connection, to publish to clients outside a
    /// handler.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The current state.
    pub fn state(&self) -> ServiceState {
        self.state.borrow().clone()
    }

    /// Resolves when the service leaves [`ServiceState::Running`], with the new state.
    pub async fn closed(&self) -> ServiceState {
        let mut rx = self.state.subscribe();
        let state = match rx.wait_for(|s| *s != ServiceState::Running).await {
            Ok(state) => state.clone(),
            Err(_) => ServiceState::Stopped,
        };
        state
    }

    /// Declares the `IN_<CHANNEL>` queue of `channel` (bound to `warren.in` with
    /// `<channel>.#`) and consumes it with `handler`, `prefetch` messages at a time,
    /// acknowledging each after the handler returned. Returns the queue name.
    ///
    /// # Errors
    /// When the channel name is invalid, or a declaration or `basic.consume` fails.
    pub async fn consume<H: Handler>(&self, channel: &str, handler: H) -> Result<String> {
        if *self.stop.borrow() {
            return Err(ServiceError::Stopped);
        }
        let queue = topology::declare_channel_queue(
            &self.connection,
            &self.names,
            channel,
            &self.config.queue_type,
        )
        .await?;
        let amqp = self.connection.create_channel().await?;
        amqp.basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!(
            "{}-{}-{}",
            self.config.app_id,
            channel,
            uuid::Uuid::new_v4()
        );
        let stream = amqp
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let shared = Arc::new(Shared {
            queue: queue.clone(),
            handler,
            context: Context::new(self.publisher.clone(), self.names.clone()),
            publisher: self.publisher.clone(),
            connection: self.connection.clone(),
            config: self.config.clone(),
            window: std::sync::Mutex::new(DuplicateWindow::new(
                self.config.duplicate_ttl,
                self.config.duplicate_capacity,
            )),
            dead_letter_declared: tokio::sync::OnceCell::new(),
        });
        let stop = self.stop.subscribe();
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            let end = consumer::run(shared, amqp, stream, stop, STOP_GRACE).await;
            if let LoopEnd::Lost(reason) = end {
                state.send_if_modified(|s| {
                    if *s == ServiceState::Running {
                        *s = ServiceState::Failed(reason);
                        true
                    } else {
                        false
                    }
                });
            }
        });
        self.consumers.lock().expect("consumers lock").push(task);
        info!(channel, queue = %queue, consumer = %tag, prefetch = self.config.prefetch, "consuming");
        Ok(queue)
    }

    /// Stops every consumer (in-flight handlers get [`STOP_GRACE`] to finish; what is
    /// not acknowledged goes back to the queue), then closes the connection.
    ///
    /// # Errors
    /// When closing the connection fails.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.consumers.lock().expect("consumers lock"));
        for task in tasks {
            if let Err(e) = task.await {
                warn!(error = %e, "consumer task ended abnormally");
            }
        }
        self.state.send_replace(ServiceState::Stopped);
        self.publisher.close().await;
        if self.connection.status().connected() {
            self.connection
                .close(200, ShortString::from("service stopping"))
                .await?;
        }
        info!("service stopped");
        Ok(())
    }
}
