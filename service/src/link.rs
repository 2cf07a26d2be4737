//! The service's link to RabbitMQ: one connection at a time, taken from a list of AMQP
//! URIs. A supervisor task watches it; when it dies (or the broker keeps it blocked),
//! the link goes down, the next URIs are tried with backoff, the exchanges are
//! re-declared on the new connection, and consumers and publishers — which wait for
//! the link while it is down — carry on over it.
//!
//! ```text
//!   Up(epoch g) ──connection error / closed / blocked too long──▶ Down(reason)
//!        ▲                                                          │
//!        └──────── next URI accepted, exchanges declared: Up(g+1) ◀─┘
//!   any ──stop──▶ Closed          Down ──reconnect disabled──▶ Failed(reason)
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use lapin::types::{LongString, ShortString};
use lapin::{Connection, ConnectionProperties, Event};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use warren_protocol::amqp::Names;

use crate::config::ServiceConfig;
use crate::error::{Result, ServiceError};
use crate::service::ServiceState;
use crate::topology;

/// How often the supervisor looks at the connection's status (events usually wake it
/// sooner).
const WATCH_TICK: Duration = Duration::from_millis(250);

/// Splits a list of AMQP URIs separated by commas or whitespace (the form of
/// `--amqp-uri a,b` and `WARREN_AMQP_URI`). Empty items are dropped.
pub fn split_uris(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A URI with its password replaced by `***`, for logs.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => uri.to_string(),
    }
}

