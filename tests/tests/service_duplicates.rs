//! Duplicate suppression by `message_id` in the service library, over real RabbitMQ:
//! a re-sent request is not handled twice and gets the reply it got before; a re-sent
//! chat message is relayed once.

use std::time::Duration;

use warren_e2e::service::{in_fresh_namespace, start_demo, StandInGateway};
use warren_protocol::amqp::keys;
use warren_protocol::Distribution;

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
