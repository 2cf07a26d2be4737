//! Limits against abuse, against a real RabbitMQ: connections per IP address and per
//! user, new connections per second, frames per second, pending requests; pings do not
//! excuse bad frames. Each is refused (or throttled) for the offender only: another
//! client goes on as before.

use std::time::{Duration, Instant};

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::{http_get, http_raw, upgrade_request, TestGateway};
use warren_protocol::{ErrorCode, Hello, ServerFrame};

const LIMIT: Duration = Duration::from_secs(60);

fn as_user(name: &str) -> Hello {
    Hello {
        token: Some(name.into()),
        ..Default::default()
    }
}

/// Waits for the `error overloaded` that refuses `c`'s `hello`.
async fn expect_overloaded(c: &mut TestClient) {
    match c.recv_within(Duration::from_secs(5)).await {
        Some(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}"),
        other => panic!("expected error overloaded, got {other:?}"),
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("warren_gateway_{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn connections_per_ip_are_refused_with_429_until_one_closes() {
    TestEnv::run("limit-ip", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.ip_limits_on_loopback = true;
            c.max_connections_per_ip = 3;
            c.max_new_connections_per_ip_per_s = 0;
        })
        .await;
        let url = gw.url();
        let mut open = Vec::new();
        for i in 0..3 {
            open.push(TestClient::connect_with(&url, as_user(&format!("u{i}"))).await);
        }
        let r = TestClient::try_connect_with_headers(&url, &[]).await;
        assert_eq!(r.err(), Some(429), "the fourth connection is refused");
        // In JSON, as every refusal.
        let (status, _, body) = http_raw(gw.health_addr(), &upgrade_request("/ws", &[])).await;
        assert_eq!(status, 429, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["code"], "overloaded", "{body}");
        assert!(v["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_connections_per_ip")));
        open.pop().unwrap().close().await;
        // The slot is given back when the connection task ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut again = loop {
            match TestClient::try_connect_with_headers(&url, &[]).await {
                Ok(c) => break c,
                Err(429) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(s) => panic!("HTTP {s}"),
            }
        };
        again.publish("p", "chat", json!(1)).await;
        again.expect_ack("p").await;
        let m = http_get(gw.health_addr(), "/metrics").await;
        assert_eq!(metric(&m, "refused_limit_total"), 2);
        for c in open {
            c.close().await;
        }
        again.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// Per-IP limits skip loopback peers (a reverse proxy on the same machine) also over
