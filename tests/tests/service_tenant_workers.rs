//! The multi-tenant demo configuration (`gateway/warren-gateway.tenants-demo.toml`)
//! against a real RabbitMQ: two priority workers with opposite preferences over both
//! tenants' delta and full queues (`warren-demo-service --tenants-file ...
//! --queue-priority "acme/delta globex/delta acme/full globex/full"`, and the mirror
//! order) start from the same file the gateway reads; the topology they declare is
//! exactly the gateway's (`Topology::check` finds no difference in it); each tenant's
//! requests are answered from that tenant's queue of the type it named; and a worker
//! whose priority list names a queue the file does not define does not start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use serde_json::json;
use warren_e2e::client::{raw, TestClient};
use warren_e2e::env::TestEnv;
use warren_e2e::gateway::{http_get, test_config, TestGateway};
use warren_e2e::jwt::{now, sign, SECRET};
use warren_e2e::service::{amqp_uri, demo_service_binary, DemoProcess};
use warren_gateway::broker::Broker;
use warren_gateway::topology::Mismatch;
use warren_gateway::{AuthMode, Config, Topology};
use warren_protocol::{ClientFrame, Hello, Request};
use warren_service::{Service, ServiceConfig};

const LIMIT: Duration = Duration::from_secs(120);

/// Worker A's and worker B's priority orders, as in the demo file's comments.
const WORKER_A: &str = "acme/delta globex/delta acme/full globex/full";
const WORKER_B: &str = "globex/delta acme/delta globex/full acme/full";

fn demo_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/warren-gateway.tenants-demo.toml")
        .canonicalize()
        .expect("the tenants demo file exists")
}

/// The test gateway's configuration with the demo file's channels and tenants, tokens
/// verified as `jwt`.
fn demo_config(env: &TestEnv) -> Config {
    let text = std::fs::read_to_string(demo_file()).expect("read the demo file");
    let demo = Config::from_toml(&text, "tenants demo").expect("the demo file parses");
    let mut c = test_config(env);
    c.channels = demo.channels;
    c.no_service = demo.no_service;
    c.tenants = demo.tenants;
    c.auth.mode = AuthMode::Jwt;
    c.auth.jwt.secret = Some(SECRET.into());
    c
}

fn token(user: &str, tenant: &str) -> String {
    let claims = json!({ "sub": user, "exp": now() + 600, "tenant": tenant });
    sign(&claims, SECRET.as_bytes())
}

/// Asks on `scan` with type `kind` and returns the worker's answer.
async fn ask(client: &mut TestClient, id: &str, kind: &str) -> serde_json::Value {
    client
        .send(&ClientFrame::Request(Request {
            id: id.into(),
            channel: "scan".into(),
            subject: None,
            timeout_ms: Some(20_000),
            headers: [("type".to_string(), kind.to_string())].into(),
            message: raw(json!({ "id": id })),
        }))
        .await;
    let reply = client.expect_reply(id).await;
    serde_json::from_str(reply.message.get()).unwrap()
}

/// What `topology check` finds different from `config`'s topology: all of it, and
/// the part about the tenant objects (`warren.tenant*`, `IN_SCAN.*`).
async fn differences(config: &Config) -> (Vec<Mismatch>, Vec<Mismatch>) {
    let broker = Broker::connect(config, Arc::new(Default::default()))
        .await
        .expect("connect");
    let mismatches = Topology::from_config(config)
        .check(&broker)
        .await
        .expect("check");
    broker.close().await;
    let tenant = mismatches
        .iter()
        .filter(|m| m.object.contains("warren.tenant") || m.object.contains("IN_SCAN."))
        .cloned()
        .collect();
    (mismatches, tenant)
}

