//! Resumes naming positions this gateway's hub has not read yet (clients coming from a
//! gateway ahead of this one) are checked against the stream's tail, and resumes
//! waiting together share those looks. A look for one position stops at the first
//! message at or past it, so what it saw proves nothing about later positions: a
//! second resume must not be refused on it. Its own test binary: the hub is held
//! behind through the environment of this process.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_gateway::fault::HUB_READ_DELAY_MS;
use warren_protocol::amqp::keys;
use warren_protocol::Hello;

const LIMIT: Duration = Duration::from_secs(60);

/// Every position in `stream`, read from its start until nothing comes for 500 ms.
async fn positions(env: &TestEnv, stream: &str) -> Vec<u64> {
    let ch = env.new_channel().await;
    ch.basic_qos(1_000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            ShortString::from(stream),
            "t-positions".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume the stream");
    let mut seen = Vec::new();
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
        {
            Some(AMQPValue::LongLongInt(o)) => seen.push(o as u64),
            other => panic!("a stream message without its position: {other:?}"),
        }
    }
    let _ = ch.close(200, "done".into()).await;
    seen
}

#[tokio::test]
async fn resumes_ahead_of_the_hub_are_not_refused_on_a_look_taken_for_another() {
    // The hub takes 5 s over each message: it reads none of this test's broadcasts
    // while the resumes wait for it (300 ms), so both are checked against the tail.
    std::env::set_var(HUB_READ_DELAY_MS, "5000");
    TestEnv::run("tail-look", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let c = TestClient::connect(&gw.url()).await;
        let session = c.session().to_string();
        c.close().await;

        // 40 broadcasts at once: RabbitMQ writes them in chunks of several, so a look
        // from the last chunk for the first position stops before the last one.
        let mut confirms = Vec::new();
        for i in 0..40 {
            let confirm = env
                .channel()
                .basic_publish(
                    ShortString::from(env.names.outbound_exchange()),
                    ShortString::from(keys::broadcast("chat")),
                    BasicPublishOptions::default(),
                    format!("{{\"n\":{i}}}").as_bytes(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(ShortString::from(format!("m{i}"))),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for c in confirms {
            assert!(c.await.expect("confirm").is_ack());
        }
        let seen = positions(env, &env.names.outbound_stream()).await;
        assert_eq!(seen.len(), 40, "the stream holds the 40 broadcasts");
        let (first, last) = (seen[0], seen[39]);

        // Two clients of that session come back from a gateway that had read these
        // positions: one that acknowledged the first broadcast, then one that had them
        // all. The second asks while the first one's look is under way or done.
        let resume = |position| Hello {
            session: Some(session.clone()),
            position: Some(position),
            ..Default::default()
        };
        let url = gw.url();
        let early = tokio::spawn({
            let (url, hello) = (url.clone(), resume(first));
            async move { TestClient::connect_with(&url, hello).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let late = tokio::spawn({
            let hello = resume(last);
            async move { TestClient::connect_with(&url, hello).await }
        });
        for (what, client) in [("first", early), ("last", late)] {
            let client = client.await.expect("no panic");
            let w = client.welcome();
            assert!(
                w.resumed && w.notice.is_none(),
                "the resume at the {what} position ({}) must resume: the stream holds \
                 positions {first}..={last}; got {w:?}",
                if what == "first" { first } else { last }
            );
            client.close().await;
        }
    })
    .await;
}
