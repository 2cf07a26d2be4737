//! Sessions: a session resumed after a disconnect (from the position of its last
//! acknowledged delivery) receives again what it had not acknowledged, and nothing it
//! had; a resume of a session that does not exist is reported; an implicit session opens when the first frame is
//! not `hello`; a second connection takes a session over from the first.

use std::time::Duration;

use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_gateway::fault::HELLO_SUBSCRIPTIONS_DELAY_MS;
use warren_protocol::{ErrorCode, Hello, ServerFrame, Subscribe};

fn resume(session: &str) -> Hello {
    Hello {
        session: Some(session.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn unacked_deliveries_come_again_after_a_resume_and_acked_ones_do_not() {
    let env = TestEnv::new("resume").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect(&gw.url()).await;
    let session = c.session().to_string();
    assert!(!c.welcome.as_ref().unwrap().resumed);
    c.subscribe(Subscribe {
        id: "s".into(),
        channel: "chat".into(),
        ..Default::default()
    })
    .await;
    for i in 1..=3 {
        env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
            .await;
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(c.expect_deliver().await);
    }
    assert_eq!(first.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2, 3]);
    // Disconnect without acking anything.
    let again_hello = c.resume_hello();
    c.abort();

    let mut c = TestClient::connect_with(&gw.url(), again_hello).await;
    let w = c.welcome.clone().unwrap();
    assert!(w.resumed, "{w:?}");
    assert_eq!(w.session, session);
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(c.expect_deliver().await);
    }
    assert_eq!(
        again
            .iter()
            .map(|d| d.message_id.as_str())
            .collect::<Vec<_>>(),
        ["m1", "m2", "m3"],
        "the same messages, in order"
    );
    assert!(again.iter().all(|d| d.redelivered));
    assert_eq!(again[0].seq, 1, "seq restarts per connection");
    // Acknowledge the first two only.
    c.ack_deliveries(again[1].seq).await;
    // Let the acks reach the broker before disconnecting.
    c.ping(1).await;
    c.expect("pong", |f| matches!(f, ServerFrame::Pong(_)).then_some(()))
        .await;
    let again_hello = c.resume_hello();
    c.close().await;

    let mut c = TestClient::connect_with(&gw.url(), again_hello).await;
    assert!(c.welcome.as_ref().unwrap().resumed);
    let d = c.expect_deliver().await;
    assert_eq!(
        d.message_id, "m3",
        "only the unacknowledged message comes again"
    );
    c.ack_deliveries(d.seq).await;
    c.expect_no_deliver(Duration::from_millis(400)).await;
    let again_hello = c.resume_hello();
    c.close().await;

    let mut c = TestClient::connect_with(&gw.url(), again_hello).await;
    c.expect_no_deliver(Duration::from_millis(400)).await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// A new session whose `hello` names subscriptions (a refused resume's: the SDK sends
/// them when it resumes) joins the streams, then takes them. A message the gateway
/// read in between did not reach it: its welcome must name a position at or past that
/// message, or a later resume would never replay it. (Every `hello` of this process
/// with subscriptions that opens a new session waits 1 s in between.)
#[tokio::test]
async fn a_new_sessions_welcome_position_comes_after_what_its_subscriptions_missed() {
    std::env::set_var(HELLO_SUBSCRIPTIONS_DELAY_MS, "1000");
    let env = TestEnv::new("fresh-subs").await;
    let gw = TestGateway::start(&env).await;
    let mut observer = TestClient::connect(&gw.url()).await;
    observer.subscribe(sub("all", "chat")).await;
    // The stream's head before: the position a welcome names, unless it takes x's.
    env.publish_out("chat.all", "w", "0").await;
    observer.expect_deliver().await;
    let hello = Hello {
        subscriptions: vec![sub("all", "chat")],
        ..resume("gone0001")
    };
    let url = gw.url();
    let connecting = tokio::spawn(async move { TestClient::connect_with(&url, hello).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.publish_out("chat.all", "x", "1").await;
    let x = observer
        .expect_deliver()
        .await
        .position
        .expect("a position");
    let mut c = connecting.await.expect("no panic");
    let w = c.welcome().clone();
    assert!(!w.resumed);
    let at = w.position.expect("the stream has a head");
    if at < x {
        // Not past it: then it must come.
        let d = c.expect_deliver().await;
        assert_eq!(d.position, Some(x), "welcome at {at}, x at {x}");
    }
    env.publish_out("chat.all", "y", "2").await;
    let y = c.expect_deliver().await;
    assert_eq!(y.message_id, "y");
    c.close().await;
    observer.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn resuming_a_session_that_no_longer_exists_opens_a_fresh_one_with_a_notice() {
    let env = TestEnv::new("expired").await;
    // Nothing is kept per session on the broker: a session is over when its id is not
    // one this gateway could have issued (here) or when its position aged out of the
    // stream's retention (`gateway_stream`, which also covers another user's id).
    let gw = TestGateway::start(&env).await;
    // An id that never existed opens a fresh session, with a notice.
    let c = TestClient::connect_with(&gw.url(), resume("gone0000")).await;
    let w = c.welcome.clone().unwrap();
    assert!(!w.resumed);
    assert_ne!(w.session, "gone0000");
    assert_eq!(w.notice, Some(ErrorCode::SessionExpired));
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_resume_naming_a_position_past_any_stream_opens_a_fresh_session_with_a_notice() {
    let env = TestEnv::new("farpos").await;
    let gw = TestGateway::start(&env).await;
    let mut first = TestClient::connect(&gw.url()).await;
    first
        .publish("p0", "chat", serde_json::json!("before"))
        .await;
    first.expect_ack("p0").await;
    let session = first.session().to_string();
    first.close().await;
    // 2^53 - 1 is the furthest position a client may name; past it (here in the
    // outbound stream, then in a channel stream) the positions are corrupt. Until
    // this was checked, u64::MAX overflowed the resume's arithmetic and cost the
    // connection (1011; found by gateway_fuzz).
    let far = (1u64 << 53) - 1;
    let mut channel_far = resume(&session);
    channel_far.positions.insert("chat".into(), u64::MAX);
    for (what, hello) in [
        (
            "2^53",
            Hello {
                position: Some(far + 1),
                ..resume(&session)
            },
        ),
        (
            "u64::MAX",
            Hello {
                position: Some(u64::MAX),
                ..resume(&session)
            },
        ),
        ("u64::MAX in positions", channel_far),
    ] {
        let mut c = TestClient::connect_with(&gw.url(), hello).await;
        let w = c.welcome.clone().unwrap();
        assert!(!w.resumed, "{what}");
        assert_ne!(w.session, session, "{what}");
        assert_eq!(w.notice, Some(ErrorCode::Invalid), "{what}");
        c.publish("p", "chat", serde_json::json!(1)).await;
        c.expect_ack("p").await;
        c.close().await;
    }
    // The furthest allowed position is not corrupt: it is past this stream's tail
    // (no stream gets there), so it is refused as such, not as `invalid`.
    let c = TestClient::connect_with(
        &gw.url(),
        Hello {
            position: Some(far),
            ..resume(&session)
        },
    )
    .await;
    let w = c.welcome.clone().unwrap();
    assert!(!w.resumed);
    assert_eq!(w.notice, Some(ErrorCode::SessionExpired));
    c.close().await;
    // And the session itself still resumes.
    let c = TestClient::connect_with(&gw.url(), resume(&session)).await;
    assert!(c.welcome.as_ref().unwrap().resumed);
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_first_frame_other_than_hello_opens_an_implicit_session() {
    let env = TestEnv::new("implicit").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect_raw(&gw.url()).await;
    c.publish("p1", "chat", serde_json::json!("hi")).await;
    let ServerFrame::Welcome(w) = c.recv().await else {
        panic!("welcome comes first")
    };
    assert_eq!(w.user, w.session, "without a token the user is the session");
    c.expect_ack("p1").await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_second_connection_resuming_a_session_takes_it_over_from_the_first() {
    let env = TestEnv::new("takeover").await;
    let gw = TestGateway::start(&env).await;
    let mut first = TestClient::connect(&gw.url()).await;
    let session = first.session().to_string();
    let mut second = TestClient::connect_with(&gw.url(), resume(&session)).await;
    assert!(second.welcome.as_ref().unwrap().resumed);
    assert_eq!(first.expect_close(Duration::from_secs(5)).await, Some(4502));
    second.publish("p", "chat", serde_json::json!(1)).await;
    second.expect_ack("p").await;
    second.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_delivery_window_bounds_unacknowledged_deliveries() {
    let env = TestEnv::new("window").await;
    let gw = TestGateway::start_with(&env, |c| c.delivery_window = 2).await;
    let mut c = TestClient::connect(&gw.url()).await;
    assert_eq!(c.welcome.as_ref().unwrap().limits.delivery_window, 2);
    c.subscribe(Subscribe {
        id: "s".into(),
        channel: "chat".into(),
        ..Default::default()
    })
    .await;
    for i in 0..4 {
        env.publish_out("chat.all", &format!("w{i}"), "0").await;
    }
    c.expect_deliver().await;
    let second = c.expect_deliver().await;
    c.expect_no_deliver(Duration::from_millis(400)).await;
    c.ack_deliveries(second.seq).await;
    assert_eq!(c.expect_deliver().await.message_id, "w2");
    assert_eq!(c.expect_deliver().await.message_id, "w3");
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_session_resumes_on_another_gateway_with_what_it_had_not_acknowledged() {
    let env = TestEnv::new("failover").await;
    let primary = TestGateway::start(&env).await;
    let failover = TestGateway::start(&env).await;
    let mut c = TestClient::connect(&primary.url()).await;
    c.subscribe(Subscribe {
        id: "s".into(),
        channel: "chat".into(),
        ..Default::default()
    })
    .await;
    env.publish_out("chat.all", "f1", "1").await;
    env.publish_out("chat.all", "f2", "2").await;
    let d1 = c.expect_deliver().await;
    c.expect_deliver().await;
    c.ack_deliveries(d1.seq).await;
    c.ping(1).await;
    c.expect("pong", |f| matches!(f, ServerFrame::Pong(_)).then_some(()))
        .await;
    // A request whose reply arrives while the client moves.
    let mut inbound = env.consume_inbound("tickets").await;
    c.request("r", "tickets", Some(10_000), serde_json::json!({}))
        .await;
    let req = warren_e2e::env::next_delivery(&mut inbound, Duration::from_secs(5)).await;

    primary.shutdown().await;
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(1001));
    env.reply_to(&req, "\"done\"", None).await;

    let mut c = TestClient::connect_with(&failover.url(), c.resume_hello()).await;
    assert!(c.welcome.as_ref().unwrap().resumed);
    let d = c.expect_deliver().await;
    assert_eq!(
        d.message_id, "f2",
        "only the unacknowledged delivery comes again"
    );
    let reply = c.expect_reply("r").await;
    assert_eq!(reply.message.get(), "\"done\"");
    c.ack_deliveries(reply.seq.max(d.seq)).await;
    c.close().await;
    failover.shutdown().await;
    env.cleanup().await;
}

/// A subscription made after the session opened does not bring back, on a resume,
/// what was published before it: the `ack` of a `subscribe` names where the session
/// is up to, and the client resumes from there (the SDK keeps it as it keeps a
/// `deliver`'s position).
#[tokio::test]
async fn a_resume_does_not_replay_what_was_published_before_a_subscription() {
    let env = TestEnv::new("sub-position").await;
    let gw = TestGateway::start(&env).await;
    let mut other = TestClient::connect(&gw.url()).await;
    other
        .subscribe(Subscribe {
            id: "o".into(),
            channel: "chat".into(),
            groups: vec!["r2".into()],
            ..Default::default()
        })
        .await;
    let mut c = TestClient::connect(&gw.url()).await;
    // Published before c subscribes to r2: `other` receiving it shows the gateway read it.
    env.publish_out("chat.group.r2", "before", "0").await;
    let before = other.expect_deliver().await.position;
    assert!(before.is_some());
    let r2 = Subscribe {
        id: "s".into(),
        channel: "chat".into(),
        groups: vec!["r2".into()],
        ..Default::default()
    };
    c.send(&warren_protocol::ClientFrame::Subscribe(r2.clone()))
        .await;
    let ack = c
        .expect("ack of s", |f| match f {
            ServerFrame::Ack(a) if a.id == "s" => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ack.position, before, "up to date at the message before it");
    assert_eq!(ack.stream, None, "the outbound stream");
    // The connection is lost; the client resumes from the ack's position.
    let hello = Hello {
        session: Some(c.session().to_string()),
        position: ack.position,
        subscriptions: vec![r2],
        ..Default::default()
    };
    c.abort();
    let mut c = TestClient::connect_with(&gw.url(), hello).await;
    assert!(c.welcome().resumed);
    env.publish_out("chat.group.r2", "after", "1").await;
    assert_eq!(
        c.expect_deliver().await.message_id,
        "after",
        "the message from before the subscription is not replayed"
    );
    gw.shutdown().await;
    env.cleanup().await;
}
