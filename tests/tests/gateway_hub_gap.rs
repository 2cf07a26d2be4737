//! A hub reader that starts again after its broker connection was lost reads on from
//! the position after the last one it read. When retention dropped that position
//! meanwhile, the first message it gets is further on: its live sessions are told how
//! many positions they missed (`error session_expired`), never skipped past them in
//! silence. The broker connection is closed with `rabbitmqctl` (the test fails where
//! that tool is not usable, unless WARREN_ALLOW_SKIP=1); the hub's restart is held back through the
//! environment of this process (its own test binary) while the stream is filled.

use std::time::Duration;

use warren_e2e::client::{skips_told, sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::rabbitmqctl::cut_gateway_connections;
use warren_e2e::stream_protocol::{stream_addr, StreamConnection};
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
        if cut_gateway_connections("a hub reader's gap", &node)
            .await
            .is_none()
        {
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
        // What is still retained follows, in order, once, and with no other notice.
        let mut rest = Vec::new();
        while let Some(f) = c.recv_within(Duration::from_secs(2)).await {
            rest.push(f);
        }
        let told = skips_told(first.position.expect("a position"), &rest);
        assert!(told.notices.is_empty(), "told once: {told:?}");
        assert_eq!(told.last, "b299", "what is still retained follows");
        assert_eq!(c.close_code, None, "never closed");
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A hub that started on an empty stream became ready having read nothing, and its
/// sessions joined live. Its reader, starting again after its broker connection was
/// lost, reads from the stream's start: what services published meanwhile, in
/// several chunks, all reaches the live session. It started at the stream's last
/// chunk, and skipped the others in silence, for good (the client's position moved
/// past them).
#[tokio::test]
async fn a_hub_that_had_read_nothing_misses_nothing_published_while_its_reader_was_away() {
    std::env::set_var(HUB_RESTART_DELAY_MS, "8000");
    TestEnv::run("hub-empty-restart", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let node = gw.gateway().config().node.clone();
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        if cut_gateway_connections("a hub reader that had read nothing", &node)
            .await
            .is_none()
        {
            gw.shutdown().await;
            return;
        }
        // One confirmed publish after another: a chunk each. (The hub reads again
        // only after its restart delay.)
        for i in 0..3 {
            env.publish_out("chat.all", &format!("v{i}"), "0").await;
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            match c.recv_within(Duration::from_secs(30)).await {
                Some(ServerFrame::Deliver(d)) => got.push(d.message_id.clone()),
                Some(ServerFrame::Error(e)) => panic!("after {got:?}: {e:?}"),
                Some(_) => {}
                None => panic!("only {got:?} of v0, v1, v2 arrived"),
            }
        }
        assert_eq!(got, ["v0", "v1", "v2"]);
        c.expect_quiet(Duration::from_millis(300)).await;
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

/// A stream-protocol consumer with server-side offset tracking on the outbound stream
/// (an audit reader, say): each offset it stores takes a stream position that holds
/// no message, so two stores with no message between them are a skip of two. The gap
/// checks took that for retention's: a live session was told `session_expired` for
/// positions nobody missed, and so was a resume read from the stream across them.
#[tokio::test]
async fn offsets_a_stream_consumer_stores_in_the_stream_are_no_loss() {
    TestEnv::run("hub-tracking", LIMIT, async |env| {
        // A ring of two: the resume below reads from the stream, not from memory.
        let gw = TestGateway::start_with(env, |c| c.hub_buffer_messages = 2).await;
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        // Says when the hub has read what was published.
        let mut watcher = TestClient::connect(&gw.url()).await;
        watcher.subscribe(sub("all", "chat")).await;
        env.publish_out("chat.all", "m0", "0").await;
        let m0 = c.expect_deliver().await;
        c.ack_deliveries(m0.seq).await;
        let hello = c.resume_hello();
        let m0_at = m0.position.expect("a position");

        let stream = env.names.outbound_stream();
        let mut tracking = StreamConnection::open(&stream_addr()).await;
        two_stores(&mut tracking, &stream, 0).await;
        env.publish_out("chat.all", "m1", "1").await;
        // Live: the next frame is m1, with no notice before it.
        let frame = c.recv_within(Duration::from_secs(10)).await;
        let Some(ServerFrame::Deliver(m1)) = frame else {
            panic!("m1 came live, nothing before it; got {frame:?}");
        };
        let m1_at = m1.position.expect("a position");
        assert!(
            m1_at >= m0_at + 3,
            "the two stores took positions between m0 ({m0_at}) and m1 ({m1_at})"
        );

        // A resume from m0, behind the ring: read from the stream across the stores.
        c.abort();
        two_stores(&mut tracking, &stream, 1).await;
        for id in ["m2", "m3", "m4"] {
            env.publish_out("chat.all", id, "2").await;
        }
        let read: Vec<String> = watcher
            .expect_delivers(5)
            .await
            .into_iter()
            .map(|d| d.message_id)
            .collect();
        assert_eq!(
            read,
            ["m0", "m1", "m2", "m3", "m4"],
            "the hub read them all"
        );
        let mut c = TestClient::connect_with(&gw.url(), hello).await;
        assert!(c.welcome().resumed);
        // Opening a stream reader and looking at the stream take a while on a busy
        // machine: up to 10 s for each frame, and 1 s more after the last.
        let mut got = Vec::new();
        let mut wait = Duration::from_secs(10);
        while let Some(f) = c.recv_within(wait).await {
            match f {
                ServerFrame::Deliver(d) => got.push(d.message_id.clone()),
                ServerFrame::Error(e) => panic!("{e:?} after {got:?}"),
                _ => {}
            }
            if got.len() == 4 {
                wait = Duration::from_secs(1);
            }
        }
        assert_eq!(got, ["m1", "m2", "m3", "m4"]);
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// Stores offsets `from` and `from + 1` of consumer `audit` on `stream`, apart in
/// time: two stores sent together share one position.
async fn two_stores(tracking: &mut StreamConnection, stream: &str, from: u64) {
    for offset in [from, from + 1] {
        tracking.store_offset("audit", stream, offset).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
