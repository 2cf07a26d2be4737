//! The JavaScript `Client` and `Subscription` classes: bindings over [`ClientCore`] and
//! nothing else. Every app call and every socket or timer event goes into the core, then
//! `pump` performs the core's actions in order (open/send/close sockets, settle
//! promises, call handlers, arm the one timer).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use js_sys::{Function, Object, Promise};
use warren_protocol::{Deliver, SUBPROTOCOL};
use wasm_bindgen::prelude::*;

use super::codec::{Js, JsCodec};
use super::error::{invalid, to_js};
use super::object::{get, opt_bool, opt_str, opt_u64, req_str, set, str_array};
use super::socket::{
    clock, deferred, emit_event, get_token, listen, listeners, log_error, Dispatch, Socket, Timer,
    CLOSE, OPEN, TEXT, TICK, TOKEN, TOKEN_FAILED,
};
use super::types::{ClientOptions, EnvelopeJs, SubscribeOptionsJs, WaitOptionsJs};
use crate::action::{Action, StateChange};
use crate::backoff::Backoff;
use crate::client::ClientCore;
use crate::config::Config;
use crate::envelope::Envelope;
use crate::id_map::IdMap;
use crate::subscription::SubscribeOptions;
use crate::text::concat;

/// Everything the bindings hold besides the core: JS-side resources only.
struct Inner {
    core: ClientCore<JsCodec>,
    /// The app's `getToken`, if it gave one.
    get_token: Option<Function>,
    socket: Option<Socket>,
    timer: Option<Timer>,
    /// Promise settlers by operation id: (resolve, reject).
    ops: IdMap<(Function, Function)>,
    /// Delivery handlers by subscription id.
    handlers: IdMap<Function>,
    /// Status listeners (`subscribe`'s third argument) by subscription id.
    statuses: IdMap<Function>,
    /// `{ state: [...], error: [...], drain: [...] }`: the listeners, kept in JS.
    listeners: JsValue,
    /// The last `error` event (`null` before the first).
    last_error: JsValue,
}

struct Shared {
    inner: RefCell<Inner>,
    /// The one JS function every socket and timer event of this client goes to.
    dispatch: Dispatch,
    /// Set while [`pump`] runs, so a handler that calls back into the client does not
    /// perform actions out of order.
    pumping: Cell<bool>,
}

/// The core's clock: milliseconds since the epoch that never go back (see [`clock`]).
fn now() -> u64 {
    clock() as u64
}

/// A Warren client: one session over one WebSocket at a time, moving along `urls` when
/// a gateway fails.
#[wasm_bindgen]
pub struct Client {
    shared: Rc<Shared>,
}

/// A live subscription, returned by `client.subscribe(...)`.
#[wasm_bindgen]
pub struct Subscription {
    shared: Weak<Shared>,
    id: u64,
    ready: Promise,
}

#[wasm_bindgen]
impl Client {
    /// Creates a client; nothing is opened until `connect()`.
    ///
    /// @throws {WarrenError} `invalid` when `urls` is missing or empty, a URL is not a
    /// `ws://` / `wss://` URL, or an option has the wrong type.
    #[wasm_bindgen(constructor)]
    pub fn new(options: ClientOptions) -> Result<Client, JsValue> {
        let config = parse_options(&options)
            .map_err(|e| invalid(concat(&["invalid client options: ", &e])))?;
        config.validate().map_err(|e| to_js(&e))?;
        let seed = (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64 ^ now();
        let inner = Inner {
            get_token: get(&options, "getToken").dyn_into().ok(),
            core: ClientCore::new(config, JsCodec::default(), seed),
            socket: None,
            timer: None,
            ops: IdMap::default(),
            handlers: IdMap::default(),
            statuses: IdMap::default(),
            listeners: listeners(),
            last_error: JsValue::NULL,
        };
        Ok(Client {
            shared: Rc::new_cyclic(|weak: &Weak<Shared>| {
                let weak = weak.clone();
                Shared {
                    inner: RefCell::new(inner),
                    dispatch: Dispatch::new(move |kind, conn, data: JsValue| {
                        if let Some(shared) = weak.upgrade() {
                            feed(&shared, kind, conn as u64, data);
                        }
                    }),
                    pumping: Cell::new(false),
                }
            }),
        })
    }

    /// Connects (to the first URL, then along the list on failure) and resolves once the
    /// session is open. Every failed attempt emits an `error` event naming the URL and
    /// why. Without `connectTimeoutMs` it keeps trying (the promise stays pending);
    /// with it, it stops after that long and rejects with `timeout`, as do the writes
    /// and requests waiting for the connection. Reconnection after a session opened is
    /// automatic; calling `connect()` again only waits for the connection.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn connect(&self) -> Promise {
        settle_with(&self.shared, |core, now| {
            core.connect(now);
            core.ready(now)
        })
    }

