//! A busy quorum queue: RabbitMQ 3.10.8 asks a quorum queue's leader for its counts
//! with a 250 ms timeout and, when the leader is too busy to answer in time, tells a
//! passive declare the queue has 0 messages and 0 consumers. The gateway reads the
//! consumer count that way to refuse requests nobody can answer (`no_service`); in a
//! storm of resumes (`fault_storm`) that refused a request whose service was there.
//!
//! Here the leader of `IN_TICKETS` is made too busy on purpose (`sys:suspend` of its
//! Ra server for 2 s) while a consumer that does not announce itself holds the queue:
//! a request sent then is not refused, and its reply arrives once the queue answers
//! again. Before and after, with no consumer, a request still gets `no_service` at
//! once. Runs on a private node (`warren_e2e::broker_node`), never on the shared
//! broker; fails where RabbitMQ's server scripts are not installed (skipped with
//! `WARREN_ALLOW_SKIP=1`).

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use tokio::time::Instant;
use warren_e2e::broker_node::{with_private_nodes, BrokerCluster};
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_protocol::{ErrorCode, ServerFrame};

const LIMIT: Duration = Duration::from_secs(120);
/// How long the queue's leader is kept from answering.
const SUSPENDED: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_too_busy_to_count_its_consumers_does_not_make_requests_no_service() {
    with_private_nodes("fault_busy_queue", LIMIT, run()).await;
}

async fn run() {
    let cluster = BrokerCluster::single().await.expect("a private node boots");
    let uri = cluster.uri(0);
    // The shared broker only lends the namespace here; everything runs on the node.
    let env = TestEnv::new("busy-queue").await;
    let gw = TestGateway::start_with(&env, |c| c.amqp_uri = vec![uri.clone()]).await;
    let queue = env.names.channel_queue("tickets");
    let mut client = TestClient::connect(&gw.url()).await;

    // Nobody consumes: refused at once.
    let answer = ask(&mut client, "r0").await;
    assert!(
        matches!(&answer, Some(ServerFrame::Error(e)) if e.code == ErrorCode::NoService),
        "with no consumer a request is refused with no_service: {answer:?}"
    );

    // A consumer that does not announce itself, answering each request.
    let connection = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("the responder connects");
    let channel = connection.create_channel().await.expect("a channel");
    let mut requests = channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("responder"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume IN_TICKETS");
    let responder = tokio::spawn(async move {
        while let Some(Ok(d)) = requests.next().await {
            if let (Some(reply_to), Some(corr)) = (
                d.properties.reply_to().clone(),
                d.properties.correlation_id().clone(),
            ) {
                let _ = channel
                    .basic_publish(
                        ShortString::from(""),
                        reply_to,
                        BasicPublishOptions::default(),
                        &d.data,
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_correlation_id(corr),
                    )
                    .await;
            }
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    });
    // Past the gateway's cached count (CONSUMER_CHECK_TTL).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = ask(&mut client, "r1").await;
    assert!(
        matches!(&answer, Some(ServerFrame::Reply(r)) if r.id == "r1"),
        "with a consumer the request is answered: {answer:?}"
    );
    // Past the gateway's cached count.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The queue's leader too busy to answer: RabbitMQ says "0 consumers" after 250 ms.
    let ra_server = format!("'%2F_{queue}'");
    let said = cluster
        .ctl(0, &["eval", &format!("sys:suspend({ra_server}).")])
        .await
        .expect("the queue's Ra server is suspended");
    let resume_at = Instant::now() + SUSPENDED;
    let resume = {
        let ctl_args = format!("sys:resume({ra_server}).");
        let cluster = &cluster;
        async move {
            tokio::time::sleep_until(resume_at).await;
            cluster
                .ctl(0, &["eval", &ctl_args])
                .await
                .expect("the queue's Ra server is resumed")
        }
    };
    let asked = Instant::now();
    let (answer, _) = tokio::join!(ask(&mut client, "r2"), resume);
    println!(
        "fault_busy_queue: suspended ({}); the request was answered after {:.2} s: {answer:?}",
        said.trim(),
        asked.elapsed().as_secs_f64()
    );
    assert!(
        matches!(&answer, Some(ServerFrame::Reply(r)) if r.id == "r2"),
        "a request while the queue is too busy to count its consumers is not refused; \
         its reply comes once the queue answers: {answer:?}"
    );

    // The consumer gone: refused at once again.
    responder.abort();
    let _ = connection.close(200, "done".into()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let answer = ask(&mut client, "r3").await;
    assert!(
        matches!(&answer, Some(ServerFrame::Error(e)) if e.code == ErrorCode::NoService),
        "with the consumer gone a request is refused with no_service again: {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "at once ({:?})",
        started.elapsed()
    );
    gw.shutdown().await;
}

/// Sends request `id` on `tickets` and returns the frame that settles it: its
/// `reply` or `error` (the `ack` of its publish is skipped), within 15 s.
async fn ask(client: &mut TestClient, id: &str) -> Option<ServerFrame> {
    client
        .request(id, "tickets", Some(10_000), json!({ "n": id }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_within(left).await? {
            ServerFrame::Reply(r) if r.id == id => return Some(ServerFrame::Reply(r)),
            ServerFrame::Error(e) if e.id.as_deref() == Some(id) => {
                return Some(ServerFrame::Error(e))
            }
            _ => continue,
        }
    }
}
