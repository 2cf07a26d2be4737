//! Fault injection: a three-node RabbitMQ cluster on this machine (private nodes, see
//! `warren_e2e::broker_node`), `IN_CHAT` a quorum queue with a member on every node.
//! Under load — two service-library producers and WebSocket clients publishing through
//! a gateway given all three nodes' URIs — one node is stopped. Every confirmed
//! message is handled (0 lost, counted by `message_id`); the services and the gateway
//! that were connected to the stopped node continue on the others: every WebSocket
//! publish is answered, some are confirmed once node 3 is down, few fail
//! ([`WS_FAILED_MAX`]), and no publisher goes more than [`STALL_MAX`] without a
//! confirm.
//!
//! `./dev test` runs this binary alone, not beside other tests: [`WS_FAILED_MAX`] is a
//! time (the nacks of 1.5 s per client), and with another lane's tests sharing the two
//! cores the node stop's nacks lasted longer (88 failed against a bound of 64, 0 lost).
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
//! The outbound path too: a service on node 1 publishes broadcasts to `warren.out`
//! through the fault, and [`SUBSCRIBERS`] WebSocket subscribers of the gateway must
//! receive every confirmed one (an unconfirmed one may arrive), and no stream position
//! twice; a broadcast that arrives twice must be one RabbitMQ stored twice (the SDK
//! drops that copy by `message_id`). This caught RabbitMQ 3.10.8 confirming broadcasts
//! it never stored, sent on a channel that had a publish stuck through the leader
//! change (4–5 of 900 in every run); the service library now leaves such a channel
//! (`Publisher::retire`). The outbound stream's leader is on node 3 (the gateway declared it there:
//! RabbitMQ places a stream's leader on the declaring client's node); the test checks
//! that before the stop. Every wait of that part is bounded: a confirm by
//! [`BROADCAST_CONFIRM`], the whole part by [`OUTBOUND_LIMIT`] from the fault on.
//!
//! Prints its figures: sent, confirmed, failed, delivered, lost, duplicated, time to
//! recover. About a minute in all, most of it booting the cluster.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::types::ShortString;
use lapin::BasicProperties;
use tokio::sync::watch;
use warren_e2e::broker_node::BrokerCluster;
use warren_e2e::client::{sub, TestClient};
use warren_e2e::load::{
    longest_gap_after, lost, publish_load_to, read_stream_ids, wait_handled, watch_states,
    LoadBounds, LoadPlan, Sent, StateLog,
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
/// WebSocket clients publishing through the gateway, and messages each, one every
/// [`WS_TICK`] at most: 150 take at least 15 s, so they go on well past node 3's stop
/// (about 2 s in, 3–5 s long; at 40 ms they were done 0.5 s after it in a run here,
/// too close to test that the gateway's writes go on once the node is down).
const WS_CLIENTS: usize = 4;
const PER_WS_CLIENT: usize = 150;
const WS_TICK: Duration = Duration::from_millis(100);
/// The most WebSocket publishes that may fail. A client has one publish in flight at a
/// time: the one in flight when the gateway's node went away may fail (4 of 4 clients
/// in a run here, `broker_unavailable`). A quorum-queue channel set up while the
/// queue's leader moves may nack what it is sent until the gateway replaces it, which
/// it does on a nack once the channel is a second old, and the replacement takes a
/// moment to open: at most 1.5 s of each client's publishes more (47 failed in a
/// fresh `./dev test` run, 11–12 per client: a bound of exactly 1 s was too tight). A
/// gateway that refused writes for the whole 2 s node stop and after fails this.
const WS_FAILED_MAX: usize = WS_CLIENTS * (1 + 1_500 / WS_TICK.as_millis() as usize);
/// The longest a publisher may go without a confirm from the stop on (producers P3 and
/// P1, the WebSocket clients, the broadcaster). Half the producers' publish timeout
/// (30 s): the failover is the 3–5 s stop and a reconnect with at most 2 s backoff
/// (stalls of 0.1–0.3 s in a run here).
const STALL_MAX: Duration = Duration::from_secs(15);
/// The node stopped (0-based): node 3.
const VICTIM: usize = 2;
/// WebSocket subscribers of the chat broadcast.
const SUBSCRIBERS: usize = 3;
/// Broadcasts published to `warren.out` through the fault, from [`BROADCAST_TASKS`]
/// tasks at [`BROADCAST_RATE`] in all (1,200 at 60/s: 20 s; the stop comes about 2 s
/// in and takes 3–5 s, so the stream's leader changes while they are published: with
/// 300, most runs had published them all before node 3 was down).
const BROADCASTS: usize = 1_200;
const BROADCAST_TASKS: usize = 3;
const BROADCAST_RATE: u64 = 60;
/// A broadcast not confirmed within this counts as unconfirmed (it may or may not
/// reach the subscribers, but never twice), and its task goes on.
const BROADCAST_CONFIRM: Duration = Duration::from_secs(10);
/// The outbound part from the fault on — publishing, delivery, the subscribers'
/// end — well inside [`LIMIT`].
const OUTBOUND_LIMIT: Duration = Duration::from_secs(90);

/// What each subscriber received, by subscriber: the `message_id`s in order.
type Received = Arc<Mutex<Vec<Vec<String>>>>;
/// The stream positions of those deliveries, by subscriber, in order.
type Positions = Arc<Mutex<Vec<Vec<u64>>>>;

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

/// The run: the inbound load and the outbound [`Broadcast`] through the fault.
async fn cluster_run() {
    // The in-process gateway's log, for a failure's story: RUST_LOG=warren_gateway=info.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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

    // A gateway given every node, node 3 first. It declares the outbound stream there.
    let gateway = start_gateway(&ns, cluster.uris_from(VICTIM)).await;
    let ws_url = format!("ws://{}/ws", gateway_addr(&gateway));
    let sent_p3 = Arc::new(Sent::default());
    let sent_p1 = Arc::new(Sent::default());
    let sent_ws = Arc::new(Sent::default());
    let broadcast = Broadcast::start(&cluster, &names, &config, &ws_url).await;
    // A producer's publish waits at most `publish_timeout` (30 s) for the failover; the
    // bound only keeps a broker that never confirms from holding the test to LIMIT.
    let producer_bounds = Some(LoadBounds {
        confirm_within: Duration::from_secs(35),
        stop_at: Instant::now() + Duration::from_secs(150),
    });
    let load_p3 = tokio::spawn(publish_load_to(
        p3.publisher(),
        names.inbound_exchange(),
        "chat.load",
        producer_plan("p3-"),
        producer_bounds,
        sent_p3.clone(),
    ));
    let load_p1 = tokio::spawn(publish_load_to(
        p1.publisher(),
        names.inbound_exchange(),
        "chat.load",
        producer_plan("p1-"),
        producer_bounds,
        sent_p1.clone(),
    ));
    let load_ws = tokio::spawn(ws_load(ws_url, sent_ws.clone()));

    let loaded_by = Instant::now() + Duration::from_secs(60);
    while sent_p3.confirmed.lock().unwrap().len() < PER_PRODUCER / 3 {
        assert!(Instant::now() < loaded_by, "P3 publishes before the fault");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fault_at = Instant::now();
    let progress = {
        let sents = [
            ("P3", sent_p3.clone()),
            ("P1", sent_p1.clone()),
            ("WebSocket", sent_ws.clone()),
        ]
        .into_iter()
        .chain([("broadcast", broadcast.sent.clone())])
        .collect::<Vec<_>>();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let counts: Vec<String> = sents
                    .iter()
                    .map(|(who, s)| {
                        format!(
                            "{who} {}/{}",
                            s.confirmed.lock().unwrap().len(),
                            s.failed.lock().unwrap().len()
                        )
                    })
                    .collect();
                println!(
                    "fault_cluster: {:.0} s after the stop: confirmed/failed {}",
                    fault_at.elapsed().as_secs_f64(),
                    counts.join(", ")
                );
            }
        })
    };
    cluster.stop_node(VICTIM).await.expect("node 3 stops");
    let stopped = fault_at.elapsed();
    let down_at = fault_at + stopped;

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
    println!(
        "fault_cluster: inbound done {:.1} s after the stop",
        fault_at.elapsed().as_secs_f64()
    );
    let (outbound, stream_before) = broadcast
        .finish(fault_at, fault_at + stopped, &cluster, &names)
        .await;
    progress.abort();
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
    let ws_confirmed = sent_ws.confirmed.lock().unwrap().len();
    let ws_failed = sent_ws.failed.lock().unwrap().len();
    let ws_confirmed_after_down = sent_ws
        .confirm_times
        .lock()
        .unwrap()
        .iter()
        .filter(|at| **at > down_at)
        .count();
    let stalls =
        [("P3", &sent_p3), ("P1", &sent_p1), ("WebSocket", &sent_ws)].map(|(who, sent)| {
            (
                who,
                longest_gap_after(&sent.confirm_times.lock().unwrap(), fault_at),
            )
        });
    println!(
        "fault_cluster: cluster boot {:.1} s; sent {sent_total} (P3 {PER_PRODUCER}, P1 {PER_PRODUCER}, \
         WebSocket {}), confirmed {} (P3 {}, P1 {}, WebSocket {}), failed {}, delivered {} distinct, \
         lost {}, duplicated {duplicated} (handled by both workers); node 3 stop took {:.1} s; \
         WebSocket publishes confirmed {ws_confirmed}, failed {ws_failed} (at most \
         {WS_FAILED_MAX}), confirmed after node 3 was down {ws_confirmed_after_down}; \
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
        stalls[0].1.as_secs_f64(),
        stalls[1].1.as_secs_f64(),
        stalls[2].1.as_secs_f64(),
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
    assert_eq!(
        ws_confirmed + ws_failed,
        WS_CLIENTS * PER_WS_CLIENT,
        "every WebSocket publish was answered, confirmed or failed"
    );
    assert!(
        ws_confirmed_after_down > 0,
        "WebSocket publishes through the gateway were confirmed once node 3 was down"
    );
    assert!(
        ws_failed <= WS_FAILED_MAX,
        "at most {WS_FAILED_MAX} WebSocket publishes fail (the one in flight per client, and \
         1.5 s of nacks): {ws_failed} did (first {:?})",
        &failed
            .iter()
            .filter(|(id, _)| id.starts_with("ws"))
            .take(5)
            .collect::<Vec<_>>()
    );
    for (who, stall) in stalls {
        assert!(
            stall <= STALL_MAX,
            "{who} went {stall:?} without a confirm after the stop (at most {STALL_MAX:?})"
        );
    }
    assert_eq!(worker_a.state(), ServiceState::Running, "worker A runs on");
    assert_eq!(worker_b.state(), ServiceState::Running, "worker B runs on");
    assert!(
        after_fault("A") > 0,
        "worker A handled messages after the fault"
    );

    assert!(
        stream_before.contains(&format!("leader {}", cluster.node_name(VICTIM))),
        "the outbound stream's leader was on the stopped node ({stream_before})"
    );
    outbound.check();

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

/// `<leader> … members …` of the outbound stream as node `i` lists it (the error, if
/// the listing fails; at most 20 s).
async fn stream_status(cluster: &BrokerCluster, i: usize, names: &Names) -> String {
    let listing = tokio::time::timeout(
        Duration::from_secs(20),
        cluster.ctl(i, &["list_queues", "-p", "/", "name", "leader", "members"]),
    )
    .await;
    let text = match listing {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => return format!("not listed: {e}"),
        Err(_) => return "not listed within 20 s".into(),
    };
    let stream = names.outbound_stream();
    text.lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, '\t');
            (fields.next() == Some(stream.as_str())).then(|| {
                let leader = fields.next().unwrap_or("?");
                let members = fields.next().unwrap_or("?");
                format!("leader {leader} members {members}")
            })
        })
        .unwrap_or_else(|| format!("{stream} not listed:\n{text}"))
}

