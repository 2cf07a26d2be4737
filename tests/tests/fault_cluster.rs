//! Fault injection: a three-node RabbitMQ cluster on this machine (private nodes, see
//! `warren_e2e::broker_node`), `IN_CHAT` a quorum queue with a member on every node.
//! Under load — two service-library producers and WebSocket clients publishing through
//! a gateway given all three nodes' URIs — one node is stopped. Every confirmed
//! message is handled (0 lost, counted by `message_id`); the services and the gateway
//! that were connected to the stopped node continue on the others.
//!
//! Layout of the run (node 3 is the one stopped):
//!
//! ```text
//! node 1 ◀── producer P1 (stays)          node 2 ◀── worker B (stays)
//! node 3 ◀── worker A, producer P3, gateway, the warren-demo-service binary
//!            (given all three URIs: they fail over to node 1, then node 2)
//! ```
//!
//! The demo binary's ticket desk is asked for a ticket created before the fault: it
//! survives, because the binary kept running and only its connection moved.
//!
//! Prints its figures: sent, confirmed, failed, delivered, lost, duplicated, time to
//! recover. About a minute in all, most of it booting the cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::types::ShortString;
use lapin::BasicProperties;
use warren_e2e::broker_node::BrokerCluster;
use warren_e2e::client::TestClient;
use warren_e2e::load::{
    longest_gap_after, lost, publish_load, wait_handled, watch_states, LoadPlan, Sent, StateLog,
};
use warren_e2e::service::{consume_no_ack, declare_exclusive, DemoProcess};
use warren_gateway::{Config, Gateway, ListenerConfig, QueueType};
use warren_protocol::amqp::Names;
use warren_protocol::ServerFrame;
use warren_service::{
    Context, HandlerError, Incoming, Outcome, Service, ServiceConfig, ServiceState,
};

/// Bound on the whole test, cluster boot and teardown included (a hang guard, not a
/// figure: one run on a busy 2-core machine took 6.5 min to boot and load the cluster).
const LIMIT: Duration = Duration::from_secs(600);
/// Messages per service-library producer.
const PER_PRODUCER: usize = 2_000;
/// Publishing tasks per producer.
const TASKS: usize = 8;
/// Publish rate per producer.
const RATE_PER_SEC: u64 = 300;
/// WebSocket clients publishing through the gateway, and messages each.
const WS_CLIENTS: usize = 4;
const PER_WS_CLIENT: usize = 150;
/// The node stopped (0-based): node 3.
const VICTIM: usize = 2;

