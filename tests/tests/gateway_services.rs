//! The service registry end to end: a service built on the service library announces
//! itself on `warren.services`; the gateway's view (`GET /services`) follows its join,
//! heartbeats and leave; a request on a channel nobody answers gets `no_service` at
//! once (measured), and succeeds again when the service is back. An instance that
//! stops announcing is gone after three missed heartbeats; a consumer that never
//! announces still counts; publishes wait in the queue unless `no_service = "all"`.

use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::BasicProperties;
use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::{next_delivery, TestEnv};
use warren_e2e::gateway::{http_get, TestGateway};
use warren_e2e::service::amqp_uri;
use warren_gateway::NoServiceMode;
use warren_protocol::services::{AnnounceEvent, Announcement};
use warren_protocol::ErrorCode;
use warren_service::{Answer, Context, HandlerError, Incoming, Outcome, Service, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(90);
/// A heartbeat interval long enough that expiry (three intervals: 30 s) cannot be what
/// takes an instance out of the view within [`LEAVE_BOUND`]: only its `leave` can.
const LONG_INTERVAL: Duration = Duration::from_secs(10);
/// How soon a `leave` empties the view (in memory: a broker round trip, a few ms; the
/// bound leaves room for a busy 2-core machine and is far below the expiry).
const LEAVE_BOUND: Duration = Duration::from_millis(1_500);

async fn echo(_ctx: Context, m: Incoming) -> Result<Outcome, HandlerError> {
    Ok(Outcome::Reply(Answer::raw(m.body)))
}

/// A tickets service on the test's namespace, heartbeat every `interval`.
async fn tickets_service(env: &TestEnv, interval: Duration) -> Service {
    let config = ServiceConfig::default()
        .with_app_id("tickets-svc")
        .with_version("9.9.9")
        .with_announce_interval(Some(interval));
    let service = Service::connect_with(&amqp_uri(), env.names.clone(), config)
        .await
        .expect("service connects");
    service.consume("tickets", echo).await.expect("consume");
    service
}

/// The gateway's registry view.
async fn view(gw: &TestGateway) -> serde_json::Value {
    let body = http_get(gw.health_addr(), "/services").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /services: {e}: {body}"))
}

/// Waits (bounded) until the view's `services` satisfies `ok`; how long it took.
async fn wait_view(
    gw: &TestGateway,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let v = view(gw).await;
        if ok(&v["services"]) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: the view is still {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most 5 s) until nothing consumes `queue` (a failed service's consumer
/// ends as on `stop`).
async fn consumers_gone(queue: &str) {
    let within = Duration::from_secs(5);
    let what = "the failed service still consumes it";
    warren_e2e::service::wait_for_counts(queue, within, what, |_, consumers| consumers == 0).await;
}

/// Sends a request and returns what came back (reply or error code) and how long it took.
async fn ask(
    c: &mut TestClient,
    id: &str,
    channel: &str,
    timeout_ms: u64,
) -> (Result<(), ErrorCode>, Duration) {
    let started = Instant::now();
    c.request(id, channel, Some(timeout_ms), json!({"q": id}))
        .await;
    let outcome = c
        .expect(&format!("reply or error for {id}"), |f| match f {
            warren_protocol::ServerFrame::Reply(r) if r.id == id => Some(Ok(())),
            warren_protocol::ServerFrame::Error(e) if e.id.as_deref() == Some(id) => {
                Some(Err(e.code))
            }
            _ => None,
        })
        .await;
    (outcome, started.elapsed())
}

#[tokio::test]
async fn a_stopped_service_gives_no_service_at_once_and_its_return_answers_again() {
    TestEnv::run("registry", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let mut c = TestClient::connect(&gw.url()).await;

        // No service at all: no_service at once, not after the 10 s timeout.
        let (outcome, took) = ask(&mut c, "before", "tickets", 10_000).await;
        assert_eq!(outcome, Err(ErrorCode::NoService));
        println!(
            "gateway_services: no_service with nothing ever started: {} ms",
            took.as_millis()
        );
        // At once, not after the request's 10 s timeout (in memory: ~1 ms; the
        // bound leaves room for a busy 2-core machine).
        assert!(
            took < Duration::from_millis(1_000),
            "no_service took {took:?}"
        );
        // A client that keeps asking while the service is away is not a misbehaving
        // one: more `no_service` answers than `max_consecutive_errors` (32) in a row
        // leave the connection open.
        for i in 0..40 {
            let (outcome, _) = ask(&mut c, &format!("again-{i}"), "tickets", 10_000).await;
            assert_eq!(outcome, Err(ErrorCode::NoService), "request {i}");
        }
        assert_eq!(c.close_code, None, "not closed with too_many_errors");

        // Heartbeats every 10 s: the gateway would drop a silent instance only after
        // 30 s, so the view can empty within the bound below by the leave alone.
        let service = tickets_service(env, LONG_INTERVAL).await;
        let instance = service.instance().to_string();
        let joined = wait_view(&gw, "join", |s| {
            s["tickets-svc"][0]["instance"] == instance.as_str()
                && s["tickets-svc"][0]["channels"] == json!(["tickets"])
        })
        .await;
        println!(
            "gateway_services: join seen after {} ms",
            joined.as_millis()
        );
        let v = view(&gw).await;
        let entry = &v["services"]["tickets-svc"][0];
        assert_eq!(entry["channels"], json!(["tickets"]));
        assert_eq!(entry["version"], "9.9.9");
        assert_eq!(v["node"], gw.gateway().config().node.as_str());
        let (outcome, _) = ask(&mut c, "live", "tickets", 10_000).await;
        assert_eq!(outcome, Ok(()), "the live service answers");

        // The only service stops cleanly: its leave empties the view, and the next
        // request is refused at once.
        let stopped_at = Instant::now();
        service.stop().await.expect("stop");
        let left = wait_view(&gw, "leave", |s| s.get("tickets-svc").is_none()).await;
        println!(
            "gateway_services: stop() took {} ms; leave seen {} ms after stop() returned",
            (stopped_at.elapsed() - left).as_millis(),
            left.as_millis()
        );
        assert!(
            left < LEAVE_BOUND,
            "the leave took {left:?} to arrive (expiry alone: {:?})",
            LONG_INTERVAL * 3
        );
        let mut latencies = Vec::new();
        for i in 0..5 {
            let (outcome, took) = ask(&mut c, &format!("gone{i}"), "tickets", 10_000).await;
            assert_eq!(outcome, Err(ErrorCode::NoService));
            latencies.push(took);
        }
        latencies.sort();
        println!(
            "gateway_services: no_service after the only service stopped: median {} ms, max {} ms",
            latencies[2].as_millis(),
            latencies[4].as_millis()
        );
        assert!(latencies[4] < Duration::from_millis(1_000), "{latencies:?}");

        // The service comes back: requests are answered again as soon as the gateway
        // saw it join (its join follows its consume by a few ms).
        let service = tickets_service(env, LONG_INTERVAL).await;
        let back = Instant::now();
        let rejoined = wait_view(&gw, "rejoin", |s| {
            s["tickets-svc"][0]["channels"] == json!(["tickets"])
        })
        .await;
        println!(
            "gateway_services: the restarted service seen {} ms after its consume returned",
            rejoined.as_millis()
        );
        let (outcome, _) = ask(&mut c, "back", "tickets", 10_000).await;
        assert_eq!(
            outcome,
            Ok(()),
            "answered again {} ms after the restart",
            back.elapsed().as_millis()
        );

        // A plain publish is not refused: it waits in the queue (no_service = requests).
        service.stop().await.expect("stop");
        wait_view(&gw, "second leave", |s| s.get("tickets-svc").is_none()).await;
        c.publish("p1", "tickets", json!({"later": true})).await;
        c.expect_ack("p1").await;
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_instance_that_stops_announcing_is_gone_after_three_missed_heartbeats() {
    TestEnv::run("registry-expiry", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        // An instance of another language announces `voice` by hand (and consumes
        // nothing), then falls silent as a killed process would.
        let announcement = Announcement {
            event: AnnounceEvent::Join,
            name: "voice-py".into(),
            instance: "voice-py-1".into(),
            channels: vec!["voice".into()],
            queues: Vec::new(),
            version: "0.1".into(),
            interval_ms: 200,
        };
        // Announced until the gateway's listener (bound in the background at start)
        // has it, as heartbeats would.
        let first = Instant::now();
        let mut announced;
        loop {
            env.channel()
                .basic_publish(
                    ShortString::from(env.names.services_exchange()),
                    ShortString::from("service.join"),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&announcement).unwrap(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            announced = Instant::now();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if view(&gw).await["services"]["voice-py"][0]["instance"] == "voice-py-1" {
                break;
            }
            assert!(first.elapsed() < Duration::from_secs(10), "never seen");
        }
        let mut c = TestClient::connect(&gw.url()).await;
        // While it counts as live, a request goes to the queue (and times out).
        let (outcome, _) = ask(&mut c, "v1", "voice", 200).await;
        assert_eq!(outcome, Err(ErrorCode::Timeout));
        let gone = wait_view(&gw, "expiry", |s| s.get("voice-py").is_none()).await;
        let after = announced.elapsed();
        println!(
            "gateway_services: silent instance gone {} ms after its last announcement (lifetime: 3 × 200 ms, at least 1 s)",
            after.as_millis()
        );
        assert!(
            after >= Duration::from_millis(1_000),
            "gone too early: {after:?} ({gone:?})"
        );
        // And not much later: its lifetime (1 s) after its last announcement, with
        // room for a busy machine, not whenever the view happens to be looked at.
        let lifetime = Duration::from_millis(announcement.lifetime_ms());
        assert!(
            after < lifetime + Duration::from_millis(1_500),
            "gone too late: {after:?} after its last announcement (lifetime {lifetime:?}; {gone:?})"
        );
        let (outcome, took) = ask(&mut c, "v2", "voice", 10_000).await;
        assert_eq!(outcome, Err(ErrorCode::NoService));
        assert!(took < Duration::from_millis(1_000), "{took:?}");
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_consumer_that_never_announces_still_counts_and_all_refuses_publishes_too() {
    TestEnv::run("registry-consumer", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| c.no_service = NoServiceMode::All).await;
        let mut c = TestClient::connect(&gw.url()).await;
        // no_service = all: a publish on a channel nobody consumes is refused too.
        c.publish("p0", "echo", json!(0)).await;
        assert_eq!(c.expect_error(Some("p0")).await.code, ErrorCode::NoService);
        // A plain AMQP consumer on IN_ECHO, announcing nothing: the request reaches it.
        let mut inbound = env.consume_inbound("echo").await;
        tokio::time::sleep(warren_gateway::services::CONSUMER_CHECK_TTL).await;
        c.request("r1", "echo", Some(5_000), json!(1)).await;
        let req = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        env.reply_to(&req, "1", None).await;
        c.expect_reply("r1").await;
        c.publish("p1", "echo", json!(1)).await;
        c.expect_ack("p1").await;
        let metrics = http_get(gw.health_addr(), "/metrics").await;
        let line = format!(
            "warren_gateway_no_service_total{{node=\"{}\"}} 1",
            gw.gateway().config().node
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
        let by_code = format!(
            "warren_gateway_errors_total{{node=\"{}\",code=\"no_service\"}} 1",
            gw.gateway().config().node
        );
        assert!(metrics.contains(&by_code), "{by_code} in\n{metrics}");
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_priority_worker_announces_the_channels_of_the_gateways_queues_it_works_through() {
    TestEnv::run("registry-priority", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let config = ServiceConfig::default()
            .with_app_id("priority-svc")
            .with_announce_interval(Some(Duration::from_millis(500)));
        let service = Service::connect_with(&amqp_uri(), env.names.clone(), config)
            .await
            .expect("service connects");
        // A private work queue first, then the gateway's `IN_TICKETS`: while the
        // worker is busy on the first, `IN_TICKETS` has no consumer at all.
        let work = format!("{}priority-work", env.names.prefix());
        let tickets = env.names.channel_queue("tickets");
        service
            .consume_queues(&[work.as_str(), tickets.as_str()], echo)
            .await
            .expect("consume_queues");
        let instance = service.instance().to_string();
        wait_view(&gw, "the worker's join", |s| {
            s["priority-svc"][0]["instance"] == instance.as_str()
                && s["priority-svc"][0]["channels"] == json!(["tickets"])
        })
        .await;
        // So a request is let through (and answered) rather than refused `no_service`.
        let mut c = TestClient::connect(&gw.url()).await;
        let (outcome, _) = ask(&mut c, "through", "tickets", 10_000).await;
        assert_eq!(outcome, Ok(()));
        c.close().await;
        service.stop().await.expect("stop");
        gw.shutdown().await;
        // The private queue is the test's own; the namespace's are deleted after it.
        let _ = env
            .new_channel()
            .await
            .queue_delete(work.as_str().into(), Default::default())
            .await;
    })
    .await;
}

/// Deletes the tickets queue `service` consumes; waits (bounded) for the service to
/// turn `Failed`.
async fn fail_by_deleting_tickets(env: &TestEnv, service: &Service) {
    env.channel()
        .queue_delete(
            env.names.channel_queue("tickets").as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the service's queue");
    let state = tokio::time::timeout(Duration::from_secs(10), service.closed())
        .await
        .expect("the service fails once its queue is gone");
    assert!(
        matches!(state, warren_service::ServiceState::Failed(_)),
        "{state:?}"
    );
}

/// A service that failed (its queue was deleted: it consumes nothing any more)
/// announces `leave` and no more heartbeats: gateways drop it from their view at once
/// and answer its channel's requests `no_service` instead of letting them wait for
/// their timeout (its heartbeats went on while its connection was up).
#[tokio::test]
async fn a_service_that_failed_leaves_the_registry() {
    TestEnv::run("registry-failed", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        // Heartbeats every 4 s: expiry (12 s) cannot empty the view within
        // `LEAVE_BOUND`, only the failed service's `leave` can.
        let interval = Duration::from_secs(4);
        let service = tickets_service(env, interval).await;
        // A second channel, whose queue stays: the one its requests are asked on once
        // the service failed (deleting `tickets` to fail it leaves no queue there, and
        // requests to a missing queue are refused `no_route`).
        let chat = service.consume("chat", echo).await.expect("consume chat");
        let instance = service.instance().to_string();
        wait_view(&gw, "join", |s| {
            s["tickets-svc"][0]["instance"] == instance.as_str()
                && s["tickets-svc"][0]["channels"] == json!(["chat", "tickets"])
        })
        .await;
        let mut c = TestClient::connect(&gw.url()).await;
        let (outcome, _) = ask(&mut c, "live", "chat", 10_000).await;
        assert_eq!(outcome, Ok(()), "the live service answers");

        fail_by_deleting_tickets(env, &service).await;
        let left = wait_view(&gw, "leave", |s| s.get("tickets-svc").is_none()).await;
        println!(
            "gateway_services: a failed service left the view after {} ms (expiry alone: {} ms)",
            left.as_millis(),
            (interval * 3).as_millis()
        );
        assert!(
            left < LEAVE_BOUND,
            "the failed service's leave took {left:?} to arrive (expiry alone: {:?})",
            interval * 3
        );
        // Its chat consumer ends too (bounded: as on `stop`); then, with the instance
        // out of the view and nothing consuming, chat's requests are refused at once,
        // not let through to wait for their timeout as while it was listed.
        consumers_gone(&chat).await;
        let (outcome, took) = ask(&mut c, "failed", "chat", 10_000).await;
        assert_eq!(outcome, Err(ErrorCode::NoService), "after {took:?}");
        assert!(
            took < Duration::from_millis(1_000),
            "no_service took {took:?}"
        );
        // And stays out: no heartbeat brings it back (one interval and more).
        tokio::time::sleep(interval + Duration::from_millis(1_500)).await;
        let v = view(&gw).await;
        assert!(v["services"].get("tickets-svc").is_none(), "{v}");
        let (outcome, took) = ask(&mut c, "still-failed", "chat", 10_000).await;
        assert_eq!(outcome, Err(ErrorCode::NoService), "after {took:?}");
        assert!(
            took < Duration::from_millis(1_000),
            "no_service took {took:?}"
        );
        c.close().await;
        let _ = service.stop().await;
        gw.shutdown().await;
    })
    .await;
}

/// A service that failed consumes nothing any more, as README says: its other
/// channels' consumers stop too (before, they went on handling requests while the
/// instance had announced `leave`, so gateways answered that channel `no_service`
/// and its requests were still taken), and `consume` on it is refused.
#[tokio::test]
async fn a_service_that_failed_stops_consuming_its_other_channels() {
    TestEnv::run("registry-failed-all", LIMIT, async |env| {
        let handled = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = handled.clone();
        let counting = move |_ctx: Context, m: Incoming| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, HandlerError>(Outcome::Reply(Answer::raw(m.body)))
            }
        };
        let service = tickets_service(env, Duration::from_millis(300)).await;
        let chat = service
            .consume("chat", counting)
            .await
            .expect("consume chat");
        let (_, consumers) = warren_e2e::service::queue_counts(&chat).await;
        assert_eq!(consumers, 1, "chat is consumed");

        fail_by_deleting_tickets(env, &service).await;
        // Its chat consumer is gone (bounded: it ends as on `stop`).
        consumers_gone(&chat).await;
        // A message for chat waits in its queue, unhandled.
        env.channel()
            .basic_publish(
                "".into(),
                chat.as_str().into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(env.message_count(&chat).await, Some(1));
        assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 0);
        // And nothing new is consumed on it.
        let refused = service.consume("voice", echo).await;
        assert!(
            matches!(refused, Err(warren_service::ServiceError::Failed(_))),
            "{refused:?}"
        );
        let _ = service.stop().await;
    })
    .await;
}
