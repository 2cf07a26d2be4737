//! What a message read from the outbound stream (or a direct reply to the HTTP API)
//! becomes on the wire: a `reply` (or an `error`) when it answers a request, a
//! `deliver` otherwise. Pure functions, so the
//! mapping (stable message ids, header rendering, raw bodies) is unit-tested.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::value::RawValue;
use warren_protocol::amqp::{keys, H_ERROR, H_USER};
use warren_protocol::{Deliver, Error as ErrorFrame, ErrorCode, Headers, Raw, Reply, ServerFrame};

/// The header RabbitMQ puts on every stream delivery: the message's offset.
pub(crate) const STREAM_OFFSET: &str = "x-stream-offset";

/// A header value as text (a long or short string, or a byte array: what Go's and
/// Java's AMQP clients send for bytes), e.g. `x-warren-tenant`'s; `None` for another
/// type.
pub(crate) fn text_value(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(t) => Some(String::from_utf8_lossy(t.as_bytes()).into_owned()),
        AMQPValue::ShortString(t) => Some(t.to_string()),
        AMQPValue::ByteArray(t) => Some(String::from_utf8_lossy(t.as_slice()).into_owned()),
        _ => None,
    }
}

/// The parts of an AMQP delivery the mapping needs.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Exchange it was published to (`""` for the default exchange).
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// AMQP properties.
    pub properties: &'a BasicProperties,
    /// Body bytes.
    pub body: &'a [u8],
    /// Its position in the outbound stream (`None` for a direct reply). Replies in the
    /// stream carry `<session>/<request id>` as correlation id; the frame gets the
    /// request id alone.
    pub position: Option<u64>,
    /// The channel stream `position` belongs to (a channel with a retention of its
    /// own); `None` for the default outbound stream.
    pub stream: Option<&'a str>,
    /// The message's other routing keys the session holds (`deliver.keys`).
    pub also: &'a [String],
}

/// The request id a reply answers (`None` for any other message): its correlation id,
/// without the session a stream reply's carries ([`stream_correlation`]).
fn reply_id(m: &Incoming<'_>) -> Option<String> {
    if !m.exchange.is_empty() {
        return None;
    }
    m.properties.correlation_id().as_ref().map(|c| {
        let c = c.as_str();
        match m.position {
            Some(_) => stream_reply_id(c).map_or(c, |(_, id)| id).to_string(),
            None => c.to_string(),
        }
    })
}

/// The frame sent in place of a message whose body is over `max` bytes
/// (`max_delivery_bytes`): `error too_large` with its `seq` and stream position, so
/// the client acknowledges it and a resume goes on after it; a reply's names the
/// request's id, which fails with it.
pub fn too_large(m: Incoming<'_>, seq: u64, max: usize) -> ServerFrame {
    let id = reply_id(&m);
    let what = if id.is_some() { "reply" } else { "message" };
    ServerFrame::Error(ErrorFrame {
        id,
        code: ErrorCode::TooLarge,
        message: format!(
            "a {what} of {} bytes on {} was not delivered: over max_delivery_bytes ({max})",
            m.body.len(),
            m.routing_key
        ),
        seq: Some(seq),
        position: m.position,
        stream: m.stream.map(str::to_string),
    })
}

/// Builds the frame for one message with sequence number `seq`.
pub fn to_frame(m: Incoming<'_>, seq: u64) -> ServerFrame {
    let headers = render_headers(m.properties.headers().as_ref());
    let message = raw_body(m.body);
    match reply_id(&m) {
        Some(id) => {
            let error = m
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(H_ERROR))
                .map(value_text);
            match error {
                Some(code) => ServerFrame::Error(ErrorFrame {
                    id: Some(id),
                    // A code the gateway does not know, or one only the SDK gives (an
                    // app told `closed` takes its client for stopped, and retries a
                    // `disconnected`), is the service's refusal: `rejected`.
                    code: match ErrorCode::parse(&code) {
                        ErrorCode::Unknown | ErrorCode::Disconnected | ErrorCode::Closed => {
                            ErrorCode::Rejected
                        }
                        c => c,
                    },
                    message: error_message(m.body),
                    seq: Some(seq),
                    position: m.position,
                    stream: None,
                }),
                None => ServerFrame::Reply(Reply {
                    id,
                    seq,
                    position: m.position,
                    headers,
                    message,
                }),
            }
        }
        _ => ServerFrame::Deliver(Deliver {
            seq,
            position: m.position,
            stream: m.stream.map(str::to_string),
            keys: m.also.to_vec(),
            message_id: m
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_else(|| stable_id(m.routing_key, m.body, m.stream, m.position)),
            channel: keys::channel_of(m.routing_key).to_string(),
            routing_key: m.routing_key.to_string(),
            redelivered: m.redelivered,
            headers,
            message,
        }),
    }
}

