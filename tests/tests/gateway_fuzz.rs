//! Any input, as a fuzzer sends it: frames of every client type with fields dropped,
//! swapped for extreme, mistyped or nested values, or added, at `hello` and in an open
//! session. None may panic the gateway (this is a debug build: integer overflow
//! panics too), every answer must be a frame of the protocol, a connection the gateway
//! ends must end with a registry close code (4xxx), and the gateway must keep
//! serving.
//!
//! A gateway in `jwt` mode gets the same for identity: tokens signed with the right
//! secret whose claims are mutated, tokens that are not tokens, at `hello` and in
//! `refresh`. And what reaches a gateway from RabbitMQ (a broken service, a foreign
//! publisher): messages with any routing key, headers of every AMQP field type,
//! properties and bodies, into the outbound stream (as deliveries and as replies) and
//! onto the exchanges of announcements, takeovers and presence. One panic in the
//! reader of the outbound stream would stop every session of the gateway; one stack
//! overflow there did abort the process. And its HTTP side: mutated WebSocket
//! upgrades (every header it reads) and HTTP API calls, as raw bytes, each answered
//! with a well-formed HTTP status or nothing.
//!
//! The frames come from proptest strategies drawn with a fixed seed, so a failure
//! repeats; `WARREN_FUZZ_SEED=<n>` draws others, `WARREN_FUZZ_FRAMES=<n>` sets how
//! many frames the open session gets (default 600) and `WARREN_FUZZ_MESSAGES=<n>` how
//! many messages come from the broker (default 400).

use std::collections::VecDeque;
use std::time::Duration;

use lapin::types::{AMQPValue, ByteArray, LongString, ShortString};
use lapin::BasicProperties;
use proptest::prelude::*;
use serde_json::{json, Value};
use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::fuzz::{
    amqp_value, apply, assert_no_panic, count_panics, draw, env_number, field_table, frame,
    header_name, leaf, mutation, rng, short, value, Publisher,
};
use warren_e2e::gateway::TestGateway;
use warren_e2e::jwt::{now as now_s, SECRET};
use warren_gateway::AuthMode;
use warren_protocol::{
    ClientFrame, ErrorCode, Hello, Ping, Refresh, ServerFrame, Subscribe, Welcome,
};

/// A valid frame of every client type, with every optional field set, to mutate.
fn templates(session: &str) -> Vec<Value> {
    vec![
        json!({"type": "hello", "session": session, "protocol": 1, "position": 3,
               "positions": {"chat": 2}, "client": "fuzz",
               "subscriptions": [{"id": "s0", "channel": "chat", "groups": ["g"], "topic": "a.*"}]}),
        json!({"type": "hello", "session": session, "token": "t", "position": 0}),
        json!({"type": "hello", "session": session, "position": 3}),
        json!({"type": "hello", "session": session, "positions": {"chat": 2}}),
        json!({"type": "hello", "protocol": 1}),
        json!({"type": "publish", "id": "p", "channel": "chat", "subject": "a.b",
               "distribution": {"broadcast": true, "groups": ["g"], "direct": ["u"]},
               "headers": {"k": "v"}, "message": {"text": "hi"}}),
        json!({"type": "request", "id": "r", "channel": "tickets", "subject": "s",
               "headers": {"k": "v"}, "timeout_ms": 200, "message": [1, 2]}),
        json!({"type": "subscribe", "id": "s", "channel": "chat", "broadcast": true,
               "groups": ["g"], "direct": true, "topic": "a.#"}),
        json!({"type": "unsubscribe", "id": "u", "channel": "chat", "groups": ["g"]}),
        json!({"type": "ack_deliveries", "seq": 3}),
        json!({"type": "ping", "ts": 1}),
        json!({"type": "pong", "ts": 1}),
        json!({"type": "refresh", "id": "f", "token": "t"}),
        json!({"id": "q", "distribution": {"broadcast": true, "groups": ["g"]},
               "channel": {"chat": true, "voice": false}, "packet_action": "publish",
               "publish_target": "x", "consume_target": ["a.b"], "message": {}}),
        json!({"channel": {"chat": true}, "packet_action": "consume", "consume_target": ["#"]}),
    ]
}

