//! The browser codec: frames ⇄ text through the browser's own `JSON`, with the fields
//! read and written by hand (`Reflect`), so neither a JSON parser nor serde's
//! deserializers are compiled into the wasm.
//!
//! The payload [`Js`] is the JavaScript object that carries the app's data: for frames
//! from the gateway, the parsed frame itself (the facade reads its `message` and
//! `headers`); for frames to the gateway, the app's envelope (its `message`,
//! `distribution` and `headers` are copied into the frame untouched).

use js_sys::Object;
use warren_protocol::{
    Ack, ClientFrame, DecodeError, Deliver, Drain, Error, ErrorCode, Headers, Limits, Overflow,
    Ping, Positions, Reply, ServerFrame, Welcome, SERVER_TYPES,
};
use wasm_bindgen::prelude::*;

use super::object::{get, set, set_defined, str_array, to_array};
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

/// The codec of the wasm build: `JSON.stringify` / `JSON.parse`. It keeps the client's
/// stream positions (the [`Codec`] contract) in a JavaScript object shaped as a
/// `hello` names them (`{position, positions: {<channel>: n}}`), updated by [`record`]
/// from each frame decoded and copied into a resuming `hello`: smaller in the wasm
/// than the same in Rust.
#[derive(Debug, Clone)]
pub struct JsCodec {
    positions: Object,
}

impl Default for JsCodec {
    fn default() -> JsCodec {
        JsCodec {
            positions: Object::new(),
        }
    }
}

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
        // A resuming `hello` names the positions recorded (`stringify` adds them).
        let mut positions = &JsValue::UNDEFINED;
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
                if h.session.is_some() {
                    positions = &self.positions;
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
        stringify(&o, positions).as_string().ok_or_else(|| {
            ClientError::new(ErrorCode::Invalid, "the message cannot be written as JSON")
        })
    }

    fn decode(&self, text: &str) -> Result<ServerFrame<Js>, DecodeError> {
        let fail = |code, message: String| DecodeError {
            code,
            message,
            id: None,
        };
        let v = parse(text);
        if v.is_undefined() {
            return Err(fail(ErrorCode::Malformed, "a frame is not JSON".into()));
        }
        let kind = text_of(&v, "type").unwrap_or_default();
        if !SERVER_TYPES.contains(&kind.as_str()) {
            return Err(fail(
                ErrorCode::UnknownType,
                concat(&["unknown frame type `", &kind, "`"]),
            ));
        }
        // Only a frame that decoded counts: a refused `deliver` never reached the app,
        // so a resume must not skip it.
        decode_fields(&kind, &v)
            .inspect(|_| record(&self.positions, &v))
            .ok_or_else(|| {
                fail(
                    ErrorCode::Invalid,
                    concat(&["`", &kind, "` frame with missing or mistyped fields"]),
                )
            })
    }

    fn token_expiry_ms(&self, token: &str, now: u64) -> Option<u64> {
        let exp = token_exp(token, now as f64);
        (exp >= 0.0).then_some(exp as u64)
    }
}

