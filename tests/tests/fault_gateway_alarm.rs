//! A RabbitMQ resource alarm blocks the gateway's publishing connection: RabbitMQ stops
//! reading it, so no confirm comes while the alarm lasts. The HTTP API's
//! `POST /external/{channel}` and `POST /publish` answer `503 broker_unavailable` after
//! their 10 s confirm wait instead of hanging until the alarm clears (the channel's
//! replacement, which also waits for the alarm, is opened in the background), and
//! once the alarm clears the same calls are accepted again. So does a WebSocket
//! client's `publish` (`broker_unavailable` after the same 10 s). A WebSocket `request`
//! made as the alarm starts waits for its confirm up to its own timeout instead: it is
//! answered by its reply once the alarm clears, not refused while the reply may still
//! come (a retry would run it twice). A `POST /request` during the alarm does not stall
//! the gateway's stream readers: a resume's backlog is read from the stream meanwhile
//! (the request went out on the connection that reads the streams, which RabbitMQ then
//! stopped reading).
//!
//! The gateway is made to act on `connection.blocked` seconds late
//! (`warren_gateway::fault::BLOCKED_NOTICE_DELAY_MS`), so the publishes during the alarm
//! meet a connection lapin already holds (it writes nothing on a blocked connection)
//! while the gateway does not know yet: they are answered in the same bounded time,
//! and the client's connection keeps answering meanwhile (before, such a publish
//! stalled the connection and left the HTTP call unanswered until the alarm cleared).
//!
//! Runs on a private node (`warren_e2e::broker_node`), never on the shared broker;
//! fails where RabbitMQ's server scripts are not installed (skipped with
//! `WARREN_ALLOW_SKIP=1`). The fault is injected
//! through this process's environment: this binary holds one test.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use warren_e2e::broker_node::{with_private_nodes, BrokerCluster};
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::{http_post, TestGateway};
use warren_e2e::service::DemoProcess;
use warren_protocol::{ErrorCode, ServerFrame};

