//! A minimal STOMP 1.2 client over WebSocket, for the Web-STOMP baseline (RabbitMQ's
//! `rabbitmq_web_stomp` plugin): frames ([`Frame`], [`encode`]), a sans-IO
//! [`FrameReader`] that cuts frames out of whatever the socket delivered, and
//! [`StompClient`], the one loop around them that connects, sends and reads.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{BenchError, Result};

/// The WebSocket subprotocol of STOMP 1.2.
const SUBPROTOCOL: &str = "v12.stomp";

/// One STOMP frame: `COMMAND\nname:value\n...\n\nbody\0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `CONNECTED`, `MESSAGE`, `RECEIPT`, `ERROR`, ...
    pub command: String,
    /// Headers in order, unescaped; a repeated header's first value counts.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Frame {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Encodes a frame; header names and values are escaped as STOMP 1.2 asks (except in
/// `CONNECT`, where they are not), and a body gets a `content-length`.
pub fn encode(command: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let escape = command != "CONNECT";
    let mut out = Vec::with_capacity(64 + body.len() + headers.len() * 32);
    out.extend_from_slice(command.as_bytes());
    out.push(b'\n');
    for (name, value) in headers {
        push_escaped(&mut out, name, escape);
        out.push(b':');
        push_escaped(&mut out, value, escape);
        out.push(b'\n');
    }
    if !body.is_empty() {
        out.extend_from_slice(format!("content-length:{}\n", body.len()).as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(0);
    out
}

fn push_escaped(out: &mut Vec<u8>, text: &str, escape: bool) {
    if !escape {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            _ => out.push(b),
        }
    }
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Cuts frames out of a byte stream: a WebSocket message may hold several frames, or
/// part of one; heart-beat end-of-lines between frames are skipped. No IO.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Appends what the socket delivered.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if the bytes so far hold one.
    ///
    /// # Errors
    /// `Stomp` when the bytes are not a STOMP frame.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        let start = self
            .buf
            .iter()
            .position(|&b| b != b'\n' && b != b'\r')
            .unwrap_or(self.buf.len());
        self.buf.drain(..start);
        let Some(head_end) = find(&self.buf, b"\n\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| BenchError::Stomp("a frame head that is not UTF-8".into()))?;
        let mut lines = head.lines();
        let command = lines
            .next()
            .unwrap_or("")
            .trim_end_matches('\r')
            .to_string();
        let mut headers = Vec::new();
        for line in lines {
            let line = line.trim_end_matches('\r');
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| BenchError::Stomp(format!("header line `{line}`")))?;
            headers.push((unescape(name), unescape(value)));
        }
        let body_start = head_end + 2;
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<usize>())
            .transpose()
            .map_err(|_| BenchError::Stomp("a content-length that is not a number".into()))?;
        let body_end = match length {
            Some(n) if self.buf.len() > body_start + n => body_start + n,
            Some(_) => return Ok(None),
            None => match self.buf[body_start..].iter().position(|&b| b == 0) {
                Some(p) => body_start + p,
                None => return Ok(None),
            },
        };
        if self.buf[body_end] != 0 {
            return Err(BenchError::Stomp("a frame body not ended by NUL".into()));
        }
        let body = self.buf[body_start..body_end].to_vec();
        self.buf.drain(..=body_end);
        Ok(Some(Frame {
            command,
            headers,
            body,
        }))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One STOMP session on a Web-STOMP endpoint, logged in as guest on vhost `/`, without
/// heart-beats.
pub struct StompClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    reader: FrameReader,
}

impl StompClient {
    /// Opens the WebSocket (subprotocol `v12.stomp`), sends `CONNECT` and waits for
    /// `CONNECTED`, all within `timeout`.
    ///
    /// # Errors
    /// `Config` for a bad URL, `Timeout` when `CONNECTED` does not come in time, `Stomp`
    /// when the endpoint refuses (is `rabbitmq_web_stomp` enabled?).
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self> {
        tokio::time::timeout(timeout, Self::connect_inner(url))
            .await
            .map_err(|_| BenchError::Timeout("web-stomp CONNECTED"))?
    }

