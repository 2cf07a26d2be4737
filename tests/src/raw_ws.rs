//! A WebSocket client written against RFC 6455 and RFC 7692 directly, for tests that
//! must see the wire: the upgrade's response headers, each frame's RSV1 bit (set on a
//! compressed message) and the compressed bytes themselves. It frames, masks,
//! deflates and inflates by hand (flate2), so it proves what the gateway sends without
//! trusting a WebSocket library on either side.

use std::net::SocketAddr;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tail a permessage-deflate sender strips from each message (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;

/// One frame as it came off the wire.
#[derive(Debug)]
pub struct RawFrame {
    pub fin: bool,
    /// Set on the first frame of a compressed message.
    pub rsv1: bool,
    pub opcode: u8,
    /// As sent: still compressed when `rsv1` is set.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The message's text, inflated when it was compressed.
    ///
    /// # Panics
    /// When the payload is not valid deflate data or UTF-8.
    pub fn text(&self) -> String {
        let bytes = if self.rsv1 {
            inflate(&self.payload)
        } else {
            self.payload.clone()
        };
        String::from_utf8(bytes).expect("UTF-8 text")
    }

    /// A close frame's code.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// An open WebSocket and what the upgrade answered.
pub struct RawWs {
    stream: TcpStream,
    read: Vec<u8>,
    /// The upgrade response's status code.
    pub status: u16,
    /// The upgrade response's headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl RawWs {
    /// Sends an upgrade for `/ws` with subprotocol `warren.v1` and, when given, the
    /// `Sec-WebSocket-Extensions` offer; reads the response headers.
    ///
    /// # Panics
    /// When the connection or the response fails.
    pub async fn connect(addr: SocketAddr, extensions: Option<&str>) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let offer = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: warren.v1\r\n{offer}\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send upgrade");
        let mut read = Vec::new();
        let end = loop {
            if let Some(i) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("upgrade answered in time")
                .expect("read upgrade response");
            assert!(n > 0, "connection closed during the upgrade");
            read.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&read[..end]).to_string();
        read.drain(..end);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        RawWs {
            stream,
            read,
            status,
            headers,
        }
    }

    /// The response header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sends `text` as one masked text frame, compressed (RSV1 set) when `compress`.
    pub async fn send_text(&mut self, text: &str, compress: bool) {
        let payload = if compress {
            deflate(text.as_bytes())
        } else {
            text.as_bytes().to_vec()
        };
        self.send_frame(TEXT, compress, &payload).await;
    }

    /// Sends one masked frame with FIN set.
    pub async fn send_frame(&mut self, opcode: u8, rsv1: bool, payload: &[u8]) {
        let mut out = vec![0x80 | (u8::from(rsv1) << 6) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await.expect("send frame");
    }

    /// The next frame within `within`; `None` on timeout or a closed connection.
    pub async fn recv(&mut self, within: Duration) -> Option<RawFrame> {
        tokio::time::timeout(within, async {
            loop {
                if let Some((frame, used)) = parse(&self.read) {
                    self.read.drain(..used);
                    return Some(frame);
                }
                let mut chunk = [0u8; 8192];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.read.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The next text frame within `within`, skipping pings and pongs.
    pub async fn recv_text(&mut self, within: Duration) -> Option<RawFrame> {
        loop {
            let frame = self.recv(within).await?;
            if frame.opcode == TEXT || frame.opcode == CLOSE {
                return Some(frame);
            }
        }
    }
}

/// An unmasked server frame at the start of `buf` and the bytes it took.
fn parse(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "a server's frames are not masked");
    let (len, mut at) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    at += len;
    Some((
        RawFrame {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            opcode: b0 & 0x0f,
            payload,
        },
        at,
    ))
}

/// One message compressed as a permessage-deflate sender does: raw deflate, sync
/// flush, the trailing `00 00 ff ff` removed.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let consumed = usize::try_from(c.total_in()).expect("size");
        c.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .expect("deflate");
        if usize::try_from(c.total_in()).expect("size") == data.len() && out.len() < out.capacity()
        {
            break;
        }
        out.reserve(out.capacity().max(1024));
    }
    assert!(out.ends_with(&TAIL), "a sync flush ends with 00 00 ff ff");
    out.truncate(out.len() - TAIL.len());
    out
}

/// One permessage-deflate message inflated (no context kept between messages).
///
/// # Panics
/// When `data` is not valid deflate data.
pub fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    loop {
        let consumed = usize::try_from(d.total_in()).expect("size");
        d.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .expect("inflate");
        if usize::try_from(d.total_in()).expect("size") == input.len() && out.len() < out.capacity()
        {
            return out;
        }
        out.reserve(out.capacity().max(1024));
    }
}
