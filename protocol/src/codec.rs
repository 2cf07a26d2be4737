//! Text ⇄ frame.
//!
//! Decoding is done in two passes: a cheap first pass reads only `type` (and `id`, so
//! errors can name the frame), then the body is deserialised straight into the frame
//! struct for that type. This keeps the application `message` as raw bytes
//! ([`Raw`](crate::Raw)): serde's internally tagged enums would buffer and re-parse it.
//! Every failure maps to a registry code.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::frame::{ClientFrame, ServerFrame};
use crate::registry::ErrorCode;

/// Why a text frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    /// Registry code: `malformed`, `invalid` or `unknown_type`.
    pub code: ErrorCode,
    /// What is wrong, for humans.
    pub message: String,
    /// The frame's `id`, when it could be read, so the error can be correlated.
    pub id: Option<String>,
}

impl DecodeError {
    fn new(code: ErrorCode, message: impl Into<String>, id: Option<String>) -> Self {
        DecodeError {
            code,
            message: message.into(),
            id,
        }
    }
}

/// First pass: only the fields needed to dispatch and to answer.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<IdProbe<'a>>,
    #[serde(default)]
    packet_action: Option<IgnoredAny>,
}

/// An `id` of any JSON type; only a string is kept.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdProbe<'a> {
    Str(#[serde(borrow)] Cow<'a, str>),
    Other(IgnoredAny),
}

fn probe(text: &str) -> Result<Probe<'_>, DecodeError> {
    let first = text.trim_start().as_bytes().first().copied();
    match serde_json::from_str::<Probe>(text) {
        Ok(p) if first == Some(b'{') => Ok(p),
        Ok(_) => Err(DecodeError::new(
            ErrorCode::Invalid,
            "a frame must be a JSON object",
            None,
        )),
        Err(e) if e.is_syntax() || e.is_eof() => {
            Err(DecodeError::new(ErrorCode::Malformed, e.to_string(), None))
        }
        Err(e) => {
            if first == Some(b'{') {
                Err(DecodeError::new(ErrorCode::Invalid, e.to_string(), None))
            } else {
                Err(DecodeError::new(
                    ErrorCode::Invalid,
                    "a frame must be a JSON object",
                    None,
                ))
            }
        }
    }
}

fn probe_id(p: &Probe<'_>) -> Option<String> {
    match &p.id {
        Some(IdProbe::Str(s)) => Some(s.to_string()),
        _ => None,
    }
}

/// Decodes a client frame (gateway side).
///
/// # Errors
/// `malformed` when the text is not JSON, `invalid` when it is not an object or a field
/// is missing or mistyped, `unknown_type` for a `type` this version does not know.
pub fn decode_client(text: &str) -> Result<ClientFrame, DecodeError> {
    let p = probe(text)?;
    let id = probe_id(&p);
    let kind = match (&p.kind, &p.packet_action) {
        (Some(k), _) => Some(k.as_ref()),
        (None, Some(_)) => None,
        (None, None) => {
            return Err(DecodeError::new(
                ErrorCode::Invalid,
                "missing field `type`",
                id,
            ))
        }
    };
    let mut de = serde_json::Deserializer::from_str(text);
    match ClientFrame::deserialize_kind(kind, &mut de) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(DecodeError::new(
            ErrorCode::UnknownType,
            format!("unknown frame type `{}`", kind.unwrap_or_default()),
            id,
        )),
        Err(e) => Err(DecodeError::new(
            ErrorCode::Invalid,
            format!("{}: {e}", kind.unwrap_or("poc packet")),
            id,
        )),
    }
}

/// Decodes a server frame (client side: the Rust test client, the SDK core's tests).
///
/// # Errors
/// As [`decode_client`].
pub fn decode_server(text: &str) -> Result<ServerFrame, DecodeError> {
    let p = probe(text)?;
    let id = probe_id(&p);
    let Some(kind) = p.kind.as_deref() else {
        return Err(DecodeError::new(
            ErrorCode::Invalid,
            "missing field `type`",
            id,
        ));
    };
    let mut de = serde_json::Deserializer::from_str(text);
    match ServerFrame::deserialize_kind(kind, &mut de) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(DecodeError::new(
            ErrorCode::UnknownType,
            format!("unknown frame type `{kind}`"),
            id,
        )),
        Err(e) => Err(DecodeError::new(
            ErrorCode::Invalid,
            format!("{kind}: {e}"),
            id,
        )),
    }
}

