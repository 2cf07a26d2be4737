//! What a gateway checks a stream against, with its hub held behind (through the
//! environment of this process: its own test binary).
//!
//! Resumes naming positions the hub has not read yet (clients coming from a gateway
//! ahead of this one) are checked against the stream's tail, and resumes waiting
//! together share those looks. What a look saw answers only for the stream it looked
//! at and for positions up to what it saw: a look for one position stops at the
//! first message at or past it, and says nothing of later positions, nor of a stream
//! declared again since.
//!
//! A hub reader that starts again checks that the stream still holds what it read:
//! its tail, and the message at the last position read.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::BasicProperties;
use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::{amqp_addr, TestEnv};
use warren_e2e::gateway::{voice_for_an_hour, TestGateway};
use warren_e2e::load::read_stream;
use warren_gateway::fault::{HUB_READ_DELAY_MS, HUB_RESTART_DELAY_MS};
use warren_protocol::amqp::keys;
use warren_protocol::{ClientFrame, ErrorCode, Hello, ServerFrame};

const LIMIT: Duration = Duration::from_secs(60);
/// How long the hub takes over each message, and waits before it looks at the stream
/// when it starts again (the same in every test of this process).
const HUB_DELAY_MS: &str = "5000";
const RESTART_DELAY_MS: &str = "4000";

/// Holds every hub of this process behind.
fn hold_hubs() {
    std::env::set_var(HUB_READ_DELAY_MS, HUB_DELAY_MS);
    std::env::set_var(HUB_RESTART_DELAY_MS, RESTART_DELAY_MS);
}

/// A resume of `session` that acknowledged `position` of the outbound stream.
fn resume(session: &str, position: u64) -> Hello {
    Hello {
        session: Some(session.into()),
        position: Some(position),
        ..Default::default()
    }
}

/// A gateway of `env` and a client subscribed to the chat broadcast on it.
async fn gateway_and_subscriber(env: &TestEnv) -> (TestGateway, TestClient) {
    let gw = TestGateway::start(env).await;
    let mut live = TestClient::connect(&gw.url()).await;
    live.subscribe(sub("all", "chat")).await;
    (gw, live)
}

