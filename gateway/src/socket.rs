//! The WebSocket a connection speaks through.
//!
//! By default that is axum's (tungstenite), whose memory per idle session is measured
//! in BENCHMARKS.md. tungstenite has no permessage-deflate (RFC 7692), so when
//! `permessage_deflate` is on and a client offers it, the upgrade is answered by
//! [yawc](https://docs.rs/yawc) instead, with compression negotiated; every other
//! connection keeps the default socket. The connection loop sees one [`Socket`] either
//! way: text frames in and out, a close frame, and the errors that map to close codes.
//!
//! Compression here never keeps context between messages (`server_no_context_takeover`
//! and `client_no_context_takeover`, imposed on the client as RFC 7692 allows): a
//! connection then borrows deflate state from one [`DeflatePool`] per gateway only
//! while it compresses or inflates a message, so an idle deflate connection costs
//! about what a plain one does instead of ~370 KiB of its own deflate state. The price
//! is a lower ratio, since no message refers to an earlier one. Frames under
//! [`DEFLATE_THRESHOLD`] bytes go out uncompressed. Inflating is bounded by the same
//! hard frame limit as a plain frame, so a small compressed frame cannot unpack into a
//! large one.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use yawc::{DeflatePool, Frame, HttpWebSocket, OpCode, Options, WebSocketError};

/// Frames smaller than this go out uncompressed: a few dozen bytes rarely shrink.
pub(crate) const DEFLATE_THRESHOLD: usize = 64;

/// Idle deflate and inflate states kept for reuse (each): about the number of
/// messages compressed at once, i.e. the runtime's worker threads, not connections.
const POOL_CAPACITY: usize = 64;

/// Buffer sizes of a deflate socket, as [`crate::server`] sets the plain one's read
/// buffer: larger frames still work (the buffers grow for them and shrink after).
const BUFFER_BYTES: usize = 1024;

/// A socket's failure; its text is what [`crate::session_core::read_failure`] reads.
pub(crate) type SocketError = Box<dyn std::error::Error + Send + Sync>;

/// What the client sent.
pub(crate) enum Received {
    Text(Utf8Bytes),
    Binary,
    /// A ping or a pong (both libraries answer pings themselves).
    Control,
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
}

/// One connection's WebSocket.
///
/// The plain socket stays inline: it is the common one, and boxing it would add an
/// allocation to every connection for the rare deflate one's sake.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Socket {
    Plain(WebSocket),
    /// With whether yawc closed it already: on a frame it refuses (too large, not
    /// UTF-8, a protocol error) yawc queues a close frame of its own, with its error's
    /// text as the reason; a second close frame would break RFC 6455.
    Deflate(Box<HttpWebSocket>, bool),
}

/// The yawc options of every deflate socket of a gateway (one shared pool).
pub(crate) fn deflate_options(hard_frame_bytes: usize) -> Options {
    Options::default()
        .with_low_latency_compression()
        .server_no_context_takeover()
        .client_no_context_takeover()
        .with_deflate_pool(DeflatePool::new(POOL_CAPACITY))
        .with_compression_threshold(DEFLATE_THRESHOLD)
        .with_read_buffer_capacity(BUFFER_BYTES)
        .with_write_buffer_capacity(BUFFER_BYTES)
        // yawc refuses a payload of exactly its limit; tungstenite allows it.
        .with_limits(hard_frame_bytes + 1, hard_frame_bytes + 1)
        .with_utf8()
}

impl Socket {
    /// The next frame; `None` once the connection is gone.
    pub(crate) async fn recv(&mut self) -> Option<Result<Received, SocketError>> {
        match self {
            Socket::Plain(ws) => Some(match ws.recv().await? {
                Ok(Message::Text(t)) => Ok(Received::Text(t)),
                Ok(Message::Binary(_)) => Ok(Received::Binary),
                Ok(Message::Ping(_) | Message::Pong(_)) => Ok(Received::Control),
                Ok(Message::Close(c)) => Ok(Received::Close(c.map(|c| c.code))),
                Err(e) => Err(e.into()),
            }),
            Socket::Deflate(ws, closed) => match ws.next_frame().await {
                Ok(frame) => Some(Ok(match frame.opcode() {
                    // yawc checked the UTF-8 (`with_utf8`).
                    OpCode::Text => match Utf8Bytes::try_from(frame.into_payload()) {
                        Ok(t) => Received::Text(t),
                        Err(e) => return Some(Err(e.into())),
                    },
                    OpCode::Binary => Received::Binary,
                    OpCode::Close => Received::Close(frame.close_code().map(u16::from)),
                    _ => Received::Control,
                })),
                Err(WebSocketError::ConnectionClosed) => None,
                Err(e) => {
                    *closed = true;
                    Some(Err(e.into()))
                }
            },
        }
    }

    /// Sends a text frame and writes it out.
    pub(crate) async fn send(&mut self, text: Utf8Bytes) -> Result<(), SocketError> {
        match self {
            Socket::Plain(ws) => ws.send(Message::Text(text)).await?,
            Socket::Deflate(ws, _) => ws.send(text_frame(text)).await?,
        }
        Ok(())
    }

    /// Queues a text frame without writing it out (unless the buffer is full).
    pub(crate) async fn feed(&mut self, text: Utf8Bytes) -> Result<(), SocketError> {
        match self {
            Socket::Plain(ws) => ws.feed(Message::Text(text)).await?,
            Socket::Deflate(ws, _) => ws.feed(text_frame(text)).await?,
        }
        Ok(())
    }

    /// Writes out what was queued, the echo of a client's close frame included.
    pub(crate) async fn flush(&mut self) -> Result<(), SocketError> {
        match self {
            Socket::Plain(ws) => SinkExt::flush(ws).await?,
            Socket::Deflate(ws, _) => {
                // yawc writes what it owes the peer (a close echo, a pong) when it is
                // polled for room to send, not on a flush.
                std::future::poll_fn(|cx| ws.as_mut().poll_ready_unpin(cx)).await?;
                SinkExt::flush(ws.as_mut()).await?;
            }
        }
        Ok(())
    }

    /// Sends a close frame with `code` and `reason`; on a deflate socket yawc closed
    /// already, writes out yawc's close instead (same code, yawc's reason).
    pub(crate) async fn close(
        &mut self,
        code: u16,
        reason: &'static str,
    ) -> Result<(), SocketError> {
        match self {
            Socket::Plain(ws) => {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                ws.send(Message::Close(Some(frame))).await?;
            }
            Socket::Deflate(_, true) => self.flush().await?,
            Socket::Deflate(ws, false) => ws.send(Frame::close(code.into(), reason)).await?,
        }
        Ok(())
    }
}

fn text_frame(text: Utf8Bytes) -> Frame {
    Frame::text(bytes::Bytes::from(text))
}
