//! `request_replies = "direct"`: replies to WebSocket requests come back by RabbitMQ's
//! direct reply-to instead of through the outbound stream (sooner: BENCHMARKS.md,
//! "rpc with direct replies"). A reply reaches only the connection that asked, without
//! a stream position; a refusal is an `error` with the service's code; a reply after
//! the request's deadline is dropped. A reply lost with its gateway is answered again
//! from the request's copy the SDK sends when it resumes, by the Warren service
//! library's duplicate window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_e2e::client::TestClient;
use warren_e2e::env::{ack, amqp_addr, next_delivery, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_e2e::sdk_driver::{envelope, payload, GatewayProcess, SdkClient};
use warren_e2e::service::CuttableProxy;
use warren_gateway::{NoServiceMode, RequestReplies};
use warren_protocol::ErrorCode;
use warren_sdk::Config;
use warren_service::{Context, HandlerError, Incoming, Outcome, Service};

const LIMIT: Duration = Duration::from_secs(60);

/// A service that got one request learns the direct reply-to address every WebSocket
/// request of the gateway shares; the correlation ids it sees must not let it answer
/// other users' requests to other services. They were `<connection>.<count>`, both
/// counted from 1: the echo service, having seen `7.1`, answered bob's request to
/// `tickets` as `8.1`.
#[tokio::test]
async fn a_service_cannot_answer_another_users_request_by_guessing_its_correlation_id() {
    TestEnv::run("direct-reply-guess", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.request_replies = RequestReplies::Direct).await;
        let mut echo = env.consume_inbound("echo").await;
        let mut tickets = env.consume_inbound("tickets").await;
        let mut a = TestClient::connect(&gw.url()).await;
        let mut b = TestClient::connect(&gw.url()).await;
        a.request("q1", "echo", Some(5000), serde_json::json!({"n": 1}))
            .await;
        let seen = next_delivery(&mut echo, Duration::from_secs(5)).await;
        b.request("q1", "tickets", Some(5000), serde_json::json!({"n": 2}))
            .await;
        // bob's request is out (its call registered), unanswered by tickets.
        let bobs = next_delivery(&mut tickets, Duration::from_secs(5)).await;
        // The echo service guesses bob's call from ada's.
        let ada_call = seen
            .properties
            .correlation_id()
            .as_ref()
            .expect("a correlation id")
            .to_string();
        let ada_conn: u64 = ada_call
            .split('.')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a connection number first");
        let reply_to = seen.properties.reply_to().clone().expect("reply_to");
        for guess in (1..=3).flat_map(|k| (1..=2).map(move |n| format!("{}.{n}", ada_conn + k))) {
            let props = lapin::BasicProperties::default()
                .with_correlation_id(guess.as_str().into())
                .with_message_id(uuid::Uuid::new_v4().simple().to_string().into());
            env.channel()
                .basic_publish(
                    "".into(),
                    reply_to.clone(),
                    lapin::options::BasicPublishOptions::default(),
                    b"{\"forged\":true}",
                    props,
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
        }
        b.expect_quiet(Duration::from_millis(500)).await;
        ack(&seen).await;
        ack(&bobs).await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reply_comes_by_direct_reply_to_to_the_connection_that_asked() {
    TestEnv::run("direct-reply", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.request_replies = RequestReplies::Direct).await;
        let mut inbound = env.consume_inbound("echo").await;
        let mut a = TestClient::connect(&gw.url()).await;
        let mut b = TestClient::connect(&gw.url()).await;

        a.request("q1", "echo", Some(5000), serde_json::json!({"n": 1}))
            .await;
        let req = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        let reply_to = req.properties.reply_to().as_ref().map(|r| r.to_string());
        assert!(
            reply_to
                .as_deref()
                .is_some_and(|r| r.starts_with("amq.rabbitmq.reply-to")),
            "the request names direct reply-to, not the outbound stream: {reply_to:?}"
        );
        env.reply_to(&req, "{\"ok\":1}", None).await;
        ack(&req).await;
        let r = a.expect_reply("q1").await;
        assert_eq!(r.message.get(), "{\"ok\":1}");
        assert_eq!(r.position, None, "a direct reply has no stream position");
        b.expect_quiet(Duration::from_millis(300)).await;

        // A refusal comes back the same way, as an error with the service's code.
        a.request("q2", "echo", Some(5000), serde_json::json!({"n": 2}))
            .await;
        env.answer_next(&mut inbound, "{\"message\":\"no\"}", Some("rejected"))
            .await;
        let e = a.expect_error_code(Some("q2"), ErrorCode::Rejected).await;
        assert_eq!(e.message, "no");

        // A reply after the deadline is dropped: the client got `timeout`, once.
        a.request("q3", "echo", Some(300), serde_json::json!({"n": 3}))
            .await;
        let late = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        a.expect_error_code(Some("q3"), ErrorCode::Timeout).await;
        env.reply_to(&late, "{\"late\":true}", None).await;
        ack(&late).await;
        // Nothing answers q3 after its timeout.
        a.expect_quiet(Duration::from_millis(500)).await;

        // Requests from two connections in flight at once each get their own reply.
        a.request("same", "echo", Some(5000), serde_json::json!({"from": "a"}))
            .await;
        b.request("same", "echo", Some(5000), serde_json::json!({"from": "b"}))
            .await;
        let first = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        let second = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        for req in [&second, &first] {
            let body = String::from_utf8_lossy(&req.data).to_string();
            env.reply_to(req, &body, None).await;
            ack(req).await;
        }
        let ra = a.expect_reply("same").await;
        let rb = b.expect_reply("same").await;
        assert_eq!(ra.message.get(), "{\"from\":\"a\"}");
        assert_eq!(rb.message.get(), "{\"from\":\"b\"}");
        // Once each: no copy of the other's reply follows.
        for c in [&mut a, &mut b] {
            c.expect_quiet(Duration::from_millis(300)).await;
        }
        gw.shutdown().await;
    })
    .await;
}

/// Direct replies count against the delivery window, as stream deliveries do: a
/// client that does not acknowledge gets `delivery_window` of them, and the rest as
/// it acknowledges, in order. (Each was sent at once and kept in the connection's
/// list of unacknowledged deliveries for its whole life: memory without bound for a
/// client that never acknowledges.)
#[tokio::test]
async fn direct_replies_wait_for_room_in_the_delivery_window() {
    TestEnv::run("direct-reply-window", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.request_replies = RequestReplies::Direct;
            c.delivery_window = 2;
        })
        .await;
        let mut inbound = env.consume_inbound("echo").await;
        let mut a = TestClient::connect(&gw.url()).await;
        for i in 0..5 {
            a.request(
                &format!("q{i}"),
                "echo",
                Some(20_000),
                serde_json::json!({"n": i}),
            )
            .await;
        }
        for _ in 0..5 {
            let req = next_delivery(&mut inbound, Duration::from_secs(5)).await;
            let body = String::from_utf8_lossy(&req.data).to_string();
            env.reply_to(&req, &body, None).await;
            ack(&req).await;
        }
        // The replies until nothing more comes for a while: their ids and last seq.
        async fn replies(c: &mut TestClient) -> (Vec<String>, u64) {
            let (mut ids, mut seq) = (Vec::new(), 0);
            while let Some(f) = c.recv_within(Duration::from_millis(700)).await {
                match f {
                    warren_protocol::ServerFrame::Reply(r) => {
                        ids.push(r.id.clone());
                        seq = r.seq;
                    }
                    other => panic!("{other:?}"),
                }
            }
            (ids, seq)
        }
        let (first, seq) = replies(&mut a).await;
        assert_eq!(first, ["q0", "q1"], "the window holds two");
        a.ack_deliveries(seq).await;
        let (next, seq) = replies(&mut a).await;
        assert_eq!(next, ["q2", "q3"]);
        a.ack_deliveries(seq).await;
        let (last, _) = replies(&mut a).await;
        assert_eq!(last, ["q4"]);
        a.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// Direct replies held for a full window are dropped when their request times out:
/// a client that never acknowledges, sending request after request, does not make
/// the gateway hold one reply more per request (they were dropped only at the next
/// acknowledgement, which never came).
#[tokio::test]
async fn held_direct_replies_of_requests_that_timed_out_are_dropped() {
    TestEnv::run("direct-reply-held", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.request_replies = RequestReplies::Direct;
            c.delivery_window = 1;
        })
        .await;
        let mut inbound = env.consume_inbound("echo").await;
        let mut a = TestClient::connect(&gw.url()).await;
        for i in 0..6 {
            let id = format!("q{i}");
            a.request(&id, "echo", Some(300), serde_json::json!({"n": i}))
                .await;
            env.answer_next(&mut inbound, "{}", None).await;
            if i == 0 {
                a.expect_reply(&id).await; // the window's one place, never acknowledged
            } else {
                a.expect_error_code(Some(&id), ErrorCode::Timeout).await;
            }
        }
        let metrics = warren_e2e::gateway::http_get(gw.health_addr(), "/metrics").await;
        assert_eq!(
            warren_e2e::gateway::metric_in(&metrics, "direct_replies_held"),
            Some(0),
            "replies of requests that timed out are still held"
        );
        a.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_reply_lost_with_its_gateway_comes_from_the_copy_the_sdk_sends_again() {
    let env = TestEnv::new("direct-reply-kill").await;
    let tag = &env.namespace[env.namespace.len() - 8..];
    let args = ["--request-replies", "direct"];
    let (node_a, node_b) = (format!("gwa-{tag}"), format!("gwb-{tag}"));
    let (a, b) = tokio::join!(
        GatewayProcess::spawn(&env.namespace, &node_a, &args),
        GatewayProcess::spawn(&env.namespace, &node_b, &args),
    );
    let (mut a, mut b) = (a, b);
    // A Warren-library service that takes 1.5 s per request: the gateway that sent
    // the request is killed while the service works on it. It counts what its
    // handler runs: the copy the SDK sends again must be answered from the library's
    // duplicate window, not handled a second time.
    let handled = Arc::new(AtomicU64::new(0));
    let service = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .expect("the service connects");
    let count = handled.clone();
    service
        .consume("echo", move |_ctx: Context, m: Incoming| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let body: serde_json::Value =
                    m.json().map_err(|e| HandlerError::Failed(e.to_string()))?;
                Outcome::json(&body).map_err(|e| HandlerError::Failed(e.to_string()))
            }
        })
        .await
        .expect("consume echo");
    let mut config = Config::new(vec![a.url(), b.url()]);
    config.token = Some("u1".into());
    config.backoff = warren_sdk::Backoff::new(50, 500);
    config.request_timeout_ms = 15_000;
    let client = SdkClient::start(config, 7);
    client
        .ready(Duration::from_secs(20))
        .await
        .expect("connects");

    let asked = Instant::now();
    let reply = client.request(envelope("echo", payload("{\"n\":42}")), None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_a = client
        .stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .connected_url();
    assert_eq!(
        on_a,
        Some(a.url()),
        "the request went out through the first gateway"
    );
    let killed = tokio::time::Instant::now();
    a.kill().await;
    let answer = tokio::time::timeout(Duration::from_secs(15), reply)
        .await
        .expect("the request resolves within its timeout")
        .expect("the driver answers")
        .expect("the request is answered, not failed");
    let took = asked.elapsed();
    println!(
        "gateway_direct_replies: answered after {} ms, on the second gateway",
        took.as_millis()
    );
    assert_eq!(answer.get(), "{\"n\":42}");
    assert!(
        took >= Duration::from_millis(1500),
        "answered only after the service's work ({} ms)",
        took.as_millis()
    );
    let (on, moved) = {
        let stats = client.stats.lock().unwrap_or_else(|e| e.into_inner());
        (stats.connected_url(), stats.connected_after(killed))
    };
    assert_eq!(
        on,
        Some(b.url()),
        "the answer came through the second gateway"
    );
    assert!(moved.is_some(), "the client connected again after the kill");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "the service handled the request once; the copy was answered from its window"
    );
    client.close().await;
    service.stop().await.expect("the service stops");
    b.kill().await;
    env.cleanup().await;
}

