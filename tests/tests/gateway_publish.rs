//! Publish and request through the gateway: acks only after the broker confirm,
//! unroutable publishes refused with `no_route`, request/reply and timeouts.

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use lapin::types::{AMQPValue, ShortString};
use serde_json::json;
use warren_e2e::client::{raw, TestClient};
use warren_e2e::env::{ack, next_delivery, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_protocol::amqp::{H_CHANNEL, H_GROUPS, H_SESSION, H_USER};
use warren_protocol::{ClientFrame, Distribution, ErrorCode, Hello, Publish};

#[tokio::test]
async fn a_publish_is_acked_only_once_the_message_is_in_the_channel_queue() {
    let env = TestEnv::new("publish-ack").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect_with(
        &gw.url(),
        Hello {
            token: Some("alice".into()),
            ..Default::default()
        },
    )
    .await;
    c.send(&ClientFrame::Publish(Publish {
        id: "p1".into(),
        channel: "chat".into(),
        subject: None,
        distribution: Some(Distribution {
            broadcast: false,
            groups: vec!["room-1".into()],
            direct: vec![],
        }),
        headers: [("lang".to_string(), "en".to_string())].into(),
        message: raw(json!({"text": "hi"})),
    }))
    .await;
    c.expect_ack("p1").await;
    // The ack came after the confirm: the message is already in IN_CHAT.
    let queue = env.names.channel_queue("chat");
    let d = env
        .get(&queue)
        .await
        .expect("the message is in IN_CHAT when the ack arrives");
    assert_eq!(
        d.data,
        br#"{"text":"hi"}"#.to_vec(),
        "payload passed through byte for byte"
    );
    let p = &d.properties;
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some("alice:p1")
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(d.routing_key.as_str(), "chat");
    let h = p.headers().as_ref().expect("headers").inner();
    let text = |k: &str| match h.get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(text(H_USER), "alice");
    assert_eq!(text(H_SESSION), c.session());
    assert_eq!(text(H_CHANNEL), "chat");
    assert_eq!(text("lang"), "en");
    assert!(matches!(h.get(H_GROUPS), Some(AMQPValue::FieldArray(a)) if a.as_slice().len() == 1));
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_publish_nothing_is_bound_to_gets_no_route() {
    let env = TestEnv::new("no-route").await;
    let gw = TestGateway::start(&env).await;
    // A channel configured but whose queue binding is gone.
    env.unbind_inbound("voice").await;
    // A channel whose IN_ queue was deleted.
    env.channel()
        .queue_delete(
            ShortString::from(env.names.channel_queue("echo")),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete");
    let mut c = TestClient::connect(&gw.url()).await;
    c.publish("v1", "voice", json!({"sdp": "x"})).await;
    c.expect_error_code(Some("v1"), ErrorCode::NoRoute).await;
    c.publish("e1", "echo", json!(1)).await;
    c.expect_error_code(Some("e1"), ErrorCode::NoRoute).await;
    c.request("r1", "echo", Some(5_000), json!(1)).await;
    c.expect_error_code(Some("r1"), ErrorCode::NoRoute).await;
    // The connection is fine: a routable publish still works.
    c.publish("c1", "chat", json!("ok")).await;
    c.expect_ack("c1").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// Answers to `n` publishes of `c`: acks, `no_route` errors, other errors.
async fn answers(c: &mut TestClient, n: usize) -> (usize, usize, usize) {
    let (mut acks, mut no_route, mut other) = (0, 0, 0);
    while acks + no_route + other < n {
        match c.recv_within(Duration::from_secs(20)).await {
            Some(warren_protocol::ServerFrame::Ack(_)) => acks += 1,
            Some(warren_protocol::ServerFrame::Error(e)) if e.code == ErrorCode::NoRoute => {
                no_route += 1
            }
            Some(warren_protocol::ServerFrame::Error(_)) => other += 1,
            Some(_) => {}
            None => break,
        }
    }
    (acks, no_route, other)
}

/// Routed and unroutable publishes sharing a publisher channel each get their own
/// answer. lapin 4.12 hands a `basic.return` to whichever publisher confirm completes
/// next on the channel, and RabbitMQ may confirm several publishes in one multiple
/// ack: before the gateway matched returns by message id (`confirms`), 74 of 3,000
/// unroutable publishes were acked (lost in silence) and 74 of 3,000 routed ones
/// answered `no_route`, one publisher channel, two clients.
#[tokio::test]
async fn routed_and_unroutable_publishes_on_one_channel_get_their_own_answers() {
    let env = TestEnv::new("no-route-mixed").await;
    let gw = TestGateway::start_with(&env, |c| c.publisher_channels = 1).await;
    env.unbind_inbound("voice").await;
    let mut x = TestClient::connect(&gw.url()).await;
    let mut y = TestClient::connect(&gw.url()).await;
    const N: usize = 3_000;
    let routed = async {
        for i in 0..N {
            x.publish(&format!("x{i}"), "chat", json!(i)).await;
        }
        answers(&mut x, N).await
    };
    let unroutable = async {
        for i in 0..N {
            y.publish(&format!("y{i}"), "voice", json!(i)).await;
        }
        answers(&mut y, N).await
    };
    let (routed, unroutable) = tokio::join!(routed, unroutable);
    assert_eq!(routed, (N, 0, 0), "routed: acks, no_route, other");
    assert_eq!(unroutable, (0, N, 0), "unroutable: acks, no_route, other");
    x.close().await;
    y.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_request_is_answered_by_the_reply_a_service_sends_to_reply_to() {
    let env = TestEnv::new("request-reply").await;
    let gw = TestGateway::start(&env).await;
    let mut inbound = env.consume_inbound("tickets").await;
    let mut c = TestClient::connect(&gw.url()).await;
    c.request("q1", "tickets", Some(5_000), json!({"op": "create"}))
        .await;
    let req = next_delivery(&mut inbound, Duration::from_secs(5)).await;
    let p = &req.properties;
    // Replies go to the outbound stream with the session named in the correlation id.
    let (correlation, reply_to) = (format!("{}/q1", c.session()), env.names.outbound_stream());
    assert_eq!(
        p.correlation_id().as_ref().map(|s| s.to_string()),
        Some(correlation)
    );
    assert_eq!(p.reply_to().as_ref().map(|s| s.to_string()), Some(reply_to));
    assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("5000"));
    env.reply_to(&req, r#"{"ticket": 7}"#, None).await;
    ack(&req).await;
    let reply = c.expect_reply("q1").await;
    assert_eq!(reply.message.get(), r#"{"ticket": 7}"#);
    c.ack_deliveries(reply.seq).await;

    // A refusal comes back as an error with the service's code.
    c.request("q2", "tickets", Some(5_000), json!({"op": "get"}))
        .await;
    env.answer_next(
        &mut inbound,
        r#"{"message": "no such ticket"}"#,
        Some("rejected"),
    )
    .await;
    let e = c.expect_error_code(Some("q2"), ErrorCode::Rejected).await;
    assert_eq!(e.message, "no such ticket");
    assert!(e.seq.is_some());
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_request_nobody_answers_gets_timeout() {
    let env = TestEnv::new("request-timeout").await;
    let gw = TestGateway::start(&env).await;
    // A consumer that takes the request and never answers: a stuck service. (With
    // nothing consuming the channel the answer would be `no_service`, at once.)
    let mut stuck = env.consume_inbound("tickets").await;
    let mut c = TestClient::connect(&gw.url()).await;
    let started = std::time::Instant::now();
    c.request("slow", "tickets", Some(300), json!({})).await;
    let _taken = next_delivery(&mut stuck, Duration::from_secs(5)).await;
    c.expect_error_code(Some("slow"), ErrorCode::Timeout).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn many_publishes_in_flight_are_all_acked() {
    let env = TestEnv::new("pipelined").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect(&gw.url()).await;
    for i in 0..200 {
        c.publish(&format!("m{i}"), "chat", json!({ "i": i })).await;
    }
    for i in 0..200 {
        c.expect_ack(&format!("m{i}")).await;
    }
    assert_eq!(
        env.message_count(&env.names.channel_queue("chat")).await,
        Some(200)
    );
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}
