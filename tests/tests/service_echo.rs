//! The demo `echo` service over real RabbitMQ: a request is answered with its very
//! bytes; a plain publish is acknowledged without a reply.

use std::time::Duration;

use warren_e2e::service::{in_fresh_namespace, start_demo, StandInGateway};
use warren_protocol::Distribution;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn echo_answers_a_request_with_the_same_bytes() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        // Odd spacing and key order: the bytes must come back untouched.
        let message = "{ \"b\" : [1, 2 ,3],\n  \"a\":\"\\u00e9\" }";
        let reply = gw.request("echo", "e1", message).await;
        assert_eq!(reply.error, None);
        assert_eq!(reply.body, message.as_bytes());
        assert_eq!(reply.correlation_id.as_deref(), Some("e1"));
        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn echo_acknowledges_a_plain_publish_without_replying() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        gw.publish("echo", "p1", r#"{"x":1}"#, &Distribution::default())
            .await;
        assert!(gw.next_reply(Duration::from_millis(700)).await.is_none());
        let queue = gw.names.channel_queue("echo");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (ready, consumers) = gw.queue_counts(&queue).await;
            assert_eq!(consumers, 1);
            if ready == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the publish was consumed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A request after it is still answered: the publish did not block the queue.
        let reply = gw.request("echo", "e2", "2").await;
        assert_eq!(reply.body, b"2");
        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}