    /// Resolves when the client is connected (at once if it is); rejects with `closed`
    /// after `close()`, and at once with the close's error after a close code that
    /// forbids reconnecting (1000, 4500–4999), until `connect()` starts over.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn ready(&self) -> Promise {
        settle_with(&self.shared, |core, now| core.ready(now))
    }

    /// Closes the client for good and releases everything: the socket and the timer are
    /// closed, pending writes and requests are rejected with `closed`, and the state
    /// becomes `disconnected`. `free()` and `[Symbol.dispose]()` call it.
    pub fn close(&self) {
        self.shared.inner.borrow_mut().core.close(now());
        pump(&self.shared);
    }

    /// Sends a message and resolves once the gateway confirms RabbitMQ has it (`ack`).
    /// Written while disconnected, it waits in the outbox and is sent after reconnecting.
    /// Rejects with a `WarrenError` whose `id` is the frame id: `too_large` at once
    /// (over the gateway's `max_frame_bytes`; nothing is sent), `no_route` (nothing
    /// would receive it), `timeout` (no ack within `requestTimeoutMs`), `disconnected`
    /// (outbox full), `closed`, ... A rejected write is never sent again.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn write(&self, envelope: EnvelopeJs) -> Promise {
        match parse_envelope(envelope.into()) {
            Ok(env) => settle_with(&self.shared, |core, now| core.write(env, now)),
            Err(e) => Promise::reject(&e),
        }
    }

    /// See the TypeScript declaration (generic).
    #[wasm_bindgen(js_name = writeAndWait, skip_typescript)]
    pub fn write_and_wait(&self, envelope: JsValue, options: Option<WaitOptionsJs>) -> Promise {
        let timeout = match options.map(|o| opt_u64(&o, "timeoutMs")).transpose() {
            Ok(t) => t.flatten(),
            Err(e) => return Promise::reject(&invalid(e)),
        };
        match parse_envelope(envelope) {
            Ok(env) => settle_with(&self.shared, |core, now| core.request(env, timeout, now)),
            Err(e) => Promise::reject(&e),
        }
    }

    /// See the TypeScript declaration (generic).
    #[wasm_bindgen(skip_typescript)]
    pub fn subscribe(
        &self,
        options: SubscribeOptionsJs,
        handler: Function,
        on_status: Option<Function>,
    ) -> Result<Subscription, JsValue> {
        let options = parse_subscribe(&options)
            .map_err(|e| invalid(concat(&["invalid subscribe options: ", &e])))?;
        let d = deferred(true);
        let id = {
            let mut inner = self.shared.inner.borrow_mut();
            let id = inner
                .core
                .subscribe(options, now())
                .map_err(|e| to_js(&e))?;
            inner.handlers.insert(id, handler);
            if let Some(f) = on_status {
                inner.statuses.insert(id, f);
            }
            inner
                .ops
                .insert(id, (d.get(1).unchecked_into(), d.get(2).unchecked_into()));
            id
        };
        pump(&self.shared);
        Ok(Subscription {
            shared: Rc::downgrade(&self.shared),
            id,
            ready: d.get(0).unchecked_into(),
        })
    }

    /// See the TypeScript declaration (generic).
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, event: &str, handler: Function) -> Result<(), JsValue> {
        self.listen(event, &handler, true)
    }

    /// See the TypeScript declaration (generic).
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, event: &str, handler: Function) -> Result<(), JsValue> {
        self.listen(event, &handler, false)
    }

    /// The connection state now.
    #[wasm_bindgen(getter, unchecked_return_type = "ConnectionState")]
    pub fn state(&self) -> JsValue {
        JsValue::from_str(self.shared.inner.borrow().core.state().as_str())
    }

    /// The session id, once a gateway opened one (`null` before).
    #[wasm_bindgen(getter, unchecked_return_type = "string | null")]
    pub fn session(&self) -> JsValue {
        optional(self.shared.inner.borrow().core.session())
    }

    /// The gateway URL in use (or tried next); `null` only without URLs.
    #[wasm_bindgen(getter, unchecked_return_type = "string | null")]
    pub fn url(&self) -> JsValue {
        optional(self.shared.inner.borrow().core.url())
    }

    /// The last `error` event (`null` before the first), e.g. why connecting fails.
    #[wasm_bindgen(getter, js_name = lastError, unchecked_return_type = "WarrenError | null")]
    pub fn last_error(&self) -> JsValue {
        self.shared.inner.borrow().last_error.clone()
    }
}

