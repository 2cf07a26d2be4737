//! A minimal Warren client speaking protocol v1 over a WebSocket, built on the protocol
//! crate: connect (optionally from a chosen local address), `hello` → `welcome`, send
//! frames, read frames (answering the gateway's `ping`), acknowledge deliveries.
//!
//! A plain client speaks through tokio-tungstenite. A deflate client (the
//! `gateway-deflate` target) offers permessage-deflate (RFC 7692) and speaks through
//! [yawc](https://docs.rs/yawc), as the gateway does for such clients; it fails to
//! connect unless the gateway agreed to compression.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
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

/// Write buffer of a deflate client's WebSocket (yawc's; it grows for larger frames).
const DEFLATE_WRITE_BUFFER: usize = 4 * 1024;

/// Deflate states kept for reuse by every deflate client of this process (each
/// direction): without context takeover a client borrows one only while it compresses
/// or inflates a message, so 10,000 idle clients do not hold 10,000 of them.
const DEFLATE_POOL: usize = 64;

/// The longest HTTP response head a deflate client reads through [`Tap`].
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Where a gateway listens: the WebSocket URL and the socket address behind it.
#[derive(Debug, Clone)]
pub struct GatewayAddr {
    /// `ws://host:port/ws`.
    pub url: String,
    /// The resolved address.
    pub addr: SocketAddr,
    /// The HMAC key each client signs its own token with (`--auth-jwt-secret`).
    pub jwt: Option<Arc<jsonwebtoken::EncodingKey>>,
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
            jwt: None,
        })
    }

    /// Clients of this gateway authenticate with tokens signed with `secret` (HS256).
    #[must_use]
    pub fn with_jwt(mut self, secret: Option<&str>) -> Self {
        self.jwt = secret.map(|s| Arc::new(jsonwebtoken::EncodingKey::from_secret(s.as_bytes())));
        self
    }

    /// A token for a user of its own (`bench-<n>`), valid for an hour, and that user;
    /// `None` without a key.
    fn token(&self) -> Result<Option<(String, String)>> {
        static NEXT_USER: AtomicU64 = AtomicU64::new(0);
        let Some(key) = &self.jwt else {
            return Ok(None);
        };
        let user = format!("bench-{}", NEXT_USER.fetch_add(1, Ordering::Relaxed));
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3_600;
        let claims = serde_json::json!({ "sub": user, "exp": exp });
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key)
            .map_err(|e| BenchError::Config(format!("signing a token: {e}")))?;
        Ok(Some((token, user)))
    }
}

/// How a client's WebSocket speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No extension offered: tokio-tungstenite, as before.
    #[default]
    None,
    /// permessage-deflate offered (no context takeover either way, as the gateway
    /// imposes) and required: yawc.
    Deflate,
}

/// The WebSocket of one client: tungstenite's, or yawc's when it offered deflate. The
/// plain one stays inline, as it was before deflate clients existed.
#[allow(clippy::large_enum_variant)]
enum Ws {
    Plain(WebSocketStream<Tap>),
    Deflate(Box<yawc::WebSocket<Tap>>),
}

impl Ws {
    async fn send(&mut self, text: String) -> Result<()> {
        match self {
            Ws::Plain(ws) => ws.send(Message::text(text)).await?,
            Ws::Deflate(ws) => ws.send(yawc::Frame::text(text)).await?,
        }
        Ok(())
    }

    async fn feed(&mut self, text: String) -> Result<()> {
        match self {
            Ws::Plain(ws) => ws.feed(Message::text(text)).await?,
            Ws::Deflate(ws) => ws.feed(yawc::Frame::text(text)).await?,
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        match self {
            Ws::Plain(ws) => ws.flush().await?,
            Ws::Deflate(ws) => {
                // yawc writes what it owes the peer (a pong, a close echo) when polled
                // for room to send, not on a flush (as in the gateway's socket.rs).
                std::future::poll_fn(|cx| ws.as_mut().poll_ready_unpin(cx)).await?;
                ws.flush().await?;
            }
        }
        Ok(())
    }

    /// The next text message; `Closed` when the gateway closed.
    async fn next_text(&mut self) -> Result<Text> {
        match self {
            Ws::Plain(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(Text::Plain(t)),
                    Some(Ok(Message::Close(_))) | None => return Err(BenchError::Closed),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                }
            },
            Ws::Deflate(ws) => loop {
                let frame = match ws.next_frame().await {
                    Ok(f) => f,
                    Err(yawc::WebSocketError::ConnectionClosed) => return Err(BenchError::Closed),
                    Err(e) => return Err(e.into()),
                };
                match frame.opcode() {
                    yawc::OpCode::Text => return Ok(Text::Deflate(frame)),
                    yawc::OpCode::Close => return Err(BenchError::Closed),
                    _ => continue,
                }
            },
        }
    }

