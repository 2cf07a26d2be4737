//! Gauges count what is, not what was: a connection that ends with publishes still
//! waiting for RabbitMQ's confirms takes them off `confirms_pending` (before, the gauge
//! and `/healthz` kept them for good, as if the broker were stalling).

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::{http_get, TestGateway};

async fn confirms_pending(gw: &TestGateway) -> i64 {
    http_get(gw.health_addr(), "/metrics")
        .await
        .lines()
        .find(|l| l.starts_with("warren_gateway_confirms_pending{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the confirms_pending gauge")
}

#[tokio::test]
async fn a_connection_that_ends_with_confirms_outstanding_leaves_the_gauge_at_zero() {
    let env = TestEnv::new("metrics-confirms").await;
    let gw = TestGateway::start(&env).await;
    let body = json!({"text": "x".repeat(2_000)});
    for round in 0..5 {
        let mut c = TestClient::connect(&gw.url()).await;
        for i in 0..300 {
            c.publish(&format!("p{round}-{i}"), "chat", body.clone())
                .await;
        }
        // Gone without waiting for a single ack: the gateway still awaits confirms.
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
