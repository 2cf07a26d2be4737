//! Presence that survives crashes: `client.connected` / `client.disconnected` once
//! per session (at least once after a broker outage: fault_presence_broker_outage) —
//! across a clean close, a lost connection resumed in time, a
//! session that expires, and a gateway SIGKILLed (a peer publishes the leaves of its
//! sessions that were not resumed elsewhere) — and the presence query
//! (`GET /presence?channel=&group=`).

use std::time::{Duration, Instant};

use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::{http_get, TestGateway};
use warren_e2e::presence::{
    as_user, listed, peers_heard, presence_config, Events, ANNOUNCE_MS, GRACE_MS,
};
use warren_e2e::sdk_driver::GatewayProcess;
use warren_protocol::{ClientFrame, Hello, Subscribe};

const LIMIT: Duration = Duration::from_secs(90);
#[tokio::test]
async fn each_session_is_announced_once_across_a_close_a_resume_and_an_expiry() {
    let mut env = TestEnv::new("presence-once").await;
    let gw = TestGateway::start_with(&env, presence_config).await;
    let mut events = Events::listen(&mut env).await;

    // A clean close: connected, then disconnected at once.
    let a = TestClient::connect_with(&gw.url(), as_user("ada")).await;
    let sa = a.session().to_string();
    events
        .wait_for("client.connected", &sa, Duration::from_secs(5))
        .await;
    let closed = Instant::now();
    a.close().await;
    let (v, at) = events
        .wait_for("client.disconnected", &sa, Duration::from_secs(5))
        .await;
    assert_eq!(v["reason"], "closed");
    assert!(
        at.duration_since(closed) < Duration::from_millis(GRACE_MS),
        "at once, not after the grace"
    );

    // A lost connection resumed within the grace: no event at all.
    let b = TestClient::connect_with(&gw.url(), as_user("bob")).await;
    let sb = b.session().to_string();
    let resume = Hello {
        token: Some("bob".into()),
        ..b.resume_hello()
    };
    b.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = TestClient::connect_with(&gw.url(), resume).await;
    assert!(b.welcome().resumed);

    // A lost connection never resumed: disconnected (expired) after the grace.
    let c = TestClient::connect_with(&gw.url(), as_user("cyd")).await;
    let sc = c.session().to_string();
    events
        .wait_for("client.connected", &sc, Duration::from_secs(5))
        .await;
    let lost = Instant::now();
    c.abort();
    let (v, at) = events
        .wait_for(
            "client.disconnected",
            &sc,
            Duration::from_millis(GRACE_MS + 3_000),
        )
        .await;
    let after = at.duration_since(lost);
    println!("gateway_presence: an unresumed session announced gone {} ms after its connection was lost (grace {GRACE_MS} ms)", after.as_millis());
    assert_eq!(v["reason"], "expired");
    assert!(after >= Duration::from_millis(GRACE_MS), "{after:?}");

    b.close().await;
    events
        .wait_for("client.disconnected", &sb, Duration::from_secs(5))
        .await;
    events.collect(Duration::from_millis(GRACE_MS + 500)).await;
    let counts = events.counts();
    for s in [&sa, &sb, &sc] {
        for e in ["client.connected", "client.disconnected"] {
            assert_eq!(
                counts.get(&(s.clone(), e.to_string())),
                Some(&1),
                "{e} of {s}: {counts:?}"
            );
        }
    }
    assert_eq!(counts.len(), 6, "{counts:?}");
    gw.shutdown().await;
    env.cleanup().await;
}

