//! `auth.jwt.jwks_url`: the gateway fetches the issuer's JWKS document at start and
//! again when a token names a key id it does not know — at most once per
//! `jwks_refresh_min_s`, so a flood of unknown key ids cannot make it hammer the
//! issuer — and keys rotate without a restart. A small HTTP server on loopback plays
//! the issuer. A key without a kid (a `secret`) configured beside the URL does not
//! stop the rotation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};
use warren_e2e::client::TestClient;
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::TestGateway;
use warren_e2e::jwt::{now, sign, sign_header, SECRET};
use warren_gateway::AuthMode;
use warren_protocol::{ClientFrame, ErrorCode, Hello, ServerFrame};

#[derive(Clone, Default)]
struct Issuer {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicU64>,
    /// Answers 503 while set.
    down: Arc<AtomicBool>,
    /// How long each answer takes, in ms.
    delay_ms: Arc<AtomicU64>,
}

async fn jwks(State(issuer): State<Issuer>) -> Result<Json<Value>, StatusCode> {
    issuer.fetches.fetch_add(1, Ordering::SeqCst);
    let delay = issuer.delay_ms.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    if issuer.down.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(Json(json!({ "keys": *issuer.keys.lock().unwrap() })))
}

fn secret(kid: &str) -> String {
    format!("rotating-secret-{kid}-padded-to-32-bytes!")
}

fn jwk(kid: &str) -> Value {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret(kid));
    json!({ "kty": "oct", "kid": kid, "alg": "HS256", "k": k })
}

fn token(kid: &str, user: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    sign_header(
        header,
        &json!({ "sub": user, "exp": now() + 600 }),
        secret(kid).as_bytes(),
    )
}

/// Serves `issuer`'s JWKS document on loopback: its URL, and the server task.
async fn serve(issuer: &Issuer) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let app = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(issuer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/.well-known/jwks.json"), server)
}

