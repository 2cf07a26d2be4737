//! The gateway's RabbitMQ node is SIGKILLed and started again while an SDK client
//! writes steadily. The gateway notices, reconnects (its supervisor, not the client
//! requests), re-declares the topology and serves the client's session again; every
//! write resolves — acknowledged, or refused with the retryable `broker_unavailable` —
//! none vanishes, and every acknowledged write is in the (quorum) `IN_CHAT` queue
//! afterwards. The client also follows chat: what it read of the outbound stream
//! before the kill it is not given again, and a broadcast after the restart reaches
//! it once, in the same session (the gateway, reading again from position 3, finds
//! the same stream, not one deleted and declared again). A second run deletes the
//! node's data before starting it again: the client is told (`session_expired`, a
//! fresh session) and then served from the new stream. Runs on a private node (`warren_e2e::broker_node`), never on the
//! shared broker; fails where RabbitMQ's server scripts are not installed (skipped
//! with `WARREN_ALLOW_SKIP=1`).

use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_e2e::broker_node::{with_private_nodes, BrokerCluster};
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::sdk_driver::{envelope, payload, SdkClient};
use warren_protocol::ErrorCode;
use warren_sdk::{Config, SubscribeOptions};

/// Writes in the run (one every 20 ms).
const WRITES: usize = 600;
/// The node is killed after this many writes were started.
const FAULT_AFTER: usize = 150;
/// How soon after the node is back writes are acknowledged again: the gateway's
/// supervisor tries again at least every 2 s, then reconnects and declares its
/// topology; 10 s leaves room for a busy machine.
const BACK_WITHIN: Duration = Duration::from_secs(10);
/// The most writes refused `broker_unavailable`: 1 s of writes. No write is started
/// while the node is down (the loop waits for its kill and start); a write waits
/// `broker_wait_ms` (2 s) for the broker before it is refused, and the gateway
/// reconnects within about 2 s of the node's return, so only the few in flight at the
/// kill and those of the first moments after the return may be refused.
const REFUSED_MAX: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_under_writes_loses_no_acknowledged_write() {
    with_private_nodes(
        "fault_gateway_broker_restart",
        Duration::from_secs(240),
        run(),
    )
    .await;
}

#[tokio::test]
async fn a_broker_that_lost_its_data_gives_the_client_a_fresh_session_with_a_notice() {
    with_private_nodes(
        "fault_gateway_broker_restart",
        Duration::from_secs(240),
        lost_data(),
    )
    .await;
}

#[tokio::test]
async fn a_request_while_the_broker_is_away_is_refused_after_one_broker_wait() {
    with_private_nodes(
        "fault_gateway_broker_restart",
        Duration::from_secs(120),
        request_while_away(),
    )
    .await;
}

/// With RabbitMQ away, a `request` on a channel no service announces is refused
/// `broker_unavailable` after one `broker_wait_ms`, as the README says: the gateway
/// no longer first waits as long to ask RabbitMQ whether anything consumes the
/// channel's queue (2 × `broker_wait_ms` before).
async fn request_while_away() {
    const WAIT: Duration = Duration::from_secs(3);
    let mut cluster = BrokerCluster::single().await.expect("a private node boots");
    let uri = cluster.uri(0);
    let env = TestEnv::new("gw-broker-away-request").await;
    let gw = TestGateway::start_with(&env, |c| {
        c.amqp_uri = vec![uri.clone()];
        c.broker_wait_ms = WAIT.as_millis() as u64;
    })
    .await;
    let mut c = TestClient::connect(&gw.url()).await;
    cluster.stop_node(0).await.expect("node stopped");
    gw.wait_broker_away().await;
    let asked = Instant::now();
    c.request("r", "echo", Some(30_000), serde_json::json!(1))
        .await;
    c.expect_error_code(Some("r"), ErrorCode::BrokerUnavailable)
        .await;
    let took = asked.elapsed();
    assert!(
        took >= WAIT - Duration::from_millis(100) && took < WAIT + WAIT / 2,
        "refused after {took:?}, for a broker_wait_ms of {WAIT:?}"
    );
    c.close().await;
    gw.shutdown().await;
    cluster.shutdown().await;
    env.cleanup().await;
}

