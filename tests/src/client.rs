//! A WebSocket test client standing in for the browser: tokio-tungstenite speaking
//! protocol v1 through `warren_protocol::{encode, decode_server}`. Server `ping`s are
//! answered automatically; frames that arrive while a test waits for another one are
//! kept, in order, for later `recv` calls.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use warren_protocol::{
    decode_server, encode, AckDeliveries, ClientFrame, Deliver, Error, ErrorCode, Hello, Ping,
    Publish, Raw, Reply, Request, ServerFrame, Subscribe, Welcome, SUBPROTOCOL,
};

/// How long `recv` waits by default.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Raw JSON from a `serde_json::Value` (test convenience).
pub fn raw(v: serde_json::Value) -> Raw {
    RawValue::from_string(v.to_string()).expect("valid JSON")
}

/// A `subscribe` frame for `channel` with id `id` and nothing else set (the channel's
/// broadcast); set more fields with struct update syntax.
pub fn sub(id: &str, channel: &str) -> Subscribe {
    Subscribe {
        id: id.into(),
        channel: channel.into(),
        ..Default::default()
    }
}

/// What [`skips_told`] found in a session's frames.
#[derive(Debug)]
pub struct Told {
    /// Deliveries.
    pub delivered: usize,
    /// The counts of the `session_expired` notices, in order.
    pub notices: Vec<u64>,
    /// The message id of the last delivery.
    pub last: String,
}

/// Checks a session's `frames` (of its outbound stream), received after the delivery
/// at position `from`: deliveries come in order, once, and every skip of two positions
/// or more is told, with its size, by a `session_expired` just before the delivery
/// after it (a skip of one is a stream segment's first position, which readers never
/// get). Panics saying what was not so; any other error frame fails too.
pub fn skips_told(from: u64, frames: &[ServerFrame]) -> Told {
    let count_of = |message: &str| -> u64 {
        message
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the count comes first: {message}"))
    };
    let mut at = from;
    let mut told: Option<u64> = None;
    let mut seen = Told {
        delivered: 0,
        notices: Vec::new(),
        last: String::new(),
    };
    for f in frames {
        match f {
            ServerFrame::Error(e) if e.code == ErrorCode::SessionExpired => {
                assert_eq!(e.stream, None, "{e:?}");
                assert!(told.is_none(), "two notices in a row: {e:?}");
                told = Some(count_of(&e.message));
                seen.notices.extend(told);
            }
            ServerFrame::Deliver(d) => {
                let p = d.position.expect("a position");
                assert!(p > at, "in order, once: {p} after {at}");
                let skipped = p - at - 1;
                match told.take() {
                    Some(n) => assert_eq!(
                        n, skipped,
                        "the count is the positions between {at} and {p}"
                    ),
                    None => assert!(
                        skipped <= 1,
                        "{skipped} positions skipped between {at} and {p} ({}), not told",
                        d.message_id
                    ),
                }
                at = p;
                seen.delivered += 1;
                seen.last = d.message_id.clone();
            }
            ServerFrame::Error(e) => panic!("{e:?}"),
            _ => {}
        }
    }
    seen
}

/// `count` headers `h00`, `h01`, … of `len` bytes each, as a frame's `headers`: with
/// enough of them, more than an AMQP frame holds.
pub fn big_headers(count: usize, len: usize) -> serde_json::Map<String, serde_json::Value> {
    (0..count)
        .map(|i| {
            (
                format!("h{i:02}"),
                serde_json::Value::String("h".repeat(len)),
            )
        })
        .collect()
}

/// A connected test client.
pub struct TestClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    kept: VecDeque<ServerFrame>,
    /// The `welcome` of this connection, once received.
    pub welcome: Option<Welcome>,
    /// How the connection was closed by the gateway, once it was.
    pub close_code: Option<u16>,
    /// Stream positions of the frames received, by `seq`.
    positions: std::collections::BTreeMap<u64, u64>,
    /// The stream position up to which the client acknowledged what it received.
    acked_position: Option<u64>,
    /// The subscriptions this client made, to name again when it resumes.
    subscriptions: Vec<Subscribe>,
}