/// A connection the gateway ended must have been ended with a registry code.
fn assert_registry_close(code: Option<u16>, what: &str, frames: &VecDeque<String>) {
    assert!(
        code.is_some_and(|c| (4000..5000).contains(&c)),
        "{what}: the gateway closed with {code:?}, not a registry code; the last frames \
         sent:\n{}",
        frames.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Pings with `ts` and reads until the pong: every frame on the way must decode (the
/// test client panics on one that does not). `false` when the gateway closed.
async fn round_trip(c: &mut TestClient, ts: u64) -> bool {
    c.send(&ClientFrame::Ping(Ping {
        ts: Some(ts),
        ..Ping::default()
    }))
    .await;
    loop {
        match c.recv_within(Duration::from_secs(10)).await {
            Some(ServerFrame::Pong(p)) if p.ts == Some(ts) => return true,
            Some(_) => continue,
            None => return false,
        }
    }
}

/// What the gateway makes of the first frame `sent` on `c`: a session that answers a
/// ping (its `welcome`, and the connection closed by the test), or `None` for a refusal:
/// ending the connection with a registry code, or a `hello` it cannot read answered
/// `invalid` with nothing opened (a correct `hello` then opens a session). Anything
/// else fails the test.
async fn first_answer(c: &mut TestClient, what: &str, sent: &str) -> Option<Welcome> {
    let frames = VecDeque::from([sent.to_string()]);
    let answer = match c.recv_within(Duration::from_secs(10)).await {
        Some(ServerFrame::Welcome(w)) => {
            assert!(round_trip(c, 1).await, "a welcomed session answers a ping");
            Some(w)
        }
        Some(ServerFrame::Error(e)) if e.code == ErrorCode::Invalid && e.id.is_none() => {
            assert!(e.message.starts_with("hello:"), "{sent}: {e:?}");
            c.send(&ClientFrame::Hello(Hello::default())).await;
            match c.recv_within(Duration::from_secs(10)).await {
                Some(ServerFrame::Welcome(_)) => {}
                other => panic!("{sent}: after `invalid`, a correct hello got {other:?}"),
            }
            assert!(round_trip(c, 1).await, "then the session answers a ping");
            None
        }
        Some(ServerFrame::Error(_)) | None => {
            let code = c.expect_close(Duration::from_secs(10)).await;
            assert_registry_close(code, what, &frames);
            None
        }
        Some(other) => panic!("{sent} as {what} was answered with {other:?}"),
    };
    assert_no_panic(what, &frames);
    answer
}

#[tokio::test]
async fn fuzzed_frames_never_panic_the_gateway_or_end_a_connection_without_a_registry_code() {
    count_panics();
    let seed = env_number("WARREN_FUZZ_SEED", 13);
    let frames = env_number("WARREN_FUZZ_FRAMES", 600) as usize;
    println!("gateway_fuzz: seed {seed}, {frames} frames in a session");
    let env = TestEnv::new("fuzz").await;
    // Bad frames in a row would close the session every 32 frames: allow more, so one
    // session takes most of the fuzz. The limit itself is tested in gateway_bad_input.
    let gw = TestGateway::start_with(&env, |c| c.max_consecutive_errors = 10_000).await;

    // A session to resume, with a position in the stream.
    let mut first = TestClient::connect(&gw.url()).await;
    first.publish("p0", "chat", json!("before")).await;
    first.expect_ack("p0").await;
    let session = first.session().to_string();
    first.close().await;

    // 1. The first frame of a connection: the hello (resuming that session or not),
    // or anything else.
    let hellos = draw(
        frame(templates(&session)[..5].to_vec(), session.clone()),
        rng(seed, 1),
        150,
    );
    let firsts = draw(
        frame(templates(&session), session.clone()),
        rng(seed, 2),
        50,
    );
    let (mut welcomed, mut resumed, mut refused) = (0, 0, 0);
    for text in hellos.iter().chain(&firsts) {
        let mut c = TestClient::connect_raw(&gw.url()).await;
        c.send_text(text).await;
        match first_answer(&mut c, "a first frame", text).await {
            Some(w) => {
                welcomed += 1;
                resumed += usize::from(w.resumed);
                c.close().await;
            }
            None => refused += 1,
        }
    }
    println!(
        "gateway_fuzz: first frames: {welcomed} welcomed ({resumed} resumed), {refused} refused"
    );
    // With `auth.mode = "none"` a first frame other than `hello` opens a session too;
    // a `hello` the gateway cannot read is answered `invalid` and opens nothing, and
    // an unsupported protocol version is refused.
    assert!(resumed > 0, "the fuzz reaches resumes");

    // 2. An open session: every type of frame, mutated. A ping every 20 frames checks
    // that the connection still answers; a connection the gateway ends is replaced.
    let texts = draw(
        frame(templates(&session), session.clone()),
        rng(seed, 3),
        frames,
    );
    let mut recent: VecDeque<String> = VecDeque::new();
    let mut c = TestClient::connect(&gw.url()).await;
    let mut closes = 0;
    for (n, text) in texts.iter().enumerate() {
        recent.push_back(text.clone());
        if recent.len() > 20 {
            recent.pop_front();
        }
        c.send_text(text).await;
        if n % 20 == 19 || n + 1 == texts.len() {
            if !round_trip(&mut c, n as u64).await {
                assert_registry_close(c.close_code, "a session", &recent);
                closes += 1;
                c = TestClient::connect(&gw.url()).await;
            }
            assert_no_panic("a session", &recent);
        }
    }
    println!("gateway_fuzz: {frames} frames in sessions, {closes} closed by the gateway");

    // 3. The gateway still serves.
    let mut after = TestClient::connect(&gw.url()).await;
    after.publish("after", "chat", json!("still works")).await;
    after.expect_ack("after").await;
    after.close().await;
    c.close().await;
    assert_no_panic("the end", &recent);
    gw.shutdown().await;
    env.cleanup().await;
}

/// Claims that grant what the gateway reads, to mutate: user, expiry, groups, topics,
/// channels, tenant.
fn claims(user: &str, exp: u64) -> Value {
    json!({"sub": user, "exp": exp, "iat": now_s(), "nbf": now_s() - 10,
           "groups": ["room-1"], "topics": ["orders.*"], "tenant": "t1",
           "channels": {"chat": ["publish", "subscribe"], "tickets": ["request"]}})
}

fn sign(claims: &Value) -> String {
    warren_e2e::jwt::sign(claims, SECRET.as_bytes())
}

/// A token as the fuzzer sends it: mostly mutated claims signed with the gateway's
/// secret (an issuer's bug, not an attacker's), otherwise a value that is no token.
fn token(session: String) -> impl Strategy<Value = String> {
    let template = claims("fuzz", now_s() + 600);
    prop_oneof![
        3 => prop::collection::vec(mutation(session.clone()), 1..4).prop_map(move |ms| {
            let mut c = template.clone();
            for m in &ms {
                apply(&mut c, m);
            }
            sign(&c)
        }),
        1 => leaf(session).prop_map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        }),
    ]
}

async fn connect_jwt(url: &str, token: &str) -> TestClient {
    TestClient::connect_with(
        url,
        Hello {
            token: Some(token.to_string()),
            ..Hello::default()
        },
    )
    .await
}

#[tokio::test]
async fn fuzzed_tokens_and_claims_never_panic_a_jwt_gateway() {
    count_panics();
    let seed = env_number("WARREN_FUZZ_SEED", 13);
    let env = TestEnv::new("fuzzjwt").await;
    let gw = TestGateway::start_with(&env, |c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt.secret = Some(SECRET.into());
        c.auth.jwt.leeway_s = 0;
        c.max_consecutive_errors = 10_000;
    })
    .await;
    let mut recent = VecDeque::new();

    // An issuer's "never expires" is a token that does not expire: 2^64 - 1 seconds
    // overflowed the connection's deadline (a panic, also in release builds).
    for exp in [u64::MAX, u64::MAX - 1, 1 << 53, 9_999_999_999] {
        let mut c = connect_jwt(&gw.url(), &sign(&claims("forever", exp))).await;
        assert!(
            round_trip(&mut c, exp).await,
            "exp {exp}: the session answers"
        );
        c.publish("p", "chat", json!(exp)).await;
        c.expect_ack("p").await;
        c.close().await;
        assert_no_panic(&format!("exp {exp}"), &recent);
    }

    // 1. `hello` with each token.
    let tokens = draw(token(String::new()), rng(seed, 4), 150);
    let (mut welcomed, mut refused) = (0, 0);
    for t in &tokens {
        let mut c = TestClient::connect_raw(&gw.url()).await;
        c.send(&ClientFrame::Hello(Hello {
            token: Some(t.clone()),
            ..Hello::default()
        }))
        .await;
        match first_answer(&mut c, "a token at hello", t).await {
            Some(_) => {
                welcomed += 1;
                c.close().await;
            }
            None => refused += 1,
        }
    }
    println!("gateway_fuzz: tokens at hello: {welcomed} welcomed, {refused} refused");
    assert!(welcomed > 0 && refused > 0, "the fuzz reaches both sides");

    // 2. `refresh` in an open session with each token (a refresh naming another user
    // or tenant is refused; one the gateway cannot verify too).
    let valid = sign(&claims("fuzz", now_s() + 600));
    let mut c = connect_jwt(&gw.url(), &valid).await;
    let refreshes = draw(token(c.session().to_string()), rng(seed, 5), 150);
    let mut closes = 0;
    for (n, t) in refreshes.iter().enumerate() {
        recent.push_back(t.clone());
        if recent.len() > 10 {
            recent.pop_front();
        }
        c.send(&ClientFrame::Refresh(Refresh {
            id: format!("r{n}"),
            token: t.clone(),
        }))
        .await;
        if n % 10 == 9 || n + 1 == refreshes.len() {
            if !round_trip(&mut c, n as u64).await {
                assert_registry_close(c.close_code, "a refresh", &recent);
                closes += 1;
                c = connect_jwt(&gw.url(), &valid).await;
            }
            assert_no_panic("a refresh", &recent);
        }
    }
    println!(
        "gateway_fuzz: {} refreshes, {closes} closed by the gateway",
        refreshes.len()
    );
    c.close().await;
    assert_no_panic("the end", &recent);
    gw.shutdown().await;
    env.cleanup().await;
}

