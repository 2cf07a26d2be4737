//! Message content that would not fit in an AMQP short string (255 bytes), over real
//! RabbitMQ: an over-long request id, ids derived from a long `message_id`, a consumer
//! tag from a long queue name, a publisher-set `x-delivery-count` of `u32::MAX`. None
//! may panic the service library; each message is handled (or parked) once, and the
//! service goes on answering.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_e2e::env::header_text;
use warren_e2e::service::{
    amqp_uri, consume_no_ack, counted_echo, declare_exclusive, in_fresh_namespace, start_demo,
    take_parked, StandInGateway,
};
use warren_protocol::amqp::{keys, Names, H_REQUEST_ID};
use warren_protocol::Distribution;
use warren_service::demo::tickets::EVENT_CREATED;
use warren_service::incoming::DELIVERY_COUNT_HEADER;
use warren_service::short_string::fitted;
use warren_service::{Answer, Context, HandlerError, Incoming, Outcome, Service, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(60);

/// `properties` with one more header.
fn with_header(properties: BasicProperties, name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(name), value);
    properties.with_headers(headers)
}

#[tokio::test]
async fn a_request_whose_request_id_is_too_long_to_reply_to_is_parked_and_the_next_is_answered() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;

        // Not a gateway: the request id only in `x-warren-request-id`, no
        // `correlation_id`, and 300 bytes long.
        let long_id = "q".repeat(300);
        let props = gw
            .gateway_properties("echo", "long")
            .with_reply_to(gw.reply_queue.as_str().into());
        let props = with_header(
            props,
            H_REQUEST_ID,
            AMQPValue::LongString(LongString::from(long_id.as_str())),
        );
        gw.publish_raw("echo", br#"{"n":1}"#, props).await;

        // The echo consumer (prefetch 1) is not stuck on it.
        let reply = gw.request("echo", "r2", r#"{"n":2}"#).await;
        assert_eq!(reply.body, br#"{"n":2}"#);
        assert!(
            gw.next_reply(Duration::from_millis(500)).await.is_none(),
            "no reply to a request id that cannot be carried back"
        );

        let parked = take_parked(&gw.names)
            .await
            .expect("the request waits in warren.dead");
        assert_eq!(parked.data, br#"{"n":1}"#);
        let reason = header_text(&parked, "x-warren-dead-reason").unwrap();
        assert!(reason.contains("correlation id"), "{reason}");
        assert!(take_parked(&gw.names).await.is_none(), "parked once");

        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_failing_request_with_an_x_delivery_count_of_u32_max_is_refused_and_the_next_is_answered()
{
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default().with_prefetch(1);
        let (service, calls) = counted_echo(&ns, config, |_, m: Incoming| async move {
            if m.body.as_ref() == b"\"fail\"" {
                return Err(HandlerError::Failed("asked to fail".into()));
            }
            Ok(Outcome::Reply(Answer::raw(m.body)))
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;

        let props = gw
            .gateway_properties("echo", "max")
            .with_reply_to(gw.reply_queue.as_str().into())
            .with_correlation_id("max".into());
        let props = with_header(props, DELIVERY_COUNT_HEADER, AMQPValue::LongUInt(u32::MAX));
        gw.publish_raw("echo", b"\"fail\"", props).await;
        let refused = gw
            .next_reply(Duration::from_secs(10))
            .await
            .expect("the failing request is answered");
        assert_eq!(refused.correlation_id.as_deref(), Some("max"));
        assert_eq!(
            refused.error.as_deref(),
            Some("internal"),
            "as many attempts as max_attempts: dead-lettered at once"
        );

        let reply = gw.request("echo", "next", r#"{"n":2}"#).await;
        assert_eq!(reply.body, br#"{"n":2}"#);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(take_parked(&gw.names).await.is_some());

        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_ticket_created_with_a_245_byte_message_id_is_created_once_and_announced_once() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let mut events = gw.observe(&[keys::event("tickets", EVENT_CREATED)]).await;

        // `alice:` + 239 bytes: the gateway accepts message ids up to 255 bytes; the
        // event's id (`<id>:ticket.created`) would be 260.
        let frame_id = "f".repeat(239);
        let message_id = format!("alice:{frame_id}");
        assert_eq!(message_id.len(), 245);
        let created = gw
            .request("tickets", &frame_id, r#"{"op":"create","title":"long id"}"#)
            .await;
        assert_eq!(created.error, None);
        assert_eq!(created.json()["id"], 1);

        let announced = events.drain(Duration::from_secs(1)).await;
        assert_eq!(announced.len(), 1, "announced once");
        let event_id = announced[0].message_id.clone().unwrap();
        assert_eq!(
            event_id,
            fitted(&format!("{message_id}:{EVENT_CREATED}")).as_str()
        );
        assert!(event_id.len() <= 255);

        let list = gw.request("tickets", "l1", r#"{"op":"list"}"#).await.json();
        assert_eq!(list["tickets"].as_array().unwrap().len(), 1, "one ticket");

        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_chat_message_with_a_255_byte_message_id_is_relayed_once_with_a_fitted_id() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let gw = StandInGateway::connect(&ns, "alice").await;
        let mut room = gw.observe(&[keys::broadcast("chat")]).await;

        let frame_id = "f".repeat(249);
        let message_id = format!("alice:{frame_id}");
        let everyone = Distribution {
            broadcast: true,
            ..Distribution::default()
        };
        gw.publish("chat", &frame_id, r#"{"text":"hi"}"#, &everyone)
            .await;

        let relayed = room.drain(Duration::from_secs(2)).await;
        assert_eq!(relayed.len(), 1, "relayed once");
        assert_eq!(relayed[0].body, br#"{"text":"hi"}"#);
        assert_eq!(
            relayed[0].message_id.as_deref(),
            Some(fitted(&format!("{message_id}:relay")).as_str())
        );
        assert!(take_parked(&gw.names).await.is_none(), "nothing parked");

        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_priority_worker_on_a_220_byte_queue_name_consumes_and_answers() {
    in_fresh_namespace(LIMIT, |ns| async move {
        // Not namespaced: a name of its own, padded to 220 bytes, so that
        // `<app_id>-<queue>-<uuid>` passes 255.
        let mut queue = format!("{ns}-work-");
        queue.push_str(&"w".repeat(220 - queue.len()));
        let service = Service::connect(&amqp_uri(), Names::new(&ns))
            .await
            .unwrap();
        service
            .consume_queues(&[queue.as_str()], |_ctx: Context, m: Incoming| async move {
                Ok::<_, HandlerError>(Outcome::Reply(Answer::raw(m.body)))
            })
            .await
            .unwrap();

        let conn = Connection::connect(&amqp_uri(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let replies = declare_exclusive(&ch, "", "reply queue").await;
        let mut consumer = consume_no_ack(&ch, &replies, "consume replies").await;
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"job":1}"#,
            BasicProperties::default()
                .with_reply_to(replies.as_str().into())
                .with_correlation_id("job-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut consumer),
        )
        .await
        .expect("the worker answers within 10 s")
        .expect("a reply")
        .expect("a reply delivery");
        assert_eq!(reply.data, br#"{"job":1}"#);

        service.stop().await.unwrap();
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = conn.close(200, "bye".into()).await;
    })
    .await;
}
