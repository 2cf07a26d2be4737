//! `auth.mode = "service"` against a real RabbitMQ: the gateway asks an auth service
//! (`client.auth`) built on the service library — the demo authenticator, or a slow
//! one — and admits, refuses, or answers `auth_unavailable` (never hangs) when no auth
//! service runs or it is too slow. Accepted answers are cached for their lifetime, by
//! token, session, Origin and client IP (not reused for another Origin). A
//! `hello` its client gave up on while the auth service was slow does not take the
//! session from the connection the client resumed it on meanwhile.

use std::time::{Duration, Instant};

use warren_e2e::client::TestClient;
use warren_e2e::env::{amqp_addr, TestEnv};
use warren_e2e::gateway::TestGateway;
use warren_gateway::{AuthMode, Config};
use warren_protocol::auth::AuthReply;
use warren_protocol::{ClientFrame, ErrorCode, Hello, ServerFrame, Subscribe};
use warren_service::demo::auth::authenticate;
use warren_service::Service;

const TIMEOUT_MS: u64 = 800;

fn service_mode(c: &mut Config) {
    c.auth.mode = AuthMode::Service;
    c.auth.service.timeout_ms = TIMEOUT_MS;
}

/// Sends `hello` with `token`; returns the `error` frame and the close code, and how
/// long the gateway took to answer.
async fn refused(url: &str, token: &str) -> (warren_protocol::Error, Option<u16>, Duration) {
    let mut c = TestClient::connect_raw(url).await;
    let started = Instant::now();
    c.send(&ClientFrame::Hello(Hello {
        token: Some(token.into()),
        ..Default::default()
    }))
    .await;
    let e = match c.recv_within(Duration::from_secs(10)).await {
        Some(ServerFrame::Error(e)) => e,
        other => panic!("{token}: expected an error, got {other:?}"),
    };
    let took = started.elapsed();
    (e, c.expect_close(Duration::from_secs(5)).await, took)
}

