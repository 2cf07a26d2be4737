//! Identity and permissions against a real RabbitMQ: a gateway in `jwt` mode refuses
//! every attack in the table below with its documented code and delivers nothing to
//! the attacker; a token is renewed on the live connection without a gap and an
//! expired one closes with `4004 token_expired`; inputs that used to panic the
//! connection task are answered with `invalid`, and a panic that does happen still
//! cleans up.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};
use warren_e2e::client::{raw, sub, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::{http_get, http_raw, http_request, upgrade_request, TestGateway};
use warren_e2e::jwt::{now, sign, sign_header, SECRET};
use warren_gateway::{AuthMode, Config};
use warren_protocol::amqp::keys;
use warren_protocol::{ClientFrame, ErrorCode, Hello, Publish, Refresh, ServerFrame, Subscribe};

const QUIET: Duration = Duration::from_millis(400);
const LIMIT: Duration = Duration::from_secs(60);

fn jwt(c: &mut Config) {
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    c.auth.jwt.issuer = Some("warren-tests".into());
    c.auth.jwt.audience = Some("warren".into());
    c.auth.jwt.leeway_s = 0;
    c.auth.allowed_origins = vec![
        "https://app.example.com".into(),
        "https://*.example.org".into(),
    ];
    c.auth.token_cookie = Some("warren_token".into());
}

/// Claims for `user` valid for ten minutes, with `extra` merged in (a `null` in
/// `extra` leaves that claim out: a token's `null` claim is refused).
fn claims(user: &str, extra: Value) -> Value {
    let mut c = json!({
        "sub": user, "exp": now() + 600, "iss": "warren-tests", "aud": "warren",
        "groups": ["room-1"], "topics": ["orders.*"],
        "channels": {"chat": ["publish", "subscribe"], "tickets": ["request"], "voice": ["subscribe"]}
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn token(user: &str, extra: Value) -> String {
    sign(&claims(user, extra), SECRET.as_bytes())
}

fn hello(token: &str) -> Hello {
    Hello {
        token: Some(token.into()),
        ..Default::default()
    }
}

async fn login(url: &str, user: &str) -> TestClient {
    TestClient::connect_with(url, hello(&token(user, json!({})))).await
}

/// Opens a session with `token`, which expires within 3 s: the gateway says it
/// expired (`error unauthorized`) and closes with 4004 then, within 5 s of the start.
async fn closed_4004_at_expiry(url: &str, token: &str) {
    let started = std::time::Instant::now();
    let mut c = TestClient::connect_with(url, hello(token)).await;
    let e = c.expect_error_code(None, ErrorCode::Unauthorized).await;
    assert!(e.message.contains("expired"), "{e:?}");
    assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(4004));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Sends `hello` with `token`; the gateway must answer `error unauthorized` and close
/// with 4501, never `welcome`.
async fn expect_refused_hello(url: &str, token: Option<String>, what: &str) {
    let mut c = TestClient::connect_raw(url).await;
    c.send(&ClientFrame::Hello(Hello {
        token,
        ..Default::default()
    }))
    .await;
    match c.recv_within(Duration::from_secs(5)).await {
        Some(ServerFrame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Unauthorized, "{what}: {e:?}");
            assert!(!e.message.is_empty(), "{what}: the error says why");
        }
        other => panic!("{what}: expected error unauthorized, got {other:?}"),
    }
    assert_eq!(
        c.expect_close(Duration::from_secs(5)).await,
        Some(4501),
        "{what}: closed with 4501 unauthorized"
    );
}

#[tokio::test]
async fn forged_expired_and_malformed_tokens_are_refused_before_any_session_exists() {
    TestEnv::run("auth-tokens", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, jwt).await;
        let url = gw.url();
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let good = claims("bob", json!({}));
        let a = token("eve", json!({}));
        let b = token("bob", json!({}));
        let (pa, pb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
        let table: Vec<(&str, Option<String>)> = vec![
            ("no token", None),
            (
                "a bare user id (impersonation as in auth none)",
                Some("bob".into()),
            ),
            (
                "signed with another secret (impersonation)",
                Some(sign(&good, b"a-secret-the-gateway-does-not-know!!")),
            ),
            ("expired", Some(token("bob", json!({"exp": now() - 120})))),
            (
                "not yet valid",
                Some(token("bob", json!({"nbf": now() + 3600}))),
            ),
            (
                "tampered payload",
                Some(format!("{}.{}.{}", pa[0], pb[1], pa[2])),
            ),
            (
                "alg none",
                Some(format!(
                    "{}.{}.",
                    b64(r#"{"alg":"none","typ":"JWT"}"#),
                    b64(&good.to_string())
                )),
            ),
            (
                "wrong aud",
                Some(token("bob", json!({"aud": "another-app"}))),
            ),
            ("wrong iss", Some(token("bob", json!({"iss": "mallory"})))),
            (
                "an algorithm not accepted",
                Some(sign_header(
                    Header::new(Algorithm::HS512),
                    &good,
                    SECRET.as_bytes(),
                )),
            ),
            ("not a JWT", Some("definitely.not.a-jwt".into())),
        ];
        assert!(table.len() >= 10);
        for (what, t) in table {
            expect_refused_hello(&url, t, what).await;
        }
        // A first frame other than hello: no implicit session without a token.
        let mut c = TestClient::connect_raw(&url).await;
        c.publish("p1", "chat", json!(1)).await;
        let e = c.expect_error_code(None, ErrorCode::Unauthorized).await;
        assert!(e.message.contains("token"), "{e:?}");
        assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(4501));
        // The token from the upgrade's Authorization header.
        let auth = format!("Bearer {}", token("ada", json!({})));
        let mut c = TestClient::try_connect_with_headers(&url, &[("Authorization", &auth)])
            .await
            .expect("upgrade");
        c.send(&ClientFrame::Hello(Hello::default())).await;
        match c.recv().await {
            ServerFrame::Welcome(w) => assert_eq!(w.user, "ada"),
            other => panic!("expected welcome, got {other:?}"),
        }
        c.close().await;
        // The token from the configured cookie (same-site apps).
        let cookie = format!("theme=dark; warren_token={}", token("cy", json!({})));
        let mut c = TestClient::try_connect_with_headers(&url, &[("Cookie", &cookie)])
            .await
            .expect("upgrade");
        c.send(&ClientFrame::Hello(Hello::default())).await;
        match c.recv().await {
            ServerFrame::Welcome(w) => assert_eq!(w.user, "cy"),
            other => panic!("expected welcome, got {other:?}"),
        }
        let m = http_get(gw.health_addr(), "/metrics").await;
        assert!(
            m.lines()
                .any(|l| l.starts_with("warren_gateway_refused_token_total") && l.ends_with(" 12")),
            "every refusal counted: {m}"
        );
        c.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn presence_is_answered_only_for_a_valid_token_and_what_it_grants() {
    use warren_e2e::gateway::http_get_with;
    TestEnv::run("auth-presence", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            jwt(c);
            c.http_api.enabled = true;
            c.http_api.api_keys = vec!["backend-key-for-tests".into()];
        })
        .await;
        let mut ada = login(&gw.url(), "ada").await;
        let mut s = sub("s", "chat");
        s.groups = vec!["room-1".into()];
        ada.send(&ClientFrame::Subscribe(s)).await;
        ada.expect_ack("s").await;
        let addr = gw.health_addr();
        let bob = format!("Bearer {}", token("bob", json!({})));
        let origin = ("Origin", "https://app.example.com");
        let (status, headers, body) = http_get_with(
            addr,
            "/presence?channel=chat&group=room-1",
            &[("Authorization", &bob), origin],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["users"], json!(["ada"]));
        // Another user's session id (what resumes a session) is not shown to bob.
        assert_eq!(v["sessions"][0]["user"], "ada", "{body}");
        assert!(!body.contains(ada.session()), "{body}");
        assert!(v["sessions"][0].get("session").is_none(), "{body}");
        // ada sees her own.
        let mine = format!("Bearer {}", token("ada", json!({})));
        let (status, _, body) = http_get_with(
            addr,
            "/presence?channel=chat&group=room-1",
            &[("Authorization", &mine)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["sessions"][0]["session"], ada.session(), "{body}");
        assert!(headers.contains(&(
            "access-control-allow-origin".into(),
            "https://app.example.com".into()
        )));
        // No channel asks about every channel: a token with the subscribe right on
        // each may, bob's (chat and voice only) may not.
        let everywhere = format!("Bearer {}", token("cyd", json!({"channels": null})));
        let (status, _, body) =
            http_get_with(addr, "/presence", &[("Authorization", &everywhere)]).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["users"], json!(["ada"]));
        type Headers<'a> = Vec<(&'a str, &'a str)>;
        let cases: [(&str, Headers, u16, &str); 6] = [
            ("/presence", vec![("Authorization", &bob)], 403, "forbidden"),
            ("/presence?channel=chat", vec![], 401, "unauthorized"),
            (
                "/presence?channel=chat",
                vec![("Authorization", "Bearer ada")],
                401,
                "unauthorized",
            ),
            (
                "/presence?group=room-2",
                vec![("Authorization", &bob)],
                403,
                "forbidden",
            ),
            (
                "/presence?channel=echo",
                vec![("Authorization", &bob)],
                403,
                "forbidden",
            ),
            (
                "/presence?channel=chat",
                vec![
                    ("Authorization", &bob),
                    ("Origin", "https://evil.example.net"),
                ],
                403,
                "forbidden",
            ),
        ];
        // A backend with an HTTP API key may ask about any group.
        let (status, _, body) = http_get_with(
            addr,
            "/presence?group=room-1",
            &[("Authorization", "Bearer backend-key-for-tests")],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"ada\""), "{body}");
        assert!(
            body.contains(ada.session()),
            "a backend sees every id: {body}"
        );
        for (path, headers, want, code) in cases {
            let (status, got_headers, body) = http_get_with(addr, path, &headers).await;
            assert_eq!(status, want, "{path} {headers:?}: {body}");
            // A 401 names the scheme to answer it with (RFC 9110), as the HTTP API's do.
            if status == 401 {
                assert!(
                    got_headers.contains(&("www-authenticate".into(), "Bearer".into())),
                    "{path}: {got_headers:?}"
                );
            }
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{path} {headers:?}: not JSON ({e}): {body:?}"));
            assert_eq!(v["code"], code, "{path}");
        }
        ada.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_cross_origin_upgrade_is_refused_with_403_and_allowed_origins_connect() {
    TestEnv::run("auth-origin", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, jwt).await;
        let url = gw.url();
        for origin in [
            "https://evil.example.net",
            "https://example.org",
            "https://app.example.com.evil.net",
            "http://app.example.com",
        ] {
            let r = TestClient::try_connect_with_headers(&url, &[("Origin", origin)]).await;
            assert_eq!(r.err(), Some(403), "{origin} refused");
        }
        for origin in ["https://app.example.com", "https://chat.example.org"] {
            let mut c = TestClient::try_connect_with_headers(&url, &[("Origin", origin)])
                .await
                .unwrap_or_else(|s| panic!("{origin} allowed, got {s}"));
            c.send(&ClientFrame::Hello(hello(&token("ada", json!({})))))
                .await;
            assert!(
                matches!(c.recv().await, ServerFrame::Welcome(_)),
                "{origin}"
            );
            c.close().await;
        }
        // Refused in JSON, as every refusal: the upgrade, and the CORS endpoints.
        let addr = gw.health_addr();
        let evil = ("Origin", "https://evil.example.net");
        let refusals = [
            http_raw(addr, &upgrade_request("/ws", &[evil])).await,
            http_request(addr, "GET", "/services", &[evil]).await,
            http_request(addr, "OPTIONS", "/presence", &[evil]).await,
            http_request(addr, "OPTIONS", "/services", &[evil]).await,
        ]
        .into_iter()
        .map(|(status, _, body)| (status, body));
        for (i, (status, body)) in refusals.enumerate() {
            assert_eq!(status, 403, "{i}: {body}");
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{i}: not JSON ({e}): {body:?}"));
            assert_eq!(v["code"], "forbidden", "{i}");
            assert!(v["message"]
                .as_str()
                .is_some_and(|m| m.contains("allowed_origins")));
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn another_users_direct_messages_groups_topics_and_channels_are_forbidden_and_nothing_is_delivered(
) {
    TestEnv::run("auth-targets", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, jwt).await;
        let url = gw.url();
        let mut bob = login(&url, "bob").await;
        bob.subscribe(Subscribe {
            direct: true,
            groups: vec!["room-1".into()],
            ..sub("b1", "chat")
        })
        .await;
        let mut eve = login(&url, "eve").await;
        // Eve's own direct messages only: `direct` binds her user, never bob's.
        eve.subscribe(Subscribe {
            direct: true,
            ..sub("e0", "chat")
        })
        .await;
        // (what, frame as the client sends it, its id): each is `forbidden`.
        let forbidden: Vec<(&str, Value, &str)> = vec![
            ("an ungranted group", json!({"type": "subscribe", "id": "e1", "channel": "chat", "groups": ["staff"]}), "e1"),
            ("topic #", json!({"type": "subscribe", "id": "e2", "channel": "chat", "topic": "#"}), "e2"),
            ("a topic wider than granted", json!({"type": "subscribe", "id": "e3", "channel": "chat", "topic": "orders.#"}), "e3"),
            ("subscribe without the right", json!({"type": "subscribe", "id": "e4", "channel": "tickets"}), "e4"),
            ("publish to a channel without the right", json!({"type": "publish", "id": "e5", "channel": "voice", "message": 1}), "e5"),
            ("request without the right", json!({"type": "request", "id": "e6", "channel": "chat", "timeout_ms": 1000, "message": 1}), "e6"),
            ("publish addressed to an ungranted group", json!({"type": "publish", "id": "e7", "channel": "chat", "distribution": {"groups": ["staff"]}, "message": 1}), "e7"),
            ("a POC publish to a channel without the right", json!({"id": "e8", "channel": {"voice": true}, "packet_action": "publish", "message": {}}), "e8"),
            ("a POC consume of an ungranted group", json!({"id": "e9", "channel": {"chat": true}, "packet_action": "consume", "distribution": {"multicast": ["staff"]}, "consume_target": ["x"]}), "e9"),
        ];
        for (what, frame, id) in &forbidden {
            eve.send_text(&frame.to_string()).await;
            let e = eve.expect_error(Some(id)).await;
            assert_eq!(e.code, ErrorCode::Forbidden, "{what}: {e:?}");
        }
        // Allowed: a topic within the granted pattern, a granted group.
        eve.subscribe(Subscribe {
            topic: Some("orders.created".into()),
            ..sub("ok1", "chat")
        })
        .await;
        // What the attacker reached for is published; only bob receives it.
        env.publish_out(&keys::user("chat", "bob"), "d-bob", r#""for bob""#)
            .await;
        env.publish_out(&keys::group("chat", "staff"), "g-staff", r#""staff""#)
            .await;
        env.publish_out(&keys::group("chat", "room-1"), "g-room", r#""room""#)
            .await;
        env.publish_out(&keys::event("chat", "orders.deleted"), "ev", r#""ev""#)
            .await;
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(bob.expect_deliver().await.message_id);
        }
        got.sort();
        assert_eq!(got, ["d-bob", "g-room"]);
        eve.expect_no_deliver(QUIET).await;
        // Nothing reached the services either.
        for ch in ["voice", "chat"] {
            assert_eq!(
                env.message_count(&env.names.channel_queue(ch)).await,
                Some(0),
                "{ch}: the refused publishes never reached RabbitMQ"
            );
        }
        bob.close().await;
        eve.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_session_can_be_resumed_only_by_its_owner_and_stays_untouched() {
    TestEnv::run("auth-takeover", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, jwt).await;
        let url = gw.url();
        let mut bob = login(&url, "bob").await;
        bob.subscribe(Subscribe {
            direct: true,
            ..sub("b1", "chat")
        })
        .await;
        let bobs = bob.session().to_string();
        let mut eve = TestClient::connect_with(
            &url,
            Hello {
                session: Some(bobs.clone()),
                ..hello(&token("eve", json!({})))
            },
        )
        .await;
        let w = eve.welcome.clone().unwrap();
        assert!(!w.resumed, "not resumed");
        assert_ne!(w.session, bobs, "a fresh session of her own");
        assert_eq!(w.notice, Some(ErrorCode::Forbidden));
        assert_eq!(w.user, "eve");
        // Bob's connection and session are untouched.
        env.publish_out(&keys::user("chat", "bob"), "d1", r#""hi bob""#)
            .await;
        assert_eq!(bob.expect_deliver().await.message_id, "d1");
        eve.expect_no_deliver(QUIET).await;
        // Bob himself resumes it (after a drop) and gets what was not acknowledged.
        let resume = bob.resume_hello();
        bob.abort();
        let mut again = TestClient::connect_with(
            &url,
            Hello {
                token: hello(&token("bob", json!({}))).token,
                ..resume
            },
        )
        .await;
        assert!(again.welcome.as_ref().unwrap().resumed);
        assert_eq!(again.expect_deliver().await.message_id, "d1");
        again.close().await;
        eve.close().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_refreshed_token_keeps_the_connection_and_session_and_an_expired_one_closes_with_4004() {
    TestEnv::run("auth-refresh", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, jwt).await;
        let url = gw.url();
        let mut c =
            TestClient::connect_with(&url, hello(&token("ada", json!({"exp": now() + 3})))).await;
        c.subscribe(sub("s", "chat")).await;
        env.publish_out(&keys::broadcast("chat"), "m1", "1").await;
        assert_eq!(c.expect_deliver().await.seq, 1);
        // Refused refreshes leave everything as it was.
        let refresh = |id: &str, t: String| {
            ClientFrame::Refresh(Refresh {
                id: id.into(),
                token: t,
            })
        };
        c.send(&refresh("r-bad", "nope".into())).await;
        assert_eq!(
            c.expect_error(Some("r-bad")).await.code,
            ErrorCode::Unauthorized
        );
        c.send(&refresh("r-other", token("bob", json!({})))).await;
        assert_eq!(
            c.expect_error(Some("r-other")).await.code,
            ErrorCode::Forbidden
        );
        c.send(&refresh("r1", token("ada", json!({"exp": now() + 600}))))
            .await;
        c.expect_ack("r1").await;
        // Past the first token's expiry: still open, same session, no redelivery.
        tokio::time::sleep(Duration::from_secs(4)).await;
        env.publish_out(&keys::broadcast("chat"), "m2", "2").await;
        let d = c.expect_deliver().await;
        assert_eq!(
            (d.message_id.as_str(), d.seq, d.redelivered),
            ("m2", 2, false)
        );
        assert_eq!(c.close_code, None);
        c.close().await;

        // Without a refresh, the connection closes at exp with 4004.
        closed_4004_at_expiry(&url, &token("ada", json!({"exp": now() + 2}))).await;
        gw.shutdown().await;
    })
    .await;
}

/// RFC 7519's NumericDate may have a fraction (`time.time() + 600` in Python,
/// `Date.now() / 1000 + 600` in JavaScript): such a token is accepted, on `hello` and
/// on `refresh`, and still closes the connection when it expires.
#[tokio::test]
async fn a_token_whose_exp_has_a_fraction_is_accepted_and_closes_the_connection_when_it_expires() {
    TestEnv::run("auth-fraction", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, jwt).await;
        let url = gw.url();
        #[allow(clippy::cast_precision_loss)]
        let exp = |s: f64| json!({ "exp": now() as f64 + s });
        let mut c = TestClient::connect_with(&url, hello(&token("ada", exp(600.5)))).await;
        assert_eq!(c.welcome.as_ref().map(|w| w.user.as_str()), Some("ada"));
        c.send(&ClientFrame::Refresh(Refresh {
            id: "r1".into(),
            token: token("ada", exp(900.25)),
        }))
        .await;
        c.expect_ack("r1").await;
        c.close().await;

        closed_4004_at_expiry(&url, &token("ada", exp(2.5))).await;
        gw.shutdown().await;
    })
    .await;
}

/// A refresh's groups, topics and channel rights replace the old ones at once: what
/// the new token no longer grants is unsubscribed (the client is told with `error
/// forbidden` before the `ack`), and what it still grants carries on.
#[tokio::test]
async fn a_refresh_with_narrower_rights_stops_what_they_no_longer_grant() {
    TestEnv::run("auth-refresh-revokes", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, jwt).await;
        let mut c = TestClient::connect_with(
            &gw.url(),
            hello(&token("ada", json!({"groups": ["room-1", "room-2"]}))),
        )
        .await;
        c.subscribe(Subscribe {
            broadcast: Some(false),
            groups: vec!["room-1".into(), "room-2".into()],
            topic: Some("orders.created".into()),
            ..sub("s1", "chat")
        })
        .await;
        c.subscribe(sub("s2", "voice")).await;
        // room-1 and the topics go; voice loses its subscribe right.
        let narrower = token(
            "ada",
            json!({"groups": ["room-2"], "topics": [], "channels": {"chat": ["subscribe"]}}),
        );
        c.send(&ClientFrame::Refresh(Refresh {
            id: "r1".into(),
            token: narrower,
        }))
        .await;
        let e = c.expect_error_code(None, ErrorCode::Forbidden).await;
        for key in [
            "chat.group.room-1",
            "chat.event.orders.created",
            "voice.all",
        ] {
            assert!(e.message.contains(key), "{key} named: {e:?}");
        }
        assert!(!e.message.contains("room-2"), "{e:?}");
        c.expect_ack("r1").await;
        for (key, id) in [
            ("chat.group.room-1", "m1"),
            ("chat.event.orders.created", "m2"),
            ("voice.all", "m3"),
            ("chat.group.room-2", "m4"),
        ] {
            env.publish_out(key, id, "1").await;
        }
        assert_eq!(
            c.expect_deliver().await.message_id,
            "m4",
            "room-2 carries on"
        );
        c.expect_no_deliver(QUIET).await;
        gw.shutdown().await;
    })
    .await;
}

/// The SDK answers a renewal that revoked subscriptions by sending every subscription
/// again, so that each revoked one is refused with its id. A token that revokes more
/// of them than `max_consecutive_errors` (32) must not make those refusals close the
/// connection with `4003 too_many_errors`: a refused subscription the renewal just
/// revoked is not a bad frame, once. Other refusals still count.
#[tokio::test]
async fn subscriptions_sent_again_after_a_renewal_revoked_them_do_not_close_the_connection() {
    TestEnv::run("auth-refresh-revokes-many", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, jwt).await;
        let groups: Vec<String> = (0..40).map(|i| format!("g{i}")).collect();
        let mut c =
            TestClient::connect_with(&gw.url(), hello(&token("ada", json!({"groups": groups}))))
                .await;
        let each = |i: usize| Subscribe {
            broadcast: Some(false),
            groups: vec![format!("g{i}")],
            ..sub(&format!("s{i}"), "chat")
        };
        for i in 0..40 {
            c.subscribe(each(i)).await;
        }
        c.send(&ClientFrame::Refresh(Refresh {
            id: "r1".into(),
            token: token("ada", json!({"groups": []})),
        }))
        .await;
        c.expect_error_code(None, ErrorCode::Forbidden).await;
        c.expect_ack("r1").await;
        // As the SDK does: every subscription again, each refused with its id.
        for i in 0..40 {
            c.send(&ClientFrame::Subscribe(each(i))).await;
        }
        for i in 0..40 {
            let id = format!("s{i}");
            assert_eq!(
                c.expect_error(Some(&id)).await.code,
                ErrorCode::Forbidden,
                "{id}"
            );
        }
        c.subscribe(sub("ok", "voice")).await;
        env.publish_out(&keys::broadcast("voice"), "m1", "1").await;
        assert_eq!(c.expect_deliver().await.message_id, "m1");
        assert_eq!(c.close_code, None, "still open");
        // Once each: the same refusals again count, and 32 in a row close with 4003.
        for i in 0..32 {
            c.send(&ClientFrame::Subscribe(each(i))).await;
        }
        assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(4003));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn composed_names_past_amqp_limits_are_invalid_and_headers_outside_the_allow_list_refused() {
    TestEnv::run("auth-inputs", LIMIT, async |env| {
        // auth none: the probe's inputs (a 128-byte token as user id) are possible there.
        let gw = TestGateway::start(env).await;
        let user = "u".repeat(128);
        let mut c = TestClient::connect_with(&gw.url(), hello(&user)).await;
        let long_id = "i".repeat(127);
        let publish = |id: &str, subject: Option<String>, headers: &[(&str, &str)]| {
            ClientFrame::Publish(Publish {
                id: id.into(),
                channel: "chat".into(),
                subject,
                distribution: None,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                message: raw(json!(1)),
            })
        };
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("h{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let table: Vec<(&str, ClientFrame, &str, ErrorCode)> = vec![
            (
                "128-byte user + 127-byte id",
                publish(&long_id, None, &[]),
                long_id.as_str(),
                ErrorCode::Invalid,
            ),
            (
                "251-byte subject",
                publish(
                    "s1",
                    Some(format!("{}.{}", "a".repeat(125), "b".repeat(125))),
                    &[],
                ),
                "s1",
                ErrorCode::Invalid,
            ),
            (
                "x-death",
                publish("h1", None, &[("x-death", "v")]),
                "h1",
                ErrorCode::Forbidden,
            ),
            (
                "x-delay",
                publish("h2", None, &[("x-delay", "1")]),
                "h2",
                ErrorCode::Forbidden,
            ),
            (
                "x-match",
                publish("h3", None, &[("x-match", "any")]),
                "h3",
                ErrorCode::Forbidden,
            ),
            (
                "x-delivery-count",
                publish("h4", None, &[("x-delivery-count", "0")]),
                "h4",
                ErrorCode::Forbidden,
            ),
            (
                "reply_to",
                publish("h5", None, &[("reply_to", "q")]),
                "h5",
                ErrorCode::Forbidden,
            ),
            (
                "a lookalike x-warren-user",
                publish("h6", None, &[("x-warren\u{200b}-user", "bob")]),
                "h6",
                ErrorCode::Invalid,
            ),
            (
                "33 headers",
                publish("h7", None, &many),
                "h7",
                ErrorCode::Invalid,
            ),
        ];
        for (what, frame, id, code) in &table {
            c.send(frame).await;
            let e = c.expect_error(Some(id)).await;
            assert_eq!(e.code, *code, "{what}: {e:?}");
        }
        // A 245-byte topic pattern composes a binding key past 255 bytes.
        let topic = format!("{}.{}", "t".repeat(122), "u".repeat(122));
        c.send(&ClientFrame::Subscribe(Subscribe {
            topic: Some(topic),
            ..sub("t1", "chat")
        }))
        .await;
        assert_eq!(c.expect_error(Some("t1")).await.code, ErrorCode::Invalid);
        // The connection was never hurt: it still publishes, with allowed headers.
        c.send(&publish("ok", None, &[("trace-id", "abc")])).await;
        c.expect_ack("ok").await;
        // Invalid UTF-8 in a text frame closes with 1007.
        c.send_invalid_utf8_text(&[0x7b, 0xff, 0xfe, 0x7d]).await;
        assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(1007));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_panicking_connection_task_still_requeues_cleans_up_and_counts_the_panic() {
    TestEnv::run("auth-panic", LIMIT, async |env| {
        let gw = TestGateway::start(env).await;
        let url = gw.url();
        let mut c = TestClient::connect_with(&url, hello("ada")).await;
        c.subscribe(sub("s", "chat")).await;
        env.publish_out(&keys::broadcast("chat"), "held", "1").await;
        assert_eq!(c.expect_deliver().await.message_id, "held");
        // Not acknowledged; now the handler panics (fault-injection build).
        let resume = c.resume_hello();
        c.publish("__warren_test_panic__", "chat", json!(1)).await;
        assert_eq!(c.expect_close(Duration::from_secs(5)).await, Some(1011));
        // Cleanup ran: the session was released (no takeover wait) and the held
        // delivery requeued, so a resume gets it at once.
        let started = std::time::Instant::now();
        let mut again = TestClient::connect_with(
            &url,
            Hello {
                token: hello("ada").token,
                ..resume
            },
        )
        .await;
        assert!(again.welcome.as_ref().unwrap().resumed);
        let d = again.expect_deliver().await;
        assert_eq!(d.message_id, "held");
        // Not held until the panicked connection's heartbeat times out (room for a
        // busy 2-core machine).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "resumed without waiting for a takeover: {:?}",
            started.elapsed()
        );
        let m = http_get(gw.health_addr(), "/metrics").await;
        assert!(
            m.lines()
                .any(|l| l.starts_with("warren_gateway_connection_panics_total")
                    && l.ends_with(" 1")),
            "{m}"
        );
        again.close().await;
        gw.shutdown().await;
    })
    .await;
}
