//! Client configuration with its documented defaults.

use warren_protocol::ErrorCode;

use crate::backoff::Backoff;
use crate::error::ClientError;
use crate::text::concat;

/// Default timeout of `write` acks and `writeAndWait` replies: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default time allowed to one attempt to get a token, open a socket and receive
/// `welcome`: 5 s
/// (JS option `handshakeTimeoutMs`).
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
/// With `getToken`, a token is renewed after this share (%) of its remaining lifetime...
pub const RENEW_AT_PERCENT: u64 = 75;
/// ...but never sooner than this after it came into force: 1 s.
pub const RENEW_MIN_MS: u64 = 1_000;

/// Everything a client is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Gateway WebSocket URLs, tried in order and rotated on failure.
    pub urls: Vec<String>,
    /// Credential sent in `hello` (the static `token` option).
    pub token: Option<String>,
    /// The app gave a `getToken` function: the core asks for a fresh token
    /// ([`Action::FetchToken`](crate::Action::FetchToken)) before every connection
    /// attempt and ahead of the token's expiry.
    pub fetch_token: bool,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Default deadline of writes and requests.
    pub request_timeout_ms: u64,
    /// Deadline of ONE connection attempt, counted from its start: `getToken` answers
    /// (when given), the socket opens and the gateway sends `welcome` (JS option
    /// `handshakeTimeoutMs`); then the next URL is tried.
    pub connect_timeout_ms: u64,
    /// How long `connect()` keeps trying the URL list before it gives up and rejects
    /// with `timeout` (JS option `connectTimeoutMs`). `None` (the default): never give
    /// up, every failed attempt is reported as an `error` event.
    pub give_up_after_ms: Option<u64>,
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
            fetch_token: false,
            backoff: Backoff::default(),
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            give_up_after_ms: None,
            channels: Vec::new(),
            outbox_limit: DEFAULT_OUTBOX_LIMIT,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            ack_batch: DEFAULT_ACK_BATCH,
            ack_delay_ms: DEFAULT_ACK_DELAY_MS,
            client_name: concat!("warren-sdk/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    /// Checks what the browser would only refuse later: at least one URL, and every URL
    /// a `ws://` or `wss://` URL with a host.
    ///
    /// # Errors
    /// `invalid`, naming the offending URL.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.urls.is_empty() {
            return Err(ClientError::new(
                ErrorCode::Invalid,
                "`urls` must name at least one gateway",
            ));
        }
        match self.urls.iter().find(|u| !is_websocket_url(u)) {
            Some(bad) => Err(ClientError::new(
                ErrorCode::Invalid,
                concat(&["`", bad, "` is not a ws:// or wss:// URL"]),
            )),
            None => Ok(()),
        }
    }

    /// Whether `channel` may be used by this client.
    pub fn allows(&self, channel: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|c| c == channel)
    }
}

/// `ws://` or `wss://` (any case), then a host: not empty, not starting with `/`, `?`,
/// `#` or `:`, and no whitespace anywhere. (Bytes, not `str` patterns: smaller wasm.)
fn is_websocket_url(url: &str) -> bool {
    let b = url.as_bytes();
    let scheme = |s: &[u8]| b.len() > s.len() && b[..s.len()].eq_ignore_ascii_case(s);
    let host = if scheme(b"ws://") {
        &b[5..]
    } else if scheme(b"wss://") {
        &b[6..]
    } else {
        return false;
    };
    !matches!(host[0], b'/' | b'?' | b'#' | b':') && !b.iter().any(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(urls: &[&str]) -> Result<(), ErrorCode> {
        Config::new(urls.iter().map(|u| u.to_string()).collect())
            .validate()
            .map_err(|e| e.code)
    }

    #[test]
    fn websocket_urls_with_a_host_are_accepted() {
        assert_eq!(
            check(&["ws://127.0.0.1:4000/ws", "WSS://gw.example.com/ws"]),
            Ok(())
        );
        assert_eq!(check(&["ws://a"]), Ok(()));
    }

    #[test]
    fn no_url_a_non_url_or_a_non_websocket_scheme_is_invalid() {
        for bad in [
            &[][..],
            &["not a url"],
            &["http://127.0.0.1:4000/ws"],
            &["ws://"],
            &["ws:///ws"],
            &["ws://host/ws", "localhost:4000"],
            &["ws://a b/ws"],
        ] {
            assert_eq!(check(bad), Err(ErrorCode::Invalid), "{bad:?}");
        }
    }
}
