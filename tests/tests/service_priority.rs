//! Priority consumption in the service library (`Service::consume_queues`), over real
//! RabbitMQ: the highest-priority non-empty queue is always served first, a message
//! arriving in a higher queue while a lower one is handled is taken next (pushed to a
//! standing consumer, not found by polling), and a worker stopped, SIGKILLed or cut
//! off from RabbitMQ in the middle of a switch loses nothing and has nothing handled
//! twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio::time::Instant;
use warren_e2e::service::{
    amqp_uri, consume_no_ack, declare_exclusive, in_fresh_namespace, queue_counts, queue_counts_on,
    CuttableProxy, DemoProcess,
};
use warren_protocol::amqp::Names;
use warren_service::{topology, Context, HandlerError, Incoming, Outcome, Service, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(90);

/// The three queues of a test, highest priority first (plain names, unique per
/// namespace).
fn queue_list(ns: &str) -> Vec<String> {
    ["conversions_delta", "conversions_full", "os2ds_conversions"]
        .iter()
        .map(|q| format!("{ns}.{q}"))
        .collect()
}

/// A producer publishing to the work queues through the default exchange, with
/// confirms.
struct Producer {
    connection: Connection,
    channel: Channel,
}

impl Producer {
    async fn connect(ns: &str, queues: &[String]) -> Producer {
        let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ at AMQP_ADDR");
        let names = Names::new(ns);
        for queue in queues {
            topology::declare_work_queue(&connection, &names, queue, &ServiceConfig::default())
                .await
                .expect("declare the work queue");
        }
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Producer {
            connection,
            channel,
        }
    }

    /// Publishes `body` (also its `message_id`) to `queue`, confirmed.
    async fn publish(&self, queue: &str, body: &str) {
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(body))
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }

    /// Publishes a request `body` (also its `message_id` and `correlation_id`) to
    /// `queue`, answered to `reply_to`.
    async fn request(&self, queue: &str, body: &str, reply_to: &str) {
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(body))
            .with_correlation_id(ShortString::from(body))
            .with_reply_to(ShortString::from(reply_to))
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }

    /// Deletes the work queues and closes.
    async fn delete(self, queues: &[String]) {
        for queue in queues {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// What the handler saw: every message body in the order handled (its start), and a
/// signal per handler start.
#[derive(Clone)]
struct Recorder {
    handled: Arc<Mutex<Vec<(String, Instant)>>>,
    started: mpsc::UnboundedSender<String>,
}

impl Recorder {
    fn new() -> (Recorder, mpsc::UnboundedReceiver<String>) {
        let (started, rx) = mpsc::unbounded_channel();
        (
            Recorder {
                handled: Arc::default(),
                started,
            },
            rx,
        )
    }

    /// A handler that records the message, then works `delay`.
    fn handler(
        &self,
        delay: Duration,
    ) -> impl Fn(
        Context,
        Incoming,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Outcome, HandlerError>> + Send>,
    > + Send
           + Sync
           + 'static {
        let recorder = self.clone();
        move |_ctx: Context, msg: Incoming| {
            let recorder = recorder.clone();
            Box::pin(async move {
                let body = String::from_utf8_lossy(&msg.body).to_string();
                recorder
                    .handled
                    .lock()
                    .unwrap()
                    .push((body.clone(), Instant::now()));
                let _ = recorder.started.send(body);
                tokio::time::sleep(delay).await;
                Ok(Outcome::Done)
            })
        }
    }

    fn bodies(&self) -> Vec<String> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .map(|(b, _)| b.clone())
            .collect()
    }

    /// Waits until `n` messages were handled (started), at most `within`.
    async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.handled.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "{n} messages handled within {within:?}; handled {:?}",
                self.bodies()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits for the handler start of `body`.
async fn started(rx: &mut mpsc::UnboundedReceiver<String>, body: &str) {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{body} handled within 20 s"))
            .expect("recorder alive");
        if got == body {
            return;
        }
    }
}

/// A service in `ns`. Connecting may take longer than the library's default 5 s here:
/// the five tests of this file start at once, one of them spawning a demo service,
/// and on a busy 2-core machine RabbitMQ has twice answered a connect with exchange
/// declares after more than 5 s (two fresh `./dev test` runs); what these tests check
/// starts after the connect.
async fn connect(ns: &str) -> Service {
    let config = ServiceConfig {
        connect_timeout: Duration::from_secs(20),
        ..ServiceConfig::default()
    };
    Service::connect_with(&amqp_uri(), Names::new(ns), config)
        .await
        .expect("service connects")
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn higher_priority_messages_present_are_handled_before_any_lower_one() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let queues = queue_list(&ns);
        let producer = Producer::connect(&ns, &queues).await;
        // Mixed load present before the worker starts: lowest queue first.
        for body in ["low1", "low2", "low3"] {
            producer.publish(&queues[2], body).await;
        }
        for body in ["full1", "full2", "full3"] {
            producer.publish(&queues[1], body).await;
        }
        for body in ["delta1", "delta2"] {
            producer.publish(&queues[0], body).await;
        }
        let (recorder, mut rx) = Recorder::new();
        let service = connect(&ns).await;
        service
            .consume_queues(&queues, recorder.handler(Duration::from_millis(150)))
            .await
            .expect("consume by priority");
        // While the second `full` message is handled, a `delta` one arrives: it goes
        // before the third `full`.
        started(&mut rx, "full2").await;
        producer.publish(&queues[0], "delta3").await;
        recorder.wait_for(9, Duration::from_secs(30)).await;
        assert_eq!(
            recorder.bodies(),
            strings(&[
                "delta1", "delta2", "full1", "full2", "delta3", "full3", "low1", "low2", "low3"
            ]),
            "always the highest-priority non-empty queue, FIFO within a queue"
        );
        // Everything was acknowledged.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for queue in &queues {
            assert_eq!(queue_counts(queue).await.0, 0, "{queue} is empty");
        }
        service.stop().await.unwrap();
        producer.delete(&queues).await;
    })
    .await;
}

