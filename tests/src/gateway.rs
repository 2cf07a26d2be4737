//! Starts an in-process gateway for a test: bound to `127.0.0.1:0`, under the test's
//! namespace, with short timers so tests stay quick.

use std::net::SocketAddr;

use warren_gateway::{Config, Gateway, ListenerConfig, QueueType};

use crate::env::{amqp_addr, TestEnv, CHANNELS};

/// A configuration for tests: the test's namespace, one listener on `127.0.0.1:0`
/// serving every channel, quorum inbound queues as in production, short timers.
pub fn test_config(env: &TestEnv) -> Config {
    Config {
        namespace: env.namespace.clone(),
        node: format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        amqp_uri: vec![amqp_addr()],
        listen: vec![ListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            channel: None,
        }],
        channels: CHANNELS.iter().map(|c| c.to_string()).collect(),
        queue_type: QueueType::Quorum,
        publisher_channels: 2,
        consumer_channels: 2,
        session_expires_ms: 30_000,
        shutdown_grace_ms: 2_000,
        announce_interval_ms: 0,
        presence: false,
        ..Config::default()
    }
}

/// A configuration tweak: `voice` keeps its messages for an hour, in a stream of its
/// own (a channel stream).
pub fn voice_for_an_hour(c: &mut Config) {
    c.channel_options.insert(
        "voice".into(),
        warren_gateway::config::ChannelOptions {
            stream_max_age: Some("1h".into()),
            ..Default::default()
        },
    );
}

/// A running test gateway.
pub struct TestGateway {
    gateway: Option<Gateway>,
    listeners: Vec<(SocketAddr, Option<String>)>,
}

impl TestGateway {
    /// Starts a gateway with [`test_config`].
    pub async fn start(env: &TestEnv) -> TestGateway {
        Self::start_with(env, |_| {}).await
    }

    /// Starts a gateway with [`test_config`] changed by `tweak`.
    ///
    /// # Panics
    /// When the gateway cannot start.
    pub async fn start_with(env: &TestEnv, tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let mut config = test_config(env);
        tweak(&mut config);
        let gateway = Gateway::start(config).await.expect("gateway starts");
        let listeners = gateway.listeners();
        TestGateway {
            gateway: Some(gateway),
            listeners,
        }
    }

    /// Starts a gateway with one listener pinned to each of `channels` and one more
    /// serving all channels (the POC's per-channel ports plus a shared one).
    pub async fn start_pinned(env: &TestEnv, channels: &[&str]) -> TestGateway {
        let pinned: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        Self::start_with(env, move |c| {
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            c.listen = pinned
                .into_iter()
                .map(|ch| ListenerConfig {
                    bind: any,
                    channel: Some(ch),
                })
                .chain(std::iter::once(ListenerConfig {
                    bind: any,
                    channel: None,
                }))
                .collect();
        })
        .await
    }

    /// Bound listeners and their pinned channel.
    pub fn listeners(&self) -> &[(SocketAddr, Option<String>)] {
        &self.listeners
    }

    /// The WebSocket URL of the first listener serving every channel.
    pub fn url(&self) -> String {
        let (addr, _) = self
            .listeners
            .iter()
            .find(|(_, c)| c.is_none())
            .expect("a listener serving all channels");
        format!("ws://{addr}/ws")
    }

    /// The WebSocket URL of the listener pinned to `channel`.
    pub fn url_for(&self, channel: &str) -> String {
        let (addr, _) = self
            .listeners
            .iter()
            .find(|(_, c)| c.as_deref() == Some(channel))
            .expect("a listener pinned to the channel");
        format!("ws://{addr}/ws")
    }

    /// Waits (at most 10 s) until `/healthz` no longer says the broker is connected:
    /// the gateway noticed RabbitMQ is away.
    ///
    /// # Panics
    /// When it still says so after 10 s.
    pub async fn wait_broker_away(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, _, body) = http_get_with(self.health_addr(), "/healthz", &[]).await;
            if !body.contains("\"broker\":\"connected\"") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway notices: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The `/healthz` URL of the first listener.
    pub fn health_addr(&self) -> SocketAddr {
        self.listeners[0].0
    }

    /// The value of the gateway's metric `name` (`warren_gateway_<name>`, its one
    /// line) in `/metrics`.
    ///
    /// # Panics
    /// When `/metrics` has no such line.
    pub async fn metric(&self, name: &str) -> i64 {
        let text = http_get(self.health_addr(), "/metrics").await;
        metric_in(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// The gateway itself.
    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    /// Graceful shutdown.
    pub async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
    }
}

/// `GET path` with extra request headers on a gateway listener (HTTP/1.0): the status
/// code, the response headers (lower-cased names) and the body.
///
/// # Panics
/// When the listener cannot be reached or the answer is not HTTP.
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    http_request(addr, "GET", path, headers).await
}

