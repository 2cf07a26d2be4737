//! The external HTTP API against the real RabbitMQ: `POST /external/{channel}` lands in
//! `IN_<CHANNEL>` with the gateway's headers before its `202`, `POST /publish` reaches
//! exactly the WebSocket clients it names, `POST /request/{channel}` returns a real
//! service's reply or `504`, and a table of bad requests gets the documented status and
//! registry code.

use std::net::SocketAddr;
use std::time::Duration;

use lapin::types::AMQPValue;
use serde_json::{json, Value};
use warren_e2e::client::{sub, TestClient};
use warren_e2e::env::{ack, next_delivery, TestEnv};
use warren_e2e::gateway::{http_post, http_post_text, http_request, TestGateway};
use warren_e2e::service::{start_demo, CuttableProxy};
use warren_gateway::Config;
use warren_protocol::amqp::{H_CHANNEL, H_GATEWAY, H_SESSION, H_SUBJECT, H_USER};
use warren_protocol::{Hello, Subscribe};

const LIMIT: Duration = Duration::from_secs(60);

/// A bad request: what it is, path, credential, body, expected status and code.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16, &'a str);
const KEY: &str = "test-http-api-key";

/// The HTTP API on, with one key; on its own listener when `own_listener`.
fn api_on(own_listener: bool) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.http_api.enabled = true;
        c.http_api.api_keys = vec![KEY.into()];
        c.http_api.max_body_bytes = 4096;
        if own_listener {
            c.http_api.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        }
    }
}

/// The HTTP API on the WebSocket listener, with a header (and body) deadline of 0.5 s.
fn api_with_short_header_deadline(c: &mut Config) {
    api_on(false)(c);
    c.header_read_timeout_ms = 500;
}

fn api_addr(gw: &TestGateway) -> SocketAddr {
    gw.gateway().http_api_addr().expect("the HTTP API is on")
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    http_post(addr, path, Some(KEY), body.to_string().as_bytes()).await
}

