//! The browser codec: frames ⇄ text through the browser's own `JSON`, with the fields
//! read and written by hand (`Reflect`), so neither a JSON parser nor serde's
//! deserializers are compiled into the wasm.
//!
//! The payload [`Js`] is the JavaScript object that carries the app's data: for frames
//! from the gateway, the parsed frame itself (the facade reads its `message` and
//! `headers`); for frames to the gateway, the app's envelope (its `message`,
//! `distribution` and `headers` are copied into the frame untouched).

use js_sys::{Object, JSON};
use warren_protocol::{
    Ack, ClientFrame, DecodeError, Deliver, Drain, Error, ErrorCode, Headers, Limits, Overflow,
    Ping, Positions, Reply, ServerFrame, Welcome, SERVER_TYPES,
};
use wasm_bindgen::prelude::*;

use super::object::{get, set, set_defined, to_array};
use crate::codec::Codec;
use crate::error::ClientError;
use crate::text::concat;

/// A JavaScript object carrying a frame's app data, passed through untouched.
#[derive(Debug, Clone)]
pub struct Js(pub JsValue);

impl Js {
    /// The `message` of the frame or envelope.
    pub fn message(&self) -> JsValue {
        get(&self.0, "message")
    }

    /// The `headers` of the frame or envelope (`{}` when absent).
    pub fn headers(&self) -> JsValue {
        let h = get(&self.0, "headers");
        if h.is_object() {
            h
        } else {
            Object::new().into()
        }
    }
}

/// The fields of a `subscribe` (also inside `hello.subscriptions`).
fn subscribe_fields(o: &Object, s: &warren_protocol::Subscribe) {
    set(o, "id", &str_value(&s.id));
    set(o, "channel", &str_value(&s.channel));
    set_defined(
        o,
        "broadcast",
        &s.broadcast.map_or(JsValue::UNDEFINED, JsValue::from_bool),
    );
    if !s.groups.is_empty() {
        set(o, "groups", &to_array(&s.groups));
    }
    if s.direct {
        set(o, "direct", &JsValue::TRUE);
    }
    set_defined(o, "topic", &opt_value(&s.topic));
}

/// The codec of the wasm build: `JSON.stringify` / `JSON.parse`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsCodec;

fn str_value(s: &str) -> JsValue {
    JsValue::from_str(s)
}

fn opt_value(s: &Option<String>) -> JsValue {
    s.as_deref().map_or(JsValue::UNDEFINED, str_value)
}

fn num(n: u64) -> JsValue {
    JsValue::from_f64(n as f64)
}

impl Codec for JsCodec {
    type Payload = Js;

    fn encode(&self, frame: &ClientFrame<Js>) -> Result<String, ClientError> {
        let o = Object::new();
        set(&o, "type", &str_value(frame.kind()));
        match frame {
            ClientFrame::Hello(h) => {
                set_defined(&o, "session", &opt_value(&h.session));
                set_defined(&o, "token", &opt_value(&h.token));
                set_defined(&o, "client", &opt_value(&h.client));
                set_defined(
                    &o,
                    "protocol",
                    &h.protocol.map_or(JsValue::UNDEFINED, |p| num(p.into())),
                );
                set_defined(&o, "position", &h.position.map_or(JsValue::UNDEFINED, num));
                if !h.positions.is_empty() {
                    let positions = Object::new();
                    for (channel, p) in h.positions.iter() {
                        set(&positions, channel, &num(p));
                    }
                    set(&o, "positions", &positions);
                }
                if !h.subscriptions.is_empty() {
                    let subs = js_sys::Array::new();
                    for s in &h.subscriptions {
                        let so = Object::new();
                        subscribe_fields(&so, s);
                        subs.push(&so);
                    }
                    set(&o, "subscriptions", &subs);
                }
            }
            ClientFrame::Publish(p) => {
                set(&o, "id", &str_value(&p.id));
                set(&o, "channel", &str_value(&p.channel));
                set_defined(&o, "subject", &opt_value(&p.subject));
                set_defined(&o, "distribution", &get(&p.message.0, "distribution"));
                set_defined(&o, "headers", &get(&p.message.0, "headers"));
                set(&o, "message", &p.message.message());
            }
            ClientFrame::Request(r) => {
                set(&o, "id", &str_value(&r.id));
                set(&o, "channel", &str_value(&r.channel));
                set_defined(&o, "subject", &opt_value(&r.subject));
                set_defined(&o, "headers", &get(&r.message.0, "headers"));
                set_defined(
                    &o,
                    "timeout_ms",
                    &r.timeout_ms.map_or(JsValue::UNDEFINED, num),
                );
                set(&o, "message", &r.message.message());
            }
            ClientFrame::Subscribe(s) | ClientFrame::Unsubscribe(s) => subscribe_fields(&o, s),
            ClientFrame::Refresh(r) => {
                set(&o, "id", &str_value(&r.id));
                set(&o, "token", &str_value(&r.token));
            }
            ClientFrame::AckDeliveries(a) => set(&o, "seq", &num(a.seq)),
            ClientFrame::Ping(p) | ClientFrame::Pong(p) => {
                set_defined(&o, "ts", &p.ts.map_or(JsValue::UNDEFINED, num));
            }
            ClientFrame::Poc(_) => {
                return Err(ClientError::new(
                    ErrorCode::Unsupported,
                    "the SDK does not send POC packets",
                ))
            }
        }
        JSON::stringify(&o)
            .ok()
            .and_then(|s| s.as_string())
            .ok_or_else(|| {
                ClientError::new(ErrorCode::Invalid, "the message cannot be written as JSON")
            })
    }

