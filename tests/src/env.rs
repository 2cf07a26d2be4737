//! A test's environment: its own namespace prefix for every exchange and queue, a raw
//! lapin connection standing in for an AMQP service, and cleanup of the names the test
//! declared.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use warren_protocol::amqp::{keys, Names};

/// The broker the tests use: `AMQP_ADDR`, default `amqp://127.0.0.1:5672/%2f`.
pub fn amqp_addr() -> String {
    std::env::var("AMQP_ADDR").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".to_string())
}

/// The environment variable that lets a test skip what this machine cannot check:
/// `WARREN_ALLOW_SKIP=1`. Without it, a test that finds a tool it needs missing (the
/// RabbitMQ server scripts for private nodes, a usable `rabbitmqctl`) fails.
pub const ALLOW_SKIP: &str = "WARREN_ALLOW_SKIP";

/// `what` cannot be checked here because `missing`. Fails the test saying so, unless
/// [`ALLOW_SKIP`] is `1`: then it prints that `what` is skipped, and the caller
/// returns without checking it.
///
/// # Panics
/// Unless `WARREN_ALLOW_SKIP=1`.
pub fn cannot_check(what: &str, missing: &str) {
    if std::env::var(ALLOW_SKIP).as_deref() == Ok("1") {
        println!("{what}: SKIPPED, {missing} ({ALLOW_SKIP}=1)");
        return;
    }
    panic!("{what} cannot be checked here: {missing} (set {ALLOW_SKIP}=1 to skip it instead)");
}

/// The channels test gateways serve by default.
pub const CHANNELS: &[&str] = &["chat", "voice", "tickets", "echo"];

/// One test's namespace and raw AMQP access.
pub struct TestEnv {
    /// The namespace prefix, `t-<label>-<random>`.
    pub namespace: String,
    /// AMQP names under that namespace.
    pub names: Names,
    conn: Connection,
    channel: Channel,
    extra_queues: Vec<String>,
}

impl TestEnv {
    /// A fresh namespace; `label` names the test in broker listings.
    ///
    /// # Panics
    /// When RabbitMQ cannot be reached.
    pub async fn new(label: &str) -> TestEnv {
        let rand = uuid::Uuid::new_v4().simple().to_string();
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(24)
            .collect();
        let namespace = format!("t-{label}-{}", &rand[..8]);
        let conn = Connection::connect(&amqp_addr(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ at AMQP_ADDR");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        TestEnv {
            names: Names::new(&namespace),
            namespace,
            conn,
            channel,
            extra_queues: Vec::new(),
        }
    }

    /// Runs `test` in a fresh environment labelled `label` ([`TestEnv::new`]),
    /// bounded by `limit`, then [`TestEnv::cleanup`]s it.
    ///
    /// # Panics
    /// When RabbitMQ cannot be reached, or `test` panics or does not finish within
    /// `limit` (then the namespace is left behind, as a panicking test leaves it).
    pub async fn run(label: &str, limit: Duration, test: impl AsyncFnOnce(&TestEnv)) {
        let env = TestEnv::new(label).await;
        tokio::time::timeout(limit, test(&env))
            .await
            .expect("the test finished in time");
        env.cleanup().await;
    }

    /// The raw channel (confirm mode) for ad-hoc AMQP calls.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// A new raw channel (e.g. for a consumer that a test wants to drop).
    pub async fn new_channel(&self) -> Channel {
        self.conn.create_channel().await.expect("channel")
    }

    /// Publishes `body` to `warren.out` with `key`, as a service would, and waits for
    /// the broker's confirm.
    pub async fn publish_out(&self, key: &str, message_id: &str, body: &str) {
        self.publish(
            &self.names.outbound_exchange(),
            key,
            message_id,
            body,
            FieldTable::default(),
        )
        .await;
    }

    /// Publishes `n` messages to `warren.out` with `key` as one burst: every publish is
    /// sent before any confirm is awaited, so RabbitMQ writes them in chunks of
    /// several. Their message ids are `<prefix><i>`, their bodies `i`. Waits for the
    /// confirms.
    pub async fn publish_out_burst(&self, key: &str, prefix: &str, n: usize) {
        self.publish_out_burst_of(key, prefix, n, |i| i.to_string().into_bytes())
            .await;
    }

    /// [`TestEnv::publish_out_burst`] with the bodies `body(i)`.
    pub async fn publish_out_burst_of(
        &self,
        key: &str,
        prefix: &str,
        n: usize,
        body: impl Fn(usize) -> Vec<u8>,
    ) {
        let mut confirms = Vec::with_capacity(n);
        for i in 0..n {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(ShortString::from(format!("{prefix}{i}")))
                .with_content_type("application/json".into());
            let confirm = self
                .channel
                .basic_publish(
                    ShortString::from(self.names.outbound_exchange()),
                    ShortString::from(key),
                    BasicPublishOptions::default(),
                    &body(i),
                    props,
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirm = confirm.await.expect("confirm");
            assert!(confirm.is_ack(), "broker refused a test publish");
        }
    }

    /// Publishes to any exchange with headers, waiting for the confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        key: &str,
        message_id: &str,
        body: &str,
        headers: FieldTable,
    ) {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(message_id))
            .with_content_type("application/json".into())
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(key),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker refused a test publish");
    }

