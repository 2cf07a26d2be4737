//! The demo `chat` and `voice` relays over real RabbitMQ: messages reach exactly the
//! bindings of the targets the client named, several targets are ONE publish (with
//! `CC`), and the relayed message is the client's bytes with the sender in headers.

use std::time::Duration;

use warren_e2e::service::{in_fresh_namespace, start_demo, StandInGateway};
use warren_protocol::amqp::{keys, H_SESSION, H_USER};
use warren_protocol::Distribution;

const LIMIT: Duration = Duration::from_secs(60);
const QUIET: Duration = Duration::from_millis(800);

fn groups(gs: &[&str]) -> Distribution {
    Distribution {
        groups: gs.iter().map(|g| g.to_string()).collect(),
        ..Distribution::default()
    }
}

#[tokio::test]
async fn a_relay_to_two_groups_is_one_publish_reaching_both_bindings() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let gw = StandInGateway::connect(&ns, "alice").await;
        let mut only_a = gw.observe(&[keys::group("chat", "a")]).await;
        let mut only_b = gw.observe(&[keys::group("chat", "b")]).await;
        let mut both = gw
            .observe(&[keys::group("chat", "a"), keys::group("chat", "b")])
            .await;
        let mut other = gw.observe(&[keys::group("chat", "c")]).await;
        let mut all = gw.observe(&[keys::broadcast("chat")]).await;

        let body = r#"{"text": "to a and b"}"#;
        gw.publish("chat", "g1", body, &groups(&["a", "b"])).await;

        let a = only_a
            .next(Duration::from_secs(5))
            .await
            .expect("group a got it");
        let b = only_b
            .next(Duration::from_secs(5))
            .await
            .expect("group b got it");
        assert_eq!(a.body, body.as_bytes());
        assert_eq!(a.message_id, b.message_id, "the same message");
        // One publish: routing key + CC, so a queue bound to both gets ONE copy.
        assert_eq!(a.routing_key, keys::group("chat", "a"));
        assert_eq!(a.cc, vec![keys::group("chat", "b")]);
        let x = both
            .next(Duration::from_secs(5))
            .await
            .expect("a member of both got it");
        assert_eq!(x.message_id, a.message_id);
        assert!(
            both.next(QUIET).await.is_none(),
            "exactly once for a member of both"
        );
        assert!(other.next(QUIET).await.is_none(), "group c got nothing");
        assert!(all.next(QUIET).await.is_none(), "the broadcast got nothing");
        assert!(only_a.next(QUIET).await.is_none());

        // Sender info rides in headers.
        assert_eq!(a.headers.get(H_USER).map(String::as_str), Some("alice"));
        assert_eq!(a.headers.get(H_SESSION), Some(&gw.session));
        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_broadcast_and_a_direct_relay_reach_only_their_bindings() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let gw = StandInGateway::connect(&ns, "alice").await;
        let mut all = gw.observe(&[keys::broadcast("chat")]).await;
        let mut bob = gw.observe(&[keys::user("chat", "bob")]).await;
        let mut carol = gw.observe(&[keys::user("chat", "carol")]).await;

        let everyone = Distribution {
            broadcast: true,
            ..Distribution::default()
        };
        gw.publish("chat", "b1", r#"{"text":"hello all"}"#, &everyone)
            .await;
        let m = all.next(Duration::from_secs(5)).await.expect("broadcast");
        assert_eq!(m.body, br#"{"text":"hello all"}"#);
        assert!(m.cc.is_empty());
        assert!(bob.next(QUIET).await.is_none());

        let to_bob = Distribution {
            direct: vec!["bob".into()],
            ..Distribution::default()
        };
        gw.publish("chat", "d1", r#"{"text":"psst"}"#, &to_bob)
            .await;
        let m = bob
            .next(Duration::from_secs(5))
            .await
            .expect("direct to bob");
        assert_eq!(m.body, br#"{"text":"psst"}"#);
        assert!(carol.next(QUIET).await.is_none(), "carol got nothing");
        assert!(all.next(QUIET).await.is_none(), "the broadcast got nothing");
        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn voice_signalling_reaches_only_the_direct_targets() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let gw = StandInGateway::connect(&ns, "alice").await;
        let mut bob = gw.observe(&[keys::user("voice", "bob")]).await;
        let mut carol = gw.observe(&[keys::user("voice", "carol")]).await;
        let mut dave = gw.observe(&[keys::user("voice", "dave")]).await;
        let mut chat_bob = gw.observe(&[keys::user("chat", "bob")]).await;

        let to = Distribution {
            direct: vec!["bob".into(), "carol".into()],
            ..Distribution::default()
        };
        let call = r#"{"type":"call","sdp":"v=0..."}"#;
        gw.publish("voice", "v1", call, &to).await;
        let b = bob.next(Duration::from_secs(5)).await.expect("bob rings");
        let c = carol
            .next(Duration::from_secs(5))
            .await
            .expect("carol rings");
        assert_eq!(b.body, call.as_bytes());
        assert_eq!(b.message_id, c.message_id, "one publish for both");
        assert!(dave.next(QUIET).await.is_none());
        assert!(
            chat_bob.next(QUIET).await.is_none(),
            "other channels untouched"
        );

        let mut replies = StandInGateway::connect(&ns, "alice").await;
        let refused = replies.request("voice", "v2", r#"{"type":"hangup"}"#).await;
        assert_eq!(
            refused.error.as_deref(),
            Some("invalid"),
            "no direct target"
        );
        replies.close().await;
        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}