/// Where a fuzzed message goes.
#[derive(Debug, Clone)]
enum Destination {
    /// The outbound exchange, with this routing key.
    Outbound(String),
    /// The outbound stream through the default exchange, as a service replies.
    Reply,
    /// The exchange gateways announce and hand sessions over on.
    Gateways,
    /// The exchange services announce on.
    Services(String),
    /// The exchange gateways publish presence events on (`client.connected`, ...).
    Presence(String),
}

#[derive(Debug, Clone)]
struct BrokerMessage {
    to: Destination,
    headers: Vec<(String, AMQPValue)>,
    message_id: Option<String>,
    correlation_id: Option<String>,
    expiration: Option<String>,
    body: Vec<u8>,
}

fn broker_message(session: String, templates: Vec<Value>) -> impl Strategy<Value = BrokerMessage> {
    let key = prop_oneof![
        3 => prop::sample::select(vec![
            "chat.all".to_string(),
            format!("chat.user.{session}"),
            "chat.group.room-1".into(),
            "chat.event.joined".into(),
            "voice.all".into(),
            "chat".into(),
            String::new(),
            "chat..all".into(),
            "#".into(),
        ]),
        1 => any::<String>().prop_map(|s| short(&s)),
    ];
    let to = prop_oneof![
        4 => key.prop_map(Destination::Outbound),
        2 => Just(Destination::Reply),
        1 => Just(Destination::Gateways),
        1 => prop::sample::select(vec!["announce".to_string(), String::new(), "#".into()])
            .prop_map(Destination::Services),
        1 => prop::sample::select(vec![
            "client.connected".to_string(),
            "client.disconnected".into(),
            "client.subscribed".into(),
            "client.x".into(),
        ])
        .prop_map(Destination::Presence),
    ];
    let id = prop_oneof![
        Just(format!("{session}/r1")),
        Just("/".to_string()),
        Just(session.clone()),
        any::<String>().prop_map(|s| short(&s)),
    ];
    let body = prop_oneof![
        2 => frame(templates, session.clone()).prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => value(session.clone()).prop_map(|v| v.to_string().into_bytes()),
    ];
    (
        to,
        prop::collection::vec((header_name(), amqp_value(session)), 0..5),
        prop::option::of(id.clone()),
        prop::option::of(id),
        // RabbitMQ closes the channel on an expiration that is not a number of ms.
        prop::option::of(prop::sample::select(vec![
            "0".to_string(),
            "100".into(),
            "4294967295".into(),
        ])),
        body,
    )
        .prop_map(
            |(to, headers, message_id, correlation_id, expiration, body)| BrokerMessage {
                to,
                headers,
                message_id,
                correlation_id,
                expiration,
                body,
            },
        )
}

