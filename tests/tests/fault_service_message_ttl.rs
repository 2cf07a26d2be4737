//! Message TTLs, service side: a service configured with a TTL for a channel declares
//! its `IN_<CHANNEL>` queue with the arguments the gateway declares
//! (`warren_protocol::amqp::inbound_queue_args`), and a message that waits in the queue
//! longer than the TTL is dead-lettered to `warren.dead` — inspectable, not silently
//! gone. Runs on the shared broker under its own namespace.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_e2e::service::{amqp_uri, expected_inbound_arguments, in_fresh_namespace};
use warren_protocol::amqp::Names;
use warren_service::{Context, HandlerError, Incoming, Outcome, Service, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_inbound_message_older_than_the_channel_ttl_is_dead_lettered_not_lost() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let names = Names::new(&ns);
        let config = ServiceConfig::default()
            .with_prefetch(1)
            .with_message_ttl("chat", Duration::from_millis(300));
        let service = Service::connect_with(&amqp_uri(), names.clone(), config)
            .await
            .expect("the service connects");
        // A stuck worker: it holds the first message for 3 s, so the others wait in
        // the queue past their TTL.
        let handled = Arc::new(AtomicU32::new(0));
        let count = handled.clone();
        service
            .consume("chat", move |_ctx: Context, _msg: Incoming| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok::<_, HandlerError>(Outcome::Done)
                }
            })
            .await
            .expect("the service consumes");

        let connection = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ at AMQP_ADDR");
        let channel = connection.create_channel().await.expect("channel");

        // The queue carries the TTL and the dead-letter exchange (a passive declare
        // cannot show arguments; an active declare with the same ones must succeed).
        let expected = expected_inbound_arguments(&names, Some(300));
        channel
            .queue_declare(
                names.channel_queue("chat").into(),
                QueueDeclareOptions::durable(),
                expected,
            )
            .await
            .expect("IN_CHAT has exactly the shared inbound arguments with the TTL");

        for i in 0..3 {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(ShortString::from(format!("ttl-{i}")));
            channel
                .basic_publish(
                    names.inbound_exchange().into(),
                    "chat.ttl".into(),
                    BasicPublishOptions::default(),
                    format!("{{\"n\":{i}}}").as_bytes(),
                    props,
                )
                .await
                .expect("publish");
        }

        // Two of the three expire while the worker holds the first one.
        let started = Instant::now();
        let mut parked = Vec::new();
        while parked.len() < 2 && started.elapsed() < Duration::from_secs(20) {
            match channel
                .basic_get(
                    names.dead_letter_queue().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .expect("basic.get on warren.dead")
            {
                Some(m) => parked.push(
                    m.delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                ),
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        println!(
            "fault_service_message_ttl: ttl 300 ms; handled {}, dead-lettered {:?} within {:.1} s",
            handled.load(Ordering::SeqCst),
            parked,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(
            parked.len(),
            2,
            "the two waiting messages were dead-lettered"
        );
        assert_eq!(
            handled.load(Ordering::SeqCst),
            1,
            "only the first was handled"
        );
        let _ = connection.close(200, "done".into()).await;
        service.stop().await.expect("the service stops");
    })
    .await;
}

#[tokio::test]
async fn a_ttl_rabbitmq_refuses_fails_consume_with_rabbitmqs_reason() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let names = Names::new(&ns);
        // Over ten years: RabbitMQ refuses the queue (`value_too_large`). Before, the
        // library took the 406 for "exists with other arguments", and the passive
        // declare after it failed with a misleading NOT_FOUND.
        let too_long = Duration::from_millis(315_360_000_001);
        let config = ServiceConfig::default().with_message_ttl("chat", too_long);
        let service = Service::connect_with(&amqp_uri(), names, config)
            .await
            .expect("the service connects");
        let err = service
            .consume("chat", |_ctx: Context, _msg: Incoming| async move {
                Ok::<_, HandlerError>(Outcome::Done)
            })
            .await
            .expect_err("RabbitMQ refuses the queue")
            .to_string();
        assert!(err.contains("value_too_large"), "{err}");
        service.stop().await.expect("stops");
    })
    .await;
}