#[wasm_bindgen(inline_js = r#"
export function parse(t) { try { return JSON.parse(t); } catch (_) {} }
export function record(o, v) {
  var p = v.position, s = v.stream, k = "position";
  if (v.type == "welcome") v.resumed || (o[k] = p, o.positions = v.positions);
  else if (p >= 0) {
    if (s) o = o.positions = o.positions || {}, k = s;
    o[k] >= p || (o[k] = p);
  }
}
export function stringify(f, p) {
  try { return JSON.stringify(Object.assign(f, p)); } catch (_) {}
}
export function tokenExp(t, n) {
  try {
    const c = JSON.parse(atob(t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))), e = c.exp, i = c.iat, x = e * 1e3;
    return typeof e == "number" && e >= 0 ? Math.floor(typeof i == "number" ? Math.min(n + (e - i) * 1e3, x > n ? x : 1 / 0) : x) : -1;
  } catch (_) { return -1; }
}
"#)]
extern "C" {
    /// `JSON.parse(text)` (`undefined` when it is not JSON).
    fn parse(text: &str) -> JsValue;
    /// Records the stream position a decoded `frame` carries in `positions`
    /// (`{position, positions}`, as a `hello` names them): the newest of each stream
    /// counts; a welcome that did not resume starts over from its own. Called only
    /// for frames that decoded (a refused one records nothing).
    fn record(positions: &Object, frame: &JsValue);
    /// `JSON.stringify(frame)` with the fields of `extra` (`undefined`: none) added;
    /// `undefined` when it cannot be written as JSON (a `BigInt`, a cycle).
    fn stringify(frame: &Object, extra: &JsValue) -> JsValue;
    /// When a JWT got at `now` expires, in ms: `now` + (`exp` − `iat`) of its payload
    /// (base64url JSON), no later than `exp` while `now` is before it (a cached token),
    /// or `exp` without `iat`; `-1` without a numeric `exp` (as `token::expiry_ms`).
    #[wasm_bindgen(js_name = tokenExp)]
    fn token_exp(token: &str, now: f64) -> f64;
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

/// Reads the fields of a server frame of type `kind`; `None` when a required field is
/// missing or mistyped (optional ones fall back to their defaults).
fn decode_fields(kind: &str, v: &JsValue) -> Option<ServerFrame<Js>> {
    let s = |key| text_of(v, key);
    let n = |key| number_of(v, key);
    Some(match kind {
        "welcome" => {
            let limits = get(v, "limits");
            ServerFrame::Welcome(Welcome {
                session: s("session")?,
                resumed: get(v, "resumed").as_bool().unwrap_or(false),
                user: s("user").unwrap_or_default(),
                heartbeat_ms: n("heartbeat_ms").unwrap_or(0),
                limits: Limits {
                    max_frame_bytes: number_of(&limits, "max_frame_bytes").unwrap_or(0),
                    delivery_window: number_of(&limits, "delivery_window").unwrap_or(0) as u32,
                    // Not read by the SDK (the gateway refuses what is over it).
                    max_subscriptions: 0,
                },
                notice: s("notice").map(|c| ErrorCode::parse(&c)),
                // Not read by the SDK, so not decoded (the wasm is smaller): `node`
                // and `protocol`, and the positions, which the codec keeps (`record`).
                node: String::new(),
                protocol: 1,
                position: None,
                positions: Positions::new(),
            })
        }
        // Its position, if any, the codec records (`record`).
        "ack" => ServerFrame::Ack(Ack {
            id: s("id")?,
            ..Ack::default()
        }),
        "error" => ServerFrame::Error(Error {
            id: s("id"),
            code: ErrorCode::parse(&s("code").unwrap_or_default()),
            message: s("message").unwrap_or_default(),
            seq: n("seq"),
            position: None,
            // Read: it tells the app which channel a `session_expired` is about.
            stream: s("stream"),
        }),
        "reply" => ServerFrame::Reply(Reply {
            id: s("id")?,
            seq: n("seq")?,
            position: None,
            headers: Headers::new(),
            message: Js(v.clone()),
        }),
        "deliver" => ServerFrame::Deliver(Deliver {
            seq: n("seq")?,
            position: None,
            stream: None,
            message_id: s("message_id")?,
            channel: s("channel")?,
            routing_key: s("routing_key")?,
            // Absent or not an array of strings: none.
            keys: str_array(v, "keys").unwrap_or_default(),
            redelivered: get(v, "redelivered").as_bool().unwrap_or(false),
            headers: Headers::new(),
            message: Js(v.clone()),
        }),
        "ping" => ServerFrame::Ping(Ping {
            ts: n("ts"),
            ..Ping::default()
        }),
        "pong" => ServerFrame::Pong(Ping {
            ts: n("ts"),
            ..Ping::default()
        }),
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
