//! Bad input never kills a connection: each malformed, unknown, mistyped, oversized
//! or forbidden frame is answered by an `error` with its registry code, and the same
//! connection keeps working. Only a stream that cannot go on is closed with a code.

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_protocol::ErrorCode;

#[tokio::test]
async fn each_malformed_input_gets_its_documented_code_and_the_connection_still_publishes() {
    let env = TestEnv::new("malformed").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect(&gw.url()).await;
    let oversized = format!(
        r#"{{"type":"publish","id":"big","channel":"chat","message":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    // (what, text, error id, code)
    let table: Vec<(&str, String, Option<&str>, ErrorCode)> = vec![
        ("not JSON", "{nope".into(), None, ErrorCode::Malformed),
        ("empty text", "".into(), None, ErrorCode::Malformed),
        ("JSON that is not an object", "[1,2]".into(), None, ErrorCode::Invalid),
        ("object without type", r#"{"id":"a"}"#.into(), Some("a"), ErrorCode::Invalid),
        ("unknown type", r#"{"type":"teleport","id":"x1"}"#.into(), Some("x1"), ErrorCode::UnknownType),
        ("missing channel", r#"{"type":"publish","id":"m2","message":{}}"#.into(), Some("m2"), ErrorCode::Invalid),
        ("mistyped seq", r#"{"type":"ack_deliveries","seq":"ten"}"#.into(), None, ErrorCode::Invalid),
        ("mistyped id", r#"{"type":"publish","id":7,"channel":"chat","message":1}"#.into(), None, ErrorCode::Invalid),
        ("unknown channel", r#"{"type":"publish","id":"m3","channel":"nope","message":1}"#.into(), Some("m3"), ErrorCode::UnknownChannel),
        ("group with a dot", r#"{"type":"subscribe","id":"m4","channel":"chat","groups":["a.b"]}"#.into(), Some("m4"), ErrorCode::Invalid),
        ("wildcard subject", r#"{"type":"publish","id":"m5","channel":"chat","subject":"x.*","message":1}"#.into(), Some("m5"), ErrorCode::Invalid),
        ("reserved header", r#"{"type":"publish","id":"m6","channel":"chat","headers":{"x-warren-user":"eve"},"message":1}"#.into(), Some("m6"), ErrorCode::Forbidden),
        ("zero timeout", r#"{"type":"request","id":"m7","channel":"tickets","timeout_ms":0,"message":1}"#.into(), Some("m7"), ErrorCode::Invalid),
        ("bad topic", r#"{"type":"subscribe","id":"m8","channel":"chat","topic":"a..b"}"#.into(), Some("m8"), ErrorCode::Invalid),
        ("bad direct target", r#"{"type":"publish","id":"m9","channel":"chat","distribution":{"direct":["a b"]},"message":1}"#.into(), Some("m9"), ErrorCode::Invalid),
        ("second hello", r#"{"type":"hello"}"#.into(), None, ErrorCode::Invalid),
        ("POC packet without channel", r#"{"id":"p0","channel":{"chat":false},"packet_action":"publish","message":{}}"#.into(), Some("p0"), ErrorCode::Invalid),
        ("frame over max_frame_bytes", oversized, None, ErrorCode::TooLarge),
    ];
    assert!(table.len() >= 10);
    for (what, text, id, code) in &table {
        c.send_text(text).await;
        let e = c.expect_error(*id).await;
        assert_eq!(e.code, *code, "{what}: {e:?}");
        assert!(!e.message.is_empty(), "{what}: the error explains itself");
    }
    c.send_binary(&[1, 2, 3]).await;
    c.expect_error_code(None, ErrorCode::Unsupported).await;

    c.publish("after", "chat", json!({"still": "works"})).await;
    c.expect_ack("after").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn too_many_bad_frames_in_a_row_close_the_connection_with_too_many_errors() {
    let env = TestEnv::new("too-many").await;
    let gw = TestGateway::start_with(&env, |c| c.max_consecutive_errors = 5).await;
    let mut c = TestClient::connect(&gw.url()).await;
    for _ in 0..4 {
        c.send_text("{nope").await;
        c.expect_error_code(None, ErrorCode::Malformed).await;
    }
    // A good frame resets the count.
    c.publish("ok", "chat", json!(1)).await;
    c.expect_ack("ok").await;
    for _ in 0..5 {
        c.send_text("{nope").await;
    }
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(4003));
    gw.shutdown().await;
    env.cleanup().await;
}

/// A `hello` that opens the session is an accepted frame: it ends a row of bad
/// frames before it (unreadable `hello`s, answered and waited past), as PROTOCOL.md's
/// 4003 row says. The row went on, and the session's first refused frame could close
/// it.
#[tokio::test]
async fn a_hello_that_opens_the_session_ends_the_row_of_bad_frames_before_it() {
    let env = TestEnv::new("hello-resets").await;
    let gw = TestGateway::start_with(&env, |c| c.max_consecutive_errors = 4).await;
    let mut c = TestClient::connect_raw(&gw.url()).await;
    for _ in 0..3 {
        c.send_text(r#"{"type":"hello","position":"nope"}"#).await;
        c.expect_error_code(None, ErrorCode::Invalid).await;
    }
    c.send_text(r#"{"type":"hello"}"#).await;
    let welcome = c.recv_raw(Duration::from_secs(5)).await.expect("a welcome");
    assert!(welcome.contains(r#""type":"welcome""#), "{welcome}");
    for _ in 0..3 {
        c.send_text("{nope").await;
        c.expect_error_code(None, ErrorCode::Malformed).await;
    }
    c.publish("ok", "chat", json!(1)).await;
    c.expect_ack("ok").await;
    assert_eq!(c.close_code, None);
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_frame_beyond_the_hard_cap_closes_with_message_too_big() {
    let env = TestEnv::new("hard-cap").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect(&gw.url()).await;
    c.send_text(&"x".repeat(2 * 1024 * 1024)).await;
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(1009));
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_silent_client_is_pinged_and_closed_with_heartbeat_timeout() {
    let env = TestEnv::new("heartbeat").await;
    let gw = TestGateway::start_with(&env, |c| c.heartbeat_ms = 200).await;
    let mut c = TestClient::connect_raw(&gw.url()).await;
    c.send_text(r#"{"type":"hello"}"#).await;
    // Read raw frames without answering pings.
    let mut saw_ping = false;
    let code = loop {
        match c.recv_raw(Duration::from_secs(5)).await {
            Some(text) => saw_ping |= text.contains(r#""type":"ping""#),
            None => break c.close_code,
        }
    };
    assert!(saw_ping, "the gateway pings a silent client");
    assert_eq!(code, Some(4000));
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let env = TestEnv::new("heartbeat-ok").await;
    let gw = TestGateway::start_with(&env, |c| c.heartbeat_ms = 200).await;
    let mut c = TestClient::connect(&gw.url()).await;
    // recv_within answers pings automatically.
    assert!(c.recv_within(Duration::from_millis(1200)).await.is_none());
    assert_eq!(c.close_code, None);
    c.publish("p", "chat", json!(1)).await;
    c.expect_ack("p").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}