/// A gateway that drains waits (within `shutdown_grace_ms`) for the direct replies to
/// the requests in flight: RabbitMQ keeps no copy of them to replay where the client
/// resumes. It closed as soon as the confirms were in, and the reply was lost: the
/// SDK's copy of the request got an answer only from a Warren service's duplicate
/// window, and only for a reply small enough to be remembered.
#[tokio::test]
async fn a_draining_gateway_waits_for_the_direct_replies_to_its_requests() {
    TestEnv::run("direct-reply-drain", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.request_replies = RequestReplies::Direct).await;
        let mut inbound = env.consume_inbound("echo").await;
        let mut a = TestClient::connect(&gw.url()).await;
        a.request("q1", "echo", Some(10_000), serde_json::json!({"n": 1}))
            .await;
        // A request whose own deadline passes during the drain is answered `timeout`.
        a.request("q2", "echo", Some(1_000), serde_json::json!({"n": 2}))
            .await;
        let req = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        let _unanswered = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        let started = Instant::now();
        let stop = tokio::spawn(gw.shutdown());
        a.expect("drain", |f| {
            matches!(f, warren_protocol::ServerFrame::Drain(_)).then_some(())
        })
        .await;
        a.expect_error_code(Some("q2"), ErrorCode::Timeout).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        env.reply_to(&req, "{\"ok\":1}", None).await;
        ack(&req).await;
        let r = a.expect_reply("q1").await;
        assert_eq!(r.message.get(), "{\"ok\":1}");
        assert_eq!(a.expect_close(Duration::from_secs(5)).await, Some(1001));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not the whole grace"
        );
        tokio::time::timeout(Duration::from_secs(10), stop)
            .await
            .expect("shutdown ends")
            .expect("no panic");
    })
    .await;
}

