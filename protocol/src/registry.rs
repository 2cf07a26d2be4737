//! The one registry of error codes (in `error` frames and SDK errors) and WebSocket
//! close codes. For each: what it means, whether retrying the same operation can
//! succeed, and whether a client should reconnect. The gateway and the SDK both read
//! these definitions; nothing else decides.
//!
//! Close codes follow a range rule so that a client that does not know a code still
//! does the right thing: 4000–4499 reconnect, 4500–4999 do not (nor does 1000).

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, retry: $retry:literal; )*) => {
        /// Error codes carried by `error` frames and by SDK errors.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
            /// A code this version does not know (sent by a newer peer).
            #[serde(other)]
            Unknown,
        }

        impl ErrorCode {
            /// Every known code, in registry order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire name, e.g. `"no_route"`.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* ErrorCode::Unknown => "unknown" }
            }

            /// Whether retrying the same operation later can succeed.
            pub fn retry(self) -> bool {
                match self { $(ErrorCode::$variant => $retry,)* ErrorCode::Unknown => false }
            }

            /// Parses a wire name; unknown names give [`ErrorCode::Unknown`]. (Looked
            /// up through [`ErrorCode::as_str`], so the SDK's wasm holds the names once.)
            pub fn parse(name: &str) -> ErrorCode {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|c| c.as_str() == name)
                    .unwrap_or(ErrorCode::Unknown)
            }
        }
    };
}

error_codes! {
    /// The frame is not valid JSON.
    Malformed = "malformed", retry: false;
    /// The frame's `type` is not one this protocol version knows.
    UnknownType = "unknown_type", retry: false;
    /// A field is missing, has the wrong type, or has a value that is not allowed.
    Invalid = "invalid", retry: false;
    /// The frame is larger than the connection's `max_frame_bytes`.
    TooLarge = "too_large", retry: false;
    /// The channel is not configured on this gateway (or not served by this port).
    UnknownChannel = "unknown_channel", retry: false;
    /// The session's user may not do this.
    Forbidden = "forbidden", retry: false;
    /// The token was missing or refused.
    Unauthorized = "unauthorized", retry: false;
    /// The auth service did not answer in time, or none is running
    /// (`auth.mode = "service"`); try again later.
    AuthUnavailable = "auth_unavailable", retry: true;
    /// No queue is bound for this message: it would have been lost, so it was refused.
    NoRoute = "no_route", retry: false;
    /// No service answered: nothing consumes the channel's queue.
    NoService = "no_service", retry: true;
    /// The deadline passed before the answer came.
    Timeout = "timeout", retry: true;
    /// The gateway has no working connection to RabbitMQ right now.
    BrokerUnavailable = "broker_unavailable", retry: true;
    /// Too much in flight on this connection; slow down.
    Overloaded = "overloaded", retry: true;
    /// As `welcome.notice`: the session was not resumed and a fresh one was opened (its
    /// id does not have the shape of one a gateway issues, or a position is past its
    /// stream's tail). As an `error` without id: positions after the session's aged
    /// out of a stream's retention before it got them; the session is kept.
    SessionExpired = "session_expired", retry: false;
    /// The service refused the request; `message` says why.
    Rejected = "rejected", retry: false;
    /// The frame is valid but asks for something this gateway does not support.
    Unsupported = "unsupported", retry: false;
    /// The broker refused the message (negative confirm).
    Nacked = "nacked", retry: true;
    /// A bug or unexpected condition in the gateway.
    Internal = "internal", retry: true;
    /// SDK only: the operation needs a connection and the client is not connected; also
    /// the `error` event of every failed connection attempt.
    Disconnected = "disconnected", retry: true;
    /// SDK only: the client was closed by the application, or stopped after a close
    /// code that forbids reconnecting (1000, 4500–4999).
    Closed = "closed", retry: false;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! close_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal; )*) => {
        /// WebSocket close codes the gateway uses.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum CloseCode {
            $( $(#[$doc])* $variant, )*
        }

        impl CloseCode {
            /// Every close code, in registry order.
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$variant,)*];

            /// The numeric WebSocket close code.
            pub fn code(self) -> u16 {
                match self { $(CloseCode::$variant => $code,)* }
            }

            /// A short name, used as the close reason.
            pub fn as_str(self) -> &'static str {
                match self { $(CloseCode::$variant => $name,)* }
            }

            /// Looks a numeric code up.
            pub fn from_code(code: u16) -> Option<CloseCode> {
                match code { $($code => Some(CloseCode::$variant),)* _ => None }
            }
        }
    };
}

