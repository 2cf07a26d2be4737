//! A minimal Warren client speaking protocol v1 over a WebSocket, built on the protocol
//! crate: connect (optionally from a chosen local address), `hello` → `welcome`, send
//! frames, read frames (answering the gateway's `ping`), acknowledge deliveries.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use warren_protocol::{
    decode_server, encode, AckDeliveries, ClientFrame, Hello, Ping, ServerFrame, Welcome,
    SUBPROTOCOL,
};

use crate::error::{BenchError, Result};

/// Read buffer of each client's WebSocket; larger frames still arrive whole.
const READ_BUFFER: usize = 16 * 1024;

/// Where a gateway listens: the WebSocket URL and the socket address behind it.
#[derive(Debug, Clone)]
pub struct GatewayAddr {
    /// `ws://host:port/ws`.
    pub url: String,
    /// The resolved address.
    pub addr: SocketAddr,
}

impl GatewayAddr {
    /// Resolves `url`.
    ///
    /// # Errors
    /// `Config` when the URL is not `ws://host:port/...`, `Io` when it does not resolve.
    pub async fn resolve(url: &str) -> Result<Self> {
        let req = url
            .into_client_request()
            .map_err(|e| BenchError::Config(format!("gateway url `{url}`: {e}")))?;
        let host = req
            .uri()
            .host()
            .ok_or_else(|| BenchError::Config(format!("gateway url `{url}` has no host")))?;
        let port = req.uri().port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| BenchError::Config(format!("gateway url `{url}` does not resolve")))?;
        Ok(GatewayAddr {
            url: url.to_string(),
            addr,
        })
    }
}

/// One connected client session.
pub struct GatewayClient {
    ws: WebSocketStream<TcpStream>,
    /// The gateway's `welcome`.
    pub welcome: Welcome,
    /// Highest delivery/reply sequence number received.
    last_seq: u64,
    /// Highest sequence number acknowledged to the gateway.
    acked_seq: u64,
}

impl GatewayClient {
    /// Connects to `gateway` (from `source` when given), says `hello` and waits for
    /// `welcome`.
    ///
    /// # Errors
    /// `Io`/`Ws` when the connection fails, `Timeout` when no welcome comes within
    /// `timeout`, `Unexpected` when the first frame is not a welcome.
    pub async fn connect(
        gateway: &GatewayAddr,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Self> {
        tokio::time::timeout(timeout, Self::connect_inner(gateway, source))
            .await
            .map_err(|_| BenchError::Timeout("welcome"))?
    }

    async fn connect_inner(gateway: &GatewayAddr, source: Option<IpAddr>) -> Result<Self> {
        let socket = if gateway.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(gateway.addr).await?;
        stream.set_nodelay(true)?;
        let mut req = gateway.url.as_str().into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        // tungstenite zero-fills its read buffer up to its size (128 KiB by default):
        // 10,000 idle clients would hold 1.3 GB in this process for nothing.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
        let hello = ClientFrame::<()>::Hello(Hello {
            client: Some(concat!("warren-bench/", env!("CARGO_PKG_VERSION")).into()),
            ..Hello::default()
        });
        ws.send(Message::text(encode(&hello))).await?;
        let welcome = match next_frame(&mut ws).await? {
            ServerFrame::Welcome(w) => w,
            other => return Err(BenchError::Unexpected(encode(&other))),
        };
        Ok(GatewayClient {
            ws,
            welcome,
            last_seq: 0,
            acked_seq: 0,
        })
    }

    /// The session id the gateway gave this client.
    pub fn session(&self) -> &str {
        &self.welcome.session
    }

    /// Encodes and sends one frame, flushing it.
    ///
    /// # Errors
    /// `Ws` when the connection is broken.
    pub async fn send<F: Serialize>(&mut self, frame: &F) -> Result<()> {
        self.ws.send(Message::text(encode(frame))).await?;
        Ok(())
    }

    /// Queues one frame without flushing (pipelining); see [`flush`](Self::flush).
    ///
    /// # Errors
    /// `Ws` when the connection is broken.
    pub async fn feed<F: Serialize>(&mut self, frame: &F) -> Result<()> {
        self.ws.feed(Message::text(encode(frame))).await?;
        Ok(())
    }

    /// Writes every queued frame.
    ///
    /// # Errors
    /// `Ws` when the connection is broken.
    pub async fn flush(&mut self) -> Result<()> {
        self.ws.flush().await?;
        Ok(())
    }

    /// Reads the next server frame. The gateway's `ping` is answered with `pong` and not
    /// returned; the sequence number of `deliver`, `reply` and `error` is noted for
    /// [`ack_if_due`](Self::ack_if_due).
    ///
    /// # Errors
    /// `Closed` when the gateway closes, `Decode` for text that is not a server frame.
    pub async fn recv(&mut self) -> Result<ServerFrame> {
        let frame = next_frame(&mut self.ws).await?;
        match &frame {
            ServerFrame::Deliver(d) => self.note_seq(d.seq),
            ServerFrame::Reply(r) => self.note_seq(r.seq),
            ServerFrame::Error(e) => {
                if let Some(s) = e.seq {
                    self.note_seq(s)
                }
            }
            _ => {}
        }
        Ok(frame)
    }

    fn note_seq(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Queues `ack_deliveries` up to the last sequence number received when at least
    /// `every` are unacknowledged (or any are, with `every` = 1); flushes when `flush`.
    ///
    /// # Errors
    /// `Ws` when the connection is broken.
    pub async fn ack_if_due(&mut self, every: u64, flush: bool) -> Result<()> {
        if self.last_seq >= self.acked_seq + every.max(1) {
            self.acked_seq = self.last_seq;
            let frame = ClientFrame::<()>::AckDeliveries(AckDeliveries { seq: self.last_seq });
            if flush {
                self.send(&frame).await?;
            } else {
                self.feed(&frame).await?;
            }
        }
        Ok(())
    }

    /// Acknowledges everything received and closes the WebSocket politely.
    pub async fn close(mut self) {
        let _ = self.ack_if_due(1, true).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// Reads the next server frame, answering (and skipping) the gateway's `ping`.
async fn next_frame(ws: &mut WebSocketStream<TcpStream>) -> Result<ServerFrame> {
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => return Err(BenchError::Closed),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        };
        match decode_server(text.as_str())? {
            ServerFrame::Ping(Ping { ts }) => {
                ws.send(Message::text(encode(&ClientFrame::<()>::Pong(Ping { ts }))))
                    .await?;
            }
            frame => return Ok(frame),
        }
    }
}

/// The local address the `i`-th client connects from: 127.0.0.1 .. 127.0.0.`spread`,
/// so that many sockets to one gateway port do not run out of ephemeral ports.
pub fn source_ip(i: usize, spread: u8) -> Option<IpAddr> {
    if spread <= 1 {
        return None;
    }
    let last = 1 + (i % spread as usize) as u8;
    Some(IpAddr::from([127, 0, 0, last]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_cycle_over_the_loopback_range() {
        assert_eq!(source_ip(0, 1), None);
        assert_eq!(source_ip(0, 4), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(source_ip(5, 4), Some(IpAddr::from([127, 0, 0, 2])));
    }
}
