//! Multi-tenant routing against a real RabbitMQ (README, "Multi-tenant deployments"):
//! a gateway in tenant mode takes each session's tenant from its verified token, routes
//! the tenant-routed channel's writes through the `warren.tenants` headers exchange to
//! the tenant's general or per-type queue, answers `no_route` for a tenant or type
//! with no queue, and delivers a tenant's broadcasts only to that tenant's clients;
//! replies never cross tenants. `warren-gateway topology check` passes on a broker
//! declared by `topology apply`, lists planted differences (missing objects, another
//! queue type, another exchange kind) and exits non-zero, and creates nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::ExchangeKind;
use serde_json::json;
use warren_e2e::client::{raw, sub, TestClient};
use warren_e2e::env::{amqp_addr, TestEnv};
use warren_e2e::gateway::{http_get, management_url, TestGateway};
use warren_e2e::jwt::{now, sign, SECRET};
use warren_gateway::{AuthMode, Config, NoServiceMode, TenantOptions};
use warren_protocol::amqp::{Names, QueueArg, H_TENANT, H_USER};
use warren_protocol::tenants::{Tenant, TenantRouting};
use warren_protocol::{ClientFrame, ErrorCode, Hello, Publish};
use warren_service::{Context, HandlerError, Incoming, Outcome, Service, ServiceConfig, Targets};

const LIMIT: Duration = Duration::from_secs(90);
/// How long a client waits to be sure nothing (more) arrives.
const QUIET: Duration = Duration::from_millis(700);

/// The tenant-routed channel of these tests.
const ROUTED: &str = "tickets";

/// The tenant routing of these tests: `acme` with a `pdf` queue, `globex` with only
/// its general queue.
fn routing() -> TenantRouting {
    TenantRouting {
        channels: vec![ROUTED.into()],
        tenants: vec![
            Tenant {
                name: "acme".into(),
                types: vec!["pdf".into()],
            },
            Tenant {
                name: "globex".into(),
                types: vec![],
            },
        ],
    }
}

/// Tenant mode as in [`routing`], tokens verified as `jwt`.
fn tenant_mode(c: &mut Config) {
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    c.tenants.enabled = true;
    c.tenants.channels = vec![ROUTED.into()];
    for t in routing().tenants {
        c.tenants
            .tenant
            .insert(t.name, TenantOptions { types: t.types });
    }
}

/// A token of `user` in `tenant` (no claim when `None`) that may publish and
/// subscribe on chat, publish and request on the routed channel, and request on echo.
fn token(user: &str, tenant: Option<&str>) -> String {
    let mut claims = json!({
        "sub": user, "exp": now() + 600,
        "channels": {"chat": ["publish", "subscribe"], ROUTED: ["publish", "request"],
                     "echo": ["request"]}
    });
    if let Some(t) = tenant {
        claims["tenant"] = json!(t);
    }
    sign(&claims, SECRET.as_bytes())
}

async fn login(gateway: &TestGateway, user: &str, tenant: Option<&str>) -> TestClient {
    let hello = Hello {
        token: Some(token(user, tenant)),
        ..Hello::default()
    };
    TestClient::connect_with(&gateway.url(), hello).await
}

/// Publishes on `channel` with client headers.
async fn publish_with(client: &mut TestClient, id: &str, channel: &str, headers: &[(&str, &str)]) {
    client
        .send(&ClientFrame::Publish(Publish {
            id: id.into(),
            channel: channel.into(),
            subject: None,
            distribution: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            message: raw(json!({ "id": id })),
        }))
        .await;
}