impl TestClient {
    /// Opens the WebSocket (subprotocol `warren.v1`) without sending anything.
    ///
    /// # Panics
    /// When the connection fails.
    pub async fn connect_raw(url: &str) -> TestClient {
        Self::try_connect_with_headers(url, &[])
            .await
            .unwrap_or_else(|status| panic!("websocket connect refused with HTTP {status}"))
    }

    /// Opens the WebSocket with extra upgrade headers (`Origin`, `Authorization`,
    /// `Cookie`); the HTTP status when the gateway refuses the upgrade.
    ///
    /// # Panics
    /// When the connection fails other than by an HTTP refusal.
    pub async fn try_connect_with_headers(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<TestClient, u16> {
        let mut req = url.into_client_request().expect("url");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        for (name, value) in headers {
            req.headers_mut()
                .insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .expect("connect in time");
        let (ws, resp) = match connected {
            Ok(x) => x,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                return Err(resp.status().as_u16())
            }
            Err(e) => panic!("websocket connect: {e}"),
        };
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(SUBPROTOCOL),
            "the gateway selects the warren.v1 subprotocol"
        );
        Ok(TestClient {
            ws,
            kept: VecDeque::new(),
            welcome: None,
            close_code: None,
            positions: Default::default(),
            acked_position: None,
            subscriptions: Vec::new(),
        })
    }

    /// Connects and opens a new session with `hello`.
    pub async fn connect(url: &str) -> TestClient {
        Self::connect_with(url, Hello::default()).await
    }

    /// Connects and sends `hello`; waits for the `welcome`.
    ///
    /// # Panics
    /// When the first frame is not `welcome`.
    pub async fn connect_with(url: &str, hello: Hello) -> TestClient {
        let mut c = Self::connect_raw(url).await;
        // A resuming client keeps what it knew: its position and subscriptions.
        c.acked_position = hello.position;
        c.subscriptions = hello.subscriptions.clone();
        c.send(&ClientFrame::Hello(hello)).await;
        match c.recv().await {
            ServerFrame::Welcome(w) => c.welcome = Some(w),
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    /// The `welcome` the gateway answered `hello` with.
    pub fn welcome(&self) -> &Welcome {
        self.welcome.as_ref().expect("welcome received")
    }

    /// The session id from `welcome`.
    pub fn session(&self) -> &str {
        &self.welcome.as_ref().expect("welcome received").session
    }

    /// Sends a client frame.
    pub async fn send(&mut self, frame: &ClientFrame) {
        self.send_text(&encode(frame)).await;
    }

    /// Sends raw text (for malformed-input tests).
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send");
    }

    /// Sends a text frame whose payload is not valid UTF-8 (a protocol violation).
    pub async fn send_invalid_utf8_text(&mut self, bytes: &[u8]) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        let frame = Frame::message(bytes.to_vec(), OpCode::Data(Data::Text), true);
        self.ws.send(Message::Frame(frame)).await.expect("send");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .expect("send");
    }

    /// Sends `publish`.
    pub async fn publish(&mut self, id: &str, channel: &str, message: serde_json::Value) {
        self.send(&ClientFrame::Publish(Publish {
            id: id.into(),
            channel: channel.into(),
            subject: None,
            distribution: None,
            headers: Default::default(),
            message: raw(message),
        }))
        .await;
    }

    /// Sends `request` with a timeout.
    pub async fn request(
        &mut self,
        id: &str,
        channel: &str,
        timeout_ms: Option<u64>,
        message: serde_json::Value,
    ) {
        self.send(&ClientFrame::Request(Request {
            id: id.into(),
            channel: channel.into(),
            subject: None,
            headers: Default::default(),
            timeout_ms,
            message: raw(message),
        }))
        .await;
    }