async fn admitted(url: &str, token: &str) -> TestClient {
    TestClient::connect_with(
        url,
        Hello {
            token: Some(token.into()),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn the_auth_service_admits_refuses_and_its_absence_or_slowness_is_auth_unavailable() {
    let mut env = TestEnv::new("auth-service").await;
    env.track_queue(env.names.channel_queue("auth"));
    let gw = TestGateway::start_with(&env, service_mode).await;
    let url = gw.url();

    // No auth service has ever run: nothing is bound, the answer is immediate.
    let (e, close, took) = refused(&url, "user:ada").await;
    assert_eq!(e.code, ErrorCode::AuthUnavailable, "{e:?}");
    assert_eq!(close, Some(4006));
    assert!(
        took < Duration::from_millis(TIMEOUT_MS),
        "at once: {took:?}"
    );
    // `GET /presence` says the same: 503, retryable, not a refused token.
    let (status, _, body) = warren_e2e::gateway::http_get_with(
        gw.health_addr(),
        "/presence?channel=chat",
        &[("Authorization", "Bearer user:ada")],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"auth_unavailable\""), "{body}");

    // The demo authenticator, on the service library.
    let auth = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .unwrap();
    auth.authenticate("auth", authenticate).await.unwrap();
    let mut ada = admitted(&url, "user:ada").await;
    assert_eq!(ada.welcome.as_ref().unwrap().user, "ada");
    ada.subscribe(Subscribe {
        id: "g".into(),
        channel: "chat".into(),
        groups: vec!["room-1".into()],
        ..Default::default()
    })
    .await;
    ada.send(&ClientFrame::Subscribe(Subscribe {
        id: "staff".into(),
        channel: "chat".into(),
        groups: vec!["staff".into()],
        ..Default::default()
    }))
    .await;
    assert_eq!(
        ada.expect_error(Some("staff")).await.code,
        ErrorCode::Forbidden,
        "the groups come from the auth service's answer"
    );
    let (e, close, _) = refused(&url, "user:blocked").await;
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert!(e.message.contains("blocked"), "{e:?}");
    assert_eq!(close, Some(4501));
    let (e, _, _) = refused(&url, "not-a-demo-token").await;
    assert_eq!(e.code, ErrorCode::Unauthorized);

    // The auth service stops: its queue stays, nobody answers. A cached answer still
    // admits; a new token waits the timeout, no longer, and is told to retry.
    auth.stop().await.unwrap();
    let again = admitted(&url, "user:ada").await;
    assert_eq!(
        again.welcome.as_ref().unwrap().user,
        "ada",
        "from the cache"
    );
    let (e, close, took) = refused(&url, "user:bob").await;
    assert_eq!(e.code, ErrorCode::AuthUnavailable, "{e:?}");
    assert!(e.code.retry());
    assert_eq!(close, Some(4006));
    assert!(
        took >= Duration::from_millis(TIMEOUT_MS - 100) && took < Duration::from_secs(5),
        "bounded by the timeout: {took:?}"
    );

    // A slow auth service (3 s per answer against an 800 ms timeout): the same.
    let slow = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .unwrap();
    slow.authenticate("auth", |_req| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        AuthReply::allow("late")
    })
    .await
    .unwrap();
    let (e, _, took) = refused(&url, "user:carol").await;
    assert_eq!(e.code, ErrorCode::AuthUnavailable, "{e:?}");
    assert!(
        took < Duration::from_secs(3),
        "not held for the slow answer: {took:?}"
    );
    slow.stop().await.unwrap();

    ada.close().await;
    again.close().await;
    gw.shutdown().await;
    env.cleanup().await;
}

/// An answer the gateway cannot use (it admits without a user, or names a right
/// this gateway does not know: a broken or newer auth service) is the auth service
/// failing: `auth_unavailable` and 4006, and the client tries again later. Before, it
/// was `unauthorized` and 4501, and the SDK stopped for good though no token was
/// refused.
#[tokio::test]
async fn an_answer_the_gateway_cannot_use_is_auth_unavailable_not_a_refusal() {
    let mut env = TestEnv::new("auth-service-unusable").await;
    env.track_queue(env.names.channel_queue("auth"));
    let auth = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .unwrap();
    auth.authenticate("auth", |request| async move {
        match request.token.as_str() {
            "no-user" => AuthReply {
                allow: true,
                ..AuthReply::default()
            },
            "new-right" => AuthReply {
                channels: Some([("chat".to_string(), vec!["teleport".to_string()])].into()),
                ..AuthReply::allow("ada")
            },
            _ => AuthReply::allow("ada"),
        }
    })
    .await
    .unwrap();
    let gw = TestGateway::start_with(&env, service_mode).await;
    for token in ["no-user", "new-right"] {
        let (e, close, _) = refused(&gw.url(), token).await;
        assert_eq!(e.code, ErrorCode::AuthUnavailable, "{token}: {e:?}");
        assert!(e.message.contains("cannot be used"), "{token}: {e:?}");
        assert_eq!(close, Some(4006), "{token}");
    }
    // The same auth service's usable answers admit.
    let ada = admitted(&gw.url(), "other").await;
    assert_eq!(ada.welcome.as_ref().unwrap().user, "ada");
    ada.close().await;
    auth.stop().await.unwrap();
    gw.shutdown().await;
    env.cleanup().await;
}

/// The auth service's answer admitting ada until ten minutes from now.
fn ada_for_ten_minutes() -> AuthReply {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    AuthReply {
        expires_at: Some(now + 600),
        ..AuthReply::allow("ada")
    }
}

/// Sends `hello` with `token` on a WebSocket opened with `Origin: origin`; the first
/// frame the gateway answers.
async fn hello_from(url: &str, origin: &str, token: &str) -> ServerFrame {
    let mut c = TestClient::try_connect_with_headers(url, &[("Origin", origin)])
        .await
        .expect("upgrade");
    c.send(&ClientFrame::Hello(Hello {
        token: Some(token.into()),
        ..Default::default()
    }))
    .await;
    let first = c.recv_within(Duration::from_secs(10)).await;
    c.abort();
    first.expect("an answer to hello")
}

/// The auth service is asked with the client's Origin and address so that it can
/// refuse by them. An answer it gave for one Origin is not reused for another: the
/// cache is by token, session, Origin and client IP. (Cached by token alone, a token
/// admitted from the app's origin was admitted from any other until its `expires_at`.)
#[tokio::test]
async fn a_cached_answer_is_not_reused_for_another_origin() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut env = TestEnv::new("auth-service-origin").await;
    env.track_queue(env.names.channel_queue("auth"));
    let asked = Arc::new(AtomicUsize::new(0));
    let auth = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .unwrap();
    let counter = asked.clone();
    auth.authenticate("auth", move |req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if req.origin.as_deref() != Some("https://app.example.com") {
                return AuthReply::deny("not from the app");
            }
            ada_for_ten_minutes()
        }
    })
    .await
    .unwrap();
    let gw = TestGateway::start_with(&env, service_mode).await;
    let url = gw.url();

    let app = "https://app.example.com";
    for round in 0..2 {
        match hello_from(&url, app, "t-ada").await {
            ServerFrame::Welcome(w) => assert_eq!(w.user, "ada"),
            other => panic!("round {round}: expected welcome, got {other:?}"),
        }
    }
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the second hello from the app was answered from the cache"
    );
    match hello_from(&url, "https://evil.example", "t-ada").await {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::Unauthorized, "{e:?}");
            assert!(e.message.contains("not from the app"), "{e:?}");
        }
        other => panic!("another origin: expected a refusal, got {other:?}"),
    }
    assert_eq!(asked.load(Ordering::SeqCst), 2, "the service was asked");

    auth.stop().await.unwrap();
    gw.shutdown().await;
    env.cleanup().await;
}