/// Deletes what the tenant topology of [`routing`] declared under `names`.
async fn delete_tenant_topology(env: &TestEnv) {
    let ch = env.new_channel().await;
    let names = &env.names;
    for t in routing().tenants {
        let kinds = std::iter::once(None).chain(t.types.iter().map(|k| Some(k.as_str())));
        for kind in kinds {
            let q = names.tenant_queue(ROUTED, &t.name, kind);
            let _ = ch
                .queue_delete(ShortString::from(q), QueueDeleteOptions::default())
                .await;
        }
        let _ = ch
            .exchange_delete(
                ShortString::from(names.tenant_exchange(&t.name)),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = ch
        .exchange_delete(
            ShortString::from(names.tenants_exchange()),
            ExchangeDeleteOptions::default(),
        )
        .await;
    let _ = ch.close(200, "cleaned".into()).await;
}

/// The ids (`{"id": ...}` bodies) of the messages in `queue`, taken off it (auto-ack).
async fn drain_ids(env: &TestEnv, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(d) = env.get(queue).await {
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        out.push(v["id"].as_str().unwrap_or_default().to_string());
    }
    out
}

/// Relays what a client publishes on chat to every chat subscriber (its tenant is
/// carried by the service library), and answers a request on the routed channel with
/// the tenant and queue it came from.
async fn tenant_service(env: &TestEnv) -> Service {
    let service = Service::connect(&amqp_addr(), env.names.clone())
        .await
        .expect("the service connects");
    let queues = service
        .declare_tenants(&routing())
        .await
        .expect("the service declares the tenant topology");
    assert!(queues.contains(&env.names.tenant_queue(ROUTED, "acme", Some("pdf"))));
    service
        .consume("chat", |ctx: Context, m: Incoming| async move {
            ctx.publish(&Targets::broadcast("chat"), m.body.clone())
                .await?;
            Ok::<_, HandlerError>(Outcome::Done)
        })
        .await
        .expect("consume chat");
    // One worker per tenant queue, so each always has a consumer.
    for tenant in ["acme", "globex"] {
        let queue = env.names.tenant_queue(ROUTED, tenant, None);
        service
            .consume_queues(&[queue], |_ctx: Context, m: Incoming| async move {
                Outcome::json(&json!({ "tenant": m.tenant(), "queue": m.queue }))
                    .map_err(|e| HandlerError::Failed(e.to_string()))
            })
            .await
            .expect("consume the tenant queue");
    }
    service
}

#[tokio::test]
async fn two_tenants_never_see_each_others_broadcasts_or_replies() {
    TestEnv::run("tenant-isolation", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, tenant_mode).await;
        let service = tenant_service(env).await;
        let mut a1 = login(&gw, "anna", Some("acme")).await;
        let mut a2 = login(&gw, "arne", Some("acme")).await;
        let mut g1 = login(&gw, "gus", Some("globex")).await;
        for c in [&mut a1, &mut a2, &mut g1] {
            c.subscribe(sub("s", "chat")).await;
        }

        // A broadcast relayed for acme reaches acme's clients only...
        a1.publish("hello-acme", "chat", json!({ "id": "hello-acme" }))
            .await;
        a1.expect_ack("hello-acme").await;
        for c in [&mut a1, &mut a2] {
            let d = c.expect_deliver().await;
            assert!(d.message.get().contains("hello-acme"), "{d:?}");
        }
        g1.expect_no_deliver(QUIET).await;
        // ...and one for globex reaches globex's only.
        g1.publish("hello-globex", "chat", json!({ "id": "hello-globex" }))
            .await;
        g1.expect_ack("hello-globex").await;
        let d = g1.expect_deliver().await;
        assert!(d.message.get().contains("hello-globex"), "{d:?}");
        a1.expect_no_deliver(QUIET).await;
        a2.expect_no_deliver(QUIET).await;

        // A service message naming no tenant reaches no tenant's client.
        env.publish_out("chat.all", "untenanted", "{\"id\":\"untenanted\"}")
            .await;
        for c in [&mut a1, &mut a2, &mut g1] {
            c.expect_no_deliver(QUIET).await;
        }

        // Requests of both tenants at once: each reply goes to the session that asked,
        // from its own tenant's queue.
        a1.request("ra", ROUTED, Some(10_000), json!({})).await;
        g1.request("rg", ROUTED, Some(10_000), json!({})).await;
        let ra = a1.expect_reply("ra").await;
        let rg = g1.expect_reply("rg").await;
        let ra: serde_json::Value = serde_json::from_str(ra.message.get()).unwrap();
        let rg: serde_json::Value = serde_json::from_str(rg.message.get()).unwrap();
        assert_eq!(ra["tenant"], "acme");
        assert_eq!(ra["queue"], env.names.tenant_queue(ROUTED, "acme", None));
        assert_eq!(rg["tenant"], "globex");
        assert_eq!(rg["queue"], env.names.tenant_queue(ROUTED, "globex", None));
        // No copy of either reply, nor an error, reaches any other session.
        for c in [&mut a1, &mut a2, &mut g1] {
            c.expect_quiet(QUIET).await;
        }

        for c in [a1, a2, g1] {
            c.close().await;
        }
        service.stop().await.expect("the service stops");
        gw.shutdown().await;
        delete_tenant_topology(env).await;
    })
    .await;
}

