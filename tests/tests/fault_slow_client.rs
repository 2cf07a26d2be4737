//! A slow client: it stops reading while a fast producer floods its session with
//! 20,000 messages of 1 KiB. The gateway (a `warren-gateway` process) holds at most its
//! delivery window for the session, so its resident memory stays under a stated bound.
//! Nothing is dropped: the session stops being pushed to when its live backlog fills,
//! and catches up from its position in the outbound stream when the client reads
//! again: every message is delivered, once, in order, and no `overflow` is reported.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::BasicProperties;
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::http_get;
use warren_e2e::sdk_driver::GatewayProcess;
use warren_protocol::{Hello, ServerFrame, Subscribe};

/// Messages the producer sends.
const SENT: usize = 20_000;
/// The delivery window (prefetch) of the session.
const WINDOW: usize = 64;
/// The bound on the gateway's resident memory while the client does not read.
const RSS_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_cannot_grow_the_gateway_and_catches_up_losing_nothing() {
    let started = std::time::Instant::now();
    let env = TestEnv::new("slow-client").await;
    let node = format!("gws-{}", &env.namespace[env.namespace.len() - 8..]);
    let mut gw = GatewayProcess::spawn(
        &env.namespace,
        &node,
        &[
            // The gateway keeps only 5,000 messages in memory: catching up reads the
            // rest from the stream.
            "--hub-buffer-messages",
            "5000",
            "--delivery-window",
            &WINDOW.to_string(),
            "--heartbeat-ms",
            "60000",
        ],
    )
    .await;
    let mut c = TestClient::connect_with(
        &gw.url(),
        Hello {
            token: Some("slow".into()),
            ..Default::default()
        },
    )
    .await;
    c.subscribe(Subscribe {
        id: "s".into(),
        channel: "chat".into(),
        broadcast: Some(false),
        direct: true,
        ..Default::default()
    })
    .await;
    let baseline = gw.rss_kib().expect("the gateway's VmRSS");
    eprintln!(
        "fault_slow_client: ready after {} ms",
        started.elapsed().as_millis()
    );

    // Sample the gateway's memory while the producer floods the session.
    let pid_gw = gw.pid();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Every sample must be read: a sampler that read nothing would report 0 KiB, under
    // any bound.
    let sampling = tokio::spawn(async move {
        let (mut max, mut samples) = (0, 0);
        while stop_rx.try_recv().is_err() {
            let path = format!("/proc/{pid_gw}/status");
            let status = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {path} (sample {samples}): {e}"))?;
            let kib = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("no VmRSS in {path} (sample {samples}):\n{status}"))?;
            max = max.max(kib);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok::<_, String>((max, samples))
    });
    let ch = env.new_channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
    let flood = std::time::Instant::now();
    for batch in 0..SENT / 500 {
        let mut confirms = Vec::new();
        for k in 0..500 {
            let id = format!("m-{}", batch * 500 + k);
            confirms.push(
                ch.basic_publish(
                    ShortString::from(env.names.outbound_exchange()),
                    ShortString::from("chat.user.slow"),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(ShortString::from(id)),
                )
                .await
                .expect("publish"),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
    }
    let flood_ms = flood.elapsed().as_millis();
    // The client still does not read for a while after the flood.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let _ = stop_tx.send(());
    let (max_rss, samples) = sampling
        .await
        .expect("sampler")
        .unwrap_or_else(|e| panic!("the gateway's memory could not be sampled: {e}"));

    eprintln!(
        "fault_slow_client: flooded after {} ms",
        started.elapsed().as_millis()
    );
    // The client reads again, acknowledging as it goes.
    let mut order = Vec::new();
    let mut delivered = 0usize;
    let mut dropped = 0u64;
    let mut overflow_frames = 0;
    let mut ids = std::collections::HashSet::new();
    while let Some(frame) = c.recv_within(Duration::from_secs(3)).await {
        match frame {
            ServerFrame::Deliver(d) => {
                delivered += 1;
                order.push(d.message_id.clone());
                ids.insert(d.message_id);
                c.ack_deliveries(d.seq).await;
            }
            ServerFrame::Overflow(o) => {
                overflow_frames += 1;
                dropped += o.dropped;
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed().as_millis();
    println!(
        "fault_slow_client: sent {SENT} (flood {flood_ms} ms) delivered {delivered} distinct {} \
         dropped {dropped} in {overflow_frames} overflow frames, lost unreported {}; gateway RSS \
         baseline {baseline} KiB max {max_rss} KiB of {samples} samples (bound {RSS_BOUND_KIB} KiB); \
         run {elapsed} ms",
        ids.len(),
        SENT as i64 - delivered as i64 - dropped as i64,
    );
    let metrics = http_get(gw.addr, "/metrics").await;
    assert_eq!(ids.len(), delivered, "no duplicate deliveries");
    assert_eq!(overflow_frames, 0, "nothing is reported dropped");
    assert_eq!(dropped, 0, "nothing is dropped");
    assert_eq!(delivered, SENT, "every message is delivered");
    let want: Vec<String> = (0..SENT).map(|i| format!("m-{i}")).collect();
    assert!(order == want, "every message, in order");
    let lagged = metrics
        .lines()
        .find(|l| l.starts_with("warren_gateway_stream_lagged_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        lagged.is_some_and(|n| n >= 1),
        "it fell back to catching up: {lagged:?}"
    );
    // The samples are of the gateway as it was flooded: at least what it held before.
    assert!(samples > 0, "the gateway's memory was sampled");
    assert!(
        max_rss >= baseline,
        "the largest sample ({max_rss} KiB) is at least the baseline ({baseline} KiB)"
    );
    assert!(
        max_rss < RSS_BOUND_KIB,
        "gateway RSS {max_rss} KiB stays under {RSS_BOUND_KIB} KiB"
    );
    c.close().await;
    gw.signal_term();
    let _ = gw.wait_exit(Duration::from_secs(10)).await;
    env.cleanup().await;
}