    async fn connect_inner(url: &str) -> Result<Self> {
        let mut request = url
            .into_client_request()
            .map_err(|e| BenchError::Config(format!("--web-stomp-url: {e}")))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| {
                BenchError::Stomp(format!("connect (is rabbitmq_web_stomp enabled?): {e}"))
            })?;
        let mut client = StompClient {
            ws,
            reader: FrameReader::default(),
        };
        client
            .send(
                "CONNECT",
                &[
                    ("accept-version", "1.2"),
                    ("host", "/"),
                    ("login", "guest"),
                    ("passcode", "guest"),
                    ("heart-beat", "0,0"),
                ],
                b"",
            )
            .await?;
        let frame = client.recv().await?;
        if frame.command != "CONNECTED" {
            return Err(BenchError::Stomp(format!(
                "expected CONNECTED, got {}",
                frame.command
            )));
        }
        Ok(client)
    }

    /// Sends one frame.
    ///
    /// # Errors
    /// `Stomp` when the socket is broken.
    pub async fn send(
        &mut self,
        command: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        // Text messages: the frames are UTF-8 (JSON bodies), as browser clients send them.
        let text = String::from_utf8(encode(command, headers, body))
            .map_err(|_| BenchError::Stomp("a frame that is not UTF-8".into()))?;
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| BenchError::Stomp(e.to_string()))
    }

    /// Reads the next frame; unbounded, so callers wrap it in a timeout (it is
    /// cancel-safe: a frame is taken out of the reader only when returned).
    ///
    /// # Errors
    /// `Stomp` for an `ERROR` frame (with its message), a closed socket or bytes that
    /// are not STOMP.
    pub async fn recv(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                if frame.command == "ERROR" {
                    return Err(BenchError::Stomp(format!(
                        "ERROR {}: {}",
                        frame.header("message").unwrap_or(""),
                        String::from_utf8_lossy(&frame.body).trim()
                    )));
                }
                return Ok(frame);
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => self.reader.push(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.reader.push(&b),
                Some(Ok(Message::Close(_))) | None => {
                    return Err(BenchError::Stomp("the socket closed".into()))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(BenchError::Stomp(e.to_string())),
            }
        }
    }

    /// Says `DISCONNECT` and closes the socket, waiting at most two seconds.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.send("DISCONNECT", &[], b"").await;
            let _ = self.ws.close(None).await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_encodes_with_escaped_headers_and_a_content_length() {
        let bytes = encode("SEND", &[("destination", "/exchange/x/a:b")], b"{}");
        assert_eq!(
            bytes,
            b"SEND\ndestination:/exchange/x/a\\cb\ncontent-length:2\n\n{}\0".to_vec()
        );
        let connect = encode("CONNECT", &[("host", "a:b")], b"");
        assert_eq!(connect, b"CONNECT\nhost:a:b\n\n\0".to_vec());
    }

    #[test]
    fn the_reader_reads_back_what_was_encoded() {
        let mut r = FrameReader::default();
        r.push(&encode(
            "MESSAGE",
            &[("correlation-id", "7"), ("k", "a\nb")],
            b"{\"t\":1}",
        ));
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(f.command, "MESSAGE");
        assert_eq!(f.header("correlation-id"), Some("7"));
        assert_eq!(f.header("k"), Some("a\nb"));
        assert_eq!(f.body, b"{\"t\":1}");
        assert_eq!(r.next_frame().unwrap(), None);
    }

    #[test]
    fn the_reader_splits_several_frames_and_waits_for_a_partial_one() {
        let mut r = FrameReader::default();
        r.push(b"\nRECEIPT\nreceipt-id:a\n\n\0\nMESSAGE\nsubscription:s\n\nbo");
        assert_eq!(r.next_frame().unwrap().unwrap().command, "RECEIPT");
        assert_eq!(r.next_frame().unwrap(), None);
        r.push(b"dy\0");
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(
            (f.command.as_str(), f.body.as_slice()),
            ("MESSAGE", &b"body"[..])
        );
        // A content-length body may hold NUL bytes.
        r.push(b"MESSAGE\ncontent-length:3\n\na\0b\0");
        assert_eq!(r.next_frame().unwrap().unwrap().body, b"a\0b");
    }

    #[test]
    fn a_body_not_ended_by_nul_is_an_error() {
        let mut r = FrameReader::default();
        r.push(b"MESSAGE\ncontent-length:1\n\nab\0");
        assert!(r.next_frame().is_err());
    }
}