/// A client of `url` subscribed to the chat broadcast.
async fn subscribed(url: &str) -> TestClient {
    let mut client = TestClient::connect(url).await;
    client.subscribe(sub("broadcast", "chat")).await;
    client
}

/// Records the `message_id` of every delivery `client` gets (acknowledging each) until
/// `stop` or `give_up`; when the connection ends it resumes the session from its last
/// acknowledged position, as the SDK would. Returns how many times it resumed.
async fn subscriber(
    mut client: TestClient,
    url: String,
    index: usize,
    received: Received,
    positions: Positions,
    mut stop: watch::Receiver<bool>,
    give_up: Instant,
) -> usize {
    let mut resumes = 0;
    while !*stop.borrow_and_update() && Instant::now() < give_up {
        let asked = Instant::now();
        match client.recv_within(Duration::from_millis(500)).await {
            Some(ServerFrame::Deliver(d)) => {
                received.lock().unwrap()[index].push(d.message_id.clone());
                positions.lock().unwrap()[index].extend(d.position);
                client.ack_deliveries(d.seq).await;
            }
            Some(_) => {}
            // A timeout takes the whole 500 ms; anything sooner is a closed connection.
            None if client.close_code.is_none()
                && asked.elapsed() >= Duration::from_millis(450) => {}
            None => {
                resumes += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Connecting is bounded by the client (10 s, then a panic).
                client = TestClient::connect_with(&url, client.resume_hello()).await;
            }
        }
    }
    client.close().await;
    resumes
}