/// A `session` in a `hello` that this gateway could not have issued (any string a
/// client sends) is neither sent to the auth service nor part of the answer cache's
/// key: the hello opens a fresh session anyway. Each such hello was asked about and
/// cached under its session, so one token with ever new 10 KiB strings filled the
/// cache (10,000 entries) with them and then emptied it for everyone.
#[tokio::test]
async fn a_session_the_gateway_could_not_have_issued_is_not_sent_to_the_auth_service() {
    use std::sync::{Arc, Mutex};
    let mut env = TestEnv::new("auth-service-session").await;
    env.track_queue(env.names.channel_queue("auth"));
    let seen: Arc<Mutex<Vec<Option<usize>>>> = Arc::default();
    let auth = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .unwrap();
    let record = seen.clone();
    auth.authenticate("auth", move |req| {
        record
            .lock()
            .unwrap()
            .push(req.session.as_ref().map(String::len));
        async move { ada_for_ten_minutes() }
    })
    .await
    .unwrap();
    let gw = TestGateway::start_with(&env, service_mode).await;
    for filler in ['x', 'y', 'z'] {
        let mut c = TestClient::try_connect_with_headers(&gw.url(), &[])
            .await
            .expect("upgrade");
        c.send(&ClientFrame::Hello(Hello {
            token: Some("t-ada".into()),
            session: Some(filler.to_string().repeat(10_000)),
            ..Default::default()
        }))
        .await;
        match c.recv_within(Duration::from_secs(10)).await {
            Some(ServerFrame::Welcome(w)) => assert_eq!(w.user, "ada"),
            other => panic!("{filler}: expected welcome, got {other:?}"),
        }
        c.abort();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![None],
        "asked once, without the made-up sessions; then answered from the cache"
    );
    auth.stop().await.unwrap();
    gw.shutdown().await;
    env.cleanup().await;
}

/// A request to the auth service carries the client's token: one that expires
/// unanswered (the auth service stopped, its queue left) is dropped, not parked in
/// `warren.dead` with the token for anyone who may read that queue. `IN_AUTH` was
/// declared as every channel's queue, dead-lettering what expires.
#[tokio::test]
async fn an_auth_request_nobody_answered_is_not_parked_with_its_token() {
    let mut env = TestEnv::new("auth-service-expired").await;
    env.track_queue(env.names.channel_queue("auth"));
    let auth = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .unwrap();
    auth.authenticate("auth", authenticate).await.unwrap();
    auth.stop().await.unwrap();
    let gw = TestGateway::start_with(&env, service_mode).await;
    let token = "user:ada-secret-4f2b";
    let (e, _, _) = refused(&gw.url(), token).await;
    assert_eq!(e.code, ErrorCode::AuthUnavailable, "{e:?}");
    // The request expires `timeout_ms` after it was sent.
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS + 2_000)).await;
    let mut parked = Vec::new();
    while let Some(m) = warren_e2e::service::take_parked(&env.names).await {
        parked.push(String::from_utf8_lossy(&m.data).to_string());
    }
    assert!(
        parked.iter().all(|body| !body.contains(token)),
        "the token waits in warren.dead: {parked:?}"
    );
    assert_eq!(
        warren_e2e::service::queue_counts(&env.names.channel_queue("auth"))
            .await
            .0,
        0,
        "nor in IN_AUTH"
    );
    gw.shutdown().await;
    env.cleanup().await;
}

