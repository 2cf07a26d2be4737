//! A running service: a link to RabbitMQ (one connection at a time, from a list of
//! URIs, re-established when lost), a publisher, and one consumer per channel it
//! serves. Start with [`Service::connect`], add handlers with [`Service::consume`],
//! stop with [`Service::stop`] (or by dropping the service, which does not wait).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use warren_protocol::amqp::Names;
use warren_protocol::services::Undelivered;

use crate::announce::Announcer;
use crate::config::ServiceConfig;
use crate::consumer::{self, Shared};
use crate::duplicate_window::DuplicateWindow;
use crate::error::{Result, ServiceError};
use crate::handler::{Context, Handler, Outcome};
use crate::link::{self, Link};
use crate::priority::{self, SharedHandler};
use crate::publisher::Publisher;
use crate::returns;
use crate::topology::{self, DeadLetters};

/// How long [`Service::stop`] lets in-flight handlers finish before their messages
/// are handed back to RabbitMQ. Handlers still running when their consumer was lost
/// (its connection dropped) are never aborted: they finish in the background, their
/// message's copy waiting for them in the duplicate window, and `stop` does not wait
/// for them.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The state of a [`Service`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Connected; consumers run.
    Running,
    /// The connection was lost (the reason); the service is connecting again, to the
    /// next URI of its list, and will re-declare its queues and consume again.
    /// Publishes wait meanwhile (bounded by `publish_timeout`).
    Reconnecting(String),
    /// The service cannot go on (connection lost with reconnection disabled, or a
    /// consumed queue deleted); the reason. Every consumer has stopped, as on
    /// [`Service::stop`] (handlers in progress get [`STOP_GRACE`]), and `consume`
    /// answers [`ServiceError::Failed`]. The process should restart the service.
    Failed(String),
    /// Stopped on request.
    Stopped,
}

/// A service connected to RabbitMQ.
///
/// Dropping it without [`Service::stop`] stops it too, without waiting: every consumer
/// is halted as on `stop` (its consumer cancelled, in-flight handlers given
/// [`STOP_GRACE`] in the background, what is not acknowledged going back to the
/// queue), the supervisor (no reconnect any more), the announcer and the returns
/// consumer end, the state turns [`ServiceState::Stopped`], and `leave` is announced
/// in the background when a tokio runtime is there to run it. The connection closes
/// once nothing uses it any more (a [`Publisher`] taken from the service keeps it).
/// Call `stop` to wait for all of that.
#[derive(Debug)]
#[must_use = "dropping a Service stops it: its consumers stop consuming"]
pub struct Service {
    link: Arc<Link>,
    names: Names,
    config: ServiceConfig,
    publisher: Publisher,
    stop: watch::Sender<bool>,
    /// Turns true on `stop` or when a consumer fails the service: every consumer ends.
    halt: watch::Sender<bool>,
    state: watch::Sender<ServiceState>,
    consumers: Mutex<Vec<JoinHandle<()>>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    announcer: Arc<Announcer>,
    announcing: Mutex<Option<JoinHandle<()>>>,
    undelivered: broadcast::Sender<Undelivered>,
    returning: Mutex<Option<JoinHandle<()>>>,
}

impl Service {
    /// Connects with the default [`ServiceConfig`] and declares the `warren.in` /
    /// `warren.out` exchanges of `names`. `amqp_uri` is one AMQP URI or several
    /// separated by commas (cluster nodes, tried in order; see
    /// [`Service::connect_to`]).
    ///
    /// # Errors
    /// When no URI accepts a connection, or a declaration fails.
    pub async fn connect(amqp_uri: &str, names: Names) -> Result<Self> {
        Service::connect_with(amqp_uri, names, ServiceConfig::default()).await
    }

    /// Connects with the given configuration; `amqp_uri` as in [`Service::connect`].
    ///
    /// # Errors
    /// When no URI accepts a connection, or a declaration fails.
    pub async fn connect_with(amqp_uri: &str, names: Names, config: ServiceConfig) -> Result<Self> {
        Service::connect_to(&link::split_uris(amqp_uri), names, config).await
    }