#[tokio::test]
async fn a_message_arriving_in_an_empty_higher_queue_is_taken_right_after_the_current_one() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let queues = queue_list(&ns);
        let producer = Producer::connect(&ns, &queues).await;
        for body in ["low1", "low2", "low3"] {
            producer.publish(&queues[2], body).await;
        }
        // Long enough to look at the lowest queue while `full1` is handled, on a
        // 2-core machine busy with other tests.
        let handling = Duration::from_millis(1500);
        let counter = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ at AMQP_ADDR");
        let (recorder, mut rx) = Recorder::new();
        let service = connect(&ns).await;
        service
            .consume_queues(&queues, recorder.handler(handling))
            .await
            .expect("consume by priority");
        // Busy on the lowest queue: a message enters the empty middle queue.
        started(&mut rx, "low1").await;
        producer.publish(&queues[1], "full1").await;
        // Busy on the middle one: a message enters the empty top queue.
        started(&mut rx, "full1").await;
        // Only one lower queue at a time: while `full1` is handled, the lowest one's
        // consumer is gone and it holds nothing (both remaining messages ready for
        // other workers). Once `full1` is done the worker moves down again, so the
        // look must begin before that.
        let full1_done = recorder.handled.lock().unwrap().last().expect("full1").1 + handling;
        loop {
            let looked = Instant::now();
            let counts = queue_counts_on(&counter, &queues[2]).await;
            if counts == (2, 0) {
                break;
            }
            assert!(
                looked < full1_done,
                "the lowest queue released while full1 is handled: (ready, consumers) = {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = counter.close(200, "ok".into()).await;
        producer.publish(&queues[0], "delta1").await;
        recorder.wait_for(5, Duration::from_secs(30)).await;
        assert_eq!(
            recorder.bodies(),
            strings(&["low1", "full1", "delta1", "low2", "low3"]),
            "each higher message is taken next, before the next lower one"
        );
        // Taken as soon as the current message was done, not at a poll 5 s later:
        // the start of `full1` follows the start of `low1` by about one handling
        // time.
        let handled = recorder.handled.lock().unwrap().clone();
        let gap = handled[1].1 - handled[0].1;
        assert!(
            gap < handling + Duration::from_millis(2400),
            "the switch waited {gap:?}, like a polling worker"
        );
        service.stop().await.unwrap();
        producer.delete(&queues).await;
    })
    .await;
}

