//! A gateway's `ping` names a stream position up to which the session was sent
//! everything it may receive: a session that receives nothing while its stream's
//! retention drops what it last got resumes from a position the stream still holds,
//! with no `session_expired` for positions that held nothing for it. (Before, its
//! position stayed at its last delivery: its resume read the whole retained stream
//! and reported the dropped positions as missed.)

use std::time::Duration;

use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_protocol::{ErrorCode, Hello, ServerFrame, Subscribe};

const LIMIT: Duration = Duration::from_secs(60);

/// Reads raw frames until a gateway `ping` names `position` at least `at_least`
/// (answering every ping, as a client must); returns it.
async fn ping_position(c: &mut TestClient, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let Some(v) = c.next_ping(deadline).await else {
            panic!(
                "no ping naming position {at_least} within 30 s (closed: {:?})",
                c.close_code
            )
        };
        assert!(v.get("stream").is_none(), "the outbound stream: {v}");
        if let Some(p) = v["position"].as_u64().filter(|p| *p >= at_least) {
            return p;
        }
    }
}

#[tokio::test]
async fn a_quiet_session_keeps_a_position_its_stream_holds_through_pings() {
    TestEnv::run("ping-position", LIMIT, async |env| {
        // 2 MiB of retention in 1 MiB segments: 4.8 MiB of others' traffic drops what
        // the session last received.
        let gw = TestGateway::start_with(env, |c| {
            c.stream_max_bytes = 2 * 1024 * 1024;
            c.hub_buffer_messages = 10;
            c.heartbeat_ms = 200;
        })
        .await;
        let quiet = Subscribe {
            id: "quiet".into(),
            channel: "chat".into(),
            groups: vec!["quiet".into()],
            broadcast: Some(false),
            ..Default::default()
        };
        let mut c = TestClient::connect(&gw.url()).await;
        let session = c.session().to_string();
        c.subscribe(quiet.clone()).await;
        env.publish_out("chat.group.quiet", "mine", "0").await;
        let mine = c.expect_deliver().await.position.expect("a position");
        let body = format!("\"{}\"", "x".repeat(16 * 1024));
        let others = async {
            for i in 0..300 {
                env.publish_out("chat.all", &format!("b{i}"), &body).await;
            }
        };
        // Nothing of that is the session's; its pings carry the stream's newest. The
        // client answers pings while the others publish: on a busy machine 300
        // confirmed publishes outlast the heartbeat timeout (1 s here).
        let ((), position) = tokio::join!(others, ping_position(&mut c, mine + 300));
        // The newest position: past the 300 (each stream segment begins with a
        // position that holds no message).
        assert!(position >= mine + 300, "{position}");
        c.abort();

        let mut c = TestClient::connect_with(
            &gw.url(),
            Hello {
                session: Some(session),
                position: Some(position),
                subscriptions: vec![quiet],
                ..Default::default()
            },
        )
        .await;
        assert!(c.welcome().resumed);
        env.publish_out("chat.group.quiet", "after", "1").await;
        match c.recv().await {
            ServerFrame::Deliver(d) => assert_eq!(d.message_id, "after"),
            ServerFrame::Error(e) if e.code == ErrorCode::SessionExpired => {
                panic!("a resume from the ping's position was told it missed: {e:?}")
            }
            other => panic!("{other:?}"),
        }
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}
