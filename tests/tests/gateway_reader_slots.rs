//! Stream readers for sessions behind the hub's ring are bounded by
//! `max_stream_readers`: sessions resuming from positions too far apart to share a
//! reader, past the bound, wait for one to close, and then get everything, in order,
//! once. (Each reader is an AMQP channel on the consuming connection; sessions name
//! their own positions, so without a bound a storm of resumes from scattered old
//! positions could take every channel RabbitMQ allows that connection.)

use std::time::Duration;

use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_gateway::replay::WINDOW_MESSAGES;
use warren_protocol::{Hello, Subscribe};

const LIMIT: Duration = Duration::from_secs(90);

/// Delivery bodies (numbers) up to and including `last`, acknowledged as they come
/// (every 8th: within the smallest delivery window used here).
async fn take_until(c: &mut TestClient, last: usize) -> Vec<usize> {
    take_positions_until(c, last)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// As `take_until`, with each delivery's stream position.
async fn take_positions_until(c: &mut TestClient, last: usize) -> Vec<(usize, u64)> {
    let mut got = Vec::new();
    loop {
        let d = c.expect_deliver().await;
        let n: usize = d.message.get().parse().expect("a number");
        got.push((n, d.position.expect("a stream position")));
        if got.len() % 8 == 0 || n == last {
            c.ack_deliveries(d.seq).await;
        }
        if n == last {
            return got;
        }
    }
}

/// Drops `c`'s connection without a close (a client gone): the `hello` that resumes
/// its session, subscribed to `s`, from where it started.
fn away(c: TestClient, s: &Subscribe) -> Hello {
    let hello = Hello {
        session: Some(c.session().to_string()),
        position: c.welcome().position,
        subscriptions: vec![s.clone()],
        ..Default::default()
    };
    c.abort();
    hello
}

/// Whether `got` is `from..=last` exactly: in order, nothing lost, nothing twice.
fn exactly(got: &[usize], from: usize, last: usize) -> bool {
    got.len() == last + 1 - from && got.iter().enumerate().all(|(i, n)| *n == from + i)
}

#[tokio::test]
async fn resumes_past_max_stream_readers_wait_for_a_reader_and_lose_nothing() {
    TestEnv::run("reader-slots", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.hub_buffer_messages = 3;
            c.max_stream_readers = 1;
        })
        .await;
        let s = sub("all", "chat");
        // Two sessions away from positions further apart than a shared reader
        // reaches (it takes sessions up to half its window ahead).
        let apart = WINDOW_MESSAGES;
        let mut a = TestClient::connect(&gw.url()).await;
        a.subscribe(s.clone()).await;
        let a_hello = away(a, &s);
        for i in 0..apart {
            env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
                .await;
        }
        let mut b = TestClient::connect(&gw.url()).await;
        b.subscribe(s.clone()).await;
        // Where b's session begins: after what the hub had read when it opened (on a
        // busy machine, some way short of the first batch's end).
        let b_start = b.welcome().position;
        let b_hello = away(b, &s);
        for i in apart..2 * apart {
            env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
                .await;
        }
        assert_eq!(gw.metric("stream_readers_open").await, 0);

        // Both back at once: one reader may be open, so one of them waits for it.
        let mut a = TestClient::connect_with(&gw.url(), a_hello).await;
        let mut b = TestClient::connect_with(&gw.url(), b_hello).await;
        assert!(a.welcome().resumed && b.welcome().resumed);
        let last = 2 * apart - 1;
        let (got_a, got_b) =
            tokio::join!(take_positions_until(&mut a, last), take_until(&mut b, last));
        // The first message after b's start, as a (which has them all) saw it.
        let b_first = got_a
            .iter()
            .find(|(_, p)| b_start.is_none_or(|start| *p > start))
            .map(|(n, _)| *n);
        let got_a: Vec<usize> = got_a.into_iter().map(|(n, _)| n).collect();
        assert!(
            exactly(&got_a, 0, last),
            "session a: everything from its position, in order, once: {} messages from {:?}",
            got_a.len(),
            got_a.first()
        );
        // b's session began after what the hub had read of the first batch:
        // everything from there.
        let from_b = got_b.first().copied().unwrap_or(usize::MAX);
        assert!(
            Some(from_b) == b_first && from_b <= apart && exactly(&got_b, from_b, last),
            "session b: everything after its position {b_start:?} (message {b_first:?}), \
             in order, once: {} messages from {from_b}",
            got_b.len()
        );
        a.expect_no_deliver(Duration::from_millis(200)).await;
        b.expect_no_deliver(Duration::from_millis(200)).await;

        let waits = gw.metric("stream_reader_waits_total").await;
        assert!(waits >= 1, "a reader waited for the one slot: {waits}");
        // Both at the ring: their readers closed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gw.metric("stream_readers_open").await != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the readers closed once their sessions reached the ring"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        a.close().await;
        b.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// A client that stops acknowledging (it still talks: pings of its own) gives up its
/// reader behind the ring after a heartbeat interval with its delivery window full:
/// another session's resume that waited for the slot then gets everything, and the
/// stalled client, once it acknowledges, reads on from its position: everything, in
/// order, once.
#[tokio::test]
async fn a_client_that_stops_acknowledging_gives_up_its_reader_slot() {
    TestEnv::run("reader-slots-stalled", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.hub_buffer_messages = 3;
            c.max_stream_readers = 1;
            c.delivery_window = 16;
            c.heartbeat_ms = 300;
        })
        .await;
        let s = sub("all", "chat");
        // b leaves first, a after 100 more: a's reader cannot serve b's older
        // position, so b needs a reader of its own.
        let mut b = TestClient::connect(&gw.url()).await;
        b.subscribe(s.clone()).await;
        let b_hello = away(b, &s);
        // A live subscriber shows when the gateway has read what is published: a's
        // session must begin after all of it (on a busy machine the hub could still be
        // 20 and more behind, and a's position with it).
        let mut observer = TestClient::connect(&gw.url()).await;
        observer.subscribe(s.clone()).await;
        let n = 100;
        for i in 0..n {
            env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
                .await;
        }
        for _ in 0..n {
            let d = observer.expect_deliver().await;
            observer.ack_deliveries(d.seq).await;
        }
        observer.close().await;
        let mut a = TestClient::connect(&gw.url()).await;
        a.subscribe(s.clone()).await;
        let a_hello = away(a, &s);
        for i in n..2 * n {
            env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
                .await;
        }

        // a comes back, takes its window's worth and acknowledges nothing, but
        // answers pings.
        let mut a = TestClient::connect_with(&gw.url(), a_hello).await;
        let mut a_got = Vec::new();
        while a_got.len() < 16 {
            let d = a.expect_deliver().await;
            a_got.push(d);
        }
        assert_eq!(
            gw.metric("stream_readers_open").await,
            1,
            "a holds the slot"
        );
        let (done, mut b_done) = tokio::sync::oneshot::channel::<()>();
        let stalled = tokio::spawn(async move {
            let mut ts = 0;
            while b_done.try_recv().is_err() {
                // It keeps the connection busy with pings of its own, so the gateway
                // has no reason to ping it.
                ts += 1;
                a.ping(ts).await;
                if let Some(warren_protocol::ServerFrame::Deliver(d)) =
                    a.recv_within(Duration::from_millis(100)).await
                {
                    a_got.push(d);
                }
            }
            (a, a_got)
        });

        // b comes back: it gets everything from its position, although a never
        // acknowledges.
        let mut b = TestClient::connect_with(&gw.url(), b_hello).await;
        let last = 2 * n - 1;
        let got_b = tokio::time::timeout(Duration::from_secs(20), take_until(&mut b, last))
            .await
            .expect("b got its messages while a acknowledged nothing");
        let from_b = got_b.first().copied().unwrap_or(usize::MAX);
        assert!(
            from_b == 0 && exactly(&got_b, from_b, last),
            "session b: everything from its position, in order, once: {} messages from {from_b}",
            got_b.len()
        );
        assert!(
            gw.metric("stream_reader_waits_total").await >= 1,
            "b waited"
        );
        assert!(
            gw.metric("stream_reader_parks_total").await >= 1,
            "a gave its slot up"
        );
        let _ = done.send(());
        let (mut a, a_got) = stalled.await.unwrap();
        assert_eq!(a_got.len(), 16, "nothing past a's window");

        // a acknowledges at last and reads on from where it was.
        let mut got_a: Vec<usize> = a_got
            .iter()
            .map(|d| d.message.get().parse().expect("a number"))
            .collect();
        a.ack_deliveries(a_got.last().unwrap().seq).await;
        let from_a = got_a[0];
        if got_a.last() != Some(&last) {
            got_a.extend(take_until(&mut a, last).await);
        }
        assert!(
            from_a <= n && from_a + 10 >= n && exactly(&got_a, from_a, last),
            "session a: everything from its position, in order, once: {} messages from {from_a}",
            got_a.len()
        );
        a.expect_no_deliver(Duration::from_millis(200)).await;
        a.close().await;
        b.close().await;
        gw.shutdown().await;
    })
    .await;
}

