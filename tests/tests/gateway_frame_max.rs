//! A publish's content header must fit in one frame of the publishing connection:
//! the gateway checks it against that connection's `frame_max`, not the consuming
//! connection's. The two are told different ones here through the URIs' `frame_max`
//! (the publishing connection gets the first URI, the consuming one the next).

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::{big_headers, TestClient};
use warren_e2e::env::{amqp_addr, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_protocol::Hello;

/// `amqp_addr()` with `query` added.
fn with_query(query: &str) -> String {
    let uri = amqp_addr();
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{query}")
}

#[tokio::test]
async fn publishes_are_sized_against_the_publishing_connections_frame_max() {
    TestEnv::run("frame-max", Duration::from_secs(60), async |env| {
        let gw = TestGateway::start_with(env, |c| {
            // Publishing: 8 KiB frames; consuming (opened last): 128 KiB.
            c.amqp_uri = vec![with_query("frame_max=8192"), with_query("frame_max=131072")];
        })
        .await;
        let hello = Hello {
            token: Some("mallory".into()),
            ..Hello::default()
        };
        let mut mallory = TestClient::connect_with(&gw.url(), hello).await;
        // About 16 KB of headers: more than an 8 KiB frame, less than a 128 KiB one.
        mallory
            .expect_publish_too_large("p1", "chat", big_headers(8, 2000))
            .await;
        // The publishing connection is intact: the next publish goes out.
        mallory.publish("p2", "chat", json!(2)).await;
        mallory.expect_ack("p2").await;
        mallory.close().await;
        gw.shutdown().await;
    })
    .await;
}
