//! Prefetch in the service library, over real RabbitMQ: with the default prefetch of 1
//! a slow worker holds one message at a time, the others stay ready in the queue (for
//! another worker), and every request is answered in order.

use std::time::Duration;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use lapin::BasicProperties;
use warren_e2e::env::wait_until;
use warren_e2e::service::{
    counted_echo, counted_echo_on, in_fresh_namespace, start_demo_with, wait_for_counts,
    CuttableProxy, StandInGateway,
};
use warren_service::demo::{DemoChannel, DemoOptions};
use warren_service::{Answer, Incoming, Outcome, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(60);

/// Waits (at most `within`) until `queue`'s one consumer holds one of three requests
/// and the other two are ready.
async fn one_held_two_ready(queue: &str, within: Duration) {
    wait_for_counts(
        queue,
        within,
        "one message held, two ready",
        |ready, consumers| {
            assert_eq!(consumers, 1);
            ready == 2
        },
    )
    .await;
}

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
        one_held_two_ready(&queue, Duration::from_millis(2500)).await;
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
/// service held every message unacknowledged and answered none. Three requests at
/// once to a slow handler: one is taken, the other two stay ready in the queue, and
/// no two calls ever run together (a prefetch of 1, not unlimited).
#[tokio::test]
async fn a_prefetch_of_zero_counts_as_one() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig {
            prefetch: 0,
            ..ServiceConfig::default()
        };
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let (service, calls) = counted_echo(&ns, config, {
            let running = running.clone();
            let most = most.clone();
            move |_, m: Incoming| {
                let running = running.clone();
                let most = most.clone();
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(Outcome::Reply(Answer::raw(m.body)))
                }
            }
        })
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
        wait_until(
            "the first handler starts",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || running.load(Ordering::SeqCst) >= 1,
        )
        .await;
        // While the first is handled (1.5 s), the other two stay ready in the queue:
        // unlimited, RabbitMQ would have handed all three to the consumer.
        let queue = gw.names.channel_queue("echo");
        one_held_two_ready(&queue, Duration::from_millis(1_200)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one message taken");
        for i in 1..=3 {
            let reply = gw
                .next_reply(Duration::from_secs(15))
                .await
                .expect("every request is answered");
            assert_eq!(reply.correlation_id, Some(format!("r{i}")), "in order");
            assert_eq!(reply.body, i.to_string().as_bytes());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(most.load(Ordering::SeqCst), 1, "one handler call at a time");
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// The prefetch bounds the handler calls running at once across a lost consumer too.
/// The handlers of the lost consumer go on in the background; the consumer started
/// again on the next connection used to take `prefetch` fresh slots at once, and ran
/// the messages RabbitMQ handed back beside them: three calls at once with a prefetch
/// of 2. Messages without `message_id`, so a copy is not held back by the duplicate
/// window.
#[tokio::test]
async fn the_prefetch_still_bounds_the_handlers_after_a_lost_consumer() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let proxy = CuttableProxy::start().await;
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let (service, calls) = counted_echo_on(
            &proxy.uri,
            &ns,
            ServiceConfig::default().with_prefetch(2),
            {
                let running = running.clone();
                let most = most.clone();
                move |_, m: Incoming| {
                    let running = running.clone();
                    let most = most.clone();
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let secs: u64 = String::from_utf8_lossy(&m.body).parse().unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(Outcome::Done)
                    }
                }
            },
        )
        .await;
        let gw = StandInGateway::connect(&ns, "alice").await;
        // No `message_id`: the gateway's headers only.
        let headers = gw
            .gateway_properties("echo", "unused")
            .headers()
            .clone()
            .unwrap_or_default();
        for secs in ["2", "6"] {
            let properties = BasicProperties::default().with_headers(headers.clone());
            gw.publish_raw("echo", secs.as_bytes(), properties).await;
        }
        wait_until(
            "both handlers start",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || running.load(Ordering::SeqCst) >= 2,
        )
        .await;
        // Lost at once: the 2 s call ends, the consumer notices the loss and starts
        // again while the 6 s call still runs; RabbitMQ hands both messages back.
        proxy.cut();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while calls.load(Ordering::SeqCst) < 4 || running.load(Ordering::SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "both copies handled within 30 s ({} calls)",
                calls.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "at most `prefetch` handler calls at once"
        );
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}
