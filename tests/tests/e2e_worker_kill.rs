//! End to end: a worker killed (SIGKILL) while it holds a client's request loses
//! nothing — RabbitMQ redelivers the message to the next worker, and the client's
//! `writeAndWait` still resolves with the answer.

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::service::{start_demo_with, wait_until_held, DemoProcess};
use warren_protocol::ServerFrame;
use warren_service::demo::{DemoChannel, DemoOptions};

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_worker_killed_before_acking_is_replaced_and_the_clients_request_still_resolves() {
    TestEnv::run("e2e-worker-kill", LIMIT, async |env| {
        let gateway = TestGateway::start(env).await;
        let mut stuck = DemoProcess::spawn(
            &env.namespace,
            &["--delay-ms", "60000", "--only", "tickets"],
        )
        .await;
        let mut client = TestClient::connect(&gateway.url()).await;
        client
            .request(
                "k1",
                "tickets",
                Some(30_000),
                json!({"op": "create", "title": "survives a crash"}),
            )
            .await;

        // Wait until the stuck worker holds the message: delivered to it and not
        // acknowledged (none ready, one consumer; no ready message alone holds before
        // the request reached the queue too).
        wait_until_held(
            &env.names.channel_queue("tickets"),
            1,
            Duration::from_secs(15),
        )
        .await;
        let early = client.recv_within(Duration::from_millis(300)).await;
        assert!(
            !matches!(early, Some(ServerFrame::Reply(_))),
            "no reply while the worker is stuck: {early:?}"
        );

        stuck.kill().await;
        let demo = start_demo_with(
            &env.namespace,
            DemoOptions {
                channels: vec![DemoChannel::Tickets],
                ..DemoOptions::default()
            },
        )
        .await;
        let reply = client.expect_reply("k1").await;
        let ticket: serde_json::Value = serde_json::from_str(reply.message.get()).unwrap();
        assert_eq!(ticket["title"], "survives a crash");
        client.ack_deliveries(reply.seq).await;

        client.close().await;
        demo.stop().await.unwrap();
        gateway.shutdown().await;
    })
    .await;
}