/// `client.subscriptions` says a session's subscriptions changed: a `subscribe` sent
/// again, or a resume (on this gateway or another) naming the subscriptions the
/// session had, publishes nothing (in a storm of resumes these were one broker message
/// per resume and per subscription, each read by every gateway).
#[tokio::test]
async fn client_subscriptions_is_published_when_they_change_and_not_when_a_resume_names_them_again()
{
    let mut test_env = TestEnv::new("presence-subs").await;
    let env = &mut test_env;
    tokio::time::timeout(LIMIT, async {
        let gw = TestGateway::start_with(env, presence_config).await;
        let other_node = format!("{}-other", env.namespace);
        let other = TestGateway::start_with(env, |c| {
            presence_config(c);
            c.node = other_node.clone();
        })
        .await;
        let mut events = Events::listen_to(env, &["client.subscriptions"]).await;
        let group = |id: &str, group: &str| Subscribe {
            id: id.into(),
            channel: "chat".into(),
            groups: vec![group.into()],
            ..Default::default()
        };
        let lobby = |id: &str| group(id, "lobby");

        let mut ada = TestClient::connect_with(&gw.url(), as_user("ada")).await;
        let session = ada.session().to_string();
        ada.subscribe(lobby("s1")).await;
        let (first, _) = events
            .wait_for("client.subscriptions", &session, Duration::from_secs(5))
            .await;
        assert_eq!(first["keys"], serde_json::json!(["chat.group.lobby"]));
        // The other gateway knows them too (from the events), before the resumes.
        let peer_knows = async {
            loop {
                let body = http_get(other.health_addr(), "/presence?group=lobby").await;
                let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
                if v["users"] == serde_json::json!(["ada"]) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), peer_knows)
            .await
            .expect("the other gateway learned ada's subscriptions");
        // The same subscription again: nothing changed.
        ada.subscribe(lobby("s2")).await;
        // Resumed here, then on the other gateway, naming the same subscriptions.
        let resume = Hello {
            token: Some("ada".into()),
            ..ada.resume_hello()
        };
        ada.abort();
        let ada = TestClient::connect_with(&gw.url(), resume.clone()).await;
        assert!(ada.welcome().resumed);
        // At once: this resume's takeover request may reach the other gateway after
        // the next resume there, which then keeps the session (it is the newer).
        ada.abort();
        let mut ada = TestClient::connect_with(&other.url(), resume).await;
        assert!(ada.welcome().resumed);
        ada.subscribe(lobby("s3")).await;
        events.collect(Duration::from_millis(500)).await;
        assert_eq!(
            events
                .counts()
                .get(&(session.clone(), "client.subscriptions".into())),
            Some(&1),
            "only the first subscribe changed anything: {:?}",
            events.seen
        );
        // A new group is a change, published by the gateway holding the session.
        ada.subscribe(group("s4", "kitchen")).await;
        events.collect(Duration::from_millis(500)).await;
        let (_, last, _) = events.seen.last().expect("an event").clone();
        let mut keys: Vec<&str> = last["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["chat.group.kitchen", "chat.group.lobby"]);
        assert_eq!(last["node"], other_node.as_str());
        assert_eq!(events.seen.len(), 2, "{:?}", events.seen);
        ada.close().await;
        gw.shutdown().await;
        other.shutdown().await;
    })
    .await
    .expect("the test finished in time");
    test_env.cleanup().await;
}

#[tokio::test]
async fn presence_answers_who_is_online_in_a_channel_and_a_group() {
    TestEnv::run("presence-query", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, presence_config).await;
        let mut ada = TestClient::connect_with(&gw.url(), as_user("ada")).await;
        let mut bob = TestClient::connect_with(&gw.url(), as_user("bob")).await;
        let mut s = sub("s1", "chat");
        s.groups = vec!["lobby".into()];
        ada.send(&ClientFrame::Subscribe(s)).await;
        ada.expect_ack("s1").await;
        let mut s = sub("s2", "chat");
        s.groups = vec!["kitchen".into()];
        bob.send(&ClientFrame::Subscribe(s)).await;
        bob.expect_ack("s2").await;
        let users = |path: &'static str| {
            let addr = gw.health_addr();
            async move {
                let body = http_get(addr, path).await;
                let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
                v["users"].clone()
            }
        };
        assert_eq!(
            users("/presence?channel=chat&group=lobby").await,
            serde_json::json!(["ada"])
        );
        assert_eq!(
            users("/presence?group=kitchen").await,
            serde_json::json!(["bob"])
        );
        assert_eq!(
            users("/presence?channel=chat").await,
            serde_json::json!(["ada", "bob"])
        );
        assert_eq!(
            users("/presence?channel=voice").await,
            serde_json::json!([])
        );
        ada.close().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            users("/presence?channel=chat").await,
            serde_json::json!(["bob"])
        );
        bob.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_peer_announces_the_sessions_of_a_killed_gateway_gone_once() {
    let mut env = TestEnv::new("presence-kill").await;
    let peer = TestGateway::start_with(&env, presence_config).await;
    let mut events = Events::listen(&mut env).await;
    let announce = ANNOUNCE_MS.to_string();
    let grace = GRACE_MS.to_string();
    let mut doomed = GatewayProcess::spawn(
        &env.namespace,
        "gw-doomed",
        &[
            "--presence",
            "true",
            "--announce-interval-ms",
            &announce,
            "--session-expires-ms",
            &grace,
        ],
    )
    .await;
    // The peer must have seen the doomed gateway announce itself.
    tokio::time::sleep(Duration::from_millis(ANNOUNCE_MS * 3)).await;
    let stays = TestClient::connect_with(&doomed.url(), as_user("ada")).await;
    let moves = TestClient::connect_with(&doomed.url(), as_user("bob")).await;
    let (s_stays, s_moves) = (stays.session().to_string(), moves.session().to_string());
    events
        .wait_for("client.connected", &s_stays, Duration::from_secs(5))
        .await;
    events
        .wait_for("client.connected", &s_moves, Duration::from_secs(5))
        .await;
    let resume = Hello {
        token: Some("bob".into()),
        ..moves.resume_hello()
    };

    let killed = Instant::now();
    doomed.kill().await;
    stays.abort();
    moves.abort();
    // bob's client moves to the peer and resumes; ada's never comes back.
    let moved = TestClient::connect_with(&peer.url(), resume).await;
    assert!(moved.welcome().resumed);

    let bound = Duration::from_millis(ANNOUNCE_MS * 3 + GRACE_MS + 3_000);
    let (v, at) = events
        .wait_for("client.disconnected", &s_stays, bound)
        .await;
    let delay = at.duration_since(killed);
    println!(
        "gateway_presence: a SIGKILLed gateway's unresumed session announced gone by its peer {} ms after the kill (3 × {ANNOUNCE_MS} ms missed announcements + {GRACE_MS} ms grace)",
        delay.as_millis()
    );
    assert_eq!(v["reason"], "gateway_lost");
    // Not before the peer could know (announcements missed since the last one, at
    // most one interval before the kill) and the grace for a resume elsewhere.
    assert!(
        delay >= Duration::from_millis(2 * ANNOUNCE_MS + GRACE_MS),
        "announced gone too early: {delay:?}"
    );
    assert_eq!(v["node"], "gw-doomed");
    assert_eq!(v["by"], peer.gateway().config().node.as_str());

    events.collect(Duration::from_millis(GRACE_MS + 500)).await;
    let counts = events.counts();
    let n = |s: &str, e: &str| {
        counts
            .get(&(s.to_string(), e.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(n(&s_stays, "client.connected"), 1, "{counts:?}");
    assert_eq!(n(&s_stays, "client.disconnected"), 1, "{counts:?}");
    assert_eq!(
        n(&s_moves, "client.connected"),
        1,
        "the resume is not a new connect: {counts:?}"
    );
    assert_eq!(
        n(&s_moves, "client.disconnected"),
        0,
        "bob is still online: {counts:?}"
    );
    let body = http_get(peer.health_addr(), "/presence").await;
    assert!(
        body.contains(&s_moves) && !body.contains(&s_stays),
        "{body}"
    );
    moved.close().await;
    peer.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_direct_message_to_a_user_with_no_session_is_reported_to_the_service() {
    use warren_service::{Outgoing, Targets};
    TestEnv::run("presence-undelivered", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, presence_config).await;
        let (service, mut reports, mut ada) = ada_and_a_reporting_service(env, &gw).await;
        let publisher = service.publisher();
        let send = |users: &[&str]| {
            let mut t = Targets::on("chat");
            for u in users {
                t = t.with_user(*u);
            }
            Outgoing::new(t, serde_json::to_vec(&users).unwrap())
        };

        // To ada, who is online: delivered, nothing reported.
        publisher.publish(&send(&["ada"])).await.expect("publish");
        ada.expect_deliver().await;
        // To zed, who has no session: reported back, with its message id.
        let sent = Instant::now();
        let id = publisher.publish(&send(&["zed"])).await.expect("publish");
        let report = tokio::time::timeout(Duration::from_secs(10), reports.recv())
            .await
            .expect("a report within 10 s")
            .expect("report");
        println!(
            "gateway_presence: a direct message to an offline user reported back in {} ms",
            sent.elapsed().as_millis()
        );
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "reported within 1 s"
        );
        assert_eq!(report.message_id.as_deref(), Some(id.as_str()));
        assert_eq!(report.users, ["zed"]);
        assert_eq!(report.keys, ["chat.user.zed"]);
        // To ada and zed: ada gets it, only zed is reported.
        let id = publisher
            .publish(&send(&["ada", "zed"]))
            .await
            .expect("publish");
        ada.expect_deliver().await;
        one_report_naming_zed(&mut reports, &id).await;
        ada.close().await;
        service.stop().await.expect("stop");
        gw.shutdown().await;
    })
    .await;
}

/// A service listening for undelivered reports, and ada on `gw` subscribed to her
/// direct messages on `chat`.
async fn ada_and_a_reporting_service(
    env: &TestEnv,
    gw: &TestGateway,
) -> (
    warren_service::Service,
    tokio::sync::broadcast::Receiver<warren_protocol::services::Undelivered>,
    TestClient,
) {
    let service =
        warren_service::Service::connect(&warren_e2e::service::amqp_uri(), env.names.clone())
            .await
            .expect("service");
    let reports = service.undelivered();
    let mut ada = TestClient::connect_with(&gw.url(), as_user("ada")).await;
    let mut s = sub("d", "chat");
    s.direct = true;
    ada.send(&ClientFrame::Subscribe(s)).await;
    ada.expect_ack("d").await;
    (service, reports, ada)
}

/// Waits for the report of message `id`, naming zed alone, and no other after it.
async fn one_report_naming_zed(
    reports: &mut tokio::sync::broadcast::Receiver<warren_protocol::services::Undelivered>,
    id: &str,
) {
    let report = tokio::time::timeout(Duration::from_secs(10), reports.recv())
        .await
        .expect("a report within 10 s")
        .expect("report");
    assert_eq!(report.message_id.as_deref(), Some(id));
    assert_eq!(report.users, ["zed"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), reports.recv())
            .await
            .is_err(),
        "one report per message"
    );
}

