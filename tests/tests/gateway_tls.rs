//! `amqps://` is TLS, with the broker's certificate verified.
//!
//! - [`an_amqps_uri_opens_tls_and_never_sends_the_password_in_plaintext`]: a plain TCP
//!   listener records the first bytes the gateway sends to an `amqps://` URI: a TLS
//!   ClientHello, not the AMQP header, and no password. It proves only what goes on
//!   the wire first (that listener is no broker); that the gateway works over TLS is
//!   [`over_amqps_a_real_rabbitmq_is_used_when_its_ca_is_trusted_and_refused_otherwise`].
//! - [`over_amqps_a_real_rabbitmq_is_used_when_its_ca_is_trusted_and_refused_otherwise`]:
//!   a private RabbitMQ node (`warren_e2e::broker_node`) with a TLS listener, its
//!   certificate (for `localhost` only) signed by a throwaway CA made at test time with
//!   the `openssl` CLI. The `warren-gateway` binary runs as a child process, so that
//!   each run gets its own `SSL_CERT_FILE` (rustls-native-certs reads it at every
//!   connection attempt; this process's environment is left alone). Trusting that CA,
//!   the gateway starts, a WebSocket client's publish is acknowledged, and RabbitMQ
//!   lists the gateway's connections as TLS ones on the TLS port. Trusting another CA
//!   or the system's store, or the right CA but connecting to `127.0.0.1` (a name the
//!   certificate does not hold), it exits within a bounded time (given a 2 s
//!   `--broker-start-wait-ms`) with an error naming the certificate and no password,
//!   and RabbitMQ lists no connection from it. Fails where RabbitMQ's server scripts
//!   or `openssl` are missing (skipped with `WARREN_ALLOW_SKIP=1`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use warren_e2e::binary::{child_command, workspace_binary};
use warren_e2e::broker_node::{with_private_nodes, BrokerCluster, TlsFiles};
use warren_e2e::client::TestClient;
use warren_gateway::{Config, Gateway, ListenerConfig};

/// Bound on the real-broker test, node boot and teardown included (a hang guard).
const LIMIT: Duration = Duration::from_secs(240);
/// How long a refused gateway keeps trying (`--broker-start-wait-ms`): a few attempts.
const START_WAIT_MS: u64 = 2_000;
/// How long a refused gateway may take to exit: its start wait, one more attempt
/// (bounded by the default 10 s `amqp_connect_timeout_ms`) and some slack.
const REFUSED_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn an_amqps_uri_opens_tls_and_never_sends_the_password_in_plaintext() {
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = fake.local_addr().unwrap().port();
    let config = Config {
        amqp_uri: vec![format!(
            "amqps://warren:s3cret-broker-pass@localhost:{port}/%2f"
        )],
        listen: vec![ListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            channel: None,
        }],
        broker_wait_ms: 1000,
        ..Config::default()
    };
    let start = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(20), Gateway::start(config)).await
    });
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), fake.accept())
        .await
        .expect("the gateway connects")
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut first))
        .await
        .expect("the gateway speaks first")
        .unwrap();
    let first = &first[..n];
    assert!(n >= 5, "{n} bytes");
    assert_eq!(
        first[0],
        0x16,
        "a TLS handshake record, not {:?}",
        &first[..8.min(n)]
    );
    assert_eq!(first[1], 0x03, "TLS version major 3");
    assert!(!first.starts_with(b"AMQP"), "not the plaintext AMQP header");
    let text = String::from_utf8_lossy(first);
    assert!(
        !text.contains("s3cret-broker-pass"),
        "no password in plaintext"
    );
    drop(socket);
    drop(fake);
    let started = start.await.unwrap();
    assert!(
        !matches!(started, Ok(Ok(_))),
        "a broker that does not speak TLS is not accepted"
    );
}

#[tokio::test]
async fn over_amqps_a_real_rabbitmq_is_used_when_its_ca_is_trusted_and_refused_otherwise() {
    with_private_nodes("gateway_tls", LIMIT, real_broker()).await;
}

