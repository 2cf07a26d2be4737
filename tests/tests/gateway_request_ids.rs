//! A request id used again after its first request was answered `timeout`: with
//! direct replies the first request's late answer is dropped and does not answer the
//! second (it did: the reply to the first request went out as the second's, and the
//! second's own answer was dropped). And ids never make two users' messages one
//! `message_id`.

use std::time::Duration;

use warren_e2e::client::TestClient;
use warren_e2e::env::{ack, next_delivery, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_gateway::RequestReplies;
use warren_protocol::frame::Hello;
use warren_protocol::ErrorCode;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_late_direct_answer_does_not_answer_a_newer_request_of_the_same_id() {
    TestEnv::run("request-ids", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.request_replies = RequestReplies::Direct).await;
        let mut inbound = env.consume_inbound("echo").await;
        let mut a = TestClient::connect(&gw.url()).await;

        a.request("q", "echo", Some(300), serde_json::json!({"n": 1}))
            .await;
        let first = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        a.expect_error_code(Some("q"), ErrorCode::Timeout).await;

        a.request("q", "echo", Some(10_000), serde_json::json!({"n": 2}))
            .await;
        let second = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        // The first request's answer comes late, while the second is pending.
        env.reply_to(&first, "{\"answer\":1}", None).await;
        ack(&first).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        env.reply_to(&second, "{\"answer\":2}", None).await;
        ack(&second).await;

        let r = a.expect_reply("q").await;
        assert_eq!(
            r.message.get(),
            "{\"answer\":2}",
            "the second request's own answer"
        );
        // Nothing more: no second reply for `q`, no error.
        a.expect_quiet(Duration::from_millis(500)).await;
        a.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// User ids may hold a `:`, and a message's `message_id` is `<user>:<id>`: user `a`
/// sending `b:c` and user `a:b` sending `c` were both `a:b:c`, one message to a
/// service's duplicate window, which dropped the second as a copy of the first or
/// answered it with the first's reply. An id with a `:` is now refused, so the user is
/// everything before the last `:`.
#[tokio::test]
async fn an_id_with_a_colon_is_refused_so_two_users_never_share_a_message_id() {
    TestEnv::run("request-ids-colon", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let mut inbound = env.consume_inbound("echo").await;
        let as_user = |user: &str| Hello {
            token: Some(user.into()),
            ..Default::default()
        };
        let mut a = TestClient::connect_with(&gw.url(), as_user("a")).await;
        let mut ab = TestClient::connect_with(&gw.url(), as_user("a:b")).await;
        assert_eq!(ab.welcome().user, "a:b");

        a.request("b:c", "echo", Some(5_000), serde_json::json!({"from": "a"}))
            .await;
        let e = a.expect_error_code(Some("b:c"), ErrorCode::Invalid).await;
        assert!(e.message.contains("`:`"), "says why: {}", e.message);
        a.publish("b:d", "echo", serde_json::json!({"from": "a"}))
            .await;
        a.expect_error_code(Some("b:d"), ErrorCode::Invalid).await;

        ab.request("c", "echo", Some(5_000), serde_json::json!({"from": "a:b"}))
            .await;
        let only = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        assert_eq!(
            only.properties.message_id().as_ref().map(|m| m.as_str()),
            Some("a:b:c")
        );
        assert_eq!(only.data, br#"{"from":"a:b"}"#);
        ack(&only).await;
        // Nothing of `a`'s reached the queue.
        assert!(
            tokio::time::timeout(
                Duration::from_millis(500),
                next_delivery(&mut inbound, Duration::from_secs(1))
            )
            .await
            .is_err(),
            "a's refused frames were not published"
        );
        a.close().await;
        ab.close().await;
        gw.shutdown().await;
    })
    .await;
}