/// `method path` without a body, with extra request headers, on a gateway listener
/// (HTTP/1.0): the status code, the response headers (lower-cased names) and the body.
///
/// # Panics
/// When the listener cannot be reached or the answer is not HTTP.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: x\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    http_raw(addr, &req).await
}

/// Sends `request` (the whole of it, as written) on a new connection to a gateway
/// listener and reads until the server closes: the status code, the response headers
/// (lower-cased names) and the body. The request must make the server close after
/// answering (HTTP/1.0, or `Connection: close`).
///
/// # Panics
/// When the listener cannot be reached or the answer is not HTTP.
pub async fn http_raw(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    http_answer(&out)
}

/// A WebSocket upgrade request for `path` (HTTP/1.1) with extra headers, for
/// [`http_raw`]; it asks the server to close once it answered, which it does when it
/// refuses the upgrade (an upgrade that is accepted keeps the connection open).
pub fn upgrade_request(path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// The status code, the headers (lower-cased names) and the body of an HTTP answer.
///
/// # Panics
/// When `answer` is not HTTP.
pub fn http_answer(answer: &str) -> (u16, Vec<(String, String)>, String) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// The value of metric `name` (`warren_gateway_<name>`, its one line) in a gateway's
/// `/metrics` text; `None` when it has no such line.
pub fn metric_in(text: &str, name: &str) -> Option<i64> {
    let prefix = format!("warren_gateway_{name}{{");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `GET path` on a gateway listener (HTTP/1.0); the response body.
///
/// # Panics
/// When the listener cannot be reached.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let head = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    http_exchange(addr, &head, b"").await.1
}

/// `POST path` with `body` (JSON) and, when given, `Authorization: Bearer <token>`
/// (HTTP/1.0); the status and the body as JSON (`null` when it is not JSON).
///
/// # Panics
/// When the listener cannot be reached.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let (status, body) = http_post_text(addr, path, token, body).await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// As [`http_post`], with the response body as it came.
///
/// # Panics
/// When the listener cannot be reached.
pub async fn http_post_text(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    http_exchange(addr, &head, body).await
}

/// Sends one HTTP/1.0 request and reads the response until the server closes; the
/// status and the body. A server that answers before reading the whole body (413)
/// may reset the connection: what was read by then is the response.
async fn http_exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("request");
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out);
    (status, body)
}

/// RabbitMQ's management API (`./dev` enables the plugin): `WARREN_MANAGEMENT_URL`, or
/// `http://127.0.0.1:15672`.
pub fn management_url() -> String {
    std::env::var("WARREN_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

/// Runs `warren-gateway topology <action> <extra...>` in `env`'s namespace with the
/// configuration file `toml`, and returns what it printed and its exit status. It
/// runs without `RUST_LOG` and `WARREN_MANAGEMENT_URL` from the test's environment, so
/// `check` compares bindings only when `extra` passes `--management-url`.
///
/// # Panics
/// When the binary cannot be found or run, or the file cannot be written.
pub async fn topology_cli(
    env: &TestEnv,
    toml: &str,
    action: &str,
    extra: &[&str],
) -> std::process::Output {
    use crate::binary::workspace_binary;
    let bin = tokio::task::spawn_blocking(|| {
        workspace_binary("warren-gateway", "warren-gateway", &["WARREN_GATEWAY_BIN"])
    })
    .await
    .expect("binary");
    let config = std::env::temp_dir().join(format!("{}.toml", env.namespace));
    std::fs::write(&config, toml).expect("write the config");
    let out = tokio::process::Command::new(bin)
        .args(["--namespace", &env.namespace, "--amqp-uri"])
        .arg(amqp_addr())
        .arg("--config")
        .arg(&config)
        .args(["topology", action])
        .args(extra)
        // Its own default logging, whatever the test runner's.
        .env_remove("RUST_LOG")
        // `topology check` reads `--management-url` from this variable, which users
        // export for the tests when the broker is elsewhere (see `management_url`):
        // only `extra` decides whether bindings are compared.
        .env_remove("WARREN_MANAGEMENT_URL")
        .output()
        .await
        .expect("run warren-gateway");
    let _ = std::fs::remove_file(&config);
    out
}
