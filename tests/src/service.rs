//! Test helpers for the service side: start the demo service in-process for a test
//! namespace, spawn the `warren-demo-service` binary as a child process (so a test can
//! SIGKILL it), and a raw-lapin stand-in gateway that publishes to `warren.in` with the
//! contract's headers and reads replies and relays the way a gateway would.
//!
//! Helpers panic with a clear message instead of returning errors: they run in tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use warren_protocol::amqp::{
    keys, Names, H_BROADCAST, H_CHANNEL, H_DIRECT, H_ERROR, H_GATEWAY, H_GROUPS, H_REQUEST_ID,
    H_SESSION, H_SUBJECT, H_USER,
};
use warren_protocol::Distribution;
use warren_service::demo::{self, DemoHandle, DemoOptions};

use crate::binary::{child_command, workspace_binary};

/// The RabbitMQ the tests use: `AMQP_ADDR`, default `amqp://127.0.0.1:5672/%2f`.
pub fn amqp_uri() -> String {
    std::env::var("AMQP_ADDR").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".to_string())
}

/// A fresh namespace for one test: `t-<8 hex digits>`.
pub fn test_namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t-{}", &id[..8])
}

/// Runs `test` with a fresh [`test_namespace`], bounded by `limit`, then deletes
/// what the namespace declared ([`delete_namespace`]).
///
/// # Panics
///
/// When `test` panics or does not finish within `limit` (then the namespace is left
/// behind, as a panicking test leaves it).
pub async fn in_fresh_namespace<F, Fut>(limit: Duration, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ns = test_namespace();
    tokio::time::timeout(limit, test(ns.clone()))
        .await
        .expect("the test finished in time");
    delete_namespace(&ns).await;
}

/// Starts the demo service (all channels) in-process for `namespace`; it consumes
/// when this returns.
pub async fn start_demo(namespace: &str) -> DemoHandle {
    start_demo_with(namespace, DemoOptions::default()).await
}

/// Starts the demo service in-process with options.
pub async fn start_demo_with(namespace: &str, options: DemoOptions) -> DemoHandle {
    tokio::time::timeout(
        Duration::from_secs(20),
        demo::start_with(&amqp_uri(), Names::new(namespace), options),
    )
    .await
    .expect("the demo service started within 20 s")
    .expect("the demo service starts")
}

/// Deletes `queue` (as an operator would, with whatever it holds).
pub async fn delete_queue(queue: &str) {
    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_ADDR");
    let ch = connection.create_channel().await.expect("channel");
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("delete {queue}: {e}"));
    let _ = connection.close(200, "deleted".into()).await;
}

