//! Topic events end to end: a service publishes `<channel>.event.<a>.<b>…` events with
//! the service library (`Targets::event`), and each client receives exactly the events
//! its `topic` pattern matches (`*` one word, `#` any number), through the gateway's
//! outbound stream and RabbitMQ. The POC packet's `consume_target` list subscribes the
//! same way; the demo ticket desk announces its changes as such events.

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::{amqp_addr, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_e2e::sdk_driver::GatewayProcess;
use warren_e2e::service::start_demo;
use warren_protocol::amqp::keys;
use warren_protocol::{Deliver, Hello, Subscribe};
use warren_service::{Outgoing, Service, Targets};

const LIMIT: Duration = Duration::from_secs(60);
/// How long a client waits to be sure nothing more arrives.
const QUIET: Duration = Duration::from_millis(600);

/// The events the service publishes, in order.
const EVENTS: [&str; 3] = ["ticket.created", "ticket.closed", "user.renamed"];

async fn connect(gateway: &TestGateway, user: &str) -> TestClient {
    let hello = Hello {
        token: Some(user.into()),
        ..Hello::default()
    };
    TestClient::connect_with(&gateway.url(), hello).await
}

/// A client of `user` subscribed to the tickets events matching `pattern`.
async fn subscriber(gateway: &TestGateway, user: &str, pattern: &str) -> TestClient {
    let mut client = connect(gateway, user).await;
    client
        .subscribe(Subscribe {
            topic: Some(pattern.into()),
            ..sub("s", "tickets")
        })
        .await;
    client
}

/// Publishes every event of [`EVENTS`] on `tickets` as a service does, the event name
/// in the message, and one broadcast that no topic subscription matches.
async fn publish_events(env: &TestEnv) {
    let service = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .expect("the service connects");
    let publisher = service.publisher();
    for name in EVENTS {
        let body = json!({ "event": name }).to_string();
        publisher
            .publish(&Outgoing::new(Targets::event("tickets", name), body))
            .await
            .expect("the event is confirmed");
    }
    publisher
        .publish(&Outgoing::new(
            Targets::broadcast("tickets"),
            "\"not an event\"",
        ))
        .await
        .expect("the broadcast is confirmed");
    service.stop().await.expect("the service stops");
}

/// The routing keys of the deliveries `client` gets until it is quiet, checking that
/// each message names the event of its key.
async fn received_keys(client: &mut TestClient, expected: usize) -> Vec<String> {
    let mut got: Vec<Deliver> = Vec::new();
    for _ in 0..expected {
        got.push(client.expect_deliver().await);
    }
    client.expect_no_deliver(QUIET).await;
    got.iter()
        .map(|d| {
            let message: serde_json::Value = serde_json::from_str(d.message.get()).unwrap();
            assert_eq!(
                Some(d.routing_key.as_str()),
                message["event"]
                    .as_str()
                    .map(|name| keys::event("tickets", name))
                    .as_deref(),
                "{d:?}"
            );
            assert_eq!(d.channel, "tickets");
            d.routing_key.clone()
        })
        .collect()
}

fn event_keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| keys::event("tickets", n)).collect()
}

