//! Channel streams: a channel with a retention of its own (`[channel_options.<channel>]
//! stream_max_age` / `stream_max_bytes`) keeps what services send its clients in a
//! stream of its own, which each gateway reads once like the outbound stream. Its
//! positions are its own: a `deliver` names the stream, a client resumes with a
//! position per stream, on any gateway, and a position that aged out of one stream is
//! reported for that stream while the others are replayed whole.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::{amqp_addr, TestEnv};
use warren_e2e::gateway::{management_url, topology_cli, voice_for_an_hour, TestGateway};
use warren_e2e::jwt::{now, sign, SECRET};
use warren_e2e::load::read_stream_ids;
use warren_gateway::config::ChannelOptions;
use warren_gateway::AuthMode;
use warren_protocol::{Deliver, ErrorCode, Hello, Positions, ServerFrame};

const LIMIT: Duration = Duration::from_secs(90);

/// A client on `url` subscribed to chat and voice, and what it got of one broadcast
/// on each: its session, chat's delivery and voice's.
async fn following_chat_and_voice(
    env: &TestEnv,
    url: &str,
) -> (TestClient, String, Deliver, Deliver) {
    let mut c = TestClient::connect(url).await;
    let session = c.session().to_string();
    for s in subscriptions() {
        c.subscribe(s).await;
    }
    env.publish_out("chat.all", "c1", "\"c1\"").await;
    env.publish_out("voice.all", "v1", "\"v1\"").await;
    let first = c.expect_delivers(2).await;
    let of = |channel: &str| {
        first
            .iter()
            .find(|d| d.channel == channel)
            .cloned()
            .unwrap_or_else(|| panic!("no {channel} delivery in {first:?}"))
    };
    let (chat, voice) = (of("chat"), of("voice"));
    (c, session, chat, voice)
}

fn subscriptions() -> Vec<warren_protocol::Subscribe> {
    vec![sub("c", "chat"), sub("v", "voice")]
}

/// A gateway whose `voice` channel has a stream of its own (an hour of retention),
/// pinging once a second (a client is closed after 2.5 s of silence), and a
/// listener subscribed to voice.
async fn voice_pinged_every_second(env: &TestEnv) -> (TestGateway, TestClient) {
    let gw = TestGateway::start_with(env, |c| {
        voice_for_an_hour(c);
        c.heartbeat_ms = 1_000;
    })
    .await;
    let mut listener = TestClient::connect(&gw.url()).await;
    listener.subscribe(sub("v", "voice")).await;
    (gw, listener)
}

/// The message bodies of the deliveries of `channel`, in order.
fn texts(ds: &[Deliver], channel: &str) -> Vec<String> {
    ds.iter()
        .filter(|d| d.channel == channel)
        .map(|d| d.message.get().trim_matches('"').to_string())
        .collect()
}