    async fn close(&mut self) -> Result<()> {
        match self {
            Ws::Plain(ws) => ws.close(None).await?,
            Ws::Deflate(ws) => {
                ws.send(yawc::Frame::close(yawc::close::CloseCode::Normal, ""))
                    .await?
            }
        }
        Ok(())
    }
}

/// A text message as either library hands it over (not copied).
enum Text {
    Plain(tokio_tungstenite::tungstenite::Utf8Bytes),
    Deflate(yawc::Frame),
}

impl Text {
    fn as_str(&self) -> Result<&str> {
        match self {
            Text::Plain(t) => Ok(t.as_str()),
            Text::Deflate(f) => std::str::from_utf8(f.payload())
                .map_err(|e| BenchError::Unexpected(format!("a text frame is not UTF-8: {e}"))),
        }
    }
}

/// One connected client session.
pub struct GatewayClient {
    ws: Ws,
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
    /// With [`Compression::Deflate`] the client offers permessage-deflate and fails
    /// with `DeflateRefused` when the gateway's answer does not agree to it (a gateway
    /// without `--permessage-deflate=true`), or does not choose `warren.v1`.
    ///
    /// # Errors
    /// `Io`/`Ws`/`Yawc` when the connection fails, `DeflateRefused` as above, `Timeout`
    /// when no welcome comes within `timeout`, `Unexpected` when the first frame is not
    /// a welcome.
    pub async fn connect(
        gateway: &GatewayAddr,
        source: Option<IpAddr>,
        timeout: Duration,
        compression: Compression,
    ) -> Result<Self> {
        tokio::time::timeout(timeout, Self::connect_inner(gateway, source, compression))
            .await
            .map_err(|_| BenchError::Timeout("welcome"))?
    }

    async fn connect_inner(
        gateway: &GatewayAddr,
        source: Option<IpAddr>,
        compression: Compression,
    ) -> Result<Self> {
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
        let mut ws = match compression {
            Compression::None => {
                let mut req = gateway.url.as_str().into_client_request()?;
                req.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static(SUBPROTOCOL),
                );
                // tungstenite zero-fills its read buffer up to its size (128 KiB by
                // default): 10,000 idle clients would hold 1.3 GB in this process for
                // nothing.
                let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
                let (ws, _) = tokio_tungstenite::client_async_with_config(
                    req,
                    Tap::counting(stream),
                    Some(config),
                )
                .await?;
                Ws::Plain(ws)
            }
            Compression::Deflate => {
                Ws::Deflate(Box::new(deflate_handshake(gateway, stream).await?))
            }
        };
        let signed = gateway.token()?;
        let hello = ClientFrame::<()>::Hello(Hello {
            client: Some(concat!("warren-bench/", env!("CARGO_PKG_VERSION")).into()),
            token: signed.as_ref().map(|(token, _)| token.clone()),
            ..Hello::default()
        });
        ws.send(encode(&hello)).await?;
        let welcome = match next_frame(&mut ws).await? {
            ServerFrame::Welcome(w) => w,
            other => return Err(BenchError::Unexpected(encode(&other))),
        };
        // A gateway that ignored the token (not in jwt mode) would measure something
        // else than asked.
        if let Some((_, user)) = signed {
            if welcome.user != user {
                return Err(BenchError::Unexpected(format!(
                    "welcome for user `{}` to a token for `{user}`: is the gateway in jwt mode?",
                    welcome.user
                )));
            }
        }
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
        self.ws.send(encode(frame)).await
    }

    /// Queues one frame without flushing (pipelining); see [`flush`](Self::flush).
    ///
    /// # Errors
    /// `Ws` when the connection is broken.
    pub async fn feed<F: Serialize>(&mut self, frame: &F) -> Result<()> {
        self.ws.feed(encode(frame)).await
    }

    /// Writes every queued frame.
    ///
    /// # Errors
    /// `Ws` when the connection is broken.
    pub async fn flush(&mut self) -> Result<()> {
        self.ws.flush().await
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
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close()).await;
    }
}

