//! Handler failures in the service library, over real RabbitMQ: a failed message is
//! handed back and handled again; after `max_attempts` it is dead-lettered to
//! `warren.dead` and the request is refused with `internal`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use warren_e2e::env::header_text;
use warren_e2e::rabbitmqctl::BrokerUser;
use warren_e2e::service::{
    amqp_uri, counted_echo, counted_echo_on, delete_queue, in_fresh_namespace, take_parked,
    StandInGateway,
};
use warren_protocol::amqp::Names;
use warren_service::{Answer, HandlerError, Incoming, Outcome, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_failing_handler_gets_the_message_again_and_the_request_still_resolves() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let (service, calls) =
            counted_echo(&ns, ServiceConfig::default(), |n, m: Incoming| async move {
                if n == 0 {
                    return Err(HandlerError::Failed("first attempt fails".into()));
                }
                Ok(Outcome::Reply(Answer::raw(m.body)))
            })
            .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "r1", r#"{"n":1}"#).await;
        assert_eq!(reply.error, None);
        assert_eq!(reply.body, br#"{"n":1}"#);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "handled twice: failed, then ok"
        );
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_message_failing_max_attempts_times_is_dead_lettered_and_the_request_refused() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default().with_max_attempts(3);
        let names = Names::new(&ns);
        let (service, calls) = counted_echo(&ns, config, |_, _| async {
            Err::<Outcome, _>(HandlerError::Failed("always fails".into()))
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "r1", r#"{"poison":true}"#).await;
        assert_eq!(reply.error.as_deref(), Some("internal"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let parked = take_parked(&names)
            .await
            .expect("the message waits in warren.dead");
        assert_eq!(parked.data, br#"{"poison":true}"#);
        let headers = parked.properties.headers().clone().unwrap_or_default();
        assert!(headers.contains_key("x-warren-dead-reason"));
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// `warren.dead` deleted while the service runs (an operator "emptying" it) is declared
/// again before the next message is parked there. It was declared once per connection:
/// the next parked message went to the fanout exchange with no queue bound, RabbitMQ
/// confirmed it (unroutable, not mandatory), and it was acknowledged and gone.
#[tokio::test]
async fn a_message_parked_after_warren_dead_was_deleted_is_still_kept() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default().with_max_attempts(1);
        let names = Names::new(&ns);
        let (service, _calls) = counted_echo(&ns, config, |_, _| async {
            Err::<Outcome, _>(HandlerError::Failed("always fails".into()))
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "r1", r#"{"poison":1}"#).await;
        assert_eq!(reply.error.as_deref(), Some("internal"));
        let parked = take_parked(&names).await.expect("r1 waits in warren.dead");
        assert_eq!(parked.data, br#"{"poison":1}"#);
        delete_queue(&names.dead_letter_queue()).await;
        let reply = gw.request("echo", "r2", r#"{"poison":2}"#).await;
        assert_eq!(reply.error.as_deref(), Some("internal"));
        let parked = take_parked(&names).await.expect("r2 waits in warren.dead");
        assert_eq!(parked.data, br#"{"poison":2}"#);
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// A copy of a request sent while the first is being handled (the SDK sends a request
/// again on resume) waits for the first to end instead of being handed back every
/// 200 ms: each hand-back raised its `x-delivery-count`, which counts as a failed
/// attempt, so two real failures dead-lettered it (`internal`) instead of five.
#[tokio::test]
async fn a_copy_sent_while_the_first_is_handled_waits_and_keeps_its_attempts() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default().with_prefetch(2);
        let (service, calls) = counted_echo(&ns, config, |n, m: Incoming| async move {
            match n {
                0 => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Err(HandlerError::Failed("the first attempt fails".into()))
                }
                1 => Err(HandlerError::Failed("so does the second".into())),
                _ => Ok(Outcome::Reply(Answer::raw(m.body))),
            }
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        // The same request twice: the same message_id.
        for _ in 0..2 {
            gw.send_request("echo", "r1", r#"{"n":1}"#, Duration::from_secs(30))
                .await;
        }
        for copy in 0..2 {
            let reply = gw
                .next_reply(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("reply {copy} within 30 s"));
            assert_eq!(reply.error, None, "reply {copy}: {:?}", reply.headers);
            assert_eq!(reply.body, br#"{"n":1}"#);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "two failures, then the answer; the other copy gets it remembered"
        );
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// Two copies of one request, each handed back after failures, are never handled at
/// the same time. A copy that started while a failed handling waited out its backoff
/// was marked given up when that handling's task ended (its guard for an aborted task
/// fired on the copy's mark): the first copy, redelivered, then ran beside it, and the
/// requester got two answers from two runs.
#[tokio::test]
async fn copies_of_a_failing_request_are_never_handled_at_once() {
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default()
            .with_prefetch(2)
            .with_max_attempts(10);
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let (now, top) = (running.clone(), most.clone());
        let (service, calls) = counted_echo(&ns, config, move |n, m: Incoming| {
            let (now, top) = (now.clone(), top.clone());
            async move {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                top.fetch_max(at_once, Ordering::SeqCst);
                // Three failures (the third's backoff is 400 ms, two of the waiting
                // copy's looks), then a slow answer.
                let outcome = if n < 3 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(HandlerError::Failed(format!("attempt {n} fails")))
                } else {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Ok(Outcome::Reply(Answer::raw(m.body)))
                };
                now.fetch_sub(1, Ordering::SeqCst);
                outcome
            }
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        for _ in 0..2 {
            gw.send_request("echo", "r1", r#"{"n":1}"#, Duration::from_secs(30))
                .await;
        }
        for copy in 0..2 {
            let reply = gw
                .next_reply(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("reply {copy} within 30 s"));
            assert_eq!(reply.error, None, "reply {copy}: {:?}", reply.headers);
            assert_eq!(reply.body, br#"{"n":1}"#);
        }
        // Let a run started late end before counting.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            most.load(Ordering::SeqCst),
            1,
            "the handler ran for both copies at once"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "three failures, then the answer; the other copy gets it remembered"
        );
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// A handler that publishes to clients and then fails is run again; what it publishes
/// the second time carries the same `message_id` as the first time (numbered from the
/// handled message's), so a client's SDK drops the copy. It carried a fresh UUID each
/// time: the client got the message twice.
#[tokio::test]
async fn what_a_handler_run_again_publishes_carries_the_same_message_ids() {
    use serde_json::json;
    use warren_e2e::client::{sub, TestClient};
    use warren_e2e::env::TestEnv;
    use warren_e2e::gateway::TestGateway;
    use warren_protocol::Hello;
    use warren_service::{Context, Service, Targets};

    TestEnv::run("service-retry-publish", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let service = Service::connect_with(
            &warren_e2e::service::amqp_uri(),
            env.names.clone(),
            ServiceConfig::default(),
        )
        .await
        .expect("the service connects");
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = attempts.clone();
        service
            .consume("echo", move |ctx: Context, m: Incoming| {
                let seen = seen.clone();
                async move {
                    for part in ["first", "second"] {
                        ctx.publish(&Targets::broadcast("chat"), format!("\"{part}\""))
                            .await?;
                    }
                    if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err(HandlerError::Failed("fails after publishing".into()));
                    }
                    Ok(Outcome::Reply(Answer::raw(m.body)))
                }
            })
            .await
            .expect("consume echo");
        let hello = Hello {
            token: Some("ada".into()),
            ..Hello::default()
        };
        let mut ada = TestClient::connect_with(&gw.url(), hello).await;
        ada.subscribe(sub("s", "chat")).await;
        ada.request("r1", "echo", Some(10_000), json!({"n": 1}))
            .await;
        let mut ids = Vec::new();
        for _ in 0..4 {
            let d = ada.expect_deliver().await;
            ids.push((d.message.get().to_string(), d.message_id));
        }
        ada.expect_reply("r1").await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "run twice");
        assert_eq!(
            ids[0], ids[2],
            "the first publish, twice, with one id: {ids:?}"
        );
        assert_eq!(
            ids[1], ids[3],
            "the second publish, twice, with one id: {ids:?}"
        );
        assert_ne!(ids[0].1, ids[1].1, "two publishes, two ids");
        assert_eq!(
            ids[0].1, "ada:r1/0",
            "numbered from the request's message_id"
        );
        ada.close().await;
        service.stop().await.unwrap();
        gw.shutdown().await;
    })
    .await;
}

/// A handler that panics before it returns its future (a closure's work before `async
/// move`, as `msg.json().unwrap()` would) fails like one whose future panics: the
/// message is handed back and handled again, and the consumer goes on. The panic used
/// to unwind the message's task with the message neither acked nor nacked, so with the
/// default prefetch of 1 the service took nothing more.
#[tokio::test]
async fn a_handler_panicking_before_its_future_is_retried_and_the_service_goes_on() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let (service, calls) = counted_echo(&ns, ServiceConfig::default(), |n, m: Incoming| {
            assert!(n > 0, "the first call panics before its future");
            async move { Ok(Outcome::Reply(Answer::raw(m.body))) }
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "r1", r#"{"n":1}"#).await;
        assert_eq!(reply.error, None);
        assert_eq!(reply.body, br#"{"n":1}"#);
        let reply = gw.request("echo", "r2", r#"{"n":2}"#).await;
        assert_eq!(reply.body, br#"{"n":2}"#, "the next request is handled too");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "panicked, then ok twice");
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// A message without `message_id` on a classic queue (which sets no
/// `x-delivery-count`) whose handler always fails is dead-lettered after
/// `max_attempts`, as any other. Its failures were counted by `message_id` only, so it
/// was handed back and handled again for ever, and with one message at a time
/// nothing behind it was handled.
#[tokio::test]
async fn a_failing_message_without_message_id_on_a_classic_queue_is_dead_lettered() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default()
            .with_max_attempts(3)
            .with_queue_type("classic");
        let names = Names::new(&ns);
        let (service, calls) = counted_echo(&ns, config, |_, m: Incoming| async move {
            if m.body.as_ref() == b"{\"poison\":true}" {
                return Err(HandlerError::Failed("always fails".into()));
            }
            Ok(Outcome::Done)
        })
        .await;
        let gw = StandInGateway::connect(&ns, "alice").await;
        let anonymous = lapin::BasicProperties::default().with_delivery_mode(2);
        gw.publish_raw("echo", br#"{"poison":true}"#, anonymous.clone())
            .await;
        gw.publish_raw("echo", br#"{"after":true}"#, anonymous)
            .await;
        let parked = parked_within_15_s(&names, &calls).await;
        assert_eq!(parked.data, br#"{"poison":true}"#);
        // The message behind it is handled, and the poison no more.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while calls.load(Ordering::SeqCst) < 3 + 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3 + 1,
            "three attempts, then the next"
        );
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// A request whose answer the service cannot publish, nor the `internal` refusal in
/// its place (here its RabbitMQ user may not write to the default exchange, through
/// which replies go), counts as a failed attempt: handed back after a pause, and
/// dead-lettered at `max_attempts`. It was handed back at once and the handler run
/// again, as fast as RabbitMQ redelivered, for as long as the request lived.
#[tokio::test]
async fn a_request_whose_answer_cannot_be_published_is_dead_lettered_after_max_attempts() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let permissions = [".*", "^(?!amq\\.default$).*", ".*"];
        let user = match BrokerUser::add(&format!("{ns}-no-replies"), permissions) {
            Ok(user) => user,
            // A broker this machine's rabbitmqctl does not reach (in Docker, elsewhere).
            Err(e) => {
                return warren_e2e::env::cannot_check(
                    "a request whose answer cannot be published",
                    &e,
                )
            }
        };
        let uri = user.uri(&amqp_uri());
        let config = ServiceConfig::default().with_max_attempts(3);
        let (service, calls) = counted_echo_on(&uri, &ns, config, |_, m: Incoming| async move {
            Ok(Outcome::Reply(Answer::raw(m.body)))
        })
        .await;
        let names = Names::new(&ns);
        let gw = StandInGateway::connect(&ns, "alice").await;
        gw.send_request("echo", "r1", r#"{"n":1}"#, Duration::from_secs(30))
            .await;
        let parked = parked_within_15_s(&names, &calls).await;
        assert_eq!(parked.data, br#"{"n":1}"#);
        let reason = header_text(&parked, "x-warren-dead-reason").unwrap_or_default();
        assert!(reason.contains("could not be published"), "{reason}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "one run per attempt");
        // Sent again (same message_id): acknowledged, not run nor parked again.
        gw.send_request("echo", "r1", r#"{"n":1}"#, Duration::from_secs(30))
            .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "the copy was not run");
        assert!(take_parked(&names).await.is_none(), "nor parked again");
        gw.close().await;
        service.stop().await.unwrap();
        drop(user);
    })
    .await;
}

/// The first message parked in `warren.dead` within 15 s; panics naming the handler's
/// calls so far when none is.
async fn parked_within_15_s(
    names: &Names,
    calls: &std::sync::atomic::AtomicU32,
) -> lapin::message::Delivery {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(parked) = take_parked(names).await {
            return parked;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered within 15 s (handler called {} times)",
            calls.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A handler whose error quotes the whole message (here a 40 KB body, about 200 KB of
/// error text) fails `max_attempts` times: the message is parked in `warren.dead` with
/// the reason cut short, the request is refused `internal`, and the handler ran
/// `max_attempts` times. The reason went into a header whole, the dead-letter publish
/// was too large for a frame, and the message was handed back and handled again every
/// few seconds, for ever, its requester never answered.
#[tokio::test]
async fn a_message_whose_failure_reason_is_huge_is_still_dead_lettered() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default().with_max_attempts(2);
        let names = Names::new(&ns);
        let (service, calls) = counted_echo(&ns, config, |_, m: Incoming| async move {
            Err::<Outcome, _>(HandlerError::Failed(format!(
                "bad input {:?}",
                m.body.to_vec()
            )))
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(40 * 1024));
        gw.send_request("echo", "r1", &body, Duration::from_secs(30))
            .await;
        let reply = gw.next_reply(Duration::from_secs(15)).await;
        let reply = reply.unwrap_or_else(|| {
            panic!(
                "a reply within 15 s (handler called {} times)",
                calls.load(Ordering::SeqCst)
            )
        });
        assert_eq!(
            reply.error.as_deref(),
            Some("internal"),
            "{:?}",
            reply.headers
        );
        let parked = parked_within_15_s(&names, &calls).await;
        assert_eq!(parked.data, body.as_bytes());
        let reason = header_text(&parked, "x-warren-dead-reason").unwrap_or_default();
        assert!(reason.starts_with("bad input ["), "{reason:.100}");
        assert!(reason.len() <= 4096, "bounded: {} bytes", reason.len());
        assert!(reason.contains("truncated"), "marked: {reason:.100}");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one run per attempt");
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// A failing message whose own headers nearly fill a frame (they fit on the way in;
/// with the dead-letter headers added they do not) is parked all the same, with the
/// dead-letter headers alone, after `max_attempts`. The dead-letter publish was
/// refused as too large, for good, and the message handed back and handled again for
/// ever.
#[tokio::test]
async fn a_failing_message_with_headers_filling_a_frame_is_still_dead_lettered() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default().with_max_attempts(2);
        let names = Names::new(&ns);
        let (service, calls) = counted_echo(&ns, config, |_, _| async move {
            Err::<Outcome, _>(HandlerError::Failed("fails: ".repeat(300)))
        })
        .await;
        let gw = StandInGateway::connect(&ns, "alice").await;
        let mut properties = gw.gateway_properties("echo", "big-headers");
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            "x-pad".into(),
            lapin::types::AMQPValue::LongString("p".repeat(130_000).into()),
        );
        properties = properties.with_headers(headers);
        gw.publish_raw("echo", br#"{"n":1}"#, properties).await;
        let parked = parked_within_15_s(&names, &calls).await;
        assert_eq!(parked.data, br#"{"n":1}"#);
        let headers = parked.properties.headers().clone().unwrap_or_default();
        assert!(headers.contains_key("x-warren-dead-reason"));
        assert!(headers.contains_key("x-warren-dead-queue"));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one run per attempt");
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// A request whose reply RabbitMQ keeps refusing for now (here its reply queue is full
/// and rejects publishes: a nack, a transient failure) and which the duplicate window
/// cannot answer later (its reply is too large to remember, or it has no `message_id`)
/// counts as a failed attempt: handed back after a pause, dead-lettered at
/// `max_attempts`. It was handed back at once, and the handler run again on every
/// redelivery, with no limit.
#[tokio::test]
async fn a_request_whose_reply_is_refused_for_now_and_not_remembered_is_dead_lettered_after_max_attempts(
) {
    in_fresh_namespace(LIMIT, |ns| async move {
        reply_refused_for_now(&ns, true, false).await;
    })
    .await;
}

/// As above, for a request without `message_id`.
#[tokio::test]
async fn a_request_without_message_id_whose_reply_is_refused_for_now_is_dead_lettered_after_max_attempts(
) {
    in_fresh_namespace(LIMIT, |ns| async move {
        reply_refused_for_now(&ns, false, false).await;
    })
    .await;
}

/// As above, for a request whose reply the duplicate window keeps: the handler runs
/// once, and each redelivered copy re-sends the kept reply. A failed re-send counts as
/// a failed attempt (a backoff, `warren.dead` at `max_attempts`): the copy was handed
/// back at once, and redelivered and re-sent (a fresh publishing channel each time)
/// as fast as the broker went, until the request expired.
#[tokio::test]
async fn a_request_whose_kept_reply_cannot_be_re_sent_is_dead_lettered_after_max_attempts() {
    in_fresh_namespace(LIMIT, |ns| async move {
        reply_refused_for_now(&ns, true, true).await;
    })
    .await;
}

/// A request (with or without `message_id`) on `echo` whose every reply RabbitMQ
/// refuses for now; `remembered`: whether the duplicate window keeps its reply (then
/// the handler runs once, else once per attempt). Checks it is parked in `warren.dead`
/// after the 3 attempts the service is given, within 15 s.
async fn reply_refused_for_now(ns: &str, with_message_id: bool, remembered: bool) {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let config = ServiceConfig {
        remember_reply_bytes: if remembered { 1024 } else { 0 },
        publish_timeout: Duration::from_millis(500),
        ..ServiceConfig::default().with_max_attempts(3)
    };
    let (service, calls) = counted_echo(ns, config, |_, m: Incoming| async move {
        Ok(Outcome::Reply(Answer::raw(m.body)))
    })
    .await;
    let names = Names::new(ns);
    // A reply queue that takes nothing: every reply is nacked.
    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let full = format!("{}test.full-replies", names.prefix());
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    channel
        .queue_declare(
            ShortString::from(full.as_str()),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("declare the full reply queue");
    let gw = StandInGateway::connect(ns, "alice").await;
    let gateway = gw.gateway_properties("echo", "r1");
    let mut properties = BasicProperties::default()
        .with_headers(gateway.headers().clone().unwrap_or_default())
        .with_reply_to(ShortString::from(full.as_str()))
        .with_correlation_id(ShortString::from("r1"));
    if with_message_id {
        properties = properties.with_message_id(gateway.message_id().clone().expect("an id"));
    }
    gw.publish_raw("echo", br#"{"n":1}"#, properties).await;
    let parked = parked_within_15_s(&names, &calls).await;
    assert_eq!(parked.data, br#"{"n":1}"#);
    let reason = header_text(&parked, "x-warren-dead-reason").unwrap_or_default();
    assert!(reason.contains("could not be published"), "{reason}");
    // A number header's text is e.g. `LongUInt(3)`.
    let number = |name: &str| {
        let text = header_text(&parked, name).unwrap_or_default();
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    };
    assert_eq!(number("x-warren-dead-attempts"), Some(3));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if remembered {
        // Parked at the third attempt (above): delivered three times in all, not
        // once per failed re-send for as long as the request lived.
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "run once, its reply re-sent"
        );
    } else {
        assert_eq!(calls.load(Ordering::SeqCst), 3, "one run per attempt");
    }
    gw.close().await;
    let _ = connection.close(200, "bye".into()).await;
    service.stop().await.unwrap();
}
