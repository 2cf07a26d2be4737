//! Fault injection: the one RabbitMQ node a service and its producers use is restarted
//! mid-run — stopped gracefully and started again, or SIGKILLed and started again. The
//! service library reconnects, declares its queue again and consumes again; the
//! producers' publishes wait for the broker and are published again when their confirm
//! was lost; every confirmed message is handled, once.
//!
//! Runs on a private node (`warren_e2e::broker_node`), never on the shared broker.
//! Prints its figures: sent, confirmed, failed, delivered, lost, duplicated, time to
//! recover.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::types::ShortString;
use lapin::BasicProperties;
use warren_e2e::broker_node::BrokerCluster;
use warren_e2e::load::{
    longest_gap_after, lost, publish_load, wait_handled, watch_states, LoadPlan, Sent,
};
use warren_protocol::amqp::Names;
use warren_service::{Context, HandlerError, Incoming, Outcome, Service, ServiceConfig};

/// Bound on a whole test, node start and teardown included.
const LIMIT: Duration = Duration::from_secs(300);
/// Messages published per run.
const MESSAGES: usize = 3_000;
/// Concurrent publishing tasks (each waits for its confirm before the next publish).
const PUBLISHERS: usize = 12;
/// Total publish rate while the broker is up.
const RATE_PER_SEC: u64 = 400;
/// The fault is injected once this many publishes were confirmed.
const FAULT_AFTER: usize = 800;
/// How soon after the node is back (its AMQP port accepts connections) publishes are
/// confirmed again and the worker runs again. The library's reconnect pause is at most
/// 2 s (`max_reconnect_backoff`), then it connects, declares its queue and consumes
/// again; 10 s leaves room for a busy machine and is far below the 60 s a publish may
/// wait (`publish_timeout`), which would be the only other limit.
const BACK_WITHIN: Duration = Duration::from_secs(10);

/// How the node is taken down.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `rabbitmqctl stop`, then start.
    StopStart,
    /// SIGKILL, then start.
    KillStart,
}

/// What the handler saw: per `message_id`, how many times it was handled.
#[derive(Debug, Default)]
struct Tally {
    handled: Mutex<HashMap<String, u32>>,
}

#[tokio::test]
async fn a_broker_stopped_and_started_mid_run_loses_no_confirmed_message() {
    tokio::time::timeout(LIMIT, restart_run(Fault::StopStart))
        .await
        .expect("the test finished within its limit");
}

#[tokio::test]
async fn a_broker_killed_and_started_mid_run_loses_no_confirmed_message() {
    tokio::time::timeout(LIMIT, restart_run(Fault::KillStart))
        .await
        .expect("the test finished within its limit");
}

#[tokio::test]
async fn a_blocked_broker_makes_publishes_wait_then_fail_clearly_and_resume_once_unblocked() {
    tokio::time::timeout(LIMIT, blocked_run())
        .await
        .expect("the test finished within its limit");
}

