//! How a service consumes: prefetch, retries, the duplicate window. One struct with
//! documented defaults.

use std::time::Duration;

/// Settings of a [`Service`](crate::Service). `ServiceConfig::default()` gives the
/// documented defaults; change fields with the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Messages RabbitMQ hands to one consumer before it acks (basic.qos), and so the
    /// number of handler calls running at once per channel. Default 1.
    pub prefetch: u16,
    /// Handler attempts before a message is dead-lettered. A handler error before
    /// that nacks the message with requeue (after a short backoff), so it is tried
    /// again, possibly by another worker. Attempts are counted from the quorum
    /// queue's `x-delivery-count` header, or per `message_id` in this process for
    /// classic queues. Default 5.
    pub max_attempts: u32,
    /// How long a handled `message_id` is remembered to suppress duplicates.
    /// Default 10 minutes.
    pub duplicate_ttl: Duration,
    /// How many handled `message_id`s are remembered at most. Default 100 000.
    pub duplicate_capacity: usize,
    /// Replies up to this size are remembered with their `message_id`, so a re-sent
    /// request gets the same answer without calling the handler. Default 64 KiB.
    pub remember_reply_bytes: usize,
    /// `app_id` set on every message the service publishes. Default
    /// `warren-service`.
    pub app_id: String,
    /// `x-queue-type` of the `IN_<CHANNEL>` queues when the service is the first to
    /// declare them: `quorum` (default, as the gateway) or `classic`. A queue that
    /// exists already is used as it is.
    pub queue_type: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            prefetch: 1,
            max_attempts: 5,
            duplicate_ttl: Duration::from_secs(600),
            duplicate_capacity: 100_000,
            remember_reply_bytes: 64 * 1024,
            app_id: "warren-service".to_string(),
            queue_type: "quorum".to_string(),
        }
    }
}

impl ServiceConfig {
    /// Sets the prefetch (at least 1).
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
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
}
