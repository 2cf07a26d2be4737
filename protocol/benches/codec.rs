//! Criterion micro-benchmarks of the frame codec: decoding what clients send
//! (`publish`, `request`, `ack_deliveries`), encoding what the gateway sends (`deliver`,
//! `reply`, `ack`), and decoding server frames as the SDK does, each with small and
//! larger payloads. Run with `cargo bench -p warren-protocol --bench codec`.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::value::RawValue;
use warren_protocol::{
    decode_client, decode_server, encode, ClientFrame, Deliver, Publish, Reply, ServerFrame,
};

/// A JSON application message of about `size` bytes with some structure in it.
fn payload(size: usize) -> String {
    let head = r#"{"user":"alice","n":42,"tags":["a","b"],"text":""#;
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

fn publish_text(size: usize) -> String {
    format!(
        r#"{{"type":"publish","id":"1234","channel":"chat","subject":"room-1","distribution":{{"groups":["room-1"]}},"headers":{{"trace":"abc"}},"message":{}}}"#,
        payload(size)
    )
}

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

fn client_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_client");
    for size in SIZES {
        let text = publish_text(size);
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("publish", size), &text, |b, t| {
            b.iter(|| decode_client(std::hint::black_box(t)).unwrap())
        });
        let req = text.replacen(
            r#""type":"publish""#,
            r#""type":"request","timeout_ms":5000"#,
            1,
        );
        g.bench_with_input(BenchmarkId::new("request", size), &req, |b, t| {
            b.iter(|| decode_client(std::hint::black_box(t)).unwrap())
        });
    }
    let ack = r#"{"type":"ack_deliveries","seq":123456}"#;
    g.throughput(Throughput::Bytes(ack.len() as u64));
    g.bench_function("ack_deliveries", |b| {
        b.iter(|| decode_client(std::hint::black_box(ack)).unwrap())
    });
    g.finish();
}

fn deliver(size: usize) -> ServerFrame {
    let mut headers = BTreeMap::new();
    headers.insert("x-warren-user".to_string(), "alice".to_string());
    headers.insert("x-warren-session".to_string(), "3f2a9c1e".to_string());
    ServerFrame::Deliver(Deliver {
        seq: 98765,
        position: Some(1_234_567),
        stream: None,
        message_id: "alice:1234".into(),
        channel: "chat".into(),
        routing_key: "chat.group.room-1".into(),
        keys: Vec::new(),
        redelivered: false,
        headers,
        message: RawValue::from_string(payload(size)).unwrap(),
    })
}

fn server_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_server");
    for size in SIZES {
        let frame = deliver(size);
        g.throughput(Throughput::Bytes(encode(&frame).len() as u64));
        g.bench_with_input(BenchmarkId::new("deliver", size), &frame, |b, f| {
            b.iter(|| encode(std::hint::black_box(f)))
        });
        let reply = ServerFrame::Reply(Reply {
            id: "1234".into(),
            seq: 98765,
            position: Some(1_234_568),
            headers: BTreeMap::new(),
            message: RawValue::from_string(payload(size)).unwrap(),
        });
        g.bench_with_input(BenchmarkId::new("reply", size), &reply, |b, f| {
            b.iter(|| encode(std::hint::black_box(f)))
        });
    }
    let ack: ServerFrame = ServerFrame::ack("1234");
    g.throughput(Throughput::Bytes(encode(&ack).len() as u64));
    g.bench_function("ack", |b| b.iter(|| encode(std::hint::black_box(&ack))));
    g.finish();
}

fn client_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_client");
    for size in SIZES {
        let body = RawValue::from_string(payload(size)).unwrap();
        let frame = ClientFrame::Publish(Publish {
            id: "1234".into(),
            channel: "chat".into(),
            subject: None,
            distribution: None,
            headers: BTreeMap::new(),
            message: &*body,
        });
        g.throughput(Throughput::Bytes(encode(&frame).len() as u64));
        g.bench_with_input(BenchmarkId::new("publish", size), &frame, |b, f| {
            b.iter(|| encode(std::hint::black_box(f)))
        });
    }
    g.finish();
}

fn server_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_server");
    for size in SIZES {
        let text = encode(&deliver(size));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("deliver", size), &text, |b, t| {
            b.iter(|| decode_server(std::hint::black_box(t)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(
    codec,
    client_decode,
    server_encode,
    client_encode,
    server_decode
);
criterion_main!(codec);
