//! How the core turns frames into text and back. The core is generic over the codec so
//! that the same state machine runs natively with `serde_json` ([`JsonCodec`], used by
//! the unit tests) and in the browser with the browser's own `JSON`
//! (`browser::codec::JsCodec`), which keeps `serde_json` out of the wasm.
//!
//! A codec also keeps the client's **stream positions**: the newest position received
//! in each stream (the outbound stream, and each channel with a stream of its own), or
//! where a new session starts, read from every frame it decodes; it names them in a
//! `hello` that resumes (one naming a session). The core only decides whether to
//! resume. Kept here, the browser codec holds them in a JavaScript object, kilobytes
//! smaller in the wasm than a Rust map.

use std::cell::RefCell;

use warren_protocol::{
    decode_server, encode, ClientFrame, DecodeError, Positions, Raw, ServerFrame,
};

use crate::error::ClientError;
use crate::token::expiry_ms;

/// Text ⇄ frame for one payload representation.
pub trait Codec {
    /// The application payload (`message`) as this codec holds it.
    type Payload: Clone;

    /// Encodes a client frame as JSON text; a `hello` naming a session (a resume)
    /// names the stream positions recorded (`position`, `positions`).
    ///
    /// # Errors
    /// `invalid` when the payload cannot be written as JSON (a `BigInt`, a cycle).
    fn encode(&self, frame: &ClientFrame<Self::Payload>) -> Result<String, ClientError>;

    /// Decodes a server frame, recording the stream position it carries: the newest
    /// per stream counts, and a `welcome` that did not resume starts over from its
    /// `position` and `positions`.
    ///
    /// # Errors
    /// A [`DecodeError`] with a registry code when the text is not a known server frame.
    fn decode(&self, text: &str) -> Result<ServerFrame<Self::Payload>, DecodeError>;

    /// When a JWT got at `now` expires on the client's clock, in ms: `now` plus its
    /// lifetime `exp − iat` when it names `iat` (no later than its `exp` while the
    /// clock says it is still valid: a cached token), else its `exp` claim; read without
    /// checking its signature (to renew it ahead of time); `None` for other tokens.
    /// Natively Rust ([`expiry_ms`]); the browser codec asks the browser (`atob`,
    /// `JSON`), smaller.
    fn token_expiry_ms(&self, token: &str, now: u64) -> Option<u64> {
        expiry_ms(token, now)
    }
}

/// The native codec: `serde_json`, payloads kept as raw JSON text.
#[derive(Debug, Default)]
pub struct JsonCodec {
    recorded: RefCell<Recorded>,
}

/// Stream positions recorded by [`JsonCodec`].
#[derive(Debug, Default, Clone)]
struct Recorded {
    /// The outbound stream's.
    position: Option<u64>,
    /// Each channel stream's, by channel.
    positions: Positions,
}

impl JsonCodec {
    /// The outbound stream position a resume would name.
    pub fn position(&self) -> Option<u64> {
        self.recorded.borrow().position
    }

    /// The channel stream positions a resume would name, by channel.
    pub fn positions(&self) -> Positions {
        self.recorded.borrow().positions.clone()
    }

    fn record(&self, frame: &ServerFrame<Raw>) {
        let mut r = self.recorded.borrow_mut();
        let (stream, position) = match frame {
            ServerFrame::Welcome(w) => {
                if !w.resumed {
                    r.position = w.position;
                    r.positions = w.positions.clone();
                }
                return;
            }
            ServerFrame::Deliver(d) => (d.stream.as_deref(), d.position),
            ServerFrame::Reply(m) => (None, m.position),
            ServerFrame::Ack(a) => (a.stream.as_deref(), a.position),
            ServerFrame::Error(e) => (e.stream.as_deref(), e.position),
            ServerFrame::Ping(p) => (p.stream.as_deref(), p.position),
            _ => return,
        };
        let Some(p) = position else { return };
        match stream {
            None => r.position = Some(r.position.map_or(p, |old| old.max(p))),
            Some(channel) => r.positions.raise(channel, p),
        }
    }
}

impl Codec for JsonCodec {
    type Payload = Raw;

    fn encode(&self, frame: &ClientFrame<Raw>) -> Result<String, ClientError> {
        if let ClientFrame::Hello(h) = frame {
            if h.session.is_some() {
                let r = self.recorded.borrow();
                let mut h = h.clone();
                h.position = r.position;
                h.positions = r.positions.clone();
                return Ok(encode(&ClientFrame::<Raw>::Hello(h)));
            }
        }
        Ok(encode(frame))
    }

    fn decode(&self, text: &str) -> Result<ServerFrame<Raw>, DecodeError> {
        let frame = decode_server(text)?;
        self.record(&frame);
        Ok(frame)
    }
}
