//! What reaches a service from RabbitMQ, as a fuzzer sends it: messages into the
//! inbound queues (through the inbound exchange with any routing key, or straight to
//! a queue) with headers of every AMQP field type under the names the library reads,
//! any `reply_to`, correlation and message ids, priorities and timestamps, and bodies
//! that are mutated requests of the demo services, other JSON, or bytes. The demo
//! service (every channel: echo, chat, tickets, voice, ...) runs in this process on
//! the Warren service library: nothing may panic, and afterwards it still answers.
//!
//! Drawn with a fixed seed (`WARREN_FUZZ_SEED`, `WARREN_FUZZ_MESSAGES`, default 400).

use std::collections::VecDeque;
use std::time::Duration;

use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::BasicProperties;
use proptest::prelude::*;
use serde_json::{json, Value};
use warren_e2e::fuzz::{
    amqp_value, assert_no_panic, count_panics, draw, env_number, field_table, frame, header_name,
    rng, short, Publisher,
};
use warren_e2e::service::{amqp_uri, in_fresh_namespace, start_demo, StandInGateway};
use warren_protocol::amqp::{Names, H_CHANNEL, H_GATEWAY, H_SESSION, H_USER};

const LIMIT: Duration = Duration::from_secs(120);

/// Request bodies of the demo services, to mutate.
fn bodies() -> Vec<Value> {
    vec![
        json!({"op": "create", "title": "a ticket"}),
        json!({"op": "get", "id": 1}),
        json!({"op": "close", "id": "2"}),
        json!({"op": "list"}),
        json!({"text": "hi", "room": "room-1"}),
        json!({"amount": 12.5, "from": "EUR", "to": "USD"}),
        json!({"token": "t", "user": "u"}),
    ]
}

/// Where a fuzzed message goes: the inbound exchange with a routing key, or a
/// channel's queue through the default exchange.
#[derive(Debug, Clone)]
enum Destination {
    Exchange(String),
    Queue(String),
}

#[derive(Debug, Clone)]
struct InboundMessage {
    to: Destination,
    /// The headers a gateway sets (session, user, gateway, channel) first.
    as_gateway: bool,
    headers: Vec<(String, AMQPValue)>,
    reply_to: Option<String>,
    correlation_id: Option<String>,
    message_id: Option<String>,
    priority: Option<u8>,
    timestamp: Option<u64>,
    body: Vec<u8>,
}

