//! Just enough of RabbitMQ's stream protocol (port 5552, plugin `rabbitmq_stream`) to
//! store a consumer's offset on a stream, as a stream-protocol consumer with
//! server-side offset tracking does: each store RabbitMQ writes takes a stream
//! position that holds no message. Written by hand for the tests: the maintained
//! client (`rabbitmq-stream-client` 0.4, the last to speak to RabbitMQ 3.10) brings a
//! second rustls into the workspace, and `bench/stream-read` keeps it in a workspace
//! of its own for that reason. Frames as in RabbitMQ's `deps/rabbitmq_stream/docs/
//! PROTOCOL.adoc`: a big-endian `u32` size, then key, version and fields; strings
//! are an `i16` length and bytes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PEER_PROPERTIES: u16 = 0x0011;
const SASL_HANDSHAKE: u16 = 0x0012;
const SASL_AUTHENTICATE: u16 = 0x0013;
const TUNE: u16 = 0x0014;
const OPEN: u16 = 0x0015;
const STORE_OFFSET: u16 = 0x000a;
const QUERY_OFFSET: u16 = 0x000b;
const OK: u16 = 0x01;
/// Each wait for RabbitMQ's answer.
const WAIT: Duration = Duration::from_secs(10);

/// Where the tests' RabbitMQ speaks the stream protocol: `WARREN_STREAM_ADDR`, else
/// `127.0.0.1:5552`.
pub fn stream_addr() -> String {
    std::env::var("WARREN_STREAM_ADDR").unwrap_or_else(|_| "127.0.0.1:5552".to_string())
}

/// A stream-protocol connection, opened on the default virtual host as `guest`.
pub struct StreamConnection {
    socket: TcpStream,
    correlation: u32,
}

/// A frame's body: key, version, then what `fields` wrote.
fn frame(key: u16, fields: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&key.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    fields(&mut body);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl StreamConnection {
    /// Connects to `addr` (`127.0.0.1:5552`) and opens the connection.
    ///
    /// # Panics
    /// When RabbitMQ refuses or does not answer (the plugin not enabled: `./dev test`
    /// enables it).
    pub async fn open(addr: &str) -> StreamConnection {
        let socket = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("the stream port answers")
            .unwrap_or_else(|e| panic!("connect to the stream protocol on {addr}: {e}"));
        let mut c = StreamConnection {
            socket,
            correlation: 0,
        };
        c.request(PEER_PROPERTIES, |b| {
            b.extend_from_slice(&0i32.to_be_bytes())
        })
        .await;
        c.request(SASL_HANDSHAKE, |_| {}).await;
        c.request(SASL_AUTHENTICATE, |b| {
            string(b, "PLAIN");
            let plain = b"\0guest\0guest";
            b.extend_from_slice(&(plain.len() as i32).to_be_bytes());
            b.extend_from_slice(plain);
        })
        .await;
        // RabbitMQ proposes its limits; agreeing to them is enough.
        let tune = c.read_frame().await;
        assert_eq!(key_of(&tune), TUNE, "a tune after authentication");
        let agreed = frame(TUNE, |b| b.extend_from_slice(&tune[4..12]));
        c.write(&agreed).await;
        c.request(OPEN, |b| string(b, "/")).await;
        c
    }

    /// Stores offset `offset` of consumer `reference` on `stream`, and waits until
    /// RabbitMQ has it (a query for it answers).
    pub async fn store_offset(&mut self, reference: &str, stream: &str, offset: u64) {
        let store = frame(STORE_OFFSET, |b| {
            string(b, reference);
            string(b, stream);
            b.extend_from_slice(&offset.to_be_bytes());
        });
        self.write(&store).await;
        let answer = self
            .request(QUERY_OFFSET, |b| {
                string(b, reference);
                string(b, stream);
            })
            .await;
        let stored = u64::from_be_bytes(answer[10..18].try_into().expect("an offset"));
        assert_eq!(stored, offset, "RabbitMQ has the offset stored");
    }

    /// Sends request `key` (a correlation id, then what `fields` writes) and returns
    /// its response, whose code must be OK.
    async fn request(&mut self, key: u16, fields: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        self.correlation += 1;
        let id = self.correlation;
        let request = frame(key, |b| {
            b.extend_from_slice(&id.to_be_bytes());
            fields(b);
        });
        self.write(&request).await;
        loop {
            let answer = self.read_frame().await;
            if key_of(&answer) != key | 0x8000 {
                continue; // a heartbeat, say
            }
            let code = u16::from_be_bytes([answer[8], answer[9]]);
            assert_eq!(
                code, OK,
                "stream protocol command {key:#06x} refused: {code:#04x}"
            );
            return answer;
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.socket.write_all(bytes))
            .await
            .expect("RabbitMQ takes the frame")
            .expect("write a stream protocol frame");
    }

    /// The next frame, without its size.
    async fn read_frame(&mut self) -> Vec<u8> {
        let read = async {
            let size = self.socket.read_u32().await?;
            let mut body = vec![0; size as usize];
            self.socket.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("RabbitMQ answers on the stream protocol")
            .expect("read a stream protocol frame")
    }
}

fn key_of(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[0], frame[1]])
}