#[tokio::test]
async fn an_external_publish_is_in_the_channel_queue_with_the_gateways_headers_when_accepted() {
    TestEnv::run("http-external", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, api_on(true)).await;
        let addr = api_addr(&gw);
        assert!(
            gw.listeners().iter().all(|(a, _)| *a != addr),
            "a listener of its own"
        );
        let body = json!({
            "id": "x1",
            "subject": "room-1",
            "distribution": {"groups": ["room-1"]},
            "headers": {"lang": "en"},
            "message": {"text": "hi"},
        });
        let (status, answer) = post(addr, "/external/chat", body).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer, json!({"id": "x1", "message_id": "http-api:x1"}));
        // Accepted after the confirm: the message is already in IN_CHAT.
        let d = env
            .get(&env.names.channel_queue("chat"))
            .await
            .expect("the message is in IN_CHAT when the 202 arrives");
        assert_eq!(d.data, br#"{"text":"hi"}"#.to_vec());
        assert_eq!(d.routing_key.as_str(), "chat.room-1");
        let p = &d.properties;
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some("http-api:x1")
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        let h = p.headers().as_ref().expect("headers").inner();
        let text = |k: &str| match h.get(k) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text(H_USER), "http-api");
        assert_eq!(text(H_CHANNEL), "chat");
        assert_eq!(text(H_SUBJECT), "room-1");
        assert_eq!(text(H_GATEWAY), gw.gateway().config().node);
        assert!(text(H_SESSION).starts_with("http-"), "{}", text(H_SESSION));
        assert_eq!(text("lang"), "en");
        // Without an id: a fresh one, in the answer.
        let (status, answer) = post(addr, "/external/chat", json!({"message": 1})).await;
        assert_eq!(status, 202);
        assert!(answer["id"].as_str().is_some_and(|id| !id.is_empty()));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn publish_reaches_the_broadcast_a_group_and_a_user_it_names_and_nobody_else() {
    TestEnv::run("http-publish", LIMIT, async |env| {
        // Served beside /ws on the WebSocket listener.
        let gw = TestGateway::start_with(env, api_on(false)).await;
        let addr = api_addr(&gw);
        assert_eq!(format!("ws://{addr}/ws"), gw.url());
        let connect = |user: &'static str| {
            let url = gw.url();
            async move {
                let hello = Hello {
                    token: Some(user.into()),
                    ..Hello::default()
                };
                TestClient::connect_with(&url, hello).await
            }
        };
        let mut alice = connect("alice").await;
        let mut bob = connect("bob").await;
        let mut carol = connect("carol").await;
        alice.subscribe(sub("s", "chat")).await;
        bob.subscribe(Subscribe {
            broadcast: Some(false),
            groups: vec!["room-1".into()],
            ..sub("s", "chat")
        })
        .await;
        carol
            .subscribe(Subscribe {
                broadcast: Some(false),
                direct: true,
                ..sub("s", "chat")
            })
            .await;
        // Each publish, and who must get it (alice: broadcast, bob: room-1, carol:
        // her direct messages); the others must not.
        let mut clients = [alice, bob, carol];
        let cases = [
            (json!({"broadcast": true}), [true, false, false]),
            (json!({"groups": ["room-1"]}), [false, true, false]),
            (json!({"users": ["carol"]}), [false, false, true]),
            // Two targets in one publish (CC / x-warren-cc): each once.
            (
                json!({"groups": ["room-1"], "users": ["carol"]}),
                [false, true, true],
            ),
        ];
        for (n, (targets, receivers)) in cases.into_iter().enumerate() {
            let mut body = targets.clone();
            body["channel"] = json!("chat");
            body["id"] = json!(format!("m{n}"));
            body["message"] = json!({"n": n});
            let (status, answer) = post(addr, "/publish", body).await;
            assert_eq!(status, 202, "{targets}: {answer}");
            assert_eq!(answer["message_id"], format!("http-api:m{n}"));
            for (client, receives) in clients.iter_mut().zip(receivers) {
                if receives {
                    let d = client.expect_deliver().await;
                    let message: Value = serde_json::from_str(d.message.get()).unwrap();
                    assert_eq!(message, json!({"n": n}), "{targets}");
                    assert_eq!(d.message_id, format!("http-api:m{n}"));
                    assert_eq!(d.headers.get(H_USER).map(String::as_str), Some("http-api"));
                }
            }
            for client in &mut clients {
                client.expect_no_deliver(Duration::from_millis(300)).await;
            }
        }
        for client in clients {
            client.close().await;
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn request_returns_the_services_reply_or_refusal_and_times_out_when_nothing_answers() {
    TestEnv::run("http-request", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, api_on(false)).await;
        let addr = api_addr(&gw);
        // Nothing consumes IN_VOICE yet: 503 no_service at once.
        let started = tokio::time::Instant::now();
        let (status, answer) = post(addr, "/request/voice", json!({"message": {"sdp": "x"}})).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (503, Some("no_service")),
            "{answer}"
        );
        // At once, not after a timeout (a busy 2-core machine has room).
        assert!(started.elapsed() < Duration::from_millis(2_000));
        // A consumer that never answers: 504 once the timeout passed.
        let _stuck = env.consume_inbound("voice").await;
        tokio::time::sleep(warren_gateway::services::CONSUMER_CHECK_TTL).await;
        let started = tokio::time::Instant::now();
        let (status, answer) = post(
            addr,
            "/request/voice",
            json!({"timeout_ms": 300, "message": {"sdp": "x"}}),
        )
        .await;
        assert_eq!(status, 504, "{answer}");
        assert_eq!(answer["code"], "timeout");
        assert!(started.elapsed() >= Duration::from_millis(300));

        let demo = start_demo(&env.namespace).await;
        let message = json!({"n": 7, "nested": {"list": [1, 2, 3]}});
        let (status, answer) = post(
            addr,
            "/request/echo",
            json!({"id": "e1", "timeout_ms": 10_000, "message": message}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["id"], "e1");
        assert_eq!(answer["message"], message);
        // The reply's bytes pass through: odd spacing and key order survive.
        let odd = r#"{ "b" : [1, 2 ,3], "a":"\u00e9" }"#;
        let body = format!(r#"{{"timeout_ms": 10000, "message": {odd}}}"#);
        let (status, text) =
            http_post_text(addr, "/request/echo", Some(KEY), body.as_bytes()).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(&format!(r#""message":{odd}"#)), "{text}");

        let (status, answer) = post(
            addr,
            "/request/tickets",
            json!({"message": {"op": "create", "title": "printer"}}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["message"]["created_by"], "http-api");
        // A refusal by the service keeps its registry code.
        let (status, answer) = post(
            addr,
            "/request/tickets",
            json!({"message": {"op": "get", "id": 999}}),
        )
        .await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["code"], "rejected");
        demo.stop().await.unwrap();
        gw.shutdown().await;
    })
    .await;
}

/// A RabbitMQ that stops answering (a frozen node, a stalled network) does not hold
/// `POST /request` past its own `timeout_ms`: the look at the queue's consumers, the
/// channel the request goes out on and its confirm all count against it.
#[tokio::test]
async fn a_request_to_a_rabbitmq_that_stopped_answering_ends_at_its_own_timeout() {
    TestEnv::run("http-request-frozen", LIMIT, async |env| {
        let proxy = CuttableProxy::start().await;
        let uri = proxy.uri.clone();
        let gw = TestGateway::start_with(env, move |c| {
            api_on(false)(c);
            c.amqp_uri = vec![uri];
        })
        .await;
        let addr = api_addr(&gw);
        let _consumer = env.consume_inbound("voice").await;
        proxy.freeze(true);
        let started = tokio::time::Instant::now();
        let (status, answer) = post(
            addr,
            "/request/voice",
            json!({"timeout_ms": 1_000, "message": {"sdp": "x"}}),
        )
        .await;
        let took = started.elapsed();
        proxy.freeze(false);
        assert_eq!(
            (status, answer["code"].as_str()),
            (504, Some("timeout")),
            "{answer}"
        );
        // Before, the look (1 s) and the channel's opening (`broker_wait_ms`, 5 s)
        // came on top: 503 `broker_unavailable` after about 6 s.
        assert!(took < Duration::from_millis(2_500), "{took:?}");
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_a_4xx_status_and_the_registry_code() {
    TestEnv::run("http-bad", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, api_on(false)).await;
        let addr = api_addr(&gw);
        // IN_VOICE with its binding gone: nothing would receive a voice message.
        env.unbind_inbound("voice").await;
        // Something consumes IN_VOICE (unbound), so a request there is routed, not
        // answered no_service; nothing consumes IN_TICKETS.
        let _voice = env.consume_inbound("voice").await;
        let ok = json!({"message": {"text": "hi"}}).to_string();
        let oversized = json!({"message": "x".repeat(6000)}).to_string();
        let long_id =
            json!({"channel": "chat", "broadcast": true, "id": "i".repeat(129), "message": 1})
                .to_string();
        let cases: &[Case] = &[
            ("no key", "/external/chat", None, &ok, 401, "unauthorized"),
            (
                "wrong key",
                "/external/chat",
                Some("nope"),
                &ok,
                401,
                "unauthorized",
            ),
            (
                "wrong key, publish",
                "/publish",
                Some("test-http-api-kez"),
                &ok,
                401,
                "unauthorized",
            ),
            (
                "not JSON",
                "/external/chat",
                Some(KEY),
                "{\"message\":",
                400,
                "malformed",
            ),
            (
                "a channel that is not UTF-8",
                "/external/%FF",
                Some(KEY),
                &ok,
                400,
                "invalid",
            ),
            (
                "a request's channel that is not UTF-8",
                "/request/%C3%28",
                Some(KEY),
                &ok,
                400,
                "invalid",
            ),
            (
                "no message",
                "/external/chat",
                Some(KEY),
                "{\"id\":\"a\"}",
                400,
                "invalid",
            ),
            (
                "not an object",
                "/external/chat",
                Some(KEY),
                "[1]",
                400,
                "invalid",
            ),
            (
                "mistyped field",
                "/external/chat",
                Some(KEY),
                "{\"message\":1,\"headers\":\"x\"}",
                400,
                "invalid",
            ),
            (
                "bad subject",
                "/external/chat",
                Some(KEY),
                "{\"subject\":\"a b\",\"message\":1}",
                400,
                "invalid",
            ),
            (
                "empty id",
                "/external/chat",
                Some(KEY),
                "{\"id\":\"\",\"message\":1}",
                400,
                "invalid",
            ),
            (
                "id with a `:` (user `a` and id `b:c` would be user `a:b` and id `c`)",
                "/external/chat",
                Some(KEY),
                "{\"id\":\"b:c\",\"message\":1}",
                400,
                "invalid",
            ),
            (
                "reserved header",
                "/external/chat",
                Some(KEY),
                "{\"headers\":{\"x-warren-user\":\"eve\"},\"message\":1}",
                403,
                "forbidden",
            ),
            (
                "oversized",
                "/external/chat",
                Some(KEY),
                &oversized,
                413,
                "too_large",
            ),
            (
                "unknown channel",
                "/external/nope",
                Some(KEY),
                &ok,
                404,
                "unknown_channel",
            ),
            (
                "unknown channel, request",
                "/request/nope",
                Some(KEY),
                &ok,
                404,
                "unknown_channel",
            ),
            (
                "no route",
                "/external/voice",
                Some(KEY),
                &ok,
                422,
                "no_route",
            ),
            (
                "no route, request",
                "/request/voice",
                Some(KEY),
                &ok,
                422,
                "no_route",
            ),
            (
                "no service, request",
                "/request/tickets",
                Some(KEY),
                &ok,
                503,
                "no_service",
            ),
            (
                "timeout 0",
                "/request/echo",
                Some(KEY),
                "{\"timeout_ms\":0,\"message\":1}",
                400,
                "invalid",
            ),
            (
                "publish, no channel",
                "/publish",
                Some(KEY),
                "{\"broadcast\":true,\"message\":1}",
                400,
                "invalid",
            ),
            (
                "publish, unknown channel",
                "/publish",
                Some(KEY),
                "{\"channel\":\"nope\",\"broadcast\":true,\"message\":1}",
                404,
                "unknown_channel",
            ),
            (
                "publish, no target",
                "/publish",
                Some(KEY),
                "{\"channel\":\"chat\",\"message\":1}",
                400,
                "invalid",
            ),
            (
                "publish, bad group",
                "/publish",
                Some(KEY),
                "{\"channel\":\"chat\",\"groups\":[\"a.b\"],\"message\":1}",
                400,
                "invalid",
            ),
            (
                "publish, empty id",
                "/publish",
                Some(KEY),
                "{\"channel\":\"chat\",\"broadcast\":true,\"id\":\"\",\"message\":1}",
                400,
                "invalid",
            ),
            (
                "publish, id with a `:`",
                "/publish",
                Some(KEY),
                "{\"channel\":\"chat\",\"broadcast\":true,\"id\":\"a:b\",\"message\":1}",
                400,
                "invalid",
            ),
            (
                "publish, id of 129 bytes",
                "/publish",
                Some(KEY),
                &long_id,
                400,
                "invalid",
            ),
        ];
        for (what, path, key, body, status, code) in cases {
            let (got, answer) = http_post(addr, path, *key, body.as_bytes()).await;
            assert_eq!(
                (got, answer["code"].as_str()),
                (*status, Some(*code)),
                "{what}: {answer}"
            );
            assert!(
                answer["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}"
            );
        }
        // Nothing of it reached a queue.
        assert!(env.get(&env.names.channel_queue("chat")).await.is_none());
        gw.shutdown().await;
    })
    .await;
}

/// A request no route takes is refused in JSON as every other: an unknown path `404`
/// naming the path and the routes served, a served path asked with another method
/// `405` naming the methods it answers (with `Allow`), a `/ws` request that is not an
/// upgrade `400` — on a WebSocket listener that serves the API, an admin listener and
/// the API's own listener.
#[tokio::test]
async fn a_request_no_route_takes_is_refused_in_json_on_every_listener() {
    TestEnv::run("http-no-route", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            api_on(false)(c);
            c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        })
        .await;
        let ws = api_addr(&gw);
        let admin = gw.gateway().admin_addr().expect("an admin listener");
        let own = TestGateway::start_with(env, api_on(true)).await;
        let api = api_addr(&own);
        // What, where, method, path, status, words of the message, the Allow header.
        type NoRoute<'a> = (
            &'a str,
            SocketAddr,
            &'a str,
            &'a str,
            u16,
            &'a [&'a str],
            &'a str,
        );
        let cases: &[NoRoute] = &[
            (
                "unknown path",
                ws,
                "GET",
                "/nope",
                404,
                &[
                    "`/nope`",
                    "/ws (GET)",
                    "/presence (GET, OPTIONS)",
                    "/publish (POST)",
                ],
                "",
            ),
            (
                "health moved to the admin listener",
                ws,
                "GET",
                "/healthz",
                404,
                &["`/healthz`"],
                "",
            ),
            (
                "GET on an API route",
                ws,
                "GET",
                "/publish",
                405,
                &["`/publish` answers POST, not GET"],
                "POST",
            ),
            (
                "POST on /ws",
                ws,
                "POST",
                "/ws",
                405,
                &["`/ws` answers GET, not POST"],
                "GET,HEAD",
            ),
            (
                "/ws that is not an upgrade",
                ws,
                "GET",
                "/ws",
                400,
                &["upgrade"],
                "",
            ),
            (
                "unknown path, admin",
                admin,
                "GET",
                "/ws",
                404,
                &["`/ws`", "/healthz (GET)", "/services (GET)"],
                "",
            ),
            (
                "wrong method, admin",
                admin,
                "DELETE",
                "/metrics",
                405,
                &["`/metrics` answers GET, not DELETE"],
                "GET,HEAD",
            ),
            (
                "unknown path, the API's listener",
                api,
                "GET",
                "/ws",
                404,
                &[
                    "`/ws`",
                    "/external/{channel} (POST)",
                    "/request/{channel} (POST)",
                ],
                "",
            ),
            (
                "wrong method, the API's listener",
                api,
                "GET",
                "/request/echo",
                405,
                &["`/request/echo` answers POST, not GET"],
                "POST",
            ),
        ];
        for (what, addr, method, path, status, words, allow) in cases {
            let (got, headers, body) = http_request(*addr, method, path, &[]).await;
            assert_eq!(got, *status, "{what}: {body}");
            let answer: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body:?}"));
            assert_eq!(answer["code"], "invalid", "{what}: {answer}");
            let message = answer["message"].as_str().unwrap_or_default();
            for word in *words {
                assert!(message.contains(word), "{what}: {word} in {message}");
            }
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(header("content-type"), Some("application/json"), "{what}");
            if !allow.is_empty() {
                assert_eq!(header("allow"), Some(*allow), "{what}");
            }
        }
        // HEAD reaches /ws's GET route and cannot be upgraded: 405, saying GET.
        let (got, headers, _) = http_request(ws, "HEAD", "/ws", &[]).await;
        assert_eq!(got, 405, "HEAD /ws");
        let allow = headers
            .iter()
            .find(|(k, _)| k == "allow")
            .map(|(_, v)| v.as_str());
        assert_eq!(allow, Some("GET"), "HEAD /ws: {headers:?}");
        own.shutdown().await;
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn with_accept_jwt_a_token_calls_with_its_user_and_permissions_but_may_not_publish_to_clients(
) {
    use warren_e2e::jwt::{now, sign, SECRET};
    TestEnv::run("http-jwt", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            api_on(false)(c);
            c.auth.mode = warren_gateway::AuthMode::Jwt;
            c.auth.jwt.secret = Some(SECRET.into());
            c.http_api.accept_jwt = true;
        })
        .await;
        let addr = api_addr(&gw);
        let claims = json!({"sub": "ada", "exp": now() + 600, "channels": {"chat": ["publish"]}});
        let token = sign(&claims, SECRET.as_bytes());
        let call = |path: &'static str, body: Value| {
            let token = token.clone();
            async move { http_post(addr, path, Some(&token), body.to_string().as_bytes()).await }
        };
        let (status, answer) = call("/external/chat", json!({"id": "j1", "message": 1})).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["message_id"], "ada:j1", "the token's user");
        let d = env
            .get(&env.names.channel_queue("chat"))
            .await
            .expect("in IN_CHAT");
        let user = d
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get(H_USER)
            .cloned();
        assert_eq!(user, Some(AMQPValue::LongString("ada".into())));
        let refused = [
            ("/external/tickets", json!({"message": 1}), 403, "forbidden"),
            ("/request/chat", json!({"message": 1}), 403, "forbidden"),
            (
                "/publish",
                json!({"channel": "chat", "broadcast": true, "message": 1}),
                403,
                "forbidden",
            ),
        ];
        for (path, body, status, code) in refused {
            let (got, answer) = call(path, body).await;
            assert_eq!(
                (got, answer["code"].as_str()),
                (status, Some(code)),
                "{path}: {answer}"
            );
        }
        let (got, answer) = http_post(
            addr,
            "/external/chat",
            Some("not.a.token"),
            b"{\"message\":1}",
        )
        .await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (401, Some("unauthorized")),
            "{answer}"
        );
        // The API key still works beside tokens.
        let (status, _) = post(addr, "/external/chat", json!({"message": 2})).await;
        assert_eq!(status, 202);
        gw.shutdown().await;
    })
    .await;
}