/// A gateway that starts reads the outbound stream from its last chunk: the messages
/// in it were published before it started, and were reported (or delivered) then.
/// Before, the new gateway — elected while it had heard no peer, its view empty until
/// the snapshot came — reported them again, naming users who had received them. Now
/// it reports only once its view is synced, and what it reports again of the last
/// chunk (reports are at least once) reaches the service library's
/// `Service::undelivered()` once: it drops a report of a message it was told of
/// already. The second gateway's name sorts first, so it is the elected one.
#[tokio::test]
async fn a_gateway_that_starts_does_not_report_the_messages_published_before_it() {
    use warren_service::{Outgoing, Targets};
    TestEnv::run("presence-undelivered-start", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            presence_config(c);
            c.node = "gw-b".into();
        })
        .await;
        let (service, mut reports, mut ada) = ada_and_a_reporting_service(env, &gw).await;
        let publisher = service.publisher();
        let send = |user: &str| {
            Outgoing::new(
                Targets::on("chat").with_user(user),
                serde_json::to_vec(&user).unwrap(),
            )
        };
        publisher.publish(&send("ada")).await.expect("publish");
        ada.expect_deliver().await;
        publisher.publish(&send("zed")).await.expect("publish");
        let report = tokio::time::timeout(Duration::from_secs(10), reports.recv())
            .await
            .expect("a report within 10 s")
            .expect("report");
        assert_eq!(report.users, ["zed"]);

        let second = TestGateway::start_with(env, |c| {
            presence_config(c);
            c.node = "gw-a".into();
        })
        .await;
        let again = tokio::time::timeout(Duration::from_secs(2), reports.recv()).await;
        assert!(
            again.is_err(),
            "no report for what was published before the second gateway started: {again:?}"
        );
        // Messages published since are reported, once.
        let id = publisher.publish(&send("zed")).await.expect("publish");
        one_report_naming_zed(&mut reports, &id).await;
        ada.close().await;
        service.stop().await.expect("stop");
        second.shutdown().await;
        gw.shutdown().await;
    })
    .await;
}