/// A user id need be unique only within its tenant: `admin` of acme and `admin` of
/// globex are two users. One's sessions do not count towards the other's
/// `max_connections_per_user`, and one may not resume the other's session.
#[tokio::test]
async fn the_same_user_id_in_two_tenants_is_two_users() {
    TestEnv::run("tenant-same-user", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            tenant_mode(c);
            c.max_connections_per_user = 1;
        })
        .await;
        let mut globex = login(&gw, "admin", Some("globex")).await;
        let acme = login(&gw, "admin", Some("acme")).await;
        assert_eq!(acme.welcome().user, "admin", "acme's admin has a session");
        // acme's admin names globex's admin's session: a fresh session, and globex's
        // is untouched.
        let hello = Hello {
            token: Some(token("admin", Some("acme"))),
            ..globex.resume_hello()
        };
        acme.close().await;
        let thief = TestClient::connect_with(&gw.url(), hello).await;
        let w = thief.welcome();
        assert!(!w.resumed, "{w:?}");
        assert_eq!(w.notice, Some(ErrorCode::Forbidden), "{w:?}");
        assert_ne!(thief.session(), globex.session());
        globex.ping(1).await;
        assert!(
            matches!(
                globex.recv_within(Duration::from_secs(5)).await,
                Some(warren_protocol::ServerFrame::Pong(_))
            ),
            "globex's admin keeps its connection"
        );
        for c in [thief, globex] {
            c.close().await;
        }
        gw.shutdown().await;
        delete_tenant_topology(env).await;
    })
    .await;
}

/// The same user id and request id in two tenants are two requests to a service on a
/// channel the tenants share: each gets its own answer. The service library's
/// duplicate window knows a message by its `message_id`, which names the tenant; it
/// named only `<user>:<id>`, and globex's `admin` got acme's remembered reply.
#[tokio::test]
async fn the_same_request_id_of_the_same_user_id_in_two_tenants_is_two_requests() {
    TestEnv::run("tenant-same-request", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, tenant_mode).await;
        let service = Service::connect(&amqp_addr(), env.names.clone())
            .await
            .expect("the service connects");
        service
            .consume("echo", |_ctx: Context, m: Incoming| async move {
                Outcome::json(&json!({ "tenant": m.tenant() }))
                    .map_err(|e| HandlerError::Failed(e.to_string()))
            })
            .await
            .expect("consume echo");
        let mut acme = login(&gw, "admin", Some("acme")).await;
        let mut globex = login(&gw, "admin", Some("globex")).await;
        for (client, tenant) in [(&mut acme, "acme"), (&mut globex, "globex")] {
            client.request("r-1", "echo", Some(10_000), json!({})).await;
            let reply = client.expect_reply("r-1").await;
            let reply: serde_json::Value = serde_json::from_str(reply.message.get()).unwrap();
            assert_eq!(
                reply["tenant"], tenant,
                "{tenant}'s admin gets its own answer"
            );
        }
        for c in [acme, globex] {
            c.close().await;
        }
        service.stop().await.expect("the service stops");
        gw.shutdown().await;
        delete_tenant_topology(env).await;
    })
    .await;
}