/// Reads the next server frame, answering (and skipping) the gateway's `ping`.
async fn next_frame(ws: &mut Ws) -> Result<ServerFrame> {
    loop {
        let text = ws.next_text().await?;
        match decode_server(text.as_str()?)? {
            ServerFrame::Ping(Ping { ts, .. }) => {
                ws.send(encode(&ClientFrame::<()>::Pong(Ping {
                    ts,
                    ..Ping::default()
                })))
                .await?;
            }
            frame => return Ok(frame),
        }
    }
}

/// The deflate state pool of every deflate client of this process.
fn deflate_pool() -> yawc::DeflatePool {
    static POOL: OnceLock<yawc::DeflatePool> = OnceLock::new();
    POOL.get_or_init(|| yawc::DeflatePool::new(DEFLATE_POOL))
        .clone()
}

/// The yawc options of a deflate client: compression offered with no context takeover
/// either way (what the gateway imposes; a browser accepts it), every message
/// compressed (as browsers do), small buffers like the plain client's.
fn deflate_options() -> yawc::Options {
    yawc::Options::default()
        .with_low_latency_compression()
        .client_no_context_takeover()
        .server_no_context_takeover()
        .with_deflate_pool(deflate_pool())
        .with_read_buffer_capacity(READ_BUFFER)
        .with_write_buffer_capacity(DEFLATE_WRITE_BUFFER)
}

/// The WebSocket handshake of a deflate client, by yawc over `stream`, asking for
/// `warren.v1`. yawc hands back neither the response nor what was negotiated, so the
/// response head is read off the socket as it passes ([`Tap`]) and checked here.
async fn deflate_handshake(
    gateway: &GatewayAddr,
    stream: TcpStream,
) -> Result<yawc::WebSocket<Tap>> {
    let url = gateway
        .url
        .parse()
        .map_err(|e| BenchError::Config(format!("gateway url `{}`: {e}", gateway.url)))?;
    let (tap, head) = Tap::new(stream);
    let request = yawc::HttpRequest::builder().header("Sec-WebSocket-Protocol", SUBPROTOCOL);
    let ws = yawc::WebSocket::handshake_with_request(url, tap, deflate_options(), request).await?;
    let head = head.await.map_err(|_| {
        BenchError::DeflateRefused("no complete HTTP response head was seen".into())
    })?;
    check_deflate_response(&head).map_err(BenchError::DeflateRefused)?;
    Ok(ws)
}

/// Checks a handshake response head (status line and headers): it must agree to
/// permessage-deflate and choose the `warren.v1` subprotocol. Returns what is missing.
fn check_deflate_response(head: &[u8]) -> std::result::Result<(), String> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(format!("the upgrade was answered `{status}`"));
    }
    let headers: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect();
    let values = |wanted: &'static str| {
        headers
            .iter()
            .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted))
            .flat_map(|(_, value)| value.split(','))
            .map(str::trim)
    };
    let deflate = values("sec-websocket-extensions").any(|ext| {
        ext.split(';')
            .next()
            .is_some_and(|name| name.trim().eq_ignore_ascii_case("permessage-deflate"))
    });
    if !deflate {
        return Err("its answer has no `Sec-WebSocket-Extensions: permessage-deflate`".into());
    }
    if !values("sec-websocket-protocol").any(|p| p == SUBPROTOCOL) {
        return Err(format!(
            "its answer does not choose subprotocol `{SUBPROTOCOL}`"
        ));
    }
    Ok(())
}

/// Bytes every gateway client of this process has read off its socket: what the
/// gateway sent, on the wire (compressed, with deflate), WebSocket framing and
/// handshake included.
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// See [`RECEIVED`].
pub fn bytes_received() -> u64 {
    RECEIVED.load(Ordering::Relaxed)
}