impl Client {
    /// Adds (`on`) or removes a listener of `state`, `error` or `drain`.
    fn listen(&self, event: &str, handler: &Function, on: bool) -> Result<(), JsValue> {
        let listeners = self.shared.inner.borrow().listeners.clone();
        if listen(&listeners, event, handler, on) {
            Ok(())
        } else {
            Err(invalid(concat(&[
                "unknown event `",
                event,
                "` (expected state, error or drain)",
            ])))
        }
    }
}

impl Drop for Client {
    /// `free()` / `[Symbol.dispose]()` close the client first.
    fn drop(&mut self) {
        self.close();
    }
}

/// A JS string, or `null` (JS values rather than `String`s: smaller glue).
fn optional(s: Option<&str>) -> JsValue {
    s.map_or(JsValue::NULL, JsValue::from_str)
}

#[wasm_bindgen]
impl Subscription {
    /// See the TypeScript declaration.
    #[wasm_bindgen(getter, skip_typescript)]
    pub fn ready(&self) -> Promise {
        self.ready.clone()
    }

    /// Stops this subscription. Bindings another subscription still needs stay.
    pub fn unsubscribe(&self) {
        if let Some(shared) = self.shared.upgrade() {
            {
                let mut inner = shared.inner.borrow_mut();
                inner.handlers.remove(self.id);
                inner.statuses.remove(self.id);
                inner.ops.remove(self.id);
                inner.core.unsubscribe(self.id, now());
            }
            pump(&shared);
        }
    }
}

fn parse_options(o: &JsValue) -> Result<Config, String> {
    if !o.is_object() {
        return Err("expected an object".into());
    }
    let mut config = Config::new(str_array(o, "urls")?);
    config.token = opt_str(o, "token")?;
    let get_token = get(o, "getToken");
    config.fetch_token = get_token.is_function();
    if !config.fetch_token && !get_token.is_undefined() {
        return Err("`getToken` must be a function".into());
    }
    let reconnect = get(o, "reconnect");
    let d = config.backoff;
    config.backoff = Backoff::new(
        opt_u64(&reconnect, "minDelayMs")?.unwrap_or(d.min_ms),
        opt_u64(&reconnect, "maxDelayMs")?.unwrap_or(d.max_ms),
    );
    config.request_timeout_ms =
        opt_u64(o, "requestTimeoutMs")?.unwrap_or(config.request_timeout_ms);
    config.connect_timeout_ms =
        opt_u64(o, "handshakeTimeoutMs")?.unwrap_or(config.connect_timeout_ms);
    config.give_up_after_ms = opt_u64(o, "connectTimeoutMs")?;
    config.channels = str_array(o, "channels")?;
    config.outbox_limit = opt_u64(o, "outboxLimit")?.map_or(config.outbox_limit, |n| n as usize);
    Ok(config)
}

fn parse_subscribe(o: &JsValue) -> Result<SubscribeOptions, String> {
    if !o.is_object() {
        return Err("expected an object".into());
    }
    Ok(SubscribeOptions {
        channel: req_str(o, "channel")?,
        broadcast: opt_bool(o, "broadcast")?,
        groups: str_array(o, "groups")?,
        direct: opt_bool(o, "direct")?.unwrap_or(false),
        topic: opt_str(o, "topic")?,
    })
}