const KEY: &str = "test-http-api-key";
/// How late the gateway acts on `connection.blocked`.
const NOTICE_DELAY: Duration = Duration::from_secs(6);
/// When, after the alarm, the publishes are made: within NOTICE_DELAY.
const PUBLISH_AFTER: Duration = Duration::from_secs(2);

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, answer) = http_post(addr, path, Some(KEY), body.to_string().as_bytes()).await;
    (status, answer, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_resource_alarm_http_publishes_get_a_503_in_bounded_time_and_work_after_it() {
    std::env::set_var(
        warren_gateway::fault::BLOCKED_NOTICE_DELAY_MS,
        NOTICE_DELAY.as_millis().to_string(),
    );
    with_private_nodes("fault_gateway_alarm", Duration::from_secs(180), run()).await;
}

async fn run() {
    let cluster = BrokerCluster::single().await.expect("a private node boots");
    let uri = cluster.uri(0);
    // The shared broker only lends the namespace here; everything runs on the node.
    let env = TestEnv::new("gw-alarm").await;
    let gw = TestGateway::start_with(&env, |c| {
        c.amqp_uri = vec![uri.clone()];
        c.http_api.enabled = true;
        c.http_api.api_keys = vec![KEY.into()];
        c.http_api.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        // Clients are not read while the alarm lasts: no heartbeat may close them.
        c.heartbeat_ms = 120_000;
        // A resume past a few messages is read from the broker, not from memory.
        c.hub_buffer_messages = 4;
    })
    .await;
    let addr = gw.gateway().http_api_addr().expect("the HTTP API is on");
    let external = |id: &str| json!({"id": id, "message": {"text": id}});
    let broadcast =
        |id: &str| json!({"id": id, "channel": "chat", "broadcast": true, "message": {"n": 1}});

    let (status, answer, _) = post(addr, "/external/chat", external("before")).await;
    assert_eq!(status, 202, "before the alarm: {answer}");
    let mut client = TestClient::connect(&gw.url()).await;
    client.publish("before-ws", "chat", json!({"n": 0})).await;
    client.expect_ack("before-ws").await;
    // A service answering `echo` on the node, and a client asking it.
    let _echo = DemoProcess::spawn_on(&uri, &env.namespace, &["--only", "echo"]).await;
    let mut asker = TestClient::connect(&gw.url()).await;
    asker
        .request("rq-before", "echo", Some(10_000), json!({"n": 0}))
        .await;
    asker.expect_reply("rq-before").await;
    let mut short = TestClient::connect(&gw.url()).await;
    // A session that goes away before 20 broadcasts: its resume reads them from the
    // stream (more than the gateway keeps in memory).
    let late = TestClient::connect(&gw.url()).await;
    let mut late_hello = late.resume_hello();
    late_hello.subscriptions = vec![warren_e2e::client::sub("all", "chat")];
    late.close().await;
    for i in 0..20 {
        let (status, answer, _) = post(addr, "/publish", broadcast(&format!("backlog-{i}"))).await;
        assert_eq!(status, 202, "before the alarm: {answer}");
    }

    // A memory alarm: RabbitMQ blocks every connection that publishes.
    cluster
        .ctl(0, &["set_vm_memory_high_watermark", "0"])
        .await
        .expect("alarm set");
    let alarm = Instant::now();
    // A request at the same moment, with a timeout longer than the alarm lasts.
    asker
        .request("rq-during", "echo", Some(60_000), json!({"n": 1}))
        .await;
    // And one whose timeout (3 s) runs out while the alarm lasts: `timeout`, not a
    // refusal, as its reply may still come.
    short
        .request("rq-short", "echo", Some(3_000), json!({"n": 3}))
        .await;
    let timed_out = tokio::spawn(async move {
        let answer = short.recv_within(Duration::from_secs(20)).await;
        (answer, Instant::now())
    });
    // Read (answering the gateway's pings) until its answer, and a little after.
    let answered = tokio::spawn(async move {
        let answer = asker.recv_within(Duration::from_secs(60)).await;
        let at = Instant::now();
        let extra = asker.recv_within(Duration::from_millis(500)).await;
        (answer, at, extra)
    });
    // A WebSocket client's publish and an HTTP call, once lapin holds the connection
    // and before the gateway knows: they go to a pooled channel, and no confirm comes.
    tokio::time::sleep(PUBLISH_AFTER).await;
    let ws_publish = async {
        let started = Instant::now();
        client.publish("during-ws", "chat", json!({"n": 1})).await;
        // The connection answers meanwhile.
        client.ping(7).await;
        let pong = client.recv_within(Duration::from_secs(3)).await;
        let pong_took = started.elapsed();
        let answer = client.recv_within(Duration::from_secs(30)).await;
        (pong, pong_took, answer, started.elapsed())
    };
    let http_publish = async {
        tokio::time::timeout(
            Duration::from_secs(30),
            post(addr, "/external/chat", external("during")),
        )
        .await
        .expect("POST /external is answered during the alarm")
    };
    let ((pong, pong_took, ws_answer, ws_took), first) = tokio::join!(ws_publish, http_publish);
    // A `POST /request` during the alarm, then the resume: RabbitMQ stops reading a
    // connection that publishes, and a request going out on the connection that reads
    // the streams stalled every stream reader of the gateway until the alarm cleared.
    let (status, answer, _) = post(
        addr,
        "/request/echo",
        json!({"timeout_ms": 1_000, "message": {"n": 2}}),
    )
    .await;
    println!("fault_gateway_alarm: POST /request during the alarm: {status}: {answer}");
    // The gateway knows of the alarm by now (the calls above were refused for it):
    // refused at once, not left to its timeout.
    assert_eq!(status, 503, "POST /request during the alarm: {answer}");
    assert_eq!(answer["code"], "broker_unavailable", "{answer}");
    let resumed = Instant::now();
    let mut late = TestClient::connect_with(&gw.url(), late_hello).await;
    let backlog = tokio::time::timeout(Duration::from_secs(10), late.expect_delivers(20)).await;
    println!(
        "fault_gateway_alarm: a resume's 20 messages read from the stream during the alarm: {:?} after {:?}",
        backlog.as_ref().map(Vec::len),
        resumed.elapsed()
    );
    let backlog = backlog.expect("a resume during the alarm is read from the stream");
    let ids: Vec<String> = backlog.iter().map(|d| d.message_id.clone()).collect();
    let want: Vec<String> = (0..20).map(|i| format!("http-api:backlog-{i}")).collect();
    assert_eq!(ids, want);
    late.close().await;
    println!("fault_gateway_alarm: a ping beside a publish during the alarm: after {pong_took:?}: {pong:?}");
    assert!(
        matches!(pong, Some(ServerFrame::Pong(_))),
        "the connection answers a ping while its publish waits: {pong:?}"
    );
    println!("fault_gateway_alarm: a WebSocket publish during the alarm: after {ws_took:?}: {ws_answer:?}");
    assert!(
        matches!(&ws_answer, Some(ServerFrame::Error(e))
            if e.code == ErrorCode::BrokerUnavailable && e.id.as_deref() == Some("during-ws")),
        "a WebSocket publish during the alarm is answered broker_unavailable: {ws_answer:?}"
    );
    assert!(
        ws_took < Duration::from_secs(15),
        "in bounded time, not when the alarm clears: {ws_took:?}"
    );
    let mut answers = vec![("/external/chat", first)];
    let during_broadcast = tokio::time::timeout(
        Duration::from_secs(30),
        post(addr, "/publish", broadcast("during-broadcast")),
    )
    .await
    .expect("POST /publish is answered during the alarm");
    answers.push(("/publish", during_broadcast));
    for (path, (status, answer, took)) in answers {
        println!("fault_gateway_alarm: {path} during the alarm: {status} after {took:?}: {answer}");
        assert_eq!(status, 503, "{path} during the alarm: {answer}");
        assert_eq!(answer["code"], "broker_unavailable", "{path}: {answer}");
        assert!(
            took < Duration::from_secs(15),
            "{path} answered in bounded time, not when the alarm clears: {took:?}"
        );
    }

    cluster
        .ctl(0, &["set_vm_memory_high_watermark", "0.4"])
        .await
        .expect("alarm cleared");
    let cleared = Instant::now();
    for (path, body) in [
        ("/external/chat", external("after")),
        ("/publish", broadcast("after-broadcast")),
    ] {
        let (status, answer, _) = post(addr, path, body).await;
        assert_eq!(status, 202, "{path} after the alarm: {answer}");
    }
    client.publish("after-ws", "chat", json!({"n": 2})).await;
    client.expect_ack("after-ws").await;
    println!(
        "fault_gateway_alarm: accepted again {:?} after the alarm cleared",
        cleared.elapsed()
    );
    // The request whose timeout ran out during the alarm: told `timeout` once it did.
    let (short_answer, short_at) = timed_out.await.expect("the reading task");
    println!(
        "fault_gateway_alarm: a request with a 3 s timeout during the alarm: after {:?}: {short_answer:?}",
        short_at.duration_since(alarm)
    );
    assert!(
        matches!(&short_answer, Some(ServerFrame::Error(e))
            if e.code == ErrorCode::Timeout && e.id.as_deref() == Some("rq-short")),
        "a request whose timeout runs out during the alarm gets timeout: {short_answer:?}"
    );
    assert!(
        short_at.duration_since(alarm) < Duration::from_secs(10),
        "told when its timeout ran out, not when the alarm cleared"
    );
    // The request made as the alarm started: answered by its reply, and nothing else.
    let (answer, at, extra) = tokio::time::timeout(Duration::from_secs(30), answered)
        .await
        .expect("the request is answered within 30 s of the alarm clearing")
        .expect("the reading task");
    println!(
        "fault_gateway_alarm: the request made as the alarm started: answered after {:?} (the alarm lasted {:?}): {answer:?}",
        at.duration_since(alarm),
        cleared.duration_since(alarm)
    );
    assert!(
        matches!(&answer, Some(ServerFrame::Reply(r)) if r.id == "rq-during"),
        "the request is answered by its reply once the alarm clears: {answer:?}"
    );
    assert!(extra.is_none(), "one answer per request: {extra:?}");
    gw.shutdown().await;
    env.cleanup().await;
    cluster.shutdown().await;
}
