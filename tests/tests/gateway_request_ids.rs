//! A request id used again after its first request was answered `timeout`: with
//! direct replies the first request's late answer is dropped and does not answer the
//! second (it did: the reply to the first request went out as the second's, and the
//! second's own answer was dropped).

use std::time::Duration;

use warren_e2e::client::TestClient;
use warren_e2e::env::{ack, next_delivery, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_gateway::RequestReplies;
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
