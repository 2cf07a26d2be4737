//! Just enough AMQP 0-9-1 to publish one message whose short-string properties
//! (`message_id`, `correlation_id`, a header's name, ...) hold bytes that are not
//! UTF-8. AMQP short strings are octets, and RabbitMQ passes such bytes on; lapin
//! writes only `String`s, so it cannot send them, and reading them it gives up the
//! whole connection (`amq-protocol-types` parses short strings as UTF-8). Producers in
//! other languages (one cutting an id at 255 bytes in the middle of a character) do
//! send them. Written by hand for the tests; frames as in the AMQP 0-9-1 spec
//! (section 4.2): type, channel, size, payload, `0xCE`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One message's properties, written as they are.
#[derive(Debug, Default, Clone)]
pub struct RawProperties {
    /// `message-id`: any bytes, up to 255.
    pub message_id: Option<Vec<u8>>,
    /// `correlation-id`: any bytes, up to 255.
    pub correlation_id: Option<Vec<u8>>,
    /// `delivery-mode` 2 (persistent) when set.
    pub persistent: bool,
    /// `headers`: (name, long-string value) pairs, the names any bytes up to 255.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// More `headers`: (name, value) pairs, the value written as it is (its type
    /// octet first), e.g. [`nested_arrays`].
    pub raw_headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A field value of arrays nested `depth` deep (5 bytes a level), the innermost empty.
pub fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut v = b"A\0\0\0\0".to_vec();
    for _ in 1..depth {
        let mut outer = Vec::with_capacity(v.len() + 5);
        outer.push(b'A');
        outer.extend_from_slice(&u32::try_from(v.len()).expect("an array").to_be_bytes());
        outer.extend_from_slice(&v);
        v = outer;
    }
    v
}

fn short(out: &mut Vec<u8>, s: &[u8]) {
    let len = u8::try_from(s.len()).expect("a short string of at most 255 bytes");
    out.push(len);
    out.extend_from_slice(s);
}

fn long(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).expect("a long string").to_be_bytes());
    out.extend_from_slice(s);
}

fn method(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + args.len());
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    p
}

async fn send(stream: &mut TcpStream, kind: u8, channel: u16, payload: &[u8]) {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.push(kind);
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&u32::try_from(payload.len()).expect("a frame").to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    stream.write_all(&f).await.expect("write to RabbitMQ");
}

/// The next method frame's (class, method, arguments), skipping heartbeats.
async fn recv_method(stream: &mut TcpStream) -> (u16, u16, Vec<u8>) {
    loop {
        let mut head = [0u8; 7];
        stream
            .read_exact(&mut head)
            .await
            .expect("a frame from RabbitMQ");
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        stream
            .read_exact(&mut payload)
            .await
            .expect("a frame's payload");
        payload.pop();
        if head[0] == 1 && payload.len() >= 4 {
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let m = u16::from_be_bytes([payload[2], payload[3]]);
            return (class, m, payload[4..].to_vec());
        }
    }
}

async fn expect(stream: &mut TcpStream, class: u16, m: u16) -> Vec<u8> {
    let (c, got, args) = recv_method(stream).await;
    assert_eq!(
        (c, got),
        (class, m),
        "RabbitMQ answered another method: {}",
        String::from_utf8_lossy(&args)
    );
    args
}

/// Publishes `body` to `exchange` with `routing_key` and `props` over a connection of
/// its own to `host:port` (guest/guest, vhost `/`), in confirm mode, and waits for
/// the confirm: `true` for an ack, `false` for a nack.
///
/// # Panics
/// When RabbitMQ refuses the connection or closes the channel, or answers nothing
/// within 10 s.
pub async fn publish(
    addr: &str,
    exchange: &str,
    routing_key: &str,
    props: &RawProperties,
    body: &[u8],
) -> bool {
    let publish = async {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("RabbitMQ's AMQP port");
        s.write_all(b"AMQP\x00\x00\x09\x01").await.expect("write");
        expect(&mut s, 10, 10).await; // connection.start
        let mut a = Vec::new();
        a.extend_from_slice(&0u32.to_be_bytes()); // client-properties: empty table
        short(&mut a, b"PLAIN");
        long(&mut a, b"\0guest\0guest");
        short(&mut a, b"en_US");
        send(&mut s, 1, 0, &method(10, 11, &a)).await;
        let tune = expect(&mut s, 10, 30).await;
        let mut a = Vec::new();
        a.extend_from_slice(&tune[0..2]); // channel-max
        a.extend_from_slice(&tune[2..6]); // frame-max
        a.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        send(&mut s, 1, 0, &method(10, 31, &a)).await;
        let mut a = Vec::new();
        short(&mut a, b"/");
        short(&mut a, b"");
        a.push(0);
        send(&mut s, 1, 0, &method(10, 40, &a)).await;
        expect(&mut s, 10, 41).await;
        send(&mut s, 1, 1, &method(20, 10, &[0])).await; // channel.open, reserved ""
        expect(&mut s, 20, 11).await;
        send(&mut s, 1, 1, &method(85, 10, &[0])).await; // confirm.select, no-wait off
        expect(&mut s, 85, 11).await;

        let mut a = Vec::new();
        a.extend_from_slice(&0u16.to_be_bytes());
        short(&mut a, exchange.as_bytes());
        short(&mut a, routing_key.as_bytes());
        a.push(0); // neither mandatory nor immediate
        send(&mut s, 1, 1, &method(60, 40, &a)).await;

        // The content header: flags in the spec's order, then the properties set.
        let mut flags = 0u16;
        let mut fields = Vec::new();
        if !props.headers.is_empty() || !props.raw_headers.is_empty() {
            flags |= 1 << 13;
            let mut table = Vec::new();
            for (name, value) in &props.headers {
                short(&mut table, name);
                table.push(b'S');
                long(&mut table, value);
            }
            for (name, value) in &props.raw_headers {
                short(&mut table, name);
                table.extend_from_slice(value);
            }
            long(&mut fields, &table);
        }
        if props.persistent {
            flags |= 1 << 12;
            fields.push(2);
        }
        if let Some(id) = &props.correlation_id {
            flags |= 1 << 10;
            short(&mut fields, id);
        }
        if let Some(id) = &props.message_id {
            flags |= 1 << 7;
            short(&mut fields, id);
        }
        let mut h = Vec::new();
        h.extend_from_slice(&60u16.to_be_bytes());
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&(body.len() as u64).to_be_bytes());
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&fields);
        send(&mut s, 2, 1, &h).await;
        send(&mut s, 3, 1, body).await;

        let acked = loop {
            match recv_method(&mut s).await {
                (60, 80, _) => break true,   // basic.ack
                (60, 120, _) => break false, // basic.nack
                (20, 40, args) => panic!(
                    "RabbitMQ closed the channel: {}",
                    String::from_utf8_lossy(&args)
                ),
                _ => {}
            }
        };
        let mut a = Vec::new();
        a.extend_from_slice(&200u16.to_be_bytes());
        short(&mut a, b"bye");
        a.extend_from_slice(&[0, 0, 0, 0]);
        send(&mut s, 1, 0, &method(10, 50, &a)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), expect(&mut s, 10, 51)).await;
        acked
    };
    tokio::time::timeout(Duration::from_secs(10), publish)
        .await
        .expect("RabbitMQ answered within 10 s")
}

/// `host:port` of an `amqp://` URI such as [`crate::env::amqp_addr`]'s.
///
/// # Panics
/// When `uri` names no host.
pub fn host_port(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = rest.split('/').next().expect("a host");
    assert!(!host.is_empty(), "no host in {uri}");
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5672")
    }
}