/// A user's token over the HTTP API is held to what one session of that user may
/// do: `max_pending_requests` calls in progress and `max_frames_per_s` calls a second
/// (bursts of twice that); over either, 429 `overloaded` naming the limit. Another
/// user, and the API key, are not held back by it. Without it a token opened as many
/// requests, each waiting up to `max_request_timeout_ms`, as it liked.
#[tokio::test]
async fn a_users_token_is_held_to_the_calls_in_progress_and_the_rate_of_one_session() {
    use warren_e2e::jwt::{now, sign, SECRET};
    TestEnv::run("http-jwt-limits", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            api_on(false)(c);
            c.auth.mode = warren_gateway::AuthMode::Jwt;
            c.auth.jwt.secret = Some(SECRET.into());
            c.http_api.accept_jwt = true;
            c.max_pending_requests = 2;
            c.max_frames_per_s = 3;
        })
        .await;
        let addr = api_addr(&gw);
        let token = |user: &str| {
            let claims = json!({"sub": user, "exp": now() + 600, "channels": {"voice": ["publish", "request"]}});
            sign(&claims, SECRET.as_bytes())
        };
        let (ada, bob) = (token("ada"), token("bob"));
        // A service that takes requests and never answers.
        let _stuck = env.consume_inbound("voice").await;
        tokio::time::sleep(warren_gateway::services::CONSUMER_CHECK_TTL).await;
        let body = json!({"timeout_ms": 3_000, "message": 1}).to_string();
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let (ada, body) = (ada.clone(), body.clone());
                tokio::spawn(async move {
                    http_post(addr, "/request/voice", Some(&ada), body.as_bytes()).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, answer) =
            http_post(addr, "/request/voice", Some(&ada), body.as_bytes()).await;
        assert_eq!((status, answer["code"].as_str()), (429, Some("overloaded")), "{answer}");
        assert!(
            answer["message"].as_str().unwrap_or_default().contains("max_pending_requests"),
            "{answer}"
        );
        let (status, answer) = http_post(
            addr,
            "/external/voice",
            Some(&bob),
            json!({"message": 1}).to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "another user: {answer}");
        for call in waiting {
            let (status, answer) = call.await.expect("the call");
            assert_eq!(status, 504, "{answer}");
        }
        // The rate: a burst of 6 (the bucket refilled while the requests waited), then
        // refused.
        let publish = json!({"message": 2}).to_string();
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let (status, _) =
                http_post(addr, "/external/voice", Some(&ada), publish.as_bytes()).await;
            statuses.push(status);
        }
        assert!(statuses.iter().take(3).all(|s| *s == 202), "{statuses:?}");
        assert!(statuses.contains(&429), "over the rate: {statuses:?}");
        let (status, answer) =
            http_post(addr, "/external/voice", Some(&ada), publish.as_bytes()).await;
        assert_eq!(status, 429, "{answer}");
        assert!(
            answer["message"].as_str().unwrap_or_default().contains("max_frames_per_s"),
            "{answer}"
        );
        // The API key is not counted.
        for _ in 0..10 {
            let (status, answer) = post(addr, "/external/voice", json!({"message": 3})).await;
            assert_eq!(status, 202, "{answer}");
        }
        gw.shutdown().await;
    })
    .await;
}