#[tokio::test]
async fn a_worker_stopped_in_the_middle_of_a_switch_loses_nothing_and_handles_nothing_twice() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let queues = queue_list(&ns);
        let producer = Producer::connect(&ns, &queues).await;
        for body in ["low1", "low2", "low3", "low4"] {
            producer.publish(&queues[2], body).await;
        }
        let (recorder, mut rx) = Recorder::new();
        let first = connect(&ns).await;
        first
            .consume_queues(&queues, recorder.handler(Duration::from_millis(500)))
            .await
            .expect("consume by priority");
        started(&mut rx, "low1").await;
        // Higher messages arrive (pushed to the standing consumers, held), and the
        // worker is stopped while `low1` is still in progress.
        for body in ["delta1", "delta2"] {
            producer.publish(&queues[0], body).await;
        }
        for body in ["full1", "full2"] {
            producer.publish(&queues[1], body).await;
        }
        first.stop().await.unwrap();
        let after_first = recorder.bodies().len();

        let second = connect(&ns).await;
        second
            .consume_queues(&queues, recorder.handler(Duration::from_millis(50)))
            .await
            .expect("consume by priority");
        recorder.wait_for(8, Duration::from_secs(30)).await;
        // Nothing more comes (no copy of any message).
        tokio::time::sleep(Duration::from_millis(800)).await;
        let bodies = recorder.bodies();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for body in &bodies {
            *counts.entry(body.clone()).or_default() += 1;
        }
        let all = [
            "delta1", "delta2", "full1", "full2", "low1", "low2", "low3", "low4",
        ];
        for body in all {
            assert_eq!(
                counts.get(body),
                Some(&1),
                "{body} handled once: {bodies:?}"
            );
        }
        assert_eq!(bodies.len(), all.len(), "nothing else: {bodies:?}");
        // And the second worker served by priority what the first handed back.
        let rest: Vec<&str> = bodies[after_first..].iter().map(String::as_str).collect();
        let expected: Vec<&str> = ["delta1", "delta2", "full1", "full2", "low2", "low3", "low4"]
            .into_iter()
            .filter(|b| rest.contains(b))
            .collect();
        assert_eq!(rest, expected, "by priority after the restart");
        for queue in &queues {
            assert_eq!(
                queue_counts(queue).await,
                (0, 1),
                "{queue}: all acknowledged, consumed"
            );
        }
        second.stop().await.unwrap();
        producer.delete(&queues).await;
    })
    .await;
}

/// The next reply: its `correlation_id` and the queue it says it came from.
async fn next_reply(replies: &mut lapin::Consumer) -> (String, String) {
    let delivery = tokio::time::timeout(Duration::from_secs(20), replies.next())
        .await
        .expect("a reply within 20 s")
        .expect("reply stream")
        .expect("reply");
    let json: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON");
    let id = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string())
        .expect("correlation_id");
    (id, json["queue"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_demo_worker_killed_in_the_middle_of_a_switch_loses_nothing_and_answers_once() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let queues = queue_list(&ns);
        let producer = Producer::connect(&ns, &queues).await;
        let replies_channel = producer.connection.create_channel().await.expect("channel");
        let reply_queue = declare_exclusive(&replies_channel, "", "reply queue").await;
        let mut replies = consume_no_ack(&replies_channel, &reply_queue, "replies").await;
        for body in ["low1", "low2", "low3"] {
            producer.request(&queues[2], body, &reply_queue).await;
        }
        let list = queues.join(" ");
        let args = ["--queue-priority", list.as_str(), "--delay-ms", "1500"];
        let mut first = DemoProcess::spawn(&ns, &args).await;
        // `low1` answered: `low2` is in progress (1.5 s) when higher requests arrive
        // (pushed to the standing consumers) and the worker is killed.
        assert_eq!(
            next_reply(&mut replies).await,
            ("low1".to_string(), queues[2].clone())
        );
        producer.request(&queues[0], "delta1", &reply_queue).await;
        producer.request(&queues[1], "full1", &reply_queue).await;
        first.kill().await;

        let mut second = DemoProcess::spawn(&ns, &["--queue-priority", list.as_str()]).await;
        let mut answered = Vec::new();
        for _ in 0..4 {
            answered.push(next_reply(&mut replies).await.0);
        }
        assert_eq!(
            answered,
            strings(&["delta1", "full1", "low2", "low3"]),
            "nothing lost, by priority after the kill"
        );
        // No second answer to anything.
        let extra = tokio::time::timeout(Duration::from_millis(800), replies.next()).await;
        assert!(extra.is_err(), "no further reply: {extra:?}");
        assert!(second.terminate().await, "the worker stops cleanly");
        producer.delete(&queues).await;
    })
    .await;
}

