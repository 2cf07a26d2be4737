//! One browser `WebSocket` with its event handlers. Dropping it detaches the handlers
//! and closes the socket, so a replaced connection never reports into the core again.

use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

/// What a socket reports to its owner.
pub enum SocketEvent {
    /// The socket opened.
    Open,
    /// A text frame arrived.
    Text(String),
    /// The socket closed with this code.
    Close(u16),
}

/// Every JS callback of the facade has this one type, so wasm-bindgen emits one set
/// of closure shims instead of one per event type (wasm size).
pub type Callback = Closure<dyn FnMut(JsValue)>;

/// A WebSocket and the closures that feed its events to the owner.
pub struct Socket {
    ws: WebSocket,
    _handlers: [Callback; 3],
}

impl Socket {
    /// Opens `url` with `protocol`; `report` receives the socket's events.
    ///
    /// # Errors
    /// The `WebSocket` constructor's exception (an invalid URL).
    pub fn open(
        url: &str,
        protocol: &str,
        report: impl Fn(SocketEvent) + Clone + 'static,
    ) -> Result<Socket, JsValue> {
        let ws = WebSocket::new_with_str(url, protocol)?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let r = report.clone();
        let on_open = Callback::new(move |_| r(SocketEvent::Open));
        let r = report.clone();
        let on_message = Callback::new(move |e: JsValue| {
            // Binary frames are not part of the protocol: ignored.
            if let Some(text) = e.unchecked_into::<MessageEvent>().data().as_string() {
                r(SocketEvent::Text(text));
            }
        });
        let on_close = Callback::new(move |e: JsValue| {
            report(SocketEvent::Close(e.unchecked_into::<CloseEvent>().code()))
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Socket {
            ws,
            _handlers: [on_open, on_message, on_close],
        })
    }

    /// Sends a text frame (dropped when the socket is not open: its close event follows).
    pub fn send(&self, text: &str) {
        let _ = self.ws.send_with_str(text);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close_with_code(1000);
    }
}