/// The correlation id a request carries when replies travel through the outbound
/// stream: `<session>/<request id>` (session ids hold no `/`), so every gateway reading
/// the stream knows whose reply it is.
pub fn stream_correlation(session: &str, request: &str) -> String {
    format!("{session}/{request}")
}

/// The session and the request id of a [`stream_correlation`].
pub fn stream_reply_id(correlation: &str) -> Option<(&str, &str)> {
    correlation.split_once('/')
}

/// The body as raw JSON when it is JSON, else as a JSON string (lossy UTF-8).
pub fn raw_body(body: &[u8]) -> Raw {
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(raw) = serde_json::from_str::<Raw>(text) {
            return raw;
        }
        return RawValue::from_string(serde_json::to_string(text).expect("strings serialise"))
            .expect("a JSON string is valid JSON");
    }
    let text = String::from_utf8_lossy(body);
    RawValue::from_string(serde_json::to_string(&text).expect("strings serialise"))
        .expect("a JSON string is valid JSON")
}

/// The human message of a service's refusal: a JSON string, `{"message": ...}`, or
/// the body as text.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Refusal {
        Text(String),
        Object { message: String },
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(Refusal::Text(t)) | Ok(Refusal::Object { message: t }) => t,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// A stable id for a message published without `message_id`: FNV-1a over the routing
/// key, the body and, when read from a stream, its stream and position, so a
/// redelivery (a replay, on any gateway) carries the same id and two messages alike
/// published one after the other do not: over the key and the body alone, the second
/// `{"type":"refresh"}` a producer that sets no `message_id` sent to bob was dropped
/// by the SDK as a copy of the first.
pub fn stable_id(
    routing_key: &str,
    body: &[u8],
    stream: Option<&str>,
    position: Option<u64>,
) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(routing_key.as_bytes());
    eat(&[0]);
    eat(body);
    if let Some(position) = position {
        eat(&[0]);
        eat(stream.unwrap_or_default().as_bytes());
        eat(&[0]);
        eat(&position.to_le_bytes());
    }
    format!("h:{h:016x}")
}

/// AMQP headers as strings. Internal `x-warren-*` headers are dropped except the
/// sender's user (the sender's session id is not shown: it is the sender's alone);
/// the `CC`/`BCC` routing headers are dropped too, and so is the `x-stream-offset`
/// RabbitMQ adds to stream deliveries (the frame's `position` carries it).
pub fn render_headers(table: Option<&FieldTable>) -> Headers {
    let mut out = Headers::new();
    let Some(table) = table else { return out };
    for (k, v) in table.inner() {
        let k = k.as_str();
        if (k.starts_with("x-warren-") && k != H_USER)
            || k.eq_ignore_ascii_case("cc")
            || k.eq_ignore_ascii_case("bcc")
            || k == STREAM_OFFSET
        {
            continue;
        }
        out.insert(k.to_string(), value_text(v));
    }
    out
}

/// One AMQP value as text: strings and byte arrays as they are (lossy UTF-8), numbers
/// and booleans in decimal, arrays and tables as JSON. Every type has its own arm:
/// a byte array or a decimal once fell through to [`value_json`], which handed it back
/// here, and the recursion overflowed the stack, aborting the gateway.
pub fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::DecimalValue(d) => decimal_text(d.value, d.scale),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Void => String::new(),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => value_json(v).to_string(),
    }
}

/// `value` ÷ 10^`scale` in decimal: 12345 at scale 2 is `123.45`.
fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