#[tokio::test]
async fn per_type_queues_get_only_their_type_and_unrouted_writes_get_no_route() {
    TestEnv::run("tenant-types", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            tenant_mode(c);
            // Nothing consumes the tenant queues here: publishes are not refused for it.
            c.no_service = NoServiceMode::Off;
        })
        .await;
        let mut anna = login(&gw, "anna", Some("acme")).await;
        let mut gus = login(&gw, "gus", Some("globex")).await;
        let mut ivan = login(&gw, "ivan", Some("initech")).await;
        let mut nobody = login(&gw, "nobody", None).await;

        publish_with(&mut anna, "a-general", ROUTED, &[]).await;
        anna.expect_ack("a-general").await;
        publish_with(&mut anna, "a-pdf-1", ROUTED, &[("type", "pdf")]).await;
        anna.expect_ack("a-pdf-1").await;
        publish_with(&mut anna, "a-pdf-2", ROUTED, &[("type", "pdf")]).await;
        anna.expect_ack("a-pdf-2").await;
        publish_with(&mut gus, "g-general", ROUTED, &[]).await;
        gus.expect_ack("g-general").await;

        // A type acme has no queue for, a type only acme has, an unconfigured tenant.
        publish_with(&mut anna, "a-zip", ROUTED, &[("type", "zip")]).await;
        anna.expect_error_code(Some("a-zip"), ErrorCode::NoRoute)
            .await;
        publish_with(&mut gus, "g-pdf", ROUTED, &[("type", "pdf")]).await;
        gus.expect_error_code(Some("g-pdf"), ErrorCode::NoRoute)
            .await;
        publish_with(&mut ivan, "i-general", ROUTED, &[]).await;
        ivan.expect_error_code(Some("i-general"), ErrorCode::NoRoute)
            .await;
        // No tenant at all, or a client naming a tenant itself: refused.
        publish_with(&mut nobody, "n", ROUTED, &[]).await;
        nobody
            .expect_error_code(Some("n"), ErrorCode::Forbidden)
            .await;
        publish_with(&mut gus, "forged", ROUTED, &[("x-warren-tenant", "acme")]).await;
        gus.expect_error_code(Some("forged"), ErrorCode::Forbidden)
            .await;

        let names = &env.names;
        assert_eq!(
            drain_ids(env, &names.tenant_queue(ROUTED, "acme", Some("pdf"))).await,
            ["a-pdf-1", "a-pdf-2"]
        );
        assert_eq!(
            drain_ids(env, &names.tenant_queue(ROUTED, "acme", None)).await,
            ["a-general"]
        );
        assert_eq!(
            drain_ids(env, &names.tenant_queue(ROUTED, "globex", None)).await,
            ["g-general"]
        );
        // Nothing of the routed channel went to its untenanted queue.
        assert_eq!(
            env.message_count(&names.channel_queue(ROUTED)).await,
            Some(0)
        );

        for c in [anna, gus, ivan, nobody] {
            c.close().await;
        }
        gw.shutdown().await;
        delete_tenant_topology(env).await;
    })
    .await;
}

/// A request nobody can answer for its tenant is refused `no_service` at once, though
/// a worker of another tenant announces the channel: an instance names the queues it
/// consumes in its announcements, and answers only for those.
#[tokio::test]
async fn a_worker_of_one_tenant_does_not_answer_for_another() {
    TestEnv::run("tenant-no-service", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, tenant_mode).await;
        let config =
            ServiceConfig::default().with_announce_interval(Some(Duration::from_millis(500)));
        let service = Service::connect_with(&amqp_addr(), env.names.clone(), config)
            .await
            .expect("the service connects");
        service
            .declare_tenants(&routing())
            .await
            .expect("the service declares the tenant topology");
        let globex = env.names.tenant_queue(ROUTED, "globex", None);
        service
            .consume_queues(&[globex], |_ctx: Context, _m: Incoming| async move {
                Outcome::json(&json!({ "ok": true }))
                    .map_err(|e| HandlerError::Failed(e.to_string()))
            })
            .await
            .expect("consume globex's queue");
        // The gateway has the instance in its registry.
        let listed = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let body = http_get(gw.health_addr(), "/services").await;
            if body.contains(&format!("\"{ROUTED}\"")) {
                break;
            }
            assert!(tokio::time::Instant::now() < listed, "never listed: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let mut gus = login(&gw, "gus", Some("globex")).await;
        gus.request("g", ROUTED, Some(5_000), json!({})).await;
        gus.expect_reply("g").await;
        let mut anna = login(&gw, "anna", Some("acme")).await;
        let asked = std::time::Instant::now();
        anna.request("a", ROUTED, Some(5_000), json!({})).await;
        let e = anna.expect_error(Some("a")).await;
        assert_eq!(e.code, ErrorCode::NoService, "{e:?}");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );

        for c in [anna, gus] {
            c.close().await;
        }
        let _ = service.stop().await;
        gw.shutdown().await;
        delete_tenant_topology(env).await;
    })
    .await;
}