    /// Connects to the first of `uris` that accepts (each tried once, in order). When
    /// that connection is lost later, the service reconnects to the next URIs in turn
    /// with backoff (unless [`ServiceConfig::reconnect`] is off), declares the
    /// exchanges and its queues again and resumes consuming, keeping its duplicate
    /// window.
    ///
    /// # Errors
    /// [`ServiceError::NoUri`] for an empty list; the last connection error when no
    /// URI accepts; a declaration the broker refused.
    pub async fn connect_to<S: AsRef<str>>(
        uris: &[S],
        names: Names,
        config: ServiceConfig,
    ) -> Result<Self> {
        let uris: Vec<String> = uris.iter().map(|u| u.as_ref().to_string()).collect();
        let (link, events) = Link::connect(uris, names.clone(), config.clone()).await?;
        let instance = Announcer::new_instance_id(&config);
        let returns_queue = returns::queue_name(names.prefix(), &instance);
        let publisher = Publisher::new(
            link.clone(),
            names.clone(),
            config.app_id.clone(),
            config.publish_timeout,
            config.publish_channel_idle,
            Some(returns_queue.clone()),
        );
        let stop = watch::Sender::new(false);
        let state = watch::Sender::new(ServiceState::Running);
        let supervisor = tokio::spawn(link.clone().supervise(
            events,
            stop.subscribe(),
            state.clone(),
        ));
        let announcer = Arc::new(Announcer::new(publisher.clone(), &names, &config, instance));
        let announcing = tokio::spawn(announcer.clone().run(stop.subscribe(), state.subscribe()));
        let (undelivered, _) = broadcast::channel(1024);
        let returning = tokio::spawn(returns::run(
            link.clone(),
            returns_queue,
            undelivered.clone(),
            stop.subscribe(),
        ));
        info!(namespace = %names.prefix(), app_id = %config.app_id, instance = %announcer.instance(), uris = link.uris().len(), "service connected");
        Ok(Service {
            link,
            names,
            config,
            publisher,
            stop,
            halt: watch::Sender::new(false),
            state,
            consumers: Mutex::new(Vec::new()),
            supervisor: Mutex::new(Some(supervisor)),
            announcer,
            announcing: Mutex::new(Some(announcing)),
            undelivered,
            returning: Mutex::new(Some(returning)),
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

    /// This instance's id in the service registry (`<app_id>-<random>`).
    pub fn instance(&self) -> &str {
        self.announcer.instance()
    }

    /// Reports of messages to users that none of their users received: when a
    /// message published to users ([`Targets::with_user`](crate::Targets)) reaches no
    /// session of any of them anywhere, a gateway sends the report back (the message is
    /// still in the outbound stream; nobody was there to get it). Subscribe before
    /// publishing; reports are kept for slow receivers up to 1024 behind.
    pub fn undelivered(&self) -> broadcast::Receiver<Undelivered> {
        self.undelivered.subscribe()
    }

    /// The current state.
    pub fn state(&self) -> ServiceState {
        self.state.borrow().clone()
    }

    /// Resolves when the service is [`ServiceState::Failed`] or
    /// [`ServiceState::Stopped`], with that state. A lost connection that is being
    /// re-established ([`ServiceState::Reconnecting`]) does not resolve it.
    pub async fn closed(&self) -> ServiceState {
        let mut rx = self.state.subscribe();
        let state = match rx
            .wait_for(|s| matches!(s, ServiceState::Failed(_) | ServiceState::Stopped))
            .await
        {
            Ok(state) => state.clone(),
            Err(_) => ServiceState::Stopped,
        };
        state
    }

    /// A receiver of the service's state: `changed()` wakes on every transition
    /// (e.g. `Running` → `Reconnecting` → `Running` across a broker loss).
    pub fn state_receiver(&self) -> watch::Receiver<ServiceState> {
        self.state.subscribe()
    }

    /// `Ok` unless the service was stopped or has failed: a consumer started then
    /// would never run.
    fn check_live(&self) -> Result<()> {
        if *self.stop.borrow() {
            return Err(ServiceError::Stopped);
        }
        match &*self.state.borrow() {
            ServiceState::Failed(reason) => Err(ServiceError::Failed(reason.clone())),
            _ => Ok(()),
        }
    }

    /// Declares the `IN_<CHANNEL>` queue of `channel` (bound to `warren.in` with
    /// `<channel>.#`, with the channel's TTL when configured) and consumes it with
    /// `handler`, `prefetch` messages at a time, acknowledging each after the handler
    /// returned. After a reconnect the queue is declared again and consumed again.
    /// Returns the queue name.
    ///
    /// # Errors
    /// When the channel name is invalid, the service has no connection within the
    /// publish timeout, or a declaration or `basic.consume` fails.
    pub async fn consume<H: Handler>(&self, channel: &str, handler: H) -> Result<String> {
        self.consume_as(channel, handler, DeadLetters::Parked).await
    }

    /// [`Service::consume`], with what becomes of a message that expires or fails.
    async fn consume_as<H: Handler>(
        &self,
        channel: &str,
        handler: H,
        dead_letters: DeadLetters,
    ) -> Result<String> {
        self.check_live()?;
        let deadline = crate::config::deadline_in(self.config.publish_timeout);
        let epoch = self.link.up(0, Some(deadline)).await?;
        let queue = topology::declare_channel_queue_as(
            &epoch.connection,
            &self.names,
            channel,
            &self.config,
            dead_letters,
        )
        .await?;
        let started = consumer::start(&epoch, &queue, channel, &self.config).await?;
        let shared = Arc::new(Shared {
            channel: channel.to_string(),
            queue: queue.clone(),
            handler,
            context: Context::new(self.publisher.clone(), self.names.clone()),
            publisher: self.publisher.clone(),
            link: self.link.clone(),
            config: self.config.clone(),
            window: std::sync::Mutex::new(
                DuplicateWindow::new(self.config.duplicate_ttl, self.config.duplicate_capacity)
                    .with_reply_budget(self.config.remember_replies_total_bytes),
            ),
            dead_letters,
        });
        let task = tokio::spawn(consumer::keep_consuming(
            shared,
            started,
            self.halt.clone(),
            self.state.clone(),
            STOP_GRACE,
        ));
        self.consumers.lock().expect("consumers lock").push(task);
        self.announcer.add_channel(channel);
        Ok(queue)
    }

    /// Consumes an ordered list of work queues by priority, the first the highest:
    /// the handler always gets a message of the highest-priority non-empty queue, one
    /// message at a time, and a message arriving in a higher queue while a lower one
    /// is handled is taken next (the message in progress finishes first). Queues are
    /// plain names (not namespaced, producers publish to them through the default
    /// exchange), declared durable with `x-queue-type` = the configured queue type
    /// (quorum by default) and `x-dead-letter-exchange` = `warren.dead` unless they
    /// exist, in which case they are used as they are. A channel's `IN_<CHANNEL>`
    /// queue in the list is declared as the gateways declare it
    /// ([`topology::declare_priority_queue`]): bounds, TTL and binding to `warren.in`.
    /// A tenant's queue gets the same arguments but no binding: its bindings come from
    /// [`Service::declare_tenants`] (or a gateway serving the tenant), so call that
    /// first; a tenant queue declared again after it was deleted receives nothing
    /// until they are declared again.
    ///
    /// Switching is event-driven: every queue above the one being worked on keeps a
    /// consumer (prefetch 1), so a message arriving there is pushed at once; the lower
    /// consumers are then cancelled and what they held unhandled goes back to its
    /// queue unacknowledged. Only one queue below the top ones is consumed at a time;
    /// when it is empty (ready counts read after a message, while idle) the worker
    /// moves down. Each message goes through the same path as [`Service::consume`]:
    /// duplicate window (one per queue), handler, reply, ack, retries,
    /// dead-lettering. After a reconnect (or a lost channel) the queues are declared
    /// again and consumption starts from the top; unlike [`Service::consume`], a queue
    /// deleted on purpose is declared again rather than failing the service. Returns
    /// the queue names.
    ///
    /// Limit: a quorum queue counts a delivery handed back by a switch (or by a stop)
    /// in `x-delivery-count`, as a failed attempt: it uses up the queue's delivery
    /// limit and [`ServiceConfig::max_attempts`] (which reads that header) as a
    /// handler failure would. Hand-backs are rare — only a lower delivery that arrived
    /// together with a higher one, or was held at a stop — but a message handed back
    /// `max_attempts - 1` times is dead-lettered at its first handler failure.
    ///
    /// # Errors
    /// [`ServiceError::InvalidQueueList`] for an empty list, a blank name or a queue
    /// named twice; as [`Service::consume`] when there is no connection or a
    /// declaration fails.
    pub async fn consume_queues<S: AsRef<str>, H: Handler>(
        &self,
        queues: &[S],
        handler: H,
    ) -> Result<Vec<String>> {
        self.check_live()?;
        let queues = priority::validate_queue_list(queues)?;
        let deadline = crate::config::deadline_in(self.config.publish_timeout);
        let epoch = self.link.up(0, Some(deadline)).await?;
        for queue in &queues {
            topology::declare_priority_queue(&epoch.connection, &self.names, queue, &self.config)
                .await?;
        }
        let handler = Arc::new(handler);
        let config = self.config.clone().with_prefetch(1);
        let levels = queues
            .iter()
            .map(|queue| {
                Arc::new(Shared {
                    channel: queue.clone(),
                    queue: queue.clone(),
                    handler: SharedHandler(handler.clone()),
                    context: Context::new(self.publisher.clone(), self.names.clone()),
                    publisher: self.publisher.clone(),
                    link: self.link.clone(),
                    config: config.clone(),
                    window: std::sync::Mutex::new(
                        DuplicateWindow::new(
                            self.config.duplicate_ttl,
                            self.config.duplicate_capacity,
                        )
                        .with_reply_budget(self.config.remember_replies_total_bytes),
                    ),
                    dead_letters: DeadLetters::Parked,
                })
            })
            .collect();
        let task = tokio::spawn(priority::keep_consuming(
            levels,
            epoch,
            self.halt.subscribe(),
            STOP_GRACE,
        ));
        self.consumers.lock().expect("consumers lock").push(task);
        // Queues the gateway fills (`IN_<CHANNEL>`, a tenant's `IN_<CHANNEL>.<t>[.<type>]`)
        // are announced as their channel: a lower queue has no consumer while a higher
        // one is busy, and without the announcement the gateway would answer a
        // request for it `no_service`. Only now that they are declared, as `consume`
        // does: announced before, a worker whose declarations failed went on
        // announcing channels it never consumed, and gateways held their requests
        // until they timed out instead of answering `no_service` at once.
        for queue in &queues {
            if let Some(channel) = self.names.channel_of_queue(queue) {
                self.announcer.add_queue(&channel, queue);
            }
        }
        Ok(queues)
    }

    /// Declares the tenant topology of `routing` (README, "Multi-tenant deployments";
    /// [`topology::declare_tenant_topology`]): the same objects a gateway with the same
    /// `[tenants]` section declares, from the one definition in
    /// `warren_protocol::tenants`. Returns the tenant queues, e.g. to pass (in the
    /// worker's own priority order) to [`Service::consume_queues`].
    ///
    /// # Errors
    /// [`ServiceError::InvalidTarget`] for a bad tenant, channel or type name; as
    /// [`Service::consume`] when there is no connection or a declaration fails.
    pub async fn declare_tenants(
        &self,
        routing: &warren_protocol::tenants::TenantRouting,
    ) -> Result<Vec<String>> {
        if *self.stop.borrow() {
            return Err(ServiceError::Stopped);
        }
        let deadline = crate::config::deadline_in(self.config.publish_timeout);
        let epoch = self.link.up(0, Some(deadline)).await?;
        topology::declare_tenant_topology(&epoch.connection, &self.names, routing, &self.config)
            .await
    }

    /// Serves the gateways' `client.auth` requests (gateway `auth.mode = "service"`,
    /// `auth.service.channel` = `channel`): each [`AuthRequest`] is decided by
    /// `authenticator` and its [`AuthReply`] sent back. A message on the channel with
    /// another routing key is refused (`invalid`), as the source system's auth worker
    /// rejected unknown keys. Returns the queue name (`IN_<CHANNEL>`).
    ///
    /// [`AuthRequest`]: warren_protocol::auth::AuthRequest
    /// [`AuthReply`]: warren_protocol::auth::AuthReply
    ///
    /// # Errors
    /// As [`Service::consume`].
    pub async fn authenticate<F, Fut>(&self, channel: &str, authenticator: F) -> Result<String>
    where
        F: Fn(warren_protocol::auth::AuthRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = warren_protocol::auth::AuthReply> + Send + 'static,
    {
        use warren_protocol::auth::{AuthReply, AuthRequest, AUTH_SUBJECT};
        let authenticator = Arc::new(authenticator);
        // Its requests carry the clients' tokens: one that expires unanswered, or that
        // the authenticator fails on, is dropped, not parked in `warren.dead`.
        self.consume_as(
            channel,
            move |_ctx: Context, msg: crate::Incoming| {
                let authenticator = authenticator.clone();
                async move {
                    if msg.subject.as_deref() != Some(AUTH_SUBJECT) {
                        let key = msg.routing_key.clone();
                        return Ok::<_, crate::HandlerError>(Outcome::refuse(
                            warren_protocol::ErrorCode::Invalid,
                            format!("unknown routing key `{key}`"),
                        ));
                    }
                    let reply = match serde_json::from_slice::<AuthRequest>(&msg.body) {
                        Ok(request) => authenticator(request).await,
                        Err(e) => AuthReply::deny(format!("not an auth request: {e}")),
                    };
                    Outcome::json(&reply).map_err(|e| crate::HandlerError::Failed(e.to_string()))
                }
            },
            DeadLetters::Dropped,
        )
        .await
    }

    /// Stops every consumer (in-flight handlers get [`STOP_GRACE`] to finish; what is
    /// not acknowledged goes back to the queue), announces the instance's `leave` on
    /// `warren.services` (so gateways answer `no_service` at once when it was the
    /// channel's last instance), then closes the connection.
    ///
    /// # Errors
    /// None today (closing is best effort); kept for compatibility.
    pub async fn stop(self) -> Result<()> {
        self.stop.send_replace(true);
        self.halt.send_replace(true);
        let tasks = std::mem::take(&mut *self.consumers.lock().expect("consumers lock"));
        for task in tasks {
            if let Err(e) = task.await {
                warn!(error = %e, "consumer task ended abnormally");
            }
        }
        let announcing = self.announcing.lock().expect("announcer lock").take();
        let returning = self.returning.lock().expect("returns lock").take();
        for task in announcing.into_iter().chain(returning) {
            let _ = task.await;
        }
        self.announcer.leave().await;
        self.state.send_replace(ServiceState::Stopped);
        self.publisher.close().await;
        self.link.close().await;
        let supervisor = self.supervisor.lock().expect("supervisor lock").take();
        if let Some(task) = supervisor {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        info!("service stopped");
        Ok(())
    }
}

/// Stops the service without waiting (see [`Service`]). The consumers hold the `halt`
/// sender themselves (one that finds its queue deleted halts the others): without
/// this they went on consuming after the drop, and at the next connection loss nobody
/// reconnected, so the service never consumed again nor turned `Failed`.
impl Drop for Service {
    fn drop(&mut self) {
        // True already after `stop` (which announced `leave` itself): nothing to add.
        let stopped = self.stop.send_replace(true);
        self.halt.send_replace(true);
        if stopped {
            return;
        }
        self.state.send_replace(ServiceState::Stopped);
        let announcing = self.announcing.lock().map(|mut a| a.take()).ok().flatten();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let announcer = self.announcer.clone();
            runtime.spawn(async move {
                // After the announcer's last `join` or heartbeat, not before it.
                if let Some(task) = announcing {
                    let _ = task.await;
                }
                announcer.leave().await;
            });
        }
        info!("service dropped without stop; stopping");
    }
}
