//! The outbound stream: what services publish lands in one RabbitMQ stream that each
//! gateway reads once and fans out in memory. Sessions hold no broker state: a client
//! resumes — on any gateway — by naming its last stream position, and gets what it
//! missed, in order, once; replies travel the same way; a slow client catches up from
//! its position; positions older than the stream's retention are reported.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::{ack, amqp_addr, next_delivery, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_protocol::amqp::{keys, H_CC};
use warren_protocol::{Deliver, ErrorCode, Hello, ServerFrame, Subscribe};

const LIMIT: Duration = Duration::from_secs(60);

fn resume(session: &str, position: Option<u64>, subscriptions: Vec<Subscribe>) -> Hello {
    Hello {
        session: Some(session.into()),
        position,
        subscriptions,
        ..Default::default()
    }
}

fn texts(ds: &[Deliver]) -> Vec<String> {
    ds.iter().map(|d| d.message.get().to_string()).collect()
}

/// `n` sessions that subscribed to `s` and lost their connection: each one's id and
/// the position it started at.
async fn gone(gw: &TestGateway, n: usize, s: &Subscribe) -> Vec<(String, Option<u64>)> {
    let mut away = Vec::new();
    for _ in 0..n {
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(s.clone()).await;
        away.push((c.session().to_string(), c.welcome().position));
        c.abort();
    }
    away
}

/// A counter of the gateway's `/metrics`.
async fn metric(gw: &TestGateway, name: &str) -> u64 {
    u64::try_from(gw.metric(name).await).expect("a counter")
}

