//! A session reading behind the ring with a stream reader of its own, at its client's
//! pace, while retention deletes the segments ahead of that reader: RabbitMQ's reader
//! reads to the end of the segment it has open and then goes on at the first segment
//! kept (osiris 1.3.1, in RabbitMQ 3.10.8: at the end of a segment a reader opens the
//! segment of `max(first offset, next offset)`). The session must be told how many
//! positions it missed there, not only at its reader's first message.

use std::time::Duration;

use warren_e2e::client::{skips_told, sub, TestClient, Told};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_protocol::ServerFrame;

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_slow_session_whose_own_reader_retention_overtakes_is_told_what_it_missed() {
    TestEnv::run("reader-overtaken", LIMIT, async |env| {
        // 2 MiB of retention in 1 MiB segments; a ring of 10; 8 deliveries in flight,
        // which is also the prefetch of a session's own reader.
        let gw = TestGateway::start_with(env, |c| {
            c.stream_max_bytes = 2 * 1024 * 1024;
            c.hub_buffer_messages = 10;
            c.delivery_window = 8;
        })
        .await;
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        env.publish_out("chat.all", "first", "0").await;
        let first = c.expect_deliver().await;
        c.ack_deliveries(first.seq).await;
        let hello = c.resume_hello();
        c.abort();

        // 2,500 small messages (well within retention): the resume reads them behind
        // the ring, through a shared reader whose window fills (2,048 messages).
        env.publish_out_burst("chat.all", "s", 2500).await;
        let mut c = TestClient::connect_with(&gw.url(), hello).await;
        assert!(c.welcome().resumed);
        let mut frames = Vec::new();
        let mut seqs = Vec::new();
        while seqs.len() < 8 {
            let f = c
                .recv_within(Duration::from_secs(10))
                .await
                .expect("the first 8");
            if let ServerFrame::Deliver(d) = &f {
                seqs.push(d.seq);
            }
            frames.push(f);
        }
        // Acknowledging nothing for longer than a full window waits (1 s), the
        // session is left behind: it reads on with a reader of its own, 8 at a time.
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.ack_deliveries(seqs[7]).await;
        while seqs.len() < 16 {
            let f = c
                .recv_within(Duration::from_secs(10))
                .await
                .expect("8 more");
            if let ServerFrame::Deliver(d) = &f {
                seqs.push(d.seq);
            }
            frames.push(f);
        }
        // Its reader waits in the first segment for credit while 4.7 MiB go past a
        // 2 MiB retention: the segments after it are deleted.
        let body = format!("\"{}\"", "x".repeat(16 * 1024));
        for i in 0..300 {
            env.publish_out("chat.all", &format!("b{i}"), &body).await;
        }
        // RabbitMQ deletes segments after the publishes are confirmed, as a segment
        // rolls over, and on a loaded machine later than the reader could get there:
        // wait until the stream keeps none of the small messages and its first kept
        // message stays the same for a second.
        let mut kept = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = env.outbound_stream_first_id().await;
            let settled = now.as_deref().is_some_and(|id| id.starts_with('b')) && now == kept;
            if settled || tokio::time::Instant::now() >= deadline {
                break;
            }
            kept = now;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        eprintln!("the stream's first kept message: {kept:?}");

        // The client reads on, acknowledging as it goes, until the last message (or
        // 60 s), not until one quiet spell.
        c.ack_deliveries(seqs[15]).await;
        let from = first.position.expect("a position");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        // Every skip of two positions or more is told, with its size, just before
        // the delivery after it; a skip of one is a segment's first position.
        let Told {
            delivered,
            notices,
            last,
        } = loop {
            c.read_on_acking(Duration::from_secs(3), &mut frames).await;
            let told = skips_told(from, &frames);
            if told.last == "b299" || tokio::time::Instant::now() >= deadline {
                break told;
            }
        };
        eprintln!("{delivered} delivered; positions missed, as told: {notices:?}");
        assert_eq!(last, "b299", "read to the stream's end");
        assert!(
            !notices.is_empty() && delivered < 2800,
            "retention dropped part of the big messages before the reader reached them: \
             {notices:?} told, {delivered} delivered"
        );
        assert_eq!(c.close_code, None, "never closed");
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}
