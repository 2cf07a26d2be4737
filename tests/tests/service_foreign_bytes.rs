//! A request whose AMQP short strings are not UTF-8 (published by a producer outside
//! Warren; RabbitMQ passes the bytes on) does not stop a service: read strictly,
//! lapin gave up the service's whole connection on it, and the request, never
//! acknowledged, came back first at every reconnect: nothing behind it was answered.

use std::time::Duration;

use warren_e2e::raw_amqp::{self, RawProperties};
use warren_e2e::service::{amqp_uri, in_fresh_namespace, start_demo, StandInGateway};
use warren_protocol::amqp::{keys, Names};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_request_whose_short_strings_are_not_utf8_does_not_stop_the_service() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let names = Names::new(&ns);
        let props = RawProperties {
            message_id: Some(b"ada:cut-\xC3".to_vec()),
            correlation_id: Some(b"\xFF".to_vec()),
            persistent: true,
            headers: vec![(b"x-\xE2\x82".to_vec(), b"value".to_vec())],
            ..RawProperties::default()
        };
        // 255 bytes cut in the middle of a character: 257 read with U+FFFD.
        let mut long = b"ada:".to_vec();
        long.extend(std::iter::repeat_n(b'a', 250));
        long.push(0xC3);
        let at_the_limit = RawProperties {
            message_id: Some(long.clone()),
            correlation_id: Some(long.clone()),
            persistent: true,
            headers: vec![(long, b"value".to_vec())],
            ..RawProperties::default()
        };
        for props in [&props, &at_the_limit] {
            let acked = raw_amqp::publish(
                &raw_amqp::host_port(&amqp_uri()),
                &names.inbound_exchange(),
                &keys::inbound("echo", None),
                props,
                b"{\"text\":\"cut\"}",
            )
            .await;
            assert!(acked, "RabbitMQ takes the request");
        }
        let mut gw = StandInGateway::connect(&ns, "bob").await;
        let reply = gw.request("echo", "after", "{\"text\":\"after\"}").await;
        assert_eq!(reply.error, None);
        assert!(
            reply.json().to_string().contains("after"),
            "{:?}",
            reply.json()
        );
        gw.close().await;
        demo.stop().await.expect("the demo service stops");
    })
    .await;
}