/// A lone gateway's graceful restart: with no live peer to announce its sessions gone
/// after the grace, it does as it stops (`gateway_lost`); a session resumed on the new
/// process is announced connected again. (Nothing was published: a session that never
/// came back stayed online for services for good, and one that did was announced
/// connected twice in a row.)
#[tokio::test]
async fn a_lone_gateway_that_stops_announces_its_sessions_gone() {
    let mut env = TestEnv::new("presence-lone-stop").await;
    let solo = |c: &mut warren_gateway::Config| {
        presence_config(c);
        c.node = "gw-solo".into();
    };
    let gw = TestGateway::start_with(&env, solo).await;
    let mut events = Events::listen(&mut env).await;
    let ada = TestClient::connect_with(&gw.url(), as_user("ada")).await;
    let bob = TestClient::connect_with(&gw.url(), as_user("bob")).await;
    let (a, b) = (ada.session().to_string(), bob.session().to_string());
    for s in [&a, &b] {
        events
            .wait_for("client.connected", s, Duration::from_secs(5))
            .await;
    }
    let resume = ada.resume_hello();
    gw.shutdown().await;
    ada.abort();
    bob.abort();
    for s in [&a, &b] {
        let (v, _) = events
            .wait_for("client.disconnected", s, Duration::from_secs(5))
            .await;
        assert_eq!(v["reason"], "gateway_lost", "{v}");
    }
    // The new process: ada comes back, bob does not.
    let again = TestGateway::start_with(&env, solo).await;
    let ada = TestClient::connect_with(
        &again.url(),
        Hello {
            token: Some("ada".into()),
            ..resume
        },
    )
    .await;
    assert!(ada.welcome().resumed);
    events.collect(Duration::from_millis(500)).await;
    let counts = events.counts();
    assert_eq!(
        counts.get(&(a.clone(), "client.connected".into())),
        Some(&2),
        "connected, gone, connected: {counts:?}"
    );
    assert_eq!(
        counts.get(&(b.clone(), "client.disconnected".into())),
        Some(&1)
    );
    ada.close().await;
    again.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_gateway_started_later_learns_the_sessions_from_its_peers() {
    let mut env = TestEnv::new("presence-snapshot").await;
    let first = TestGateway::start_with(&env, presence_config).await;
    let mut events = Events::listen(&mut env).await;
    let ada = TestClient::connect_with(&first.url(), as_user("ada")).await;
    let session = ada.session().to_string();
    events
        .wait_for("client.connected", &session, Duration::from_secs(5))
        .await;
    // A second gateway starts after the session opened, and asks its peers.
    let later = TestGateway::start_with(&env, presence_config).await;
    let started = Instant::now();
    loop {
        let body = http_get(later.health_addr(), "/presence").await;
        if body.contains(&session) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never learnt: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "gateway_presence: a gateway started later knew the session {} ms after it started",
        started.elapsed().as_millis()
    );
    // The client moves there: a resume, not a new connect.
    let resume = Hello {
        token: Some("ada".into()),
        ..ada.resume_hello()
    };
    ada.abort();
    let moved = TestClient::connect_with(&later.url(), resume).await;
    assert!(moved.welcome().resumed);
    events.collect(Duration::from_millis(500)).await;
    let counts = events.counts();
    assert_eq!(
        counts.get(&(session.clone(), "client.connected".into())),
        Some(&1),
        "{counts:?}"
    );
    moved.close().await;
    events
        .wait_for("client.disconnected", &session, Duration::from_secs(5))
        .await;
    later.shutdown().await;
    first.shutdown().await;
    env.cleanup().await;
}

/// A client toggling a subscription as fast as it may send frames does not make one
/// broker message per frame: one `client.subscriptions` publish is in flight per
/// session and only the newest keys wait behind it; the last event says how the
/// subscriptions ended.
#[tokio::test]
async fn client_subscriptions_events_of_a_session_are_coalesced_and_the_last_is_its_state() {
    let mut test_env = TestEnv::new("presence-toggle").await;
    let env = &mut test_env;
    tokio::time::timeout(LIMIT, async {
        let gw = TestGateway::start_with(env, |c| {
            presence_config(c);
            c.max_frames_per_s = 100_000;
        })
        .await;
        let mut events = Events::listen_to(env, &["client.subscriptions"]).await;
        let mut ada = TestClient::connect_with(&gw.url(), as_user("ada")).await;
        let session = ada.session().to_string();
        let room = Subscribe {
            id: "room".into(),
            channel: "chat".into(),
            groups: vec!["room".into()],
            ..Default::default()
        };
        const TOGGLES: usize = 1_000;
        for _ in 0..TOGGLES {
            ada.send(&ClientFrame::Subscribe(room.clone())).await;
            ada.send(&ClientFrame::Unsubscribe(room.clone())).await;
        }
        // Subscribed at the end.
        ada.subscribe(room.clone()).await;
        events.collect(Duration::from_secs(2)).await;
        let mine: Vec<&serde_json::Value> = events
            .seen
            .iter()
            .filter(|(_, v, _)| v["session"] == session.as_str())
            .map(|(_, v, _)| v)
            .collect();
        assert!(
            !mine.is_empty() && mine.len() < TOGGLES / 2,
            "{} events for {} changes",
            mine.len(),
            2 * TOGGLES + 1
        );
        assert_eq!(
            mine.last().unwrap()["keys"],
            serde_json::json!(["chat.group.room"]),
            "the last event is the session's state"
        );
        ada.close().await;
        gw.shutdown().await;
    })
    .await
    .expect("within the limit");
    test_env.cleanup().await;
}

/// `GET /presence` costs a token check (an auth service round trip in that mode) and
/// a scan of every session: each call counts as a new connection from its address,
/// so one client cannot call it without bound (`429 overloaded` past
/// `max_new_connections_per_ip_per_s`, bursts of twice that).
#[tokio::test]
async fn presence_calls_count_as_new_connections_from_their_address() {
    let env = TestEnv::new("presence-rate").await;
    let gw = TestGateway::start_with(&env, |c| {
        presence_config(c);
        c.ip_limits_on_loopback = true;
        c.max_new_connections_per_ip_per_s = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (status, _, body) =
            warren_e2e::gateway::http_get_with(gw.health_addr(), "/presence", &[]).await;
        if status == 429 {
            let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON refusal");
            assert_eq!(v["code"], "overloaded", "{body}");
        }
        statuses.push(status);
    }
    assert!(statuses[..3].iter().all(|s| *s == 200), "{statuses:?}");
    // A query it cannot read is refused in a JSON body, as every refusal is (once
    // the bucket holds a token again).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, _, body) = warren_e2e::gateway::http_get_with(
        gw.health_addr(),
        "/presence?channel=chat&channel=voice",
        &[],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON refusal");
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid")),
        "{body}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    // The bucket fills again: calls at its rate go through.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, _, _) =
        warren_e2e::gateway::http_get_with(gw.health_addr(), "/presence", &[]).await;
    assert_eq!(status, 200);
    gw.shutdown().await;
    env.cleanup().await;
}

/// A gateway's own `client.connected` comes back from the bus after the session may
/// have closed already (a broker round trip, far longer during an outage). It must
/// not bring the session back into the gateway's view: there it stayed online for
/// good (presence answers, undelivered reports for its user), as nothing ended it
/// again.
#[tokio::test]
async fn sessions_closed_at_once_are_not_listed_online_by_their_gateway() {
    let mut env = TestEnv::new("presence-closed-at-once").await;
    let gw = TestGateway::start_with(&env, presence_config).await;
    let mut events = Events::listen(&mut env).await;
    let mut sessions = Vec::new();
    for i in 0..50 {
        let c = TestClient::connect_with(&gw.url(), as_user(&format!("u{i}"))).await;
        sessions.push(c.session().to_string());
        c.close().await;
    }
    // Every session's `client.connected` came back from the bus (to this listener,
    // and so, about then, to the gateway's own): the late echoes the view must not
    // take a closed session back from are in.
    for s in &sessions {
        events
            .wait_for("client.connected", s, Duration::from_secs(10))
            .await;
        events
            .wait_for("client.disconnected", s, Duration::from_secs(10))
            .await;
    }
    let settled = async {
        while listed(&gw, "").await != serde_json::json!([]) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .is_err()
    {
        panic!("still listed: {}", listed(&gw, "").await);
    }
    // And it stays so: no echo heard late brings a session back (five announcement
    // intervals).
    let empty = Instant::now();
    while empty.elapsed() < Duration::from_millis(ANNOUNCE_MS * 5) {
        let users = listed(&gw, "").await;
        assert_eq!(
            users,
            serde_json::json!([]),
            "listed again {:?} after the listing emptied",
            empty.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in &sessions {
        assert_eq!(
            (
                events.count(s, "client.connected"),
                events.count(s, "client.disconnected")
            ),
            (1, 1),
            "{s}: {:?}",
            events.counts()
        );
    }
    gw.shutdown().await;
    env.cleanup().await;
}

/// Every gateway stopping together (the whole deployment shut down) announces each
/// of its sessions gone, once: each hears the others' `down` through its drain. Each
/// judged its peers alive as they were when its drain began, when all were: nobody
/// announced anything, and services counted every user online for good.
#[tokio::test]
async fn gateways_stopping_together_announce_each_session_gone_once() {
    let mut env = TestEnv::new("presence-all-stop").await;
    let a = TestGateway::start_with(&env, presence_config).await;
    let b = TestGateway::start_with(&env, presence_config).await;
    let mut events = Events::listen(&mut env).await;
    let (ada, sa) = events.connected(&a, "ada").await;
    let (bob, sb) = events.connected(&b, "bob").await;
    let sessions = [sa, sb];
    peers_heard().await;
    tokio::join!(a.shutdown(), b.shutdown());
    ada.abort();
    bob.abort();
    for s in &sessions {
        let (v, _) = events
            .wait_for("client.disconnected", s, Duration::from_secs(5))
            .await;
        assert_eq!(v["reason"], "gateway_lost", "{v}");
    }
    events.collect(Duration::from_millis(500)).await;
    for s in &sessions {
        assert_eq!(
            events.count(s, "client.disconnected"),
            1,
            "{:?}",
            events.counts()
        );
    }
    env.cleanup().await;
}

/// ada, connected to `gw` and subscribed to chat's lobby group, once her
/// `client.connected` was announced; and her session.
async fn ada_in_the_lobby(gw: &TestGateway, events: &mut Events) -> (TestClient, String) {
    let mut ada = TestClient::connect_with(&gw.url(), as_user("ada")).await;
    let session = ada.session().to_string();
    let mut lobby = sub("s1", "chat");
    lobby.groups = vec!["lobby".into()];
    ada.subscribe(lobby).await;
    events
        .wait_for("client.connected", &session, Duration::from_secs(5))
        .await;
    (ada, session)
}

/// A session resumed on a gateway that did not hold it is announced there by a
/// takeover request, which comes back to that gateway too. A connection lost before
/// then (a client that gave the resume up, a proxy dropping the socket) must still be
/// announced gone after the grace: the request coming back took the session out of
/// those awaiting their `expired`, and services saw it online for good.
#[tokio::test]
async fn a_resume_lost_at_once_on_another_gateway_is_announced_gone_after_the_grace() {
    let mut env = TestEnv::new("presence-resume-lost").await;
    let gw = TestGateway::start_with(&env, presence_config).await;
    let other = TestGateway::start_with(&env, presence_config).await;
    let mut events = Events::listen(&mut env).await;
    let (ada, session) = ada_in_the_lobby(&gw, &mut events).await;
    let resume = Hello {
        token: Some("ada".into()),
        ..ada.resume_hello()
    };
    ada.abort();
    let again = TestClient::connect_with(&other.url(), resume).await;
    assert!(again.welcome().resumed);
    again.abort();
    let (v, _) = events
        .wait_for(
            "client.disconnected",
            &session,
            Duration::from_millis(GRACE_MS + 3_000),
        )
        .await;
    assert_eq!(v["reason"], "expired");
    for g in [&gw, &other] {
        assert_eq!(listed(g, "").await, serde_json::json!([]), "{}", g.url());
    }
    other.shutdown().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// A resume that names no subscriptions (the client dropped them while disconnected:
/// the SDK sends no `unsubscribe` then) changes the session's subscriptions: the
/// groups it left are no longer answered for it.
#[tokio::test]
async fn a_resume_naming_no_subscriptions_leaves_the_groups_it_had() {
    TestEnv::run("presence-resume-none", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, presence_config).await;
        let mut ada = TestClient::connect_with(&gw.url(), as_user("ada")).await;
        let mut lobby = sub("s1", "chat");
        lobby.groups = vec!["lobby".into()];
        ada.subscribe(lobby).await;
        assert_eq!(
            listed(&gw, "?group=lobby").await,
            serde_json::json!(["ada"])
        );
        let resume = Hello {
            token: Some("ada".into()),
            subscriptions: Vec::new(),
            ..ada.resume_hello()
        };
        ada.abort();
        let ada = TestClient::connect_with(&gw.url(), resume).await;
        assert!(ada.welcome().resumed);
        assert_eq!(listed(&gw, "?group=lobby").await, serde_json::json!([]));
        assert_eq!(listed(&gw, "").await, serde_json::json!(["ada"]));
        ada.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A client that gives up a connection it did not hear from in time (the SDK's
/// heartbeat or handshake timeout) closes it with `4000 heartbeat_timeout` and resumes
/// elsewhere: that close is not a goodbye, and the session is announced gone only if
/// it is not resumed within the grace. A close with 1000 is a goodbye, at once.
#[tokio::test]
async fn a_close_with_4000_keeps_the_session_for_the_grace() {
    let mut env = TestEnv::new("presence-close-4000").await;
    let gw = TestGateway::start_with(&env, presence_config).await;
    let mut events = Events::listen(&mut env).await;
    let ada = TestClient::connect_with(&gw.url(), as_user("ada")).await;
    let session = ada.session().to_string();
    let resume = Hello {
        token: Some("ada".into()),
        ..ada.resume_hello()
    };
    events
        .wait_for("client.connected", &session, Duration::from_secs(5))
        .await;
    let closed = Instant::now();
    assert_eq!(ada.close_with(4000).await, Some(4000), "echoed");
    events.collect(Duration::from_millis(GRACE_MS / 2)).await;
    assert!(
        !events
            .seen
            .iter()
            .any(|(k, _, _)| k == "client.disconnected"),
        "not announced gone at once: {:?}",
        events.seen
    );
    // Resumed within the grace: nothing at all.
    let ada = TestClient::connect_with(&gw.url(), resume.clone()).await;
    assert!(ada.welcome().resumed);
    events.collect(Duration::from_millis(GRACE_MS)).await;
    assert!(
        !events
            .seen
            .iter()
            .any(|(k, _, _)| k == "client.disconnected"),
        "{:?}",
        events.seen
    );
    // Not resumed: expired after the grace.
    let lost = Instant::now();
    ada.close_with(4000).await;
    let (v, at) = events
        .wait_for(
            "client.disconnected",
            &session,
            Duration::from_millis(GRACE_MS + 3_000),
        )
        .await;
    assert_eq!(v["reason"], "expired");
    assert!(at.duration_since(lost) >= Duration::from_millis(GRACE_MS));
    assert!(closed.elapsed() >= Duration::from_millis(GRACE_MS));
    gw.shutdown().await;
    env.cleanup().await;
}

/// A gateway cut off from RabbitMQ (its clients still connected to it) for longer than
/// its lifetime and the grace: its peer counts it dead and announces its sessions
/// `gateway_lost`. Its listening queue went with its connection, so it never heard
/// that; before, its sessions stayed offline for every service and every peer's
/// presence answer while their clients were connected. Now the peer's answer to its
/// resync names them, and it announces them connected again, with their
/// subscriptions, once.
#[tokio::test]
async fn a_gateway_cut_off_announces_its_sessions_again_that_a_peer_announced_lost() {
    let mut env = TestEnv::new("presence-cut-off").await;
    let proxy = warren_e2e::service::CuttableProxy::start().await;
    let peer = TestGateway::start_with(&env, presence_config).await;
    let cut = TestGateway::start_with(&env, |c| {
        presence_config(c);
        c.amqp_uri = vec![proxy.uri.clone()];
    })
    .await;
    let mut events = Events::listen(&mut env).await;
    // Each must have heard the other announce itself.
    tokio::time::sleep(Duration::from_millis(ANNOUNCE_MS * 3)).await;
    let (ada, session) = ada_in_the_lobby(&cut, &mut events).await;
    let in_lobby = "?channel=chat&group=lobby";
    let until = Instant::now() + Duration::from_secs(5);
    while listed(&peer, in_lobby).await == serde_json::json!([]) {
        assert!(
            Instant::now() < until,
            "the peer never listed ada in the lobby"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    proxy.hold_off(true);
    let (v, _) = events
        .wait_for(
            "client.disconnected",
            &session,
            Duration::from_millis(ANNOUNCE_MS * 3 + GRACE_MS + 5_000),
        )
        .await;
    assert_eq!(v["reason"], "gateway_lost", "{v}");
    assert_eq!(v["by"], peer.gateway().config().node.as_str(), "{v}");
    assert_eq!(listed(&peer, "").await, serde_json::json!([]));

    proxy.hold_off(false);
    let back = Instant::now();
    let within = Duration::from_secs(30);
    loop {
        let connects = events
            .seen
            .iter()
            .filter(|(k, v, _)| k == "client.connected" && v["session"] == session.as_str())
            .count();
        if connects == 2 {
            break;
        }
        assert!(
            back.elapsed() < within,
            "ada was not announced connected again within {within:?} of the gateway's \
             return; seen {:?}",
            events.counts()
        );
        events.collect(Duration::from_millis(100)).await;
    }
    println!(
        "gateway_presence: a cut-off gateway's session announced connected again {} ms after it could reach RabbitMQ",
        back.elapsed().as_millis()
    );
    // With its subscriptions: the peer answers for it in the lobby again.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let users = listed(&peer, in_lobby).await;
        if users.to_string().contains("ada") {
            break;
        }
        assert!(Instant::now() < until, "not in the peer's lobby: {users}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once: connected, gateway_lost, connected.
    events.collect(Duration::from_secs(3)).await;
    let order: Vec<&str> = events
        .seen
        .iter()
        .filter(|(_, v, _)| v["session"] == session.as_str())
        .map(|(k, _, _)| k.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "client.connected",
            "client.disconnected",
            "client.connected"
        ]
    );
    ada.close().await;
    cut.shutdown().await;
    peer.shutdown().await;
    env.cleanup().await;
}