/// Templates of what gateways and services publish to each other, so that the
/// mutated bodies get past the first field.
fn peer_templates(session: &str) -> Vec<Value> {
    vec![
        json!({"takeover": session, "node": "gw-fuzz", "at_ms": 7}),
        json!({"takeovers": [session, "x"], "node": "gw-fuzz", "at_ms": [1, 2]}),
        json!({"node": "gw-fuzz", "instance": "i1", "state": "up", "interval_ms": 1000}),
        json!({"presence_snapshot_for": "gw-fuzz"}),
        json!({"presence_snapshot": {"s1": {"user": "u", "node": "gw-fuzz"}}, "to": "gw-fuzz"}),
        json!({"event": "client.connected", "session": session, "user": "u", "node": "gw-fuzz",
               "channel": "chat", "reason": "closed", "by": "gw-fuzz", "keys": ["chat.all"],
               "tenant": "t1"}),
        json!({"event": "client.disconnected", "session": session, "user": "u",
               "node": "gw-fuzz", "reason": "gateway_lost"}),
        json!({"event": "up", "name": "echo", "instance": "i1", "channels": ["chat"],
               "version": "1", "interval_ms": 1000}),
        json!({"type": "deliver", "text": "hi"}),
    ]
}

#[tokio::test]
async fn fuzzed_messages_from_the_broker_never_panic_the_gateway_or_stop_its_deliveries() {
    count_panics();
    let seed = env_number("WARREN_FUZZ_SEED", 13);
    let messages = env_number("WARREN_FUZZ_MESSAGES", 400) as usize;
    let env = TestEnv::new("fuzzamqp").await;
    // Presence and announcements on, so that their consumers read what is fuzzed.
    let gw = TestGateway::start_with(&env, |c| {
        c.presence = true;
        c.announce_interval_ms = 1_000;
    })
    .await;
    let mut c = subscribed(&gw.url()).await;
    let session = c.session().to_string();

    // Every field type RabbitMQ keeps in a stream, as a header of one broadcast,
    // reaches the client as text. A byte array sent the gateway's header rendering
    // into endless recursion: the stack overflowed and the process aborted.
    // (RabbitMQ 3.10 drops array and table headers of a message it writes to a
    // stream, and refuses decimals there; their rendering is unit-tested.)
    let every: Vec<(&str, AMQPValue, &str)> = vec![
        ("bool", AMQPValue::Boolean(true), "true"),
        ("i8", AMQPValue::ShortShortInt(-8), "-8"),
        ("u8", AMQPValue::ShortShortUInt(8), "8"),
        ("i16", AMQPValue::ShortInt(-16), "-16"),
        ("u16", AMQPValue::ShortUInt(16), "16"),
        ("i32", AMQPValue::LongInt(-32), "-32"),
        ("u32", AMQPValue::LongUInt(32), "32"),
        (
            "i64",
            AMQPValue::LongLongInt(i64::MIN),
            "-9223372036854775808",
        ),
        ("f32", AMQPValue::Float(0.5), "0.5"),
        ("f64", AMQPValue::Double(-0.25), "-0.25"),
        ("time", AMQPValue::Timestamp(1_700_000_000), "1700000000"),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(b"raw".to_vec())),
            "raw",
        ),
        ("text", AMQPValue::LongString(LongString::from("hi")), "hi"),
        ("void", AMQPValue::Void, ""),
    ];
    let headers: Vec<(String, AMQPValue)> = every
        .iter()
        .map(|(name, value, _)| (name.to_string(), value.clone()))
        .collect();
    env.publish(
        &env.names.outbound_exchange(),
        "chat.all",
        "every-type",
        "{}",
        field_table(&headers),
    )
    .await;
    let d = c.expect_deliver().await;
    assert_eq!(d.message_id, "every-type");
    for (name, _, text) in &every {
        assert_eq!(
            d.headers.get(*name).map(String::as_str),
            Some(*text),
            "{name}"
        );
    }
    c.ack_deliveries(d.seq).await;

    let mut recent = VecDeque::new();
    let drawn = draw(
        broker_message(session.clone(), peer_templates(&session)),
        rng(seed, 6),
        messages,
    );
    let mut publisher = Publisher::connect(&warren_e2e::env::amqp_addr()).await;
    let (mut received, mut taken) = (0, 0);
    for (n, m) in drawn.iter().enumerate() {
        recent.push_back(format!("{m:?}"));
        if recent.len() > 20 {
            recent.pop_front();
        }
        let (exchange, key) = match &m.to {
            Destination::Outbound(key) => (env.names.outbound_exchange(), key.clone()),
            Destination::Reply => (String::new(), env.names.outbound_stream()),
            Destination::Gateways => (env.names.gateways_exchange(), String::new()),
            Destination::Services(key) => (env.names.services_exchange(), key.clone()),
            Destination::Presence(key) => (env.names.presence_exchange(), key.clone()),
        };
        let mut props = BasicProperties::default().with_headers(field_table(&m.headers));
        if let Some(id) = &m.message_id {
            props = props.with_message_id(ShortString::from(id.clone()));
        }
        if let Some(id) = &m.correlation_id {
            props = props.with_correlation_id(ShortString::from(id.clone()));
        }
        if let Some(e) = &m.expiration {
            props = props.with_expiration(ShortString::from(e.clone()));
        }
        // RabbitMQ refuses some of these itself (it closes the channel on a malformed
        // `CC`); what it takes reaches the gateway.
        publisher.send(exchange, key, &m.body, props).await;
        if n % 50 == 49 {
            received += drain(&mut c).await;
            if c.close_code.is_some() {
                // A takeover request naming the session, as another gateway sends
                // it, closes it with 4502: what such a request is for.
                assert_registry_close(c.close_code, "a message from the broker", &recent);
                taken += 1;
                c = subscribed(&gw.url()).await;
            }
            assert_no_panic("a message from the broker", &recent);
        }
    }

    // Deliveries still flow: a well-formed broadcast arrives after everything else.
    env.publish_out("chat.all", "probe", r#"{"probe":true}"#)
        .await;
    let mut got = 0;
    let seen = loop {
        match c.recv_within(Duration::from_secs(10)).await {
            Some(ServerFrame::Deliver(d)) => {
                got += 1;
                c.ack_deliveries(d.seq).await;
                if d.message_id == "probe" {
                    break true;
                }
            }
            Some(ServerFrame::Reply(r)) => c.ack_deliveries(r.seq).await,
            Some(ServerFrame::Error(e)) => {
                if let Some(seq) = e.seq {
                    c.ack_deliveries(seq).await;
                }
            }
            Some(_) => {}
            None => break false,
        }
    };
    let refused = publisher.refused;
    publisher.close().await;
    println!(
        "gateway_fuzz: {messages} messages from the broker ({refused} refused by RabbitMQ); \
         the client received {received} frames ({taken} times taken over), then {got} \
         deliveries"
    );
    assert!(
        refused < messages / 2,
        "most fuzzed messages reach the gateway"
    );
    assert!(
        seen,
        "the probe arrived after the fuzzed messages (closed: {:?})",
        c.close_code
    );
    assert!(round_trip(&mut c, 7).await);
    c.close().await;
    let mut after = TestClient::connect(&gw.url()).await;
    after.publish("after", "chat", json!("still works")).await;
    after.expect_ack("after").await;
    after.close().await;
    assert_no_panic("the end", &recent);
    gw.shutdown().await;
    env.cleanup().await;
}