async fn real_broker() {
    let began = Instant::now();
    // Built (if needed) before anything is timed.
    gateway_binary().await;
    let built = began.elapsed();
    let Some(pki) = Pki::generate("gateway_tls") else {
        return;
    };
    let cluster = BrokerCluster::start_with_tls(1, &pki.tls_files())
        .await
        .expect("a private node with a TLS listener boots");
    let tls_port = cluster.tls_port(0).expect("a TLS listener");
    let booted = began.elapsed();
    let localhost = format!("amqps://guest:guest@localhost:{tls_port}/%2f");

    // Trusted: the gateway starts, and a publish is confirmed by RabbitMQ.
    let gateway = GatewayChild::start(&localhost, Some(&pki.ca), 30_000).await;
    let gateway = match gateway {
        Ok(g) => g,
        Err(stderr) => panic!("the gateway trusting the CA starts:\n{stderr}"),
    };
    let mut client = TestClient::connect(&gateway.url()).await;
    client.publish("over-tls", "chat", json!({"n": 1})).await;
    client.expect_ack("over-tls").await;
    let connections = broker_connections(&cluster).await;
    println!("gateway_tls: RabbitMQ's connections of the trusting gateway: {connections}");
    let connections = connections.as_array().expect("a JSON list");
    // The publishing and the consuming connection.
    assert!(connections.len() >= 2, "{connections:?}");
    for c in connections {
        assert_eq!(c["ssl"], true, "a TLS connection: {c}");
        assert_eq!(c["port"], tls_port, "on the TLS listener: {c}");
    }
    client.close().await;
    gateway.stop().await;
    let trusted = began.elapsed();

    // Not trusted, or not for that name: no start, an error naming the certificate.
    let ip = format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f");
    let refusals = [
        (
            "another CA",
            localhost.as_str(),
            Some(pki.stranger_ca.as_path()),
        ),
        ("the system's CA store", localhost.as_str(), None),
        ("the CA, for 127.0.0.1", ip.as_str(), Some(pki.ca.as_path())),
    ];
    let refused =
        futures_util::future::join_all(refusals.iter().map(|(what, uri, ca)| async move {
            let started = Instant::now();
            let outcome =
                tokio::time::timeout(REFUSED_WITHIN, GatewayChild::start(uri, *ca, START_WAIT_MS))
                    .await;
            (*what, outcome, started.elapsed())
        }))
        .await;
    for (what, outcome, took) in refused {
        let stderr = match outcome {
            Err(_) => {
                panic!("{what}: the gateway neither started nor exited in {REFUSED_WITHIN:?}")
            }
            Ok(Ok(g)) => {
                g.stop().await;
                panic!("{what}: the gateway started")
            }
            Ok(Err(stderr)) => stderr,
        };
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{what}: an error line:\n{stderr}"));
        println!("gateway_tls: trusting {what}: exited after {took:?}: {error}");
        assert!(
            error.to_lowercase().contains("certificate"),
            "{what}: the error names the certificate: {error}"
        );
        assert!(!error.contains("guest:guest"), "no password shown: {error}");
    }
    let connections = broker_connections(&cluster).await;
    assert_eq!(
        connections,
        json!([]),
        "no AMQP connection was opened by a refusing gateway"
    );
    cluster.shutdown().await;
    println!(
        "gateway_tls: gateway binary ready at {built:?}, node booted at {booted:?}, trusted case done at {trusted:?}, all done at {:?}",
        began.elapsed()
    );
}

/// The node's client connections: `ssl`, `port`, `ssl_protocol`, `name`.
async fn broker_connections(cluster: &BrokerCluster) -> Value {
    let out = cluster
        .ctl(
            0,
            &[
                "list_connections",
                "--quiet",
                "--formatter",
                "json",
                "ssl",
                "port",
                "ssl_protocol",
                "name",
            ],
        )
        .await
        .expect("rabbitmqctl list_connections");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The `warren-gateway` binary, built once per test process.
async fn gateway_binary() -> PathBuf {
    static PATH: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    PATH.get_or_init(|| async {
        tokio::task::spawn_blocking(|| {
            workspace_binary("warren-gateway", "warren-gateway", &["WARREN_GATEWAY_BIN"])
        })
        .await
        .expect("the gateway binary")
    })
    .await
    .clone()
}

/// The `warren-gateway` binary running as a child process.
struct GatewayChild {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl GatewayChild {
    /// Runs `warren-gateway` against `uri` with `SSL_CERT_FILE=ca` (without one: the
    /// system's store) and waits for `READY`, or for its exit: then its stderr.
    async fn start(uri: &str, ca: Option<&Path>, start_wait_ms: u64) -> Result<Self, String> {
        let binary = gateway_binary().await;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let mut command = child_command(&binary, "WARREN_TEST_GATEWAY_LOG");
        command
            .args(["--amqp-uri", uri])
            .args(["--namespace", &format!("t-tls-{tag}")])
            .args(["--node", &format!("gw-tls-{tag}")])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--announce-interval-ms", "0", "--presence", "false"])
            .args(["--broker-start-wait-ms", &start_wait_ms.to_string()])
            .env_remove("SSL_CERT_DIR")
            .stderr(Stdio::piped());
        match ca {
            Some(ca) => command.env("SSL_CERT_FILE", ca),
            None => command.env_remove("SSL_CERT_FILE"),
        };
        let mut child = command.spawn().expect("warren-gateway runs");
        // Its log, kept for a failure's message, and read on so it never blocks.
        let log = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let kept = log.clone();
        let drained = tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                eprintln!("warren-gateway: {line}");
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut addr = None;
        while let Ok(Some(line)) = lines.next_line().await {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("LISTENING") => addr = words.next().and_then(|a| a.parse().ok()),
                Some("READY") => {
                    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                    let addr = addr.expect("LISTENING before READY");
                    return Ok(GatewayChild { child, addr });
                }
                _ => {}
            }
        }
        // stdout closed: it exited (or is exiting).
        let status = child.wait().await.expect("wait for warren-gateway");
        let _ = drained.await;
        let log = log.lock().unwrap().clone();
        Err(format!("{status}\n{log}"))
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGTERM, then waits (10 s at most, else SIGKILL).
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A throwaway CA, a server certificate for `localhost` (only: no IP address) it
/// signed, and another CA that signed nothing, made with the `openssl` CLI in a
/// temporary directory removed on Drop.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    stranger_ca: PathBuf,
}

impl Pki {
    /// Makes them, or says that `openssl` is missing ([`cannot_check`]) and returns
    /// `None`.
    ///
    /// [`cannot_check`]: warren_e2e::env::cannot_check
    fn generate(test: &str) -> Option<Pki> {
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            warren_e2e::env::cannot_check(test, "the `openssl` command is not installed");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "warren-tls-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let pki = Pki {
            ca: dir.join("ca.pem"),
            stranger_ca: dir.join("stranger-ca.pem"),
            dir,
        };
        for (name, cn) in [("ca", "Warren test CA"), ("stranger-ca", "Some other CA")] {
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        pki.openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            pki.dir.join("server.ext"),
            "subjectAltName = DNS:localhost\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n",
        )
        .expect("the extensions file");
        pki.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "1",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        Some(pki)
    }

    fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            cacertfile: self.ca.clone(),
            certfile: self.dir.join("server.pem"),
            keyfile: self.dir.join("server.key"),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
