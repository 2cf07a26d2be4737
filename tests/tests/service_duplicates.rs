//! Duplicate suppression by `message_id` in the service library, over real RabbitMQ:
//! a re-sent request is not handled twice and gets the reply it got before; a re-sent
//! chat message is relayed once; a handler still running when the service's
//! connection drops is not run a second time for the copy RabbitMQ redelivers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use warren_e2e::env::wait_until;
use warren_e2e::service::{
    counted_echo_on, in_fresh_namespace, start_demo, CuttableProxy, StandInGateway,
};
use warren_protocol::amqp::keys;
use warren_protocol::Distribution;
use warren_service::{Answer, Incoming, Outcome, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_request_sent_twice_with_one_message_id_is_handled_once_and_answered_twice_alike() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        let create = r#"{"op":"create","title":"once"}"#;
        let first = gw.request("tickets", "dup-1", create).await;
        // The same frame id from the same user: the same message_id, a re-send.
        let second = gw.request("tickets", "dup-1", create).await;
        assert_eq!(first.json()["id"], 1);
        assert_eq!(second.body, first.body, "the remembered reply is re-sent");
        assert_eq!(
            second.message_id, first.message_id,
            "with the same message_id"
        );

        let list = gw
            .request("tickets", "list-1", r#"{"op":"list"}"#)
            .await
            .json();
        assert_eq!(
            list["tickets"].as_array().unwrap().len(),
            1,
            "one ticket only"
        );
        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_chat_message_sent_twice_with_one_message_id_is_relayed_once() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let gw = StandInGateway::connect(&ns, "alice").await;
        let mut all = gw.observe(&[keys::broadcast("chat")]).await;
        let everyone = Distribution {
            broadcast: true,
            ..Distribution::default()
        };
        gw.publish("chat", "m1", r#"{"text":"hi"}"#, &everyone)
            .await;
        gw.publish("chat", "m1", r#"{"text":"hi"}"#, &everyone)
            .await;
        gw.publish("chat", "m2", r#"{"text":"again"}"#, &everyone)
            .await;
        let got = all.drain(Duration::from_secs(2)).await;
        let bodies: Vec<&[u8]> = got.iter().map(|m| m.body.as_slice()).collect();
        assert_eq!(
            bodies,
            vec![&br#"{"text":"hi"}"#[..], &br#"{"text":"again"}"#[..]]
        );
        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

/// The connection of a service handling several requests at a time drops while a
/// handler works on one for longer than the library's 10 s stop grace. RabbitMQ redelivers the request on the next
/// connection; the copy waits in the duplicate window for the first run's end and is
/// answered from it. The first run was aborted 10 s after the loss, marked failed, and
/// the copy ran the handler a second time: twice for one request.
#[tokio::test]
async fn a_handler_running_when_the_connection_drops_is_not_run_again_for_the_copy() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let proxy = CuttableProxy::start().await;
        let (began, mut running) = mpsc::unbounded_channel();
        let (service, calls) = counted_echo_on(
            &proxy.uri,
            &ns,
            // More than one at a time: with a prefetch of 1 the consume loop, waiting
            // for the handler's permit, notices the loss only once the handler ends.
            ServiceConfig::default().with_prefetch(4),
            move |_, m: Incoming| {
                let began = began.clone();
                async move {
                    let _ = began.send(());
                    tokio::time::sleep(Duration::from_secs(12)).await;
                    Ok(Outcome::Reply(Answer::raw(m.body)))
                }
            },
        )
        .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        gw.send_request("echo", "slow-1", r#"{"n":1}"#, Duration::from_secs(45))
            .await;
        tokio::time::timeout(Duration::from_secs(10), running.recv())
            .await
            .expect("the handler starts within 10 s");
        proxy.cut();
        let reply = gw
            .next_reply(Duration::from_secs(30))
            .await
            .expect("answered within 30 s");
        assert_eq!(reply.correlation_id.as_deref(), Some("slow-1"));
        assert_eq!(reply.body, br#"{"n":1}"#);
        // Time for a second run to begin, had the copy been handled.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once");
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}

/// A reply that could not be published (the connection was lost) is kept so that the
/// redelivered request re-sends it. Kept within `remember_replies_total_bytes`, a newer
/// reply pushed it out, and its id stayed remembered as handled without a reply: the
/// copy was acknowledged unanswered and the client never got one. Not yet sent, it
/// must be sent, or the handler run again.
#[tokio::test]
async fn a_reply_not_yet_sent_is_not_forgotten_over_the_reply_budget() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let proxy = CuttableProxy::start().await;
        let config = ServiceConfig {
            // One reply of these (36 bytes of message_id, 7 of body) fits, two do not.
            remember_replies_total_bytes: 60,
            publish_timeout: Duration::from_secs(1),
            ..ServiceConfig::default().with_prefetch(2)
        };
        let (service, calls) =
            counted_echo_on(&proxy.uri, &ns, config, |_, m: Incoming| async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(Outcome::Reply(Answer::raw(m.body)))
            })
            .await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;
        for i in 1..=2 {
            gw.send_request(
                "echo",
                &format!("budget-{i}"),
                &format!(r#"{{"n":{i}}}"#),
                Duration::from_secs(45),
            )
            .await;
        }
        wait_until(
            "both handlers start",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || calls.load(Ordering::SeqCst) >= 2,
        )
        .await;
        // Cut off until both replies failed to publish (3 s of handling, 1 s of
        // publish timeout), then back.
        proxy.hold_off(true);
        tokio::time::sleep(Duration::from_secs(6)).await;
        proxy.hold_off(false);
        let mut answered = Vec::new();
        while answered.len() < 2 {
            let reply = gw
                .next_reply(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| {
                    panic!("both requests answered within 30 s; answered: {answered:?}")
                });
            let id = reply.correlation_id.clone().expect("a correlation id");
            let i = id.trim_start_matches("budget-");
            assert_eq!(reply.body, format!(r#"{{"n":{i}}}"#).as_bytes());
            if !answered.contains(&id) {
                answered.push(id);
            }
        }
        gw.close().await;
        service.stop().await.unwrap();
    })
    .await;
}
