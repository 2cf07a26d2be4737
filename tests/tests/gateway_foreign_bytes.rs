//! Messages whose AMQP short strings are not UTF-8, as producers outside Warren can
//! publish them (RabbitMQ passes the bytes on; lapin cannot write them, so they are
//! written by hand, `raw_amqp`): the gateway delivers them, invalid sequences read as
//! U+FFFD, and goes on delivering what comes after. Read strictly, lapin gave up the
//! hub's whole connection on such a message, and met it again at every reconnect:
//! nothing more was delivered from the outbound stream.

use std::time::Duration;

use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::{amqp_addr, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_e2e::raw_amqp::{self, RawProperties};
use warren_protocol::ServerFrame;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn messages_whose_short_strings_are_not_utf8_do_not_stop_the_outbound_stream() {
    TestEnv::run("foreign-bytes-out", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        env.publish_out("chat.all", "before", "1").await;
        assert_eq!(c.expect_deliver().await.message_id, "before");
        let cut_id = RawProperties {
            message_id: Some(b"cut-\xC3".to_vec()),
            persistent: true,
            ..RawProperties::default()
        };
        let cut_header = RawProperties {
            message_id: Some(b"header".to_vec()),
            correlation_id: Some(b"\xFF\xFE".to_vec()),
            persistent: true,
            headers: vec![(b"x-\xE2\x82".to_vec(), b"value".to_vec())],
            ..RawProperties::default()
        };
        // 255 bytes (a short string's most), cut in the middle of a character: read
        // with U+FFFD (3 bytes) it was 257, and lapin's reader panicked.
        let mut long = vec![b'a'; 254];
        long.push(0xC3);
        let cut_at_the_limit = RawProperties {
            message_id: Some(long.clone()),
            persistent: true,
            headers: vec![(long, b"value".to_vec())],
            ..RawProperties::default()
        };
        for (props, body) in [
            (&cut_id, b"2"),
            (&cut_header, b"3"),
            (&cut_at_the_limit, b"5"),
        ] {
            let acked = raw_amqp::publish(
                &raw_amqp::host_port(&amqp_addr()),
                &env.names.outbound_exchange(),
                "chat.all",
                props,
                body,
            )
            .await;
            assert!(acked, "RabbitMQ takes the message");
        }
        env.publish_out("chat.all", "after", "4").await;
        let mut ids = Vec::new();
        while ids.len() < 4 {
            match c.recv_within(Duration::from_secs(10)).await {
                Some(ServerFrame::Deliver(d)) => ids.push(d.message_id),
                Some(_) => {}
                None => panic!("delivered so far: {ids:?}"),
            }
        }
        assert_eq!(
            ids,
            ["cut-\u{FFFD}", "header", &"a".repeat(254), "after"],
            "invalid sequences read as U+FFFD, within 255 bytes"
        );
        assert_eq!(c.close_code, None, "never closed");
        gw.shutdown().await;
    })
    .await;
}

/// A header of arrays nested 20,000 deep (100 KB, within one frame) on a message every
/// gateway reads from a queue (its announcements; presence events, registry
/// announcements and direct replies are read the same way): lapin's parser recursed
/// once a level on its IO thread, whose stack overflowed, and the process aborted:
/// every gateway at once. Nesting past 64 levels is skipped (read as empty).
#[tokio::test]
async fn a_header_nested_deeper_than_anyone_writes_does_not_bring_the_gateway_down() {
    TestEnv::run("foreign-bytes-deep", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let props = RawProperties {
            message_id: Some(b"deep".to_vec()),
            raw_headers: vec![(b"x".to_vec(), raw_amqp::nested_arrays(20_000))],
            ..RawProperties::default()
        };
        let acked = raw_amqp::publish(
            &raw_amqp::host_port(&amqp_addr()),
            &env.names.gateways_exchange(),
            "",
            &props,
            b"{}",
        )
        .await;
        assert!(acked, "RabbitMQ takes the message");
        // The gateway still reads what it reads from RabbitMQ, and serves clients.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        env.publish_out("chat.all", "after", "1").await;
        assert_eq!(c.expect_deliver().await.message_id, "after");
        gw.shutdown().await;
    })
    .await;
}
