//! A session that fell out of its shared stream reader's window reads on with a reader
//! of its own; while RabbitMQ opens it, the connection goes on serving the client (its
//! pings, its writes). Its own test binary: the delay is injected through the
//! environment of this process.

use std::time::{Duration, Instant};

use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_gateway::fault::READER_OPEN_DELAY_MS;
use warren_protocol::{Hello, ServerFrame};

const LIMIT: Duration = Duration::from_secs(90);
/// The gateway's `delivery_window`.
const WINDOW: u16 = 8;
/// How long opening the session's own reader is made to take.
const OPEN_DELAY: Duration = Duration::from_secs(3);

/// The gateway's `stream_readers_total`.
async fn readers(gw: &TestGateway) -> u64 {
    let text = warren_e2e::gateway::http_get(gw.health_addr(), "/metrics").await;
    text.lines()
        .find(|l| l.starts_with("warren_gateway_stream_readers_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no stream_readers_total in {text}"))
}

/// A session resumed behind the ring, past more than a shared reader's window, that
/// took its first window and stalled until the shared reader dropped what it still
/// needs, then acknowledged: its own reader is opening (OPEN_DELAY). With what it got
/// and when it acknowledged.
async fn opening_its_own_reader(
    env: &TestEnv,
    gw: &TestGateway,
) -> (TestClient, Vec<String>, Instant) {
    let s = sub("all", "chat");
    let (session, position) = {
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(s.clone()).await;
        let away = (c.session().to_string(), c.welcome().position);
        c.abort();
        away
    };
    // More than a shared reader's window holds.
    let n = warren_gateway::replay::WINDOW_MESSAGES + 200;
    for i in 0..n {
        env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
            .await;
    }
    let mut c = TestClient::connect_with(
        &gw.url(),
        Hello {
            session: Some(session),
            position,
            subscriptions: vec![s],
            ..Default::default()
        },
    )
    .await;
    // Take the first window and stall until the shared reader has dropped what
    // this session still needs (it waits 1 s for its slowest session).
    let mut got = Vec::new();
    let mut last = 0;
    while got.len() < usize::from(WINDOW) {
        let d = c.expect_deliver().await;
        last = d.seq;
        got.push(d.message.get().to_string());
    }
    tokio::time::sleep(warren_gateway::replay::STALL * 5).await;
    // Acknowledging lets the session read on: it is behind its shared reader and
    // opens one of its own, which takes OPEN_DELAY.
    c.ack_deliveries(last).await;
    let acked = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    (c, got, acked)
}

#[tokio::test]
async fn the_connection_serves_its_client_while_its_own_stream_reader_opens() {
    std::env::set_var(READER_OPEN_DELAY_MS, OPEN_DELAY.as_millis().to_string());
    TestEnv::run("stream-reader-open", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.hub_buffer_messages = 3;
            c.delivery_window = WINDOW;
        })
        .await;
        let before = readers(&gw).await;
        let (mut c, mut got, _) = opening_its_own_reader(env, &gw).await;
        let asked = Instant::now();
        c.ping(7).await;
        c.publish("w1", "chat", serde_json::json!({"text": "still here"}))
            .await;
        let (mut pong, mut acked) = (None, None);
        while pong.is_none() || acked.is_none() {
            match c.recv_within(OPEN_DELAY * 2).await {
                Some(ServerFrame::Pong(_)) => pong = Some(asked.elapsed()),
                // Acked, or refused if nothing takes chat writes here: answered.
                Some(ServerFrame::Ack(a)) if a.id == "w1" => acked = Some(asked.elapsed()),
                Some(ServerFrame::Error(e)) if e.id.as_deref() == Some("w1") => {
                    acked = Some(asked.elapsed())
                }
                Some(ServerFrame::Deliver(d)) => got.push(d.message.get().to_string()),
                Some(other) => panic!("unexpected {other:?}"),
                None => panic!("no pong or ack within {:?}", OPEN_DELAY * 2),
            }
        }
        let (pong, acked) = (pong.unwrap(), acked.unwrap());
        println!(
            "pong after {pong:?}, write acked after {acked:?}, reader opening takes {OPEN_DELAY:?}"
        );
        assert!(
            pong < OPEN_DELAY / 2 && acked < OPEN_DELAY / 2,
            "the client waited for the reader: pong after {pong:?}, ack after {acked:?}"
        );
        // Then everything, in order, once.
        let n = warren_gateway::replay::WINDOW_MESSAGES + 200;
        while got.len() < n {
            let d = c.expect_deliver().await;
            got.push(d.message.get().to_string());
            if got.len() % usize::from(WINDOW) == 0 {
                c.ack_deliveries(d.seq).await;
            }
        }
        let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "nothing lost or repeated");
        c.expect_no_deliver(Duration::from_millis(200)).await;
        assert_eq!(
            readers(&gw).await - before,
            2,
            "one shared reader, then one of the session's own"
        );
        gw.shutdown().await;
    })
    .await;
}

/// A session behind the ring whose own reader is still opening when the stream is
/// deleted and declared again ends with 4002, as a live one does. Before, it went on
/// waiting: its reader then opened on the new stream at the old position and heard
/// nothing (until the new stream got there), the connection open and silent.
#[tokio::test]
async fn a_session_whose_reader_opens_while_the_stream_is_replaced_is_ended() {
    std::env::set_var(READER_OPEN_DELAY_MS, OPEN_DELAY.as_millis().to_string());
    TestEnv::run("stream-reader-replaced", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.hub_buffer_messages = 3;
            c.delivery_window = WINDOW;
        })
        .await;
        let (mut c, _, acked) = opening_its_own_reader(env, &gw).await;
        // Meanwhile the stream is deleted and declared again (by a gateway starting),
        // before the reader opens: else the reader would fail on the missing stream,
        // which closes the session too and proves nothing.
        env.delete_outbound_stream().await;
        let stream = env.names.outbound_stream();
        let (gw2, declared) = tokio::join!(TestGateway::start(env), async {
            while env.message_count(&stream).await.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked.elapsed()
        });
        assert!(
            declared < OPEN_DELAY,
            "declared again {declared:?} after the ack, once the reader had opened"
        );
        let started = Instant::now();
        let closed = c.expect_close(Duration::from_secs(15)).await;
        println!("closed with {closed:?} after {:?}", started.elapsed());
        assert_eq!(
            closed,
            Some(4002),
            "the session stayed open on the replaced stream"
        );
        gw2.shutdown().await;
        gw.shutdown().await;
    })
    .await;
}