/// Deletes what a test namespace declared on the broker: the channel queues, the
/// dead-letter queue and the three exchanges. Best effort.
pub async fn delete_namespace(namespace: &str) {
    let names = Names::new(namespace);
    let Ok(connection) = Connection::connect(&amqp_uri(), ConnectionProperties::default()).await
    else {
        return;
    };
    let mut queues: Vec<String> = ["chat", "tickets", "voice", "echo"]
        .iter()
        .map(|c| names.channel_queue(c))
        .collect();
    queues.push(names.dead_letter_queue());
    queues.push(names.outbound_stream());
    for queue in queues {
        if let Ok(ch) = connection.create_channel().await {
            let _ = ch
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for exchange in [
        names.inbound_exchange(),
        names.outbound_exchange(),
        names.services_exchange(),
        names.dead_letter_exchange(),
    ] {
        if let Ok(ch) = connection.create_channel().await {
            let _ = ch
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "cleanup".into()).await;
}

/// Waits (looking every 50 ms) until `queue`'s counts, (ready, consumers) as
/// [`queue_counts`] reads them, satisfy `ok`.
///
/// # Panics
/// With `what` and the last counts when they do not within `within`.
pub async fn wait_for_counts(
    queue: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(u32, u32) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (ready, consumers) = queue_counts(queue).await;
        if ok(ready, consumers) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} ({queue}: {ready} ready, {consumers} consumers after {within:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages ready (not delivered to a consumer) in `queue`, and its consumers, read
/// with a passive declare (no management plugin needed).
pub async fn queue_counts(queue: &str) -> (u32, u32) {
    let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_ADDR");
    let counts = queue_counts_on(&connection, queue).await;
    let _ = connection.close(200, "ok".into()).await;
    counts
}

/// [`queue_counts`] on a connection of the caller's: a test that polls the counts
/// does not pay a connection handshake (hundreds of milliseconds on a busy broker)
/// per look.
pub async fn queue_counts_on(connection: &Connection, queue: &str) -> (u32, u32) {
    let ch = connection.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable().passive(),
            FieldTable::default(),
        )
        .await
        .expect("the queue exists");
    let _ = ch.close(200, "ok".into()).await;
    (q.message_count(), q.consumer_count())
}

/// Waits (at most `within`) until a consumer of `queue` holds what was sent to it:
/// none ready, exactly `consumers` consumers, and at least one message delivered and
/// not acknowledged yet ([`queue_unacknowledged`]). No ready message alone cannot
/// tell: the queue holds none before the message reached it either. The management
/// API refreshes its figures every 5 s, so this can take as long. Panics when that
/// does not happen in time.
pub async fn wait_until_held(queue: &str, consumers: u32, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (ready, now) = queue_counts(queue).await;
        let held = if ready == 0 && now == consumers {
            queue_unacknowledged(queue).await
        } else {
            None
        };
        if held.is_some_and(|n| n >= 1) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue}: {ready} ready, {held:?} unacknowledged, {now} consumers after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The messages of `queue` delivered to consumers and not acknowledged yet, as
/// RabbitMQ's management API ([`crate::gateway::management_url`], the credentials of
/// [`amqp_uri`]) reports them; `None` while it does not list the queue. Its figures
/// are refreshed every 5 s (`collect_statistics_interval`): a look can be that late.
///
/// # Panics
/// When the management API cannot be reached or refuses the look.
pub async fn queue_unacknowledged(queue: &str) -> Option<u64> {
    let uri: lapin::uri::AMQPUri = amqp_uri().parse().expect("AMQP_ADDR");
    let credentials = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            uri.authority.userinfo.username, uri.authority.userinfo.password
        ))
    };
    let url = crate::gateway::management_url();
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let addr = tokio::net::lookup_host(host)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("the management API's address ({url})"));
    let path = format!(
        "/api/queues/{}/{}",
        percent_encoded(&uri.vhost),
        percent_encoded(queue)
    );
    let (status, _, body) = crate::gateway::http_get_with(
        addr,
        &path,
        &[("Authorization", &format!("Basic {credentials}"))],
    )
    .await;
    match status {
        200 => {}
        404 => return None,
        _ => panic!("the management API at {url} answered GET {path} with {status}: {body}"),
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
    v["messages_unacknowledged"].as_u64()
}

/// `text` with every byte but the URL-safe ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
fn percent_encoded(text: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

/// The path of the `warren-demo-service` binary: `WARREN_DEMO_SERVICE_BIN` (or
/// `WARREN_SERVICE_BIN`, as `./dev` exports it) when set and present, else built once
/// per test process with `cargo build` next to the test binary.
pub fn demo_service_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        workspace_binary(
            "warren-service",
            "warren-demo-service",
            &["WARREN_DEMO_SERVICE_BIN", "WARREN_SERVICE_BIN"],
        )
    })
    .clone()
}

/// The demo service running as a child process.
#[derive(Debug)]
pub struct DemoProcess {
    child: Child,
    pid: u32,
}

impl DemoProcess {
    /// Spawns `warren-demo-service --namespace <ns> <args>` on the tests' RabbitMQ
    /// ([`amqp_uri`]) and waits (at most 30 s) until it prints `READY`. Its log goes to
    /// the test's stderr, filtered by `WARREN_TEST_SERVICE_LOG` (default `warn`).
    pub async fn spawn(namespace: &str, args: &[&str]) -> DemoProcess {
        DemoProcess::spawn_on(&amqp_uri(), namespace, args).await
    }