/// CPU time this thread has used (user + system): a `#[tokio::test]` runs its
/// runtime, the gateway it starts included, on a thread of its own, beside the other
/// tests of this binary.
fn cpu_used() -> Duration {
    Duration::from_millis(warren_e2e::sdk_driver::stat_cpu_ms(
        "/proc/thread-self/stat",
    ))
}

/// A drain waiting for a direct reply wakes for the request's deadline only. It woke
/// for every time the connection's timer names, and those it does not move on during
/// a drain (here the token's expiry) once past woke it on every turn: a core spun
/// until the drain ended, on every such connection at once.
#[tokio::test]
async fn a_drain_waiting_for_a_direct_reply_does_not_spin() {
    TestEnv::run("direct-reply-drain-idle", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.request_replies = RequestReplies::Direct;
            c.auth.mode = warren_gateway::AuthMode::Jwt;
            c.auth.jwt.secret = Some(warren_e2e::jwt::SECRET.into());
            c.auth.jwt.leeway_s = 0;
            c.shutdown_grace_ms = 4_000;
        })
        .await;
        let mut inbound = env.consume_inbound("echo").await;
        let token = warren_e2e::jwt::sign(
            &serde_json::json!({"sub": "ada", "exp": warren_e2e::jwt::now() + 2}),
            warren_e2e::jwt::SECRET.as_bytes(),
        );
        let hello = warren_protocol::Hello {
            token: Some(token),
            ..Default::default()
        };
        let mut a = TestClient::connect_with(&gw.url(), hello).await;
        a.request("q", "echo", Some(30_000), serde_json::json!(1))
            .await;
        let _unanswered = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        let stop = tokio::spawn(gw.shutdown());
        a.expect("drain", |f| {
            matches!(f, warren_protocol::ServerFrame::Drain(_)).then_some(())
        })
        .await;
        // The token expires 2 s after it was made; the drain lasts its 4 s grace.
        let (cpu, wall) = (cpu_used(), Instant::now());
        assert_eq!(a.expect_close(Duration::from_secs(10)).await, Some(1001));
        let (cpu, wall) = (cpu_used() - cpu, wall.elapsed());
        assert!(wall > Duration::from_secs(2), "the drain waited: {wall:?}");
        assert!(
            cpu < wall / 3,
            "{cpu:?} of CPU in {wall:?} of a drain waiting for a reply"
        );
        tokio::time::timeout(Duration::from_secs(10), stop)
            .await
            .expect("shutdown ends")
            .expect("no panic");
    })
    .await;
}