/// The node is SIGKILLed, its data deleted and it boots empty: the gateway declares
/// its topology again, and its reader finds the new outbound stream's tail below what
/// it had read. The client's session on the old stream is ended; its resume names a
/// position the new stream does not have, so it gets a fresh session and a
/// `session_expired` event instead of a silent wait, and then the next broadcast.
async fn lost_data() {
    let mut cluster = BrokerCluster::single().await.expect("a private node boots");
    let uri = cluster.uri(0);
    let env = TestEnv::new("gw-broker-wiped").await;
    let (gw, client) = gateway_and_client(&env, &uri, |_| {}, 11).await;
    follow_chat(&client, &uri, &env).await;

    cluster.kill_node(0).await.expect("node killed");
    cluster.wipe_node(0).expect("node wiped");
    cluster.start_node(0).await.expect("node started empty");

    // Told, in a fresh session; then served from the new stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    let told = || {
        let s = client.stats.lock().unwrap();
        let notices = s
            .errors
            .iter()
            .filter(|(e, _)| e.code == ErrorCode::SessionExpired)
            .count();
        (notices, s.sessions.iter().collect::<HashSet<_>>().len())
    };
    while told().0 == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        told(),
        (1, 2),
        "one session_expired event, one fresh session"
    );
    // The SDK subscribes the fresh session again; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_out(&uri, &env, "a0").await;
    wait_delivered(&client, &["b0", "b1", "b2", "a0"]).await;
    client.close().await;
    gw.shutdown().await;
    cluster.shutdown().await;
    env.cleanup().await;
}

/// A gateway on the node at `uri` (reconnecting quickly) and a connected SDK client of
/// it, configured by `tweak`.
async fn gateway_and_client(
    env: &TestEnv,
    uri: &str,
    tweak: impl FnOnce(&mut Config),
    seed: u64,
) -> (TestGateway, SdkClient) {
    let gw = TestGateway::start_with(env, |c| {
        c.amqp_uri = vec![uri.to_string()];
        c.broker_wait_ms = 2_000;
    })
    .await;
    let mut config = Config::new(vec![gw.url()]);
    config.backoff = warren_sdk::Backoff::new(100, 1_000);
    tweak(&mut config);
    let client = SdkClient::start(config, seed);
    client
        .ready(Duration::from_secs(10))
        .await
        .expect("the client connects");
    (gw, client)
}