    /// Like [`DemoProcess::spawn`], on `amqp_uri` (one URI, or several separated by
    /// commas to fail over between).
    pub async fn spawn_on(amqp_uri: &str, namespace: &str, args: &[&str]) -> DemoProcess {
        let binary = tokio::task::spawn_blocking(demo_service_binary)
            .await
            .expect("binary lookup");
        let mut command = child_command(&binary, "WARREN_TEST_SERVICE_LOG");
        command
            .arg("--amqp-uri")
            .arg(amqp_uri)
            .arg("--namespace")
            .arg(namespace)
            .args(args);
        DemoProcess::ready(command, &binary).await
    }

    /// `warren-demo-service --amqp-uri <the tests' RabbitMQ> <args>`, with none of the
    /// test's `WARREN_*` variables (nor `QUEUE_PRIORITY`): what `args` say (or a file
    /// they name) is all it is told. Waits for `READY` as [`DemoProcess::spawn`] does.
    pub async fn spawn_told_only(args: &[&str]) -> DemoProcess {
        let binary = tokio::task::spawn_blocking(demo_service_binary)
            .await
            .expect("binary lookup");
        let mut command = child_command(&binary, "WARREN_TEST_SERVICE_LOG");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WARREN_") || name == "QUEUE_PRIORITY" {
                command.env_remove(name);
            }
        }
        command.arg("--amqp-uri").arg(amqp_uri()).args(args);
        DemoProcess::ready(command, &binary).await
    }

    /// Spawns `command` and waits (at most 30 s) until it prints `READY`.
    async fn ready(mut command: tokio::process::Command, binary: &Path) -> DemoProcess {
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let pid = child.id().expect("the child has a pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "READY" {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(ready, Ok(true)),
            "warren-demo-service printed READY within 30 s"
        );
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        DemoProcess { child, pid }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILL: the process dies at once, acknowledging nothing more.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL sent");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// SIGTERM, then waits (at most 20 s) for the exit; returns whether it exited 0.
    pub async fn terminate(&mut self) -> bool {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        }
    }
}

/// Declares an exclusive, auto-delete queue `name` on `channel` (`""`: the broker
/// names it); its name.
///
/// # Panics
/// When the broker refuses; the message starts with `what`.
pub async fn declare_exclusive(channel: &Channel, name: &str, what: &str) -> String {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
        .name()
        .to_string()
}

/// Consumes `queue` on `channel` without acks (the broker forgets each delivery once
/// sent).
///
/// # Panics
/// When the broker refuses; the message starts with `what`.
pub async fn consume_no_ack(channel: &Channel, queue: &str, what: &str) -> Consumer {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

/// A reply read from the stand-in gateway's reply queue.
#[derive(Debug, Clone)]
pub struct AmqpReply {
    /// The `correlation_id` (the request's frame id).
    pub correlation_id: Option<String>,
    /// The reply's `message_id`.
    pub message_id: Option<String>,
    /// The `x-warren-error` code of a refusal.
    pub error: Option<String>,
    /// Headers as strings.
    pub headers: BTreeMap<String, String>,
    /// The raw body.
    pub body: Vec<u8>,
}

impl AmqpReply {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the reply body is JSON")
    }
}

/// A message read from `warren.out` by an [`Observer`].
#[derive(Debug, Clone)]
pub struct Observed {
    /// Routing key of the publish.
    pub routing_key: String,
    /// The `message_id`.
    pub message_id: Option<String>,
    /// Headers as strings (the `CC` array is in [`Observed::cc`]).
    pub headers: BTreeMap<String, String>,
    /// The `CC` header's routing keys.
    pub cc: Vec<String>,
    /// The raw body.
    pub body: Vec<u8>,
}

/// A queue bound to `warren.out` with some keys, standing in for a client's session
/// queue.
pub struct Observer {
    consumer: Consumer,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

impl Observer {
    /// The next message, or `None` when none arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Observed> {
        let delivery = tokio::time::timeout(wait, self.consumer.next())
            .await
            .ok()??
            .expect("observer delivery");
        let mut headers = BTreeMap::new();
        let mut cc = Vec::new();
        if let Some(table) = delivery.properties.headers() {
            for (k, v) in table.inner() {
                if k.as_str() == "CC" {
                    if let AMQPValue::FieldArray(a) = v {
                        cc = a.as_slice().iter().filter_map(text).collect();
                    }
                } else if let Some(v) = text(v) {
                    headers.insert(k.to_string(), v);
                }
            }
        }
        Some(Observed {
            routing_key: delivery.routing_key.to_string(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
            headers,
            cc,
            body: delivery.data,
        })
    }

