//! How a service consumes and stays connected: prefetch, retries, the duplicate
//! window, message TTLs, reconnection and publish timeouts. One struct with documented
//! defaults.

use std::collections::BTreeMap;
use std::time::Duration;

/// Settings of a [`Service`](crate::Service). `ServiceConfig::default()` gives the
/// documented defaults; change fields with the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Messages RabbitMQ hands to one consumer before it acks (basic.qos), and so the
    /// number of handler calls running at once per channel. Default 1; 0 counts as 1.
    /// Handlers still running when their consumer was lost count too: the consumer
    /// started again on the next connection runs only as many beside them as this
    /// leaves free, until they end or for at most 60 s (a hung handler must not leave
    /// the channel unconsumed for ever).
    pub prefetch: u16,
    /// Handler attempts before a message is dead-lettered. A handler error before
    /// that nacks the message with requeue (after a short backoff), so it is tried
    /// again, possibly by another worker. Attempts are counted from the quorum
    /// queue's `x-delivery-count` header, or in this process for classic queues: per
    /// `message_id`, or for a message without one per routing key, correlation id and
    /// body. Default 5.
    pub max_attempts: u32,
    /// How long a handled `message_id` is remembered to suppress duplicates.
    /// Default 10 minutes.
    pub duplicate_ttl: Duration,
    /// How many handled `message_id`s are remembered at most. Default 100 000.
    pub duplicate_capacity: usize,
    /// Replies up to this size are remembered with their `message_id`, so a re-sent
    /// request gets the same answer without calling the handler. Default 64 KiB.
    pub remember_reply_bytes: usize,
    /// Most bytes of replies one duplicate window (one per consumed channel or
    /// priority queue) remembers in all; beyond it the oldest are forgotten (their
    /// ids are still remembered: a copy is acknowledged, not handled again, and gets
    /// no reply). A reply that could not be published yet (its request handed back to
    /// be answered by the copy) pushed out that way is not: its copy is handled again.
    /// A reply larger than this is not remembered, as one larger than
    /// `remember_reply_bytes`. Default 64 MiB.
    pub remember_replies_total_bytes: usize,
    /// `app_id` set on every message the service publishes. Default
    /// `warren-service`.
    pub app_id: String,
    /// `x-queue-type` of the `IN_<CHANNEL>` queues when the service is the first to
    /// declare them: `quorum` (default, as the gateway) or `classic`. A queue that
    /// exists already is used as it is.
    pub queue_type: String,
    /// Bounds of the `IN_<CHANNEL>` queues the service declares first (`x-max-length`,
    /// `x-max-length-bytes`, `reject-publish`); the gateway's defaults, so both declare
    /// the same queue. Default: [`QueueBounds::INBOUND`].
    pub inbound_bounds: warren_protocol::amqp::QueueBounds,
    /// Per-channel message TTL of the `IN_<CHANNEL>` queue the service declares first
    /// (`x-message-ttl`; the queue dead-letters to `warren.dead`, so an expired message
    /// is parked in the `warren.dead` queue, not silently gone). Must match the
    /// gateways' `message_ttl_ms` for the channel (a queue that exists is used as it
    /// is); 0 is none, as there. Default: none.
    pub message_ttls: BTreeMap<String, Duration>,
    /// Re-establish a lost connection (to the next URI of the list, with backoff), then
    /// re-declare the topology and restart the consumers. When `false`, a lost
    /// connection turns the service [`Failed`](crate::ServiceState::Failed). Default
    /// `true`.
    pub reconnect: bool,
    /// Longest pause between two connection attempts while reconnecting (the pause
    /// starts at 100 ms and doubles). Default 2 s.
    pub max_reconnect_backoff: Duration,
    /// Bound on one connection attempt (TCP, AMQP handshake, exchange declarations).
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// How long a publish (or a reply) may wait for a connection and the broker's
    /// confirm, retrying across reconnects with the same `message_id`, before it fails
    /// with [`ServiceError::BrokerUnavailable`](crate::ServiceError::BrokerUnavailable).
    /// Default 10 s.
    pub publish_timeout: Duration,
    /// A publishing channel unused this long is closed (after its confirms came); the
    /// next publish on its lane opens it again. The service publishes on one AMQP
    /// channel per Warren channel it sends to (and one for replies, one for the rest:
    /// [`Publisher`](crate::Publisher) says why), so without this a service that
    /// sends to many Warren channels over its life would keep a channel for each, up
    /// to RabbitMQ's 2,047 per connection. Default 60 s; at least 1 s.
    pub publish_channel_idle: Duration,
    /// A connection the broker keeps blocked (resource alarm) this long is given up
    /// for the next URI. Default 30 s.
    pub blocked_timeout: Duration,
    /// Period of the instance's heartbeat on `warren.services` (the service registry:
    /// a `join` at start and whenever [`Service::consume`](crate::Service::consume)
    /// adds a channel, a `heartbeat` every period, a `leave` on
    /// [`Service::stop`](crate::Service::stop)). Gateways count the instance gone
    /// after three missed heartbeats. `None` turns announcing off (gateways then fall
    /// back on the inbound queue's consumer count), and so does zero. Default 2 s.
    pub announce_interval: Option<Duration>,
    /// The version the instance announces. Default: the service library's version.
    pub version: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            prefetch: 1,
            max_attempts: 5,
            duplicate_ttl: Duration::from_secs(600),
            duplicate_capacity: 100_000,
            remember_reply_bytes: 64 * 1024,
            remember_replies_total_bytes: 64 * 1024 * 1024,
            app_id: "warren-service".to_string(),
            queue_type: "quorum".to_string(),
            inbound_bounds: warren_protocol::amqp::QueueBounds::INBOUND,
            message_ttls: BTreeMap::new(),
            reconnect: true,
            max_reconnect_backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(10),
            publish_channel_idle: Duration::from_secs(60),
            blocked_timeout: Duration::from_secs(30),
            announce_interval: Some(Duration::from_secs(2)),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl ServiceConfig {
    /// Sets the prefetch (at least 1).
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The prefetch a consumer uses: `prefetch`, at least 1. The field is public, and 0
    /// (AMQP's "no limit") let RabbitMQ hand the consumer the whole queue while no
    /// handler could run (no permit): the service held every message and handled none.
    pub(crate) fn consumer_prefetch(&self) -> u16 {
        self.prefetch.max(1)
    }

    /// Sets the attempts before dead-lettering (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the duplicate window: how long and how many `message_id`s are remembered.
    pub fn with_duplicate_window(mut self, ttl: Duration, capacity: usize) -> Self {
        self.duplicate_ttl = ttl;
        self.duplicate_capacity = capacity.max(1);
        self
    }

    /// Sets the `x-queue-type` of the inbound queues the service declares first.
    pub fn with_queue_type(mut self, queue_type: impl Into<String>) -> Self {
        self.queue_type = queue_type.into();
        self
    }

    /// Sets the `app_id` of published messages.
    pub fn with_app_id(mut self, app_id: impl Into<String>) -> Self {
        self.app_id = app_id.into();
        self
    }

    /// Sets the message TTL of `channel`'s inbound queue (see
    /// [`ServiceConfig::message_ttls`]).
    pub fn with_message_ttl(mut self, channel: impl Into<String>, ttl: Duration) -> Self {
        self.message_ttls.insert(channel.into(), ttl);
        self
    }

    /// Turns reconnection on or off.
    pub fn with_reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets how long a publish may wait for a connection and its confirm.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets how long a publishing channel may stay unused before it is closed (at
    /// least 1 s).
    pub fn with_publish_channel_idle(mut self, idle: Duration) -> Self {
        self.publish_channel_idle = idle.max(Duration::from_secs(1));
        self
    }

    /// Sets the registry heartbeat period (`None`: do not announce).
    pub fn with_announce_interval(mut self, interval: Option<Duration>) -> Self {
        self.announce_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Sets the version the instance announces.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the longest pause between connection attempts.
    pub fn with_max_reconnect_backoff(mut self, backoff: Duration) -> Self {
        self.max_reconnect_backoff = backoff;
        self
    }
}

/// The instant `timeout` from now; a timeout too long to add (`Duration::MAX`, "no
/// limit") is about thirty years.
pub(crate) fn deadline_in(timeout: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(30 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_timeout_too_long_to_add_is_a_far_deadline_not_a_panic() {
        let far = deadline_in(std::time::Duration::MAX);
        assert!(
            far > tokio::time::Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600)
        );
        let near = deadline_in(std::time::Duration::from_secs(1));
        assert!(near < far);
    }
}