/// A call refused for a reason worth trying again (here `overloaded`: the channel's
/// queue is full) names the id it was given when the caller sent none, so that trying
/// again with it keeps the `message_id` (a copy that did reach RabbitMQ is dropped by
/// its receivers). The body had only code and message: the caller could not.
#[tokio::test]
async fn a_retryable_refusal_names_the_id_the_call_was_given() {
    TestEnv::run("http-retry-id", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            api_on(false)(c);
            c.inbound_max_length = 2;
        })
        .await;
        let addr = api_addr(&gw);
        let mut refused = None;
        for _ in 0..10 {
            let (status, answer) = post(addr, "/external/chat", json!({"message": 1})).await;
            if status != 202 {
                refused = Some((status, answer));
                break;
            }
        }
        let (status, answer) = refused.expect("a call past the queue's bound is refused");
        assert_eq!(status, 429, "{answer}");
        assert_eq!(answer["code"], "overloaded", "{answer}");
        let id = answer["id"].as_str().expect("the refusal names the id");
        assert!(!id.is_empty(), "{answer}");
        // A refusal not worth trying again names no id (nothing was published).
        let (status, answer) = post(addr, "/external/nope", json!({"message": 1})).await;
        assert_eq!(status, 404, "{answer}");
        assert!(answer.get("id").is_none(), "{answer}");
        gw.shutdown().await;
    })
    .await;
}

