//! The proof-of-concept packet is accepted as-is: `packet_action: publish` publishes
//! on every flagged channel, `consume` subscribes to them. A `publish_target` other
//! than the gateway's inbound exchange is refused with `unsupported`, never ignored.
//! (`consume_target` topics: `gateway_topics.rs`.)

use std::time::Duration;

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_protocol::amqp::{H_BROADCAST, H_GROUPS, H_PUBLISH_TARGET};
use warren_protocol::{ErrorCode, Hello};

#[tokio::test]
async fn a_poc_publish_packet_lands_in_each_flagged_channel_queue() {
    let env = TestEnv::new("poc-publish").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect_raw(&gw.url()).await;
    let packet = json!({
        "id": "poc-1",
        "distribution": { "broadcast": false, "multicast": ["312423dsa", "312423dsb"], "direct": ["312423dsa"] },
        "channel": { "voice": true, "chat": true, "tickets": false },
        "packet_action": "publish",
        "publish_target": env.names.inbound_exchange(),
        "consume_target": [],
        "message": { "hello": "poc" }
    });
    c.send_text(&packet.to_string()).await;
    c.expect_ack("poc-1").await;
    for ch in ["voice", "chat"] {
        let d = env.get(&env.names.channel_queue(ch)).await.expect(ch);
        assert_eq!(d.data, br#"{"hello":"poc"}"#.to_vec());
        let h = d.properties.headers().clone().unwrap();
        assert!(
            h.contains_key(H_GROUPS)
                && h.contains_key(H_BROADCAST)
                && h.contains_key(H_PUBLISH_TARGET)
        );
    }
    assert!(env.get(&env.names.channel_queue("tickets")).await.is_none());
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_poc_publish_packet_naming_another_exchange_is_refused_with_unsupported() {
    let env = TestEnv::new("poc-target").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect_raw(&gw.url()).await;
    let packet = json!({
        "id": "poc-2",
        "channel": { "chat": true },
        "packet_action": "publish",
        "publish_target": "exchange_name",
        "message": { "hello": "poc" }
    });
    c.send_text(&packet.to_string()).await;
    let e = c
        .expect_error_code(Some("poc-2"), ErrorCode::Unsupported)
        .await;
    assert!(
        e.message.contains("publish_target `exchange_name`")
            && e.message.contains(&env.names.inbound_exchange()),
        "{e:?}"
    );
    assert!(env.get(&env.names.channel_queue("chat")).await.is_none());
    // The connection goes on: the same packet without the target is published.
    let mut packet = packet;
    packet["id"] = json!("poc-3");
    packet.as_object_mut().unwrap().remove("publish_target");
    c.send_text(&packet.to_string()).await;
    c.expect_ack("poc-3").await;
    assert!(env.get(&env.names.channel_queue("chat")).await.is_some());
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_poc_consume_packet_receives_broadcasts_groups_and_direct_messages() {
    let env = TestEnv::new("poc-consume").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect_with(
        &gw.url(),
        Hello {
            token: Some("312423dsa".into()),
            ..Default::default()
        },
    )
    .await;
    let packet = json!({
        "id": "poc-c",
        "distribution": { "broadcast": true, "multicast": ["room"], "direct": [] },
        "channel": { "chat": true },
        "packet_action": "consume",
        "publish_target": "exchange_name",
        "consume_target": []
    });
    c.send_text(&packet.to_string()).await;
    c.expect_ack("poc-c").await;
    env.publish_out("chat.all", "a", "1").await;
    env.publish_out("chat.group.room", "b", "2").await;
    env.publish_out("chat.user.312423dsa", "c", "3").await;
    env.publish_out("chat.group.other", "d", "4").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(c.expect_deliver().await.message_id);
    }
    assert_eq!(ids, ["a", "b", "c"]);
    c.expect_no_deliver(Duration::from_millis(400)).await;
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// A consume packet naming 300 channels × 300 targets with 3,000 groups (about 26 KB)
/// asks for 90,000 subscriptions of 3,000 groups each. The gateway made them all
/// before applying the first: gigabytes for one frame, enough to take the process
/// down. Now they are made one at a time and the first refusal ends the packet.
#[tokio::test]
async fn a_poc_consume_packet_naming_huge_combinations_is_refused_at_once() {
    let env = TestEnv::new("poc-huge").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect_raw(&gw.url()).await;
    let channels: serde_json::Map<String, serde_json::Value> = (0..300)
        .map(|i| (format!("c{i:03}"), json!(true)))
        .collect();
    let targets: Vec<String> = (0..300).map(|i| format!("t{i:03}")).collect();
    let groups: Vec<String> = (0..3000).map(|i| format!("g{i:04}")).collect();
    let packet = json!({
        "id": "poc-huge",
        "distribution": { "broadcast": false, "multicast": groups, "direct": [] },
        "channel": channels,
        "packet_action": "consume",
        "consume_target": targets
    });
    let text = packet.to_string();
    assert!(
        text.len() < 64 * 1024,
        "under max_frame_bytes: {}",
        text.len()
    );
    c.send_text(&text).await;
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        c.expect_error_code(Some("poc-huge"), ErrorCode::UnknownChannel),
    )
    .await;
    assert!(refused.is_ok(), "no answer within 5 s");
    // The connection and the gateway go on.
    let small = json!({
        "id": "poc-small",
        "channel": { "chat": true },
        "packet_action": "consume",
        "consume_target": []
    });
    c.send_text(&small.to_string()).await;
    c.expect_ack("poc-small").await;
    let mut other = TestClient::connect_raw(&gw.url()).await;
    let mut small = small;
    small["id"] = json!("poc-other");
    other.send_text(&small.to_string()).await;
    other.expect_ack("poc-other").await;
    c.close().await;
    other.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// A packet refused on one of its channels (one the gateway does not serve) publishes
/// on none of them: the client is told the packet failed, and no service gets a copy.
#[tokio::test]
async fn a_poc_publish_packet_refused_on_one_channel_publishes_on_none() {
    let env = TestEnv::new("poc-whole").await;
    let gw = TestGateway::start(&env).await;
    let mut c = TestClient::connect_raw(&gw.url()).await;
    let packet = json!({
        "id": "poc-4",
        "channel": { "chat": true, "zz-not-served": true },
        "packet_action": "publish",
        "message": { "hello": "poc" }
    });
    c.send_text(&packet.to_string()).await;
    let e = c.expect_error(Some("poc-4")).await;
    assert_eq!(e.code, ErrorCode::UnknownChannel, "{e:?}");
    // A packet on chat alone after it, acknowledged once RabbitMQ has it: the only
    // message in the queue. (Before, the refused packet's copy on chat was there too.)
    let mut marker = packet.clone();
    marker["id"] = json!("poc-5");
    marker["channel"] = json!({ "chat": true });
    c.send_text(&marker.to_string()).await;
    c.expect_ack("poc-5").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queue = env.names.channel_queue("chat");
    let mut ids = Vec::new();
    while let Some(d) = env.get(&queue).await {
        ids.push(d.properties.message_id().as_ref().map(ToString::to_string));
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(
        ids[0].as_deref().is_some_and(|m| m.ends_with("poc-5")),
        "{ids:?}"
    );
    c.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}