#[tokio::test]
async fn fan_out_follows_subscriptions_and_identity_and_declares_nothing_per_session() {
    TestEnv::run("stream-fanout", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let mut a = TestClient::connect_with(
            &gw.url(),
            Hello {
                token: Some("alice".into()),
                ..Default::default()
            },
        )
        .await;
        let mut b = TestClient::connect_with(
            &gw.url(),
            Hello {
                token: Some("bob".into()),
                ..Default::default()
            },
        )
        .await;
        for c in [&mut a, &mut b] {
            c.subscribe(sub("all", "chat")).await;
            c.subscribe(Subscribe {
                id: "me".into(),
                channel: "chat".into(),
                direct: true,
                ..Default::default()
            })
            .await;
        }
        a.subscribe(Subscribe {
            id: "orders".into(),
            channel: "chat".into(),
            topic: Some("order.*".into()),
            ..Default::default()
        })
        .await;
        env.publish_out("chat.all", "m1", "1").await;
        env.publish_out("chat.user.bob", "m2", "2").await;
        env.publish_out("chat.event.order.created", "m3", "3").await;
        env.publish_out("chat.group.secret", "m4", "4").await;
        env.publish_out("chat.user.alice", "m5", "5").await;
        let got_a = a.expect_delivers(3).await;
        assert_eq!(texts(&got_a), ["1", "3", "5"]);
        let got_b = b.expect_delivers(2).await;
        assert_eq!(texts(&got_b), ["1", "2"]);
        a.expect_no_deliver(Duration::from_millis(300)).await;
        b.expect_no_deliver(Duration::from_millis(300)).await;
        // One broadcast, one position, the same on both sockets; positions grow.
        assert_eq!(got_a[0].position, got_b[0].position);
        assert!(got_a.windows(2).all(|w| w[0].position < w[1].position));
        // Nothing on the broker for either session.
        for c in [&a, &b] {
            // The per-session queue of the removed `outbound = "queues"` mode.
            let queue = format!("{}warren.session.{}", env.names.prefix(), c.session());
            assert_eq!(env.message_count(&queue).await, None, "no {queue}");
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reply_travels_through_the_stream_to_the_session_that_asked() {
    TestEnv::run("stream-reply", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let mut inbound = env.consume_inbound("echo").await;
        let mut a = TestClient::connect(&gw.url()).await;
        let mut b = TestClient::connect(&gw.url()).await;
        a.request("q1", "echo", Some(5000), serde_json::json!({"n": 1}))
            .await;
        let req = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        assert_eq!(
            req.properties.reply_to().as_ref().map(|r| r.to_string()),
            Some(env.names.outbound_stream()),
            "replies are addressed to the outbound stream"
        );
        env.reply_to(&req, "{\"ok\":1}", None).await;
        ack(&req).await;
        let r = a.expect_reply("q1").await;
        assert_eq!(r.message.get(), "{\"ok\":1}");
        assert!(r.position.is_some());
        b.expect_quiet(Duration::from_millis(300)).await;
        // A refusal comes back the same way, as an error with the service's code.
        a.request("q2", "echo", Some(5000), serde_json::json!({"n": 2}))
            .await;
        env.answer_next(&mut inbound, "{\"message\":\"no\"}", Some("rejected"))
            .await;
        a.expect_error_code(Some("q2"), ErrorCode::Rejected).await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_resumes_on_another_gateway_from_its_position_and_misses_nothing() {
    TestEnv::run("stream-resume", LIMIT, async |env| {
        let gw1 = TestGateway::start(env).await;
        let gw2 = TestGateway::start(env).await;
        let subs = vec![sub("all", "chat")];
        let mut c = TestClient::connect(&gw1.url()).await;
        let session = c.session().to_string();
        c.subscribe(subs[0].clone()).await;
        env.publish_out("chat.all", "m1", "1").await;
        let first = c.expect_deliver().await;
        let position = first.position.expect("a position");
        // Gone without a goodbye; messages keep coming.
        c.abort();
        for i in 2..=4 {
            env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
                .await;
        }
        let mut c =
            TestClient::connect_with(&gw2.url(), resume(&session, Some(position), subs.clone()))
                .await;
        assert!(c.welcome().resumed);
        assert_eq!(c.session(), session);
        let replayed = c.expect_delivers(3).await;
        assert_eq!(
            texts(&replayed),
            ["2", "3", "4"],
            "in order, from the position on"
        );
        env.publish_out("chat.all", "m5", "5").await;
        let live = c.expect_deliver().await;
        assert_eq!(live.message.get(), "5");
        c.expect_no_deliver(Duration::from_millis(300)).await;
        gw1.shutdown().await;
        gw2.shutdown().await;
    })
    .await;
}

/// A producer that sets no `message_id` (most AMQP clients by default) publishing the
/// same message twice: two deliveries with two ids, which a replay on another gateway
/// carries again. The id was a hash of the routing key and the body alone, the same
/// for both, and the SDK dropped the second as a copy of the first.
#[tokio::test]
async fn the_same_message_published_twice_without_message_id_gets_two_ids_kept_on_replay() {
    TestEnv::run("stream-no-id", LIMIT, async |env| {
        let gw1 = TestGateway::start(env).await;
        let gw2 = TestGateway::start(env).await;
        let subs = vec![sub("all", "chat")];
        let mut c = TestClient::connect(&gw1.url()).await;
        let session = c.session().to_string();
        c.subscribe(subs[0].clone()).await;
        env.publish_out("chat.all", "m0", "0").await;
        let position = c.expect_deliver().await.position.expect("a position");
        for _ in 0..2 {
            env.channel()
                .basic_publish(
                    ShortString::from(env.names.outbound_exchange()),
                    ShortString::from("chat.all"),
                    BasicPublishOptions::default(),
                    b"{\"type\":\"refresh\"}",
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
        }
        let live: Vec<String> = c
            .expect_delivers(2)
            .await
            .into_iter()
            .map(|d| d.message_id)
            .collect();
        assert_ne!(live[0], live[1], "two messages, two ids");
        c.abort();
        let mut c =
            TestClient::connect_with(&gw2.url(), resume(&session, Some(position), subs.clone()))
                .await;
        assert!(c.welcome().resumed);
        let replayed: Vec<String> = c
            .expect_delivers(2)
            .await
            .into_iter()
            .map(|d| d.message_id)
            .collect();
        assert_eq!(replayed, live, "a replay carries the ids they had");
        gw1.shutdown().await;
        gw2.shutdown().await;
    })
    .await;
}

/// A service not built on the Warren library sets `CC` and `x-warren-cc` itself
/// (PROTOCOL.md), and may name the routing key there again. A session resuming from
/// the gateway's memory past such messages must still get everything after them.
#[tokio::test]
async fn a_resume_past_messages_naming_their_key_twice_misses_nothing() {
    TestEnv::run("stream-cc-twice", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let subs = vec![sub("all", "chat")];
        let (session, start) = gone(&gw, 1, &subs[0]).await.remove(0);
        let mut observer = TestClient::connect(&gw.url()).await;
        observer.subscribe(subs[0].clone()).await;
        // 200 fit the delivery window (256) unacknowledged; the catch-up took 256
        // entries of the key's index, 60 positions twice, and went live after 196.
        for i in 0..200 {
            let mut headers = FieldTable::default();
            if i < 60 {
                headers.insert(H_CC.into(), AMQPValue::LongString("chat.all".into()));
            }
            env.publish(
                &env.names.outbound_exchange(),
                "chat.all",
                &format!("m{i}"),
                &i.to_string(),
                headers,
            )
            .await;
        }
        // Read by the gateway: the resume is served from its memory.
        observer.expect_delivers(200).await;
        let mut c =
            TestClient::connect_with(&gw.url(), resume(&session, start, subs.clone())).await;
        let replayed = c.expect_delivers(200).await;
        let want: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        assert_eq!(texts(&replayed), want, "none skipped");
        c.expect_no_deliver(Duration::from_millis(300)).await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_position_older_than_the_gateways_memory_is_replayed_from_the_stream() {
    TestEnv::run("stream-old", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.hub_buffer_messages = 3;
        })
        .await;
        let subs = vec![sub("all", "chat")];
        let (session, start) = gone(&gw, 1, &subs[0]).await.remove(0);
        // A live subscriber shows when the gateway has read what is published: the
        // resume must come after that, when the ring no longer holds its position
        // (resuming earlier, it would get everything live, from no reader).
        let mut observer = TestClient::connect(&gw.url()).await;
        observer.subscribe(subs[0].clone()).await;
        for i in 1..=20 {
            env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
                .await;
            // Not this session's: filtered out of the replay.
            env.publish_out("chat.group.x", &format!("g{i}"), "0").await;
        }
        observer.expect_delivers(20).await;
        let mut c =
            TestClient::connect_with(&gw.url(), resume(&session, start, subs.clone())).await;
        let replayed = c.expect_delivers(20).await;
        let want: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
        assert_eq!(texts(&replayed), want);
        env.publish_out("chat.all", "m21", "21").await;
        assert_eq!(c.expect_deliver().await.message.get(), "21");
        c.expect_no_deliver(Duration::from_millis(300)).await;
        assert!(
            metric(&gw, "stream_readers_total").await >= 1,
            "read from the stream"
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn sessions_resuming_from_before_the_ring_share_stream_readers() {
    TestEnv::run("stream-shared-readers", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.hub_buffer_messages = 3;
        })
        .await;
        let subs = vec![sub("all", "chat")];
        let sessions = 30;
        let away = gone(&gw, sessions, &subs[0]).await;
        // Shows when the gateway has read what is published (see above).
        let mut observer = TestClient::connect(&gw.url()).await;
        observer.subscribe(subs[0].clone()).await;
        let n = 40;
        for i in 1..=n {
            env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
                .await;
        }
        observer.expect_delivers(n).await;
        let before = metric(&gw, "stream_readers_total").await;
        // All come back at once, from positions the ring no longer holds.
        let back = away.iter().map(|(session, start)| {
            let url = gw.url();
            let hello = resume(session, *start, subs.clone());
            async move {
                let mut c = TestClient::connect_with(&url, hello).await;
                let got = c.expect_delivers(n).await;
                c.expect_no_deliver(Duration::from_millis(200)).await;
                texts(&got)
            }
        });
        let want: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        for got in futures_util::future::join_all(back).await {
            assert_eq!(got, want, "every message, in order, once");
        }
        let readers = metric(&gw, "stream_readers_total").await - before;
        assert!(
            (1..=3).contains(&readers),
            "{sessions} sessions read the stream through {readers} readers"
        );
        gw.shutdown().await;
    })
    .await;
}

/// The delivery window of the shared-reader pace tests.
const WINDOW: u16 = 8;

/// Two chat sessions gone from a gateway with a ring of 3 messages and a delivery
/// window of [`WINDOW`], more messages published since than a shared reader's window
/// holds, and the two resumed: `fast` first, then `slow`.
struct ResumedPastAWindow {
    gw: TestGateway,
    fast: TestClient,
    slow: TestClient,
    /// The messages' bodies, in order.
    want: Vec<String>,
    /// The gateway's `stream_readers_total` before the two resumed.
    readers_before: u64,
}

async fn two_resumed_past_a_window(env: &TestEnv) -> ResumedPastAWindow {
    let gw = TestGateway::start_with(env, |c| {
        c.hub_buffer_messages = 3;
        c.delivery_window = WINDOW;
    })
    .await;
    let subs = vec![sub("all", "chat")];
    let away = gone(&gw, 2, &subs[0]).await;
    let n = warren_gateway::replay::WINDOW_MESSAGES + 200;
    for i in 0..n {
        env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
            .await;
    }
    let readers_before = metric(&gw, "stream_readers_total").await;
    let resumed = async |(session, position): &(String, Option<u64>)| {
        TestClient::connect_with(&gw.url(), resume(session, *position, subs.clone())).await
    };
    let fast = resumed(&away[0]).await;
    let slow = resumed(&away[1]).await;
    ResumedPastAWindow {
        fast,
        slow,
        want: (0..n).map(|i| i.to_string()).collect(),
        readers_before,
        gw,
    }
}

#[tokio::test]
async fn a_session_too_slow_for_its_shared_reader_reads_on_with_its_own_without_loss() {
    TestEnv::run("stream-replay-behind", LIMIT, async |env| {
        let ResumedPastAWindow {
            gw,
            mut fast,
            slow,
            want,
            readers_before: before,
        } = two_resumed_past_a_window(env).await;
        let (window, n) = (WINDOW, want.len());
        // `slow` takes its first window of deliveries and then reads nothing.
        let read_all = async |c: &mut TestClient| {
            let mut got = Vec::new();
            while got.len() < n {
                let d = c.expect_deliver().await;
                got.push(d.message.get().to_string());
                if got.len() % usize::from(window) == 0 {
                    c.ack_deliveries(d.seq).await;
                }
            }
            got
        };
        assert_eq!(
            read_all(&mut fast).await,
            want,
            "the fast session is not held back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut slow = slow;
        assert_eq!(
            read_all(&mut slow).await,
            want,
            "the slow one misses nothing"
        );
        slow.expect_no_deliver(Duration::from_millis(200)).await;
        let readers = metric(&gw, "stream_readers_total").await - before;
        assert_eq!(
            readers, 2,
            "one shared reader, then one of the slow session's own"
        );
        gw.shutdown().await;
    })
    .await;
}

/// As above, but the slow session keeps taking a little: a window of deliveries every
/// half second. It made progress, so the shared reader never stalled, and the fast
/// session got the messages past the window at the slow one's pace (200: 12.5 s).
/// Now a window full for a second whose slowest session took less than half of it
/// while another waited for more drops its older half, as when the slowest took
/// nothing. Measured by how far the slow session got, not by time: the fast one
/// must finish before the slow one takes what the window held back from it.
#[tokio::test]
async fn a_slow_session_taking_a_little_each_second_does_not_hold_its_shared_reader_back() {
    TestEnv::run("stream-replay-pace", LIMIT, async |env| {
        let ResumedPastAWindow {
            gw,
            mut fast,
            mut slow,
            want,
            ..
        } = two_resumed_past_a_window(env).await;
        let (window, n) = (WINDOW, want.len());
        let slow_got = std::sync::atomic::AtomicUsize::new(0);
        let fast_done = std::sync::atomic::AtomicBool::new(false);
        let fast_reads = async {
            let mut got = Vec::new();
            while got.len() < n {
                let d = fast.expect_deliver().await;
                got.push(d.message.get().to_string());
                if got.len() % usize::from(window) == 0 {
                    fast.ack_deliveries(d.seq).await;
                }
            }
            let slow_at = slow_got.load(std::sync::atomic::Ordering::SeqCst);
            fast_done.store(true, std::sync::atomic::Ordering::SeqCst);
            (got, slow_at)
        };
        // A window of deliveries every half second until the fast one is done, then at
        // once.
        let slow_reads = async {
            let mut got = Vec::new();
            while got.len() < n {
                let d = slow.expect_deliver().await;
                got.push(d.message.get().to_string());
                slow_got.store(got.len(), std::sync::atomic::Ordering::SeqCst);
                if got.len() % usize::from(window) == 0 {
                    if !fast_done.load(std::sync::atomic::Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    slow.ack_deliveries(d.seq).await;
                }
            }
            got
        };
        let ((fast_got, slow_at), slow_got_all) = tokio::join!(fast_reads, slow_reads);
        assert_eq!(fast_got, want, "the fast session got everything, in order");
        assert!(
            slow_at < 150,
            "the fast session finished only once the slow one had taken {slow_at} messages: it \
             was held to the slow one's pace"
        );
        assert_eq!(slow_got_all, want, "the slow one misses nothing");
        slow.expect_no_deliver(Duration::from_millis(200)).await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_slow_client_catches_up_from_its_position_without_loss_or_duplicate() {
    TestEnv::run("stream-slow", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.delivery_window = 8;
        })
        .await;
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        let n = 400;
        for i in 0..n {
            env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
                .await;
        }
        // The client reads slowly, a window at a time.
        let mut got = Vec::new();
        while got.len() < n {
            let d = c.expect_deliver().await;
            got.push(d.message.get().to_string());
            if got.len() % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                c.ack_deliveries(d.seq).await;
            }
        }
        let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
        c.expect_no_deliver(Duration::from_millis(300)).await;
        let lagged = metric(&gw, "stream_lagged_total").await;
        assert!(
            lagged >= 1,
            "the live backlog filled and it caught up: {lagged}"
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_position_that_aged_out_of_retention_is_reported_with_how_much_was_missed() {
    TestEnv::run("stream-aged", LIMIT, async |env| {
        // 2 MiB of retention in 1 MiB segments: 4 MiB of traffic drops the oldest.
        let gw = TestGateway::start_with(env, |c| {
            c.stream_max_bytes = 2 * 1024 * 1024;
            c.hub_buffer_messages = 10;
        })
        .await;
        let subs = vec![sub("all", "chat")];
        let mut c = TestClient::connect(&gw.url()).await;
        let session = c.session().to_string();
        c.subscribe(subs[0].clone()).await;
        env.publish_out("chat.all", "first", "0").await;
        let position = c.expect_deliver().await.position;
        c.abort();
        let body = format!("\"{}\"", "x".repeat(16 * 1024));
        for i in 0..300 {
            env.publish_out("chat.all", &format!("b{i}"), &body).await;
        }
        let mut c = TestClient::connect_with(&gw.url(), resume(&session, position, subs)).await;
        let e = c
            .expect("session_expired notice", |f| match f {
                ServerFrame::Error(e) if e.code == ErrorCode::SessionExpired => Some(e.clone()),
                _ => None,
            })
            .await;
        assert!(e.message.contains("aged out"), "{e:?}");
        let missed: u64 = e
            .message
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("the count comes first");
        assert!(missed > 0 && missed < 300, "{missed}");
        // What is still retained follows, ending with the newest.
        let mut last = None;
        while let Some(f) = c.recv_within(Duration::from_secs(2)).await {
            if let ServerFrame::Deliver(d) = f {
                last = Some(d.message_id.clone());
            }
        }
        assert_eq!(last.as_deref(), Some("b299"));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_session_id_never_issued_or_of_another_user_gets_a_fresh_session_with_a_notice() {
    TestEnv::run("stream-unknown", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let c = TestClient::connect_with(&gw.url(), resume("gone0000", Some(3), vec![])).await;
        let w = c.welcome().clone();
        assert!(!w.resumed);
        assert_ne!(w.session, "gone0000");
        assert_eq!(w.notice, Some(ErrorCode::SessionExpired));
        c.close().await;
        let mut bob = TestClient::connect_with(
            &gw.url(),
            Hello {
                token: Some("bob".into()),
                ..Default::default()
            },
        )
        .await;
        bob.subscribe(Subscribe {
            id: "me".into(),
            channel: "chat".into(),
            direct: true,
            ..Default::default()
        })
        .await;
        let mut eve = TestClient::connect_with(
            &gw.url(),
            Hello {
                token: Some("eve".into()),
                ..bob.resume_hello()
            },
        )
        .await;
        let w = eve.welcome().clone();
        assert!(!w.resumed);
        assert_eq!(w.notice, Some(ErrorCode::Forbidden));
        env.publish_out("chat.user.bob", "d1", "1").await;
        assert_eq!(bob.expect_deliver().await.message_id, "d1");
        eve.expect_no_deliver(Duration::from_millis(300)).await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_stream_deleted_and_declared_again_ends_its_sessions_and_old_positions_get_fresh_sessions(
) {
    TestEnv::run("stream-replaced", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        // `a` stays connected; `c` goes away after the same five messages.
        let mut a = TestClient::connect(&gw.url()).await;
        let mut c = TestClient::connect(&gw.url()).await;
        for x in [&mut a, &mut c] {
            x.subscribe(sub("all", "chat")).await;
        }
        for i in 0..5 {
            env.publish_out("chat.all", &format!("o{i}"), &format!("{i}"))
                .await;
        }
        a.expect_delivers(5).await;
        let old = c.expect_delivers(5).await;
        let old_position = old[4].position;
        assert_eq!(old_position, Some(4));
        let session = c.session().to_string();
        c.abort();

        // Deleted (how a stream is emptied) and declared again by a gateway starting
        // (as by `topology apply`, or by gateways reconnecting to a broker that lost
        // its data): positions start over at 0.
        env.delete_outbound_stream().await;
        let gw2 = TestGateway::start(env).await;

        // The first gateway's reader finds the new stream's tail below what it had
        // read: it reads the new stream from its start, and `a`'s session, whose
        // positions name the old stream, is closed with 4002.
        assert_eq!(
            a.expect_close(Duration::from_secs(15)).await,
            Some(4002),
            "a live session on the replaced stream is ended"
        );
        // A resume naming the old position, on either gateway: a fresh session with a
        // notice, never a silent wait for the new stream to reach position 4.
        let mut resumed = Vec::new();
        for g in [&gw, &gw2] {
            let r = TestClient::connect_with(
                &g.url(),
                resume(&session, old_position, vec![sub("all", "chat")]),
            )
            .await;
            let w = r.welcome();
            assert!(!w.resumed, "{w:?}");
            assert_eq!(w.notice, Some(ErrorCode::SessionExpired), "{w:?}");
            assert_ne!(r.session(), session);
            resumed.push(r);
        }
        // And both gateways deliver what services publish to the new stream, from
        // its position 0, to the fresh sessions.
        env.publish_out("chat.all", "n0", "100").await;
        for r in &mut resumed {
            let d = r.expect_deliver().await;
            assert_eq!((d.message_id.as_str(), d.position), ("n0", Some(0)));
        }
        // A resume with a position the new stream has is a resume.
        let r = TestClient::connect_with(
            &gw.url(),
            resume(resumed[0].session(), Some(0), vec![sub("all", "chat")]),
        )
        .await;
        assert!(r.welcome().resumed, "{:?}", r.welcome());
        gw2.shutdown().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_deleted_stream_is_declared_again_by_the_gateway_reading_it() {
    TestEnv::run("stream-redeclared", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let mut a = TestClient::connect(&gw.url()).await;
        a.subscribe(sub("all", "chat")).await;
        env.publish_out("chat.all", "o0", "0").await;
        let old = a.expect_deliver().await;
        env.delete_outbound_stream().await;
        // Nobody else declares it: the gateway whose reader lost it does, then finds
        // it new and ends the session on the old one.
        assert_eq!(a.expect_close(Duration::from_secs(20)).await, Some(4002));
        assert!(
            env.message_count(&env.names.outbound_stream())
                .await
                .is_some(),
            "the outbound stream is there again"
        );
        let mut r = TestClient::connect_with(
            &gw.url(),
            resume(a.session(), old.position, vec![sub("all", "chat")]),
        )
        .await;
        assert_eq!(r.welcome().notice, Some(ErrorCode::SessionExpired));
        // What services publish is kept and delivered again.
        env.publish_out("chat.all", "n0", "1").await;
        let d = r.expect_deliver().await;
        assert_eq!((d.message_id.as_str(), d.position), ("n0", Some(0)));
        gw.shutdown().await;
    })
    .await;
}

/// Publishes a broadcast on `chat` to `exchange` every 50 ms, on a connection of its
/// own, as a busy service does, until aborted.
fn publish_every_50ms(exchange: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let conn = lapin::Connection::connect(&amqp_addr(), Default::default())
            .await
            .expect("RabbitMQ at AMQP_ADDR");
        let channel = conn.create_channel().await.expect("channel");
        for i in 0u64.. {
            channel
                .basic_publish(
                    ShortString::from(exchange.as_str()),
                    ShortString::from(keys::broadcast("chat")),
                    BasicPublishOptions::default(),
                    i.to_string().as_bytes(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(ShortString::from(format!("busy{i}"))),
                )
                .await
                .expect("publish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test]
async fn a_stream_declared_again_that_services_keep_publishing_to_is_still_found_replaced() {
    TestEnv::run("stream-replaced-busy", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        // 500 messages, given 2 s to be read, then one that a client gets: the hub has
        // read up to position 500, which the new stream, at one message every 50 ms,
        // reaches only after 25 s.
        env.publish_out_burst("chat.all", "o", 500).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut a = TestClient::connect(&gw.url()).await;
        a.subscribe(sub("all", "chat")).await;
        env.publish_out("chat.all", "o500", "500").await;
        let mut old_position = None;
        while old_position != Some(500) {
            old_position = a.expect_deliver().await.position;
        }
        let session = a.session().to_string();

        // Deleted and declared again (by the gateway whose reader lost it) while a
        // service publishes to it more often than a look at its tail waits for quiet.
        env.delete_outbound_stream().await;
        let busy = publish_every_50ms(env.names.outbound_exchange());
        assert_eq!(
            a.expect_close(Duration::from_secs(15)).await,
            Some(4002),
            "the session on the replaced stream is ended although the new stream's last \
             chunk never goes quiet"
        );
        // A resume naming the old position is answered soon, not held until the new
        // stream reaches it.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            TestClient::connect_with(
                &gw.url(),
                resume(&session, old_position, vec![sub("all", "chat")]),
            ),
        )
        .await
        .expect("the resume is answered within 5 s");
        let w = r.welcome();
        assert!(
            !w.resumed && w.notice == Some(ErrorCode::SessionExpired),
            "{w:?}"
        );
        busy.abort();
        r.close().await;
        gw.shutdown().await;
    })
    .await;
}
