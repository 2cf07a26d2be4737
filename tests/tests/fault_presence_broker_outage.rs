//! Presence through a RabbitMQ outage: a client closes its connection (a goodbye)
//! while the gateways' only node is stopped. Its gateway keeps the `client.disconnected`
//! in its outbox and publishes it once the node is back, so a service's queue bound
//! before the outage receives it; the peer gateway, whose presence listener missed
//! whatever was published while it was away, asks its peers for their views and stops
//! listing the session in `GET /presence`. Before, the event was published once and
//! dropped when RabbitMQ could not take it, and the peer listed the closed session for
//! good. Runs on a private node (`warren_e2e::broker_node`), never on the shared broker;
//! fails where RabbitMQ's server scripts are not installed (skipped with
//! `WARREN_ALLOW_SKIP=1`).

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use tokio::time::Instant;
use warren_e2e::broker_node::{with_private_nodes, BrokerCluster};
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::{http_get, TestGateway};
use warren_protocol::Hello;

/// How long the node stays down (gateways already notice it in 1 s).
const OUTAGE: Duration = Duration::from_secs(10);
/// How soon after the node is back the peer's view and the event queue are right: the
/// gateways reconnect within about 2 s, the outbox tries again within 5 s, and the
/// peer asks for its peers' views up to 17 s after its listener is bound again.
const BACK_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_while_rabbitmq_is_down_is_announced_gone_once_it_is_back() {
    with_private_nodes(
        "fault_presence_broker_outage",
        Duration::from_secs(180),
        run(),
    )
    .await;
}

async fn run() {
    let mut cluster = BrokerCluster::single().await.expect("a private node boots");
    let uri = cluster.uri(0);
    // The shared broker only lends the namespace here; everything runs on the node.
    let env = TestEnv::new("presence-outage").await;
    let on_node = |c: &mut warren_gateway::Config| {
        c.amqp_uri = vec![uri.clone()];
        c.broker_wait_ms = 2_000;
        c.presence = true;
        c.session_expires_ms = 60_000;
    };
    let a = TestGateway::start_with(&env, on_node).await;
    let b = TestGateway::start_with(&env, on_node).await;

    // A service's queue: durable, bound before the outage, on the node.
    let queue = format!("{}.presence-outage", env.namespace);
    {
        let conn = Connection::connect(&uri, ConnectionProperties::default())
            .await
            .expect("connect to the node");
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        for key in ["client.connected", "client.disconnected"] {
            ch.queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(env.names.presence_exchange()),
                ShortString::from(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
        }
        let _ = conn.close(200, "bound".into()).await;
    }

    let ada = TestClient::connect_with(
        &a.url(),
        Hello {
            token: Some("ada".into()),
            ..Default::default()
        },
    )
    .await;
    let session = ada.session().to_string();
    wait_until(
        Duration::from_secs(10),
        "the peer lists the session",
        || listed(&b, &session),
    )
    .await;

    let stopped = Instant::now();
    cluster.stop_node(0).await.expect("node stopped");
    println!(
        "fault_presence_broker_outage: node stopped in {} ms",
        stopped.elapsed().as_millis()
    );
    ada.close().await;
    wait_until(
        Duration::from_secs(10),
        "its gateway forgets the closed session",
        || async { !listed(&a, &session).await },
    )
    .await;
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    cluster.start_node(0).await.expect("node started again");
    let back = Instant::now();
    println!(
        "fault_presence_broker_outage: node down for {} ms",
        stopped.elapsed().as_millis()
    );

    // The service's queue gets the leave.
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("connect to the node again");
    let ch = conn.create_channel().await.expect("channel");
    let mut events = ch
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let mut seen = Vec::new();
    let left_at = loop {
        let next = tokio::time::timeout_at(back + BACK_WITHIN, events.next()).await;
        let Ok(Some(Ok(d))) = next else {
            panic!(
                "no client.disconnected for {session} within {BACK_WITHIN:?} of the node's \
                 return; seen {seen:?}"
            );
        };
        let v: serde_json::Value = serde_json::from_slice(&d.data).expect("a JSON event");
        seen.push((d.routing_key.to_string(), v["session"].clone()));
        if d.routing_key.as_str() == "client.disconnected" && v["session"] == session.as_str() {
            assert_eq!(v["reason"], "closed", "{v}");
            break back.elapsed();
        }
    };
    println!(
        "fault_presence_broker_outage: client.disconnected received {} ms after the node was back",
        left_at.as_millis()
    );

    // The peer no longer lists it.
    let deadline = back + BACK_WITHIN;
    while listed(&b, &session).await {
        assert!(
            Instant::now() < deadline,
            "the peer still lists the closed session {BACK_WITHIN:?} after the node's return: {}",
            http_get(b.health_addr(), "/presence").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "fault_presence_broker_outage: the peer forgot the session {} ms after the node was back",
        back.elapsed().as_millis()
    );

    let _ = conn.close(200, "done".into()).await;
    a.shutdown().await;
    b.shutdown().await;
    cluster.shutdown().await;
    env.cleanup().await;
}

/// Whether `gw`'s `GET /presence` lists `session`.
async fn listed(gw: &TestGateway, session: &str) -> bool {
    http_get(gw.health_addr(), "/presence")
        .await
        .contains(session)
}

/// Polls `check` every 100 ms until it holds; panics saying `what` after `within`.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
