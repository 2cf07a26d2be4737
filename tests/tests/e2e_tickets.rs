//! End to end: a browser-like WebSocket client makes `writeAndWait` calls through an
//! in-process gateway to the demo `tickets` service, over the real RabbitMQ.

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::service::start_demo;
use warren_protocol::{ErrorCode, Hello, ServerFrame};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn write_and_wait_round_trips_through_the_gateway_and_the_demo_tickets_service() {
    TestEnv::run("e2e-tickets", LIMIT, async |env| {
        let gateway = TestGateway::start(env).await;
        let demo = start_demo(&env.namespace).await;
        let hello = Hello {
            token: Some("alice".into()),
            ..Hello::default()
        };
        let mut client = TestClient::connect_with(&gateway.url(), hello).await;

        client
            .request(
                "t1",
                "tickets",
                Some(10_000),
                json!({"op": "create", "title": "printer"}),
            )
            .await;
        let reply = client.expect_reply("t1").await;
        let ticket: serde_json::Value = serde_json::from_str(reply.message.get()).unwrap();
        assert_eq!(ticket["id"], 1);
        assert_eq!(ticket["status"], "open");
        assert_eq!(ticket["created_by"], "alice");
        client.ack_deliveries(reply.seq).await;

        client
            .request("t2", "tickets", Some(10_000), json!({"op": "list"}))
            .await;
        let reply = client.expect_reply("t2").await;
        let list: serde_json::Value = serde_json::from_str(reply.message.get()).unwrap();
        assert_eq!(list["tickets"][0]["title"], "printer");
        client.ack_deliveries(reply.seq).await;

        client
            .request(
                "t3",
                "tickets",
                Some(10_000),
                json!({"op": "close", "id": 1}),
            )
            .await;
        let reply = client.expect_reply("t3").await;
        let closed: serde_json::Value = serde_json::from_str(reply.message.get()).unwrap();
        assert_eq!(closed["status"], "closed");
        client.ack_deliveries(reply.seq).await;

        // A refusal by the service arrives as an error frame with its code.
        client
            .request(
                "t4",
                "tickets",
                Some(10_000),
                json!({"op": "get", "id": 99}),
            )
            .await;
        let error = client
            .expect_error_code(Some("t4"), ErrorCode::Rejected)
            .await;
        assert!(error.message.contains("99"), "{error:?}");
        if let Some(seq) = error.seq {
            client.ack_deliveries(seq).await;
        }

        client
            .request("t5", "tickets", Some(10_000), json!({"op": "explode"}))
            .await;
        client
            .expect_error_code(Some("t5"), ErrorCode::Invalid)
            .await;

        // Nothing else is pending for the client.
        let extra = client.recv_within(Duration::from_millis(300)).await;
        assert!(
            !matches!(extra, Some(ServerFrame::Reply(_))),
            "no stray reply: {extra:?}"
        );
        client.close().await;
        demo.stop().await.unwrap();
        gateway.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn echo_answers_a_write_and_wait_with_the_same_message() {
    TestEnv::run("e2e-echo", LIMIT, async |env| {
        let gateway = TestGateway::start(env).await;
        let demo = start_demo(&env.namespace).await;
        let mut client = TestClient::connect(&gateway.url()).await;
        let message = json!({"n": 7, "nested": {"list": [1, 2, 3]}});
        client
            .request("e1", "echo", Some(10_000), message.clone())
            .await;
        let reply = client.expect_reply("e1").await;
        let back: serde_json::Value = serde_json::from_str(reply.message.get()).unwrap();
        assert_eq!(back, message);
        client.ack_deliveries(reply.seq).await;
        client.close().await;
        demo.stop().await.unwrap();
        gateway.shutdown().await;
    })
    .await;
}
