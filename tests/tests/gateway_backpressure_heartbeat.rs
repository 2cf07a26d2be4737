//! A client with `max_pending_confirms` publishes awaiting their confirms is not read
//! until confirms come back (backpressure). What it sends meanwhile, its pings and its
//! answers to the gateway's, waits unread: the gateway must not take that silence for
//! a dead client. Before, a client whose confirms RabbitMQ held back (a resource
//! alarm, a quorum queue electing a leader) for longer than 2.5 heartbeats was closed
//! with 4000 `heartbeat_timeout` while it kept answering, and its publish was never
//! answered on that connection. Its own test binary: the confirm delay is injected
//! through the environment of this process.

use std::time::{Duration, Instant};

use serde_json::json;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_gateway::fault::CONFIRM_DELAY_MS;
use warren_protocol::ServerFrame;

const LIMIT: Duration = Duration::from_secs(60);
/// How late each confirm is taken: ten heartbeat timeouts.
const CONFIRM_DELAY: Duration = Duration::from_secs(4);

#[tokio::test]
async fn a_client_not_read_while_its_confirms_are_held_back_is_not_timed_out() {
    std::env::set_var(CONFIRM_DELAY_MS, CONFIRM_DELAY.as_millis().to_string());
    TestEnv::run("bp-heartbeat", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            // Nothing heard for 1 s closes a client that is read.
            c.heartbeat_ms = 400;
            // One publish awaiting its confirm stops the reading.
            c.max_pending_confirms = 1;
        })
        .await;
        let mut client = TestClient::connect(&gw.url()).await;
        let started = Instant::now();
        client.publish("held", "chat", json!({"n": 1})).await;
        // The client keeps talking (and answering the gateway's pings) until its ack.
        let mut acked = None;
        let mut ts = 0;
        while acked.is_none() && started.elapsed() < CONFIRM_DELAY * 2 {
            ts += 1;
            client.ping(ts).await;
            match client.recv_within(Duration::from_millis(150)).await {
                Some(ServerFrame::Ack(a)) if a.id == "held" => acked = Some(started.elapsed()),
                Some(ServerFrame::Error(e)) => panic!("an error instead of the ack: {e:?}"),
                Some(_) => {}
                None => assert!(
                    client.close_code.is_none(),
                    "closed with {:?} after {:?}, its publish unanswered",
                    client.close_code,
                    started.elapsed()
                ),
            }
        }
        let acked = acked.expect("the publish is acknowledged once its confirm comes");
        assert!(
            acked >= CONFIRM_DELAY,
            "acked after {acked:?}: no delay injected?"
        );
        // Read again, the connection is as before: its pings are answered.
        client.ping(999).await;
        let pong = loop {
            match client.recv_within(Duration::from_secs(2)).await {
                Some(ServerFrame::Pong(p)) if p.ts == Some(999) => break Some(p),
                Some(_) => {}
                None => break None,
            }
        };
        assert!(
            pong.is_some(),
            "no pong after the ack: {:?}",
            client.close_code
        );
        client.close().await;
        gw.shutdown().await;
    })
    .await;
}