/// A service outside the library that sends its tenant header as bytes (Go's and
/// Java's AMQP clients do for a byte slice) reaches that tenant's sessions, never the
/// sessions without a tenant (the header was read as absent).
#[tokio::test]
async fn a_tenant_header_sent_as_bytes_reaches_that_tenant_only() {
    TestEnv::run("tenant-bytes", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, tenant_mode).await;
        let mut anna = login(&gw, "anna", Some("acme")).await;
        let mut nobody = login(&gw, "nobody", None).await;
        for c in [&mut anna, &mut nobody] {
            c.subscribe(sub("s", "chat")).await;
        }
        let mut headers = FieldTable::default();
        headers.insert(
            warren_protocol::amqp::H_TENANT.into(),
            AMQPValue::ByteArray(b"acme".to_vec().into()),
        );
        env.publish(
            &env.names.outbound_exchange(),
            "chat.all",
            "as-bytes",
            "{}",
            headers,
        )
        .await;
        assert_eq!(anna.expect_deliver().await.message_id, "as-bytes");
        nobody.expect_no_deliver(QUIET).await;
        for c in [anna, nobody] {
            c.close().await;
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn with_auth_none_every_session_has_the_default_tenant() {
    TestEnv::run("tenant-default", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            tenant_mode(c);
            c.auth.mode = AuthMode::None;
            c.auth.jwt.secret = None;
            c.tenants.default = Some("globex".into());
            c.no_service = NoServiceMode::Off;
        })
        .await;
        let hello = Hello {
            token: Some("dev-user".into()),
            ..Hello::default()
        };
        let mut c = TestClient::connect_with(&gw.url(), hello).await;
        publish_with(&mut c, "d-1", ROUTED, &[]).await;
        c.expect_ack("d-1").await;
        publish_with(&mut c, "d-pdf", ROUTED, &[("type", "pdf")]).await;
        c.expect_error_code(Some("d-pdf"), ErrorCode::NoRoute).await;
        assert_eq!(
            drain_ids(env, &env.names.tenant_queue(ROUTED, "globex", None)).await,
            ["d-1"]
        );
        c.close().await;
        gw.shutdown().await;
        delete_tenant_topology(env).await;
    })
    .await;
}

/// Runs `warren-gateway --config <file> topology <action>` for the tenant topology
/// of [`routing`] under the test's namespace.
async fn topology_cli(env: &TestEnv, action: &str) -> std::process::Output {
    topology_cli_with(env, action, &[]).await
}

/// The tenant configuration of [`topology_cli`].
fn tenant_config_toml() -> String {
    format!(
        "[tenants]\nenabled = true\nchannels = [\"{ROUTED}\"]\n\
         [tenants.tenant.acme]\ntypes = [\"pdf\"]\n[tenants.tenant.globex]\n"
    )
}