/// A session subscribed to `chat` every way: broadcast, group `room-1`, direct and
/// every topic.
async fn subscribed(url: &str) -> TestClient {
    let mut c = TestClient::connect(url).await;
    for s in [
        sub("b", "chat"),
        Subscribe {
            groups: vec!["room-1".into()],
            ..sub("g", "chat")
        },
        Subscribe {
            direct: true,
            ..sub("d", "chat")
        },
        Subscribe {
            topic: Some("#".into()),
            ..sub("t", "chat")
        },
    ] {
        c.subscribe(s).await;
    }
    c
}

/// Reads what has arrived (acknowledging it, so the delivery window stays open)
/// until 200 ms pass without a frame; how many frames came.
async fn drain(c: &mut TestClient) -> usize {
    let mut n = 0;
    while let Some(f) = c.recv_within(Duration::from_millis(200)).await {
        n += 1;
        let seq = match f {
            ServerFrame::Deliver(d) => Some(d.seq),
            ServerFrame::Reply(r) => Some(r.seq),
            ServerFrame::Error(e) => e.seq,
            _ => None,
        };
        if let Some(seq) = seq {
            c.ack_deliveries(seq).await;
        }
    }
    n
}

/// Requests to the gateway's HTTP side, to mutate: the WebSocket upgrade (every header
/// it reads), the HTTP API's three routes, and the read-only endpoints.
fn http_templates() -> Vec<Value> {
    let api = |path: &str, body: Value| {
        json!({"method": "POST", "path": path, "body": body,
               "headers": {"Authorization": format!("Bearer {HTTP_KEY}"),
                           "Content-Type": "application/json", "Connection": "close"}})
    };
    vec![
        json!({"method": "GET", "path": "/ws", "body": "",
               "headers": {"Upgrade": "websocket", "Connection": "Upgrade",
                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                           "Sec-WebSocket-Version": "13",
                           "Sec-WebSocket-Protocol": "warren.v1, other",
                           "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
                           "Origin": "https://app.example.com",
                           "Cookie": "a=b; warren_token=t", "Authorization": "Bearer t"}}),
        api(
            "/publish",
            json!({"channel": "chat", "broadcast": true, "groups": ["g"],
                               "users": ["u"], "events": ["e.x"], "id": "i",
                               "headers": {"k": "v"}, "message": {"m": 1}}),
        ),
        api(
            "/external/chat",
            json!({"id": "i", "subject": "s.t",
                                     "distribution": {"broadcast": true}, "headers": {"k": "v"},
                                     "message": [1]}),
        ),
        api(
            "/request/tickets",
            json!({"id": "r", "timeout_ms": 100, "message": {"op": "list"}}),
        ),
        json!({"method": "GET", "path": "/services", "body": "", "headers": {"Connection": "close"}}),
        json!({"method": "OPTIONS", "path": "/presence", "body": "",
               "headers": {"Origin": "https://x", "Access-Control-Request-Method": "GET",
                           "Connection": "close"}}),
        json!({"method": "GET", "path": "/healthz", "body": "", "headers": {"Connection": "close"}}),
    ]
}