async fn delete_tenant_topology(env: &TestEnv, config: &Config) {
    let ch = env.new_channel().await;
    for decl in Topology::from_config(config).declarations {
        use warren_gateway::topology::Declaration;
        match decl {
            Declaration::Queue { name, .. } if name.contains("IN_SCAN") => {
                let _ = ch
                    .queue_delete(ShortString::from(name), QueueDeleteOptions::default())
                    .await;
            }
            Declaration::Exchange { name, .. } if name.contains("warren.tenant") => {
                let _ = ch
                    .exchange_delete(ShortString::from(name), ExchangeDeleteOptions::default())
                    .await;
            }
            _ => {}
        }
    }
    let _ = ch.close(200, "cleaned".into()).await;
}

#[tokio::test]
async fn two_workers_share_two_tenants_from_the_gateways_own_tenant_file() {
    TestEnv::run("tenant-workers", LIMIT, async |env| {
        let file = demo_file();
        let file = file.to_str().unwrap();
        let config = demo_config(env);

        // A worker naming a queue the file does not define does not start.
        let refused = tokio::process::Command::new(
            tokio::task::spawn_blocking(demo_service_binary)
                .await
                .unwrap(),
        )
        .args(["--amqp-uri", &amqp_uri(), "--namespace", &env.namespace])
        .args([
            "--tenants-file",
            file,
            "--queue-priority",
            "acme/delta initech/delta",
        ])
        .output()
        .await
        .expect("run warren-demo-service");
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("initech/delta"), "{stderr}");

        // The workers start first: they declare the tenant topology themselves, and it
        // is exactly the gateway's definition.
        let mut a = DemoProcess::spawn(
            &env.namespace,
            &["--tenants-file", file, "--queue-priority", WORKER_A],
        )
        .await;
        let mut b = DemoProcess::spawn(
            &env.namespace,
            &["--tenants-file", file, "--queue-priority", WORKER_B],
        )
        .await;
        let (mismatches, tenant_mismatches) = differences(&config).await;
        assert!(
            tenant_mismatches.is_empty(),
            "the workers declared another tenant topology: {tenant_mismatches:?}"
        );
        assert!(
            mismatches.iter().any(|m| m.object.contains("IN_CHAT")),
            "the check can see a difference (no gateway declared IN_CHAT yet): {mismatches:?}"
        );

        let gw = TestGateway::start_with(env, |c| *c = config.clone()).await;
        let url = gw.url();
        let connect = |user: &str, tenant: &str| {
            let hello = Hello {
                token: Some(token(user, tenant)),
                ..Hello::default()
            };
            TestClient::connect_with(&url, hello)
        };
        let mut anna = connect("anna", "acme").await;
        let mut gus = connect("gus", "globex").await;
        let names = &env.names;
        for (client, tenant) in [(&mut anna, "acme"), (&mut gus, "globex")] {
            for kind in ["delta", "full"] {
                let answer = ask(client, &format!("{tenant}-{kind}"), kind).await;
                assert_eq!(answer["tenant"], tenant, "{answer}");
                assert_eq!(
                    answer["queue"],
                    names.tenant_queue("scan", tenant, Some(kind)),
                    "{answer}"
                );
            }
        }

        anna.close().await;
        gus.close().await;
        assert!(a.terminate().await, "worker A stops cleanly");
        assert!(b.terminate().await, "worker B stops cleanly");
        gw.shutdown().await;
        delete_tenant_topology(env, &config).await;
    })
    .await;
}

/// A TTL of 0 ms (`--message-ttl scan=0`, "0 for none") is no TTL on the tenant queues
/// too, as on the `IN_<CHANNEL>` queues and in the gateway: `x-message-ttl = 0` would
/// dead-letter every message not taken at once, and the gateway's check would see a
/// difference.
#[tokio::test]
async fn a_zero_ttl_declares_the_tenant_queues_without_a_ttl() {
    TestEnv::run("tenant-zero-ttl", LIMIT, async |env| {
        let config = demo_config(env);
        for ttl in [Duration::ZERO, Duration::from_micros(500)] {
            let service = Service::connect_with(
                &amqp_uri(),
                env.names.clone(),
                ServiceConfig::default().with_message_ttl("scan", ttl),
            )
            .await
            .expect("connect the service");
            let queues = service
                .declare_tenants(&config.tenants.routing())
                .await
                .expect("declare the tenant topology");
            assert!(!queues.is_empty());
            service.stop().await.expect("stop the service");

            let (_, tenant_mismatches) = differences(&config).await;
            assert!(
                tenant_mismatches.is_empty(),
                "a TTL of {ttl:?} declared the tenant queues otherwise than the gateway: {tenant_mismatches:?}"
            );
            delete_tenant_topology(env, &config).await;
        }
    })
    .await;
}