/// The outbound part: [`SUBSCRIBERS`] WebSocket subscribers of the chat broadcast on
/// the gateway, and a service on node 1 publishing [`BROADCASTS`] broadcasts to them.
struct Broadcast {
    broadcaster: Service,
    /// The outbound stream's leader and members before the fault.
    stream_before: String,
    sent: Arc<Sent>,
    load: tokio::task::JoinHandle<()>,
    received: Received,
    positions: Positions,
    stop: watch::Sender<bool>,
    subscribers: Vec<tokio::task::JoinHandle<usize>>,
}

impl Broadcast {
    /// Subscribes the subscribers, then starts the broadcast load.
    async fn start(
        cluster: &BrokerCluster,
        names: &Names,
        config: &ServiceConfig,
        ws_url: &str,
    ) -> Broadcast {
        let stream_before = stream_status(cluster, 0, names).await;
        println!("fault_cluster: the outbound stream before the fault: {stream_before}");
        let received: Received = Arc::new(Mutex::new(vec![Vec::new(); SUBSCRIBERS]));
        let positions: Positions = Arc::new(Mutex::new(vec![Vec::new(); SUBSCRIBERS]));
        let (stop, stopped) = watch::channel(false);
        let give_up = Instant::now() + OUTBOUND_LIMIT + Duration::from_secs(30);
        let mut subscribers = Vec::new();
        for i in 0..SUBSCRIBERS {
            let client = subscribed(ws_url).await;
            subscribers.push(tokio::spawn(subscriber(
                client,
                ws_url.to_string(),
                i,
                received.clone(),
                positions.clone(),
                stopped.clone(),
                give_up,
            )));
        }
        let broadcaster = Service::connect_to(
            &cluster.uris_from(0),
            names.clone(),
            config.clone().with_publish_timeout(BROADCAST_CONFIRM),
        )
        .await
        .expect("the broadcasting service connects");
        let sent = Arc::new(Sent::default());
        let load = tokio::spawn(publish_load_to(
            broadcaster.publisher(),
            names.outbound_exchange(),
            "chat.all",
            LoadPlan {
                messages: BROADCASTS,
                tasks: BROADCAST_TASKS,
                rate_per_sec: BROADCAST_RATE,
                id_prefix: "out-",
            },
            Some(LoadBounds {
                confirm_within: BROADCAST_CONFIRM,
                stop_at: Instant::now() + OUTBOUND_LIMIT / 2,
            }),
            sent.clone(),
        ));
        Broadcast {
            broadcaster,
            stream_before,
            sent,
            load,
            received,
            positions,
            stop,
            subscribers,
        }
    }