    /// Every message arriving within `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<Observed> {
        let mut out = Vec::new();
        while let Some(m) = self.next(wait).await {
            out.push(m);
        }
        out
    }
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A raw-lapin stand-in for a gateway: publishes to `warren.in` with the contract's
/// properties and headers, for one user and session, and reads replies from its own
/// exclusive reply queue.
pub struct StandInGateway {
    /// The names of the test namespace.
    pub names: Names,
    /// The user id put in `x-warren-user` and in `message_id`s.
    pub user: String,
    /// The session id put in `x-warren-session`.
    pub session: String,
    /// The reply queue (`<ns>.test.reply.<session>`).
    pub reply_queue: String,
    connection: Connection,
    channel: Channel,
    replies: Consumer,
}

impl std::fmt::Debug for StandInGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandInGateway")
            .field("user", &self.user)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl StandInGateway {
    /// Connects as `user` with a fresh session and an exclusive reply queue.
    pub async fn connect(namespace: &str, user: &str) -> StandInGateway {
        let names = Names::new(namespace);
        let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("stand-in gateway connects");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let session = uuid::Uuid::new_v4().simple().to_string();
        let reply_queue = format!("{}test.reply.{session}", names.prefix());
        declare_exclusive(&channel, &reply_queue, "reply queue").await;
        let replies = consume_no_ack(&channel, &reply_queue, "consume replies").await;
        StandInGateway {
            names,
            user: user.to_string(),
            session,
            reply_queue,
            connection,
            channel,
            replies,
        }
    }

    fn properties(
        &self,
        channel: &str,
        frame_id: &str,
        distribution: Option<&Distribution>,
        subject: Option<&str>,
    ) -> BasicProperties {
        let mut h = FieldTable::default();
        let s = |v: &str| AMQPValue::LongString(LongString::from(v));
        let list = |items: &[String]| {
            AMQPValue::FieldArray(FieldArray::from(
                items.iter().map(|i| s(i)).collect::<Vec<_>>(),
            ))
        };
        h.insert(H_SESSION.into(), s(&self.session));
        h.insert(H_USER.into(), s(&self.user));
        h.insert(H_GATEWAY.into(), s("stand-in"));
        h.insert(H_CHANNEL.into(), s(channel));
        if let Some(subject) = subject {
            h.insert(H_SUBJECT.into(), s(subject));
        }
        if let Some(d) = distribution {
            if d.broadcast {
                h.insert(H_BROADCAST.into(), AMQPValue::Boolean(true));
            }
            if !d.groups.is_empty() {
                h.insert(H_GROUPS.into(), list(&d.groups));
            }
            if !d.direct.is_empty() {
                h.insert(H_DIRECT.into(), list(&d.direct));
            }
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_app_id("warren-gateway".into())
            .with_message_id(ShortString::from(format!("{}:{frame_id}", self.user)))
            .with_headers(h)
    }

    /// The properties a gateway puts on a client's message on `channel` with frame id
    /// `frame_id` (no distribution, no request addressing): a start for a test that
    /// sends what a gateway would not ([`StandInGateway::publish_raw`]).
    pub fn gateway_properties(&self, channel: &str, frame_id: &str) -> BasicProperties {
        self.properties(channel, frame_id, None, None)
    }

    /// Publishes `body` with `properties` as they are to `warren.in` for `channel`.
    pub async fn publish_raw(&self, channel: &str, body: &[u8], properties: BasicProperties) {
        self.publish_in(channel, body, properties).await;
    }

    async fn publish_in(&self, channel: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                self.names.inbound_exchange().into(),
                keys::inbound(channel, None).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        match confirm {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(returned)) => {
                panic!(
                    "no_route: nothing bound for {channel} ({})",
                    returned.reply_text
                )
            }
            other => panic!("the broker did not accept the publish: {other:?}"),
        }
    }

    /// A client `publish` on `channel` with frame id `frame_id`, as a gateway sends it.
    pub async fn publish(
        &self,
        channel: &str,
        frame_id: &str,
        message: &str,
        distribution: &Distribution,
    ) {
        let props = self.properties(channel, frame_id, Some(distribution), None);
        self.publish_in(channel, message.as_bytes(), props).await;
    }

    /// A client `request` on `channel`: `reply_to` = the reply queue,
    /// `correlation_id` = `frame_id`, `expiration` = `timeout`.
    pub async fn send_request(
        &self,
        channel: &str,
        frame_id: &str,
        message: &str,
        timeout: Duration,
    ) {
        let mut props = self
            .properties(channel, frame_id, None, None)
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(frame_id.into())
            .with_expiration(timeout.as_millis().to_string().into());
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            H_REQUEST_ID.into(),
            AMQPValue::LongString(LongString::from(frame_id)),
        );
        props = props.with_headers(headers);
        self.publish_in(channel, message.as_bytes(), props).await;
    }