/// An auth service for the slow-`hello` tests: token `slow` is answered after 2 s, then
/// reported on the receiver; any other at once, also while `slow` waits (several at a
/// time). Every token is user ada.
async fn slow_auth(env: &TestEnv) -> (Service, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (answered_tx, answered) = tokio::sync::mpsc::unbounded_channel();
    let config = warren_service::ServiceConfig::default().with_prefetch(8);
    let auth = Service::connect_with(&amqp_addr(), env.names.clone(), config)
        .await
        .unwrap();
    auth.authenticate("auth", move |req| {
        let answered = answered_tx.clone();
        async move {
            if req.token == "slow" {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = answered.send(());
            }
            AuthReply::allow("ada")
        }
    })
    .await
    .unwrap();
    (auth, answered)
}

/// Waits for the auth service as long as [`slow_auth`]'s slow answer takes.
fn patient(c: &mut Config) {
    service_mode(c);
    c.auth.service.timeout_ms = 5_000;
}

fn as_token(token: &str, hello: Hello) -> Hello {
    Hello {
        token: Some(token.into()),
        ..hello
    }
}

/// A session on `on` whose connection is lost, a resume of it on `slow_on` that waits
/// for the auth service and is given up after 300 ms (the socket dropped), and the
/// resume after it on `on`, live. Returns the session and the live connection.
async fn given_up_then_resumed(on: &TestGateway, slow_on: &TestGateway) -> (String, TestClient) {
    let ada = admitted(&on.url(), "t0").await;
    let session = ada.session().to_string();
    let resume = ada.resume_hello();
    ada.abort();
    let mut given_up = TestClient::connect_raw(&slow_on.url()).await;
    given_up
        .send(&ClientFrame::Hello(as_token("slow", resume.clone())))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    given_up.abort();
    let live = TestClient::connect_with(&on.url(), as_token("t1", resume)).await;
    assert!(live.welcome().resumed, "resumed");
    (session, live)
}

/// A client's resume waits on a gateway for a slow auth service; the client gives up
/// (as the SDK does after its handshake timeout) and resumes the session at once on
/// another gateway, or on the same one. When the auth answer comes, the given-up
/// `hello` does not take the session from the live connection: a takeover it asks of
/// its peers is dated by when its client asked, before the live resume, and a claim on
/// the same gateway yields to the connection asked for later. (Both were done with the
/// time the `hello` was done with: the live connection was closed with 4502
/// `session_taken`, which clients never reconnect from, and the SDK stopped for good.)
#[tokio::test]
async fn a_hello_given_up_while_slow_does_not_take_the_session_from_the_resume_after_it() {
    let env = TestEnv::new("auth-service-late").await;
    let (auth, mut answered) = slow_auth(&env).await;
    let first = TestGateway::start_with(&env, patient).await;
    let second = TestGateway::start_with(&env, patient).await;
    for (case, slow_on) in [("another gateway", &first), ("the same gateway", &second)] {
        let (_, mut live) = given_up_then_resumed(&second, slow_on).await;
        tokio::time::timeout(Duration::from_secs(5), answered.recv())
            .await
            .expect("the slow answer within 5 s");
        // The given-up hello is done with at once; a takeover would come within 3 s.
        assert_eq!(
            live.expect_close(Duration::from_secs(3)).await,
            None,
            "{case}: the live connection was not taken"
        );
        live.publish("p1", "chat", serde_json::json!("still here"))
            .await;
        live.expect_ack("p1").await;
        live.close().await;
    }
    auth.stop().await.unwrap();
    first.shutdown().await;
    second.shutdown().await;
    env.cleanup().await;
}