    /// Waits — until [`OUTBOUND_LIMIT`] after `fault_at` at most — for the load, then
    /// for every confirmed broadcast to reach every subscriber; stops the subscribers
    /// and the broadcaster, prints the figures. Returns them with the stream's status
    /// before the fault.
    async fn finish(
        self,
        fault_at: Instant,
        node_down: Instant,
        cluster: &BrokerCluster,
        names: &Names,
    ) -> (Outbound, String) {
        let deadline = fault_at + OUTBOUND_LIMIT;
        let left = || deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left(), self.load).await.is_err() {
            println!("fault_cluster: outbound: the broadcast load did not end in time");
        }
        let confirmed: HashSet<String> = self
            .sent
            .confirmed
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect();
        let unconfirmed = self.sent.failed.lock().unwrap().clone();
        let confirmed_after_stop = self
            .sent
            .confirm_times
            .lock()
            .unwrap()
            .iter()
            .filter(|at| **at > node_down)
            .count();
        let missing = |received: &Received| -> Vec<Vec<String>> {
            received
                .lock()
                .unwrap()
                .iter()
                .map(|got| {
                    let got: HashSet<&String> = got.iter().collect();
                    let mut m: Vec<String> = confirmed
                        .iter()
                        .filter(|id| !got.contains(id))
                        .cloned()
                        .collect();
                    m.sort();
                    m
                })
                .collect()
        };
        while missing(&self.received).iter().any(|m| !m.is_empty()) && !left().is_zero() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A duplicate arriving late would still show up: a moment more.
        tokio::time::sleep(Duration::from_secs(1).min(left())).await;
        let _ = self.stop.send(true);
        let mut resumes = Vec::new();
        let mut subscribers_ended = true;
        // A subscriber notices `stop` within its 500 ms read and closes within 2 s.
        let join_by = Instant::now() + Duration::from_secs(15);
        for mut s in self.subscribers {
            let left = join_by.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, &mut s).await {
                Ok(Ok(n)) => resumes.push(n),
                Ok(Err(e)) => panic!("a subscriber failed: {e}"),
                Err(_) => {
                    s.abort();
                    subscribers_ended = false;
                }
            }
        }
        let missing = missing(&self.received);
        // A broadcast received twice: its ids.
        let twice: Vec<String> = {
            let received = self.received.lock().unwrap();
            let mut twice: Vec<String> = received
                .iter()
                .flat_map(|got| {
                    let mut seen = HashSet::new();
                    got.iter()
                        .filter(|id| !seen.insert(*id))
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            twice.sort();
            twice
        };
        // Where a lost broadcast was lost: in RabbitMQ (not in the stream) or in the
        // gateway (in the stream, never delivered); where a duplicate came from: RabbitMQ
        // storing it twice, or the gateway sending one position twice.
        let in_stream = if missing.iter().any(|m| !m.is_empty()) || !twice.is_empty() {
            read_stream_ids(&cluster.uri(0), &names.outbound_stream()).await
        } else {
            Ok(HashMap::new())
        };
        let missing_from_stream = match &in_stream {
            Ok(ids) => format!(
                "{} of them absent from the stream itself",
                missing
                    .iter()
                    .flatten()
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .filter(|id| !ids.contains_key(*id))
                    .count()
            ),
            Err(e) => format!("the stream could not be read: {e}"),
        };
        let twice_in_stream = match &in_stream {
            Ok(ids) => Some(
                twice
                    .iter()
                    .filter(|id| ids.get(*id).is_some_and(|n| *n > 1))
                    .count(),
            ),
            Err(_) => None,
        };
        let outbound = {
            let received = self.received.lock().unwrap();
            Outbound {
                confirmed: confirmed.len(),
                confirmed_after_stop,
                missing_sample: missing.iter().flatten().take(5).cloned().collect(),
                missing_from_stream,
                missing: missing.iter().map(Vec::len).collect(),
                twice,
                twice_in_stream,
                positions_twice: self
                    .positions
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|got| got.len() - got.iter().collect::<HashSet<_>>().len())
                    .collect(),
                duplicated: received
                    .iter()
                    .map(|got| got.len() - got.iter().collect::<HashSet<_>>().len())
                    .collect(),
                unconfirmed_received: received
                    .iter()
                    .map(|got| {
                        got.iter()
                            .collect::<HashSet<_>>()
                            .into_iter()
                            .filter(|id| !confirmed.contains(*id))
                            .count()
                    })
                    .collect(),
                unconfirmed,
                resumes,
                subscribers_ended,
                stall: longest_gap_after(&self.sent.confirm_times.lock().unwrap(), fault_at),
            }
        };
        let stream_after = stream_status(cluster, 0, names).await;
        println!(
            "fault_cluster: outbound: {BROADCASTS} broadcasts published through the fault, \
             {} confirmed ({} after node 3 was down), {} unconfirmed; per subscriber: missing confirmed {:?}, \
             duplicated {:?} (positions sent twice {:?}), received unconfirmed {:?}, \
             resumed {:?}; confirm stall {:.2} s; received twice {:?} (stored twice in the \
             stream: {:?}); the stream after the fault: {}",
            outbound.confirmed,
            outbound.confirmed_after_stop,
            outbound.unconfirmed.len(),
            outbound.missing,
            outbound.duplicated,
            outbound.positions_twice,
            outbound.unconfirmed_received,
            outbound.resumes,
            outbound.stall.as_secs_f64(),
            outbound.twice,
            outbound.twice_in_stream,
            stream_after,
        );
        if !outbound.unconfirmed.is_empty() {
            println!(
                "fault_cluster: outbound: first unconfirmed: {:?}",
                &outbound.unconfirmed[..outbound.unconfirmed.len().min(5)]
            );
        }
        self.broadcaster
            .stop()
            .await
            .expect("the broadcaster stops");
        (outbound, self.stream_before)
    }
}