/// IPv6: `::1` was cut to its /64 (`::`) before the loopback check, so every client
/// behind a proxy connecting over `[::1]` counted as one address and was refused 429.
#[tokio::test]
async fn per_ip_limits_skip_an_ipv6_loopback_peer() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        warren_e2e::env::cannot_check(
            "per-IP limits for an IPv6 loopback peer",
            &format!("this machine has no IPv6 loopback ({e})"),
        );
        return;
    }
    TestEnv::run("limit-ip6-loopback", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.listen[0].bind = "[::1]:0".parse().expect("address");
            c.max_connections_per_ip = 2;
            c.max_new_connections_per_ip_per_s = 0;
        })
        .await;
        let url = gw.url();
        assert!(url.starts_with("ws://[::1]:"), "{url}");
        let mut open = Vec::new();
        for i in 0..4 {
            match TestClient::try_connect_with_headers(&url, &[]).await {
                Ok(c) => open.push(c),
                Err(status) => panic!("connection {i} over [::1] refused: HTTP {status}"),
            }
        }
        for c in open {
            c.close().await;
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn new_connections_per_ip_per_second_are_rate_limited() {
    TestEnv::run("limit-rate", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.ip_limits_on_loopback = true;
            c.max_new_connections_per_ip_per_s = 2;
        })
        .await;
        let url = gw.url();
        let mut statuses = Vec::new();
        let mut kept = Vec::new();
        for _ in 0..8 {
            match TestClient::try_connect_with_headers(&url, &[]).await {
                Ok(c) => {
                    statuses.push(101);
                    kept.push(c);
                }
                Err(s) => statuses.push(s),
            }
        }
        let admitted = statuses.iter().filter(|s| **s == 101).count();
        // A burst of twice the rate, plus what refilled while the loop ran.
        assert!((4..8).contains(&admitted), "{statuses:?}");
        assert!(statuses.contains(&429), "{statuses:?}");
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn sessions_per_user_are_limited_and_other_users_are_unaffected() {
    TestEnv::run("limit-user", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.max_connections_per_user = 2).await;
        let url = gw.url();
        let a1 = TestClient::connect_with(&url, as_user("ada")).await;
        let a2 = TestClient::connect_with(&url, as_user("ada")).await;
        let mut a3 = TestClient::connect_raw(&url).await;
        a3.send(&warren_protocol::ClientFrame::Hello(as_user("ada")))
            .await;
        expect_overloaded(&mut a3).await;
        assert_eq!(a3.expect_close(Duration::from_secs(5)).await, Some(4005));
        let mut bob = TestClient::connect_with(&url, as_user("bob")).await;
        bob.publish("b", "chat", json!(1)).await;
        bob.expect_ack("b").await;
        a1.close().await;
        a2.close().await;
        bob.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A user at `max_connections_per_user` whose client lost a connection without the
/// gateway noticing (a network gone, not closed) resumes that session on a new one:
/// the new connection replaces the stale one, which is closed, instead of being
/// refused until the stale one's heartbeat times out. It adds no session: the user
/// is still at its limit, and a resume of a session no connection here serves is
/// refused as a new session would be.
#[tokio::test]
async fn a_resume_over_a_stale_connection_at_the_user_limit_replaces_it() {
    TestEnv::run("limit-user-resume", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.max_connections_per_user = 2).await;
        let url = gw.url();
        let a1 = TestClient::connect_with(&url, as_user("ada")).await;
        // a2's network goes: its socket stays open and is no longer read.
        let mut a2 = TestClient::connect_with(&url, as_user("ada")).await;
        let hello = Hello {
            token: Some("ada".into()),
            ..a2.resume_hello()
        };
        let mut again = TestClient::connect_raw(&url).await;
        again
            .send(&warren_protocol::ClientFrame::Hello(hello))
            .await;
        match again.recv_within(Duration::from_secs(5)).await {
            Some(ServerFrame::Welcome(w)) => {
                assert!(w.resumed, "{w:?}");
                assert_eq!(w.session, a2.session());
            }
            other => panic!("expected the resume's welcome, got {other:?}"),
        }
        assert!(
            a2.expect_close(Duration::from_secs(5)).await.is_some(),
            "the stale connection is closed"
        );
        again.ping(1).await;
        assert!(matches!(
            again.recv_within(Duration::from_secs(5)).await,
            Some(ServerFrame::Pong(_))
        ));

        // Still two sessions: a third is refused.
        let mut a3 = TestClient::connect_raw(&url).await;
        a3.send(&warren_protocol::ClientFrame::Hello(as_user("ada")))
            .await;
        expect_overloaded(&mut a3).await;
        // a1 closes and a new session takes its place; a1's session, which no
        // connection serves now, may not be resumed over the limit.
        let gone = Hello {
            token: Some("ada".into()),
            ..a1.resume_hello()
        };
        a1.close().await;
        let a4 = TestClient::connect_with(&url, as_user("ada")).await;
        let mut late = TestClient::connect_raw(&url).await;
        late.send(&warren_protocol::ClientFrame::Hello(gone)).await;
        expect_overloaded(&mut late).await;
        assert_eq!(late.expect_close(Duration::from_secs(5)).await, Some(4005));
        again.close().await;
        a4.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_frame_flood_is_throttled_for_the_flooder_only() {
    TestEnv::run("limit-frames", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.max_frames_per_s = 100).await;
        let url = gw.url();
        let mut flooder = TestClient::connect_with(&url, as_user("eve")).await;
        let mut other = TestClient::connect_with(&url, as_user("ada")).await;
        let started = Instant::now();
        for i in 0..400 {
            flooder.ping(i).await;
        }
        // The other client is answered while the flooder waits its turn.
        let t = Instant::now();
        other.ping(7).await;
        loop {
            match other.recv().await {
                ServerFrame::Pong(p) if p.ts == Some(7) => break,
                _ => continue,
            }
        }
        let other_rtt = t.elapsed();
        let mut pongs = 0;
        while pongs < 400 {
            if let ServerFrame::Pong(_) = flooder.recv().await {
                pongs += 1;
            }
        }
        let flood_took = started.elapsed();
        println!("gateway_limits: 400 pings at max_frames_per_s = 100 took {flood_took:?}; another client's ping {other_rtt:?}");
        // 400 frames at 100/s with a burst of 200: at least 2 s (a lower bound, which a
        // busy machine can only lengthen).
        assert!(flood_took >= Duration::from_secs(2), "{flood_took:?}");
        // The other client's ping was sent once the whole flood was written, so a
        // gateway that made it wait its turn behind the flooder's frames would answer
        // it only after most of those 2 s. Unthrottled it takes a few ms (3.6-4.6 ms
        // here); 500 ms leaves room for a busy machine and is a quarter of the flood's
        // throttle time.
        assert!(
            other_rtt < Duration::from_millis(500),
            "the other client waited for the flood: its ping took {other_rtt:?}"
        );
        let m = http_get(gw.health_addr(), "/metrics").await;
        assert!(metric(&m, "throttled_total") >= 100);
        flooder.close().await;
        other.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn pending_requests_are_bounded_and_pings_do_not_excuse_bad_frames() {
    TestEnv::run("limit-requests", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.max_pending_requests = 2;
            c.max_consecutive_errors = 3;
        })
        .await;
        let url = gw.url();
        let mut c = TestClient::connect_with(&url, as_user("ada")).await;
        // A consumer that never answers: requests stay pending.
        let _stuck = env.consume_inbound("tickets").await;
        c.request("r1", "tickets", Some(30_000), json!(1)).await;
        c.request("r2", "tickets", Some(30_000), json!(2)).await;
        c.request("r3", "tickets", Some(30_000), json!(3)).await;
        assert_eq!(c.expect_error(Some("r3")).await.code, ErrorCode::Overloaded);
        // bad, ping, bad, ping, bad: three bad frames in a row despite the pings.
        for i in 0..3 {
            c.send_text("{nope").await;
            c.expect_error_code(None, ErrorCode::Malformed).await;
            if i < 2 {
                c.ping(i).await;
            }
        }
        assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(4003));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_full_inbound_queue_answers_overloaded_and_other_channels_go_on() {
    TestEnv::run("limit-inbound", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.inbound_max_length = 3).await;
        let mut c = TestClient::connect_with(&gw.url(), as_user("ada")).await;
        // Nothing consumes IN_CHAT: it fills up. A quorum queue notices it is over
        // its bound as it applies a message, so the message past the bound may still
        // be taken; the one after it is refused.
        let mut refused = None;
        for i in 0..10 {
            let id = format!("p{i}");
            c.publish(&id, "chat", json!(i)).await;
            match c.recv().await {
                ServerFrame::Ack(a) => assert_eq!(a.id, id),
                ServerFrame::Error(e) => {
                    assert_eq!(e.id.as_deref(), Some(id.as_str()));
                    refused = Some((i, e));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        let (at, e) = refused.expect("a publish past the bound is refused");
        assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}");
        assert!(e.code.retry());
        assert!((3..=4).contains(&at), "refused at message {at}");
        let held = env.message_count(&env.names.channel_queue("chat")).await;
        assert!(
            held.is_some_and(|n| (3..=4).contains(&n)),
            "bounded: {held:?}"
        );
        // More refusals do not churn publisher channels: a nacked channel is replaced
        // only once it is a second old (a channel stuck on a lost quorum leader keeps
        // being nacked), and once however many of its publishes are nacked at the
        // same moment, so 30 refusals at once replace at most the pool's 2 channels.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        for i in 0..30 {
            c.publish(&format!("q{i}"), "chat", json!(i)).await;
        }
        for _ in 0..30 {
            match c.recv().await {
                ServerFrame::Error(e) if e.id.as_deref().is_some_and(|id| id.starts_with('q')) => {
                    assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}")
                }
                other => panic!("{other:?}"),
            }
        }
        // A nacked channel is retired by a task of its own, after the client's answer:
        // wait (bounded) for the counter to move, then a little longer, in case more
        // than the 2 allowed were still on their way.
        let replaced = async || {
            let metrics = warren_e2e::gateway::http_get(gw.health_addr(), "/metrics").await;
            metrics
                .lines()
                .find(|l| l.starts_with("warren_gateway_publisher_channels_replaced_total"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .expect("the replaced-channels counter")
        };
        for _ in 0..50 {
            if replaced().await > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let replaced = replaced().await;
        assert!(
            (1..=2).contains(&replaced),
            "30 refusals replaced {replaced} publisher channels"
        );
        c.publish("v", "voice", json!(1)).await;
        c.expect_ack("v").await;
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn subscriptions_are_bounded_per_session_also_across_resumes() {
    use warren_e2e::client::sub;
    use warren_protocol::ClientFrame;
    TestEnv::run("limit-subscriptions", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.max_subscriptions = 8).await;
        let group = |id: &str, g: &str| {
            let mut s = sub(id, "chat");
            s.groups = vec![g.to_string()];
            s
        };
        let mut c = TestClient::connect_with(&gw.url(), as_user("ada")).await;
        for i in 0..8 {
            c.subscribe(group(&format!("s{i}"), &format!("g{i}"))).await;
        }
        c.send(&ClientFrame::Subscribe(group("over", "g8"))).await;
        c.expect_error_code(Some("over"), ErrorCode::Forbidden)
            .await;
        // Ten resumes, each naming its subscriptions again and trying one more: the
        // bound holds for the session, not per connection.
        for round in 0..10 {
            let hello = Hello {
                token: Some("ada".into()),
                ..c.resume_hello()
            };
            c.abort();
            c = TestClient::connect_with(&gw.url(), hello).await;
            assert!(c.welcome().resumed, "round {round}");
            let id = format!("more{round}");
            c.send(&ClientFrame::Subscribe(group(&id, &format!("x{round}"))))
                .await;
            c.expect_error_code(Some(&id), ErrorCode::Forbidden).await;
        }
        // A resume that names no subscriptions starts from none: nothing accumulated.
        let hello = Hello {
            token: Some("ada".into()),
            subscriptions: Vec::new(),
            ..c.resume_hello()
        };
        c.abort();
        let mut c = TestClient::connect_with(&gw.url(), hello).await;
        for i in 0..8 {
            c.subscribe(group(&format!("h{i}"), &format!("h{i}"))).await;
        }
        c.send(&ClientFrame::Subscribe(group("over2", "h8"))).await;
        c.expect_error_code(Some("over2"), ErrorCode::Forbidden)
            .await;
        env.publish_out("chat.group.g0", "old", "\"old\"").await;
        env.publish_out("chat.group.h0", "new", "\"new\"").await;
        let d = c.expect_deliver().await;
        assert_eq!(d.message_id, "new", "the dropped group g0 delivers nothing");
        c.expect_no_deliver(Duration::from_millis(300)).await;
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A `refresh` costs a signature check: one a second per connection is taken up, in
/// bursts of five; one past them is answered `overloaded` without being verified (a
/// flood of them at `max_frames_per_s` took a core per connection). A second later, a
/// refresh is taken up again.
#[tokio::test]
async fn refreshes_past_one_a_second_in_bursts_of_five_are_refused_overloaded_unverified() {
    TestEnv::run("limits-refresh", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let mut c = TestClient::connect_with(&gw.url(), as_user("ada")).await;
        let refresh = |id: &str| {
            warren_protocol::ClientFrame::Refresh(warren_protocol::Refresh {
                id: id.into(),
                token: "ada".into(),
            })
        };
        // Sent together: the burst is taken up, what comes past it is not.
        for i in 0..10 {
            c.send(&refresh(&format!("r{i}"))).await;
        }
        let mut overloaded = 0;
        for i in 0..10 {
            let id = format!("r{i}");
            let answer = c
                .expect(&format!("ack or error for {id}"), |f| match f {
                    ServerFrame::Ack(a) if a.id == id => Some(None),
                    ServerFrame::Error(e) if e.id.as_deref() == Some(id.as_str()) => {
                        Some(Some(e.code))
                    }
                    _ => None,
                })
                .await;
            match answer {
                None => assert!(i < 6, "{id} taken up past the burst"),
                Some(code) => {
                    assert_eq!(code, ErrorCode::Overloaded, "{id}");
                    overloaded += 1;
                }
            }
        }
        // Five, or six when a second passed while they were handled.
        assert!((4..=5).contains(&overloaded), "{overloaded} refused");
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        c.send(&refresh("again")).await;
        c.expect_ack("again").await;
        assert_eq!(c.close_code, None);
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}