async fn topology_cli_with(env: &TestEnv, action: &str, extra: &[&str]) -> std::process::Output {
    warren_e2e::gateway::topology_cli(env, &tenant_config_toml(), action, extra).await
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn exchange_exists(env: &TestEnv, name: &str) -> bool {
    let ch = env.new_channel().await;
    let found = ch
        .exchange_declare(
            ShortString::from(name),
            ExchangeKind::Headers,
            ExchangeDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = ch.close(200, "checked".into()).await;
    found
}

#[tokio::test]
async fn topology_check_lists_planted_differences_and_passes_on_a_matching_broker() {
    TestEnv::run("tenant-check", LIMIT, async |env| {
        let names: &Names = &env.names;

        // Nothing declared yet: everything is missing, and checking creates nothing.
        let out = topology_cli(env, "check").await;
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        let text = stdout(&out);
        assert!(
            text.contains(&format!(
                "MISMATCH exchange {}: missing",
                names.tenants_exchange()
            )),
            "{text}"
        );
        assert!(!exchange_exists(env, &names.tenants_exchange()).await);

        let out = topology_cli(env, "apply").await;
        assert!(out.status.success(), "{}", stdout(&out));
        assert!(stdout(&out).contains("# tenant globex"));
        let out = topology_cli(env, "check").await;
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        assert!(stdout(&out).starts_with("0 of "), "{}", stdout(&out));
        assert!(
            stdout(&out).contains("bindings not compared"),
            "{}",
            stdout(&out)
        );

        // Bindings, read through the management API: all there after `apply`; then one
        // queue binding and the acme exchange's binding to the root headers exchange
        // removed, and both named.
        let mgmt = management_url();
        let with_bindings = ["--management-url", mgmt.as_str()];
        let out = topology_cli_with(env, "check", &with_bindings).await;
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        assert!(stdout(&out).contains("\n0 of "), "{}", stdout(&out));
        // The same topology as the file of `topology_cli` (`tenant_config_toml`).
        let mut config = Config {
            namespace: env.namespace.clone(),
            ..Config::default()
        };
        tenant_mode(&mut config);
        let declarations = warren_gateway::Topology::from_config(&config).declarations;
        let (queue, exchange, key) = declarations
            .iter()
            .find_map(|d| match d {
                warren_gateway::topology::Declaration::Binding {
                    queue,
                    exchange,
                    key,
                } => Some((queue.clone(), exchange.clone(), key.clone())),
                _ => None,
            })
            .expect("a queue binding");
        let (destination, source, args) = declarations
            .iter()
            .find_map(|d| match d {
                warren_gateway::topology::Declaration::ExchangeBinding {
                    destination,
                    source,
                    args,
                } => Some((destination.clone(), source.clone(), args.clone())),
                _ => None,
            })
            .expect("an exchange binding");
        let ch = env.new_channel().await;
        ch.queue_unbind(
            ShortString::from(queue.as_str()),
            ShortString::from(exchange.as_str()),
            ShortString::from(key.as_str()),
            FieldTable::default(),
        )
        .await
        .expect("unbind the queue");
        let mut table = FieldTable::default();
        for (k, v) in &args {
            let v = match v {
                QueueArg::Text(t) => AMQPValue::LongString(t.as_str().into()),
                QueueArg::Int(i) => AMQPValue::LongLongInt(*i),
            };
            table.insert(ShortString::from(k.as_str()), v);
        }
        ch.exchange_unbind(
            ShortString::from(destination.as_str()),
            ShortString::from(source.as_str()),
            ShortString::from(""),
            ExchangeUnbindOptions::default(),
            table,
        )
        .await
        .expect("unbind the exchange");
        let _ = ch.close(200, "unbound".into()).await;
        let out = topology_cli_with(env, "check", &with_bindings).await;
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let missing: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("MISMATCH binding "))
            .collect();
        assert_eq!(missing.len(), 2, "{text}");
        assert!(
            missing.contains(
                &format!("MISMATCH binding {exchange} -> {queue} ({key}): missing").as_str()
            ),
            "{text}"
        );
        assert!(
            missing
                .iter()
                .any(|l| l.starts_with(&format!("MISMATCH binding {source} -> {destination} ("))),
            "{text}"
        );
        assert!(text.contains("\n2 of "), "{text}");
        // Without the management API the same broker passes the object check.
        let out = topology_cli(env, "check").await;
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

        // Plant: globex's queue as a classic queue, acme's exchange as a fanout,
        // acme's pdf queue gone.
        let ch = env.new_channel().await;
        let globex = names.tenant_queue(ROUTED, "globex", None);
        let pdf = names.tenant_queue(ROUTED, "acme", Some("pdf"));
        for q in [&globex, &pdf] {
            ch.queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
                .await
                .expect("delete a queue");
        }
        ch.queue_declare(
            ShortString::from(globex.as_str()),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("declare a classic queue");
        let acme = names.tenant_exchange("acme");
        ch.exchange_delete(
            ShortString::from(acme.as_str()),
            ExchangeDeleteOptions::default(),
        )
        .await
        .expect("delete the exchange");
        ch.exchange_declare(
            ShortString::from(acme.as_str()),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a fanout");
        let _ = ch.close(200, "planted".into()).await;

        let out = topology_cli(env, "check").await;
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let line = |object: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("MISMATCH {object}:")))
                .unwrap_or_else(|| panic!("no mismatch for {object} in\n{text}"))
                .to_string()
        };
        // The broker names the first argument that differs.
        assert!(
            line(&format!("queue {globex}")).contains(&format!(
                "inequivalent arg 'x-dead-letter-exchange' for queue '{globex}'"
            )),
            "{text}"
        );
        assert!(
            line(&format!("exchange {acme}")).contains("inequivalent arg 'type' for exchange")
                && line(&format!("exchange {acme}"))
                    .contains("received 'headers' but current is 'fanout'"),
            "{text}"
        );
        assert!(
            line(&format!("queue {pdf}")).ends_with(": missing"),
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with("MISMATCH")).count(),
            3,
            "{text}"
        );
        assert!(text.contains("3 of "), "{text}");
        // The missing queue is still missing.
        assert_eq!(env.message_count(&pdf).await, None);

        delete_tenant_topology(env).await;
    })
    .await;
}