/// The client subscribes to chat's broadcast and receives b0, b1 and b2, published to
/// the node at `uri`: it holds positions 0-2 of the outbound stream.
async fn follow_chat(client: &SdkClient, uri: &str, env: &TestEnv) {
    client.subscribe(SubscribeOptions {
        channel: "chat".into(),
        broadcast: Some(true),
        groups: Vec::new(),
        direct: false,
        topic: None,
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ["b0", "b1", "b2"];
    for id in before {
        publish_out(uri, env, id).await;
    }
    wait_delivered(client, &before).await;
}

/// Publishes a broadcast to chat with `message_id` `id` on the node at `uri`, as a
/// service would, and waits for RabbitMQ's confirm.
async fn publish_out(uri: &str, env: &TestEnv, id: &str) {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("connect to the node");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirm = ch
        .basic_publish(
            ShortString::from(env.names.outbound_exchange()),
            ShortString::from("chat.all"),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(ShortString::from(id)),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "{id} confirmed");
    let _ = conn.close(200, "published".into()).await;
}

/// Waits (up to 30 s) until the client delivered exactly `ids` to the app, in order.
async fn wait_delivered(client: &SdkClient, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.delivered() != ids && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.delivered(), ids, "deliveries, once each, in order");
}

async fn run() {
    let started = Instant::now();
    let mut cluster = BrokerCluster::single().await.expect("a private node boots");
    let uri = cluster.uri(0);
    // The shared broker only lends the namespace here; everything runs on the node.
    let env = TestEnv::new("gw-broker-restart").await;
    let (gw, client) = gateway_and_client(
        &env,
        &uri,
        |config| {
            config.token = Some("writer".into());
            config.request_timeout_ms = 60_000;
            config.outbox_limit = 10_000;
        },
        7,
    )
    .await;
    // The client follows chat's broadcast and has read the outbound stream's first
    // three positions: the gateway reads the stream again from position 3 after the
    // restart and must find it the same stream (not one deleted and declared again:
    // that would end the session), and the client's resume names position 2.
    follow_chat(&client, &uri, &env).await;

    let mut pending = Vec::new();
    let mut killed_at = None;
    let mut restarted_at = None;
    for k in 0..WRITES {
        // Each write's outcome with the time it came.
        let rx = client.write(envelope("chat", payload(&format!("{{\"k\":{k}}}"))));
        pending.push((
            k,
            tokio::spawn(async move {
                let outcome = rx.await;
                (outcome, Instant::now())
            }),
        ));
        if k == FAULT_AFTER {
            cluster.kill_node(0).await.expect("node killed");
            killed_at = Some(Instant::now());
            cluster.start_node(0).await.expect("node restarted");
            restarted_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (killed_at, restarted_at) = (killed_at.unwrap(), restarted_at.unwrap());
    // The stream survived the restart, and the gateway delivers from it again.
    publish_out(&uri, &env, "a0").await;
    wait_delivered(&client, &["b0", "b1", "b2", "a0"]).await;
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let mut vanished = 0;
    let mut acked_after_restart = Vec::new();
    // One deadline for every write's outcome.
    let outcomes_by = Instant::now() + Duration::from_secs(60);
    for (k, outcome) in pending {
        match tokio::time::timeout_at(outcomes_by, outcome).await {
            Ok(Ok((Ok(Ok(())), at))) => {
                acked.push(k);
                // Started after the node was back.
                if k > FAULT_AFTER {
                    acked_after_restart.push(at);
                }
            }
            Ok(Ok((Ok(Err(e)), _))) => refused.push((k, e.code)),
            _ => vanished += 1,
        }
    }
    let acked_again = acked_after_restart
        .iter()
        .min()
        .map(|at| at.saturating_duration_since(restarted_at));

    // What reached IN_CHAT on the node.
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("connect to the node");
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = ch
        .basic_consume(
            ShortString::from(env.names.channel_queue("chat")),
            ShortString::from("counter"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume IN_CHAT");
    let mut seen = HashSet::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
    {
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
        if let Some(k) = v.get("k").and_then(|k| k.as_u64()) {
            seen.insert(k as usize);
        }
        let _ = d.acker.ack(BasicAckOptions::default()).await;
    }
    let lost: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|k| !seen.contains(k))
        .collect();
    let stats = client.stats.lock().unwrap().sessions.clone();
    // The client's own reconnection, if it lost its socket at all (the gateway keeps
    // sessions connected while it reconnects to RabbitMQ).
    let reconnected = client
        .stats
        .lock()
        .unwrap()
        .connected_after(killed_at)
        .map(|at| at.duration_since(killed_at));
    println!(
        "fault_gateway_broker_restart: writes sent {WRITES} acked {} refused {} ({:?}) vanished {vanished}; \
         acked and in IN_CHAT {} lost {}; node down {} ms; writes acknowledged again {:?} after \
         the node was back; the client {}; sessions {:?}; run {} ms",
        acked.len(),
        refused.len(),
        refused.iter().map(|(_, c)| c.as_str()).collect::<HashSet<_>>(),
        acked.len() - lost.len(),
        lost.len(),
        restarted_at.duration_since(killed_at).as_millis(),
        acked_again,
        reconnected.map_or("stayed connected".to_string(), |t| format!(
            "connected again {} ms after the kill",
            t.as_millis()
        )),
        stats.iter().collect::<HashSet<_>>().len(),
        started.elapsed().as_millis(),
    );
    assert_eq!(vanished, 0, "every write resolves");
    assert!(
        refused
            .iter()
            .all(|(_, c)| *c == ErrorCode::BrokerUnavailable),
        "refusals are broker_unavailable: {refused:?}"
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let acked_again = acked_again.expect("writes are acknowledged again after the restart");
    assert!(
        acked_again <= BACK_WITHIN,
        "writes are acknowledged again within {BACK_WITHIN:?} of the node's return \
         (after {acked_again:?})"
    );
    assert!(
        refused.len() <= REFUSED_MAX,
        "at most {REFUSED_MAX} writes refused (1 s of writes): {} were",
        refused.len()
    );
    if let Some(t) = reconnected {
        let bound = restarted_at.duration_since(killed_at) + BACK_WITHIN;
        assert!(
            t <= bound,
            "the client, having lost its socket, connected again within {bound:?} of the \
             kill (after {t:?})"
        );
    }
    assert_eq!(
        stats.iter().collect::<HashSet<_>>().len(),
        1,
        "the client kept its session"
    );
    client.close().await;
    gw.shutdown().await;
    let _ = conn.close(200, "done".into()).await;
    cluster.shutdown().await;
    env.cleanup().await;
}
