//! Gauges count what is, not what was: a connection that ends with publishes still
//! waiting for RabbitMQ's confirms takes them off `confirms_pending` (before, the gauge
//! and `/healthz` kept them for good, as if the broker were stalling).

use std::time::{Duration, Instant};

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::{http_get, TestGateway};
use warren_gateway::fault::CONFIRM_DELAY_MS;

async fn confirms_pending(gw: &TestGateway) -> i64 {
    http_get(gw.health_addr(), "/metrics")
        .await
        .lines()
        .find(|l| l.starts_with("warren_gateway_confirms_pending{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the confirms_pending gauge")
}

/// How late each confirm is taken (fault injection): every publish of a round is
/// still awaiting its confirm when its client goes.
const CONFIRM_DELAY: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_connection_that_ends_with_confirms_outstanding_leaves_the_gauge_at_zero() {
    std::env::set_var(CONFIRM_DELAY_MS, CONFIRM_DELAY.as_millis().to_string());
    let env = TestEnv::new("metrics-confirms").await;
    let gw = TestGateway::start(&env).await;
    let body = json!({"text": "x".repeat(2_000)});
    for round in 0..5 {
        let mut c = TestClient::connect(&gw.url()).await;
        for i in 0..300 {
            c.publish(&format!("p{round}-{i}"), "chat", body.clone())
                .await;
        }
        // The gateway counts them as awaiting their confirms (held back
        // `CONFIRM_DELAY`, far longer than this wait)...
        let started = Instant::now();
        let pending = loop {
            let pending = confirms_pending(&gw).await;
            if pending >= 1 {
                break pending;
            }
            assert!(
                started.elapsed() < CONFIRM_DELAY / 2,
                "round {round}: confirms_pending still {pending} {:?} after 300 publishes",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        println!(
            "gateway_metrics: round {round}: confirms_pending {pending} before the client went"
        );
        // ...when the client is gone without waiting for a single ack.
        c.abort();
    }
    let mut last = i64::MAX;
    for _ in 0..100 {
        last = confirms_pending(&gw).await;
        if last == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last, 0,
        "confirms_pending 10 s after every connection ended"
    );
    gw.shutdown().await;
    env.cleanup().await;
}