fn inbound_message(names: &Names, reply_queue: String) -> impl Strategy<Value = InboundMessage> {
    let channels = vec!["echo", "chat", "tickets", "voice", "conversion", "auth"];
    let key = prop_oneof![
        3 => prop::sample::select(channels.clone()).prop_map(str::to_string),
        1 => prop::sample::select(vec!["chat.room", "tickets.x.y", "", "#", "echo."])
            .prop_map(str::to_string),
        1 => any::<String>().prop_map(|s| short(&s)),
    ];
    let queues: Vec<String> = channels.iter().map(|c| names.channel_queue(c)).collect();
    let to = prop_oneof![
        3 => key.prop_map(Destination::Exchange),
        1 => prop::sample::select(queues).prop_map(Destination::Queue),
    ];
    let id = prop_oneof![
        Just("r1".to_string()),
        Just(String::new()),
        any::<String>().prop_map(|s| short(&s)),
    ];
    let reply_to = prop_oneof![
        3 => Just(reply_queue),
        1 => Just(String::new()),
        1 => Just(names.outbound_stream()),
        1 => Just("no-such-queue".to_string()),
        1 => Just("amq.rabbitmq.reply-to".to_string()),
    ];
    let body = prop_oneof![
        3 => frame(bodies(), String::new()).prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    (
        (
            to,
            any::<bool>(),
            prop::collection::vec((header_name(), amqp_value(String::new())), 0..5),
        ),
        (
            prop::option::of(reply_to),
            prop::option::of(id.clone()),
            prop::option::of(id),
            prop::option::of(any::<u8>()),
            prop::option::of(any::<u64>()),
        ),
        body,
    )
        .prop_map(
            |(
                (to, as_gateway, headers),
                (reply_to, correlation_id, message_id, priority, timestamp),
                body,
            )| InboundMessage {
                to,
                as_gateway,
                headers,
                reply_to,
                correlation_id,
                message_id,
                priority,
                timestamp,
                body,
            },
        )
}

fn properties(m: &InboundMessage) -> BasicProperties {
    let gateway = [
        (H_SESSION, "fuzz-session"),
        (H_USER, "fuzz"),
        (H_GATEWAY, "gw-fuzz"),
        (H_CHANNEL, "echo"),
    ]
    .map(|(k, v)| (k.to_string(), AMQPValue::LongString(LongString::from(v))));
    let headers: Vec<(String, AMQPValue)> = gateway
        .into_iter()
        .filter(|_| m.as_gateway)
        .chain(m.headers.iter().cloned())
        .collect();
    let mut p = BasicProperties::default()
        .with_headers(field_table(&headers))
        .with_content_type("application/json".into());
    if let Some(r) = &m.reply_to {
        p = p.with_reply_to(ShortString::from(r.clone()));
    }
    if let Some(c) = &m.correlation_id {
        p = p.with_correlation_id(ShortString::from(c.clone()));
    }
    if let Some(id) = &m.message_id {
        p = p.with_message_id(ShortString::from(id.clone()));
    }
    if let Some(n) = m.priority {
        p = p.with_priority(n);
    }
    if let Some(t) = m.timestamp {
        p = p.with_timestamp(t);
    }
    p
}

#[tokio::test]
async fn fuzzed_messages_never_panic_a_service_and_it_still_answers() {
    count_panics();
    let seed = env_number("WARREN_FUZZ_SEED", 13);
    let messages = env_number("WARREN_FUZZ_MESSAGES", 400) as usize;
    in_fresh_namespace(LIMIT, |ns| async move {
        let names = Names::new(&ns);
        let demo = start_demo(&ns).await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "before", "1").await;
        assert_eq!(reply.body, b"1");

        let drawn = draw(
            inbound_message(&names, gw.reply_queue.clone()),
            rng(seed, 7),
            messages,
        );
        let mut publisher = Publisher::connect(&amqp_uri()).await;
        let mut recent = VecDeque::new();
        for (n, m) in drawn.iter().enumerate() {
            recent.push_back(format!("{m:?}"));
            if recent.len() > 20 {
                recent.pop_front();
            }
            let (exchange, key) = match &m.to {
                Destination::Exchange(key) => (names.inbound_exchange(), key.clone()),
                Destination::Queue(queue) => (String::new(), queue.clone()),
            };
            // RabbitMQ refuses a few of these itself (a malformed `CC`, direct
            // reply-to from a publisher that does not consume it).
            publisher.send(exchange, key, &m.body, properties(m)).await;
            if n % 50 == 49 {
                // Replies to the stand-in's queue are read as they come.
                while gw.next_reply(Duration::from_millis(100)).await.is_some() {}
                assert_no_panic("a message to a service", &recent);
            }
        }
        let refused = publisher.refused;
        publisher.close().await;
        println!("service_fuzz: {messages} messages ({refused} refused by RabbitMQ)");
        assert!(
            refused < messages / 2,
            "most fuzzed messages reach the service"
        );

        // The service still answers, on each channel the fuzz hit hardest.
        while gw.next_reply(Duration::from_millis(500)).await.is_some() {}
        let reply = gw.request("echo", "after", r#"{"still":"works"}"#).await;
        assert_eq!(reply.body, br#"{"still":"works"}"#);
        let reply = gw.request("tickets", "list", r#"{"op":"list"}"#).await;
        assert_eq!(reply.error, None, "{reply:?}");
        assert_no_panic("the end", &recent);
        gw.close().await;
        demo.stop().await.expect("the demo service stops");
    })
    .await;
}