/// The same race with presence on: the given-up `hello` on another gateway is done
/// with after the live resume, and its connection is gone. That gateway must not
/// announce the session gone when its grace passes (services saw a live user leave),
/// nor list it as its own: the gateway holding the session answers its takeover
/// request, which is older, with one of its own.
#[tokio::test]
async fn a_hello_given_up_while_slow_on_another_gateway_does_not_announce_the_session_gone() {
    use futures_util::StreamExt;
    const GRACE_MS: u64 = 1_000;
    let mut env = TestEnv::new("auth-service-late-presence").await;
    let (auth, mut answered) = slow_auth(&env).await;
    let with_presence = |c: &mut Config| {
        patient(c);
        c.presence = true;
        c.session_expires_ms = GRACE_MS;
    };
    let first = TestGateway::start_with(&env, with_presence).await;
    let second = TestGateway::start_with(&env, with_presence).await;
    let queue = format!("{}.test-gone", env.namespace);
    let exchange = env.names.presence_exchange();
    env.bind_queue(&queue, &exchange, "client.disconnected")
        .await;
    let mut gone = env.consume_no_ack(&queue).await;
    let (session, mut live) = given_up_then_resumed(&second, &first).await;
    tokio::time::timeout(Duration::from_secs(5), answered.recv())
        .await
        .expect("the slow answer within 5 s");
    // Past the grace on the first gateway, with room for its events.
    let until = tokio::time::Instant::now() + Duration::from_millis(GRACE_MS + 2_500);
    while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, gone.next()).await {
        let v: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON event");
        assert_ne!(
            v["session"],
            session.as_str(),
            "announced gone while live: {v}"
        );
    }
    let (_, _, body) = warren_e2e::gateway::http_get_with(
        first.health_addr(),
        "/presence",
        &[("Authorization", "Bearer t1")],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(v["users"], serde_json::json!(["ada"]), "{v}");
    assert_eq!(live.close_code, None);
    live.publish("p1", "chat", serde_json::json!("still here"))
        .await;
    live.expect_ack("p1").await;
    live.close().await;
    auth.stop().await.unwrap();
    first.shutdown().await;
    second.shutdown().await;
    env.cleanup().await;
}

/// An upgrade (or `/presence`) whose `Origin` is over 1 KiB is refused (`403
/// forbidden`), and an Origin's variants (trailing `/`, case) are one origin: one cached
/// answer, and the auth service is told it as the gateway compares it. Before, each
/// variant was a cache entry of its own size: one valid token and upgrades with
/// hundreds of KiB of `/` took gigabytes, and a full cache sent everyone back to the
/// auth service.
#[tokio::test]
async fn a_long_origin_is_refused_and_the_variants_of_an_origin_share_one_cached_answer() {
    use std::sync::{Arc, Mutex};
    let mut env = TestEnv::new("auth-service-long-origin").await;
    env.track_queue(env.names.channel_queue("auth"));
    let origins = Arc::new(Mutex::new(Vec::new()));
    let auth = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .unwrap();
    let told = origins.clone();
    auth.authenticate("auth", move |req| {
        told.lock().unwrap().push(req.origin.clone());
        async move { ada_for_ten_minutes() }
    })
    .await
    .unwrap();
    let gw = TestGateway::start_with(&env, service_mode).await;
    let url = gw.url();

    let long = format!("https://app.example.com{}", "/".repeat(4096));
    assert_eq!(
        TestClient::try_connect_with_headers(&url, &[("Origin", &long)])
            .await
            .err(),
        Some(403),
        "a 4 KiB Origin is refused, not upgraded"
    );
    let addr = gw.health_addr();
    let origin = ("Origin", long.as_str());
    let bearer = ("Authorization", "Bearer t-ada");
    let refusals = [
        tokio::time::timeout(
            Duration::from_secs(10),
            warren_e2e::gateway::http_raw(
                addr,
                &warren_e2e::gateway::upgrade_request("/ws", &[origin, bearer]),
            ),
        )
        .await
        .expect("the upgrade is answered and closed, not upgraded"),
        warren_e2e::gateway::http_request(addr, "GET", "/presence", &[origin, bearer]).await,
    ];
    for (i, (status, _, body)) in refusals.into_iter().enumerate() {
        assert_eq!(status, 403, "{i}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], "forbidden", "{i}");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("longer than 1024 bytes")),
            "{i}: {body}"
        );
    }
    assert!(origins.lock().unwrap().is_empty(), "nobody asked about it");

    for variant in [
        "https://app.example.com",
        "https://app.example.com/",
        "https://APP.Example.com//",
    ] {
        match hello_from(&url, variant, "t-ada").await {
            ServerFrame::Welcome(w) => assert_eq!(w.user, "ada"),
            other => panic!("{variant}: expected welcome, got {other:?}"),
        }
    }
    assert_eq!(
        *origins.lock().unwrap(),
        vec![Some("https://app.example.com".to_string())],
        "asked once, with the Origin as the gateway compares it"
    );

    auth.stop().await.unwrap();
    gw.shutdown().await;
    env.cleanup().await;
}