/// Encodes any frame as JSON text. The raw payload is written as it came.
pub fn encode<F: Serialize>(frame: &F) -> String {
    // Frames hold only strings, numbers, maps and raw JSON: serialising cannot fail.
    serde_json::to_string(frame).expect("frames always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::*;

    #[test]
    fn publish_keeps_the_message_bytes_exactly() {
        let text =
            r#"{"type":"publish","id":"1","channel":"chat","message":{"b": 1.50, "a":[1,  2]}}"#;
        let ClientFrame::Publish(p) = decode_client(text).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(p.message.get(), r#"{"b": 1.50, "a":[1,  2]}"#);
        assert!(encode(&ClientFrame::Publish(p)).contains(r#"{"b": 1.50, "a":[1,  2]}"#));
    }

    #[test]
    fn not_json_is_malformed() {
        assert_eq!(
            decode_client("{nope").unwrap_err().code,
            ErrorCode::Malformed
        );
        assert_eq!(decode_client("").unwrap_err().code, ErrorCode::Malformed);
    }

    #[test]
    fn json_that_is_not_an_object_is_invalid() {
        for text in ["[1,2]", "\"hello\"", "42", "null"] {
            assert_eq!(
                decode_client(text).unwrap_err().code,
                ErrorCode::Invalid,
                "{text}"
            );
        }
    }

    #[test]
    fn unknown_type_keeps_the_id_for_correlation() {
        let e = decode_client(r#"{"type":"teleport","id":"x7"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.id.as_deref(), Some("x7"));
    }

    #[test]
    fn missing_field_is_invalid_and_names_the_field() {
        let e = decode_client(r#"{"type":"publish","id":"9","message":{}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.contains("channel"), "{}", e.message);
        assert_eq!(e.id.as_deref(), Some("9"));
    }

    #[test]
    fn mistyped_field_is_invalid() {
        let e = decode_client(r#"{"type":"ack_deliveries","seq":"ten"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        let e = decode_client(r#"{"type":7}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
    }

    #[test]
    fn poc_packet_without_type_is_recognised() {
        let text = r#"{"distribution":{"broadcast":false,"multicast":["g1"],"direct":[]},
            "channel":{"voice":true,"chat":false,"tickets":false},
            "packet_action":"publish","publish_target":"x","consume_target":[],"message":{"k":1}}"#;
        let ClientFrame::Poc(p) = decode_client(text).unwrap() else {
            panic!("not a poc packet")
        };
        assert_eq!(p.channels().collect::<Vec<_>>(), vec!["voice"]);
        assert_eq!(p.distribution.groups, vec!["g1".to_string()]);
        assert_eq!(p.message.unwrap().get(), r#"{"k":1}"#);
        // `null` is a message, as in a `publish` frame; only an absent one is none.
        let null = r#"{"channel":{"chat":true},"packet_action":"publish","message":null}"#;
        let ClientFrame::Poc(p) = decode_client(null).unwrap() else {
            panic!("not a poc packet")
        };
        assert_eq!(
            p.message.map(|m| m.get().to_string()).as_deref(),
            Some("null")
        );
        let absent = r#"{"channel":{"chat":true},"packet_action":"consume"}"#;
        let ClientFrame::Poc(p) = decode_client(absent).unwrap() else {
            panic!("not a poc packet")
        };
        assert!(p.message.is_none());
    }

    #[test]
    fn subscribe_defaults_to_broadcast_only_when_nothing_else_is_asked() {
        let ClientFrame::Subscribe(s) =
            decode_client(r#"{"type":"subscribe","id":"1","channel":"chat"}"#).unwrap()
        else {
            panic!()
        };
        assert!(s.wants_broadcast());
        let ClientFrame::Subscribe(s) =
            decode_client(r#"{"type":"subscribe","id":"1","channel":"chat","groups":["room-1"]}"#)
                .unwrap()
        else {
            panic!()
        };
        assert!(!s.wants_broadcast());
    }

    #[test]
    fn server_frames_decode() {
        let f = decode_server(r#"{"type":"deliver","seq":3,"message_id":"m","channel":"chat","routing_key":"chat.all","message":[1]}"#).unwrap();
        assert_eq!(f.kind(), "deliver");
        let f =
            decode_server(r#"{"type":"error","id":"4","code":"no_route","message":"x"}"#).unwrap();
        let ServerFrame::Error(e) = f else { panic!() };
        assert_eq!(e.code, ErrorCode::NoRoute);
    }
}
