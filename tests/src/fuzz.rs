//! Strategies and checks shared by the fuzz tests (`gateway_fuzz`, `service_fuzz`):
//! JSON values and AMQP field values where parsers and arithmetic break, mutations of
//! valid frames, draws from a fixed seed, and a process-wide panic count (the gateway
//! and the services under test run in the test's process).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString, ShortString};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value};
use warren_protocol::amqp;

/// Panics anywhere in this process (the gateway and services under test run in it)
/// since the hook was set.
pub static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic of the process from now on (the hook is set once per process).
pub fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let print = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            print(info);
        }));
    });
}

/// The number in environment variable `name`, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Values where parsers and arithmetic break: the edges of each integer width, floats
/// JSON allows but integers do not, and strings that are empty, huge, wildcards,
/// separators, reserved names, control characters or another session's id.
pub fn leaf(session: String) -> impl Strategy<Value = Value> {
    let ints = vec![
        0,
        1,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        1 << 53,
        (1 << 53) + 1,
        i64::MAX as u64,
        u64::MAX - 1,
        u64::MAX,
    ];
    let strings: Vec<String> = vec![
        String::new(),
        "chat".into(),
        "tickets".into(),
        "echo".into(),
        "a.b".into(),
        "a..b".into(),
        "#".into(),
        "*".into(),
        "a.#".into(),
        ".".into(),
        " ".into(),
        "\u{0}".into(),
        "\u{202e}é🦀".into(),
        "x-warren-user".into(),
        "amq.rabbitmq.reply-to".into(),
        "hello".into(),
        "publish".into(),
        "consume".into(),
        "18446744073709551616".into(),
        "-1".into(),
        "a".repeat(300),
        "é".repeat(5_000),
        session.clone(),
        format!("{session}x"),
        session.chars().rev().collect(),
    ];
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop::sample::select(ints).prop_map(Value::from),
        prop::sample::select(vec![-1i64, i64::MIN]).prop_map(Value::from),
        prop::sample::select(vec![0.5f64, -0.0, 1e308, -1e308, 5e-324]).prop_map(Value::from),
        prop::sample::select(strings).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// Any JSON value: leaves, and arrays and objects of them, three levels deep.
pub fn value(session: String) -> impl Strategy<Value = Value> {
    leaf(session.clone()).prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(leaf_key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Object keys: the fields frames have, and any other.
pub fn leaf_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "type",
            "id",
            "channel",
            "chat",
            "session",
            "position",
            "positions",
            "seq",
            "message",
            "token",
            "topic",
            "",
        ])
        .prop_map(str::to_string),
        any::<String>(),
    ]
}

/// One change to a frame: at the `at`-th place in it (the frame itself, then every
/// value inside, depth first), drop that value, replace it (most often with a single
/// value, so that the frame around it stays as it was), or add a key beside it.
#[derive(Debug, Clone)]
pub enum Mutation {
    Drop(prop::sample::Index),
    Replace(prop::sample::Index, Value),
    Add(prop::sample::Index, String, Value),
}

pub fn mutation(session: String) -> impl Strategy<Value = Mutation> {
    let index = any::<prop::sample::Index>();
    prop_oneof![
        1 => index.clone().prop_map(Mutation::Drop),
        4 => (index.clone(), leaf(session.clone())).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (index.clone(), value(session.clone())).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (index, leaf_key(), value(session)).prop_map(|(i, k, v)| Mutation::Add(i, k, v)),
    ]
}

/// Paths to every value in `v` (keys and array indexes), depth first, `v` first.
pub fn paths(v: &Value, at: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(PathStep::Key(k.clone()));
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push(PathStep::Index(i));
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// One step into a JSON value.
#[derive(Debug, Clone)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

/// The value at `path` in `v`, if it is there.
pub fn at_path<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        PathStep::Key(k) => v.get_mut(k.as_str()),
        PathStep::Index(i) => v.get_mut(*i),
    })
}

/// Applies mutation `m` to `frame`.
pub fn apply(frame: &mut Value, m: &Mutation) {
    let mut all = Vec::new();
    paths(frame, &mut Vec::new(), &mut all);
    let index = match m {
        Mutation::Drop(i) | Mutation::Replace(i, _) | Mutation::Add(i, _, _) => i,
    };
    let path = index.get(&all).clone();
    match m {
        Mutation::Replace(_, new) => {
            if let Some(v) = at_path(frame, &path) {
                *v = new.clone();
            }
        }
        Mutation::Drop(_) => {
            let Some((last, parent)) = path.split_last() else {
                *frame = Value::Null;
                return;
            };
            match (at_path(frame, parent), last) {
                (Some(Value::Object(m)), PathStep::Key(k)) => {
                    m.remove(k);
                }
                (Some(Value::Array(a)), PathStep::Index(i)) if *i < a.len() => {
                    a.remove(*i);
                }
                _ => {}
            }
        }
        Mutation::Add(_, key, new) => match at_path(frame, &path) {
            Some(Value::Object(m)) => {
                m.insert(key.clone(), new.clone());
            }
            Some(Value::Array(a)) => a.push(new.clone()),
            _ => {}
        },
    }
}