#[tokio::test]
async fn resumes_ahead_of_the_hub_are_not_refused_on_a_look_taken_for_another() {
    // The hub takes 5 s over each message: it reads none of this test's broadcasts
    // while the resumes wait for it (300 ms), so both are checked against the tail.
    hold_hubs();
    TestEnv::run("tail-look", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let c = TestClient::connect(&gw.url()).await;
        let session = c.session().to_string();
        c.close().await;

        // 40 broadcasts at once: RabbitMQ writes them in chunks of several, so a look
        // from the last chunk for the first position stops before the last one.
        let mut confirms = Vec::new();
        for i in 0..40 {
            let confirm = env
                .channel()
                .basic_publish(
                    ShortString::from(env.names.outbound_exchange()),
                    ShortString::from(keys::broadcast("chat")),
                    BasicPublishOptions::default(),
                    format!("{{\"n\":{i}}}").as_bytes(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(ShortString::from(format!("m{i}"))),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for c in confirms {
            assert!(c.await.expect("confirm").is_ack());
        }
        let seen: Vec<u64> = read_stream(
            &amqp_addr(),
            &env.names.outbound_stream(),
            Duration::from_millis(500),
        )
        .await
        .expect("read the outbound stream")
        .into_iter()
        .map(|(position, _)| position.expect("a stream message carries its position"))
        .collect();
        assert_eq!(seen.len(), 40, "the stream holds the 40 broadcasts");
        let (first, last) = (seen[0], seen[39]);

        // Two clients of that session come back from a gateway that had read these
        // positions: one that acknowledged the first broadcast, then one that had them
        // all. The second asks while the first one's look is under way or done.
        let url = gw.url();
        let early = tokio::spawn({
            let (url, hello) = (url.clone(), resume(&session, first));
            async move { TestClient::connect_with(&url, hello).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let late = tokio::spawn({
            let hello = resume(&session, last);
            async move { TestClient::connect_with(&url, hello).await }
        });
        for (what, client) in [("first", early), ("last", late)] {
            let client = client.await.expect("no panic");
            let w = client.welcome();
            assert!(
                w.resumed && w.notice.is_none(),
                "the resume at the {what} position ({}) must resume: the stream holds \
                 positions {first}..={last}; got {w:?}",
                if what == "first" { first } else { last }
            );
            client.close().await;
        }
    })
    .await;
}

/// Publishes `n` chat broadcasts (message ids `<prefix><i>`) to the test's empty
/// outbound stream one at a time, each confirmed: each its own chunk, so the last
/// chunk holds only the last message. Returns their positions.
async fn chunk_by_chunk(env: &TestEnv, prefix: &str, n: usize) -> Vec<u64> {
    chunk_by_chunk_in(env, "chat", &env.names.outbound_stream(), prefix, n).await
}

/// As [`chunk_by_chunk`], broadcasts on `channel`, whose messages `stream` keeps.
async fn chunk_by_chunk_in(
    env: &TestEnv,
    channel: &str,
    stream: &str,
    prefix: &str,
    n: usize,
) -> Vec<u64> {
    for i in 0..n {
        env.publish_out(
            &format!("{channel}.all"),
            &format!("{prefix}{i}"),
            &i.to_string(),
        )
        .await;
    }
    let seen = read_stream(&amqp_addr(), stream, Duration::from_millis(500))
        .await
        .expect("read the outbound stream");
    assert_eq!(seen.len(), n, "the stream holds the {n} broadcasts");
    seen.into_iter()
        .map(|(p, _)| p.expect("a stream message carries its position"))
        .collect()
}

/// A gateway whose hub has read nothing yet (its reader starts at the stream's last
/// chunk, and here takes 5 s over it) cannot tell what came between a resuming
/// client's position and that chunk: it reads from the position instead of going
/// live there and skipping everything up to the last chunk.
#[tokio::test]
async fn a_resume_before_the_hub_read_anything_is_replayed_from_its_position() {
    hold_hubs();
    TestEnv::run("tail-look-unread", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let c = TestClient::connect(&gw.url()).await;
        let session = c.session().to_string();
        c.close().await;
        gw.shutdown().await;
        let first = chunk_by_chunk(env, "m", 20).await[0];

        // Serves after 3 s without its hub ready.
        let gw = TestGateway::start(env).await;
        let hello = Hello {
            subscriptions: vec![sub("all", "chat")],
            ..resume(&session, first)
        };
        let mut c = TestClient::connect_with(&gw.url(), hello).await;
        assert!(c.welcome().resumed, "{:?}", c.welcome());
        let got: Vec<String> = c
            .expect_delivers(19)
            .await
            .into_iter()
            .map(|d| d.message_id)
            .collect();
        let want: Vec<String> = (1..20).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want, "everything after the position, in order");
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A new session on a gateway whose hub has not read the stream's tail yet (it takes
/// 5 s over the last chunk here) waits for it a while: its welcome names the tail, and
/// the tail, which came before the session, is not delivered to it. (Its welcome had
/// no position, so a resume replayed the whole stream.)
#[tokio::test]
async fn a_new_session_before_the_hub_read_the_tail_starts_after_it() {
    hold_hubs();
    TestEnv::run("tail-look-new", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        gw.shutdown().await;
        let last = chunk_by_chunk(env, "o", 3).await[2];

        // Serves after 3 s without its hub ready; the hub reads the tail 5 s in.
        let gw = TestGateway::start(env).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut c = TestClient::connect(&gw.url()).await;
        assert_eq!(c.welcome().position, Some(last), "{:?}", c.welcome());
        c.subscribe(sub("all", "chat")).await;
        c.expect_no_deliver(Duration::from_secs(2)).await;
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A first subscription to a channel with a stream of its own, on a gateway whose hub
/// of that stream has not read its tail yet, waits for it a while, as a new session
/// does: its `ack` names the tail, and the tail, which came before the subscription,
/// is not delivered. (It had no position, so a resume replayed the whole stream, and
/// the tail reached the session when the hub read it.)
#[tokio::test]
async fn a_first_subscription_to_a_channel_stream_before_its_hub_read_the_tail_starts_after_it() {
    hold_hubs();
    TestEnv::run("tail-look-chan", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, voice_for_an_hour).await;
        let c = TestClient::connect(&gw.url()).await;
        let resume = c.resume_hello();
        c.close().await;
        gw.shutdown().await;
        let voice = env.names.channel_stream("voice");
        let last = chunk_by_chunk_in(env, "voice", &voice, "v", 3).await[2];

        // Serves after 3 s without its hubs ready; they read the tails 5 s in. A resume
        // does not wait for them; its first voice subscription does.
        let gw = TestGateway::start_with(env, voice_for_an_hour).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut c = TestClient::connect_with(&gw.url(), resume).await;
        c.send(&ClientFrame::Subscribe(sub("v", "voice"))).await;
        let ack = c
            .expect("ack v", |f| match f {
                ServerFrame::Ack(a) if a.id == "v" => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            (ack.position, ack.stream.as_deref()),
            (Some(last), Some("voice")),
            "{ack:?}"
        );
        c.expect_no_deliver(Duration::from_secs(2)).await;
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_look_at_a_stream_that_was_replaced_since_does_not_resume_into_the_new_one() {
    hold_hubs();
    TestEnv::run("tail-look-replaced", LIMIT, async |env| {
        let (gw, mut live) = gateway_and_subscriber(env).await;
        let gone = TestClient::connect(&gw.url()).await;
        let session = gone.session().to_string();
        gone.close().await;

        // Position 0, which the hub is still taking its 5 s over: a resume naming it
        // is checked against the stream's tail, and that look is kept.
        env.publish_out("chat.all", "o0", "0").await;
        let c = TestClient::connect_with(&gw.url(), resume(&session, 0)).await;
        assert!(c.welcome().resumed, "the stream holds position 0");
        c.close().await;
        assert_eq!(live.expect_deliver().await.position, Some(0));

        // The stream is deleted; the gateway declares it again, finds it new and ends
        // its sessions on the old one.
        env.delete_outbound_stream().await;
        assert_eq!(live.expect_close(Duration::from_secs(20)).await, Some(4002));

        // Position 0 of the old stream is not in the new, empty one. The look kept
        // from before said the stream held it; it must not answer for the new one.
        let c = TestClient::connect_with(&gw.url(), resume(&session, 0)).await;
        let w = c.welcome();
        assert!(
            !w.resumed && w.notice == Some(ErrorCode::SessionExpired),
            "a position of the replaced stream gets a fresh session with session_expired: {w:?}"
        );
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_stream_declared_again_that_passed_the_position_read_is_still_found_replaced() {
    hold_hubs();
    TestEnv::run("tail-look-passed", LIMIT, async |env| {
        let (gw, mut live) = gateway_and_subscriber(env).await;
        env.publish_out("chat.all", "o0", "0").await;
        assert_eq!(live.expect_deliver().await.position, Some(0));

        // The stream is deleted; another gateway declares it again, and two
        // broadcasts land in it before this gateway's reader looks (it waits 4 s).
        // The new stream's tail (1) is past what this gateway read (0): only the
        // message at position 0 tells that it is another stream.
        env.delete_outbound_stream().await;
        let other = TestGateway::start(env).await;
        env.publish_out("chat.all", "n0", "1").await;
        env.publish_out("chat.all", "n1", "2").await;
        assert_eq!(
            live.expect_close(Duration::from_secs(20)).await,
            Some(4002),
            "the session on the replaced stream is ended, not carried on at position 1 \
             of the new one (which would skip n0)"
        );
        other.shutdown().await;
        gw.shutdown().await;
    })
    .await;
}