    /// Publishes a service's reply to a request delivery (`reply_to`, correlation id).
    pub async fn reply_to(&self, request: &Delivery, body: &str, error: Option<&str>) {
        let reply_to = request
            .properties
            .reply_to()
            .clone()
            .expect("request carries reply_to");
        let mut headers = FieldTable::default();
        if let Some(code) = error {
            headers.insert(
                warren_protocol::amqp::H_ERROR.into(),
                AMQPValue::LongString(LongString::from(code)),
            );
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_correlation_id(
                request
                    .properties
                    .correlation_id()
                    .clone()
                    .expect("correlation id"),
            )
            .with_message_id(ShortString::from(uuid::Uuid::new_v4().simple().to_string()))
            .with_headers(headers);
        self.channel
            .basic_publish(
                ShortString::from(""),
                reply_to,
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .expect("publish reply")
            .await
            .expect("reply confirm");
    }

    /// As a service would: takes the next request from `inbound` (within 5 s), replies
    /// `body` (a refusal with code `error`) and acknowledges it.
    pub async fn answer_next(&self, inbound: &mut Consumer, body: &str, error: Option<&str>) {
        let req = next_delivery(inbound, Duration::from_secs(5)).await;
        self.reply_to(&req, body, error).await;
        ack(&req).await;
    }

    /// Starts consuming the inbound queue of `channel` (`IN_<CHANNEL>`) on a channel of
    /// its own, manual ack.
    pub async fn consume_inbound(&self, channel: &str) -> Consumer {
        let ch = self.new_channel().await;
        ch.basic_consume(
            ShortString::from(self.names.channel_queue(channel)),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume inbound")
    }

    /// Takes one message from a queue with basic.get (auto-ack), if there is one.
    pub async fn get(&self, queue: &str) -> Option<Delivery> {
        self.channel
            .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .map(|m| m.delivery)
    }

    /// Deletes the outbound stream, as an operator emptying it would (gateways that
    /// read it find it missing or declared again).
    pub async fn delete_outbound_stream(&self) {
        self.channel
            .queue_delete(
                ShortString::from(self.names.outbound_stream()),
                QueueDeleteOptions::default(),
            )
            .await
            .expect("delete the outbound stream");
    }

    /// The message id of the first message the outbound stream still keeps (what
    /// retention has not deleted), read with a one-message consumer from the
    /// stream's start; `None` when the stream is empty or cannot be read.
    pub async fn outbound_stream_first_id(&self) -> Option<String> {
        let ch = self.new_channel().await;
        ch.basic_qos(1, BasicQosOptions::default()).await.ok()?;
        let mut from_start = FieldTable::default();
        from_start.insert("x-stream-offset".into(), AMQPValue::LongLongInt(0));
        let mut consumer = ch
            .basic_consume(
                ShortString::from(self.names.outbound_stream()),
                "warren-e2e-first".into(),
                BasicConsumeOptions::default(),
                from_start,
            )
            .await
            .ok()?;
        let first = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
        let _ = ch.close(200, "done".into()).await;
        let delivery = first.ok()??.ok()?;
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
    }

    /// How many messages a queue holds (passive declare on a scratch channel).
    pub async fn message_count(&self, queue: &str) -> Option<u32> {
        let ch = self.new_channel().await;
        let q = ch
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = ch.close(200, "done".into()).await;
        Some(q.message_count())
    }

    /// Declares a queue of the test's own (deleted at cleanup) bound to `exchange`.
    pub async fn bind_queue(&mut self, queue: &str, exchange: &str, key: &str) {
        self.channel
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare");
        self.channel
            .queue_bind(
                ShortString::from(queue),
                ShortString::from(exchange),
                ShortString::from(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        self.extra_queues.push(queue.to_string());
    }

    /// Consumes `queue` (a [`TestEnv::bind_queue`] one) on a channel of its own,
    /// without acknowledgements.
    pub async fn consume_no_ack(&self, queue: &str) -> lapin::Consumer {
        self.new_channel()
            .await
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume")
    }

    /// Removes the binding of `channel`'s inbound queue (`IN_<CHANNEL>` from
    /// `warren.in` with `<channel>.#`): nothing receives that channel's messages any
    /// more, so a publish on it is `no_route`.
    pub async fn unbind_inbound(&self, channel: &str) {
        self.channel
            .queue_unbind(
                ShortString::from(self.names.channel_queue(channel)),
                ShortString::from(self.names.inbound_exchange()),
                ShortString::from(keys::inbound_binding(channel)),
                FieldTable::default(),
            )
            .await
            .expect("unbind");
    }

    /// Records a queue (e.g. one a test declared itself) to delete at cleanup.
    pub fn track_queue(&mut self, queue: impl Into<String>) {
        self.extra_queues.push(queue.into());
    }

    /// Deletes the exchanges and queues of the namespace that the gateway's topology
    /// declares (channel streams included), plus tracked queues. Session queues not tracked expire on their own.
    pub async fn cleanup(self) {
        let ch = match self.conn.create_channel().await {
            Ok(c) => c,
            Err(_) => return,
        };
        let mut queues = vec![self.names.dead_letter_queue(), self.names.outbound_stream()];
        queues.extend(CHANNELS.iter().map(|c| self.names.channel_queue(c)));
        queues.extend(CHANNELS.iter().map(|c| self.names.channel_stream(c)));
        queues.extend(self.extra_queues.iter().cloned());
        for q in queues {
            if !ch.status().connected() {
                break;
            }
            let _ = ch
                .queue_delete(ShortString::from(q), QueueDeleteOptions::default())
                .await;
        }
        for x in [
            self.names.inbound_exchange(),
            self.names.outbound_exchange(),
            self.names.gateways_exchange(),
            self.names.services_exchange(),
            self.names.presence_exchange(),
            self.names.dead_letter_exchange(),
        ] {
            if !ch.status().connected() {
                break;
            }
            let _ = ch
                .exchange_delete(ShortString::from(x), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "test done".into()).await;
    }
}

/// Waits for the next delivery of a raw consumer, bounded in time.
///
/// # Panics
/// When nothing arrives within `within`.
pub async fn next_delivery(consumer: &mut Consumer, within: Duration) -> Delivery {
    tokio::time::timeout(within, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("delivery ok")
}

/// The text of header `name` of a raw delivery (a long string as text, any other
/// value as its debug form); `None` when it has no such header.
pub fn header_text(delivery: &Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// Acks a raw delivery.
pub async fn ack(d: &Delivery) {
    d.acker.ack(BasicAckOptions::default()).await.expect("ack");
}

/// Waits, checking every `every`, until `done` holds.
///
/// # Panics
/// With `what` when it does not hold within `within`.
pub async fn wait_until(what: &str, within: Duration, every: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(every).await;
    }
}