#[tokio::test]
async fn a_channel_with_its_own_retention_is_kept_in_its_own_stream_and_resumed_by_its_own_position(
) {
    TestEnv::run("chan-stream", LIMIT, async |env| {
        // A gateway of the plain topology first: the outbound stream takes every
        // channel's messages (`#`). The next gateways must take `voice` out of it.
        TestGateway::start(env).await.shutdown().await;
        let gw1 = TestGateway::start_with(env, voice_for_an_hour).await;
        let gw2 = TestGateway::start_with(env, voice_for_an_hour).await;
        let voice_stream = env.names.channel_stream("voice");

        // Declared with its own retention: the same stream with another age is refused.
        let mut other_age = FieldTable::default();
        other_age.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("stream")),
        );
        other_age.insert("x-max-age".into(), AMQPValue::LongString("2h".into()));
        // The size is the outbound stream's, as voice sets none.
        other_age.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(2 * 1024 * 1024 * 1024),
        );
        other_age.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(256 * 1024 * 1024),
        );
        let refused = env
            .new_channel()
            .await
            .queue_declare(
                voice_stream.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                other_age,
            )
            .await
            .expect_err("voice's stream has another x-max-age");
        assert!(format!("{refused}").contains("x-max-age"), "{refused}");

        let (c, session, chat, voice) = following_chat_and_voice(env, &gw1.url()).await;
        assert_eq!(chat.stream, None, "chat is in the outbound stream");
        assert_eq!(voice.stream.as_deref(), Some("voice"));
        let (chat_at, voice_at) = (chat.position, voice.position.expect("a position"));

        // Gone without a goodbye; both channels go on.
        c.abort();
        for i in 2..=3 {
            env.publish_out("chat.all", &format!("c{i}"), &format!("\"c{i}\""))
                .await;
            env.publish_out("voice.all", &format!("v{i}"), &format!("\"v{i}\""))
                .await;
        }
        let hello = Hello {
            session: Some(session.clone()),
            position: chat_at,
            positions: Positions::from_iter([("voice".to_string(), voice_at)]),
            subscriptions: subscriptions(),
            ..Hello::default()
        };
        let mut c = TestClient::connect_with(&gw2.url(), hello).await;
        assert!(c.welcome().resumed);
        let replayed = c.expect_delivers(4).await;
        assert_eq!(texts(&replayed, "chat"), ["c2", "c3"]);
        assert_eq!(texts(&replayed, "voice"), ["v2", "v3"]);
        let voice_positions: Vec<u64> = replayed
            .iter()
            .filter(|d| d.stream.as_deref() == Some("voice"))
            .filter_map(|d| d.position)
            .collect();
        assert!(
            voice_positions.windows(2).all(|w| w[0] < w[1]) && voice_positions[0] > voice_at,
            "voice positions grow from where the client was: {voice_positions:?} after {voice_at}"
        );
        c.expect_no_deliver(Duration::from_millis(300)).await;

        // Then live on both.
        env.publish_out("chat.all", "c4", "\"c4\"").await;
        env.publish_out("voice.all", "v4", "\"v4\"").await;
        let live = c.expect_delivers(2).await;
        assert_eq!(texts(&live, "chat"), ["c4"]);
        assert_eq!(texts(&live, "voice"), ["v4"]);
        let v4 = live
            .iter()
            .find(|d| d.channel == "voice")
            .and_then(|d| d.position);

        // A new session learns where it starts in each stream.
        let fresh = TestClient::connect(&gw2.url()).await;
        assert_eq!(fresh.welcome().positions.get("voice"), v4);
        assert!(fresh.welcome().position.is_some());
        assert_eq!(fresh.welcome().positions.len(), 1, "only voice has its own");

        // Each message is kept once, in its channel's stream only.
        let outbound = read_stream_ids(&amqp_addr(), &env.names.outbound_stream())
            .await
            .expect("the outbound stream");
        let voice = read_stream_ids(&amqp_addr(), &voice_stream)
            .await
            .expect("voice's stream");
        let ids = |m: &std::collections::HashMap<String, usize>| {
            let mut v: Vec<(String, usize)> = m.clone().into_iter().collect();
            v.sort();
            v
        };
        let once = |p: &str| (1..=4).map(|i| (format!("{p}{i}"), 1)).collect::<Vec<_>>();
        assert_eq!(ids(&outbound), once("c"));
        assert_eq!(ids(&voice), once("v"));
        gw1.shutdown().await;
        gw2.shutdown().await;
    })
    .await;
}

