//! Messages RabbitMQ cannot take in one frame, over real RabbitMQ: an AMQP content
//! header (the properties: headers, the `CC` list of a multicast) must fit in one
//! frame of `frame_max` bytes (128 KiB by default), and one that does not makes
//! RabbitMQ close the whole connection (`501 frame_too_large`). The service library
//! refuses such a publish itself, with a typed error, and keeps its connection; a
//! handler whose reply is refused so is not run again and again: the request is
//! answered `internal`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use warren_e2e::service::{counted_echo, in_fresh_namespace, StandInGateway};
use warren_service::{Answer, Incoming, Outcome, Outgoing, ServiceConfig, ServiceError, Targets};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_reply_whose_headers_cannot_fit_a_frame_is_answered_internal_and_not_handled_again() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let (service, calls) =
            counted_echo(&ns, ServiceConfig::default(), |_, m: Incoming| async move {
                if m.body.starts_with(b"\"big\"") {
                    let answer = Answer::raw(m.body).with_header("x-huge", "h".repeat(200_000));
                    return Ok(Outcome::Reply(answer));
                }
                Ok(Outcome::Reply(Answer::raw(m.body)))
            })
            .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "r1", r#""big""#).await;
        assert_eq!(
            reply.error.as_deref(),
            Some("internal"),
            "the requester is told; headers {:?}",
            reply.headers
        );
        // Handled once: not handed back to be handled (and refused) again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once");
        // The service's connection is intact: the next request is answered.
        let reply = gw.request("echo", "r2", r#"{"n":2}"#).await;
        assert_eq!(reply.error, None);
        assert_eq!(reply.body, br#"{"n":2}"#);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_multicast_too_large_for_one_frame_is_refused_typed_and_the_service_goes_on() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let (service, _calls) =
            counted_echo(&ns, ServiceConfig::default(), |_, m: Incoming| async move {
                Ok(Outcome::Reply(Answer::raw(m.body)))
            })
            .await;
        let users: Vec<String> = (0..8_000).map(|i| format!("user-{i:05}")).collect();
        let started = std::time::Instant::now();
        let refused = service
            .publisher()
            .publish(&Outgoing::new(Targets::users("chat", &users), "1"))
            .await
            .expect_err("8,000 users do not fit one frame");
        assert!(
            matches!(refused, ServiceError::TooLarge { .. }),
            "a typed refusal, got {refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused at once, not after the publish timeout: {:?}",
            started.elapsed()
        );
        // What fits still goes out, on the same connection.
        service
            .publisher()
            .publish(&Outgoing::new(Targets::users("chat", &users[..100]), "1"))
            .await
            .expect("100 users fit");
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let reply = gw.request("echo", "r1", r#"{"n":1}"#).await;
        assert_eq!(reply.error, None);
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}
