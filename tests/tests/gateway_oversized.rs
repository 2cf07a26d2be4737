//! Messages whose AMQP properties cannot fit in one frame, over real RabbitMQ. A
//! content header (the headers, the `CC` list of a multicast) must fit in one frame
//! of `frame_max` bytes (128 KiB by default); RabbitMQ closes the whole connection on
//! one that does not (`frame_too_large`), and every client's publishes on the
//! gateway's publishing connection with it (a client's 32 headers of 4 KiB, with
//! `max_frame_bytes` raised, are more than a frame). The gateway refuses such a message with
//! `too_large` (HTTP 413) before it reaches RabbitMQ, and goes on publishing.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use warren_e2e::client::{big_headers, sub, TestClient};
use warren_e2e::env::{ack, next_delivery, TestEnv};
use warren_e2e::gateway::{http_post, TestGateway};
use warren_gateway::Config;
use warren_protocol::{ErrorCode, Hello};

const LIMIT: Duration = Duration::from_secs(60);
const KEY: &str = "test-http-api-key";

fn large_frames(c: &mut Config) {
    c.max_frame_bytes = 512 * 1024;
    c.http_api.enabled = true;
    c.http_api.api_keys = vec![KEY.into()];
    c.http_api.max_body_bytes = 512 * 1024;
}

async fn connect(gw: &TestGateway, user: &str) -> TestClient {
    let hello = Hello {
        token: Some(user.into()),
        ..Hello::default()
    };
    TestClient::connect_with(&gw.url(), hello).await
}

#[tokio::test]
async fn a_publish_to_more_users_than_one_frame_holds_is_refused_413_and_publishing_goes_on() {
    TestEnv::run("oversized-http", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, large_frames).await;
        let addr: SocketAddr = gw.gateway().http_api_addr().expect("the HTTP API is on");
        let mut carol = connect(&gw, "carol").await;
        carol
            .subscribe(warren_protocol::Subscribe {
                broadcast: Some(false),
                direct: true,
                ..sub("s", "chat")
            })
            .await;
        let users: Vec<String> = (0..20_000).map(|i| format!("u{i}")).collect();
        let body = json!({"channel": "chat", "id": "big", "users": users, "message": 1});
        let (status, answer) =
            http_post(addr, "/publish", Some(KEY), body.to_string().as_bytes()).await;
        assert_eq!(status, 413, "{answer}");
        assert_eq!(answer["code"], "too_large", "{answer}");
        // The gateway's publishing connection is intact: the next publish goes out.
        let body = json!({"channel": "chat", "id": "small", "users": ["carol"], "message": 2});
        let (status, answer) =
            http_post(addr, "/publish", Some(KEY), body.to_string().as_bytes()).await;
        assert_eq!(status, 202, "{answer}");
        let d = carol.expect_deliver().await;
        assert_eq!(d.message.get(), "2");
        carol.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_publish_with_headers_larger_than_a_frame_is_refused_too_large_and_others_go_on() {
    TestEnv::run("oversized-ws", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, large_frames).await;
        let mut mallory = connect(&gw, "mallory").await;
        let mut alice = connect(&gw, "alice").await;
        alice.subscribe(sub("s", "chat")).await;
        // As many headers as a client may send (32), each as long as it may be (4 KiB):
        // more than one frame once the gateway's own headers are added.
        mallory
            .expect_publish_too_large("p1", "chat", big_headers(32, 4096))
            .await;
        // Both connections go on, and so does the gateway's publishing.
        mallory.publish("p2", "chat", json!(2)).await;
        mallory.expect_ack("p2").await;
        alice.publish("a1", "chat", json!(3)).await;
        alice.expect_ack("a1").await;
        mallory.close().await;
        alice.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// `POST /request` goes out on a channel of the gateway's publishing connection
/// (direct reply-to): a request RabbitMQ cannot take in one frame would close that
/// connection and fail every client's writes in flight. It is refused 413 like the
/// other writes, and publishing and deliveries go on.
#[tokio::test]
async fn an_http_request_with_headers_larger_than_a_frame_is_refused_413_and_deliveries_go_on() {
    TestEnv::run("oversized-request", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, large_frames).await;
        let addr: SocketAddr = gw.gateway().http_api_addr().expect("the HTTP API is on");
        // Someone takes chat's requests, so the gateway does not answer no_service.
        let _service = env.consume_inbound("chat").await;
        tokio::time::sleep(warren_gateway::services::CONSUMER_CHECK_TTL).await;
        let mut alice = connect(&gw, "alice").await;
        alice.subscribe(sub("s", "chat")).await;
        let headers = big_headers(32, 4096);
        let body = json!({"id": "r1", "timeout_ms": 2_000, "headers": headers, "message": 1});
        let (status, answer) = http_post(
            addr,
            "/request/chat",
            Some(KEY),
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 413, "{answer}");
        assert_eq!(answer["code"], "too_large", "{answer}");
        // Both connections are intact: a broadcast is published and reaches alice.
        let body = json!({"channel": "chat", "id": "after", "broadcast": true, "message": 2});
        let (status, answer) =
            http_post(addr, "/publish", Some(KEY), body.to_string().as_bytes()).await;
        assert_eq!(status, 202, "{answer}");
        let d = alice.expect_deliver().await;
        assert_eq!(d.message.get(), "2");
        alice.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A message body over `max_delivery_bytes` that a service publishes or replies is
/// not sent: each session it was for gets `error too_large` in its place, with its
/// `seq` and stream position (the next delivery follows it), a reply's with the
/// request's id. Sent, every receiving socket held a copy of it until written: a
/// 16 MiB broadcast to 1,000 sessions, 16 GB or more.
#[tokio::test]
async fn a_message_over_max_delivery_bytes_reaches_its_sessions_as_too_large_in_its_place() {
    TestEnv::run("oversized-delivery", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.max_delivery_bytes = 64 * 1024).await;
        let mut a = connect(&gw, "ada").await;
        let mut b = connect(&gw, "bob").await;
        for c in [&mut a, &mut b] {
            c.subscribe(sub("all", "chat")).await;
        }
        let big = format!("\"{}\"", "x".repeat(100 * 1024));
        env.publish_out("chat.all", "big", &big).await;
        env.publish_out("chat.all", "after", "1").await;
        for c in [&mut a, &mut b] {
            let e = c.expect_error_code(None, ErrorCode::TooLarge).await;
            assert!(e.message.contains("max_delivery_bytes"), "{e:?}");
            let (seq, position) = (e.seq.expect("a seq"), e.position.expect("a position"));
            let next = c.expect_deliver().await;
            assert_eq!(next.message_id, "after");
            assert_eq!(next.seq, seq + 1, "counted as a delivery");
            assert_eq!(next.position, Some(position + 1), "in its place");
            c.ack_deliveries(next.seq).await;
        }
        // A reply over it fails its request, by id.
        let mut inbound = env.consume_inbound("echo").await;
        a.request("q1", "echo", Some(5_000), json!({"n": 1})).await;
        let req = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        env.reply_to(&req, &big, None).await;
        ack(&req).await;
        let e = a.expect_error_code(Some("q1"), ErrorCode::TooLarge).await;
        assert!(e.message.contains("reply"), "{e:?}");
        // Smaller ones go on as ever.
        a.request("q2", "echo", Some(5_000), json!({"n": 2})).await;
        env.answer_next(&mut inbound, "{\"ok\":2}", None).await;
        assert_eq!(a.expect_reply("q2").await.message.get(), "{\"ok\":2}");
        gw.shutdown().await;
    })
    .await;
}