fn value_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), value_json(v)))
                .collect(),
        ),
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::Double(n) => Value::from(*n),
        AMQPValue::Void => Value::Null,
        other => Value::String(value_text(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};

    fn props() -> BasicProperties {
        BasicProperties::default()
    }

    #[test]
    fn a_message_without_id_gets_the_same_stable_id_each_time() {
        let id = |key, body, stream, position| stable_id(key, body, stream, position);
        let a = id("chat.all", b"{\"x\":1}", None, Some(7));
        assert_eq!(a, id("chat.all", b"{\"x\":1}", None, Some(7)));
        assert_ne!(a, id("chat.all", b"{\"x\":2}", None, Some(7)));
        assert_ne!(a, id("chat.al", b"l{\"x\":1}", None, Some(7)));
        // The same message published twice: two positions, two ids.
        assert_ne!(a, id("chat.all", b"{\"x\":1}", None, Some(8)));
        assert_ne!(a, id("chat.all", b"{\"x\":1}", Some("chat"), Some(7)));
        assert_ne!(a, id("chat.all", b"{\"x\":1}", None, None));
    }

    #[test]
    fn a_json_body_passes_through_byte_for_byte_and_text_becomes_a_string() {
        assert_eq!(raw_body(b"{ \"a\" : 1.50 }").get(), "{ \"a\" : 1.50 }");
        assert_eq!(raw_body(b"not json").get(), "\"not json\"");
        assert_eq!(raw_body(&[0xff, b'a']).get(), "\"\u{fffd}a\"");
    }

    #[test]
    fn internal_headers_are_dropped_except_the_sender_user() {
        let mut t = FieldTable::default();
        t.insert(
            H_USER.into(),
            AMQPValue::LongString(LongString::from("bob")),
        );
        t.insert(
            warren_protocol::amqp::H_SESSION.into(),
            AMQPValue::LongString(LongString::from("bobs-session")),
        );
        t.insert(
            "x-warren-gateway".into(),
            AMQPValue::LongString(LongString::from("gw")),
        );
        t.insert("CC".into(), AMQPValue::FieldArray(vec![].into()));
        t.insert(STREAM_OFFSET.into(), AMQPValue::LongLongInt(42));
        t.insert("n".into(), AMQPValue::LongInt(7));
        t.insert("flag".into(), AMQPValue::Boolean(true));
        let h = render_headers(Some(&t));
        assert_eq!(h.get(H_USER).map(String::as_str), Some("bob"));
        assert_eq!(h.get("n").map(String::as_str), Some("7"));
        assert_eq!(h.get("flag").map(String::as_str), Some("true"));
        assert!(!h.contains_key("x-warren-gateway"));
        assert!(
            !h.contains_key(warren_protocol::amqp::H_SESSION),
            "a session id is its owner's alone"
        );
        assert!(!h.contains_key("CC"));
        assert!(!h.contains_key(STREAM_OFFSET), "the position says it");
    }

    #[test]
    fn every_amqp_type_renders_as_text_alone_and_inside_tables_and_arrays() {
        use lapin::types::{ByteArray, DecimalValue};
        let decimal = |value, scale| AMQPValue::DecimalValue(DecimalValue { scale, value });
        let bytes = AMQPValue::ByteArray(ByteArray::from(b"raw".to_vec()));
        let cases = [
            (bytes.clone(), "raw"),
            (decimal(12_345, 2), "123.45"),
            (decimal(7, 3), "0.007"),
            (decimal(7, 0), "7"),
            (decimal(u32::MAX, 255), &*format!("0.{:0>255}", u32::MAX)),
            (AMQPValue::Timestamp(u64::MAX), "18446744073709551615"),
            (AMQPValue::ShortShortUInt(255), "255"),
            (AMQPValue::Float(0.5), "0.5"),
            (AMQPValue::Void, ""),
        ];
        for (value, text) in &cases {
            assert_eq!(value_text(value), *text, "{value:?}");
        }
        // Inside an array or a table each becomes JSON (text where JSON has no type).
        let mut inner = FieldTable::default();
        inner.insert("b".into(), bytes.clone());
        inner.insert("d".into(), decimal(15, 1));
        let array =
            AMQPValue::FieldArray(vec![bytes, decimal(5, 1), AMQPValue::FieldTable(inner)].into());
        assert_eq!(value_text(&array), r#"["raw","0.5",{"b":"raw","d":"1.5"}]"#);
    }

    #[test]
    fn a_default_exchange_message_with_correlation_id_is_a_reply() {
        let p = props().with_correlation_id(ShortString::from("r1"));
        let f = to_frame(
            Incoming {
                exchange: "",
                routing_key: "warren.session.s",
                redelivered: false,
                properties: &p,
                body: b"{\"ok\":true}",
                position: None,
                stream: None,
                also: &[],
            },
            4,
        );
        let ServerFrame::Reply(r) = f else {
            panic!("{f:?}")
        };
        assert_eq!((r.id.as_str(), r.seq), ("r1", 4));
        assert_eq!(r.message.get(), "{\"ok\":true}");
    }

    #[test]
    fn a_service_code_unknown_or_only_the_sdks_is_rejected() {
        let refusal = |code: &str| {
            let mut t = FieldTable::default();
            t.insert(
                H_ERROR.into(),
                AMQPValue::LongString(LongString::from(code)),
            );
            let p = props()
                .with_correlation_id(ShortString::from("r3"))
                .with_headers(t);
            let incoming = Incoming {
                exchange: "",
                routing_key: "q",
                redelivered: false,
                properties: &p,
                body: b"\"no\"",
                position: None,
                stream: None,
                also: &[],
            };
            match to_frame(incoming, 1) {
                ServerFrame::Error(e) => e.code,
                f => panic!("{f:?}"),
            }
        };
        for code in ["closed", "disconnected", "no_such_code"] {
            assert_eq!(refusal(code), ErrorCode::Rejected, "{code}");
        }
        assert_eq!(refusal("overloaded"), ErrorCode::Overloaded);
    }

    #[test]
    fn a_refused_request_becomes_an_error_with_the_service_code_and_seq() {
        let mut t = FieldTable::default();
        t.insert(
            H_ERROR.into(),
            AMQPValue::LongString(LongString::from("rejected")),
        );
        let p = props()
            .with_correlation_id(ShortString::from("r2"))
            .with_headers(t);
        let f = to_frame(
            Incoming {
                exchange: "",
                routing_key: "q",
                redelivered: false,
                properties: &p,
                body: b"{\"message\":\"no such ticket\"}",
                position: None,
                stream: None,
                also: &[],
            },
            9,
        );
        let ServerFrame::Error(e) = f else {
            panic!("{f:?}")
        };
        assert_eq!(e.code, ErrorCode::Rejected);
        assert_eq!(e.message, "no such ticket");
        assert_eq!(e.seq, Some(9));
        assert_eq!(e.id.as_deref(), Some("r2"));
    }

    #[test]
    fn an_outbound_message_is_a_deliver_with_its_channel_and_message_id() {
        let p = props().with_message_id(ShortString::from("m-1"));
        let f = to_frame(
            Incoming {
                exchange: "ns.warren.out",
                routing_key: "chat.group.room-1",
                redelivered: true,
                properties: &p,
                body: b"[1,2]",
                position: None,
                stream: None,
                also: &[],
            },
            1,
        );
        let ServerFrame::Deliver(d) = f else {
            panic!("{f:?}")
        };
        assert_eq!(d.message_id, "m-1");
        assert_eq!(d.channel, "chat");
        assert!(d.redelivered);
        assert_eq!(d.message.get(), "[1,2]");
        assert_eq!(d.position, None);
    }

    #[test]
    fn a_reply_read_from_the_stream_carries_its_position_and_the_bare_request_id() {
        let corr = stream_correlation("s1-abc", "r/7");
        assert_eq!(stream_reply_id(&corr), Some(("s1-abc", "r/7")));
        let p = props().with_correlation_id(ShortString::from(corr));
        let f = to_frame(
            Incoming {
                exchange: "",
                routing_key: "warren.out.stream",
                redelivered: false,
                properties: &p,
                body: b"1",
                position: Some(42),
                stream: None,
                also: &[],
            },
            3,
        );
        let ServerFrame::Reply(r) = f else {
            panic!("{f:?}")
        };
        assert_eq!((r.id.as_str(), r.seq, r.position), ("r/7", 3, Some(42)));
    }
}