/// What the outbound part saw.
#[derive(Debug)]
struct Outbound {
    /// Of the confirmed, those confirmed after node 3 was down (by the new leader).
    confirmed_after_stop: usize,
    /// Broadcasts confirmed.
    confirmed: usize,
    /// Broadcasts not confirmed, with why.
    unconfirmed: Vec<(String, String)>,
    /// Per subscriber: confirmed broadcasts it never received.
    missing: Vec<usize>,
    /// A few of them.
    missing_sample: Vec<String>,
    /// How many of those missing are not in the outbound stream either.
    missing_from_stream: String,
    /// Per subscriber: deliveries of a broadcast it had already received.
    duplicated: Vec<usize>,
    /// The broadcasts some subscriber received twice.
    twice: Vec<String>,
    /// How many of those RabbitMQ stored twice (`None`: the stream could not be read).
    twice_in_stream: Option<usize>,
    /// Per subscriber: deliveries of a stream position it had already received (the
    /// gateway's own duplicates).
    positions_twice: Vec<usize>,
    /// Per subscriber: unconfirmed broadcasts it received (allowed, once).
    unconfirmed_received: Vec<usize>,
    /// Per subscriber: times it resumed its session.
    resumes: Vec<usize>,
    /// Whether every subscriber task ended in time.
    subscribers_ended: bool,
    /// The longest time without a broadcast confirmed, from the stop on.
    stall: Duration,
}