#[tokio::test]
async fn each_topic_pattern_receives_exactly_the_events_it_matches() {
    TestEnv::run("topics-patterns", LIMIT, async |env| {
        let gateway = TestGateway::start(env).await;
        let mut one_word = subscriber(&gateway, "ann", "ticket.*").await;
        let mut everything = subscriber(&gateway, "ben", "#").await;
        let mut any_renamed = subscriber(&gateway, "cat", "*.renamed").await;
        let mut exact = subscriber(&gateway, "dan", "ticket.closed").await;
        let mut other = subscriber(&gateway, "eve", "order.*").await;

        publish_events(env).await;

        assert_eq!(
            received_keys(&mut one_word, 2).await,
            event_keys(&["ticket.created", "ticket.closed"])
        );
        assert_eq!(received_keys(&mut everything, 3).await, event_keys(&EVENTS));
        assert_eq!(
            received_keys(&mut any_renamed, 1).await,
            event_keys(&["user.renamed"])
        );
        assert_eq!(
            received_keys(&mut exact, 1).await,
            event_keys(&["ticket.closed"])
        );
        assert!(received_keys(&mut other, 0).await.is_empty());
        for client in [one_word, everything, any_renamed, exact, other] {
            client.close().await;
        }
        gateway.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_poc_consume_packet_with_a_consume_target_list_receives_the_matching_events() {
    TestEnv::run("topics-poc", LIMIT, async |env| {
        let gateway = TestGateway::start(env).await;
        let mut poc = connect(&gateway, "312423dsa").await;
        // A packet with a target that cannot be a topic is refused whole: its valid
        // target is not subscribed either (it was, and delivered, before).
        let refused = json!({
            "id": "poc-refused",
            "distribution": { "broadcast": false, "multicast": [], "direct": [] },
            "channel": { "voice": false, "chat": false, "tickets": true },
            "packet_action": "consume",
            "consume_target": ["ticket.created", "bad topic!"]
        });
        poc.send_text(&refused.to_string()).await;
        let e = poc.expect_error(Some("poc-refused")).await;
        assert_eq!(e.code, warren_protocol::ErrorCode::Invalid, "{e:?}");
        let packet = json!({
            "id": "poc-topics",
            "distribution": { "broadcast": false, "multicast": [], "direct": [] },
            "channel": { "voice": false, "chat": false, "tickets": true },
            "packet_action": "consume",
            "consume_target": ["ticket.closed", "*.renamed"]
        });
        poc.send_text(&packet.to_string()).await;
        poc.expect_ack("poc-topics").await;

        publish_events(env).await;

        // The two listed topics, not `ticket.created` (only the refused packet named
        // it) and not the broadcast (the packet's `broadcast` is false and its list is
        // not empty).
        assert_eq!(
            received_keys(&mut poc, 2).await,
            event_keys(&["ticket.closed", "user.renamed"])
        );
        poc.close().await;
        gateway.shutdown().await;
    })
    .await;
}

/// A `writeAndWait` to the desk, its reply acknowledged.
async fn ask(clerk: &mut TestClient, id: &str, message: serde_json::Value) {
    clerk.request(id, "tickets", Some(10_000), message).await;
    let reply = clerk.expect_reply(id).await;
    clerk.ack_deliveries(reply.seq).await;
}

#[tokio::test]
async fn a_ticket_change_reaches_every_ticket_event_subscriber_of_the_demo_desk() {
    TestEnv::run("topics-desk", LIMIT, async |env| {
        let gateway = TestGateway::start(env).await;
        let demo = start_demo(&env.namespace).await;
        let mut watcher = subscriber(&gateway, "bob", "ticket.*").await;
        let mut clerk = connect(&gateway, "alice").await;

        ask(
            &mut clerk,
            "t1",
            json!({"op": "create", "title": "printer"}),
        )
        .await;
        ask(&mut clerk, "t2", json!({"op": "list"})).await;
        ask(&mut clerk, "t3", json!({"op": "close", "id": 1})).await;

        let mut seen = Vec::new();
        for _ in 0..2 {
            let d = watcher.expect_deliver().await;
            let ticket: serde_json::Value = serde_json::from_str(d.message.get()).unwrap();
            assert_eq!(ticket["id"], 1, "{d:?}");
            seen.push((
                d.routing_key,
                ticket["status"].as_str().unwrap().to_string(),
            ));
        }
        assert_eq!(
            seen,
            [
                (
                    "tickets.event.ticket.created".to_string(),
                    "open".to_string()
                ),
                (
                    "tickets.event.ticket.closed".to_string(),
                    "closed".to_string()
                ),
            ]
        );
        // A read announces nothing; the clerk, not subscribed, got only replies.
        watcher.expect_no_deliver(QUIET).await;
        clerk.expect_no_deliver(QUIET).await;
        watcher.close().await;
        clerk.close().await;
        demo.stop().await.unwrap();
        gateway.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_pattern_of_many_hashes_does_not_stall_the_deliveries_of_others() {
    TestEnv::run("topic-hashes", LIMIT, async |env| {
        // A gateway process: should matching stall its hub, this test times out and
        // fails instead of hanging with it.
        let mut gw = GatewayProcess::spawn(&env.namespace, "gw-hashes", &[]).await;
        let subscribed = async |pattern: &str| {
            let mut c = TestClient::connect(&gw.url()).await;
            c.subscribe(Subscribe {
                topic: Some(pattern.into()),
                ..sub("s", "tickets")
            })
            .await;
            c
        };
        // Twelve `#`s and a word no key has: matching it against a 30-word key by
        // trying every split of each `#` took minutes, under the hub's lock, so no
        // session of the gateway received anything meanwhile.
        let mut attacker = subscribed(&format!("{}nowhere", "#.".repeat(12))).await;
        let mut other = subscribed("#").await;
        let key = format!("tickets.event.{}b", "a.".repeat(30));
        env.publish_out(&key, "long", r#"{"n":1}"#).await;
        let d = other.expect_deliver().await;
        assert_eq!(d.routing_key, key);
        attacker.expect_no_deliver(QUIET).await;
        attacker.close().await;
        other.close().await;
        gw.kill().await;
    })
    .await;
}
