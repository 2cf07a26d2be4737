//! What the core asks its driver to do (the outputs of the sans-IO state machine), and
//! the public connection state.

use warren_protocol::{Deliver, Drain};

use crate::error::ClientError;

/// The connection state the app sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Opening a socket, waiting for `welcome`, or waiting to retry.
    Connecting,
    /// `welcome` received: the session is open.
    Connected,
    /// Not connected and not trying: before `connect()`, after `close()`, or after a
    /// close code that forbids reconnecting.
    Disconnected,
}

impl State {
    /// `"connecting"`, `"connected"` or `"disconnected"`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Disconnected => "disconnected",
        }
    }
}

/// A change of [`State`], reported to the app as the `state` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// State before.
    pub old: State,
    /// State now.
    pub new: State,
    /// The gateway URL being tried or used, if any.
    pub url: Option<String>,
    /// The session id, once connected.
    pub session: Option<String>,
    /// Whether the session was resumed (`false` for a fresh one, e.g. after
    /// `session_expired`).
    pub resumed: bool,
}

/// One instruction for the driver (the wasm facade, or a test).
#[derive(Debug, Clone, PartialEq)]
pub enum Action<M> {
    /// Open a WebSocket (subprotocol `warren.v1`) to `url`; report its events with `conn`.
    Open {
        /// Connection number to pass to `on_open`, `on_text` and `on_close`.
        conn: u64,
        /// Gateway URL.
        url: String,
    },
    /// Send this text frame on the current socket.
    Send(String),
    /// Close the current socket and forget it (its later events are ignored).
    Close,
    /// Resolve operation `op` (a write's ack, `ready`, or a subscription in force: the
    /// gateway acknowledged its `subscribe`, the first time or again after reconnecting).
    Resolve(u64),
    /// Resolve request `op` with the service's reply.
    Reply(u64, M),
    /// Reject operation `op` (also a subscription the gateway refused, for good or for
    /// now, or any subscription when the client stopped or closed).
    Reject(u64, ClientError),
    /// Hand a delivery to the handlers of these subscriptions (usually one).
    Deliver {
        /// Subscription ids returned by `subscribe`.
        subscriptions: Vec<u64>,
        /// The delivery.
        delivery: Deliver<M>,
    },
    /// Report subscription `op`'s status, without settling its readiness: `pending`
    /// (`None`: its `subscribe` is on its way, the first time, after every reconnect,
    /// and after `connect()` restarts a stopped client) or `error` (a refusal retrying
    /// may fix: it is sent again after the next reconnect). `Resolve` and `Reject` of a
    /// subscription report `active` and `error`, on every acknowledgement and refusal,
    /// not only the first (its readiness settles once).
    SubscriptionStatus(u64, Option<ClientError>),
    /// Emit the `state` event.
    StateChanged(StateChange),
    /// Emit the `error` event (a problem not tied to one operation).
    Error(ClientError),
    /// Emit the `drain` event: the gateway asked clients to move.
    Drain(Drain),
    /// Call the app's `getToken` and report its outcome with `on_token(fetch, ...)`.
    FetchToken(u64),
    /// Call `tick` at this time (ms); `None` cancels the timer.
    SetTimer(Option<u64>),
}