impl Outbound {
    /// Every confirmed broadcast reached every subscriber, and none twice.
    fn check(&self) {
        assert!(
            self.subscribers_ended,
            "the subscribers ended within the outbound limit (resumed {:?})",
            self.resumes
        );
        assert!(
            self.confirmed >= BROADCASTS / 2,
            "most broadcasts are confirmed ({} of {BROADCASTS}; first unconfirmed {:?})",
            self.confirmed,
            &self.unconfirmed[..self.unconfirmed.len().min(5)]
        );
        assert!(
            self.confirmed_after_stop > 0,
            "broadcasts were still published once node 3 was down (the test covers the \
             leader change)"
        );
        assert!(
            self.stall <= STALL_MAX,
            "broadcasting went {:?} without a confirm after the stop (at most {STALL_MAX:?})",
            self.stall
        );
        assert!(
            self.missing.iter().all(|m| *m == 0),
            "every confirmed broadcast reached every subscriber (missing per subscriber: \
             {:?}, e.g. {:?}; {})",
            self.missing,
            self.missing_sample,
            self.missing_from_stream
        );
        assert!(
            self.positions_twice.iter().all(|d| *d == 0),
            "the gateway sent no stream position twice ({:?})",
            self.positions_twice
        );
        // A broadcast twice at two positions: RabbitMQ stored it twice (its channel
        // re-sends what a stopped leader left unconfirmed). The SDK drops the copy by
        // `message_id`; the gateway must not add any of its own.
        assert!(
            self.twice_in_stream == Some(self.twice.len()),
            "every broadcast a subscriber received twice is in the stream twice \
             (received twice: {:?}; stored twice: {:?}; per subscriber {:?})",
            self.twice,
            self.twice_in_stream,
            self.duplicated
        );
    }
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
    let mut tick = tokio::time::interval(WS_TICK);
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
