//! Prefetch in the service library, over real RabbitMQ: with the default prefetch of 1
//! a slow worker holds one message at a time, the others stay ready in the queue (for
//! another worker), and every request is answered in order.

use std::time::Duration;

use warren_e2e::service::{
    counted_echo, in_fresh_namespace, queue_counts, start_demo_with, StandInGateway,
};
use warren_service::demo::{DemoChannel, DemoOptions};
use warren_service::{Answer, Incoming, Outcome, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_slow_worker_with_prefetch_one_holds_one_message_at_a_time() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo_with(
            &ns,
            DemoOptions {
                channels: vec![DemoChannel::Echo],
                delay: Duration::from_millis(3000),
                ..DemoOptions::default()
            },
        )
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        for i in 1..=3 {
            gw.send_request(
                "echo",
                &format!("r{i}"),
                &i.to_string(),
                Duration::from_secs(30),
            )
            .await;
        }
        let queue = gw.names.channel_queue("echo");
        // While the first is handled (3 s), the other two stay ready.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
        loop {
            let (ready, consumers) = queue_counts(&queue).await;
            assert_eq!(consumers, 1);
            if ready == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "one message held, two ready (now {ready} ready)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 1..=3 {
            let reply = gw
                .next_reply(Duration::from_secs(15))
                .await
                .expect("every request is answered");
            assert_eq!(reply.correlation_id, Some(format!("r{i}")), "in order");
            assert_eq!(reply.body, i.to_string().as_bytes());
        }
        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

/// `prefetch` is a public field, and 0 is AMQP's "no limit": it counts as 1. It used to
/// let RabbitMQ hand the consumer the whole queue while no handler could run, so the
/// service held every message unacknowledged and answered none.
#[tokio::test]
async fn a_prefetch_of_zero_counts_as_one() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig {
            prefetch: 0,
            ..ServiceConfig::default()
        };
        let (service, _calls) = counted_echo(&ns, config, |_, m: Incoming| async move {
            Ok(Outcome::Reply(Answer::raw(m.body)))
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        for i in 1..=3 {
            let reply = gw.request("echo", &format!("r{i}"), &i.to_string()).await;
            assert_eq!(reply.body, i.to_string().as_bytes());
        }
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}