/// A TCP stream that counts what it reads ([`RECEIVED`]) and, for a deflate
/// handshake, hands a copy of the first bytes it reads, up to the end of the HTTP
/// response head, to whoever awaits it.
pub(crate) struct Tap {
    inner: TcpStream,
    head: Option<(Vec<u8>, oneshot::Sender<Vec<u8>>)>,
}

impl Tap {
    /// A stream that only counts.
    fn counting(inner: TcpStream) -> Self {
        Tap { inner, head: None }
    }

    fn new(inner: TcpStream) -> (Self, oneshot::Receiver<Vec<u8>>) {
        let (tx, rx) = oneshot::channel();
        let tap = Tap {
            inner,
            head: Some((Vec::with_capacity(512), tx)),
        };
        (tap, rx)
    }
}

/// Where the HTTP head in `bytes` ends (after its blank line), if it has.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        RECEIVED.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        if let Some((seen, _)) = this.head.as_mut() {
            seen.extend_from_slice(&buf.filled()[before..]);
            if let Some(end) = head_end(seen) {
                if let Some((mut seen, tx)) = this.head.take() {
                    seen.truncate(end);
                    let _ = tx.send(seen);
                }
            } else if seen.len() > MAX_RESPONSE_HEAD || buf.filled().len() == before {
                // Too long or the end of the stream: the receiver sees no head.
                this.head = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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

    const AGREED: &str = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
        upgrade: websocket\r\nsec-websocket-accept: x\r\n\
        sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\
        sec-websocket-protocol: warren.v1\r\n\r\n";

    #[tokio::test]
    async fn each_client_signs_a_token_for_a_user_of_its_own() {
        let secret = "a bench secret of at least thirty-two bytes";
        let plain = GatewayAddr::resolve("ws://127.0.0.1:1/ws").await.unwrap();
        assert!(plain.token().unwrap().is_none(), "no key, no token");
        let gw = plain.with_jwt(Some(secret));
        let (t1, u1) = gw.token().unwrap().unwrap();
        let (_, u2) = gw.token().unwrap().unwrap();
        assert_ne!(u1, u2, "a user per client");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(
            &t1,
            &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            &v,
        )
        .expect("verifies with the secret, HS256, exp in the future");
        assert_eq!(claims.claims["sub"], u1.as_str());
    }

    #[test]
    fn a_deflate_client_insists_on_deflate_and_its_subprotocol() {
        assert_eq!(check_deflate_response(AGREED.as_bytes()), Ok(()));
        let plain = AGREED.replace(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n",
            "",
        );
        let err = check_deflate_response(plain.as_bytes()).unwrap_err();
        assert!(err.contains("permessage-deflate"), "{err}");
        let other = AGREED.replace("permessage-deflate;", "x-webkit-deflate-frame;");
        assert!(check_deflate_response(other.as_bytes()).is_err());
        let no_protocol = AGREED.replace("sec-websocket-protocol: warren.v1\r\n", "");
        let err = check_deflate_response(no_protocol.as_bytes()).unwrap_err();
        assert!(err.contains("warren.v1"), "{err}");
        let refused = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(check_deflate_response(refused.as_bytes())
            .unwrap_err()
            .contains("400"));
        // Header names in any case; extensions listed in one header or several.
        let listed = AGREED
            .replace(
                "sec-websocket-extensions:",
                "Sec-WebSocket-Extensions: foo, ",
            )
            .replace("sec-websocket-protocol", "Sec-WebSocket-Protocol");
        assert_eq!(check_deflate_response(listed.as_bytes()), Ok(()));
    }

    #[test]
    fn the_head_ends_after_its_blank_line() {
        assert_eq!(
            head_end(b"HTTP/1.1 101 x\r\na: b\r\n\r\n\x81\x01"),
            Some(24)
        );
        assert_eq!(head_end(b"HTTP/1.1 101 x\r\na: b\r\n"), None);
    }

    #[test]
    fn sources_cycle_over_the_loopback_range() {
        assert_eq!(source_ip(0, 1), None);
        assert_eq!(source_ip(0, 4), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(source_ip(5, 4), Some(IpAddr::from([127, 0, 0, 2])));
    }
}
