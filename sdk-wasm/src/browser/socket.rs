//! The browser side of sockets, timers and promises: a few lines of JavaScript (an
//! inline snippet of the package) behind typed Rust handles. Every socket and timer
//! event (and every `getToken` outcome) goes to ONE JS function per client, the [`Dispatch`] closure, so wasm-bindgen
//! emits one closure shim for the whole facade (wasm size). Dropping a [`Socket`]
//! detaches its handlers and closes it (with 1000, or the code [`Socket::close`]
//! names), so a replaced connection never reports into the core again; dropping a
//! [`Timer`] clears it.

use js_sys::{Array, Function};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(inline_js = r#"
export function deferred(q) { let r, j; const p = new Promise((a, b) => { r = a; j = b; }); if (q) p.catch(() => {}); return [p, r, j]; }
export function openSocket(url, protocol, conn, dispatch) {
  let ws;
  try { ws = new WebSocket(url, protocol); } catch (_) { return null; }
  ws.binaryType = "arraybuffer";
  ws.onopen = () => dispatch(0, conn);
  ws.onmessage = (e) => { if (typeof e.data == "string") dispatch(1, conn, e.data); };
  ws.onclose = (e) => dispatch(2, conn, e.code);
  return ws;
}
export function closeSocket(ws, code) { ws.onopen = ws.onmessage = ws.onclose = null; try { ws.close(code); } catch (_) {} }
export function sendText(ws, text) { try { ws.send(text); } catch (_) {} }
export function arm(ms, dispatch) { return setTimeout(() => dispatch(3, 0), ms); }
export function disarm(id) { clearTimeout(id); }
export function logError(e) { console.error(e); }
let offset = 0;
export function clock() { const m = performance.now(); offset = Math.max(offset, Date.now() - m); return m + offset; }
export function listeners() { return { state: [], error: [], drain: [] }; }
export function listen(l, name, f, on) {
  if (!Array.isArray(l[name])) return false;
  l[name] = on ? [...l[name], f] : l[name].filter((g) => g !== f);
  return true;
}
export function emitEvent(l, name, v) {
  for (const f of l[name]) { try { f(v); } catch (e) { console.error(e); } }
}
export function fetchToken(get, fetch, dispatch) {
  const report = (kind, value) => { try { dispatch(kind, fetch, value); } catch (_) {} };
  new Promise((r) => r(get()))
    .then((t) => (typeof t == "string" ? t : Promise.reject(Error("it resolved to " + typeof t))))
    .then((t) => report(4, t), (e) => report(5, String(e?.message ?? e)));
}
"#)]
extern "C" {
    /// `[promise, resolve, reject]` (smaller than a Rust executor closure); `quiet`: a
    /// rejection nobody waits for is not reported as unhandled (a subscription's `ready`).
    pub fn deferred(quiet: bool) -> Array;

    /// A `WebSocket` reporting to `dispatch`; `null` when the constructor threw.
    #[wasm_bindgen(js_name = openSocket)]
    fn open_socket(url: &str, protocol: &str, conn: f64, dispatch: &Function) -> JsValue;

    #[wasm_bindgen(js_name = closeSocket)]
    fn close_socket(ws: &JsValue, code: u16);

    #[wasm_bindgen(js_name = sendText)]
    fn send_text(ws: &JsValue, text: &str);

    fn arm(ms: f64, dispatch: &Function) -> JsValue;

    fn disarm(id: &JsValue);

    /// A client's listeners: `{ state: [], error: [], drain: [] }`.
    pub fn listeners() -> JsValue;

    /// Adds (`on`) or removes `f` as a listener of `name`; `false` for an unknown event.
    pub fn listen(listeners: &JsValue, name: &str, f: &Function, on: bool) -> bool;

    /// Calls every listener of `name` with `value`; exceptions are logged.
    #[wasm_bindgen(js_name = emitEvent)]
    pub fn emit_event(listeners: &JsValue, name: &str, value: &JsValue);

    #[wasm_bindgen(js_name = fetchToken)]
    fn fetch_token(get: &Function, fetch: f64, dispatch: &Function);

    /// `console.error(value)`.
    #[wasm_bindgen(js_name = logError)]
    pub fn log_error(value: &JsValue);

    /// Milliseconds since the epoch that never go back: `performance.now()` plus the
    /// largest `Date.now() - performance.now()` seen. A wall clock stepped back (NTP,
    /// the user, a VM restore) does not stretch the client's deadlines; one that went
    /// ahead of the monotonic clock (a laptop waking: `performance.now()` stands still
    /// while the machine sleeps on Linux and macOS) is followed, so a token that
    /// expired meanwhile is seen as expired and renewed. (`performance.now()` alone
    /// left tokens looking valid after a sleep.)
    pub fn clock() -> f64;
}

/// What a socket or the timer reports: `kind` ([`OPEN`], [`TEXT`], [`CLOSE`] or
/// [`TICK`]), the connection number, and the text or close code.
pub type Dispatch = Closure<dyn FnMut(u32, f64, JsValue)>;

/// `kind` of a socket that opened.
pub const OPEN: u32 = 0;
/// `kind` of a text frame (`data` is the text; binary frames are not reported).
pub const TEXT: u32 = 1;
/// `kind` of a closed socket (`data` is the close code).
pub const CLOSE: u32 = 2;
/// `kind` of the timer firing.
pub const TICK: u32 = 3;
/// `kind` of a `getToken` call that resolved (`conn` is the call, `data` the token).
pub const TOKEN: u32 = 4;
/// `kind` of a `getToken` call that failed (`data` says why).
pub const TOKEN_FAILED: u32 = 5;

/// Calls the app's `getToken` and reports call `fetch` as [`TOKEN`] or [`TOKEN_FAILED`].
pub fn get_token(get: &Function, fetch: u64, dispatch: &Dispatch) {
    fetch_token(get, fetch as f64, function(dispatch));
}

fn function(dispatch: &Dispatch) -> &Function {
    dispatch.as_ref().unchecked_ref()
}

/// An open (or opening) WebSocket.
pub struct Socket {
    ws: JsValue,
    /// The close code it is closed with when dropped (1000 unless [`Socket::close`]
    /// says otherwise).
    code: u16,
}

impl Socket {
    /// Opens `url` with `protocol`, reporting to `dispatch` as connection `conn`;
    /// `None` when the URL is invalid.
    pub fn open(url: &str, protocol: &str, conn: u64, dispatch: &Dispatch) -> Option<Socket> {
        let ws = open_socket(url, protocol, conn as f64, function(dispatch));
        (!ws.is_null()).then_some(Socket { ws, code: 1000 })
    }

    /// Sends a text frame (dropped when the socket is not open: its close event follows).
    pub fn send(&self, text: &str) {
        send_text(&self.ws, text);
    }

    /// Closes it with close `code` (and detaches its handlers).
    pub fn close(mut self, code: u16) {
        self.code = code;
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        close_socket(&self.ws, self.code);
    }
}

/// The one armed `setTimeout`.
pub struct Timer {
    id: JsValue,
}

impl Timer {
    /// Reports [`TICK`] to `dispatch` after `ms`.
    pub fn arm(ms: u64, dispatch: &Dispatch) -> Timer {
        Timer {
            // setTimeout takes at most 2^31 - 1 ms; past that it fires at once.
            id: arm(ms.min(0x7fff_ffff) as f64, function(dispatch)),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        disarm(&self.id);
    }
}
