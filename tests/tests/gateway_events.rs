//! What a gateway tells the rest of the system: periodic announcements on
//! `warren.gateways` and `client.connected` / `client.disconnected` presence events on
//! `warren.presence`.

use std::time::Duration;

use futures_util::StreamExt;
use warren_e2e::client::TestClient;
use warren_e2e::env::{next_delivery, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_protocol::Hello;

async fn listen(env: &mut TestEnv, queue: &str, exchange: &str, key: &str) -> lapin::Consumer {
    env.bind_queue(queue, exchange, key).await;
    env.consume_no_ack(queue).await
}

fn json(d: &lapin::message::Delivery) -> serde_json::Value {
    serde_json::from_slice(&d.data).expect("JSON event")
}

#[tokio::test]
async fn connecting_and_disconnecting_clients_are_announced_as_presence_events() {
    let mut env = TestEnv::new("presence").await;
    let gw = TestGateway::start_with(&env, |c| c.presence = true).await;
    let queue = format!("{}.test-presence", env.namespace);
    let exchange = env.names.presence_exchange();
    let mut events = listen(&mut env, &queue, &exchange, "client.*").await;
    let c = TestClient::connect_with(
        &gw.url(),
        Hello {
            token: Some("zoe".into()),
            ..Default::default()
        },
    )
    .await;
    let session = c.session().to_string();
    let d = next_delivery(&mut events, Duration::from_secs(5)).await;
    assert_eq!(d.routing_key.as_str(), "client.connected");
    // Persistent, so a durable queue keeps them across a broker restart.
    assert_eq!(d.properties.delivery_mode(), &Some(2), "a persistent event");
    let v = json(&d);
    assert_eq!(v["user"], "zoe");
    assert_eq!(v["session"], session.as_str());
    c.close().await;
    let d = next_delivery(&mut events, Duration::from_secs(5)).await;
    assert_eq!(d.routing_key.as_str(), "client.disconnected");
    assert_eq!(d.properties.delivery_mode(), &Some(2), "a persistent event");
    assert_eq!(json(&d)["session"], session.as_str());
    gw.shutdown().await;
    env.cleanup().await;
}

/// The next announcement (a message with a `state`) on `events` within `within`;
/// `None` when none comes. A starting gateway also asks its peers for their sessions
/// on the same exchange (`presence_snapshot_for`): those are passed over.
async fn next_announcement(
    events: &mut lapin::Consumer,
    within: Duration,
) -> Option<serde_json::Value> {
    let until = tokio::time::Instant::now() + within;
    while let Ok(Some(d)) = tokio::time::timeout_at(until, events.next()).await {
        let v = json(&d.expect("delivery ok"));
        if v.get("state").is_some() {
            return Some(v);
        }
    }
    None
}

#[tokio::test]
async fn a_gateway_announces_itself_periodically_and_when_it_stops() {
    let mut env = TestEnv::new("announce").await;
    let gw = TestGateway::start_with(&env, |c| c.announce_interval_ms = 100).await;
    let node = gw.gateway().config().node.clone();
    let queue = format!("{}.test-gateways", env.namespace);
    let exchange = env.names.gateways_exchange();
    let mut events = listen(&mut env, &queue, &exchange, "").await;
    let v = next_announcement(&mut events, Duration::from_secs(5))
        .await
        .expect("an announcement within 5 s");
    assert_eq!(v["node"], node.as_str());
    assert_eq!(v["state"], "up");
    assert!(v["listeners"].as_array().is_some_and(|l| !l.is_empty()));
    // Periodically: more `up`s follow at the 100 ms interval — about 20 in the 2 s
    // after the first; at least 2 (a gateway that announced only when it started,
    // or at its default interval of seconds, sends none or one).
    let window = Duration::from_secs(2);
    let until = tokio::time::Instant::now() + window;
    let mut ups = 0;
    while let Some(v) = next_announcement(&mut events, until - tokio::time::Instant::now()).await {
        assert_eq!(v["node"], node.as_str());
        assert_eq!(v["state"], "up", "{v}");
        ups += 1;
    }
    println!("gateway_events: {ups} more `up` announcements in the {window:?} after the first");
    assert!(
        ups >= 2,
        "announced periodically: {ups} `up`s in the {window:?} after the first at a 100 ms interval"
    );
    gw.shutdown().await;
    let mut last = v;
    while last["state"] == "up" {
        last = next_announcement(&mut events, Duration::from_secs(5))
            .await
            .expect("announcements until the gateway says it is down");
    }
    assert_eq!(last["node"], node.as_str());
    assert_eq!(last["state"], "down");
    env.cleanup().await;
}