/// With RabbitMQ unreachable, requests that many sessions send at once are each
/// refused `broker_unavailable` within about `broker_wait_ms`: the callers waiting to
/// open the request channel share one attempt's outcome. Before, the opening was
/// serialised behind a lock and each caller waited for its own attempt after the
/// ones before it: the k-th was refused after about k × `broker_wait_ms` (the sixth
/// here after 6 s), its connection reading nothing meanwhile.
#[tokio::test]
async fn requests_sent_together_while_rabbitmq_is_unreachable_are_refused_within_broker_wait_ms() {
    TestEnv::run("direct-reply-unreachable", LIMIT, async |env| {
        const SESSIONS: usize = 6;
        let proxy = CuttableProxy::start().await;
        let uri = proxy.uri.clone();
        let gw = TestGateway::start_with(env, move |c| {
            c.request_replies = RequestReplies::Direct;
            c.amqp_uri = vec![uri];
            c.broker_wait_ms = 1_000;
            // No look at the queue's consumers: only the request channel is waited for.
            c.no_service = NoServiceMode::Off;
        })
        .await;
        let mut inbound = env.consume_inbound("echo").await;
        let mut clients = Vec::new();
        for _ in 0..SESSIONS {
            clients.push(TestClient::connect(&gw.url()).await);
        }
        // The request channel opened and answering, then cut with the connection: the
        // requests below open it again.
        clients[0]
            .request("warm", "echo", Some(5_000), serde_json::json!(0))
            .await;
        env.answer_next(&mut inbound, "{}", None).await;
        clients[0].expect_reply("warm").await;
        proxy.hold_off(true);
        gw.wait_broker_away().await;
        let sent = Instant::now();
        for (i, c) in clients.iter_mut().enumerate() {
            c.request(&format!("q{i}"), "echo", Some(20_000), serde_json::json!(i))
                .await;
        }
        let answered = futures_util::future::join_all(clients.iter_mut().enumerate().map(
            |(i, c)| async move {
                let e = tokio::time::timeout(
                    Duration::from_secs(15),
                    c.expect_error_code(Some(&format!("q{i}")), ErrorCode::BrokerUnavailable),
                )
                .await
                .expect("an answer");
                (e, sent.elapsed())
            },
        ))
        .await;
        let took: Vec<u128> = answered.iter().map(|(_, t)| t.as_millis()).collect();
        println!("gateway_direct_replies: broker_unavailable after {took:?} ms");
        for (e, t) in &answered {
            assert!(
                *t < Duration::from_millis(2_500),
                "refused after {t:?} ({took:?} ms): {e:?}"
            );
        }
        proxy.hold_off(false);
        gw.shutdown().await;
    })
    .await;
}