    fn decode(&self, text: &str) -> Result<ServerFrame<Js>, DecodeError> {
        let fail = |code, message: String| DecodeError {
            code,
            message,
            id: None,
        };
        let v = JSON::parse(text)
            .map_err(|_| fail(ErrorCode::Malformed, "a frame is not JSON".into()))?;
        let kind = text_of(&v, "type").unwrap_or_default();
        if !SERVER_TYPES.contains(&kind.as_str()) {
            return Err(fail(
                ErrorCode::UnknownType,
                concat(&["unknown frame type `", &kind, "`"]),
            ));
        }
        decode_fields(&kind, v).ok_or_else(|| {
            fail(
                ErrorCode::Invalid,
                concat(&["`", &kind, "` frame with missing or mistyped fields"]),
            )
        })
    }

    fn token_expiry_s(&self, token: &str) -> Option<u64> {
        let exp = token_exp(token);
        (exp >= 0.0).then_some(exp as u64)
    }
}

#[wasm_bindgen(inline_js = r#"
export function tokenExp(t) {
  try {
    const e = JSON.parse(atob(t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp;
    return typeof e == "number" && e >= 0 ? Math.floor(e) : -1;
  } catch (_) { return -1; }
}
"#)]
extern "C" {
    /// The `exp` claim of a JWT's payload (base64url JSON), `-1` when there is none.
    #[wasm_bindgen(js_name = tokenExp)]
    fn token_exp(token: &str) -> f64;
}

/// A string field (`None` when absent or not a string).
#[inline(never)]
fn text_of(v: &JsValue, key: &str) -> Option<String> {
    get(v, key).as_string()
}

/// A non-negative integer field (`None` when absent or not a number).
#[inline(never)]
fn number_of(v: &JsValue, key: &str) -> Option<u64> {
    get(v, key).as_f64().filter(|n| *n >= 0.0).map(|n| n as u64)
}

/// A field holding an object of non-negative integers (`welcome.positions`); empty
/// when absent, entries that are not such numbers left out.
fn numbers_of(v: &JsValue, key: &str) -> Positions {
    let o = get(v, key);
    let mut out = Positions::new();
    if o.is_object() {
        for k in Object::keys(o.unchecked_ref::<Object>()).iter() {
            if let Some(k) = k.as_string() {
                if let Some(n) = number_of(&o, &k) {
                    out.insert(k, n);
                }
            }
        }
    }
    out
}

/// Reads the fields of a server frame of type `kind`; `None` when a required field is
/// missing or mistyped (optional ones fall back to their defaults).
fn decode_fields(kind: &str, v: JsValue) -> Option<ServerFrame<Js>> {
    let s = |key| text_of(&v, key);
    let n = |key| number_of(&v, key);
    Some(match kind {
        "welcome" => {
            let limits = get(&v, "limits");
            ServerFrame::Welcome(Welcome {
                session: s("session")?,
                resumed: get(&v, "resumed").as_bool().unwrap_or(false),
                user: s("user").unwrap_or_default(),
                node: s("node").unwrap_or_default(),
                heartbeat_ms: n("heartbeat_ms").unwrap_or(0),
                limits: Limits {
                    max_frame_bytes: number_of(&limits, "max_frame_bytes").unwrap_or(0),
                    max_subscriptions: number_of(&limits, "max_subscriptions").unwrap_or(0) as u32,
                    delivery_window: number_of(&limits, "delivery_window").unwrap_or(0) as u32,
                },
                protocol: n("protocol").unwrap_or(1) as u32,
                notice: s("notice").map(|c| ErrorCode::parse(&c)),
                position: n("position"),
                positions: numbers_of(&v, "positions"),
            })
        }
        "ack" => ServerFrame::Ack(Ack { id: s("id")? }),
        "error" => ServerFrame::Error(Error {
            id: s("id"),
            code: ErrorCode::parse(&s("code").unwrap_or_default()),
            message: s("message").unwrap_or_default(),
            seq: n("seq"),
            position: n("position"),
            stream: s("stream"),
        }),
        "reply" => ServerFrame::Reply(Reply {
            id: s("id")?,
            seq: n("seq")?,
            position: n("position"),
            headers: Headers::new(),
            message: Js(v.clone()),
        }),
        "deliver" => ServerFrame::Deliver(Deliver {
            seq: n("seq")?,
            position: n("position"),
            stream: s("stream"),
            message_id: s("message_id")?,
            channel: s("channel")?,
            routing_key: s("routing_key")?,
            redelivered: get(&v, "redelivered").as_bool().unwrap_or(false),
            headers: Headers::new(),
            message: Js(v.clone()),
        }),
        "ping" => ServerFrame::Ping(Ping { ts: n("ts") }),
        "pong" => ServerFrame::Pong(Ping { ts: n("ts") }),
        "drain" => ServerFrame::Drain(Drain {
            reason: s("reason").unwrap_or_default(),
            deadline_ms: n("deadline_ms"),
        }),
        "overflow" => ServerFrame::Overflow(Overflow {
            dropped: n("dropped").unwrap_or(0),
        }),
        _ => return None,
    })
}
