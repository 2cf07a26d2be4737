//! A gateway that drains (graceful shutdown) still needs RabbitMQ: pending confirms,
//! the presence events of its sessions, its last announcement. RabbitMQ connections
//! lost during the drain are re-established, so what the drain publishes still goes
//! out within the shutdown grace. The connections are closed from the broker side
//! with `rabbitmqctl`; where that tool is not usable the test fails saying so
//! (`WARREN_ALLOW_SKIP=1` skips it instead).

use std::time::Duration;

use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::presence::{as_user, presence_config, Events};
use warren_e2e::rabbitmqctl::cut_gateway_connections;
use warren_gateway::{NoServiceMode, RequestReplies};

#[tokio::test]
async fn connections_lost_while_the_gateway_drains_come_back_for_its_last_presence_events() {
    let mut env = TestEnv::new("drain-broker-loss").await;
    let gw = TestGateway::start_with(&env, |c| {
        presence_config(c);
        // The drain waits for the replies to requests in flight (up to the grace):
        // it lasts while the connections are cut, however long `rabbitmqctl` takes
        // on a loaded machine (it boots an Erlang VM per call), until the client goes.
        c.request_replies = RequestReplies::Direct;
        c.no_service = NoServiceMode::Off;
        c.shutdown_grace_ms = 30_000;
    })
    .await;
    let node = gw.gateway().config().node.clone();
    let mut events = Events::listen(&mut env).await;
    let mut ada = TestClient::connect_with(&gw.url(), as_user("ada")).await;
    let session = ada.session().to_string();
    events
        .wait_for("client.connected", &session, Duration::from_secs(5))
        .await;
    // A request nobody answers holds the drain; it begins, then RabbitMQ drops both
    // of the gateway's connections.
    ada.request("r", "chat", Some(60_000), serde_json::json!({}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let draining = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    match cut_gateway_connections("gateway_drain_broker_loss", &node).await {
        None => {
            ada.abort();
            let _ = draining.await;
            env.cleanup().await;
            return;
        }
        Some(n) => assert_eq!(n, 2, "one publishing and one consuming connection"),
    }
    // The client goes, which ends the drain. A lone gateway announces its sessions
    // gone as it stops (`gateway_lost`): that publish comes after the connections
    // were lost, and still arrives.
    ada.abort();
    let (v, _) = events
        .wait_for("client.disconnected", &session, Duration::from_secs(15))
        .await;
    assert_eq!(v["reason"], "gateway_lost", "{v}");
    tokio::time::timeout(Duration::from_secs(15), draining)
        .await
        .expect("the drain ends")
        .unwrap();
    env.cleanup().await;
}
