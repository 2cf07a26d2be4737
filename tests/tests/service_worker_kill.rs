//! Worker failure without a gateway: a `warren-demo-service` process killed (SIGKILL)
//! while it holds a request loses nothing — RabbitMQ redelivers the message to the
//! next worker and the request is answered. Also: the binary prints `READY` and stops
//! cleanly on SIGTERM.

use std::time::Duration;

use warren_e2e::service::{
    in_fresh_namespace, start_demo_with, wait_until_held, DemoProcess, StandInGateway,
};
use warren_service::demo::{DemoChannel, DemoOptions};

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_worker_killed_before_acking_has_its_request_redelivered_and_answered_by_the_next() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let mut stuck =
            DemoProcess::spawn(&ns, &["--delay-ms", "60000", "--only", "tickets"]).await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        gw.send_request(
            "tickets",
            "k1",
            r#"{"op":"create","title":"survives a crash"}"#,
            Duration::from_secs(60),
        )
        .await;

        // The stuck worker holds the message once it is no longer ready in the queue.
        wait_until_held(
            &gw.names.channel_queue("tickets"),
            1,
            Duration::from_secs(15),
        )
        .await;
        assert!(gw.next_reply(Duration::from_millis(300)).await.is_none());

        stuck.kill().await;
        let demo = start_demo_with(
            &ns,
            DemoOptions {
                channels: vec![DemoChannel::Tickets],
                ..DemoOptions::default()
            },
        )
        .await;
        let reply = gw
            .next_reply(Duration::from_secs(20))
            .await
            .expect("the next worker answered");
        assert_eq!(reply.correlation_id.as_deref(), Some("k1"));
        assert_eq!(reply.error, None);
        assert_eq!(reply.json()["title"], "survives a crash");
        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_demo_binary_serves_after_ready_and_exits_cleanly_on_sigterm() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let mut process = DemoProcess::spawn(&ns, &["--only", "echo"]).await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "e1", r#"{"ping":1}"#).await;
        assert_eq!(reply.body, br#"{"ping":1}"#);
        assert!(process.terminate().await, "exit status 0 after SIGTERM");
        gw.close().await;
    })
    .await;
}