/// A call sent with `Expect: 100-continue` (curl's habit for larger bodies) is
/// answered however long its handler takes: the `100 Continue` the gateway writes
/// before reading the body used to start the next request's header deadline, which
/// then cut the connection under the handler and lost the answer.
#[tokio::test]
async fn a_call_that_expects_100_continue_gets_its_answer_after_the_header_deadline() {
    use tokio::io::AsyncWriteExt;
    TestEnv::run("http-expect", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, api_with_short_header_deadline).await;
        let demo = warren_e2e::service::start_demo_with(
            &env.namespace,
            warren_service::demo::DemoOptions {
                delay: Duration::from_millis(1500),
                ..Default::default()
            },
        )
        .await;
        let mut s = tokio::net::TcpStream::connect(api_addr(&gw))
            .await
            .expect("connect");
        let body = r#"{"timeout_ms":10000,"message":{"n":1}}"#;
        let head = format!(
            "POST /request/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("write");
        let interim = read_until(&mut s, b"\r\n\r\n").await;
        assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
        s.write_all(body.as_bytes()).await.expect("write the body");
        // The demo service answers after 1.5 s: three header deadlines later.
        let answer = read_until(&mut s, br#""n":1"#).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "no answer: {answer:?}");
        demo.stop().await.expect("the demo service stops");
        gw.shutdown().await;
    })
    .await;
}