/// The settings of the gateway file that decide queue names and arguments (namespace,
/// queue type, TTLs, length bounds) are the workers' too: a worker started with only
/// `--tenants-file` (no `--namespace`, `--queue-type` or `--message-ttl`) serves the
/// queues of a gateway configured from the same file, declared as it declares them.
/// The worker read only `[tenants]`: it consumed un-namespaced queues, and no request
/// was answered.
#[tokio::test]
async fn a_worker_takes_the_namespace_and_queue_settings_of_the_tenants_file() {
    TestEnv::run("tenant-file-settings", LIMIT, async |env| {
        let demo = std::fs::read_to_string(demo_file()).expect("read the demo file");
        let text = format!(
            "namespace = \"{}\"\nqueue_type = \"classic\"\nmessage_ttl_ms = 300000\n\
             inbound_max_length = 5000\ninbound_max_bytes = 10485760\n\
             {demo}\n[channel_options.scan]\nmessage_ttl_ms = 600000\n",
            env.namespace
        );
        let path = std::env::temp_dir().join(format!("{}.tenants.toml", env.namespace));
        std::fs::write(&path, &text).expect("write the tenants file");
        let from_file = Config::from_toml(&text, "tenants file").expect("the file parses");
        assert_eq!(from_file.namespace, env.namespace);
        // The test gateway configured as the file says.
        let mut config = demo_config(env);
        config.namespace = from_file.namespace;
        config.queue_type = from_file.queue_type;
        config.message_ttl_ms = from_file.message_ttl_ms;
        config.channel_options = from_file.channel_options;
        config.inbound_max_length = from_file.inbound_max_length;
        config.inbound_max_bytes = from_file.inbound_max_bytes;

        // Only the file: no namespace or queue settings from flags or the environment.
        let path_text = path.to_str().expect("a UTF-8 path");
        let mut worker = DemoProcess::spawn_told_only(&[
            "--tenants-file",
            path_text,
            "--queue-priority",
            WORKER_A,
        ])
        .await;

        let gw = TestGateway::start_with(env, |c| *c = config.clone()).await;
        // The gateway learns of the worker from its next heartbeat (every 2 s). A
        // worker in another namespace is never listed: the requests below then fail.
        let listed = tokio::time::Instant::now() + Duration::from_secs(10);
        while !http_get(gw.health_addr(), "/services")
            .await
            .contains("\"scan\"")
            && tokio::time::Instant::now() < listed
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let hello = Hello {
            token: Some(token("anna", "acme")),
            ..Hello::default()
        };
        let mut anna = TestClient::connect_with(&gw.url(), hello).await;
        for kind in ["delta", "full"] {
            let answer = ask(&mut anna, &format!("acme-{kind}"), kind).await;
            assert_eq!(answer["tenant"], "acme", "{answer}");
            assert_eq!(
                answer["queue"],
                env.names.tenant_queue("scan", "acme", Some(kind)),
                "{answer}"
            );
        }
        anna.close().await;

        // Declared as the gateway declares them: queue type, TTL, bounds.
        let (_, tenant_mismatches) = differences(&config).await;
        assert!(
            tenant_mismatches.is_empty(),
            "the worker declared the tenant queues otherwise than the gateway: {tenant_mismatches:?}"
        );

        worker.kill().await;
        gw.shutdown().await;
        delete_tenant_topology(env, &config).await;
        let _ = std::fs::remove_file(&path);
    })
    .await;
}