/// Reads `channel` and `subject`; the whole object travels on as the payload.
fn parse_envelope(value: JsValue) -> Result<Envelope<Js>, JsValue> {
    let read = || -> Result<Envelope<Js>, String> {
        if !value.is_object() {
            return Err("expected an object".into());
        }
        if !js_sys::Reflect::has(&value, &JsValue::from_str("message")).unwrap_or(false) {
            return Err("`message` is required".into());
        }
        Ok(Envelope {
            channel: req_str(&value, "channel")?,
            subject: opt_str(&value, "subject")?,
            distribution: None,
            headers: Default::default(),
            message: Js(value.clone()),
        })
    };
    read().map_err(|e| invalid(concat(&["invalid envelope: ", &e])))
}

/// The one promise helper: registers the settlers of a new promise under the operation
/// id the core returns, then performs the core's actions.
fn settle_with(
    shared: &Rc<Shared>,
    op: impl FnOnce(&mut ClientCore<JsCodec>, u64) -> u64,
) -> Promise {
    let d = deferred(false);
    {
        let mut inner = shared.inner.borrow_mut();
        let id = op(&mut inner.core, now());
        inner
            .ops
            .insert(id, (d.get(1).unchecked_into(), d.get(2).unchecked_into()));
    }
    pump(shared);
    d.get(0).unchecked_into()
}

/// Feeds a socket or timer event (see [`Dispatch`]) into the core.
fn feed(shared: &Rc<Shared>, kind: u32, conn: u64, data: JsValue) {
    {
        let mut inner = shared.inner.borrow_mut();
        let t = now();
        match kind {
            OPEN => inner.core.on_open(conn, t),
            TEXT => inner
                .core
                .on_text(conn, &data.as_string().unwrap_or_default(), t),
            CLOSE => inner
                .core
                .on_close(conn, data.as_f64().unwrap_or(1006.0) as u16, t),
            TICK => inner.core.tick(t),
            TOKEN | TOKEN_FAILED => {
                let text = data.as_string().unwrap_or_default();
                let result = if kind == TOKEN { Ok(text) } else { Err(text) };
                inner.core.on_token(conn, result, t)
            }
            _ => {}
        }
    }
    pump(shared);
}

/// Performs the core's actions in order until none is left.
fn pump(shared: &Rc<Shared>) {
    if shared.pumping.replace(true) {
        return;
    }
    loop {
        let action = shared.inner.borrow_mut().core.poll_action();
        match action {
            Some(action) => perform(shared, action),
            None => break,
        }
    }
    shared.pumping.set(false);
}

fn perform(shared: &Rc<Shared>, action: Action<Js>) {
    match action {
        Action::Open { conn, url } => {
            let old = shared.inner.borrow_mut().socket.take();
            drop(old);
            match Socket::open(&url, SUBPROTOCOL, conn, &shared.dispatch) {
                Some(socket) => shared.inner.borrow_mut().socket = Some(socket),
                None => shared.inner.borrow_mut().core.on_close(conn, 1006, now()),
            }
        }
        Action::Send(text) => {
            if let Some(socket) = &shared.inner.borrow().socket {
                socket.send(&text);
            }
        }
        Action::Close => {
            // 4000 when the core goes on to resume elsewhere, 1000 after `close()`.
            let (old, code) = {
                let mut inner = shared.inner.borrow_mut();
                (inner.socket.take(), inner.core.close_code())
            };
            if let Some(socket) = old {
                socket.close(code);
            }
        }
        Action::Resolve(op) => settle(shared, op, Ok(JsValue::UNDEFINED)),
        Action::Reply(op, frame) => settle(shared, op, Ok(frame.message())),
        Action::Reject(op, err) => settle(shared, op, Err(to_js(&err))),
        Action::Deliver {
            subscriptions,
            delivery,
        } => {
            let delivery = delivery_js(delivery);
            for sub in subscriptions {
                let handler = shared.inner.borrow().handlers.get(sub).cloned();
                if let Some(handler) = handler {
                    call(&handler, &delivery);
                }
            }
        }
        Action::SubscriptionStatus(sub, err) => {
            let listener = shared.inner.borrow().statuses.get(sub).cloned();
            if let Some(listener) = listener {
                let (status, err) = match err {
                    Some(e) => (ERROR, to_js(&e)),
                    None => (PENDING, JsValue::NULL),
                };
                subscription_status(&listener, status, &err);
            }
        }
        Action::StateChanged(change) => emit(shared, "state", &state_js(&change)),
        Action::Error(err) => {
            let err = to_js(&err);
            shared.inner.borrow_mut().last_error = err.clone();
            emit(shared, "error", &err);
        }
        Action::Drain(d) => {
            let o = Object::new();
            set(&o, "reason", &d.reason.into());
            set(
                &o,
                "deadlineMs",
                &d.deadline_ms.map_or(JsValue::NULL, |ms| (ms as f64).into()),
            );
            emit(shared, "drain", &o);
        }
        Action::FetchToken(fetch) => {
            let get = shared.inner.borrow().get_token.clone();
            if let Some(get) = get {
                get_token(&get, fetch, &shared.dispatch);
            }
        }
        Action::SetTimer(at) => {
            let timer = at.map(|at| Timer::arm(at.saturating_sub(now()), &shared.dispatch));
            let old = std::mem::replace(&mut shared.inner.borrow_mut().timer, timer);
            drop(old);
        }
    }
}