/// The HTTP API key of [`presence_and_http_api_publishes_stay_within_a_tenant`].
const KEY: &str = "tenant-test-key";

#[tokio::test]
async fn presence_and_http_api_publishes_stay_within_a_tenant() {
    TestEnv::run("tenant-presence", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            tenant_mode(c);
            c.presence = true;
            c.http_api.enabled = true;
            c.http_api.api_keys = vec![KEY.into()];
        })
        .await;
        let addr = gw.listeners()[0].0;
        let mut a1 = login(&gw, "anna", Some("acme")).await;
        let a2 = login(&gw, "abe", Some("acme")).await;
        let mut g1 = login(&gw, "gus", Some("globex")).await;
        for c in [&mut a1, &mut g1] {
            c.subscribe(sub("s", "chat")).await;
        }
        let users = |body: &str| -> Vec<String> {
            let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
            serde_json::from_value(v["users"].clone()).expect("a user list")
        };
        // `per_node` counts the same tenant's sessions only (on any channel).
        let per_node = async |auth: String| -> serde_json::Value {
            let (status, _, body) = warren_e2e::gateway::http_get_with(
                addr,
                "/presence?channel=chat",
                &[("Authorization", auth.as_str())],
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            v["per_node"].clone()
        };
        let node = gw.gateway().config().node.clone();
        let ask = async |auth: String, query: &str| {
            let (status, _, body) = warren_e2e::gateway::http_get_with(
                addr,
                &format!("/presence?channel=chat{query}"),
                &[("Authorization", auth.as_str())],
            )
            .await;
            assert_eq!(status, 200, "{body}");
            users(&body)
        };

        // A token's holder sees its own tenant only.
        let anna = format!("Bearer {}", token("anna", Some("acme")));
        let gus = format!("Bearer {}", token("gus", Some("globex")));
        assert_eq!(ask(anna.clone(), "").await, ["anna"]);
        assert_eq!(ask(gus.clone(), "").await, ["gus"]);
        assert_eq!(per_node(anna.clone()).await, json!({ node.as_str(): 2 }));
        assert_eq!(per_node(gus.clone()).await, json!({ node.as_str(): 1 }));
        // Naming another tenant changes nothing for a token.
        assert_eq!(ask(anna, "&tenant=globex").await, ["anna"]);
        // A backend names the tenant it asks about; without one it sees the sessions
        // without a tenant (none here).
        let key = format!("Bearer {KEY}");
        assert_eq!(ask(key.clone(), "&tenant=globex").await, ["gus"]);
        assert!(ask(key, "").await.is_empty());

        // `POST /publish` for a tenant reaches that tenant's clients only.
        let (status, answer) = warren_e2e::gateway::http_post(
            addr,
            "/publish",
            Some(KEY),
            json!({"channel": "chat", "broadcast": true, "tenant": "acme",
                   "message": {"id": "api-acme"}})
            .to_string()
            .as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        let d = a1.expect_deliver().await;
        assert!(d.message.get().contains("api-acme"), "{d:?}");
        g1.expect_no_deliver(QUIET).await;
        // An unconfigured tenant is no route.
        let (status, answer) = warren_e2e::gateway::http_post(
            addr,
            "/publish",
            Some(KEY),
            json!({"channel": "chat", "broadcast": true, "tenant": "initech", "message": 1})
                .to_string()
                .as_bytes(),
        )
        .await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (422, Some("no_route")),
            "{answer}"
        );

        for c in [a1, a2, g1] {
            c.close().await;
        }
        gw.shutdown().await;
        delete_tenant_topology(env).await;
    })
    .await;
}

