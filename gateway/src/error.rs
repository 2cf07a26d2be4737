//! The gateway's error type: one enum for everything that can fail while starting,
//! configuring or talking to RabbitMQ. Per-frame problems are not errors of this kind:
//! they become `error` frames with a registry code (see `connection.rs`).

use std::net::SocketAddr;

/// Why the gateway (or one of its operations) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration is inconsistent or holds a value that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    ConfigFile {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML for [`crate::Config`].
    #[error("cannot parse configuration file {path}: {source}")]
    ConfigParse {
        /// The file.
        path: String,
        /// The TOML error.
        source: Box<toml::de::Error>,
    },
    /// No configured RabbitMQ URI accepted a connection.
    #[error("cannot connect to RabbitMQ ({uris}): {source}")]
    Connect {
        /// The URIs that were tried (credentials removed).
        uris: String,
        /// The last error.
        source: lapin::Error,
    },
    /// At start, RabbitMQ stayed unreachable for `broker_start_wait_ms`.
    #[error("RabbitMQ was not reachable within broker_start_wait_ms ({waited_ms} ms)")]
    StartWait {
        /// The wait, in ms.
        waited_ms: u64,
        /// The last attempt's error.
        #[source]
        source: Box<GatewayError>,
    },
    /// An AMQP operation failed.
    #[error("AMQP {op} failed: {source}")]
    Amqp {
        /// What was attempted, e.g. `queue.declare warren.in`.
        op: String,
        /// The broker's or lapin's error.
        source: lapin::Error,
    },
    /// RabbitMQ cancelled a consumer the gateway needed an answer from (e.g. its
    /// queue was deleted meanwhile).
    #[error("RabbitMQ cancelled the consumer of {what}")]
    Cancelled {
        /// What was being read.
        what: String,
    },
    /// The broker link was closed by shutdown.
    #[error("the gateway is shutting down")]
    Closed,
    /// RabbitMQ stayed unreachable for `broker_wait_ms`; the gateway keeps reconnecting.
    #[error("RabbitMQ is unreachable; the gateway is reconnecting")]
    Unavailable,
    /// RabbitMQ kept publishing blocked (resource alarm) for `broker_wait_ms`.
    #[error("RabbitMQ blocks publishing (resource alarm)")]
    Blocked,
    /// The RabbitMQ management API could not be asked (`topology check
    /// --management-url`).
    #[error("cannot read the RabbitMQ management API at {0}")]
    Management(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
}

impl GatewayError {
    /// Whether this is RabbitMQ not (yet) listening or answering (a socket error),
    /// which waiting can cure, unlike a refused login or a missing vhost.
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            GatewayError::Connect { source, .. } => matches!(
                source.kind(),
                lapin::ErrorKind::IOError(_) | lapin::ErrorKind::MissingHeartbeatError
            ),
            _ => false,
        }
    }

    /// Wraps a lapin error with the name of the operation that failed.
    pub(crate) fn amqp(op: impl Into<String>, source: lapin::Error) -> Self {
        GatewayError::Amqp {
            op: op.into(),
            source,
        }
    }

    /// True when the broker answered 404 NOT_FOUND (e.g. a passive declare of a queue
    /// that does not exist).
    pub fn is_not_found(&self) -> bool {
        match self {
            GatewayError::Amqp { source, .. } => is_not_found(source),
            _ => false,
        }
    }
}

/// True when a lapin error is one RabbitMQ closes a channel with (a soft error: 404,
/// 403, 406, ...), which leaves the connection and its other channels working.
pub(crate) fn is_channel_error(e: &lapin::Error) -> bool {
    use lapin::protocol::AMQPErrorKind;
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => matches!(amqp.kind(), AMQPErrorKind::Soft(_)),
        _ => false,
    }
}

/// True when a lapin error is the broker's 404 NOT_FOUND.
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
        }
        _ => false,
    }
}

/// True when a lapin error is the broker's 406 PRECONDITION_FAILED (e.g. a queue
/// declared again with other arguments).
pub(crate) fn is_precondition_failed(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            )
        }
        _ => false,
    }
}