/// Per `message_id`: which workers handled it, and when.
#[derive(Debug, Default)]
struct Tally {
    handled: Mutex<HashMap<String, Vec<(&'static str, Instant)>>>,
}

#[tokio::test]
async fn stopping_one_node_of_three_loses_no_confirmed_message_and_services_continue() {
    tokio::time::timeout(LIMIT, cluster_run())
        .await
        .expect("the test finished within its limit");
}

async fn cluster_run() {
    let began = Instant::now();
    let mut cluster = BrokerCluster::start(3)
        .await
        .expect("a three-node RabbitMQ cluster starts");
    let boot = began.elapsed();
    let ns = format!(
        "t-cluster-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let names = Names::new(&ns);
    let config = ServiceConfig::default()
        .with_publish_timeout(Duration::from_secs(30))
        .with_prefetch(16);

    // Worker A declares IN_CHAT on node 3 (so the quorum leader likely starts there).
    let tally = Arc::new(Tally::default());
    let worker_a = start_worker(&cluster.uris_from(VICTIM), &names, &config, "A", &tally).await;
    let worker_b = start_worker(&cluster.uris_from(1), &names, &config, "B", &tally).await;
    let states_a = watch_states(&worker_a);
    let states_b = watch_states(&worker_b);
    let members = cluster
        .ctl(
            0,
            &[
                "list_queues",
                "-p",
                "/",
                "name",
                "type",
                "leader",
                "members",
            ],
        )
        .await
        .unwrap_or_else(|e| e.to_string());
    println!("fault_cluster: queues before the fault:\n{members}");

    let p3 = Service::connect_to(&cluster.uris_from(VICTIM), names.clone(), config.clone())
        .await
        .expect("producer P3 connects");
    let p1 = Service::connect_to(&cluster.uris_from(0), names.clone(), config.clone())
        .await
        .expect("producer P1 connects");
    let states_p3 = watch_states(&p3);

    // The demo service binary on every node's URI, node 3 first; a ticket made before
    // the fault.
    let mut demo = DemoProcess::spawn_on(
        &cluster.uris_from(VICTIM).join(","),
        &ns,
        &["--only", "tickets"],
    )
    .await;
    let mut requester = Requester::connect(&cluster.uri(0), &names).await;
    let created = requester
        .request("tickets", r#"{"op":"create","title":"survives node 3"}"#)
        .await
        .expect("a ticket is created before the fault");

    // A gateway given every node, node 3 first.
    let gateway = start_gateway(&ns, cluster.uris_from(VICTIM)).await;
    let ws_url = format!("ws://{}/ws", gateway_addr(&gateway));

    let sent_p3 = Arc::new(Sent::default());
    let sent_p1 = Arc::new(Sent::default());
    let sent_ws = Arc::new(Sent::default());
    let load_p3 = tokio::spawn(publish_load(
        p3.publisher(),
        names.inbound_exchange(),
        producer_plan("p3-"),
        sent_p3.clone(),
    ));
    let load_p1 = tokio::spawn(publish_load(
        p1.publisher(),
        names.inbound_exchange(),
        producer_plan("p1-"),
        sent_p1.clone(),
    ));
    let load_ws = tokio::spawn(ws_load(ws_url, sent_ws.clone()));

    while sent_p3.confirmed.lock().unwrap().len() < PER_PRODUCER / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fault_at = Instant::now();
    cluster.stop_node(VICTIM).await.expect("node 3 stops");
    let stopped = fault_at.elapsed();

    load_p3.await.expect("P3 load");
    load_p1.await.expect("P1 load");
    let ws_closes = load_ws.await.expect("WebSocket load");

    let mut confirmed: Vec<String> = Vec::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    for sent in [&sent_p3, &sent_p1, &sent_ws] {
        confirmed.extend(sent.confirmed.lock().unwrap().iter().cloned());
        failed.extend(sent.failed.lock().unwrap().iter().cloned());
    }
    let all_handled = wait_handled(&tally.handled, &confirmed, Duration::from_secs(90)).await;
    let asked = Instant::now();
    let fetched = requester
        .request(
            "tickets",
            &format!(r#"{{"op":"get","id":{}}}"#, created["id"]),
        )
        .await;
    println!(
        "fault_cluster: the demo binary's ticket after the fault: {fetched:?} (answered in {:.2} s)",
        asked.elapsed().as_secs_f64()
    );
    let handled = tally.handled.lock().unwrap().clone();
    let lost = lost(&confirmed, &handled);
    let duplicated: usize = handled.values().map(|v| v.len() - 1).sum();
    let after_fault = |worker: &str| {
        handled
            .values()
            .flatten()
            .filter(|(w, at)| *w == worker && *at > fault_at)
            .count()
    };
    let back = |log: &StateLog| {
        let log = log.lock().unwrap();
        let went_down = log
            .iter()
            .any(|(at, s)| *at >= fault_at && s == "reconnecting");
        let up = log
            .iter()
            .filter(|(at, s)| *at >= fault_at && s == "running")
            .map(|(at, _)| at.duration_since(fault_at))
            .next_back();
        match (went_down, up) {
            (false, _) => "never disconnected".to_string(),
            (true, Some(t)) => format!("reconnected {:.2} s after the stop began", t.as_secs_f64()),
            (true, None) => "did NOT reconnect".to_string(),
        }
    };
    let sent_total = 2 * PER_PRODUCER + WS_CLIENTS * PER_WS_CLIENT;
    println!(
        "fault_cluster: cluster boot {:.1} s; sent {sent_total} (P3 {PER_PRODUCER}, P1 {PER_PRODUCER}, \
         WebSocket {}), confirmed {} (P3 {}, P1 {}, WebSocket {}), failed {}, delivered {} distinct, \
         lost {}, duplicated {duplicated} (handled by both workers); node 3 stop took {:.1} s; \
         publish stall P3 {:.2} s, P1 {:.2} s, WebSocket {:.2} s; worker A {}, worker B {}, \
         producer P3 {}; handled after the fault: A {}, B {}",
        boot.as_secs_f64(),
        WS_CLIENTS * PER_WS_CLIENT,
        confirmed.len(),
        sent_p3.confirmed.lock().unwrap().len(),
        sent_p1.confirmed.lock().unwrap().len(),
        sent_ws.confirmed.lock().unwrap().len(),
        failed.len(),
        handled.len(),
        lost.len(),
        stopped.as_secs_f64(),
        longest_gap_after(&sent_p3.confirm_times.lock().unwrap(), fault_at).as_secs_f64(),
        longest_gap_after(&sent_p1.confirm_times.lock().unwrap(), fault_at).as_secs_f64(),
        longest_gap_after(&sent_ws.confirm_times.lock().unwrap(), fault_at).as_secs_f64(),
        back(&states_a),
        back(&states_b),
        back(&states_p3),
        after_fault("A"),
        after_fault("B"),
    );
    println!("fault_cluster: WebSocket connections the gateway ended: {ws_closes:?}");
    if !failed.is_empty() {
        println!(
            "fault_cluster: first failures: {:?}",
            &failed[..failed.len().min(5)]
        );
    }

    assert!(
        all_handled && lost.is_empty(),
        "confirmed but never handled: {} (e.g. {:?})",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let library_failed = failed
        .iter()
        .filter(|(id, _)| !id.starts_with("ws"))
        .count();
    assert_eq!(
        library_failed, 0,
        "service-library publishes wait for the failover instead of failing"
    );
    assert_eq!(worker_a.state(), ServiceState::Running, "worker A runs on");
    assert_eq!(worker_b.state(), ServiceState::Running, "worker B runs on");
    assert!(
        after_fault("A") > 0,
        "worker A handled messages after the fault"
    );

    let fetched = fetched.expect("the demo binary answers after the fault");
    assert_eq!(fetched["title"], "survives node 3", "the ticket survived");
    assert!(
        demo.terminate().await,
        "the demo binary exits cleanly on SIGTERM"
    );

    gateway.shutdown().await;
    for service in [p3, p1, worker_a, worker_b] {
        service.stop().await.expect("service stops");
    }
    cluster.shutdown().await;
}

/// Sends requests to `warren.in` as a gateway would, on one node, and reads the
/// replies from its own exclusive queue.
struct Requester {
    _connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    replies: lapin::Consumer,
    exchange: String,
    next: u32,
}

impl Requester {
    async fn connect(uri: &str, names: &Names) -> Requester {
        use lapin::options::ConfirmSelectOptions;
        let connection = lapin::Connection::connect(uri, lapin::ConnectionProperties::default())
            .await
            .expect("the requester connects");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let queue = declare_exclusive(&channel, "", "reply queue").await;
        let replies = consume_no_ack(&channel, &queue, "consume replies").await;
        Requester {
            queue,
            _connection: connection,
            channel,
            replies,
            exchange: names.inbound_exchange(),
            next: 0,
        }
    }

    /// Publishes a request on `channel` and waits (at most 30 s) for its reply.
    async fn request(&mut self, channel: &str, body: &str) -> Result<serde_json::Value, String> {
        use futures_util::StreamExt;
        use lapin::types::{AMQPValue, FieldTable, LongString};
        self.next += 1;
        let id = format!("req-{}", self.next);
        let mut headers = FieldTable::default();
        headers.insert(
            warren_protocol::amqp::H_USER.into(),
            AMQPValue::LongString(LongString::from("tester")),
        );
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(format!("tester:{id}")))
            .with_correlation_id(ShortString::from(id.as_str()))
            .with_reply_to(ShortString::from(self.queue.as_str()))
            .with_expiration(ShortString::from("30000"))
            .with_headers(headers);
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                channel.into(),
                lapin::options::BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let delivery = match tokio::time::timeout(left, self.replies.next()).await {
                Ok(Some(Ok(d))) => d,
                Ok(other) => return Err(format!("reply stream ended: {other:?}")),
                Err(_) => return Err("no reply within 30 s".into()),
            };
            let matches = delivery
                .properties
                .correlation_id()
                .as_ref()
                .is_some_and(|c| c.as_str() == id);
            if matches {
                return serde_json::from_slice(&delivery.data).map_err(|e| e.to_string());
            }
        }
    }
}

/// A service-library producer's load: [`PER_PRODUCER`] messages from [`TASKS`] tasks
/// at [`RATE_PER_SEC`] in total, ids `<id_prefix><task>-<seq>`.
fn producer_plan(id_prefix: &'static str) -> LoadPlan {
    LoadPlan {
        messages: PER_PRODUCER,
        tasks: TASKS,
        rate_per_sec: RATE_PER_SEC,
        id_prefix,
    }
}

async fn start_worker(
    uris: &[String],
    names: &Names,
    config: &ServiceConfig,
    label: &'static str,
    tally: &Arc<Tally>,
) -> Service {
    let worker = Service::connect_to(uris, names.clone(), config.clone())
        .await
        .expect("the worker connects");
    let seen = tally.clone();
    worker
        .consume("chat", move |_ctx: Context, msg: Incoming| {
            let seen = seen.clone();
            async move {
                let id = msg.message_id.clone().unwrap_or_default();
                seen.handled
                    .lock()
                    .unwrap()
                    .entry(id)
                    .or_default()
                    .push((label, Instant::now()));
                Ok::<_, HandlerError>(Outcome::Done)
            }
        })
        .await
        .expect("the worker consumes");
    worker
}

async fn start_gateway(namespace: &str, uris: Vec<String>) -> Gateway {
    let config = Config {
        namespace: namespace.to_string(),
        node: format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        amqp_uri: uris,
        listen: vec![ListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            channel: None,
        }],
        channels: vec!["chat".into()],
        queue_type: QueueType::Quorum,
        publisher_channels: 2,
        consumer_channels: 2,
        session_expires_ms: 30_000,
        shutdown_grace_ms: 2_000,
        announce_interval_ms: 0,
        presence: false,
        ..Config::default()
    };
    Gateway::start(config).await.expect("the gateway starts")
}

fn gateway_addr(gateway: &Gateway) -> SocketAddr {
    gateway
        .listeners()
        .iter()
        .find(|(_, channel)| channel.is_none())
        .map(|(addr, _)| *addr)
        .expect("a listener serving every channel")
}

/// [`WS_CLIENTS`] WebSocket clients each publish [`PER_WS_CLIENT`] messages through the
/// gateway, one at a time, waiting for the `ack` (confirmed) or an `error` (counted as
/// failed: the SDK would send it again). A client whose connection the gateway closes
/// connects again (a fresh session) and goes on; the publish in flight then counts as
/// failed. The AMQP `message_id` is `<user>:<frame id>`, the user being the session id
/// (no token).
async fn ws_load(url: String, sent: Arc<Sent>) -> Vec<String> {
    let mut tasks = Vec::new();
    for c in 0..WS_CLIENTS {
        let url = url.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let progress = Arc::new(WsProgress::default());
            let mut closes = Vec::new();
            let give_up = Instant::now() + Duration::from_secs(120);
            while progress.next.load(Ordering::SeqCst) < PER_WS_CLIENT && Instant::now() < give_up {
                let run = tokio::spawn(ws_session(url.clone(), c, progress.clone(), sent.clone()));
                let outcome = run.await;
                if let Some(id) = progress.pending.lock().unwrap().take() {
                    sent.fail(format!("ws:{id}"), "connection lost".into());
                    progress.next.fetch_add(1, Ordering::SeqCst);
                }
                match outcome {
                    Ok(Some(code)) => closes.push(format!("closed {code}")),
                    Ok(None) => {}
                    Err(e) => closes.push(format!("client gave up: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            closes
        }));
    }
    let mut closes = Vec::new();
    for t in tasks {
        closes.extend(t.await.expect("WebSocket client task"));
    }
    closes
}

/// How far one WebSocket client got, across its reconnects.
#[derive(Debug, Default)]
struct WsProgress {
    next: AtomicUsize,
    pending: Mutex<Option<String>>,
}

/// One connection of a WebSocket client: publishes from `progress.next` on. Returns
/// the close code when the gateway closed the connection, `None` when done.
async fn ws_session(
    url: String,
    c: usize,
    progress: Arc<WsProgress>,
    sent: Arc<Sent>,
) -> Option<u16> {
    let mut client = TestClient::connect(&url).await;
    let user = client.session().to_string();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let seq = progress.next.load(Ordering::SeqCst);
        if seq >= PER_WS_CLIENT {
            client.close().await;
            return None;
        }
        tick.tick().await;
        let frame_id = format!("ws{c}-{seq}");
        let id = format!("{user}:{frame_id}");
        *progress.pending.lock().unwrap() = Some(id.clone());
        client
            .publish(&frame_id, "chat", serde_json::json!({ "c": c, "seq": seq }))
            .await;
        let answer = wait_answer(&mut client, &frame_id, Duration::from_secs(40)).await;
        match answer {
            Answer::Ack => sent.confirm(id),
            Answer::Error(why) => sent.fail(format!("ws:{id}"), why),
            Answer::Closed => return Some(client.close_code.unwrap_or(0)),
        }
        progress.pending.lock().unwrap().take();
        progress.next.fetch_add(1, Ordering::SeqCst);
    }
}

/// How the gateway answered a publish.
enum Answer {
    Ack,
    Error(String),
    Closed,
}

/// Waits for `ack {id}` or `error {id}`; `Closed` when the connection ends first.
async fn wait_answer(client: &mut TestClient, id: &str, within: Duration) -> Answer {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_within(left).await {
            Some(ServerFrame::Ack(a)) if a.id == id => return Answer::Ack,
            Some(ServerFrame::Error(e)) if e.id.as_deref() == Some(id) => {
                return Answer::Error(format!("{:?}", e.code))
            }
            Some(_) => {}
            None if Instant::now() < deadline => return Answer::Closed,
            None => return Answer::Error("no answer in time".into()),
        }
    }
}