/// One user's sessions read behind the ring at most `max_stream_readers_per_user` at a
/// time: a second session of mallory's, resuming while her first takes its window
/// and acknowledges nothing, waits for her share; alice's resume, at the same time,
/// does not, and gets everything. Once mallory's first session leaves, her second
/// gets everything, in order, once. (Without the share, one user's sessions resuming
/// from scattered old positions and reading slowly held every reader, and every other
/// user's resume waited.)
#[tokio::test]
async fn a_user_reads_behind_the_ring_within_its_share_and_another_user_does_not_wait() {
    TestEnv::run("reader-slots-share", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            c.hub_buffer_messages = 3;
            c.max_stream_readers_per_user = 1;
            c.delivery_window = 16;
        })
        .await;
        let s = sub("all", "chat");
        let leave = async |user: &str| {
            let mut c = TestClient::connect_with(
                &gw.url(),
                Hello {
                    token: Some(user.into()),
                    ..Default::default()
                },
            )
            .await;
            c.subscribe(s.clone()).await;
            Hello {
                token: Some(user.into()),
                ..away(c, &s)
            }
        };
        let mallory_1 = leave("mallory").await;
        let mallory_2 = leave("mallory").await;
        let alice = leave("alice").await;
        let n = 100;
        for i in 0..n {
            env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
                .await;
        }
        let last = n - 1;

        // mallory's first session takes its window and acknowledges nothing.
        let mut m1 = TestClient::connect_with(&gw.url(), mallory_1).await;
        for _ in 0..16 {
            m1.expect_deliver().await;
        }
        // Her second waits for her share; alice's resume does not.
        let mut m2 = TestClient::connect_with(&gw.url(), mallory_2).await;
        let mut a = TestClient::connect_with(&gw.url(), alice).await;
        let got_a = tokio::time::timeout(Duration::from_secs(20), take_until(&mut a, last))
            .await
            .expect("alice got her messages while mallory's share was taken");
        assert!(
            exactly(&got_a, 0, last),
            "alice: {} from {:?}",
            got_a.len(),
            got_a.first()
        );
        m2.expect_no_deliver(Duration::from_millis(500)).await;

        // mallory's first session leaves: her second reads on.
        m1.close().await;
        let got_m2 = tokio::time::timeout(Duration::from_secs(20), take_until(&mut m2, last))
            .await
            .expect("mallory's second session read on once her first left");
        assert!(
            exactly(&got_m2, 0, last),
            "mallory's second: {} from {:?}",
            got_m2.len(),
            got_m2.first()
        );
        assert!(gw.metric("stream_reader_waits_total").await >= 1);
        a.close().await;
        m2.close().await;
        gw.shutdown().await;
    })
    .await;
}