/// `hello` with `token`: the user on `welcome`, or the error code.
async fn hello(url: &str, token: String) -> Result<String, ErrorCode> {
    let mut c = TestClient::connect_raw(url).await;
    c.send(&ClientFrame::Hello(Hello {
        token: Some(token),
        ..Default::default()
    }))
    .await;
    match c.recv().await {
        ServerFrame::Welcome(w) => {
            c.close().await;
            Ok(w.user)
        }
        ServerFrame::Error(e) => Err(e.code),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn keys_rotate_through_the_jwks_url_and_unknown_kids_fetch_at_most_once_per_interval() {
    TestEnv::run("jwks-url", Duration::from_secs(60), async |env| {
        let issuer = Issuer::default();
        issuer.keys.lock().unwrap().push(jwk("k1"));
        let (jwks_url, server) = serve(&issuer).await;
        let gw = TestGateway::start_with(env, |c| {
            c.auth.mode = AuthMode::Jwt;
            c.auth.jwt.jwks_url = Some(jwks_url);
            c.auth.jwt.jwks_refresh_min_s = 2;
        })
        .await;
        let url = gw.url();
        assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1, "fetched at start");
        assert_eq!(hello(&url, token("k1", "ada")).await, Ok("ada".into()));
        assert_eq!(
            issuer.fetches.load(Ordering::SeqCst),
            1,
            "a known kid fetches nothing"
        );

        // The issuer rotates to k2 after the gateway last looked.
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        issuer.keys.lock().unwrap().push(jwk("k2"));
        assert_eq!(hello(&url, token("k2", "bob")).await, Ok("bob".into()));
        assert_eq!(
            issuer.fetches.load(Ordering::SeqCst),
            2,
            "one fetch for the new kid"
        );

        // A flood of unknown kids: refused, and at most one more fetch in the interval.
        for i in 0..20 {
            assert_eq!(
                hello(&url, token(&format!("bogus{i}"), "eve")).await,
                Err(ErrorCode::Unauthorized)
            );
        }
        assert!(
            issuer.fetches.load(Ordering::SeqCst) <= 3,
            "rate-limited fetches"
        );
        gw.shutdown().await;
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn a_secret_beside_the_jwks_url_does_not_stop_keys_rotating() {
    TestEnv::run(
        "jwks-url-and-secret",
        Duration::from_secs(60),
        async |env| {
            let issuer = Issuer::default();
            issuer.keys.lock().unwrap().push(jwk("k1"));
            let (jwks_url, server) = serve(&issuer).await;
            let gw = TestGateway::start_with(env, |c| {
                c.auth.mode = AuthMode::Jwt;
                c.auth.jwt.secret = Some(SECRET.into());
                c.auth.jwt.jwks_url = Some(jwks_url);
                c.auth.jwt.jwks_refresh_min_s = 1;
            })
            .await;
            let url = gw.url();
            let fetches = || issuer.fetches.load(Ordering::SeqCst);
            assert_eq!(fetches(), 1, "fetched at start");
            let by_secret = sign(
                &json!({ "sub": "cy", "exp": now() + 600 }),
                SECRET.as_bytes(),
            );
            assert_eq!(hello(&url, by_secret).await, Ok("cy".into()));
            assert_eq!(hello(&url, token("k1", "ada")).await, Ok("ada".into()));
            assert_eq!(fetches(), 1, "known keys fetch nothing");

            // The issuer rotates to k2 after the gateway last looked. The secret (no kid)
            // does not verify k2's tokens; the gateway must fetch the JWKS again and not
            // refuse them until a restart.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            issuer.keys.lock().unwrap().push(jwk("k2"));
            assert_eq!(hello(&url, token("k2", "bob")).await, Ok("bob".into()));
            assert_eq!(fetches(), 2, "one fetch for the new kid");
            assert_eq!(hello(&url, token("k2", "bob")).await, Ok("bob".into()));
            assert_eq!(hello(&url, token("k1", "ada")).await, Ok("ada".into()));
            assert_eq!(fetches(), 2, "held keys fetch nothing");

            // Unknown kids still fetch at most once per interval.
            let flood = std::time::Instant::now();
            for i in 0..20 {
                assert_eq!(
                    hello(&url, token(&format!("bogus{i}"), "eve")).await,
                    Err(ErrorCode::Unauthorized)
                );
            }
            let bound = 3 + flood.elapsed().as_secs();
            assert!(fetches() <= bound, "rate-limited: {} > {bound}", fetches());
            gw.shutdown().await;
            server.abort();
        },
    )
    .await;
}

#[tokio::test]
async fn an_issuer_unreachable_is_auth_unavailable_not_a_refused_token_and_keys_come_when_it_is_back(
) {
    TestEnv::run("jwks-url-down", Duration::from_secs(60), async |env| {
        let issuer = Issuer::default();
        issuer.down.store(true, Ordering::SeqCst);
        // A key the gateway cannot use beside the signing key: skipped, not the
        // whole document.
        issuer
            .keys
            .lock()
            .unwrap()
            .extend([json!({ "kty": "nonsense", "kid": "x" }), jwk("k1")]);
        let (jwks_url, server) = serve(&issuer).await;
        let gw = TestGateway::start_with(env, |c| {
            c.auth.mode = AuthMode::Jwt;
            c.auth.jwt.jwks_url = Some(jwks_url);
            c.auth.jwt.jwks_refresh_min_s = 1;
        })
        .await;
        let url = gw.url();
        assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1, "tried at start");
        // The keys could not be fetched: retryable (4006), not "do not reconnect".
        let mut c = TestClient::connect_raw(&url).await;
        c.send(&ClientFrame::Hello(Hello {
            token: Some(token("k1", "ada")),
            ..Default::default()
        }))
        .await;
        match c.recv().await {
            ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::AuthUnavailable, "{e:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(4006));
        // Within the interval: no fetch, the same answer.
        assert_eq!(
            hello(&url, token("k1", "ada")).await,
            Err(ErrorCode::AuthUnavailable)
        );

        // The issuer is back: after the interval the next token fetches, and passes.
        issuer.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(hello(&url, token("k1", "ada")).await, Ok("ada".into()));
        // A key id the issuer does not have is refused as before.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(
            hello(&url, token("k9", "eve")).await,
            Err(ErrorCode::Unauthorized)
        );
        gw.shutdown().await;
        server.abort();
    })
    .await;
}

#[tokio::test]
async fn tokens_for_a_rotated_key_that_arrive_during_its_fetch_wait_for_it_and_pass() {
    TestEnv::run("jwks-url-in-flight", Duration::from_secs(60), async |env| {
        let issuer = Issuer::default();
        issuer.keys.lock().unwrap().push(jwk("k1"));
        let (jwks_url, server) = serve(&issuer).await;
        let gw = TestGateway::start_with(env, |c| {
            c.auth.mode = AuthMode::Jwt;
            c.auth.jwt.jwks_url = Some(jwks_url);
            c.auth.jwt.jwks_refresh_min_s = 1;
        })
        .await;
        let url = gw.url();
        assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1, "fetched at start");

        // The issuer rotates to k2 and answers slowly. Every client reconnects with a
        // k2 token at once, as after a rotation: the first starts a fetch, the others
        // arrive while it is on its way. None may be told its token is refused.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        issuer.keys.lock().unwrap().push(jwk("k2"));
        issuer.delay_ms.store(500, Ordering::SeqCst);
        let hellos: Vec<_> = (0..8)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move { hello(&url, token("k2", &format!("u{i}"))).await })
            })
            .collect();
        for (i, h) in hellos.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Ok(format!("u{i}")), "client {i}");
        }
        assert_eq!(
            issuer.fetches.load(Ordering::SeqCst),
            2,
            "one fetch for all of them"
        );
        gw.shutdown().await;
        server.abort();
    })
    .await;
}