/// A client that subscribes to a channel with a stream of its own while it is
/// disconnected resumes that stream from where its outage began, not from the
/// position its `welcome` gave: every other ping of the gateway names, in turn, the
/// newest position of a channel stream the session has no subscription in. (They named only the
/// session's own streams: the resume replayed everything the channel had sent since
/// the welcome, hours of it for a long-lived session, or reported it missed.)
#[tokio::test]
async fn a_subscription_made_while_disconnected_resumes_its_channel_stream_from_the_outage() {
    TestEnv::run("chan-stream-new-sub", LIMIT, async |env| {
        let (gw, mut listener) = voice_pinged_every_second(env).await;
        // Once the listener has v0, this gateway's reader has read it and a welcome
        // names voice's position.
        env.publish_out("voice.all", "v0", "\"v0\"").await;
        listener.expect_delivers(1).await;
        // Not subscribed to voice: its welcome names where voice's stream stands.
        let mut quiet = TestClient::connect(&gw.url()).await;
        let session = quiet.session().to_string();
        let welcomed_at = quiet
            .welcome()
            .positions
            .get("voice")
            .expect("voice's position");
        // Voice goes on without it; the listener learns the newest position.
        // Meanwhile the quiet session answers its pings (a silent client is closed,
        // and this may take a while on a busy machine) until one names voice at that
        // position or later.
        let (newest_tx, newest_rx) = tokio::sync::watch::channel(None::<u64>);
        let listen = async move {
            for i in 1..=2 {
                env.publish_out("voice.all", &format!("v{i}"), &format!("\"v{i}\""))
                    .await;
            }
            let newest = listener.expect_delivers(2).await[1]
                .position
                .expect("a position");
            assert!(newest > welcomed_at);
            newest_tx.send_replace(Some(newest));
            listener
        };
        let quiet_pings = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let Some(v) = quiet.next_ping(deadline).await else {
                    panic!(
                        "no ping named voice at {:?} or later within 20 s (closed: {:?})",
                        *newest_rx.borrow(),
                        quiet.close_code
                    );
                };
                let newest = *newest_rx.borrow();
                if let (Some(newest), Some(p)) = (newest, v["position"].as_u64()) {
                    if v["stream"] == "voice" && p >= newest {
                        break p;
                    }
                }
            }
        };
        let (listener, pinged) = tokio::join!(listen, quiet_pings);
        // Its connection is lost; meanwhile the app subscribes to voice.
        quiet.abort();
        env.publish_out("voice.all", "v3", "\"v3\"").await;
        let hello = Hello {
            session: Some(session),
            position: None,
            positions: Positions::from_iter([("voice".to_string(), pinged)]),
            subscriptions: vec![sub("v", "voice")],
            ..Hello::default()
        };
        let mut back = TestClient::connect_with(&gw.url(), hello).await;
        assert!(back.welcome().resumed);
        let replayed = back.expect_delivers(1).await;
        assert_eq!(
            texts(&replayed, "voice"),
            ["v3"],
            "only what the outage held"
        );
        back.expect_no_deliver(Duration::from_millis(300)).await;
        listener.close().await;
        back.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A busy session, never quiet either way (a delivery out and its acknowledgement in
/// every 150 ms), is pinged once a heartbeat too, and its pings name the channel
/// streams it has no subscription in: what a resume after a subscription made while
/// disconnected starts from (the test above). Pinged only after a heartbeat of
/// quiet, it never learnt them.
#[tokio::test]
async fn a_busy_session_is_pinged_the_positions_of_the_streams_it_does_not_follow() {
    TestEnv::run("chan-stream-busy-ping", LIMIT, async |env| {
        let (gw, mut listener) = voice_pinged_every_second(env).await;
        let mut busy = TestClient::connect(&gw.url()).await;
        busy.subscribe(sub("c", "chat")).await;
        for i in 0..2 {
            env.publish_out("voice.all", &format!("v{i}"), "0").await;
        }
        let newest = listener.expect_delivers(2).await[1]
            .position
            .expect("a position");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let chatter = async {
            for i in 0..100 {
                if *stop_rx.borrow() {
                    break;
                }
                env.publish_out("chat.all", &format!("c{i}"), "0").await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        };
        let watch = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
            let mut delivered = 0u32;
            let pinged = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let Some(text) = busy.recv_raw(left).await else {
                    break None;
                };
                let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                match v["type"].as_str() {
                    Some("deliver") => {
                        delivered += 1;
                        busy.ack_deliveries(v["seq"].as_u64().expect("a seq")).await;
                    }
                    Some("ping") => {
                        busy.send_text(
                            &serde_json::json!({"type": "pong", "ts": v["ts"]}).to_string(),
                        )
                        .await;
                        if v["stream"] == "voice" && v["position"].as_u64() >= Some(newest) {
                            break Some(v);
                        }
                    }
                    _ => {}
                }
            };
            stop_tx.send_replace(true);
            (pinged, delivered)
        };
        let ((pinged, delivered), ()) = tokio::join!(watch, chatter);
        assert!(
            pinged.is_some(),
            "no ping named voice at {newest} or later within 12 s, after {delivered} deliveries"
        );
        assert!(
            delivered >= 5,
            "the session was busy: {delivered} deliveries"
        );
        listener.close().await;
        busy.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_busy_channel_ages_out_of_its_own_stream_only_and_its_sessions_are_told_which() {
    TestEnv::run("chan-aged", LIMIT, async |env| {
        // voice: 2 MiB of retention in 1 MiB segments; the outbound stream keeps its 2 GiB.
        let gw = TestGateway::start_with(env, |c| {
            c.channel_options.insert(
                "voice".into(),
                ChannelOptions {
                    stream_max_bytes: Some(2 * 1024 * 1024),
                    ..ChannelOptions::default()
                },
            );
            c.hub_buffer_messages = 10;
        })
        .await;
        let (c, session, chat, voice) = following_chat_and_voice(env, &gw.url()).await;
        let (chat_at, voice_at) = (chat.position, voice.position);
        c.abort();
        // 4.7 MiB on voice pushes its oldest segments out; chat is not in that stream.
        env.publish_out("chat.all", "c2", "\"c2\"").await;
        let body = format!("\"{}\"", "x".repeat(16 * 1024));
        for i in 0..300 {
            env.publish_out("voice.all", &format!("b{i}"), &body).await;
        }
        env.publish_out("chat.all", "c3", "\"c3\"").await;

        let hello = Hello {
            session: Some(session),
            position: chat_at,
            positions: voice_at
                .map(|p| Positions::from_iter([("voice".to_string(), p)]))
                .unwrap_or_default(),
            subscriptions: subscriptions(),
            ..Hello::default()
        };
        let mut c = TestClient::connect_with(&gw.url(), hello).await;
        assert!(c.welcome().resumed);
        let mut expired = Vec::new();
        let mut got = Vec::new();
        while let Some(f) = c.recv_within(Duration::from_secs(2)).await {
            match f {
                ServerFrame::Error(e) if e.code == ErrorCode::SessionExpired => expired.push(e),
                ServerFrame::Deliver(d) => got.push(d),
                _ => {}
            }
        }
        assert_eq!(expired.len(), 1, "one notice, for voice: {expired:?}");
        assert_eq!(expired[0].stream.as_deref(), Some("voice"));
        assert!(
            expired[0].message.contains("channel `voice`'s stream"),
            "{}",
            expired[0].message
        );
        let missed: u64 = expired[0]
            .message
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("the count comes first");
        assert!(missed > 0 && missed < 300, "{missed}");
        // chat's history was not touched by voice's traffic.
        assert_eq!(texts(&got, "chat"), ["c2", "c3"]);
        // What voice still retains follows, ending with the newest.
        let voice: Vec<&Deliver> = got.iter().filter(|d| d.channel == "voice").collect();
        assert_eq!(voice.last().map(|d| d.message_id.as_str()), Some("b299"));
        assert!(voice.len() < 300, "{} of 300", voice.len());
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn topology_check_reports_the_outbound_streams_catch_all_binding_until_apply_removes_it() {
    TestEnv::run("chan-check", LIMIT, async |env| {
        // A broker set up for one outbound stream: `#` binds every channel to it.
        TestGateway::start(env).await.shutdown().await;
        let toml = "[channel_options.voice]\nstream_max_age = \"1h\"\n";
        let mgmt = management_url();
        let with_bindings = ["--management-url", mgmt.as_str()];
        let check = async || topology_cli(env, toml, "check", &with_bindings).await;
        let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();

        let out = check().await;
        let before = text(&out);
        assert_eq!(out.status.code(), Some(1), "{before}");
        // A missing object is reported on stdout, not logged as a failure: RabbitMQ
        // closing the channel of a passive declare is not a lost connection.
        let logged = String::from_utf8_lossy(&out.stderr);
        assert!(
            !logged.contains("connection failed") && !logged.contains("ERROR"),
            "{logged}"
        );
        let stream = env.names.outbound_stream();
        let exchange = env.names.outbound_exchange();
        assert!(
            before.contains(&format!(
                "MISMATCH binding {exchange} -> {stream} (#): present; should be removed"
            )),
            "{before}"
        );
        assert!(
            before.contains(&format!(
                "MISMATCH queue {}: missing",
                env.names.channel_stream("voice")
            )),
            "{before}"
        );

        let out = topology_cli(env, toml, "apply", &[]).await;
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("unbind"), "{}", text(&out));
        let out = check().await;
        let after = text(&out);
        assert_eq!(out.status.code(), Some(0), "{after}");
        assert!(!after.contains("MISMATCH"), "{after}");

        // And back: voice's settings are taken out. `apply` restores the `#`, but
        // cannot see voice's binding over AMQP: voice's messages would still be
        // written to its stream, which no gateway reads. `check` names the binding
        // (it said nothing: only declared bindings were compared) and counts it apart
        // from the missing ones, until the stream is deleted.
        let voice = env.names.channel_stream("voice");
        let plain = async || topology_cli(env, "", "check", &with_bindings).await;
        let out = topology_cli(env, "", "apply", &[]).await;
        assert!(out.status.success(), "{}", text(&out));
        let out = plain().await;
        let back = text(&out);
        assert_eq!(out.status.code(), Some(1), "{back}");
        assert!(
            back.contains(&format!(
                "MISMATCH binding {exchange} -> {voice} (voice.#): present; should be removed"
            )),
            "{back}"
        );
        assert!(
            back.contains("0 of ")
                && back.contains("bindings are missing, and 1 present should be removed"),
            "{back}"
        );
        env.channel()
            .queue_delete(voice.as_str().into(), Default::default())
            .await
            .expect("delete voice's stream");
        let out = plain().await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    })
    .await;
}

/// Clients hold a position of every channel stream (from `welcome` and pings), also
/// of those they do not follow. When one such stream is deleted and declared again
/// (how its retention is changed), a session that does not follow it resumes as
/// before, with what it missed on its other streams. Before, every resume naming
/// the old position was refused: a fresh session with `session_expired`, and chat's
/// messages of the outage were never replayed.
#[tokio::test]
async fn a_replaced_channel_stream_does_not_refuse_the_resume_of_a_session_not_following_it() {
    TestEnv::run("chan-stream-replaced", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, voice_for_an_hour).await;
        // Once a voice listener has v0, this gateway's reader has read it, and a
        // welcome names voice's position.
        let mut listener = TestClient::connect(&gw.url()).await;
        listener.subscribe(sub("v", "voice")).await;
        env.publish_out("voice.all", "v0", "\"v0\"").await;
        listener.expect_delivers(1).await;
        let mut c = TestClient::connect(&gw.url()).await;
        let voice_at = c
            .welcome()
            .positions
            .get("voice")
            .expect("welcome names voice's position");
        c.subscribe(sub("c", "chat")).await;
        env.publish_out("chat.all", "c1", "\"c1\"").await;
        let c1 = c.expect_delivers(1).await.remove(0);
        let session = c.session().to_string();
        c.abort();
        listener.abort();

        // Voice's stream is deleted and declared again by a gateway starting: its
        // positions start over, below the one `c` holds.
        env.new_channel()
            .await
            .queue_delete(
                env.names.channel_stream("voice").as_str().into(),
                Default::default(),
            )
            .await
            .expect("delete voice's stream");
        let gw2 = TestGateway::start_with(env, voice_for_an_hour).await;
        env.publish_out("chat.all", "c2", "\"c2\"").await;

        let hello = Hello {
            session: Some(session.clone()),
            position: c1.position,
            positions: Positions::from_iter([("voice".to_string(), voice_at)]),
            subscriptions: vec![sub("c", "chat")],
            ..Hello::default()
        };
        let mut back = TestClient::connect_with(&gw2.url(), hello).await;
        assert!(back.welcome().resumed, "{:?}", back.welcome());
        assert_eq!(back.welcome().notice, None, "{:?}", back.welcome());
        assert_eq!(back.session(), session);
        let replayed = back.expect_delivers(1).await;
        assert_eq!(texts(&replayed, "chat"), ["c2"], "what the outage held");
        back.expect_no_deliver(Duration::from_millis(300)).await;

        // Following voice, the old position is still refused: nothing after it can
        // be replayed from the new stream.
        let hello = Hello {
            session: Some(session),
            position: c1.position,
            positions: Positions::from_iter([("voice".to_string(), voice_at)]),
            subscriptions: vec![sub("c", "chat"), sub("v", "voice")],
            ..Hello::default()
        };
        let refused = TestClient::connect_with(&gw2.url(), hello).await;
        assert!(!refused.welcome().resumed, "{:?}", refused.welcome());
        assert_eq!(
            refused.welcome().notice,
            Some(ErrorCode::SessionExpired),
            "{:?}",
            refused.welcome()
        );
        back.close().await;
        gw2.shutdown().await;
        gw.shutdown().await;
    })
    .await;
}

/// A resume naming a subscription its token does not grant (rights narrowed since,
/// or a crafted `hello`) is refused that subscription, and the channel's stream is
/// not joined for it: the session read that stream from its start (a day by
/// default) with a stream reader of its own, for nothing.
#[tokio::test]
async fn a_resume_refused_a_channel_does_not_read_its_stream() {
    TestEnv::run("cs-refused-resume", LIMIT, async |env| {
        // In the voice stream before the gateway starts: not in its memory, read from
        // the stream by a session that resumes from the stream's start.
        let first = TestGateway::start_with(env, voice_for_an_hour).await;
        for id in ["v1", "v2", "v3"] {
            env.publish_out("voice.all", id, "1").await;
        }
        first.shutdown().await;
        let gw = TestGateway::start_with(env, |c| {
            voice_for_an_hour(c);
            c.auth.mode = AuthMode::Jwt;
            c.auth.jwt.secret = Some(SECRET.into());
        })
        .await;
        env.publish_out("chat.all", "c1", "1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let token = sign(
            &serde_json::json!({"sub": "ada", "exp": now() + 600,
                                "channels": {"chat": ["subscribe"]}}),
            SECRET.as_bytes(),
        );
        let hello = Hello {
            token: Some(token.clone()),
            ..Hello::default()
        };
        let c = TestClient::connect_with(&gw.url(), hello).await;
        let mut resume = c.resume_hello();
        c.abort();
        resume.token = Some(token);
        resume.subscriptions = vec![sub("c", "chat"), sub("v", "voice")];
        let before = gw.metric("stream_readers_total").await;
        let mut r = TestClient::connect_with(&gw.url(), resume).await;
        assert!(r.welcome().resumed);
        r.expect_no_deliver(Duration::from_millis(700)).await;
        assert_eq!(
            gw.metric("stream_readers_total").await,
            before,
            "no reader of the voice stream for a refused subscription"
        );
        // Its subscription to chat stands.
        env.publish_out("chat.all", "c2", "2").await;
        assert_eq!(r.expect_deliver().await.message_id, "c2");
        r.close().await;
        gw.shutdown().await;
    })
    .await;
}