    /// Publishes `id` on `channel` with `headers` too large for one AMQP frame
    /// ([`big_headers`]) and expects its `error too_large`.
    ///
    /// # Panics
    /// When another error, or none, comes.
    pub async fn expect_publish_too_large(
        &mut self,
        id: &str,
        channel: &str,
        headers: serde_json::Map<String, serde_json::Value>,
    ) {
        let frame = serde_json::json!({"type": "publish", "id": id, "channel": channel,
                                       "headers": headers, "message": 1});
        self.send_text(&frame.to_string()).await;
        let e = self.expect_error(Some(id)).await;
        assert_eq!(e.code, ErrorCode::TooLarge, "{e:?}");
    }

    /// Sends `subscribe` and waits for its `ack`.
    pub async fn subscribe(&mut self, s: Subscribe) {
        let id = s.id.clone();
        self.subscriptions.push(s.clone());
        self.send(&ClientFrame::Subscribe(s)).await;
        self.expect_ack(&id).await;
    }

    /// Sends `ack_deliveries` up to `seq`.
    pub async fn ack_deliveries(&mut self, seq: u64) {
        let acked = self.positions.range(..=seq).map(|(_, p)| *p).max();
        if acked > self.acked_position {
            self.acked_position = acked;
        }
        self.send(&ClientFrame::AckDeliveries(AckDeliveries { seq }))
            .await;
    }

    /// The `hello` that resumes this client's session as a client that processed
    /// exactly what it acknowledged would send it: the session, the position of the
    /// last acknowledged delivery (or where the session started) and the
    /// subscriptions.
    pub fn resume_hello(&self) -> Hello {
        let started = self.welcome.as_ref().and_then(|w| w.position);
        Hello {
            session: Some(self.session().to_string()),
            position: self.acked_position.or(started),
            subscriptions: self.subscriptions.clone(),
            ..Default::default()
        }
    }

    /// Sends `ping`.
    pub async fn ping(&mut self, ts: u64) {
        self.send(&ClientFrame::Ping(Ping {
            ts: Some(ts),
            ..Ping::default()
        }))
        .await;
    }

    /// Reads frames until none comes for `quiet` (or the connection closes),
    /// acknowledging each delivery as it comes, and appends them to `frames`.
    pub async fn read_on_acking(&mut self, quiet: Duration, frames: &mut Vec<ServerFrame>) {
        while let Some(f) = self.recv_within(quiet).await {
            if let ServerFrame::Deliver(d) = &f {
                self.ack_deliveries(d.seq).await;
            }
            frames.push(f);
        }
    }

