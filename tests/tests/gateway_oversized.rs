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
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::{http_post, TestGateway};
use warren_gateway::Config;
use warren_protocol::Hello;

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
