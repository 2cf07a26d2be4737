//! A `hello` the gateway cannot read opens no session: it is answered `invalid` and
//! the client may send a correct one. Before, the gateway opened a session from an
//! empty hello, without the hello's token and resume: in jwt mode a `4501
//! unauthorized` that stops the client for good, without auth an anonymous session for
//! a client that named its user.

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::jwt::{now, sign, SECRET};
use warren_gateway::{AuthMode, Config};
use warren_protocol::{ClientFrame, ErrorCode, Hello, ServerFrame};

fn jwt(c: &mut Config) {
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    c.auth.jwt.leeway_s = 0;
}

fn token(user: &str) -> String {
    let claims = json!({"sub": user, "exp": now() + 600, "channels": {"chat": ["subscribe"]}});
    sign(&claims, SECRET.as_bytes())
}

/// Sends `bad` as the first frame: answered `invalid` (no id), the connection stays
/// open without a session, and a correct hello then opens one for the token's user.
async fn refused_then_corrected(gw: &TestGateway, bad: String, token: &str) {
    let mut c = TestClient::connect_raw(&gw.url()).await;
    c.send_text(&bad).await;
    let e = c.expect_error_code(None, ErrorCode::Invalid).await;
    assert!(e.message.starts_with("hello:"), "{bad}: {e:?}");
    c.send(&ClientFrame::Hello(Hello {
        token: Some(token.into()),
        ..Default::default()
    }))
    .await;
    match c.recv().await {
        ServerFrame::Welcome(w) => {
            assert_eq!(w.user, "alice", "{bad}");
            assert!(!w.resumed && w.notice.is_none(), "{bad}: {w:?}");
        }
        other => panic!("{bad}: expected a welcome, got {other:?}"),
    }
    c.close().await;
}

#[tokio::test]
async fn a_hello_that_cannot_be_read_opens_no_session_and_a_correct_one_follows() {
    let env = TestEnv::new("bad-hello").await;
    let gw = TestGateway::start_with(&env, jwt).await;
    let t = token("alice");
    let positions: serde_json::Map<String, serde_json::Value> =
        (0..300).map(|i| (format!("c{i}"), json!(i))).collect();
    for bad in [
        // Past u64 (past 2^53 − 1 but within u64 is a fresh session with notice
        // `invalid`: gateway_session).
        format!(r#"{{"type":"hello","token":"{t}","position":18446744073709551616}}"#),
        json!({"type": "hello", "token": t, "position": -1}).to_string(),
        json!({"type": "hello", "token": t, "protocol": 4294967296u64}).to_string(),
        json!({"type": "hello", "token": t, "subscriptions": [{"channel": "chat"}]}).to_string(),
        // More positions than a gateway has channel streams (MAX_POSITIONS).
        json!({"type": "hello", "token": t, "positions": positions}).to_string(),
    ] {
        refused_then_corrected(&gw, bad, &t).await;
    }
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn without_auth_a_hello_that_cannot_be_read_opens_no_anonymous_session() {
    let env = TestEnv::new("bad-hello-none").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect_raw(&gw.url()).await;
    c.send_text(&json!({"type": "hello", "token": "bob", "position": -1}).to_string())
        .await;
    let e = c.expect_error_code(None, ErrorCode::Invalid).await;
    assert!(e.message.starts_with("hello:"), "{e:?}");
    c.send(&ClientFrame::Hello(Hello {
        token: Some("bob".into()),
        ..Default::default()
    }))
    .await;
    match c.recv().await {
        ServerFrame::Welcome(w) => assert_eq!(w.user, "bob"),
        other => panic!("expected a welcome, got {other:?}"),
    }
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// A `hello` over `max_frame_bytes` (a resume naming some 1,900 subscriptions) is
/// answered `too_large` and opens nothing; a correct one follows. It used to open a
/// session from an empty hello: in jwt mode a 4501 that stops the client for good.
/// (Up to 4 KiB over the limit: past that, before a session, the socket is dropped.)
#[tokio::test]
async fn a_hello_over_max_frame_bytes_opens_no_session_and_a_correct_one_follows() {
    let env = TestEnv::new("bad-hello-large").await;
    let gw = TestGateway::start_with(&env, jwt).await;
    let t = token("alice");
    let hello_of = |n: usize| {
        let subscriptions: Vec<serde_json::Value> = (0..n)
            .map(|i| json!({"id": format!("s{i:05}"), "channel": "chat"}))
            .collect();
        json!({"type": "hello", "token": t, "subscriptions": subscriptions}).to_string()
    };
    // Every subscription takes as many bytes: as many as make the limit plus 1,000.
    let per = hello_of(2).len() - hello_of(1).len();
    let hello = hello_of((64 * 1024 + 1_000 - hello_of(0).len()) / per + 1);
    assert!(hello.len() < 64 * 1024 + 2_000, "{} bytes", hello.len());
    let mut c = TestClient::connect_raw(&gw.url()).await;
    c.send_text(&hello).await;
    let e = c.expect_error_code(None, ErrorCode::TooLarge).await;
    assert!(e.message.contains("max_frame_bytes"), "{e:?}");
    c.send(&ClientFrame::Hello(Hello {
        token: Some(t.clone()),
        ..Default::default()
    }))
    .await;
    match c.recv().await {
        ServerFrame::Welcome(w) => assert_eq!(w.user, "alice"),
        other => panic!("expected a welcome, got {other:?}"),
    }
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// No correct hello in time: closed as any silent client is.
#[tokio::test]
async fn a_client_that_never_sends_a_readable_hello_is_closed_at_the_hello_timeout() {
    let env = TestEnv::new("bad-hello-timeout").await;
    let gw = TestGateway::start_with(&env, |c| c.hello_timeout_ms = 1_000).await;
    let mut c = TestClient::connect_raw(&gw.url()).await;
    c.send_text(&json!({"type": "hello", "position": -1}).to_string())
        .await;
    c.expect_error_code(None, ErrorCode::Invalid).await;
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(4500));
    gw.shutdown().await;
    env.cleanup().await;
}
