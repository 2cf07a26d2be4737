//! The hub's own reader overtaken by retention: it fell behind the stream (held back
//! through the environment of this process: its own test binary) with 2,000 messages
//! in hand, while retention deleted the segments ahead of where RabbitMQ's reader
//! stood. RabbitMQ's reader then goes on at the first segment kept (osiris 1.3.1, in
//! RabbitMQ 3.10.8; see gateway_reader_overtaken), so the hub reads on past a gap.
//! Its live sessions must be told how many positions they missed there, not given
//! the gap in silence: before, the hub checked for one only at its reader's first
//! message after a restart.

use std::time::Duration;

use warren_e2e::client::{skips_told, sub, TestClient, Told};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_gateway::fault::HUB_READ_DELAY_MS;

const LIMIT: Duration = Duration::from_secs(90);
/// Messages in the burst: more than the hub reader's prefetch (2,000) and the
/// retention (about 128 of them) together.
const BURST: usize = 2_400;

#[tokio::test]
async fn a_live_session_is_told_what_retention_took_from_under_the_hubs_reader() {
    TestEnv::run("hub-overtaken", LIMIT, async |env| {
        // 2 MiB of retention in 1 MiB segments.
        let gw = TestGateway::start_with(env, |c| {
            c.stream_max_bytes = 2 * 1024 * 1024;
        })
        .await;
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        env.publish_out("chat.all", "first", "0").await;
        let first = c.expect_deliver().await;
        c.ack_deliveries(first.seq).await;

        // The hub takes 3 s over each message while 37 MiB go past a 2 MiB
        // retention: RabbitMQ hands it 2,000 messages and waits for its credit, and
        // the segments after those are deleted.
        std::env::set_var(HUB_READ_DELAY_MS, "3000");
        let body = format!("\"{}\"", "x".repeat(16 * 1024));
        env.publish_out_burst_of("chat.all", "b", BURST, |_| body.clone().into_bytes())
            .await;
        std::env::set_var(HUB_READ_DELAY_MS, "0");

        // The client reads on, acknowledging as it goes, until the burst's last
        // message (or 60 s). Not until one quiet spell: the hub's reader waits for
        // its look at the stream's first message before it passes the gap on, which
        // took over 5 s on a loaded machine (`./dev test`'s lanes beside it).
        let from = first.position.expect("a position");
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let Told {
            delivered,
            notices,
            last,
        } = loop {
            c.read_on_acking(Duration::from_secs(5), &mut frames).await;
            let told = skips_told(from, &frames);
            if told.last == format!("b{}", BURST - 1) || tokio::time::Instant::now() >= deadline {
                break told;
            }
        };
        eprintln!("{delivered} delivered; positions missed, as told: {notices:?}");
        assert_eq!(last, format!("b{}", BURST - 1), "read to the stream's end");
        assert!(
            !notices.is_empty() && delivered < BURST,
            "retention dropped part of the burst before the hub's reader reached it: \
             {notices:?} told, {delivered} delivered"
        );
        assert_eq!(c.close_code, None, "never closed");
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}
