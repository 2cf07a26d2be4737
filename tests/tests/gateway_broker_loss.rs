//! Losing RabbitMQ connections. Sessions hold nothing on the broker (the outbound
//! stream): they stay connected while the gateway re-establishes its connections, and
//! its stream reader carries on from the position after the last message it read, so
//! nothing is lost; a client that went away meanwhile resumes its session from its
//! position and gets what it had not acknowledged and what was published meanwhile. The connections are closed from the broker side
//! with `rabbitmqctl`; where that tool is not usable the test fails saying so
//! (`WARREN_ALLOW_SKIP=1` skips it instead).

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::{next_delivery, TestEnv};
use warren_e2e::gateway::{http_post, TestGateway};
use warren_e2e::rabbitmqctl::cut_gateway_connections;
use warren_protocol::Subscribe;

/// A client subscribed to the chat broadcast that received one message (`before`),
/// then the gateway's broker connections closed from the broker side; `None` when
/// rabbitmqctl is not usable here and `WARREN_ALLOW_SKIP=1` (the test is skipped;
/// without it the test fails).
async fn subscribed_then_cut(env: &TestEnv, gw: &TestGateway) -> Option<TestClient> {
    let node = gw.gateway().config().node.clone();
    let mut c = TestClient::connect(&gw.url()).await;
    c.subscribe(Subscribe {
        id: "s".into(),
        channel: "chat".into(),
        ..Default::default()
    })
    .await;
    env.publish_out("chat.all", "before", "1").await;
    assert_eq!(c.expect_deliver().await.message_id, "before");
    match cut_gateway_connections("gateway_broker_loss", &node).await {
        None => None,
        Some(n) => {
            assert_eq!(n, 2, "one publishing and one consuming connection");
            Some(c)
        }
    }
}

#[tokio::test]
async fn after_losing_its_rabbitmq_connections_the_gateway_reconnects_and_sessions_resume() {
    let env = TestEnv::new("broker-loss").await;
    let gw = TestGateway::start(&env).await;
    let Some(c) = subscribed_then_cut(&env, &gw).await else {
        gw.shutdown().await;
        env.cleanup().await;
        return;
    };
    // Published while the gateway has no broker connection.
    env.publish_out("chat.all", "during", "2").await;
    // The client goes away without acknowledging `before`, and resumes from its
    // position on the gateway, which reconnects.
    let hello = c.resume_hello();
    c.close().await;
    let mut c = TestClient::connect_with(&gw.url(), hello).await;
    assert!(c.welcome.as_ref().unwrap().resumed);
    let d = c.expect_deliver().await;
    assert_eq!(
        d.message_id, "before",
        "the unacknowledged delivery comes again"
    );
    assert!(d.redelivered, "marked as possibly seen before");
    let d = c.expect_deliver().await;
    assert_eq!(
        d.message_id, "during",
        "what was published meanwhile follows"
    );
    c.ack_deliveries(d.seq).await;
    c.publish("p", "chat", json!(1)).await;
    c.expect_ack("p").await;
    env.publish_out("chat.all", "after", "3").await;
    assert_eq!(c.expect_deliver().await.message_id, "after");
    c.expect_no_deliver(Duration::from_millis(400)).await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn with_the_outbound_stream_sessions_stay_connected_through_a_broker_connection_loss() {
    let env = TestEnv::new("broker-loss-stream").await;
    let gw = TestGateway::start(&env).await;
    let Some(mut c) = subscribed_then_cut(&env, &gw).await else {
        gw.shutdown().await;
        env.cleanup().await;
        return;
    };
    // Published while the gateway has no broker connection.
    env.publish_out("chat.all", "during", "2").await;
    // The client publishes through the reconnected gateway, and receives what was
    // published meanwhile and after, once each, without reconnecting.
    c.publish("p", "chat", json!(1)).await;
    c.expect_ack("p").await;
    env.publish_out("chat.all", "after", "3").await;
    assert_eq!(c.expect_deliver().await.message_id, "during");
    assert_eq!(c.expect_deliver().await.message_id, "after");
    c.expect_no_deliver(Duration::from_millis(400)).await;
    assert_eq!(c.close_code, None, "never closed");
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// A `POST /request` waiting for its answer when the gateway loses its broker
/// connections is answered `503 broker_unavailable` (retryable) at once, not `504`
/// once its timeout passed: its answer could only have come on the lost channel.
#[tokio::test]
async fn an_http_request_awaiting_its_answer_when_the_connection_is_lost_gets_503_at_once() {
    let env = TestEnv::new("broker-loss-http").await;
    let gw = TestGateway::start_with(&env, |c| {
        c.http_api.enabled = true;
        c.http_api.api_keys = vec!["key".into()];
    })
    .await;
    let addr = gw.gateway().http_api_addr().expect("the HTTP API is on");
    // A consumer that never answers.
    let mut stuck = env.consume_inbound("voice").await;
    tokio::time::sleep(warren_gateway::services::CONSUMER_CHECK_TTL).await;
    let call = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let body = br#"{"timeout_ms": 20000, "message": {"sdp": "x"}}"#;
        let answer = http_post(addr, "/request/voice", Some("key"), body).await;
        (answer, started.elapsed())
    });
    // The request is out: the service has it.
    let _request = next_delivery(&mut stuck, Duration::from_secs(10)).await;
    let node = gw.gateway().config().node.clone();
    if cut_gateway_connections("gateway_broker_loss", &node)
        .await
        .is_none()
    {
        call.abort();
        gw.shutdown().await;
        env.cleanup().await;
        return;
    }
    let ((status, body), took) = call.await.unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("broker_unavailable")),
        "{body}"
    );
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    gw.shutdown().await;
    env.cleanup().await;
}
