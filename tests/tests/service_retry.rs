//! Handler failures in the service library, over real RabbitMQ: a failed message is
//! handed back and handled again; after `max_attempts` it is dead-lettered to
//! `warren.dead` and the request is refused with `internal`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use warren_e2e::service::{counted_echo, in_fresh_namespace, take_parked, StandInGateway};
use warren_protocol::amqp::Names;
use warren_service::{Answer, HandlerError, Incoming, Outcome, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_failing_handler_gets_the_message_again_and_the_request_still_resolves() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let (service, calls) =
            counted_echo(&ns, ServiceConfig::default(), |n, m: Incoming| async move {
                if n == 0 {
                    return Err(HandlerError::Failed("first attempt fails".into()));
                }
                Ok(Outcome::Reply(Answer::raw(m.body)))
            })
            .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "r1", r#"{"n":1}"#).await;
        assert_eq!(reply.error, None);
        assert_eq!(reply.body, br#"{"n":1}"#);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "handled twice: failed, then ok"
        );
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_message_failing_max_attempts_times_is_dead_lettered_and_the_request_refused() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default().with_max_attempts(3);
        let names = Names::new(&ns);
        let (service, calls) = counted_echo(&ns, config, |_, _| async {
            Err::<Outcome, _>(HandlerError::Failed("always fails".into()))
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "r1", r#"{"poison":true}"#).await;
        assert_eq!(reply.error.as_deref(), Some("internal"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let parked = take_parked(&names)
            .await
            .expect("the message waits in warren.dead");
        assert_eq!(parked.data, br#"{"poison":true}"#);
        let headers = parked.properties.headers().clone().unwrap_or_default();
        assert!(headers.contains_key("x-warren-dead-reason"));
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// A copy of a request sent while the first is being handled (the SDK sends a request
/// again on resume) waits for the first to end instead of being handed back every
/// 200 ms: each hand-back raised its `x-delivery-count`, which counts as a failed
/// attempt, so two real failures dead-lettered it (`internal`) instead of five.
#[tokio::test]
async fn a_copy_sent_while_the_first_is_handled_waits_and_keeps_its_attempts() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let config = ServiceConfig::default().with_prefetch(2);
        let (service, calls) = counted_echo(&ns, config, |n, m: Incoming| async move {
            match n {
                0 => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Err(HandlerError::Failed("the first attempt fails".into()))
                }
                1 => Err(HandlerError::Failed("so does the second".into())),
                _ => Ok(Outcome::Reply(Answer::raw(m.body))),
            }
        })
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        // The same request twice: the same message_id.
        for _ in 0..2 {
            gw.send_request("echo", "r1", r#"{"n":1}"#, Duration::from_secs(30))
                .await;
        }
        for copy in 0..2 {
            let reply = gw
                .next_reply(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("reply {copy} within 30 s"));
            assert_eq!(reply.error, None, "reply {copy}: {:?}", reply.headers);
            assert_eq!(reply.body, br#"{"n":1}"#);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "two failures, then the answer; the other copy gets it remembered"
        );
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}
