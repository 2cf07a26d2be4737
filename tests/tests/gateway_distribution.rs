//! Messages a service publishes on `warren.out` reach exactly the sessions subscribed:
//! broadcast to every subscriber, a group to its members only, a direct message to its
//! target user only. Raw lapin stands in for the service.

use std::time::Duration;

use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_protocol::amqp::keys;
use warren_protocol::{Hello, Subscribe};

const QUIET: Duration = Duration::from_millis(400);

async fn user(url: &str, name: &str) -> TestClient {
    TestClient::connect_with(
        url,
        Hello {
            token: Some(name.into()),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn a_broadcast_reaches_every_subscriber() {
    let env = TestEnv::new("broadcast").await;
    let gw = TestGateway::start(&env).await;
    let mut clients = Vec::new();
    for name in ["a", "b", "c"] {
        let mut c = user(&gw.url(), name).await;
        c.subscribe(sub("s", "chat")).await;
        clients.push(c);
    }
    let mut other = user(&gw.url(), "d").await;
    other.subscribe(sub("s", "voice")).await;
    env.publish_out(&keys::broadcast("chat"), "b-1", r#"{"text":"to all"}"#)
        .await;
    for c in &mut clients {
        let d = c.expect_deliver().await;
        assert_eq!(d.message_id, "b-1");
        assert_eq!(d.channel, "chat");
        assert_eq!(d.routing_key, "chat.all");
        assert_eq!(d.seq, 1);
        assert_eq!(d.message.get(), r#"{"text":"to all"}"#);
    }
    other.expect_no_deliver(QUIET).await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_group_message_reaches_exactly_that_groups_members() {
    let env = TestEnv::new("group").await;
    let gw = TestGateway::start(&env).await;
    let mut members = Vec::new();
    for name in ["m1", "m2"] {
        let mut c = user(&gw.url(), name).await;
        c.subscribe(Subscribe {
            groups: vec!["room-1".into()],
            ..sub("g", "chat")
        })
        .await;
        members.push(c);
    }
    let mut outsider = user(&gw.url(), "x").await;
    outsider
        .subscribe(Subscribe {
            groups: vec!["room-2".into()],
            ..sub("g", "chat")
        })
        .await;
    let mut broadcast_only = user(&gw.url(), "y").await;
    broadcast_only.subscribe(sub("b", "chat")).await;

    env.publish_out(&keys::group("chat", "room-1"), "g-1", r#""hello room 1""#)
        .await;
    for c in &mut members {
        let d = c.expect_deliver().await;
        assert_eq!(d.message_id, "g-1");
        assert_eq!(d.routing_key, "chat.group.room-1");
    }
    outsider.expect_no_deliver(QUIET).await;
    broadcast_only
        .expect_no_deliver(Duration::from_millis(50))
        .await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_direct_message_reaches_exactly_its_target_user() {
    let env = TestEnv::new("direct").await;
    let gw = TestGateway::start(&env).await;
    let mut bob = user(&gw.url(), "bob").await;
    let mut carol = user(&gw.url(), "carol").await;
    for c in [&mut bob, &mut carol] {
        c.subscribe(Subscribe {
            direct: true,
            ..sub("d", "voice")
        })
        .await;
    }
    env.publish_out(&keys::user("voice", "bob"), "d-1", r#"{"sdp":"offer"}"#)
        .await;
    let d = bob.expect_deliver().await;
    assert_eq!(d.message_id, "d-1");
    assert_eq!(d.channel, "voice");
    carol.expect_no_deliver(QUIET).await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_cc_publish_reaches_several_groups_in_one_message() {
    let env = TestEnv::new("cc").await;
    let gw = TestGateway::start(&env).await;
    let mut a = user(&gw.url(), "a").await;
    a.subscribe(Subscribe {
        groups: vec!["g1".into()],
        ..sub("s", "chat")
    })
    .await;
    let mut b = user(&gw.url(), "b").await;
    b.subscribe(Subscribe {
        groups: vec!["g2".into()],
        ..sub("s", "chat")
    })
    .await;
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "CC".into(),
        lapin::types::AMQPValue::FieldArray(
            vec![lapin::types::AMQPValue::LongString(
                keys::group("chat", "g2").into(),
            )]
            .into(),
        ),
    );
    // A stream keeps only simple header values: the same keys as one string, which a
    // gateway reading the outbound stream routes by (the service library sets both).
    headers.insert(
        warren_protocol::amqp::H_CC.into(),
        lapin::types::AMQPValue::LongString(keys::group("chat", "g2").into()),
    );
    env.publish(
        &env.names.outbound_exchange(),
        &keys::group("chat", "g1"),
        "cc-1",
        "1",
        headers,
    )
    .await;
    let d = a.expect_deliver().await;
    assert_eq!(
        (d.message_id.as_str(), d.routing_key.as_str()),
        ("cc-1", "chat.group.g1")
    );
    let d = b.expect_deliver().await;
    assert_eq!(d.message_id, "cc-1");
    assert_eq!(
        d.routing_key, "chat.group.g2",
        "each receives it by the key it holds, so its SDK knows which subscription it is for"
    );
    assert!(
        !d.headers.contains_key("CC") && !d.headers.contains_key(warren_protocol::amqp::H_CC),
        "routing headers are not passed to clients"
    );
    gw.shutdown().await;
    env.cleanup().await;
}

/// A message a service sends to a group and to a user (one publish, `CC`) reaches a
/// member who is that user once, by one key, and names the other key it holds in
/// `keys`: an app with a subscription for each (a room and an inbox) gets it in both.
#[tokio::test]
async fn a_message_to_a_group_and_its_member_names_both_keys_the_session_holds() {
    TestEnv::run("cc-keys", Duration::from_secs(60), async |env| {
        let gw = TestGateway::start(env).await;
        let mut bob = user(&gw.url(), "bob").await;
        bob.subscribe(Subscribe {
            broadcast: Some(false),
            groups: vec!["room-1".into()],
            ..sub("room", "chat")
        })
        .await;
        bob.subscribe(Subscribe {
            broadcast: Some(false),
            direct: true,
            ..sub("inbox", "chat")
        })
        .await;
        let mut ann = user(&gw.url(), "ann").await;
        ann.subscribe(Subscribe {
            broadcast: Some(false),
            groups: vec!["room-1".into()],
            ..sub("room", "chat")
        })
        .await;
        let direct = keys::user("chat", "bob");
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            warren_protocol::amqp::H_CC.into(),
            lapin::types::AMQPValue::LongString(direct.clone().into()),
        );
        env.publish(
            &env.names.outbound_exchange(),
            &keys::group("chat", "room-1"),
            "both-1",
            "1",
            headers,
        )
        .await;
        let d = bob.expect_deliver().await;
        assert_eq!(
            (
                d.message_id.as_str(),
                d.routing_key.as_str(),
                d.keys.clone()
            ),
            ("both-1", "chat.group.room-1", vec![direct.clone()])
        );
        bob.expect_no_deliver(QUIET).await;
        let d = ann.expect_deliver().await;
        assert_eq!(d.routing_key, "chat.group.room-1");
        assert!(d.keys.is_empty(), "ann holds one key: {d:?}");
        gw.shutdown().await;
    })
    .await;
}

/// Bindings are a set: `unsubscribe` stops what it names, however many `subscribe`
/// frames named it (a client that shares a binding between subscriptions unbinds it
/// with the last, as the SDK does), and the same `subscribe` sent again changes
/// nothing.
#[tokio::test]
async fn unsubscribing_stops_what_it_names_however_often_it_was_subscribed() {
    let env = TestEnv::new("unsubscribe").await;
    let gw = TestGateway::start(&env).await;
    let mut c = user(&gw.url(), "u").await;
    c.subscribe(sub("s1", "chat")).await;
    let with_group = Subscribe {
        broadcast: Some(true),
        groups: vec!["g".into()],
        ..sub("s2", "chat")
    };
    c.subscribe(with_group.clone()).await;
    c.subscribe(sub("s3", "chat")).await;
    // The group alone goes: the broadcast stays.
    c.send(&warren_protocol::ClientFrame::Unsubscribe(Subscribe {
        broadcast: Some(false),
        groups: vec!["g".into()],
        ..sub("u1", "chat")
    }))
    .await;
    c.expect_ack("u1").await;
    env.publish_out("chat.group.g", "m1", "1").await;
    env.publish_out("chat.all", "m2", "2").await;
    assert_eq!(
        c.expect_deliver().await.message_id,
        "m2",
        "the group was unbound, the broadcast was not"
    );
    // One unsubscribe of the broadcast, subscribed three times.
    c.send(&warren_protocol::ClientFrame::Unsubscribe(sub(
        "u2", "chat",
    )))
    .await;
    c.expect_ack("u2").await;
    env.publish_out("chat.all", "m3", "3").await;
    c.expect_no_deliver(QUIET).await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// A resume names the session's subscriptions in `hello`, and the SDK sends them
/// again after `welcome`: one `unsubscribe` still stops them.
#[tokio::test]
async fn a_subscription_named_in_a_resume_and_sent_again_stops_at_one_unsubscribe() {
    let env = TestEnv::new("unsubscribe-resumed").await;
    let gw = TestGateway::start(&env).await;
    let mut first = user(&gw.url(), "u").await;
    let room = Subscribe {
        broadcast: Some(false),
        groups: vec!["room-1".into()],
        ..sub("s1", "chat")
    };
    first.subscribe(room.clone()).await;
    let hello = Hello {
        token: Some("u".into()),
        ..first.resume_hello()
    };
    first.abort();
    let mut c = TestClient::connect_with(&gw.url(), hello).await;
    assert!(c.welcome().resumed, "the session is resumed");
    c.subscribe(room.clone()).await;
    env.publish_out("chat.group.room-1", "m1", "1").await;
    assert_eq!(c.expect_deliver().await.message_id, "m1");
    c.send(&warren_protocol::ClientFrame::Unsubscribe(Subscribe {
        id: "u1".into(),
        ..room
    }))
    .await;
    c.expect_ack("u1").await;
    env.publish_out("chat.group.room-1", "m2", "2").await;
    c.expect_no_deliver(QUIET).await;
    gw.shutdown().await;
    env.cleanup().await;
}