close_codes! {
    /// The client closed the connection on purpose.
    Normal = 1000, "normal";
    /// The gateway is shutting down; reconnect (to another gateway) and resume.
    GoingAway = 1001, "going_away";
    /// A text frame was not valid UTF-8 (RFC 6455's "invalid frame payload data").
    InvalidPayload = 1007, "invalid_payload";
    /// A frame exceeded the hard size cap, beyond what can be answered with `too_large`.
    MessageTooBig = 1009, "message_too_big";
    /// The gateway hit an unexpected condition.
    InternalError = 1011, "internal_error";
    /// No frame arrived within the heartbeat deadline.
    HeartbeatTimeout = 4000, "heartbeat_timeout";
    /// The client did not read fast enough and its outgoing buffer filled.
    SlowConsumer = 4001, "slow_consumer";
    /// The gateway lost RabbitMQ and cannot serve the session; try another gateway.
    BrokerUnavailable = 4002, "broker_unavailable";
    /// Too many invalid frames in a row.
    TooManyErrors = 4003, "too_many_errors";
    /// The session's token expired without a `refresh`: reconnect with a new token.
    TokenExpired = 4004, "token_expired";
    /// A limit against abuse was reached (e.g. sessions per user); reconnect later.
    RateLimited = 4005, "rate_limited";
    /// The auth service did not answer the `hello`'s token in time; reconnect later.
    AuthUnavailable = 4006, "auth_unavailable";
    /// No session was opened within `hello_timeout_ms` of the connection. (A binary
    /// frame is answered with `error unsupported`; the connection stays open.)
    ProtocolViolation = 4500, "protocol_violation";
    /// The token was refused.
    Unauthorized = 4501, "unauthorized";
    /// Another connection resumed this session.
    SessionTaken = 4502, "session_taken";
    /// The client speaks a protocol version the gateway does not.
    UnsupportedProtocol = 4503, "unsupported_protocol";
}

/// Whether a client should reconnect after the connection closed with `code`.
///
/// Unknown codes follow the range rule: 4000–4499 reconnect, 4500–4999 do not; other
/// codes (abnormal closure 1006 included) reconnect, except 1000.
pub fn should_reconnect(code: u16) -> bool {
    !matches!(code, 1000 | 4500..=4999)
}

impl CloseCode {
    /// Whether a client should reconnect after this close.
    pub fn reconnect(self) -> bool {
        should_reconnect(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_round_trips_through_its_wire_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), *code);
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *code);
        }
    }

    #[test]
    fn unknown_error_code_from_a_newer_peer_is_not_a_decode_failure() {
        let code: ErrorCode = serde_json::from_str("\"brand_new\"").unwrap();
        assert_eq!(code, ErrorCode::Unknown);
        assert!(!code.retry());
    }

    #[test]
    fn close_codes_follow_the_reconnect_range_rule() {
        for close in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(close.code()), Some(*close));
            if (4000..4500).contains(&close.code()) {
                assert!(close.reconnect(), "{close:?}");
            }
            if close.code() >= 4500 {
                assert!(!close.reconnect(), "{close:?}");
            }
        }
        assert!(!should_reconnect(1000));
        assert!(should_reconnect(1006));
        assert!(should_reconnect(4321));
        assert!(!should_reconnect(4777));
    }

    #[test]
    fn transient_errors_are_retryable_and_permanent_ones_are_not() {
        assert!(ErrorCode::Timeout.retry());
        assert!(ErrorCode::BrokerUnavailable.retry());
        assert!(!ErrorCode::NoRoute.retry());
        assert!(!ErrorCode::Invalid.retry());
    }
}
