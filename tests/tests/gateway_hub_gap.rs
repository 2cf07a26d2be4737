//! A hub reader that starts again after its broker connection was lost reads on from
//! the position after the last one it read. When retention dropped that position
//! meanwhile, the first message it gets is further on: its live sessions are told how
//! many positions they missed (`error session_expired`), never skipped past them in
//! silence. The broker connection is closed with `rabbitmqctl` (the test fails where
//! that tool is not usable, unless WARREN_ALLOW_SKIP=1); the hub's restart is held back through the
//! environment of this process (its own test binary) while the stream is filled.

use std::time::Duration;

use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_gateway::fault::HUB_RESTART_DELAY_MS;
use warren_protocol::{ErrorCode, ServerFrame};

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn positions_retention_dropped_while_the_hub_was_away_are_reported_to_live_sessions() {
    // The hub waits this long before it reads again: time to publish past retention.
    std::env::set_var(HUB_RESTART_DELAY_MS, "8000");
    TestEnv::run("hub-gap", LIMIT, async |env| {
        // 2 MiB of retention in 1 MiB segments: 4.8 MiB of traffic drops the oldest.
        let gw = TestGateway::start_with(env, |c| {
            c.stream_max_bytes = 2 * 1024 * 1024;
            c.hub_buffer_messages = 10;
        })
        .await;
        let node = gw.gateway().config().node.clone();
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        env.publish_out("chat.all", "before", "0").await;
        let before = c.expect_deliver().await;
        let before_position = before.position.expect("a position");
        let closed = tokio::task::spawn_blocking(move || {
            warren_e2e::rabbitmqctl::close_gateway_connections(&node)
        })
        .await
        .unwrap();
        if let Err(why) = closed {
            warren_e2e::env::cannot_check("a hub reader's gap", &why);
            gw.shutdown().await;
            return;
        }
        let body = format!("\"{}\"", "x".repeat(16 * 1024));
        for i in 0..300 {
            env.publish_out("chat.all", &format!("b{i}"), &body).await;
        }
        // The live client is told what it missed before anything past it comes.
        // (The hub reads again only after its restart delay.)
        let e = loop {
            match c.recv_within(Duration::from_secs(30)).await {
                Some(ServerFrame::Error(e)) if e.code == ErrorCode::SessionExpired => break e,
                Some(ServerFrame::Deliver(d)) => panic!("a delivery before any notice: {d:?}"),
                Some(_) => {}
                None => panic!("no notice and no delivery"),
            }
        };
        let missed: u64 = e
            .message
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("the count comes first");
        assert!(missed > 0 && missed < 300, "{missed}: {e:?}");
        let first = c.expect_deliver().await;
        assert_eq!(
            first.position,
            Some(before_position + 1 + missed),
            "the count is every position between the last delivery and the next: {e:?}"
        );
        let mut last = first.message_id.clone();
        while let Some(f) = c.recv_within(Duration::from_secs(2)).await {
            if let ServerFrame::Deliver(d) = f {
                last = d.message_id.clone();
            }
        }
        assert_eq!(last, "b299", "what is still retained follows");
        assert_eq!(c.close_code, None, "never closed");
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A live session reading on across stream segments is told nothing is missing: each
/// segment RabbitMQ starts begins with a position that holds no message, which the
/// reader skips (the hub's gap check reported every one of them as retention loss).
#[tokio::test]
async fn a_live_session_reading_across_segments_misses_nothing_and_is_told_nothing() {
    TestEnv::run("hub-segments", LIMIT, async |env| {
        // 2 MiB of retention in 1 MiB segments: 300 × 16 KiB start four new ones.
        let gw = TestGateway::start_with(env, |c| {
            c.stream_max_bytes = 2 * 1024 * 1024;
            c.hub_buffer_messages = 10;
        })
        .await;
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        let body = format!("\"{}\"", "x".repeat(16 * 1024));
        for i in 0..300 {
            env.publish_out("chat.all", &format!("b{i}"), &body).await;
        }
        let mut got = Vec::new();
        let mut positions = Vec::new();
        while got.len() < 300 {
            match c.recv_within(Duration::from_secs(10)).await {
                Some(ServerFrame::Deliver(d)) => {
                    got.push(d.message_id.clone());
                    positions.extend(d.position);
                    c.ack_deliveries(d.seq).await;
                }
                Some(ServerFrame::Error(e)) => panic!("after {}: {e:?}", got.len()),
                Some(_) => {}
                None => panic!("only {} of 300 arrived", got.len()),
            }
        }
        let want: Vec<String> = (0..300).map(|i| format!("b{i}")).collect();
        assert_eq!(got, want);
        let skips = positions.windows(2).filter(|w| w[1] > w[0] + 1).count();
        assert!(
            skips > 0,
            "the segments began with positions without messages: {positions:?}"
        );
        c.expect_quiet(Duration::from_millis(300)).await;
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}
