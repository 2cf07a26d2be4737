//! A client whose old connection is still open on gateway A (A has not noticed it is
//! gone: a half-open socket, a switched network) resumes its session on gateway B.
//! B asks A on `warren.gateways` to release the session; A closes the stale
//! connection with `session_taken`, and B replays from the client's position in the
//! outbound stream: the resume completes at once, with what the stale connection held
//! first.

use std::time::{Duration, Instant};

use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_protocol::{CloseCode, Subscribe};

#[tokio::test]
async fn resuming_on_another_gateway_releases_the_session_held_by_a_stale_connection() {
    let env = TestEnv::new("gw-takeover").await;
    let a = TestGateway::start(&env).await;
    let b = TestGateway::start(&env).await;
    let mut stale = TestClient::connect(&a.url()).await;
    stale
        .subscribe(Subscribe {
            id: "s".into(),
            channel: "chat".into(),
            ..Default::default()
        })
        .await;
    env.publish_out("chat.all", "held", "1").await;
    let held = stale.expect_deliver().await;
    assert_eq!(held.message_id, "held");
    // `stale` never acknowledges and never closes.

    let asked = Instant::now();
    let mut fresh = TestClient::connect_with(&b.url(), stale.resume_hello()).await;
    let took = asked.elapsed();
    println!(
        "fault_gateway_takeover: resumed on the other gateway in {} ms",
        took.as_millis()
    );
    assert!(fresh.welcome.as_ref().unwrap().resumed);
    // Not held until the stale connection's heartbeat times out or it closes: the
    // takeover is a message, not a wait (a busy 2-core machine has room here).
    assert!(
        took < Duration::from_secs(5),
        "the resume does not wait for the stale connection ({took:?})"
    );
    let again = fresh.expect_deliver().await;
    assert_eq!(again.message_id, "held", "the held delivery comes again");
    assert_eq!(
        stale.expect_close(Duration::from_secs(5)).await,
        Some(CloseCode::SessionTaken.code())
    );
    fresh.ack_deliveries(again.seq).await;
    fresh.close().await;
    a.shutdown().await;
    b.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_takeover_on_the_same_gateway_delivers_the_held_messages_before_newer_ones() {
    let env = TestEnv::new("gw-takeover-order").await;
    let gw = TestGateway::start(&env).await;
    let mut old = TestClient::connect(&gw.url()).await;
    old.subscribe(Subscribe {
        id: "s".into(),
        channel: "chat".into(),
        ..Default::default()
    })
    .await;
    for i in 1..=3 {
        env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
            .await;
    }
    for _ in 1..=3 {
        old.expect_deliver().await;
    }
    // Newer messages arrive while the old connection still holds m1..m3.
    for i in 4..=6 {
        env.publish_out("chat.all", &format!("m{i}"), &i.to_string())
            .await;
    }
    let mut new = TestClient::connect_with(&gw.url(), old.resume_hello()).await;
    assert!(new.welcome.as_ref().unwrap().resumed);
    let mut order = Vec::new();
    for _ in 1..=6 {
        let d = new.expect_deliver().await;
        order.push(d.message_id.clone());
        new.ack_deliveries(d.seq).await;
    }
    assert_eq!(order, ["m1", "m2", "m3", "m4", "m5", "m6"]);
    new.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// A takeover request that was on its way while the client moved on (it resumed on A,
/// then at once on B, and A's request reached B after B's resume) is older than B's
/// connection: B keeps the session, where it used to close its client's live
/// connection with `session_taken`, a code the SDK does not reconnect after. A request
/// made after B's resume still releases it.
#[tokio::test]
async fn a_takeover_request_older_than_the_resume_here_leaves_the_session_alone() {
    let env = TestEnv::new("gw-takeover-stale").await;
    let b = TestGateway::start(&env).await;
    let first = TestClient::connect(&b.url()).await;
    let session = first.session().to_string();
    let hello = first.resume_hello();
    first.abort();
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    };
    // Another gateway's takeover request for the session, resumed there at `at_ms`.
    let takeover = async |at_ms: u64| {
        let body =
            serde_json::json!({ "takeover": session, "node": "gw-elsewhere", "at_ms": at_ms });
        let id = format!("takeover-{at_ms}");
        let exchange = env.names.gateways_exchange();
        env.publish(&exchange, "", &id, &body.to_string(), Default::default())
            .await;
    };
    let before = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut live = TestClient::connect_with(&b.url(), hello).await;
    assert!(live.welcome.as_ref().unwrap().resumed);

    // Resumed elsewhere before this connection's resume: kept.
    takeover(before).await;
    assert_eq!(
        live.expect_close(Duration::from_millis(800)).await,
        None,
        "the live connection stays"
    );
    live.ping(1).await;
    assert!(
        live.recv_within(Duration::from_secs(2)).await.is_some(),
        "and answers"
    );

    // Resumed elsewhere after it: released.
    tokio::time::sleep(Duration::from_millis(20)).await;
    takeover(now_ms()).await;
    assert_eq!(
        live.expect_close(Duration::from_secs(5)).await,
        Some(CloseCode::SessionTaken.code())
    );
    b.shutdown().await;
    env.cleanup().await;
}

/// A burst of resumes (a reconnect storm) sends its takeover requests together, as
/// batches: every stale connection on the other gateway is still released.
#[tokio::test]
async fn a_burst_of_resumes_on_another_gateway_releases_every_stale_connection() {
    const CLIENTS: usize = 40;
    let env = TestEnv::new("gw-takeover-burst").await;
    let a = TestGateway::start(&env).await;
    let b = TestGateway::start(&env).await;
    let mut stale = Vec::new();
    for _ in 0..CLIENTS {
        stale.push(TestClient::connect(&a.url()).await);
    }
    // All at once, so their takeover requests fall within one batching window.
    let hellos: Vec<_> = stale.iter().map(|c| c.resume_hello()).collect();
    let url = b.url();
    let fresh = futures_util::future::join_all(
        hellos
            .into_iter()
            .map(|h| TestClient::connect_with(&url, h)),
    )
    .await;
    assert!(fresh
        .iter()
        .all(|c| c.welcome.as_ref().is_some_and(|w| w.resumed)));
    for (i, s) in stale.iter_mut().enumerate() {
        assert_eq!(
            s.expect_close(Duration::from_secs(5)).await,
            Some(CloseCode::SessionTaken.code()),
            "stale connection {i} released"
        );
    }
    for c in fresh {
        c.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
    env.cleanup().await;
}
