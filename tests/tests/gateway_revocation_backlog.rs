//! What a session no longer subscribes to stops at once, also what the hub had already
//! pushed towards its socket: with a small delivery window a client that does not
//! acknowledge leaves messages waiting between the hub and its socket (up to the live
//! backlog); an `unsubscribe`, or a refreshed token that no longer grants a group,
//! must not let those through once the client acknowledges again.

use std::time::Duration;

use serde_json::{json, Value};
use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::jwt::{now, sign, SECRET};
use warren_gateway::{AuthMode, Config};
use warren_protocol::{ClientFrame, ErrorCode, Hello, Refresh, Subscribe};

/// Long enough for the hub to read what was published and push it to the inbox.
const SETTLE: Duration = Duration::from_millis(600);
const QUIET: Duration = Duration::from_millis(500);

/// The revoked key's messages published while the window was full.
const WAITING: usize = 20;

fn jwt(c: &mut Config) {
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    c.auth.jwt.issuer = Some("warren-tests".into());
    c.auth.jwt.audience = Some("warren".into());
    c.auth.jwt.leeway_s = 0;
}

/// A token for `user` valid for ten minutes granting `groups` of `chat`.
fn token(user: &str, groups: &[&str]) -> String {
    let claims: Value = json!({
        "sub": user, "exp": now() + 600, "iss": "warren-tests", "aud": "warren",
        "groups": groups, "topics": [],
        "channels": {"chat": ["publish", "subscribe"]}
    });
    sign(&claims, SECRET.as_bytes())
}

/// Publishes [`WAITING`] messages to `key` for a client whose window is 2: it gets
/// two, the rest wait for its acknowledgement. Returns the second's `seq`.
async fn fill_the_window(env: &TestEnv, c: &mut TestClient, key: &str) -> u64 {
    for i in 0..WAITING {
        env.publish_out(key, &format!("old-{i}"), "1").await;
    }
    let first = c.expect_deliver().await;
    let second = c.expect_deliver().await;
    assert!(first.message_id.starts_with("old-") && second.message_id.starts_with("old-"));
    c.expect_no_deliver(SETTLE).await;
    second.seq
}

/// After the acknowledgement the next delivery is `after`, published to a key still
/// held: nothing of the revoked key came in between, and none follows.
async fn expect_only(env: &TestEnv, c: &mut TestClient, acked: u64, key: &str) {
    c.ack_deliveries(acked).await;
    env.publish_out(key, "after", "2").await;
    let next = c.expect_deliver().await;
    assert_eq!(
        next.message_id, "after",
        "a message of the revoked key came after the revocation: {next:?}"
    );
    c.ack_deliveries(next.seq).await;
    c.expect_no_deliver(QUIET).await;
}

#[tokio::test]
async fn an_unsubscribe_stops_what_was_already_waiting_for_the_socket() {
    let env = TestEnv::new("revoke-unsub").await;
    let gw = TestGateway::start_with(&env, |c| c.delivery_window = 2).await;
    let mut c = TestClient::connect_with(
        &gw.url(),
        Hello {
            token: Some("u".into()),
            ..Default::default()
        },
    )
    .await;
    c.subscribe(sub("all", "chat")).await;
    c.subscribe(Subscribe {
        broadcast: Some(false),
        groups: vec!["g".into()],
        ..sub("g", "chat")
    })
    .await;
    let acked = fill_the_window(&env, &mut c, "chat.group.g").await;
    c.send(&ClientFrame::Unsubscribe(Subscribe {
        broadcast: Some(false),
        groups: vec!["g".into()],
        ..sub("u1", "chat")
    }))
    .await;
    c.expect_ack("u1").await;
    expect_only(&env, &mut c, acked, "chat.all").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_refresh_revoking_a_group_stops_what_was_already_waiting_for_the_socket() {
    let env = TestEnv::new("revoke-refresh").await;
    let gw = TestGateway::start_with(&env, |c| {
        jwt(c);
        c.delivery_window = 2;
    })
    .await;
    let mut c = TestClient::connect_with(
        &gw.url(),
        Hello {
            token: Some(token("ada", &["room-1", "room-2"])),
            ..Default::default()
        },
    )
    .await;
    c.subscribe(Subscribe {
        broadcast: Some(false),
        groups: vec!["room-1".into(), "room-2".into()],
        ..sub("s1", "chat")
    })
    .await;
    let acked = fill_the_window(&env, &mut c, "chat.group.room-1").await;
    c.send(&ClientFrame::Refresh(Refresh {
        id: "r1".into(),
        token: token("ada", &["room-2"]),
    }))
    .await;
    let e = c.expect_error_code(None, ErrorCode::Forbidden).await;
    assert!(e.message.contains("chat.group.room-1"), "{e:?}");
    c.expect_ack("r1").await;
    expect_only(&env, &mut c, acked, "chat.group.room-2").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}