    /// Sends a request and waits (at most 10 s) for its reply.
    pub async fn request(&mut self, channel: &str, frame_id: &str, message: &str) -> AmqpReply {
        self.send_request(channel, frame_id, message, Duration::from_secs(10))
            .await;
        let reply = self
            .next_reply(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("a reply to {frame_id} within 10 s"));
        assert_eq!(reply.correlation_id.as_deref(), Some(frame_id));
        reply
    }

    /// The next reply, or `None` when none arrives within `wait`.
    pub async fn next_reply(&mut self, wait: Duration) -> Option<AmqpReply> {
        let delivery = tokio::time::timeout(wait, self.replies.next())
            .await
            .ok()??
            .expect("reply delivery");
        let headers: BTreeMap<String, String> = delivery
            .properties
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .filter_map(|(k, v)| text(v).map(|v| (k.to_string(), v)))
                    .collect()
            })
            .unwrap_or_default();
        Some(AmqpReply {
            correlation_id: delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.to_string()),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
            error: headers.get(H_ERROR).cloned(),
            headers,
            body: delivery.data,
        })
    }

    /// A queue bound to `warren.out` with `routing_keys`, like a session subscribed to
    /// them.
    pub async fn observe(&self, routing_keys: &[String]) -> Observer {
        let ch = self.connection.create_channel().await.expect("channel");
        let queue = declare_exclusive(&ch, "", "observer queue").await;
        for key in routing_keys {
            ch.queue_bind(
                queue.as_str().into(),
                self.names.outbound_exchange().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind observer");
        }
        let consumer = consume_no_ack(&ch, &queue, "consume observer").await;
        Observer { consumer }
    }

    /// Messages ready (not delivered to a consumer) in `queue`, and its consumers.
    pub async fn queue_counts(&self, queue: &str) -> (u32, u32) {
        queue_counts_on(&self.connection, queue).await
    }

    /// Closes the connection (the exclusive queues go with it).
    pub async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// The next message in `names`' `warren.dead` queue, taken.
pub async fn take_parked(names: &Names) -> Option<lapin::message::Delivery> {
    let conn = Connection::connect(&amqp_uri(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let parked = ch
        .basic_get(
            names.dead_letter_queue().as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .map(|m| m.delivery);
    let _ = conn.close(200, "bye".into()).await;
    parked
}

/// A service in `namespace` (with `config`) consuming `echo` with `handler`, which is
/// given how many calls came before this one (0 for the first); returns the service and
/// the count of calls so far.
pub async fn counted_echo<F, Fut>(
    namespace: &str,
    config: warren_service::ServiceConfig,
    handler: F,
) -> (
    warren_service::Service,
    std::sync::Arc<std::sync::atomic::AtomicU32>,
)
where
    F: Fn(u32, warren_service::Incoming) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<warren_service::Outcome, warren_service::HandlerError>>
        + Send
        + 'static,
{
    counted_echo_on(&amqp_uri(), namespace, config, handler).await
}

/// [`counted_echo`] connected to RabbitMQ at `uri` (e.g. a [`CuttableProxy`]'s).
pub async fn counted_echo_on<F, Fut>(
    uri: &str,
    namespace: &str,
    config: warren_service::ServiceConfig,
    handler: F,
) -> (
    warren_service::Service,
    std::sync::Arc<std::sync::atomic::AtomicU32>,
)
where
    F: Fn(u32, warren_service::Incoming) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<warren_service::Outcome, warren_service::HandlerError>>
        + Send
        + 'static,
{
    use std::sync::atomic::{AtomicU32, Ordering};
    let calls = std::sync::Arc::new(AtomicU32::new(0));
    let service = warren_service::Service::connect_with(uri, Names::new(namespace), config)
        .await
        .expect("the service connects");
    let seen = calls.clone();
    service
        .consume(
            "echo",
            move |_ctx: warren_service::Context, m: warren_service::Incoming| {
                handler(seen.fetch_add(1, Ordering::SeqCst), m)
            },
        )
        .await
        .expect("the service consumes echo");
    (service, calls)
}

/// The arguments an `IN_<CHANNEL>` queue of namespace `names` has with the default
/// settings (quorum, dead-lettering to `warren.dead`, the shared inbound bounds
/// `warren_protocol::amqp::QueueBounds::INBOUND`) and `ttl_ms`, written out: an active
/// declare with exactly these succeeds on such a queue and RabbitMQ refuses it
/// (`PRECONDITION_FAILED`) on one that differs (a passive declare cannot show them).
pub fn expected_inbound_arguments(names: &Names, ttl_ms: Option<i64>) -> FieldTable {
    let mut expected = FieldTable::default();
    expected.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    expected.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names.dead_letter_exchange().into()),
    );
    if let Some(ttl) = ttl_ms {
        expected.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    }
    expected.insert("x-max-length".into(), AMQPValue::LongLongInt(100_000));
    expected.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(1024 * 1024 * 1024),
    );
    expected.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    expected
}

/// A TCP proxy in front of RabbitMQ whose connections can be cut, as a network
/// failure would: the service's connection drops while RabbitMQ stays up.
pub struct CuttableProxy {
    /// The AMQP URI to connect through the proxy.
    pub uri: String,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// While set, new connections are closed at once ([`CuttableProxy::hold_off`]).
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// While set, no byte is passed on either way ([`CuttableProxy::freeze`]).
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

/// Passes `from`'s bytes on to `to`, holding them while `frozen`; at `from`'s end (or
/// an error either side) shuts `to` down for writing, as `copy_bidirectional` does, and
/// returns: the other way goes on until its own end.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl CuttableProxy {
    /// Listens on loopback, forwarding to RabbitMQ at [`amqp_uri`].
    pub async fn start() -> CuttableProxy {
        let upstream_uri = amqp_uri();
        let (scheme, rest) = upstream_uri.split_once("://").expect("an AMQP URI");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((c, h)) => (format!("{c}@"), h.to_string()),
            None => (String::new(), authority.to_string()),
        };
        let upstream = if host_port.contains(':') {
            host_port
        } else {
            format!("{host_port}:5672")
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            std::sync::Arc::default();
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accept = {
            let links = links.clone();
            let refusing = refusing.clone();
            let frozen = frozen.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let upstream = upstream.clone();
                    let frozen = frozen.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await {
                            let (in_read, in_write) = inbound.into_split();
                            let (out_read, out_write) = outbound.into_split();
                            tokio::join!(
                                forward(in_read, out_write, frozen.clone()),
                                forward(out_read, in_write, frozen)
                            );
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            })
        };
        CuttableProxy {
            uri: format!("{scheme}://{credentials}127.0.0.1:{port}/{path}"),
            links,
            refusing,
            frozen,
            accept,
        }
    }

    /// Holds every byte either way until `false`, connections kept open: to its
    /// clients RabbitMQ stops answering (a frozen node, a stalled network), and no
    /// connection is seen to drop until their heartbeats give it up.
    pub fn freeze(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every proxied connection and, until `false`, closes new ones at once: the
    /// client is cut off from RabbitMQ (`true`) or may reach it again (`false`).
    pub fn hold_off(&self, refusing: bool) {
        self.refusing
            .store(refusing, std::sync::atomic::Ordering::SeqCst);
        if refusing {
            self.cut();
        }
    }

    /// Drops every proxied connection (new ones are still accepted).
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