    /// The next frame within `within`; `None` on timeout or close. Answers `ping`.
    pub async fn recv_within(&mut self, within: Duration) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + within;
        match self.next_by(deadline).await {
            Next::Frame(f) => Some(f),
            Next::TimedOut | Next::Closed => None,
        }
    }

    /// The next frame by `deadline`, telling a timeout from a closed connection.
    /// Answers `ping`.
    async fn next_by(&mut self, deadline: tokio::time::Instant) -> Next {
        if let Some(f) = self.kept.pop_front() {
            return Next::Frame(f);
        }
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Next::TimedOut,
                Ok(None) | Ok(Some(Err(_))) => return Next::Closed,
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let frame = decode_server(t.as_str())
                        .unwrap_or_else(|e| panic!("gateway sent an undecodable frame {t}: {e}"));
                    if let ServerFrame::Ping(p) = frame {
                        self.send(&ClientFrame::Pong(p)).await;
                        continue;
                    }
                    let seq_position = match &frame {
                        ServerFrame::Deliver(d) => d.position.map(|p| (d.seq, p)),
                        ServerFrame::Reply(r) => r.position.map(|p| (r.seq, p)),
                        ServerFrame::Error(e) => e.seq.zip(e.position),
                        _ => None,
                    };
                    if let Some((seq, p)) = seq_position {
                        self.positions.insert(seq, p);
                    }
                    return Next::Frame(frame);
                }
                Message::Close(c) => {
                    self.close_code = Some(c.map(|c| u16::from(c.code)).unwrap_or(1005));
                    return Next::Closed;
                }
                _ => continue,
            }
        }
    }

    /// The next text frame as it came, without answering pings; `None` on timeout or
    /// close (the close code is recorded).
    pub async fn recv_raw(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_string()),
                Ok(Some(Ok(Message::Close(c)))) => {
                    self.close_code = Some(c.map(|c| u16::from(c.code)).unwrap_or(1005));
                    return None;
                }
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// The next gateway `ping` by `deadline`, as it came (JSON), answered with its
    /// `pong`; other frames are skipped. `None` on timeout or close (the close code is
    /// recorded).
    pub async fn next_ping(&mut self, deadline: tokio::time::Instant) -> Option<serde_json::Value> {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = self.recv_raw(left).await?;
            let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON frame");
            if v["type"] == "ping" {
                self.send_text(&serde_json::json!({"type": "pong", "ts": v["ts"]}).to_string())
                    .await;
                return Some(v);
            }
        }
    }

    /// The next frame.
    ///
    /// # Panics
    /// When nothing arrives within [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> ServerFrame {
        self.recv_within(RECV_TIMEOUT)
            .await
            .expect("a frame from the gateway in time")
    }

    /// Waits for the first frame `pick` accepts, keeping the others for later.
    ///
    /// # Panics
    /// When no such frame arrives within [`RECV_TIMEOUT`].
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> T {
        if let Some(pos) = self.kept.iter().position(|f| pick(f).is_some()) {
            let f = self.kept.remove(pos).expect("position is valid");
            return pick(&f).expect("picked before");
        }
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.recv_within(left).await else {
                panic!(
                    "expected {what}; got only {skipped:?} (close: {:?})",
                    self.close_code
                );
            };
            if let Some(t) = pick(&f) {
                for s in skipped.into_iter().rev() {
                    self.kept.push_front(s);
                }
                return t;
            }
            skipped.push(f);
        }
    }

    /// Waits for `ack {id}`.
    pub async fn expect_ack(&mut self, id: &str) {
        let want = id.to_string();
        let got = self
            .expect(&format!("ack {id} or error {id}"), |f| match f {
                ServerFrame::Ack(a) if a.id == want => Some(Ok(())),
                ServerFrame::Error(e) if e.id.as_deref() == Some(&want) => Some(Err(e.clone())),
                _ => None,
            })
            .await;
        if let Err(e) = got {
            panic!("expected ack {id}, got error {e:?}");
        }
    }

    /// Waits for an `error` answering `id` (`None`: an error without id).
    pub async fn expect_error(&mut self, id: Option<&str>) -> Error {
        let want = id.map(str::to_string);
        self.expect(&format!("error {id:?}"), |f| match f {
            ServerFrame::Error(e) if e.id == want => Some(e.clone()),
            ServerFrame::Ack(a) if Some(&a.id) == want.as_ref() => {
                panic!("expected error {want:?}, got ack")
            }
            _ => None,
        })
        .await
    }

    /// Waits for an `error` with this code answering `id`.
    pub async fn expect_error_code(&mut self, id: Option<&str>, code: ErrorCode) -> Error {
        let e = self.expect_error(id).await;
        assert_eq!(e.code, code, "error for {id:?}: {e:?}");
        e
    }

    /// Waits for the next `deliver`.
    pub async fn expect_deliver(&mut self) -> Deliver {
        self.expect("deliver", |f| match f {
            ServerFrame::Deliver(d) => Some(d.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the next `n` `deliver` frames.
    pub async fn expect_delivers(&mut self, n: usize) -> Vec<Deliver> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.expect_deliver().await);
        }
        out
    }

    /// Waits for the `reply` to request `id`.
    pub async fn expect_reply(&mut self, id: &str) -> Reply {
        let want = id.to_string();
        self.expect(&format!("reply {id}"), |f| match f {
            ServerFrame::Reply(r) if r.id == want => Some(r.clone()),
            ServerFrame::Error(e) if e.id.as_deref() == Some(&want) => {
                panic!("expected reply {want}, got error {e:?}")
            }
            _ => None,
        })
        .await
    }

    /// Asserts that no `deliver` arrives within `within` and that the connection stays
    /// open meanwhile (other frames are kept).
    ///
    /// # Panics
    /// On a `deliver` (kept from before, or arriving), or when the connection closes.
    pub async fn expect_no_deliver(&mut self, within: Duration) {
        self.expect_none_of("no delivery", within, |f| {
            matches!(f, ServerFrame::Deliver(_))
        })
        .await;
    }

    /// Asserts that nothing meant for this connection's requests or subscriptions
    /// arrives within `within` — no `deliver`, `reply` or `error` — and that the
    /// connection stays open meanwhile (other frames, such as `pong`, are kept). For "a
    /// reply reaches only the connection that asked": a stray reply or error fails it.
    ///
    /// # Panics
    /// On such a frame (kept from before, or arriving), or when the connection closes.
    pub async fn expect_quiet(&mut self, within: Duration) {
        self.expect_none_of("no delivery, reply or error", within, |f| {
            matches!(
                f,
                ServerFrame::Deliver(_) | ServerFrame::Reply(_) | ServerFrame::Error(_)
            )
        })
        .await;
    }

    /// Asserts that no frame `unwanted` accepts is kept or arrives within `within`,
    /// and that the connection is open throughout; keeps the other frames.
    async fn expect_none_of(
        &mut self,
        what: &str,
        within: Duration,
        unwanted: impl Fn(&ServerFrame) -> bool,
    ) {
        if let Some(f) = self.kept.iter().find(|f| unwanted(f)) {
            panic!("expected {what}, got {f:?}");
        }
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match self.next_by(deadline).await {
                Next::TimedOut => break,
                Next::Closed => panic!(
                    "expected {what} on an open connection, but it closed (close code {:?})",
                    self.close_code
                ),
                Next::Frame(f) if unwanted(&f) => panic!("expected {what}, got {f:?}"),
                Next::Frame(f) => seen.push(f),
            }
        }
        // `next_by` took the kept frames first: `seen` holds them, then the new ones.
        self.kept.extend(seen);
    }

    /// Waits until the gateway closes the connection; returns the close code.
    pub async fn expect_close(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        while self.close_code.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if self.recv_within(left).await.is_none() && self.close_code.is_none() {
                break;
            }
        }
        self.close_code
    }

    /// Closes the connection from the client side (normal closure).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Closes with 1000 and returns the close code the gateway echoes (RFC 6455), if
    /// it answers with a close frame within 2 s.
    pub async fn close_expecting_echo(self) -> Option<u16> {
        self.close_with(1000).await
    }

    /// Closes with `code` and returns the close code the gateway echoes, if it
    /// answers with a close frame within 2 s.
    pub async fn close_with(mut self, code: u16) -> Option<u16> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as Code;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: Code::from(code),
            reason: "bye".into(),
        };
        self.ws.send(Message::Close(Some(frame))).await.ok()?;
        tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(m) = self.ws.next().await {
                if let Ok(Message::Close(c)) = m {
                    return c.map(|c| u16::from(c.code));
                }
                m.ok()?;
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Drops the TCP connection without a close handshake (a crashed client).
    pub fn abort(self) {
        drop(self);
    }
}

/// What [`TestClient::next_by`] got.
enum Next {
    Frame(ServerFrame),
    TimedOut,
    Closed,
}