/// The HTTP API's writes in tenant mode: an API key has no tenant of its own, so its
/// `POST /external` is refused `403 forbidden`; a token (`http_api.accept_jwt`) writes
/// as its user in its tenant, to that tenant's queue, with the tenant in the
/// `message_id` and `x-warren-tenant`; a token without a tenant is refused 403.
#[tokio::test]
async fn http_api_writes_go_to_the_callers_tenant_only() {
    TestEnv::run("tenant-http-writes", LIMIT, async |env| {
        let gw = TestGateway::start_with(env, |c| {
            tenant_mode(c);
            // Nothing consumes the tenant queues here: writes are not refused for it.
            c.no_service = NoServiceMode::Off;
            c.http_api.enabled = true;
            c.http_api.api_keys = vec![KEY.into()];
            c.http_api.accept_jwt = true;
        })
        .await;
        let addr = gw.listeners()[0].0;
        let post = async |credential: String, id: &str| {
            warren_e2e::gateway::http_post(
                addr,
                &format!("/external/{ROUTED}"),
                Some(credential.as_str()),
                json!({"id": id, "message": {"id": id}})
                    .to_string()
                    .as_bytes(),
            )
            .await
        };
        let (status, answer) = post(KEY.into(), "by-key").await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (403, Some("forbidden")),
            "{answer}"
        );
        let (status, answer) = post(token("anna", Some("acme")), "by-anna").await;
        assert_eq!(status, 202, "{answer}");
        let (status, answer) = post(token("nobody", None), "by-nobody").await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (403, Some("forbidden")),
            "{answer}"
        );

        let names = &env.names;
        let d = env
            .get(&names.tenant_queue(ROUTED, "acme", None))
            .await
            .expect("anna's write is in acme's queue");
        let p = &d.properties;
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some("acme/anna:by-anna")
        );
        let h = p.headers().as_ref().expect("headers").inner();
        let text = |k: &str| match h.get(k) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text(H_TENANT), "acme");
        assert_eq!(text(H_USER), "anna");
        // Nothing else anywhere: not in globex's queue, not in the untenanted one.
        assert!(drain_ids(env, &names.tenant_queue(ROUTED, "acme", None))
            .await
            .is_empty());
        assert!(drain_ids(env, &names.tenant_queue(ROUTED, "globex", None))
            .await
            .is_empty());
        assert_eq!(
            env.message_count(&names.channel_queue(ROUTED)).await,
            Some(0)
        );
        gw.shutdown().await;
        delete_tenant_topology(env).await;
    })
    .await;
}