#[tokio::test]
async fn a_worker_whose_connection_drops_mid_switch_consumes_again_by_priority_and_loses_nothing() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let queues = queue_list(&ns);
        let producer = Producer::connect(&ns, &queues).await;
        for body in ["low1", "low2", "low3"] {
            producer.publish(&queues[2], body).await;
        }
        let proxy = CuttableProxy::start().await;
        let (recorder, mut rx) = Recorder::new();
        let service = Service::connect(&proxy.uri, Names::new(&ns))
            .await
            .expect("service connects through the proxy");
        service
            .consume_queues(&queues, recorder.handler(Duration::from_millis(400)))
            .await
            .expect("consume by priority");
        started(&mut rx, "low1").await;
        producer.publish(&queues[0], "delta1").await;
        producer.publish(&queues[1], "full1").await;
        // The connection drops while `low1` is handled and `delta1` is held.
        proxy.cut();
        recorder.wait_for(5, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            recorder.bodies(),
            strings(&["low1", "delta1", "full1", "low2", "low3"]),
            "consuming again from the top; `low1`, redelivered, is recognised, not handled twice"
        );
        for queue in &queues {
            assert_eq!(queue_counts(queue).await.0, 0, "{queue}: all acknowledged");
        }
        service.stop().await.unwrap();
        drop(proxy);
        producer.delete(&queues).await;
    })
    .await;
}

/// One handler run at a time holds when a consumer is lost: the worker consumes again
/// at once (its connection is up; RabbitMQ cancelled a consumer, its queue deleted),
/// and the message it takes first waits for the handler still running, whose message
/// is not handed back (below) to wait in the duplicate window for it.
#[tokio::test]
async fn a_worker_losing_a_consumer_handles_the_next_message_after_the_one_in_progress() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let queues = queue_list(&ns);
        let producer = Producer::connect(&ns, &queues).await;
        producer.publish(&queues[2], "low1").await;
        let (recorder, mut rx) = Recorder::new();
        let service = connect(&ns).await;
        service
            .consume_queues(&queues, recorder.handler(Duration::from_secs(3)))
            .await
            .expect("consume by priority");
        started(&mut rx, "low1").await;
        // The worker's standing consumer of the middle queue is cancelled; then a
        // message comes to the top queue, which the worker consumes again at once.
        producer
            .channel
            .queue_delete(queues[1].as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete the middle queue");
        tokio::time::sleep(Duration::from_millis(500)).await;
        producer.publish(&queues[0], "delta1").await;
        recorder.wait_for(2, Duration::from_secs(30)).await;
        let handled = recorder.handled.lock().unwrap().clone();
        assert_eq!(recorder.bodies(), strings(&["low1", "delta1"]));
        let gap = handled[1].1 - handled[0].1;
        assert!(
            gap >= Duration::from_secs(3),
            "delta1 began {gap:?} after low1, whose handler takes 3 s: two at once"
        );
        // delta1's handler ends; nothing else is handled.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(recorder.bodies(), strings(&["low1", "delta1"]));
        for queue in &queues {
            assert_eq!(queue_counts(queue).await.0, 0, "{queue}: all acknowledged");
        }
        service.stop().await.unwrap();
        producer.delete(&queues).await;
    })
    .await;
}

/// A worker whose consumer RabbitMQ cancels (its queue deleted), its connection still
/// up, keeps the message in progress until its handler acknowledges it. Its channel
/// was closed at once: the message went back to its queue while the handler ran, and
/// another worker handled it too.
#[tokio::test]
async fn a_worker_losing_a_consumer_keeps_the_message_in_progress_from_other_workers() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let queues = queue_list(&ns);
        let producer = Producer::connect(&ns, &queues).await;
        producer.publish(&queues[2], "low1").await;
        let (recorder, mut rx) = Recorder::new();
        let first = connect(&ns).await;
        first
            .consume_queues(&queues, recorder.handler(Duration::from_secs(3)))
            .await
            .expect("consume by priority");
        started(&mut rx, "low1").await;
        // A second worker on the lowest queue only, idle.
        let second = connect(&ns).await;
        second
            .consume_queues(&queues[2..], recorder.handler(Duration::from_millis(50)))
            .await
            .expect("consume the lowest queue");
        // The first worker's consumer of the top queue is cancelled.
        producer
            .channel
            .queue_delete(queues[0].as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete the top queue");
        // The first handler ends after 3 s; time for a copy to be handled after it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            recorder.bodies(),
            strings(&["low1"]),
            "low1 handled by both workers"
        );
        assert_eq!(queue_counts(&queues[2]).await.0, 0, "low1 acknowledged");
        first.stop().await.unwrap();
        second.stop().await.unwrap();
        producer.delete(&queues).await;
    })
    .await;
}