/// Settles operation `op` (once: later outcomes of a subscription find no settlers) and
/// reports the outcome as the status of subscription `op`, if it is one with a status
/// listener (`active`, or `error`).
fn settle(shared: &Rc<Shared>, op: u64, outcome: Result<JsValue, JsValue>) {
    let (settlers, listener) = {
        let mut inner = shared.inner.borrow_mut();
        (inner.ops.remove(op), inner.statuses.get(op).cloned())
    };
    if let Some((resolve, reject)) = settlers {
        let _ = match &outcome {
            Ok(v) => resolve.call1(&JsValue::UNDEFINED, v),
            Err(e) => reject.call1(&JsValue::UNDEFINED, e),
        };
    }
    if let Some(listener) = listener {
        match &outcome {
            Ok(_) => subscription_status(&listener, ACTIVE, &JsValue::NULL),
            Err(e) => subscription_status(&listener, ERROR, e),
        }
    }
}

/// `status` of [`subscription_status`].
const PENDING: u32 = 0;
const ACTIVE: u32 = 1;
const ERROR: u32 = 2;

/// Calls an app handler; an exception is logged, never allowed to break the client.
fn call(handler: &Function, arg: &JsValue) {
    if let Err(e) = handler.call1(&JsValue::UNDEFINED, arg) {
        log_error(&e);
    }
}

/// Calls the listeners of `event` (an exception is logged, never allowed to break the
/// client).
fn emit(shared: &Rc<Shared>, event: &str, value: &JsValue) {
    let listeners = shared.inner.borrow().listeners.clone();
    emit_event(&listeners, event, value);
}

#[wasm_bindgen(module = "/src/browser/delivery.js")]
extern "C" {
    /// `{ message, channel, routingKey, event?, messageId, headers, redelivered }`.
    #[wasm_bindgen(js_name = delivery)]
    fn new_delivery(
        message: JsValue,
        channel: &str,
        routing_key: &str,
        message_id: &str,
        headers: JsValue,
        redelivered: bool,
    ) -> JsValue;

    /// Calls a subscription's status listener with `pending`, `active` or `error`
    /// (`status` 0, 1, 2) and the error (`null` but for `error`); exceptions are logged.
    #[wasm_bindgen(js_name = subscriptionStatus)]
    fn subscription_status(listener: &Function, status: u32, error: &JsValue);
}

fn delivery_js(d: Deliver<Js>) -> JsValue {
    new_delivery(
        d.message.message(),
        &d.channel,
        &d.routing_key,
        &d.message_id,
        d.message.headers(),
        d.redelivered,
    )
}

fn state_js(c: &StateChange) -> JsValue {
    let o = Object::new();
    set(&o, "oldState", &c.old.as_str().into());
    set(&o, "newState", &c.new.as_str().into());
    let opt = |s: &Option<String>| s.as_deref().map_or(JsValue::NULL, JsValue::from_str);
    set(&o, "url", &opt(&c.url));
    set(&o, "session", &opt(&c.session));
    set(&o, "resumed", &c.resumed.into());
    o.into()
}