/// A call with `Expect: 100-continue` and its body sent at once, answered at once (a
/// body that is not JSON): the `100 Continue` and the answer go out in one write, and
/// the header deadline still starts for the next request: an idle connection is
/// closed. Before, the write was taken for the `100` alone and the connection could
/// sit idle for ever.
#[tokio::test]
async fn after_a_100_continue_and_an_answer_written_together_an_idle_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    TestEnv::run("http-expect-idle", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, api_with_short_header_deadline).await;
        let mut s = tokio::net::TcpStream::connect(api_addr(&gw))
            .await
            .expect("connect");
        let body = "not json";
        let call = format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n{body}",
            body.len()
        );
        s.write_all(call.as_bytes()).await.expect("write");
        let answer = read_until(&mut s, b"HTTP/1.1 400").await;
        assert!(answer.contains("HTTP/1.1 400"), "{answer:?}");
        // Idle now: closed within the header deadline (0.5 s), not kept for ever.
        let started = std::time::Instant::now();
        let rest = read_until(&mut s, b"never sent").await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the idle connection was kept for {:?}: {rest:?}",
            started.elapsed()
        );
        gw.shutdown().await;
    })
    .await;
}

/// What `s` sends until `end` (at most 10 s, or until it closes).
async fn read_until(s: &mut tokio::net::TcpStream, end: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while !got.windows(end.len()).any(|w| w == end) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A body has `header_read_timeout_ms` to arrive, as the headers had: a caller that
/// sends its headers and then trickles the body (or stops) is answered `timeout` and
/// does not hold its connection and a task for ever.
#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_refused_and_the_connection_freed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    TestEnv::run("http-slow-body", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, api_with_short_header_deadline).await;
        let addr = api_addr(&gw);
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /external/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"mess"
        );
        s.write_all(head.as_bytes()).await.expect("write");
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                    break;
                }
            }
        })
        .await;
        assert!(read.is_ok(), "answered within 10 s: {answer:?}");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 504"), "{text}");
        assert!(text.contains("\"code\":\"timeout\""), "{text}");
        assert!(text.contains("header_read_timeout_ms"), "{text}");
        assert!(started.elapsed() >= Duration::from_millis(400), "{text}");
        // An oversized body is still too_large, not unreadable.
        let (status, answer) =
            post(addr, "/external/chat", json!({"message": "x".repeat(6000)})).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (413, Some("too_large")),
            "{answer}"
        );
        gw.shutdown().await;
    })
    .await;
}

