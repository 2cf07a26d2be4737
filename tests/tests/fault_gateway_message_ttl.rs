//! Message TTLs: a channel's `message_ttl_ms` (`[channel_options.<name>]`) and a
//! request's own expiration (its timeout) make messages no service consumed in time
//! expire; they are dead-lettered to the inspectable `warren.dead` queue, not silently
//! gone.

use std::time::{Duration, Instant};

use lapin::types::AMQPValue;
use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_gateway::config::ChannelOptions;
use warren_protocol::ErrorCode;

/// The TTLs of the test: the channel's `message_ttl_ms` and the request's timeout.
const TTL: Duration = Duration::from_millis(300);
/// How long past [`TTL`] a message may take to reach `warren.dead`. RabbitMQ
/// dead-letters an expired message at the head of a queue nobody consumes at once
/// (310-412 ms after the send here); 3 s is ten TTLs, room for a busy machine, and far
/// below a TTL that was not applied (the message would stay; the wait ends at 10 s).
const DEAD_WITHIN: Duration = Duration::from_secs(3);

/// Asserts that `took`, from before the send until the message was in `warren.dead`,
/// is at least `TTL` (it did not go before it expired) and at most `TTL` +
/// [`DEAD_WITHIN`].
fn assert_expired_in_time(what: &str, took: Duration) {
    assert!(
        took >= TTL,
        "{what}: dead-lettered after {took:?}, before its {TTL:?} TTL"
    );
    assert!(
        took <= TTL + DEAD_WITHIN,
        "{what}: dead-lettered after {took:?}, more than {DEAD_WITHIN:?} past its {TTL:?} TTL"
    );
}

/// Takes messages from `warren.dead` until one with `message_id` arrives (bounded).
async fn dead_lettered(env: &TestEnv, message_id: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        while let Some(d) = env.get(&env.names.dead_letter_queue()).await {
            let id = d.properties.message_id().as_ref().map(|s| s.to_string());
            if id.as_deref() == Some(message_id) {
                let reason = d
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| match h.inner().get("x-death") {
                        Some(AMQPValue::FieldArray(a)) => a.as_slice().first().cloned(),
                        _ => None,
                    })
                    .and_then(|v| match v {
                        AMQPValue::FieldTable(t) => t.inner().get("reason").cloned(),
                        _ => None,
                    })
                    .map(|r| match r {
                        AMQPValue::LongString(s) => s.to_string(),
                        other => format!("{other:?}"),
                    });
                return Some(reason.unwrap_or_default());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn expired_messages_of_a_channel_with_a_ttl_and_expired_requests_land_in_warren_dead() {
    let env = TestEnv::new("msg-ttl").await;
    let gw = TestGateway::start_with(&env, |c| {
        // The request below must reach the queue nobody consumes (and expire there),
        // not be answered `no_service` at once.
        c.no_service = warren_gateway::NoServiceMode::Off;
        c.channel_options.insert(
            "echo".into(),
            ChannelOptions {
                message_ttl_ms: Some(TTL.as_millis() as u64),
                ..ChannelOptions::default()
            },
        );
    })
    .await;
    let mut c = TestClient::connect_with(
        &gw.url(),
        warren_protocol::Hello {
            token: Some("ttl".into()),
            ..Default::default()
        },
    )
    .await;

    // A publish on a channel with a 300 ms TTL that no service consumes.
    let started = Instant::now();
    c.publish("p1", "echo", json!({"n": 1})).await;
    c.expect_ack("p1").await;
    let reason = dead_lettered(&env, "ttl:p1", Duration::from_secs(10)).await;
    let took = started.elapsed();
    println!(
        "fault_gateway_message_ttl: channel TTL 300 ms → in warren.dead after {} ms (reason {reason:?})",
        took.as_millis()
    );
    assert_eq!(reason.as_deref(), Some("expired"));
    assert_expired_in_time("a publish on a channel with a TTL", took);

    // A request on a channel without a TTL expires with its own timeout.
    let started = Instant::now();
    c.request(
        "r1",
        "tickets",
        Some(TTL.as_millis() as u64),
        json!({"op": "list"}),
    )
    .await;
    c.expect_error_code(Some("r1"), ErrorCode::Timeout).await;
    let reason = dead_lettered(&env, "ttl:r1", Duration::from_secs(10)).await;
    let took = started.elapsed();
    println!(
        "fault_gateway_message_ttl: request timeout 300 ms → in warren.dead after {} ms (reason {reason:?})",
        took.as_millis()
    );
    assert_eq!(reason.as_deref(), Some("expired"));
    assert_expired_in_time("a request with a timeout", took);

    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}