/// A frame as the fuzzer sends it: a template of one type with one to three
/// mutations, or (one in eight) the template as it is.
pub fn frame(templates: Vec<Value>, session: String) -> impl Strategy<Value = String> {
    (
        prop::sample::select(templates),
        prop::collection::vec(mutation(session), 1..4),
        0..8u8,
    )
        .prop_map(|(mut frame, mutations, keep)| {
            if keep != 0 {
                for m in &mutations {
                    apply(&mut frame, m);
                }
            }
            frame.to_string()
        })
}

/// Draws `n` values of `strategy` with `rng`.
pub fn draw<S: Strategy>(strategy: S, rng: TestRng, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::new_with_rng(RunnerConfig::default(), rng);
    (0..n)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("the strategies never reject")
                .current()
        })
        .collect()
}

/// A generator for stream `stream` of draws from `seed`.
pub fn rng(seed: u64, stream: u8) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8] = stream;
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Fails the test when anything in the process panicked; `frames` are the inputs
/// sent last, for the message.
pub fn assert_no_panic(what: &str, frames: &VecDeque<String>) {
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "{what}: the gateway panicked; the last frames sent:\n{}",
        frames.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}

/// An AMQP field value of any type RabbitMQ takes, strings and tables included (two
/// levels deep). Not a short string: RabbitMQ reads the type code lapin writes for
/// one (`s`) as a short int and closes the connection. Not a decimal: RabbitMQ 3.10
/// cannot convert one for a stream (`rabbit_msg_record:from_091` has no clause for
/// it), and the publisher's connection is closed.
pub fn amqp_value(session: String) -> impl Strategy<Value = AMQPValue> {
    let text = move || {
        leaf(session.clone()).prop_map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
    };
    let scalar = prop_oneof![
        Just(AMQPValue::Void),
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        prop::sample::select(vec![i64::MIN, -1, 0, 1, i64::MAX]).prop_map(AMQPValue::LongLongInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        prop::collection::vec(any::<u8>(), 0..16)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        text().prop_map(|t: String| AMQPValue::LongString(LongString::from(t))),
    ];
    scalar.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            prop::collection::vec((header_name(), inner), 0..4).prop_map(|kv| {
                let mut t = FieldTable::default();
                for (k, v) in kv {
                    t.insert(ShortString::from(k), v);
                }
                AMQPValue::FieldTable(t)
            }),
        ]
    })
}

/// At most 255 bytes (an AMQP short string), cut on a character boundary.
pub fn short(text: &str) -> String {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Header names the gateway and the service library read, and any other.
pub fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            amqp::H_SESSION, amqp::H_USER, amqp::H_GATEWAY, amqp::H_CHANNEL,
            amqp::H_SUBJECT, amqp::H_BROADCAST, amqp::H_GROUPS, amqp::H_DIRECT,
            amqp::H_ERROR, amqp::H_PUBLISH_TARGET, amqp::H_REQUEST_ID, amqp::H_CC,
            amqp::H_TENANT, amqp::H_TYPE, amqp::H_UNDELIVERED, "CC", "BCC",
            "x-stream-offset", "x-death",
        ])
        .prop_map(str::to_string),
        1 => any::<String>().prop_map(|s| short(&s)),
    ]
}

/// An AMQP header table of `headers`, in order (a later name replaces an earlier one).
pub fn field_table(headers: &[(String, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(ShortString::from(k.clone()), v.clone());
    }
    table
}

/// Publishes fuzzed messages on a confirm channel of its own connection, opening a
/// new channel whenever RabbitMQ closed one over a message it refuses.
pub struct Publisher {
    connection: lapin::Connection,
    channel: lapin::Channel,
    /// Messages RabbitMQ refused (closing the channel).
    pub refused: usize,
}

impl Publisher {
    /// Connects to RabbitMQ at `uri`.
    ///
    /// # Panics
    /// When RabbitMQ cannot be reached.
    pub async fn connect(uri: &str) -> Publisher {
        let connection = lapin::Connection::connect(uri, lapin::ConnectionProperties::default())
            .await
            .expect("RabbitMQ");
        let channel = Self::confirm_channel(&connection).await;
        Publisher {
            connection,
            channel,
            refused: 0,
        }
    }

    async fn confirm_channel(connection: &lapin::Connection) -> lapin::Channel {
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        channel
    }

    /// Publishes and waits for the confirm (or the refusal).
    pub async fn send(
        &mut self,
        exchange: String,
        key: String,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) {
        let published = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(key),
                lapin::options::BasicPublishOptions::default(),
                body,
                properties,
            )
            .await;
        if let Ok(confirm) = published {
            let _ = confirm.await;
        }
        if !self.channel.status().connected() {
            self.refused += 1;
            self.channel = Self::confirm_channel(&self.connection).await;
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}