/// Whether a call made now would be served: `None` when the listener no longer takes
/// connections, else the status line of its answer (or what it sent: nothing, when
/// the connection was closed unanswered).
async fn a_new_call(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let body = json!({"message": 1}).to_string();
    let head = format!(
        "POST /request/voice HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    Some(answer.lines().next().unwrap_or_default().to_string())
}

/// A gateway shutting down waits for the HTTP API calls in progress, as for its
/// WebSocket connections (within `shutdown_grace_ms`): a `POST /request` whose service
/// answers 3 s in, 2.5 s into the shutdown, gets its reply, and the shutdown ends
/// then. Before, only WebSocket connections were waited for: with none, the servers
/// were given 2 s, then the broker was closed under the call, answered
/// `503 broker_unavailable` ("the answer channel closed") for a request the service
/// handled anyway. A call made once the shutdown began is not taken.
#[tokio::test]
async fn a_shutdown_waits_for_the_http_api_calls_in_progress() {
    TestEnv::run("http-request-drain", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            api_on(false)(c);
            c.shutdown_grace_ms = 5_000;
        })
        .await;
        let addr = api_addr(&gw);
        let mut inbound = env.consume_inbound("voice").await;
        let asked = tokio::time::Instant::now();
        let call = tokio::spawn(async move {
            let answer = post(
                addr,
                "/request/voice",
                json!({"timeout_ms": 10_000, "message": {"sdp": "x"}}),
            )
            .await;
            (answer, asked.elapsed())
        });
        let req = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        tokio::time::sleep_until(asked + Duration::from_millis(500)).await;
        let stopping = tokio::time::Instant::now();
        let stop = tokio::spawn(async move {
            gw.shutdown().await;
            stopping.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refused = a_new_call(addr).await;
        assert!(
            refused
                .as_deref()
                .is_none_or(|line| !line.contains(" 200 ")),
            "a call made during the shutdown is not taken: {refused:?}"
        );
        tokio::time::sleep_until(asked + Duration::from_secs(3)).await;
        env.reply_to(&req, "{\"answer\":42}", None).await;
        ack(&req).await;
        let ((status, answer), took) = call.await.expect("the call ends");
        let stopped = tokio::time::timeout(Duration::from_secs(15), stop)
            .await
            .expect("shutdown ends")
            .expect("no panic");
        println!(
            "gateway_http_api: the reply answered {} ms after the call, the shutdown \
             ended {} ms after it began; a new call during it: {refused:?}",
            took.as_millis(),
            stopped.as_millis()
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["message"], json!({"answer": 42}));
        assert!(
            stopped < Duration::from_secs(5),
            "the shutdown ends within its grace: {stopped:?}"
        );
    })
    .await;
}

/// The wait for the HTTP API calls in progress is bounded by `shutdown_grace_ms`: a
/// request whose reply does not come (its own timeout 30 s) holds a shutdown for that
/// grace, then for the 2 s its server is given to finish as before, no longer; the
/// broker then closes under it (`503 broker_unavailable`).
#[tokio::test]
async fn a_shutdown_waits_for_the_http_api_calls_only_within_its_grace() {
    TestEnv::run("http-request-drain-grace", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            api_on(false)(c);
            c.shutdown_grace_ms = 1_000;
        })
        .await;
        let addr = api_addr(&gw);
        let mut inbound = env.consume_inbound("voice").await;
        let call = tokio::spawn(async move {
            post(
                addr,
                "/request/voice",
                json!({"timeout_ms": 30_000, "message": {"sdp": "x"}}),
            )
            .await
        });
        let _unanswered = next_delivery(&mut inbound, Duration::from_secs(5)).await;
        let stopping = tokio::time::Instant::now();
        gw.shutdown().await;
        let stopped = stopping.elapsed();
        let (status, answer) = call.await.expect("the call ends");
        println!(
            "gateway_http_api: a shutdown with an unanswered call ended after {} ms",
            stopped.as_millis()
        );
        assert_eq!(
            (status, answer["code"].as_str()),
            (503, Some("broker_unavailable")),
            "{answer}"
        );
        // Its grace (1 s) and its server's 2 s, about 3.1 s here; the ceiling leaves a
        // busy 2-core machine room and stays far below the call's own 30 s.
        assert!(
            stopped >= Duration::from_millis(900) && stopped < Duration::from_millis(8_000),
            "the call held the shutdown for its grace and its server's 2 s, no longer: \
             {stopped:?}"
        );
    })
    .await;
}

