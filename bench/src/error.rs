//! The one error type of the load generator.

use std::path::PathBuf;

/// Everything that can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The WebSocket connection to the gateway failed.
    #[error("websocket: {0}")]
    Ws(Box<tokio_tungstenite::tungstenite::Error>),
    /// The WebSocket connection of a deflate client (yawc) failed.
    #[error("websocket (deflate): {0}")]
    Yawc(Box<yawc::WebSocketError>),
    /// A deflate client's upgrade was not answered with permessage-deflate (and
    /// `warren.v1`).
    #[error(
        "the gateway did not agree to permessage-deflate: {0} \
         (does it run with --permessage-deflate=true?)"
    )]
    DeflateRefused(String),
    /// An AMQP operation against RabbitMQ failed.
    #[error("amqp: {0}")]
    Amqp(Box<lapin::Error>),
    /// A file, socket or process operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The gateway sent text that is not a valid server frame.
    #[error("protocol: {0}")]
    Decode(#[from] warren_protocol::DecodeError),
    /// The gateway answered with a frame the scenario did not expect.
    #[error("unexpected frame from the gateway: {0}")]
    Unexpected(String),
    /// The Web-STOMP endpoint refused, closed, or sent something that is not STOMP.
    #[error("web-stomp: {0}")]
    Stomp(String),
    /// The gateway closed the WebSocket.
    #[error("the gateway closed the connection")]
    Closed,
    /// A process of the stack (gateway, demo service) did not start.
    #[error("{what} did not become ready: {why}")]
    Stack {
        /// Which process.
        what: &'static str,
        /// What went wrong.
        why: String,
    },
    /// Something took longer than the scenario allows.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// A client finished its set-up after the measured window opened, which would
    /// then count set-up time as load ([`crate::measurement::MeasureWindow::set_up`]).
    #[error(
        "a client's set-up ended {0} ms after the measured window opened: raise --warmup          (set-up is not measured)"
    )]
    SetupOverran(u64),
    /// Drawing the chart failed.
    #[error("chart {path}: {why}")]
    Chart {
        /// The chart file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// Writing the JSON report failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A command-line option cannot be used as given.
    #[error("bad option: {0}")]
    Config(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for BenchError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        BenchError::Ws(Box::new(e))
    }
}

impl From<yawc::WebSocketError> for BenchError {
    fn from(e: yawc::WebSocketError) -> Self {
        BenchError::Yawc(Box::new(e))
    }
}

impl From<lapin::Error> for BenchError {
    fn from(e: lapin::Error) -> Self {
        BenchError::Amqp(Box::new(e))
    }
}

impl From<tokio::time::error::Elapsed> for BenchError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        BenchError::Timeout("an answer")
    }
}

/// Result of the load generator's operations.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