/// One connection of the link: the URI it went to and its generation, which grows by
/// one with every reconnect.
#[derive(Clone)]
pub(crate) struct Epoch {
    pub(crate) connection: Arc<Connection>,
    pub(crate) generation: u64,
    pub(crate) uri: usize,
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Epoch")
            .field("generation", &self.generation)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// Where the link stands.
#[derive(Debug, Clone)]
pub(crate) enum LinkState {
    /// Connected.
    Up(Epoch),
    /// Lost; reconnecting.
    Down {
        /// Why the last connection was lost.
        reason: String,
        /// The generation of the lost connection.
        generation: u64,
    },
    /// Lost and not reconnecting (reconnection disabled).
    Failed(String),
    /// Closed on request.
    Closed,
}

type Events = BoxStream<'static, Event>;

/// The link: URIs, settings, current state.
#[derive(Debug)]
pub(crate) struct Link {
    uris: Vec<String>,
    names: Names,
    config: ServiceConfig,
    state: watch::Sender<LinkState>,
    lost: Notify,
}

impl Link {
    /// Connects to the first URI that accepts (each tried once, in order) and declares
    /// the exchanges. Returns the link and the first connection's event stream, for
    /// [`Link::supervise`].
    pub(crate) async fn connect(
        uris: Vec<String>,
        names: Names,
        config: ServiceConfig,
    ) -> Result<(Arc<Link>, Events)> {
        if uris.is_empty() {
            return Err(ServiceError::NoUri);
        }
        let link = Link {
            uris,
            names,
            config,
            state: watch::Sender::new(LinkState::Closed),
            lost: Notify::new(),
        };
        let mut last = None;
        for index in 0..link.uris.len() {
            match link.open(index, 1).await {
                Ok((epoch, events)) => {
                    link.state.send_replace(LinkState::Up(epoch));
                    return Ok((Arc::new(link), events));
                }
                Err(e) => {
                    warn!(uri = %redact(&link.uris[index]), error = %e, "RabbitMQ connection failed");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one URI was tried"))
    }

    /// The URIs, in order.
    pub(crate) fn uris(&self) -> &[String] {
        &self.uris
    }

    /// The current connection, if the link is up.
    pub(crate) fn current(&self) -> Option<Epoch> {
        match &*self.state.borrow() {
            LinkState::Up(epoch) => Some(epoch.clone()),
            _ => None,
        }
    }

    /// Waits until the link is up on a connection of generation `min_generation` or
    /// later, at most until `deadline` (forever with `None`).
    ///
    /// # Errors
    /// [`ServiceError::Stopped`] once the link is closed;
    /// [`ServiceError::BrokerUnavailable`] when it failed for good or the deadline
    /// passed.
    pub(crate) async fn up(
        &self,
        min_generation: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Epoch> {
        let started = Instant::now();
        let mut rx = self.state.subscribe();
        let wait = rx.wait_for(|s| match s {
            LinkState::Up(e) => e.generation >= min_generation,
            LinkState::Failed(_) | LinkState::Closed => true,
            LinkState::Down { .. } => false,
        });
        let outcome = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, wait).await.ok(),
            None => Some(wait.await),
        };
        match outcome {
            Some(Ok(state)) => match &*state {
                LinkState::Up(epoch) => Ok(epoch.clone()),
                LinkState::Failed(reason) => Err(ServiceError::BrokerUnavailable {
                    waited: started.elapsed(),
                    reason: format!("the connection was lost and is not re-established: {reason}"),
                }),
                _ => Err(ServiceError::Stopped),
            },
            Some(Err(_)) => Err(ServiceError::Stopped),
            None => Err(ServiceError::BrokerUnavailable {
                waited: started.elapsed(),
                reason: self.describe(),
            }),
        }
    }

    /// What the link is doing, for an error message.
    pub(crate) fn describe(&self) -> String {
        match &*self.state.borrow() {
            LinkState::Up(epoch) if epoch.connection.status().blocked() => {
                "the broker blocks the connection (resource alarm)".into()
            }
            LinkState::Up(_) => "connected, but the broker did not confirm in time".into(),
            LinkState::Down { reason, generation } => {
                format!("reconnecting since connection #{generation} was lost: {reason}")
            }
            LinkState::Failed(reason) => format!("connection lost: {reason}"),
            LinkState::Closed => "the service is stopped".into(),
        }
    }

    /// Tells the supervisor that something failed on the connection of `generation`,
    /// so it looks at it now rather than at its next tick.
    pub(crate) fn report_lost(&self, generation: u64) {
        if self.current().is_some_and(|e| e.generation == generation) {
            self.lost.notify_one();
        }
    }

    /// Marks the link closed and closes the current connection.
    pub(crate) async fn close(&self) {
        let previous = self.state.send_replace(LinkState::Closed);
        self.lost.notify_one();
        if let LinkState::Up(epoch) = previous {
            if epoch.connection.status().connected() {
                let close = epoch
                    .connection
                    .close(200, ShortString::from("service stopping"));
                if let Err(e) = tokio::time::timeout(Duration::from_secs(5), close).await {
                    warn!(error = %e, "closing the connection timed out");
                }
            }
        }
    }

    /// Watches the connection, reconnects when it is lost, and mirrors the link into
    /// the service's state (`Running` / `Reconnecting` / `Failed`). Returns when
    /// `stop` turns true (or its sender is gone) or the link is closed or failed.
    pub(crate) async fn supervise(
        self: Arc<Self>,
        mut events: Events,
        mut stop: watch::Receiver<bool>,
        service: watch::Sender<ServiceState>,
    ) {
        loop {
            let Some(epoch) = self.current() else {
                return;
            };
            let reason = tokio::select! {
                reason = self.watch(&epoch, &mut events) => reason,
                _ = stop.changed() => return,
            };
            if *stop.borrow() || matches!(*self.state.borrow(), LinkState::Closed) {
                return;
            }
            let lost_at = Instant::now();
            warn!(uri = %redact(&self.uris[epoch.uri]), generation = epoch.generation, reason = %reason, "lost RabbitMQ");
            self.state.send_replace(LinkState::Down {
                reason: reason.clone(),
                generation: epoch.generation,
            });
            // A blocked connection is still open: close it so its channels go away.
            if epoch.connection.status().connected() {
                let close = epoch
                    .connection
                    .close(320, ShortString::from("moving to another node"));
                let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
            }
            if !self.config.reconnect {
                self.state.send_replace(LinkState::Failed(reason.clone()));
                service.send_if_modified(|s| set_if_live(s, ServiceState::Failed(reason)));
                return;
            }
            service.send_if_modified(|s| set_if_live(s, ServiceState::Reconnecting(reason)));
            let next = tokio::select! {
                next = self.reconnect(epoch.uri, epoch.generation + 1) => next,
                _ = stop.changed() => return,
            };
            let (new_epoch, new_events) = next;
            if *stop.borrow() || matches!(*self.state.borrow(), LinkState::Closed) {
                let _ = new_epoch
                    .connection
                    .close(200, ShortString::from("stopping"))
                    .await;
                return;
            }
            info!(
                uri = %redact(&self.uris[new_epoch.uri]),
                generation = new_epoch.generation,
                down_ms = lost_at.elapsed().as_millis() as u64,
                "reconnected to RabbitMQ"
            );
            events = new_events;
            self.state.send_replace(LinkState::Up(new_epoch));
            service.send_if_modified(|s| {
                if matches!(s, ServiceState::Reconnecting(_)) {
                    *s = ServiceState::Running;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Resolves, with a reason, once `epoch`'s connection is no longer usable.
    async fn watch(&self, epoch: &Epoch, events: &mut Events) -> String {
        let mut blocked_since: Option<Instant> = None;
        let mut last_error: Option<String> = None;
        let mut tick = tokio::time::interval(WATCH_TICK);
        loop {
            if matches!(*self.state.borrow(), LinkState::Closed) {
                return "closed".into();
            }
            let status = epoch.connection.status();
            if !status.connected() {
                let state = if status.closed() {
                    "closed by the broker"
                } else {
                    "failed"
                };
                return last_error.unwrap_or_else(|| format!("the connection is {state}"));
            }
            if let Some(since) = blocked_since {
                if since.elapsed() >= self.config.blocked_timeout {
                    return format!(
                        "blocked by the broker for {:?} (resource alarm)",
                        since.elapsed()
                    );
                }
            }
            tokio::select! {
                event = events.next() => match event {
                    Some(Event::Error(e)) => last_error = Some(e.to_string()),
                    Some(Event::ConnectionBlocked(why)) => {
                        warn!(reason = %why, "the broker blocks the connection");
                        blocked_since = Some(Instant::now());
                    }
                    Some(Event::ConnectionUnblocked) => {
                        info!("the broker unblocked the connection");
                        blocked_since = None;
                    }
                    Some(_) => {}
                    None => *events = futures_util::stream::pending().boxed(),
                },
                _ = self.lost.notified() => {}
                _ = tick.tick() => {}
            }
        }
    }

    /// Tries the URIs after `previous` in turn, pausing with backoff, until one
    /// accepts.
    async fn reconnect(&self, previous: usize, generation: u64) -> (Epoch, Events) {
        let n = self.uris.len();
        let mut attempt: u32 = 0;
        loop {
            let index = (previous + 1 + attempt as usize) % n;
            match self.open(index, generation).await {
                Ok(opened) => return opened,
                Err(e) => {
                    warn!(uri = %redact(&self.uris[index]), attempt, error = %e, "reconnect attempt failed")
                }
            }
            attempt += 1;
            tokio::time::sleep(reconnect_backoff(
                attempt,
                self.config.max_reconnect_backoff,
            ))
            .await;
        }
    }

    /// Opens a connection to URI `index` and declares the exchanges on it.
    async fn open(&self, index: usize, generation: u64) -> Result<(Epoch, Events)> {
        let uri = &self.uris[index];
        let properties = ConnectionProperties::default().with_connection_name(LongString::from(
            format!("{} ({})", self.config.app_id, self.names.prefix()),
        ));
        let attempt = async {
            let connection = Connection::connect(uri, properties).await?;
            // Listen before anything can fail, so no error event is missed.
            let events = connection.events_listener().boxed();
            if let Err(e) = topology::declare_exchanges(&connection, &self.names).await {
                let _ = connection
                    .close(200, ShortString::from("declare failed"))
                    .await;
                return Err(e);
            }
            Ok((connection, events))
        };
        let (connection, events) = tokio::time::timeout(self.config.connect_timeout, attempt)
            .await
            .map_err(|_| ServiceError::BrokerUnavailable {
                waited: self.config.connect_timeout,
                reason: format!("connecting to {} timed out", redact(uri)),
            })??;
        info!(uri = %redact(uri), generation, "connected to RabbitMQ");
        Ok((
            Epoch {
                connection: Arc::new(connection),
                generation,
                uri: index,
            },
            events,
        ))
    }
}

/// Moves a live service state (running or reconnecting) to `next`; a stopped or
/// failed service stays as it is.
fn set_if_live(state: &mut ServiceState, next: ServiceState) -> bool {
    match state {
        ServiceState::Running | ServiceState::Reconnecting(_) if *state != next => {
            *state = next;
            true
        }
        _ => false,
    }
}

/// Pause after the `attempt`-th failed connection attempt: 100 ms doubling up to
/// `max`, with up to a quarter of random jitter so that many services do not knock
/// in step.
pub fn reconnect_backoff(attempt: u32, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(10);
    let base = Duration::from_millis(100u64 << exp).min(max);
    let quarter = base.as_millis() as u64 / 4;
    let jitter = if quarter == 0 {
        0
    } else {
        (uuid::Uuid::new_v4().as_u128() as u64) % quarter
    };
    base.saturating_sub(Duration::from_millis(jitter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_lists_split_on_commas_and_spaces() {
        assert_eq!(
            split_uris("amqp://a:1/%2f, amqp://b:2/%2f,,amqp://c:3/%2f amqp://d"),
            vec![
                "amqp://a:1/%2f",
                "amqp://b:2/%2f",
                "amqp://c:3/%2f",
                "amqp://d"
            ]
        );
        assert!(split_uris(" , ").is_empty());
    }

    #[test]
    fn redaction_hides_the_password_only() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn the_reconnect_backoff_grows_to_its_cap() {
        let max = Duration::from_secs(2);
        assert!(reconnect_backoff(1, max) <= Duration::from_millis(100));
        assert!(reconnect_backoff(1, max) >= Duration::from_millis(75));
        assert!(reconnect_backoff(3, max) >= Duration::from_millis(300));
        assert!(reconnect_backoff(30, max) <= max);
        assert!(reconnect_backoff(30, max) >= Duration::from_millis(1500));
    }

    #[test]
    fn a_stopped_service_state_is_not_revived() {
        let mut s = ServiceState::Stopped;
        assert!(!set_if_live(&mut s, ServiceState::Reconnecting("x".into())));
        assert_eq!(s, ServiceState::Stopped);
        let mut s = ServiceState::Running;
        assert!(set_if_live(&mut s, ServiceState::Reconnecting("x".into())));
    }
}
