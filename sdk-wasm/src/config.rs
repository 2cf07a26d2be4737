//! Client configuration with its documented defaults.

use crate::backoff::Backoff;

/// Default timeout of `write` acks and `writeAndWait` replies: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default time allowed to open a socket and receive `welcome`: 5 s.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default number of writes that may wait for a connection: 1000.
pub const DEFAULT_OUTBOX_LIMIT: usize = 1_000;
/// Default number of delivery ids remembered for duplicate suppression: 1000.
pub const DEFAULT_DUPLICATE_WINDOW: usize = 1_000;
/// Default: acknowledge deliveries after this many have been handled...
pub const DEFAULT_ACK_BATCH: u64 = 32;
/// ...or this long after the first unacknowledged one was handled: 100 ms.
pub const DEFAULT_ACK_DELAY_MS: u64 = 100;
/// A connection is declared dead after this many heartbeat intervals of silence (×10).
pub const DEAD_AFTER_TENTHS: u64 = 25;
/// A connection that lasted this long resets the backoff: 5 s.
pub const STABLE_AFTER_MS: u64 = 5_000;

/// Everything a client is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Gateway WebSocket URLs, tried in order and rotated on failure.
    pub urls: Vec<String>,
    /// Credential sent in `hello`.
    pub token: Option<String>,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Default deadline of writes and requests.
    pub request_timeout_ms: u64,
    /// Deadline for a socket to open and the gateway to send `welcome`.
    pub connect_timeout_ms: u64,
    /// Channels this client may use; empty means any. Others are refused locally with
    /// `unknown_channel` (the "one client per channel port" scenario).
    pub channels: Vec<String>,
    /// Most writes that may wait while disconnected.
    pub outbox_limit: usize,
    /// How many delivery ids are remembered to suppress duplicates.
    pub duplicate_window: usize,
    /// Deliveries handled before an `ack_deliveries` is sent.
    pub ack_batch: u64,
    /// Longest delay before handled deliveries are acknowledged.
    pub ack_delay_ms: u64,
    /// Name and version sent in `hello`.
    pub client_name: String,
}

impl Config {
    /// Defaults for the given URLs.
    pub fn new(urls: Vec<String>) -> Self {
        Config {
            urls,
            token: None,
            backoff: Backoff::default(),
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            channels: Vec::new(),
            outbox_limit: DEFAULT_OUTBOX_LIMIT,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            ack_batch: DEFAULT_ACK_BATCH,
            ack_delay_ms: DEFAULT_ACK_DELAY_MS,
            client_name: concat!("warren-sdk/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    /// Whether `channel` may be used by this client.
    pub fn allows(&self, channel: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|c| c == channel)
    }
}
