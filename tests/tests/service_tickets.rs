//! The demo `tickets` service over real RabbitMQ, driven by a raw-lapin stand-in
//! gateway: create / list / get / close by request-response, refusals with codes.

use std::time::Duration;

use warren_e2e::service::{in_fresh_namespace, start_demo, StandInGateway};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn tickets_are_created_listed_fetched_and_closed_by_request_and_reply() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let mut gw = StandInGateway::connect(&ns, "alice").await;

        let created = gw
            .request(
                "tickets",
                "c1",
                r#"{"op":"create","title":"printer on fire"}"#,
            )
            .await;
        assert_eq!(created.error, None);
        assert!(created.message_id.is_some(), "replies carry a message_id");
        let ticket = created.json();
        assert_eq!(ticket["id"], 1);
        assert_eq!(ticket["title"], "printer on fire");
        assert_eq!(ticket["status"], "open");
        assert_eq!(ticket["created_by"], "alice");

        gw.request("tickets", "c2", r#"{"op":"create","title":"no coffee"}"#)
            .await;
        let list = gw.request("tickets", "l1", r#"{"op":"list"}"#).await.json();
        let titles: Vec<&str> = list["tickets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["title"].as_str().unwrap())
            .collect();
        assert_eq!(titles, vec!["printer on fire", "no coffee"]);

        let got = gw
            .request("tickets", "g1", r#"{"op":"get","id":2}"#)
            .await
            .json();
        assert_eq!(got["title"], "no coffee");

        let closed = gw
            .request("tickets", "x1", r#"{"op":"close","id":1}"#)
            .await
            .json();
        assert_eq!(closed["status"], "closed");
        let got = gw
            .request("tickets", "g2", r#"{"op":"get","id":1}"#)
            .await
            .json();
        assert_eq!(got["status"], "closed");

        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_unknown_op_is_refused_as_invalid_and_a_missing_ticket_as_rejected() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let demo = start_demo(&ns).await;
        let mut gw = StandInGateway::connect(&ns, "bob").await;

        let unknown = gw.request("tickets", "u1", r#"{"op":"explode"}"#).await;
        assert_eq!(unknown.error.as_deref(), Some("invalid"));
        assert!(unknown.json()["message"].as_str().unwrap().contains("op"));

        let missing = gw.request("tickets", "m1", r#"{"op":"get","id":42}"#).await;
        assert_eq!(missing.error.as_deref(), Some("rejected"));
        assert_eq!(missing.json()["message"], "ticket 42 not found");

        let not_json = gw.request("tickets", "n1", "definitely not json").await;
        assert_eq!(not_json.error.as_deref(), Some("invalid"));

        // The service is still fine afterwards.
        let ok = gw.request("tickets", "ok", r#"{"op":"list"}"#).await;
        assert_eq!(ok.error, None);

        gw.close().await;
        demo.stop().await.unwrap();
    })
    .await;
}