/// Guessing API keys goes no faster than `max_new_connections_per_ip_per_s`: each key
/// refused costs the caller's address one of them, and once they are spent its calls
/// are refused `429 overloaded` before their key is looked at, the right key too. A
/// key accepted costs nothing, and the address may try again once its tokens refill.
#[tokio::test]
async fn guessed_api_keys_are_refused_at_the_new_connection_rate_of_their_address() {
    TestEnv::run("http-key-guessing", LIMIT, async |env| {
        // One a second, in bursts of two.
        let gw = TestGateway::start_with(env, |c| {
            api_on(false)(c);
            c.ip_limits_on_loopback = true;
            c.max_new_connections_per_ip_per_s = 1;
        })
        .await;
        let addr = api_addr(&gw);
        let body = json!({"message": {"n": 1}}).to_string();
        let post = |key: String| {
            let body = body.clone();
            async move { http_post(addr, "/external/chat", Some(&key), body.as_bytes()).await }
        };
        // Accepted keys cost nothing: more calls than the burst all pass.
        for i in 0..6 {
            let (status, answer) = post(KEY.into()).await;
            assert_eq!(status, 202, "call {i}: {answer}");
        }
        let mut statuses = Vec::new();
        for i in 0..10 {
            let (status, answer) = post(format!("guess-{i}")).await;
            if status == 429 {
                assert_eq!(answer["code"], "overloaded", "{answer}");
            }
            statuses.push(status);
        }
        let refused = statuses.iter().filter(|s| **s == 401).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        // The burst of two, and one more if a second passed while they were tried.
        assert!((2..=4).contains(&refused), "{statuses:?}");
        assert_eq!(refused + limited, 10, "{statuses:?}");
        // Spent: the right key is not looked at either.
        let (status, answer) = post(KEY.into()).await;
        assert_eq!(status, 429, "{answer}");
        // A token refills in a second.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let (status, answer) = post(KEY.into()).await;
        assert_eq!(status, 202, "{answer}");
        gw.shutdown().await;
    })
    .await;
}

/// A publish whose headers and targets fill their frame to within the bytes RabbitMQ
/// adds on delivery (`x-stream-offset`, 25 bytes) is refused `too_large`: accepted,
/// it reached the gateways' stream readers as a frame over `frame_max`, which lapin
/// refuses by dropping the connection, and met again at every reconnect, it stopped
/// every delivery from the outbound stream for good. Sized with the byte counts the
/// refusals name: many users' keys (`CC`), the last user's id lengthened a character
/// (two bytes: `CC` and `x-warren-cc`) at a time.
#[tokio::test]
async fn a_publish_filling_its_frame_to_within_what_rabbitmq_adds_is_refused_too_large() {
    TestEnv::run("http-publish-frame", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            api_on(false)(c);
            c.http_api.max_body_bytes = 256 * 1024;
        })
        .await;
        let addr = api_addr(&gw);
        let mut c = TestClient::connect(&gw.url()).await;
        c.subscribe(sub("all", "chat")).await;
        let users = |n: usize, last_extra: usize| -> Vec<String> {
            let mut u: Vec<String> = (0..n).map(|i| format!("u{i:05}")).collect();
            if let Some(last) = u.last_mut() {
                last.push_str(&"x".repeat(last_extra));
            }
            u
        };
        let publish = |users: Vec<String>| {
            json!({"channel": "chat", "id": "big", "users": users, "message": 1})
        };
        let refused_bytes = |answer: &Value| -> usize {
            let m = answer["message"].as_str().unwrap_or_default();
            m.split("take ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a byte count: {answer}"))
        };
        // Over any limit: what 4,000 and 3,999 users take.
        let (status, a) = post(addr, "/publish", publish(users(4_000, 0))).await;
        assert_eq!(status, 413, "{a}");
        let n1 = refused_bytes(&a);
        let (_, b) = post(addr, "/publish", publish(users(3_999, 0))).await;
        let per_user = n1 - refused_bytes(&b);
        // Within RabbitMQ's 25 bytes of the frame (131,072 with its 8 bytes of overhead).
        let target = 131_072 - 8 - 12;
        let k = 4_000 - (n1 - target).div_ceil(per_user);
        let short = target - (n1 - (4_000 - k) * per_user);
        let (status, answer) = post(addr, "/publish", publish(users(k, short / 2))).await;
        assert_eq!(status, 413, "refused: {answer}");
        assert_eq!(answer["code"], "too_large", "{answer}");
        assert!(refused_bytes(&answer) + 1 >= target, "{answer}");
        // The stream flows on.
        let (status, answer) = post(
            addr,
            "/publish",
            json!({"channel": "chat", "id": "after", "broadcast": true, "message": 2}),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(c.expect_deliver().await.message_id, "http-api:after");
        gw.shutdown().await;
    })
    .await;
}
