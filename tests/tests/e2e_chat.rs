//! End to end: chat messages published by a WebSocket client, relayed by the demo
//! `chat` service, reach exactly the clients subscribed to the broadcast, the groups
//! or the user they name — each once — through the gateway and RabbitMQ.

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::{raw, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::service::start_demo;
use warren_protocol::amqp::H_USER;
use warren_protocol::{ClientFrame, Deliver, Distribution, Hello, Publish, Subscribe};

const LIMIT: Duration = Duration::from_secs(90);
const QUIET: Duration = Duration::from_millis(800);

async fn connect(url: &str, user: &str) -> TestClient {
    TestClient::connect_with(
        url,
        Hello {
            token: Some(user.into()),
            ..Hello::default()
        },
    )
    .await
}

async fn subscribe(client: &mut TestClient, id: &str, broadcast: bool, groups: &[&str]) {
    client
        .subscribe(Subscribe {
            id: id.into(),
            channel: "chat".into(),
            broadcast: Some(broadcast),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            direct: true,
            topic: None,
        })
        .await;
}

async fn say(client: &mut TestClient, id: &str, text: &str, distribution: Distribution) {
    client
        .send(&ClientFrame::Publish(Publish {
            id: id.into(),
            channel: "chat".into(),
            subject: None,
            distribution: Some(distribution),
            headers: Default::default(),
            message: raw(json!({ "text": text })),
        }))
        .await;
    client.expect_ack(id).await;
}

async fn receive(client: &mut TestClient, text: &str) -> Deliver {
    let d = client.expect_deliver().await;
    let message: serde_json::Value = serde_json::from_str(d.message.get()).unwrap();
    assert_eq!(message["text"], text, "{d:?}");
    client.ack_deliveries(d.seq).await;
    d
}

#[tokio::test]
async fn chat_broadcast_group_and_direct_messages_reach_exactly_their_recipients() {
    TestEnv::run("e2e-chat", LIMIT, async |env| {
        let gateway = TestGateway::start(env).await;
        let demo = start_demo(&env.namespace).await;
        let url = gateway.url();
        let mut alice = connect(&url, "alice").await;
        let mut bob = connect(&url, "bob").await;
        let mut carol = connect(&url, "carol").await;
        let mut dave = connect(&url, "dave").await;
        subscribe(&mut alice, "s", true, &["room-1"]).await;
        subscribe(&mut bob, "s", true, &["room-1", "room-2"]).await;
        subscribe(&mut carol, "s", false, &["room-2"]).await;
        subscribe(&mut dave, "s", false, &["room-3"]).await;

        // Broadcast: everyone subscribed to the broadcast, sender included.
        let everyone = Distribution {
            broadcast: true,
            ..Distribution::default()
        };
        say(&mut alice, "p1", "hello all", everyone).await;
        let d = receive(&mut alice, "hello all").await;
        assert_eq!(d.channel, "chat");
        assert_eq!(d.headers.get(H_USER).map(String::as_str), Some("alice"));
        receive(&mut bob, "hello all").await;
        carol.expect_no_deliver(QUIET).await;
        dave.expect_no_deliver(QUIET).await;

        // Two groups in one publish: each member once, even bob who is in both.
        let rooms = Distribution {
            groups: vec!["room-1".into(), "room-2".into()],
            ..Distribution::default()
        };
        say(&mut alice, "p2", "to the rooms", rooms).await;
        receive(&mut alice, "to the rooms").await;
        let b = receive(&mut bob, "to the rooms").await;
        let c = receive(&mut carol, "to the rooms").await;
        assert_eq!(b.message_id, c.message_id, "one message");
        bob.expect_no_deliver(QUIET).await;
        dave.expect_no_deliver(QUIET).await;

        // Direct: only the named user.
        let to_carol = Distribution {
            direct: vec!["carol".into()],
            ..Distribution::default()
        };
        say(&mut bob, "p3", "psst carol", to_carol).await;
        let d = receive(&mut carol, "psst carol").await;
        assert_eq!(d.headers.get(H_USER).map(String::as_str), Some("bob"));
        carol.expect_no_deliver(QUIET).await;
        alice.expect_no_deliver(QUIET).await;
        bob.expect_no_deliver(QUIET).await;
        dave.expect_no_deliver(QUIET).await;

        for c in [alice, bob, carol, dave] {
            c.close().await;
        }
        demo.stop().await.unwrap();
        gateway.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn voice_signalling_relayed_by_the_demo_reaches_only_the_called_user() {
    TestEnv::run("e2e-voice", LIMIT, async |env| {
        let gateway = TestGateway::start(env).await;
        let demo = start_demo(&env.namespace).await;
        let url = gateway.url();
        let mut alice = connect(&url, "alice").await;
        let mut bob = connect(&url, "bob").await;
        let mut carol = connect(&url, "carol").await;
        for c in [&mut alice, &mut bob, &mut carol] {
            c.subscribe(Subscribe {
                id: "v".into(),
                channel: "voice".into(),
                broadcast: Some(false),
                direct: true,
                ..Subscribe::default()
            })
            .await;
        }
        alice
            .send(&ClientFrame::Publish(Publish {
                id: "call-1".into(),
                channel: "voice".into(),
                subject: None,
                distribution: Some(Distribution {
                    direct: vec!["bob".into()],
                    ..Distribution::default()
                }),
                headers: Default::default(),
                message: raw(json!({ "type": "call", "sdp": "v=0" })),
            }))
            .await;
        alice.expect_ack("call-1").await;
        let d = bob.expect_deliver().await;
        assert_eq!(d.channel, "voice");
        let message: serde_json::Value = serde_json::from_str(d.message.get()).unwrap();
        assert_eq!(message["type"], "call");
        assert_eq!(d.headers.get(H_USER).map(String::as_str), Some("alice"));
        bob.ack_deliveries(d.seq).await;
        bob.expect_no_deliver(QUIET).await;
        carol.expect_no_deliver(QUIET).await;
        alice.expect_no_deliver(QUIET).await;
        for c in [alice, bob, carol] {
            c.close().await;
        }
        demo.stop().await.unwrap();
        gateway.shutdown().await;
    })
    .await;
}