const HTTP_KEY: &str = "fuzz-api-key";

/// `request` (a mutated template) as bytes on the wire; values that are not strings
/// are written as JSON, and `Content-Length` fits the body unless the fuzz set one.
fn http_bytes(request: &Value) -> Vec<u8> {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let body = text(request.get("body"));
    let mut out = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        text(request.get("method")),
        text(request.get("path"))
    );
    let mut has_length = false;
    if let Some(Value::Object(headers)) = request.get("headers") {
        for (k, v) in headers {
            has_length |= k.eq_ignore_ascii_case("content-length");
            out.push_str(&format!("{k}: {}\r\n", text(Some(v))));
        }
    }
    if !has_length {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// Sends `bytes` on a fresh connection and reads what comes back: up to the end of the
/// response's headers, until the peer closes, or until 300 ms pass without more (the
/// first byte may take 1 s: a request whose `Content-Length` promises more than it
/// sends gets no answer).
async fn http_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    if stream.write_all(bytes).await.is_err() {
        return Vec::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let wait = if got.is_empty() { 1_000 } else { 300 };
        match tokio::time::timeout(Duration::from_millis(wait), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                got.extend_from_slice(&buf[..n]);
                // The status line and headers are what is checked.
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    return got;
                }
            }
            _ => return got,
        }
    }
}

