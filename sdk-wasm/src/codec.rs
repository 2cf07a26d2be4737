//! How the core turns frames into text and back. The core is generic over the codec so
//! that the same state machine runs natively with `serde_json` ([`JsonCodec`], used by
//! the unit tests) and in the browser with the browser's own `JSON`
//! (`browser::codec::JsCodec`), which keeps `serde_json` out of the wasm.

use warren_protocol::{decode_server, encode, ClientFrame, DecodeError, Raw, ServerFrame};

use crate::error::ClientError;
use crate::token::expiry_s;

/// Text ⇄ frame for one payload representation.
pub trait Codec {
    /// The application payload (`message`) as this codec holds it.
    type Payload: Clone;

    /// Encodes a client frame as JSON text.
    ///
    /// # Errors
    /// `invalid` when the payload cannot be written as JSON (a `BigInt`, a cycle).
    fn encode(&self, frame: &ClientFrame<Self::Payload>) -> Result<String, ClientError>;

    /// Decodes a server frame.
    ///
    /// # Errors
    /// A [`DecodeError`] with a registry code when the text is not a known server frame.
    fn decode(&self, text: &str) -> Result<ServerFrame<Self::Payload>, DecodeError>;

    /// The `exp` claim (seconds since the epoch) of a JWT, read without checking its
    /// signature (to renew it ahead of time); `None` for other tokens. Natively Rust
    /// ([`expiry_s`]); the browser codec asks the browser (`atob`, `JSON`), smaller.
    fn token_expiry_s(&self, token: &str) -> Option<u64> {
        expiry_s(token)
    }
}

/// The native codec: `serde_json`, payloads kept as raw JSON text.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Payload = Raw;

    fn encode(&self, frame: &ClientFrame<Raw>) -> Result<String, ClientError> {
        Ok(encode(frame))
    }

    fn decode(&self, text: &str) -> Result<ServerFrame<Raw>, DecodeError> {
        decode_server(text)
    }
}
