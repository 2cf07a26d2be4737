//! The instance's part in the service registry: announcements on `warren.services`
//! (a `join` at start and whenever the consumed channels change, a `heartbeat` every
//! [`ServiceConfig::announce_interval`], a `leave` on a clean stop or when the service
//! fails), from which the gateways know at once that a channel has nobody to answer
//! (`no_service`).

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::types::ShortString;
use lapin::BasicProperties;
use tokio::sync::watch;
use tracing::debug;
use warren_protocol::amqp::Names;
use warren_protocol::services::{AnnounceEvent, Announcement};

use crate::config::ServiceConfig;
use crate::publisher::Publisher;
use crate::service::ServiceState;
use crate::short_string::fitted;

/// How long one announcement may wait for the broker before it is skipped (the next
/// heartbeat tries again).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

/// Announces one service instance.
#[derive(Debug)]
pub(crate) struct Announcer {
    publisher: Publisher,
    exchange: String,
    name: String,
    instance: String,
    version: String,
    interval: Option<Duration>,
    names: Names,
    /// The queues the instance consumes, each with its channel; a change is announced
    /// with a `join`.
    consumed: watch::Sender<BTreeSet<(String, String)>>,
}

impl Announcer {
    pub(crate) fn new(
        publisher: Publisher,
        names: &Names,
        config: &ServiceConfig,
        instance: String,
    ) -> Self {
        Announcer {
            publisher,
            exchange: names.services_exchange(),
            name: config.app_id.clone(),
            instance,
            version: config.version.clone(),
            // The field is public: zero, which `with_announce_interval` refuses,
            // turns announcing off here too (a zero period panicked the task).
            interval: config.announce_interval.filter(|d| !d.is_zero()),
            names: names.clone(),
            consumed: watch::Sender::new(BTreeSet::new()),
        }
    }

    /// This instance's id in the registry.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// A new instance id: `<app_id>-<12 random hex digits>`.
    pub(crate) fn new_instance_id(config: &ServiceConfig) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}", config.app_id, &id[..12])
    }

    /// Adds a consumed channel, through its `IN_<CHANNEL>` queue (announced at once
    /// with a `join`).
    pub(crate) fn add_channel(&self, channel: &str) {
        self.add_queue(channel, &self.names.channel_queue(channel));
    }

    /// Adds a consumed queue of `channel` (a tenant's, for one; announced at once
    /// with a `join`). Gateways take an instance that names its queues to answer
    /// only for those: a worker of one tenant does not for another.
    pub(crate) fn add_queue(&self, channel: &str, queue: &str) {
        self.consumed
            .send_if_modified(|set| set.insert((channel.to_string(), queue.to_string())));
    }

    /// Announces `join` now and whenever the channels change, `heartbeat` every
    /// interval, until `stop` turns true, or until the service fails (then `leave`:
    /// it consumes nothing any more, and gateways answer `no_service` at once instead
    /// of letting requests wait for their timeout). Does nothing when announcing is
    /// off.
    pub(crate) async fn run(
        self: std::sync::Arc<Self>,
        mut stop: watch::Receiver<bool>,
        mut state: watch::Receiver<ServiceState>,
    ) {
        let Some(interval) = self.interval else {
            return;
        };
        let failed = async move {
            let failed = state.wait_for(|s| matches!(s, ServiceState::Failed(_)));
            if failed.await.is_err() {
                // The service is gone without failing: `stop` decides.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = self.clone().announce_until(interval, stop.clone()) => {}
            _ = failed => {
                if !*stop.borrow_and_update() {
                    debug!("the service failed; announcing leave");
                    self.announce(AnnounceEvent::Leave).await;
                }
            }
        }
    }

    async fn announce_until(
        self: std::sync::Arc<Self>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut channels = self.consumed.subscribe();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut event = AnnounceEvent::Join;
        loop {
            tokio::select! {
                _ = self.announce(event) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            event = tokio::select! {
                _ = tick.tick() => AnnounceEvent::Heartbeat,
                changed = channels.changed() => match changed {
                    Ok(()) => AnnounceEvent::Join,
                    Err(_) => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            };
        }
    }

    /// Announces `leave` (on a clean stop), waiting at most a moment for the broker.
    pub(crate) async fn leave(&self) {
        if self.interval.is_some() {
            self.announce(AnnounceEvent::Leave).await;
        }
    }

    /// The announcement of `event` with the instance's current channels and queues.
    pub(crate) fn announcement(&self, event: AnnounceEvent) -> Announcement {
        let consumed = self.consumed.borrow();
        let channels: BTreeSet<&String> = consumed.iter().map(|(c, _)| c).collect();
        Announcement {
            event,
            name: self.name.clone(),
            instance: self.instance.clone(),
            channels: channels.into_iter().cloned().collect(),
            queues: consumed.iter().map(|(_, q)| q.clone()).collect(),
            version: self.version.clone(),
            interval_ms: self.interval.map_or(0, |d| d.as_millis() as u64),
        }
    }

    async fn announce(&self, event: AnnounceEvent) {
        let announcement = self.announcement(event);
        let body = serde_json::to_vec(&announcement).expect("an announcement serialises");
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_app_id(fitted(&self.name))
            .with_expiration(ShortString::from(announcement.lifetime_ms().to_string()));
        let publish = self.publisher.publish_confirmed(
            &self.exchange,
            event.routing_key(),
            &body,
            properties,
        );
        match tokio::time::timeout(ANNOUNCE_WAIT, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, ?event, "announcement not published"),
            Err(_) => debug!(?event, "announcement not confirmed in time; skipped"),
        }
    }
}
