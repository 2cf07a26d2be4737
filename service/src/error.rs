//! The service library's error type: one enum for every way talking to RabbitMQ or
//! building a message can fail.

use warren_protocol::amqp::NameError;

/// What can go wrong in the service library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The AMQP connection or channel failed, or the broker refused an operation.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker answered a publish with a negative confirm, and still did when it was
    /// published again until the publish timeout.
    #[error("the broker refused (nacked) the message published to `{exchange}` with key `{routing_key}`")]
    Nacked {
        /// Exchange published to (`""` for the default exchange).
        exchange: String,
        /// Routing key of the publish.
        routing_key: String,
    },
    /// A publish names no target at all (no broadcast, group, user or event).
    #[error("the message names no target")]
    NoTargets,
    /// A channel, group, user or event name cannot be used in a routing key.
    #[error("invalid target: {0}")]
    InvalidTarget(#[from] NameError),
    /// A reply was asked for a message that is not a request (no `reply_to`).
    #[error("the message is not a request: it has no reply_to")]
    NotARequest,
    /// A message could not be serialised to JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A name that must reach RabbitMQ as it is (a routing key, an exchange or queue
    /// name, a correlation id) is longer than an AMQP short string.
    #[error("the {what} is {len} bytes, longer than an AMQP short string (255 bytes)")]
    TooLongForAmqp {
        /// What the name is, e.g. `correlation id`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A message whose properties (its headers, the `CC` list of a multicast) do not
    /// fit in one AMQP frame: RabbitMQ would close the whole connection on it
    /// (`frame_too_large`), so nothing is published. Send fewer targets per message
    /// or smaller headers (the body may be as large as RabbitMQ's
    /// `max_message_size`: it is split into frames).
    #[error("the message's properties (headers, CC list) take {bytes} bytes; RabbitMQ takes at most {limit} in one frame (frame_max): nothing was published")]
    TooLarge {
        /// The encoded size of the content header's payload.
        bytes: usize,
        /// What one frame holds for it on this connection.
        limit: usize,
    },
    /// The service was stopped while the operation was waiting.
    #[error("the service is stopped")]
    Stopped,
    /// The service has failed ([`ServiceState::Failed`](crate::ServiceState::Failed),
    /// the reason): it consumes nothing any more.
    #[error("the service has failed: {0}")]
    Failed(String),
    /// No AMQP URI was given.
    #[error("no AMQP URI given")]
    NoUri,
    /// A priority list of queues that cannot be consumed: empty, a blank name, or a
    /// queue named twice.
    #[error("invalid priority queue list: {0}")]
    InvalidQueueList(String),
    /// No connection to RabbitMQ (lost and not re-established, or blocked, or no
    /// confirm) within the publish timeout. The message may or may not have reached
    /// the broker: publishing it again with the same `message_id` is safe.
    #[error("RabbitMQ unavailable after waiting {waited:?}: {reason}")]
    BrokerUnavailable {
        /// How long the operation waited.
        waited: std::time::Duration,
        /// Why: the last connection error, or what was still missing.
        reason: String,
    },
}

/// Result alias of the service library.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Whether a lapin error is the broker refusing a declaration whose arguments differ
/// from the existing exchange or queue, or that it does not take (406
/// PRECONDITION_FAILED).
pub(crate) fn is_precondition_failed(err: &lapin::Error) -> bool {
    is_soft(err, lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
}

/// Whether a lapin error is a passive declare finding nothing (404 NOT_FOUND).
pub(crate) fn is_not_found(err: &lapin::Error) -> bool {
    is_soft(err, lapin::protocol::AMQPSoftError::NOTFOUND)
}

fn is_soft(err: &lapin::Error, kind: lapin::protocol::AMQPSoftError) -> bool {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => {
            *e.kind() == lapin::protocol::AMQPErrorKind::Soft(kind)
        }
        _ => false,
    }
}
