//! The broker's control channels are replaced after a bounded number of uses, and a
//! replaced channel closes once its last user drops it. lapin keeps a record of every
//! queue declared or bound on a channel until the channel closes, so without this a
//! long-lived channel's record grows with everything declared on it (it grew with
//! every session when the removed `outbound = "queues"` mode declared a queue each).

use std::sync::Arc;
use std::time::Duration;

use warren_e2e::env::{amqp_addr, cannot_check};
use warren_gateway::broker::Broker;
use warren_gateway::metrics::Metrics;
use warren_gateway::Config;

/// Open channels of the broker connections whose client name mentions `node`, or why
/// they cannot be counted here (rabbitmqctl not usable, or it lists no connection of
/// `node`: a broker other than the one at `AMQP_ADDR`).
fn channels_of(node: &str) -> Result<usize, String> {
    let ours = warren_e2e::rabbitmqctl::gateway_connections(node)?;
    if ours.is_empty() {
        return Err(format!(
            "rabbitmqctl lists no connection of {node} (is it the broker at AMQP_ADDR?)"
        ));
    }
    let channels =
        warren_e2e::rabbitmqctl::run(&["list_channels", "--no-table-headers", "-q", "connection"])?;
    Ok(channels
        .lines()
        .filter(|l| ours.iter().any(|o| o == l.trim()))
        .count())
}

/// A gateway's broker connections as `node`, with `publisher_channels` in its pool.
async fn connect(node: &str, publisher_channels: usize) -> (Config, Arc<Broker>) {
    let config = Config {
        amqp_uri: vec![amqp_addr()],
        node: node.into(),
        publisher_channels,
        ..Config::default()
    };
    let broker = Broker::connect(&config, Arc::new(Metrics::default()))
        .await
        .expect("RabbitMQ at AMQP_ADDR");
    (config, broker)
}

#[tokio::test]
async fn a_control_channel_is_replaced_after_its_uses_and_the_old_one_closes() {
    let (config, broker) = connect("t-control-channels", 1).await;
    let first = broker.control().await.expect("control channel");
    let first_id = first.id();
    // With one control channel, every use is of the same channel until it is replaced.
    let mut replaced_after = None;
    for uses in 2..=2_000 {
        let ch = broker.control().await.expect("control channel");
        if ch.id() != first_id {
            replaced_after = Some(uses);
            break;
        }
    }
    let replaced_after = replaced_after.expect("the control channel is replaced within 2,000 uses");
    assert!(
        replaced_after > 100,
        "replaced after {replaced_after} uses: too often to be cheap"
    );
    // The pool let go of the old channel: it closes once its last user drops it, so
    // the gateway's connections are back to the channels they had before.
    let before = match channels_of(&config.node) {
        Ok(n) => n,
        Err(why) => {
            cannot_check("that the replaced control channel closes", &why);
            broker.close().await;
            return;
        }
    };
    drop(first);
    let mut after = before;
    for _ in 0..50 {
        after = channels_of(&config.node)
            .unwrap_or_else(|why| panic!("counting the gateway's channels again: {why}"));
        if after < before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after, before - 1, "the replaced channel is closed");
    // The fresh channel serves, and later uses keep the same one for a while.
    let next = broker.control().await.expect("control channel");
    let again = broker.control().await.expect("control channel");
    assert_eq!(next.id(), again.id());
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker.close().await;
}

/// A publisher channel that left a publish unconfirmed is taken out of the pool
/// (`Broker::retire_publisher`, what `POST /publish` does after its confirm wait): the
/// pool hands out a fresh channel in its place, and the old one closes once its
/// outstanding confirms are in, within the wait it was given.
#[tokio::test]
async fn a_retired_publisher_channel_leaves_the_pool_and_closes() {
    let (_, broker) = connect("t-retired-publisher", 2).await;
    let pool: Vec<u16> = {
        let a = broker.publisher().await.expect("publisher channel");
        let b = broker.publisher().await.expect("publisher channel");
        vec![a.channel().id(), b.channel().id()]
    };
    let stuck = broker.publisher().await.expect("publisher channel");
    let stuck = stuck.channel();
    assert!(pool.contains(&stuck.id()), "round robin over the pool");
    broker
        .retire_publisher(
            stuck,
            Duration::from_secs(2),
            "a publish got no confirm in time",
        )
        .await;
    for _ in 0..6 {
        let ch = broker.publisher().await.expect("publisher channel");
        assert_ne!(
            ch.channel().id(),
            stuck.id(),
            "the retired channel is not handed out"
        );
        assert!(ch.channel().status().connected());
    }
    // Retiring it again (a second publish timing out on it) changes nothing.
    broker
        .retire_publisher(
            stuck,
            Duration::from_secs(2),
            "a publish got no confirm in time",
        )
        .await;
    let mut closed = false;
    for _ in 0..50 {
        if !stuck.status().connected() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        closed,
        "the retired channel closes (no confirm was outstanding)"
    );
    broker.close().await;
}

/// A RabbitMQ that stops answering while its connections stay open (a frozen node, a
/// stalled network) does not hold a channel's opening past `broker_wait_ms`: the
/// caller (a stream reader starting, a request's channel) is told RabbitMQ is
/// unavailable, instead of waiting until the AMQP heartbeat gives the connection up
/// (a minute or more).
#[tokio::test]
async fn opening_a_channel_on_a_frozen_connection_is_given_up_after_broker_wait_ms() {
    let proxy = warren_e2e::service::CuttableProxy::start().await;
    let config = Config {
        amqp_uri: vec![proxy.uri.clone()],
        node: "t-frozen-channel-open".into(),
        broker_wait_ms: 1_000,
        ..Config::default()
    };
    let broker = Broker::connect(&config, Arc::new(Metrics::default()))
        .await
        .expect("RabbitMQ through the proxy");
    broker
        .scratch()
        .await
        .expect("a scratch channel while it answers");
    proxy.freeze(true);
    // Before, each waited until lapin's heartbeat gave the connection up: the outer
    // 10 s bound fails the test.
    let limit = Duration::from_secs(10);
    let started = std::time::Instant::now();
    let scratch = tokio::time::timeout(limit, broker.scratch())
        .await
        .expect("a scratch channel's opening ends");
    let took = started.elapsed();
    assert!(scratch.is_err(), "no channel opened on a frozen connection");
    assert!(took < Duration::from_millis(3_000), "scratch: {took:?}");
    let started = std::time::Instant::now();
    let request = tokio::time::timeout(limit, broker.request_channel())
        .await
        .expect("a request channel's opening ends");
    let took = started.elapsed();
    assert!(request.is_err(), "no channel opened on a frozen connection");
    assert!(
        took < Duration::from_millis(3_000),
        "request channel: {took:?}"
    );
    proxy.freeze(false);
    broker.close().await;
}