/// A memory alarm (watermark 0) blocks publishers: a publish waits its bounded time and
/// fails with `BrokerUnavailable` naming the block; once the alarm clears, publishes are
/// confirmed again, and nothing confirmed is lost.
async fn blocked_run() {
    let broker = BrokerCluster::single()
        .await
        .expect("a private RabbitMQ node starts");
    let ns = format!(
        "t-blocked-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let names = Names::new(&ns);
    let config = ServiceConfig::default().with_publish_timeout(Duration::from_secs(2));
    let tally = Arc::new(Tally::default());
    let worker = start_worker(&broker.uri(0), &names, &config, &tally).await;
    let publish = |id: &'static str| persistent(&worker, &names, "chat.blocked", id);
    publish("before").await.expect("confirmed before the alarm");
    // Another service, stopped during the alarm: its lane's channel is open (it
    // published a moment ago), and RabbitMQ never answers that channel's close while
    // it blocks the connection. `stop` waited for it until the alarm cleared.
    let other_names = Names::new(&format!("{ns}-other"));
    let other = start_worker(&broker.uri(0), &other_names, &config, &Arc::default()).await;
    let other_publish = |id: &'static str| persistent(&other, &other_names, "chat.other", id);
    other_publish("other-before")
        .await
        .expect("the other service's publish is confirmed before the alarm");

    broker
        .ctl(0, &["set_vm_memory_high_watermark", "0"])
        .await
        .expect("the memory alarm is raised");
    let t0 = Instant::now();
    let blocked = publish("during").await;
    let waited = t0.elapsed();
    assert!(
        other_publish("other-during").await.is_err(),
        "the other service's publish is blocked too"
    );
    let stopping = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(60), other.stop()).await;
    assert!(
        stopped.is_ok(),
        "Service::stop returned while RabbitMQ blocked the connection"
    );
    println!(
        "fault_broker_restart[Blocked]: a service stopped during the alarm in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    broker
        .ctl(0, &["set_vm_memory_high_watermark", "0.4"])
        .await
        .expect("the memory alarm is cleared");
    let t1 = Instant::now();
    let mut after = Err(None);
    while t1.elapsed() < Duration::from_secs(30) {
        match publish("after").await {
            Ok(()) => {
                after = Ok(());
                break;
            }
            Err(e) => after = Err(Some(e.to_string())),
        }
    }
    let resumed = t1.elapsed();
    let mut confirmed = vec!["before".to_string()];
    if after.is_ok() {
        confirmed.push("after".into());
    }
    let all_handled = wait_handled(&tally.handled, &confirmed, Duration::from_secs(20)).await;
    println!(
        "fault_broker_restart[Blocked]: the publish during the alarm {} after {:.1} s; \
         after clearing it publishes were confirmed again within {:.1} s; confirmed {:?} all handled: {all_handled}",
        match &blocked {
            Ok(()) => "was confirmed (!)".to_string(),
            Err(e) => format!("failed with `{e}`"),
        },
        waited.as_secs_f64(),
        resumed.as_secs_f64(),
        confirmed,
    );
    match blocked {
        Err(warren_service::ServiceError::BrokerUnavailable { reason, .. }) => {
            assert!(
                reason.contains("block"),
                "the error names the block: {reason}"
            )
        }
        other => panic!("expected BrokerUnavailable while blocked, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "the publish waited its bounded time ({waited:?})"
    );
    assert!(after.is_ok(), "publishes resume after the alarm: {after:?}");
    assert!(all_handled, "every confirmed message was handled");
    worker.stop().await.expect("worker stops");
    broker.shutdown().await;
}

/// Publishes `{}` persistent with `message_id` = `id` on `service`'s publisher to the
/// inbound exchange of `names`, and waits for its confirm.
async fn persistent(
    service: &Service,
    names: &Names,
    routing_key: &str,
    id: &str,
) -> Result<(), warren_service::ServiceError> {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(id));
    service
        .publisher()
        .publish_confirmed(&names.inbound_exchange(), routing_key, b"{}", properties)
        .await
}

async fn restart_run(fault: Fault) {
    let began = Instant::now();
    let mut broker = BrokerCluster::single()
        .await
        .expect("a private RabbitMQ node starts");
    let boot = began.elapsed();
    let uri = broker.uri(0);
    let ns = format!(
        "t-restart-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let names = Names::new(&ns);
    let config = ServiceConfig::default()
        .with_publish_timeout(Duration::from_secs(60))
        .with_prefetch(16);

    let tally = Arc::new(Tally::default());
    let worker = start_worker(&uri, &names, &config, &tally).await;
    let worker_states = watch_states(&worker);
    let producer = Service::connect_with(&uri, names.clone(), config.clone())
        .await
        .expect("the producer connects");

    let sent = Arc::new(Sent::default());
    let plan = LoadPlan {
        messages: MESSAGES,
        tasks: PUBLISHERS,
        rate_per_sec: RATE_PER_SEC,
        id_prefix: "m",
    };
    let load = tokio::spawn(publish_load(
        producer.publisher(),
        names.inbound_exchange(),
        plan,
        sent.clone(),
    ));

    // Inject the fault once the run is well under way.
    while sent.confirmed.lock().unwrap().len() < FAULT_AFTER {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fault_at = Instant::now();
    match fault {
        Fault::StopStart => broker.stop_node(0).await.expect("the node stops"),
        Fault::KillStart => broker.kill_node(0).await.expect("the node is killed"),
    }
    let down_at = Instant::now();
    broker.start_node(0).await.expect("the node starts again");
    let up_at = Instant::now();

    load.await.expect("the load task ends");
    let confirmed: Vec<String> = sent.confirmed.lock().unwrap().clone();
    let failed = sent.failed.lock().unwrap().clone();
    let all_handled = wait_handled(&tally.handled, &confirmed, Duration::from_secs(60)).await;

    let handled = tally.handled.lock().unwrap().clone();
    let lost = lost(&confirmed, &handled);
    let duplicated: u32 = handled.values().map(|n| n - 1).sum();
    let stall = longest_gap_after(&sent.confirm_times.lock().unwrap(), fault_at);
    let back = worker_states
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, state)| *at > fault_at && state == "running")
        .map(|(at, _)| *at)
        .next_back();
    println!(
        "fault_broker_restart[{fault:?}]: node boot {:.1} s; sent {MESSAGES}, confirmed {}, failed {}, \
         delivered {} distinct, lost {}, duplicated {duplicated}; node down for {:.1} s \
         (stop {:.1} s + start {:.1} s); publish stall {:.1} s; worker running again {}",
        boot.as_secs_f64(),
        confirmed.len(),
        failed.len(),
        handled.len(),
        lost.len(),
        up_at.duration_since(fault_at).as_secs_f64(),
        down_at.duration_since(fault_at).as_secs_f64(),
        up_at.duration_since(down_at).as_secs_f64(),
        stall.as_secs_f64(),
        back.map_or("(never)".to_string(), |t| format!(
            "{:.1} s after the fault",
            t.duration_since(fault_at).as_secs_f64()
        )),
    );

    assert!(
        failed.is_empty(),
        "publishes failed although the broker came back within the publish timeout: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(
        all_handled && lost.is_empty(),
        "confirmed but never handled: {} (e.g. {:?})",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        duplicated, 0,
        "the duplicate window of one worker lets no copy through"
    );
    let down_for = up_at.duration_since(fault_at);
    assert!(
        stall <= down_for + BACK_WITHIN,
        "publishes were confirmed again within {BACK_WITHIN:?} of the node's return (the \
         longest stall {stall:?}, the node down for {down_for:?})"
    );
    let back = back.expect("the worker reported running again after the fault");
    assert!(
        back >= down_at,
        "the worker ran again only once the node had gone down ({:?} after the fault, \
         down after {:?})",
        back.duration_since(fault_at),
        down_at.duration_since(fault_at)
    );
    assert!(
        back <= up_at + BACK_WITHIN,
        "the worker ran again within {BACK_WITHIN:?} of the node's return ({:?} after it)",
        back.saturating_duration_since(up_at)
    );
    assert_eq!(worker.state(), warren_service::ServiceState::Running);

    producer.stop().await.expect("producer stops");
    worker.stop().await.expect("worker stops");
    broker.shutdown().await;
}

/// A service on `uri` consuming `chat`, counting every message it handles in `tally`.
async fn start_worker(
    uri: &str,
    names: &Names,
    config: &ServiceConfig,
    tally: &Arc<Tally>,
) -> Service {
    let worker = Service::connect_with(uri, names.clone(), config.clone())
        .await
        .expect("the worker connects");
    let seen = tally.clone();
    worker
        .consume("chat", move |_ctx: Context, msg: Incoming| {
            let seen = seen.clone();
            async move {
                let id = msg.message_id.clone().unwrap_or_default();
                *seen.handled.lock().unwrap().entry(id).or_default() += 1;
                Ok::<_, HandlerError>(Outcome::Done)
            }
        })
        .await
        .expect("the worker consumes");
    worker
}