#[tokio::test]
async fn fuzzed_http_requests_never_panic_the_gateway() {
    count_panics();
    let seed = env_number("WARREN_FUZZ_SEED", 13);
    let env = TestEnv::new("fuzzhttp").await;
    let gw = TestGateway::start_with(&env, |c| {
        c.http_api.enabled = true;
        c.http_api.api_keys = vec![HTTP_KEY.into()];
        c.auth.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let addr = gw.listeners()[0].0;
    let requests = draw(frame(http_templates(), String::new()), rng(seed, 8), 200);
    let mut statuses = std::collections::BTreeMap::new();
    for text in &requests {
        let request: Value = serde_json::from_str(text).expect("a drawn request is JSON");
        let answer = http_exchange(addr, &http_bytes(&request)).await;
        let status = if answer.is_empty() {
            "none".to_string()
        } else {
            assert!(
                answer.starts_with(b"HTTP/1.1 "),
                "{request} was answered with {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            );
            String::from_utf8_lossy(&answer[9..12]).into_owned()
        };
        *statuses.entry(status).or_insert(0) += 1;
        assert_no_panic("an HTTP request", &VecDeque::from([text.clone()]));
    }
    println!("gateway_fuzz: 200 HTTP requests, answered by status: {statuses:?}");
    assert!(statuses.len() > 3, "the fuzz reaches several outcomes");

    // The gateway still serves both sides.
    let answer = http_exchange(addr, &http_bytes(&http_templates()[1])).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 202"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let mut c = TestClient::connect(&gw.url()).await;
    c.publish("after", "chat", json!("still works")).await;
    c.expect_ack("after").await;
    c.close().await;
    assert_no_panic("the end", &VecDeque::new());
    gw.shutdown().await;
    env.cleanup().await;
}