/// A worker that starts before any gateway, given a channel's `IN_<CHANNEL>` queue
/// and a tenant's in its list, declares them as the gateways would: the shared
/// inbound bounds and dead-lettering (an active declare with exactly those arguments
/// succeeds; RabbitMQ refuses one that differs), and `IN_CHAT` bound to `warren.in`,
/// so a client's write reaches the worker. As plain work queues they had no length
/// bound, and the gateways then used them as they were.
#[tokio::test]
async fn a_channel_queue_in_the_list_is_declared_as_the_gateways_declare_it() {
    use lapin::options::QueueDeclareOptions;
    in_fresh_namespace(LIMIT, |ns| async move {
        let names = Names::new(&ns);
        let channel_queue = names.channel_queue("chat");
        let tenant_queue = format!("{channel_queue}.acme");
        let low = format!("{ns}.low");
        let queues = vec![channel_queue.clone(), tenant_queue.clone(), low.clone()];
        let (recorder, _rx) = Recorder::new();
        let service = connect(&ns).await;
        service
            .consume_queues(&queues, recorder.handler(Duration::ZERO))
            .await
            .expect("consume by priority");

        let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ at AMQP_ADDR");
        let expected = warren_e2e::service::expected_inbound_arguments(&names, None);
        for queue in [&channel_queue, &tenant_queue] {
            // A refused declare closes its channel: one channel per check.
            let channel = connection.create_channel().await.expect("channel");
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    expected.clone(),
                )
                .await
                .unwrap_or_else(|e| {
                    panic!("{queue} has exactly the gateway's inbound arguments: {e}")
                });
            let _ = channel.close(200, "checked".into()).await;
        }

        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        channel
            .basic_publish(
                names.inbound_exchange().as_str().into(),
                "chat.note".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                b"written before any gateway",
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(ShortString::from("early-1")),
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
        recorder.wait_for(1, Duration::from_secs(20)).await;
        assert_eq!(recorder.bodies(), strings(&["written before any gateway"]));

        service.stop().await.unwrap();
        for queue in &queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    })
    .await;
}

/// A worker whose `consume_queues` fails (here its queue is another connection's
/// exclusive queue, so RabbitMQ refuses every declaration of it) and which goes on
/// running does not announce that queue's channel: only what it does consume. It
/// announced the channel before the declarations, and went on heartbeating it after
/// they failed, so gateways held the channel's requests until they timed out instead
/// of answering `no_service` at once.
#[tokio::test]
async fn a_worker_whose_queues_cannot_be_declared_does_not_announce_their_channel() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let names = Names::new(&ns);
        let locked = names.channel_queue("locked");
        let owner = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ at AMQP_ADDR");
        let owner_channel = owner.create_channel().await.expect("channel");
        declare_exclusive(&owner_channel, &locked, "the locked queue").await;

        let config =
            ServiceConfig::default().with_announce_interval(Some(Duration::from_millis(300)));
        let service = Service::connect_with(&amqp_uri(), names.clone(), config)
            .await
            .expect("the service connects");
        let watcher = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ at AMQP_ADDR");
        let ch = watcher.create_channel().await.expect("channel");
        let queue = declare_exclusive(&ch, "", "announcements queue").await;
        ch.queue_bind(
            queue.as_str().into(),
            names.services_exchange().as_str().into(),
            "".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("bind to the services exchange");
        let mut announcements = consume_no_ack(&ch, &queue, "consume announcements").await;

        let done = |_ctx: Context, _m: Incoming| async { Ok::<_, HandlerError>(Outcome::Done) };
        let refused = service.consume_queues(&[locked.as_str()], done).await;
        assert!(refused.is_err(), "the declaration is refused: {refused:?}");
        service
            .consume("echo", done)
            .await
            .expect("the service consumes echo");

        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_secs(2);
        while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, announcements.next()).await {
            let a: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
            seen.push(a["channels"].clone());
        }
        assert!(
            seen.iter()
                .any(|c| c.as_array().is_some_and(|c| c.iter().any(|c| c == "echo"))),
            "echo is announced: {seen:?}"
        );
        assert!(
            !seen.iter().any(|c| c
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "locked"))),
            "the channel it could not consume is not announced: {seen:?}"
        );
        service.stop().await.unwrap();
        let _ = watcher.close(200, "bye".into()).await;
        let _ = owner.close(200, "bye".into()).await;
    })
    .await;
}
