//! A drain that lasts because RabbitMQ holds confirms back. Its own test binary: the
//! confirm delay is injected through the environment of this process.
//!
//! - A gateway that drains beside a live peer announces none of its sessions gone:
//!   its clients resume on the peer, which announces those that do not resume.
//! - A connection that ends for its own reason during the drain (too many errors)
//!   is closed with that reason's code, not the drain's 1001.

use std::time::{Duration, Instant};

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::presence::{listed, peers_heard, presence_config, Events, ANNOUNCE_MS, GRACE_MS};
use warren_gateway::fault::CONFIRM_DELAY_MS;
use warren_protocol::{Hello, ServerFrame};

/// How late each confirm is taken: longer than a peer's lifetime (3 × [`ANNOUNCE_MS`]).
const CONFIRM_DELAY: Duration = Duration::from_millis(1_500);

/// Its listeners stop when the drain begins; after a drain longer than its peers'
/// lifetime (three announcement intervals: here a confirm held back), it took itself
/// for alone and announced every session gone, those resumed on the peer too: a leave
/// and a join again for every user of a gateway drained while RabbitMQ held confirms
/// back.
#[tokio::test]
async fn a_gateway_draining_beside_a_live_peer_announces_no_session_gone() {
    let mut env = TestEnv::new("presence-drain-peer").await;
    std::env::set_var(CONFIRM_DELAY_MS, CONFIRM_DELAY.as_millis().to_string());
    let draining = |c: &mut warren_gateway::Config| {
        presence_config(c);
        c.shutdown_grace_ms = 3_000;
    };
    let gw = TestGateway::start_with(&env, draining).await;
    let other = TestGateway::start_with(&env, presence_config).await;
    let mut events = Events::listen(&mut env).await;
    let (ada, a) = events.connected(&gw, "ada").await;
    let (mut bob, b) = events.connected(&gw, "bob").await;
    peers_heard().await;
    // bob's publish awaits its confirm: the drain lasts until it comes.
    // (Read before the drain begins: a drain with no confirm pending reads nothing
    // more, and the client sends again what was not acknowledged.)
    bob.publish("held", "chat", json!({"n": 1})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resume = Hello {
        token: Some("ada".into()),
        ..ada.resume_hello()
    };
    let drained = Instant::now();
    let stop = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    ada.abort();
    let again = TestClient::connect_with(&other.url(), resume).await;
    assert!(again.welcome().resumed);
    tokio::time::timeout(Duration::from_secs(15), stop)
        .await
        .expect("the drain ends")
        .expect("no panic");
    let took = drained.elapsed();
    assert!(
        took > Duration::from_millis(ANNOUNCE_MS * 3),
        "the drain outlasted the peer's lifetime: {:?}",
        drained.elapsed()
    );
    bob.abort();
    // bob did not resume: the peer announces him gone after the grace.
    let (v, _) = events
        .wait_for(
            "client.disconnected",
            &b,
            Duration::from_millis(GRACE_MS + 5_000),
        )
        .await;
    assert_eq!(v["reason"], "gateway_lost", "{v}");
    events.collect(Duration::from_millis(500)).await;
    let counts = events.counts();
    assert_eq!(
        events.count(&a, "client.disconnected"),
        0,
        "ada resumed on the peer: {counts:?}"
    );
    assert_eq!(events.count(&a, "client.connected"), 1, "{counts:?}");
    assert_eq!(events.count(&b, "client.disconnected"), 1, "{counts:?}");
    assert_eq!(listed(&other, "").await.as_array().map(Vec::len), Some(1));
    again.close().await;
    other.shutdown().await;
    env.cleanup().await;
}

/// A client that sends unreadable frames while its connection drains (its publish
/// awaiting a held confirm) is closed with `4003 too_many_errors`, as at any other
/// time. The drain closed it with `1001 going_away` whatever ended it, so a client
/// stuck sending bad frames reconnected as if the gateway had only moved.
#[tokio::test]
async fn a_connection_ending_for_its_own_reason_during_a_drain_gets_its_own_close_code() {
    std::env::set_var(CONFIRM_DELAY_MS, CONFIRM_DELAY.as_millis().to_string());
    let env = TestEnv::new("drain-own-close").await;
    let gw = TestGateway::start_with(&env, |c| {
        c.max_consecutive_errors = 3;
        c.shutdown_grace_ms = 5_000;
    })
    .await;
    let mut client = TestClient::connect(&gw.url()).await;
    client.publish("held", "chat", json!({"n": 1})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = tokio::spawn(gw.shutdown());
    match client.recv_within(Duration::from_secs(5)).await {
        Some(warren_protocol::ServerFrame::Drain(_)) => {}
        other => panic!("expected drain, got {other:?}"),
    }
    for _ in 0..3 {
        client.send_text("{").await;
    }
    assert_eq!(
        client.expect_close(Duration::from_secs(5)).await,
        Some(4003),
        "too_many_errors, not going_away"
    );
    tokio::time::timeout(Duration::from_secs(15), stop)
        .await
        .expect("the drain ends")
        .expect("no panic");
    env.cleanup().await;
}

/// A draining connection is read only while fewer than `max_pending_confirms` of its
/// writes await their confirms, as outside a drain: a client publishing on through
/// the drain (an SDK flushing its outbox) had every write read and published, as
/// many as its frame rate allows in `shutdown_grace_ms`. What is not read is sent
/// again by the client where it resumes.
#[tokio::test]
async fn a_draining_connection_is_read_only_while_confirms_have_room() {
    TestEnv::run(
        "drain-pending-bound",
        Duration::from_secs(60),
        async |env| {
            std::env::set_var(CONFIRM_DELAY_MS, CONFIRM_DELAY.as_millis().to_string());
            let gw = TestGateway::start_with(env, |c| {
                c.max_pending_confirms = 1;
                c.shutdown_grace_ms = 5_000;
            })
            .await;
            let mut c = TestClient::connect(&gw.url()).await;
            c.publish("p0", "chat", json!(0)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let stop = tokio::spawn(gw.shutdown());
            tokio::time::sleep(Duration::from_millis(100)).await;
            for i in 1..=5 {
                c.publish(&format!("p{i}"), "chat", json!(i)).await;
            }
            let mut acked = Vec::new();
            while let Some(f) = c.recv_within(Duration::from_secs(10)).await {
                match f {
                    ServerFrame::Ack(a) => acked.push(a.id),
                    ServerFrame::Drain(_) => {}
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(c.expect_close(Duration::from_secs(1)).await, Some(1001));
            assert_eq!(acked, ["p0"], "one write pending at a time, then closed");
            tokio::time::timeout(Duration::from_secs(15), stop)
                .await
                .expect("the drain ends")
                .expect("no panic");
            let inbound = env.names.channel_queue("chat");
            assert_eq!(env.message_count(&inbound).await, Some(1));
        },
    )
    .await;
}
