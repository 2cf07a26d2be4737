//! A native driver around the SDK's sans-IO core ([`warren_sdk::ClientCore`]): tokio
//! tasks and tokio-tungstenite perform the core's actions (open, send, close, timers)
//! exactly as the wasm facade does with the browser's `WebSocket`, so fault tests
//! exercise the SDK's real failover logic — URL list, session resume, re-subscription,
//! re-sent writes with their original ids, duplicate suppression by `message_id`,
//! cumulative acknowledgements. Also [`GatewayProcess`], the `warren-gateway` binary
//! as a child process, so a test can SIGKILL or SIGTERM a gateway the clients are on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use warren_protocol::{Raw, SUBPROTOCOL};
use warren_sdk::{
    Action, ClientCore, ClientError, Config, Envelope, JsonCodec, State, SubscribeOptions,
};

use crate::binary::{child_command, workspace_binary};
use crate::env::amqp_addr;

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// What the app saw, for a test to count.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Every delivery handed to the app (after the SDK's duplicate filter): its
    /// `message_id` and when it arrived.
    pub deliveries: Vec<(String, Instant)>,
    /// Every `state` event: the new state, when, and the URL.
    pub states: Vec<(State, Instant, Option<String>)>,
    /// `error` events (not tied to one operation) and when they came.
    pub errors: Vec<(ClientError, Instant)>,
    /// `drain` events.
    pub drains: usize,
    /// Sessions the client was welcomed into, in order (a resume repeats the id).
    pub sessions: Vec<String>,
    /// Each socket the core asked for: when it was asked for and when its WebSocket
    /// upgrade completed (`None` if it never did).
    pub sockets: Vec<(Instant, Option<Instant>)>,
}

impl ClientStats {
    /// When the client was last connected, at or after `since`.
    pub fn connected_after(&self, since: Instant) -> Option<Instant> {
        self.states
            .iter()
            .find(|(s, at, _)| *s == State::Connected && *at >= since)
            .map(|(_, at, _)| *at)
    }

    /// The URL of the last `connected` state.
    pub fn connected_url(&self) -> Option<String> {
        self.states
            .iter()
            .rev()
            .find(|(s, _, _)| *s == State::Connected)
            .and_then(|(_, _, u)| u.clone())
    }
}

enum Waiter {
    Done(oneshot::Sender<Result<(), ClientError>>),
    Reply(oneshot::Sender<Result<Raw, ClientError>>),
}

enum Cmd {
    Connect,
    Write(Envelope<Raw>, oneshot::Sender<Result<(), ClientError>>),
    Request(
        Envelope<Raw>,
        Option<u64>,
        oneshot::Sender<Result<Raw, ClientError>>,
    ),
    Subscribe(SubscribeOptions),
    Ready(oneshot::Sender<Result<(), ClientError>>),
    Close(oneshot::Sender<()>),
}

enum SocketEvent {
    Opened(u64, Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Text(u64, String),
    Closed(u64, u16),
}

/// One SDK client driven by tokio.
pub struct SdkClient {
    commands: mpsc::UnboundedSender<Cmd>,
    /// What the app saw.
    pub stats: Arc<Mutex<ClientStats>>,
    task: JoinHandle<()>,
}

impl SdkClient {
    /// Starts the driver and connects (the core walks `config.urls`).
    pub fn start(config: Config, seed: u64) -> SdkClient {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(ClientStats::default()));
        let core = ClientCore::new(config, JsonCodec::default(), seed);
        let task = tokio::spawn(drive(core, rx, stats.clone()));
        let _ = tx.send(Cmd::Connect);
        SdkClient {
            commands: tx,
            stats,
            task,
        }
    }

    /// Waits until connected.
    ///
    /// # Errors
    /// The SDK's error, or `timeout` after `within`.
    pub async fn ready(&self, within: Duration) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Cmd::Ready(tx));
        wait(rx, within).await
    }

    /// `write`: resolves on the gateway's ack (the returned receiver).
    pub fn write(&self, envelope: Envelope<Raw>) -> oneshot::Receiver<Result<(), ClientError>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Cmd::Write(envelope, tx));
        rx
    }

    /// `writeAndWait`: resolves with the reply (the returned receiver).
    pub fn request(
        &self,
        envelope: Envelope<Raw>,
        timeout_ms: Option<u64>,
    ) -> oneshot::Receiver<Result<Raw, ClientError>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Cmd::Request(envelope, timeout_ms, tx));
        rx
    }

    /// `subscribe`.
    pub fn subscribe(&self, options: SubscribeOptions) {
        let _ = self.commands.send(Cmd::Subscribe(options));
    }

    /// The `message_id`s delivered to the app so far.
    pub fn delivered(&self) -> Vec<String> {
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.deliveries.iter().map(|(id, _)| id.clone()).collect()
    }

    /// `close()`, then stops the driver.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Cmd::Close(tx));
        let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        self.task.abort();
    }
}

async fn wait<T>(
    rx: oneshot::Receiver<Result<T, ClientError>>,
    within: Duration,
) -> Result<T, ClientError> {
    match tokio::time::timeout(within, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(ClientError::new(
            warren_protocol::ErrorCode::Closed,
            "driver stopped",
        )),
        Err(_) => Err(ClientError::new(
            warren_protocol::ErrorCode::Timeout,
            "not in time",
        )),
    }
}

/// The driver loop: feeds commands, socket events and timers into the core and
/// performs its actions.
async fn drive(
    mut core: ClientCore<JsonCodec>,
    mut commands: mpsc::UnboundedReceiver<Cmd>,
    stats: Arc<Mutex<ClientStats>>,
) {
    let start = Instant::now();
    let now = move || start.elapsed().as_millis() as u64;
    let (events_tx, mut events) = mpsc::unbounded_channel::<SocketEvent>();
    let mut waiters: HashMap<u64, Waiter> = HashMap::new();
    let mut sink: Option<(u64, Sink)> = None;
    let mut reader: Option<JoinHandle<()>> = None;
    let mut wanted: Option<u64> = None;
    let mut timer: Option<Instant> = None;
    let mut closing: Option<oneshot::Sender<()>> = None;
    loop {
        while let Some(action) = core.poll_action() {
            match action {
                Action::Open { conn, url } => {
                    wanted = Some(conn);
                    stats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .sockets
                        .push((Instant::now(), None));
                    let tx = events_tx.clone();
                    tokio::spawn(async move {
                        match open(&url).await {
                            Some(ws) => {
                                let _ = tx.send(SocketEvent::Opened(conn, Box::new(ws)));
                            }
                            None => {
                                let _ = tx.send(SocketEvent::Closed(conn, 1006));
                            }
                        }
                    });
                }
                Action::Send(text) => {
                    if let Some((_, s)) = sink.as_mut() {
                        let sent = tokio::time::timeout(
                            Duration::from_secs(5),
                            s.send(Message::Text(text.into())),
                        )
                        .await;
                        if !matches!(sent, Ok(Ok(()))) {
                            // The reader reports the close; the core re-sends after resume.
                            tracing::debug!("sdk driver: send failed");
                        }
                    }
                }
                // Never asked: this driver's configs carry a static token, no getToken.
                Action::FetchToken(_) => {}
                // A subscription's status for an app's view of it: nothing waits on it
                // here (readiness settles through Resolve and Reject).
                Action::SubscriptionStatus(..) => {}
                Action::Close => {
                    wanted = None;
                    if let Some(r) = reader.take() {
                        r.abort();
                    }
                    if let Some((_, mut s)) = sink.take() {
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(1), s.close()).await;
                        });
                    }
                }
                Action::Resolve(op) => match waiters.remove(&op) {
                    Some(Waiter::Done(tx)) => {
                        let _ = tx.send(Ok(()));
                    }
                    Some(Waiter::Reply(tx)) => {
                        let _ = tx.send(Err(ClientError::new(
                            warren_protocol::ErrorCode::Internal,
                            "resolved without a reply",
                        )));
                    }
                    None => {}
                },
                Action::Reply(op, m) => {
                    if let Some(Waiter::Reply(tx)) = waiters.remove(&op) {
                        let _ = tx.send(Ok(m));
                    }
                }
                Action::Reject(op, e) => match waiters.remove(&op) {
                    Some(Waiter::Done(tx)) => {
                        let _ = tx.send(Err(e));
                    }
                    Some(Waiter::Reply(tx)) => {
                        let _ = tx.send(Err(e));
                    }
                    None => {}
                },
                Action::Deliver { delivery, .. } => {
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.deliveries.push((delivery.message_id, Instant::now()));
                }
                Action::StateChanged(change) => {
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    if change.new == State::Connected {
                        if let Some(id) = &change.session {
                            s.sessions.push(id.clone());
                        }
                    }
                    s.states.push((change.new, Instant::now(), change.url));
                }
                Action::Error(e) => {
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.errors.push((e, Instant::now()));
                }
                Action::Drain(_) => {
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.drains += 1;
                }
                Action::SetTimer(at) => {
                    timer = at.map(|ms| start + Duration::from_millis(ms));
                }
            }
        }
        if let Some(tx) = closing.take() {
            let _ = tx.send(());
            return;
        }
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                let t = now();
                match cmd {
                    Cmd::Connect => core.connect(t),
                    Cmd::Write(env, tx) => {
                        let op = core.write(env, t);
                        waiters.insert(op, Waiter::Done(tx));
                    }
                    Cmd::Request(env, timeout, tx) => {
                        let op = core.request(env, timeout, t);
                        waiters.insert(op, Waiter::Reply(tx));
                    }
                    Cmd::Subscribe(options) => {
                        if let Err(e) = core.subscribe(options, t) {
                            stats.lock().unwrap_or_else(|e| e.into_inner()).errors.push((e, Instant::now()));
                        }
                    }
                    Cmd::Ready(tx) => {
                        let op = core.ready(t);
                        waiters.insert(op, Waiter::Done(tx));
                    }
                    Cmd::Close(tx) => {
                        core.close(t);
                        closing = Some(tx);
                    }
                }
            }
            Some(ev) = events.recv() => {
                let t = now();
                match ev {
                    SocketEvent::Opened(conn, ws) => {
                        if wanted == Some(conn) {
                            if let Some(last) = stats.lock().unwrap_or_else(|e| e.into_inner()).sockets.last_mut() {
                                last.1 = Some(Instant::now());
                            }
                            let (s, mut stream) = (*ws).split();
                            sink = Some((conn, s));
                            let tx = events_tx.clone();
                            if let Some(r) = reader.take() {
                                r.abort();
                            }
                            reader = Some(tokio::spawn(async move {
                                let mut code = 1006;
                                while let Some(msg) = stream.next().await {
                                    match msg {
                                        Ok(Message::Text(text)) => {
                                            let _ = tx.send(SocketEvent::Text(conn, text.to_string()));
                                        }
                                        Ok(Message::Close(frame)) => {
                                            code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                                            break;
                                        }
                                        Ok(_) => {}
                                        Err(_) => break,
                                    }
                                }
                                let _ = tx.send(SocketEvent::Closed(conn, code));
                            }));
                            core.on_open(conn, t);
                        }
                    }
                    SocketEvent::Text(conn, text) => core.on_text(conn, &text, t),
                    SocketEvent::Closed(conn, code) => {
                        if sink.as_ref().is_some_and(|(c, _)| *c == conn) {
                            sink = None;
                        }
                        core.on_close(conn, code, t);
                    }
                }
            }
            _ = async {
                match timer {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                timer = None;
                core.tick(now());
            }
        }
    }
}

/// A client socket's read buffer: a few frames (larger ones still arrive whole).
const READ_BUFFER: usize = 4 * 1024;

async fn open(url: &str) -> Option<WebSocketStream<MaybeTlsStream<TcpStream>>> {
    let mut req = url.into_client_request().ok()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    // tungstenite's 128 KiB default read buffer, allocated and zero-filled for every
    // socket, was the largest cost of this process in a storm (memset and page faults:
    // 7,500 sockets opened at once); a browser's WebSocket has nothing like it.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async_with_config(req, Some(config), false),
    )
    .await
    {
        Ok(Ok((ws, _))) => Some(ws),
        _ => None,
    }
}

/// User + system CPU time of process `pid` in ms (`/proc/<pid>/stat`), 0 if unknown.
fn cpu_ms(pid: u32) -> u64 {
    stat_cpu_ms(&format!("/proc/{pid}/stat"))
}

/// User + system CPU time in ms that a `/proc` `stat` file reports (a process's, or
/// `/proc/thread-self/stat` for the calling thread), 0 if unknown.
pub fn stat_cpu_ms(path: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    // Linux reports clock ticks of 1/100 s (USER_HZ) to user space.
    ticks * 10
}

/// A gateway's `/metrics` text (served on the main listener without
/// `admin_listen`); empty when it does not answer within 10 s.
async fn metrics_text(addr: SocketAddr) -> String {
    let read = crate::gateway::http_get(addr, "/metrics");
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_default()
}

/// The cumulative buckets of a gateway's `session_open_seconds` histogram
/// ([`metrics_text`]): `(le, count)`, empty when it does not answer.
async fn session_open_buckets(addr: SocketAddr) -> Vec<(String, u64)> {
    metrics_text(addr)
        .await
        .lines()
        .filter(|l| l.starts_with("warren_gateway_session_open_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
            let n = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, n))
        })
        .collect()
}

/// A gateway's `stream_readers_total` (every stream reader it opened for sessions,
/// [`metrics_text`]); `None` when it does not answer.
async fn stream_readers_total(addr: SocketAddr) -> Option<i64> {
    crate::gateway::metric_in(&metrics_text(addr).await, "stream_readers_total")
}

/// Sessions opened between two readings of [`session_open_buckets`], and the bucket
/// bounds that hold their p50 and p99.
fn open_quantiles(before: &[(String, u64)], after: &[(String, u64)]) -> (u64, String, String) {
    let delta: Vec<(String, u64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(l, _)| l == le).map_or(0, |(_, n)| *n);
            (le.clone(), n.saturating_sub(was))
        })
        .collect();
    let total = delta.last().map_or(0, |(_, n)| *n);
    let bound = |q: f64| {
        let rank = (q * total as f64).ceil() as u64;
        delta
            .iter()
            .find(|(_, n)| *n >= rank.max(1))
            .map_or_else(|| "?".to_string(), |(le, _)| le.clone())
    };
    (total, bound(0.5), bound(0.99))
}

/// Raw JSON text as an SDK payload.
pub fn payload(json: &str) -> Raw {
    serde_json::value::RawValue::from_string(json.to_string()).expect("valid JSON")
}

/// A write on `channel` with `message`.
pub fn envelope(channel: &str, message: Raw) -> Envelope<Raw> {
    Envelope {
        channel: channel.to_string(),
        subject: None,
        distribution: None,
        headers: Default::default(),
        message,
    }
}

/// Percentile `p` (0–100) of `values` (sorted here), 0 when empty.
pub fn percentile(values: &mut [u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * (values.len() as f64 - 1.0)).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// The path of the `warren-gateway` binary: `WARREN_GATEWAY_BIN` when set and present,
/// else built once per test process with `cargo build` next to the test binary.
pub fn gateway_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        workspace_binary("warren-gateway", "warren-gateway", &["WARREN_GATEWAY_BIN"])
    })
    .clone()
}

/// The `warren-gateway` binary running as a child process.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    pid: u32,
    /// The address of its one listener (all channels).
    pub addr: SocketAddr,
    /// Its node name.
    pub node: String,
}

impl GatewayProcess {
    /// Spawns `warren-gateway --namespace <ns> --listen 127.0.0.1:0 <args>` (without
    /// announcements and presence events unless `args` name them) and waits
    /// (at most 60 s) for `READY`. Its log goes to the test's stderr, filtered by
    /// `WARREN_TEST_GATEWAY_LOG` (default `warn`).
    pub async fn spawn(namespace: &str, node: &str, args: &[&str]) -> GatewayProcess {
        let binary = tokio::task::spawn_blocking(gateway_binary)
            .await
            .expect("binary lookup");
        let mut child = child_command(&binary, "WARREN_TEST_GATEWAY_LOG")
            .arg("--amqp-uri")
            .arg(amqp_addr())
            .args(["--namespace", namespace, "--node", node])
            .args(["--listen", "127.0.0.1:0"])
            .args(
                [("--announce-interval-ms", "0"), ("--presence", "false")]
                    .into_iter()
                    .filter(|(flag, _)| !args.contains(flag))
                    .flat_map(|(flag, value)| [flag, value]),
            )
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let pid = child.id().expect("the child has a pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            let mut addr = None;
            while let Ok(Some(line)) = lines.next_line().await {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("LISTENING") => addr = words.next().and_then(|a| a.parse().ok()),
                    Some("READY") => return addr,
                    _ => {}
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("warren-gateway printed LISTENING and READY within 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        GatewayProcess {
            child,
            pid,
            addr,
            node: node.to_string(),
        }
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory of the process in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// SIGKILL: the process dies at once.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL sent");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
    }

    /// Waits (at most `within`) for the exit; returns whether it exited 0.
    pub async fn wait_exit(&mut self, within: Duration) -> bool {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        }
    }
}

/// The fault a [`failover_under_load`] run injects into the gateway most clients are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL: the process dies without a word.
    Kill,
    /// SIGTERM: the gateway drains.
    Terminate,
}

/// What a [`failover_under_load`] run measured.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Client writes started.
    pub writes_sent: usize,
    /// Client writes acknowledged by a gateway.
    pub writes_acked: usize,
    /// Distinct client writes that reached the inbound queue.
    pub writes_delivered: usize,
    /// Client writes that never reached the inbound queue.
    pub writes_lost: usize,
    /// Copies at the inbound queue beyond the first (re-sent writes with the same
    /// `message_id`; a service's duplicate filter drops them).
    pub writes_resent_copies: usize,
    /// Distinct writes that reached the inbound queue under two different ids (real
    /// duplicates; must be 0).
    pub writes_duplicated: usize,
    /// Deliveries published to clients (per recipient).
    pub deliveries_sent: usize,
    /// Distinct deliveries that reached the app.
    pub deliveries_delivered: usize,
    /// Deliveries that never reached the app of the client they were meant for.
    pub deliveries_lost: usize,
    /// Distinct deliveries that reached a client they were not meant for (another
    /// client's direct message or probe); must be 0. Counted per client, so a
    /// misrouted delivery cannot stand in for a lost one.
    pub deliveries_misrouted: usize,
    /// A few of them, as (client, `message_id`).
    pub misrouted_sample: Vec<(usize, String)>,
    /// Deliveries that reached the app more than once (after the SDK's filter).
    pub deliveries_duplicated: usize,
    /// Clients that were on the faulty gateway.
    pub moved: usize,
    /// Of those, clients connected again (to the other gateway) afterwards.
    pub recovered: usize,
    /// Of those, clients whose every `welcome` named one session: resumed, not
    /// given a fresh one.
    pub resumed: usize,
    /// Moved clients that got a `drain` event (a drained gateway told them to move).
    pub drained: usize,
    /// Stream readers the surviving gateway opened from the fault to the end
    /// (`stream_readers_total`): its sessions resumed from its memory or through
    /// shared readers, not one reader each.
    pub stream_readers_opened: i64,
    /// Time from the fault to the client's next `connected`, p50 / p99 / max, in ms.
    pub recovery_ms: (u64, u64, u64),
    /// `writeAndWait` requests started (a stand-in service replies 300 ms after it
    /// takes each one, so many are pending at the fault).
    pub requests_sent: usize,
    /// Requests resolved with their own reply.
    pub requests_resolved: usize,
    /// Of those, requests sent before the fault and resolved after it: in flight
    /// across it (the stand-in service holds the replies to requests it took before
    /// the fault until the fault happened).
    pub requests_across_fault: usize,
    /// Requests that did not resolve with their own reply, by outcome (the SDK's
    /// error code, `wrong reply` or `no outcome`).
    pub request_failures: Vec<(String, usize)>,
    /// Wall time of the whole run, in ms.
    pub total_ms: u64,
    /// Writes and requests the load asked for (clients × per client).
    pub writes_expected: usize,
    /// See `writes_expected`.
    pub requests_expected: usize,
    /// Connection attempts each moved client made after the fault until it was
    /// connected again, p50 / p99 / max (1 = the first attempt worked).
    pub attempts: (u64, u64, u64),
    /// For the attempt that resumed each moved client: ms from asking for the socket to
    /// the WebSocket upgrade, and from the upgrade to `welcome` (p50 / p99 each).
    pub upgrade_ms: (u64, u64),
    /// See `upgrade_ms`.
    pub welcome_ms: (u64, u64),
    /// For each moved client, ms from the fault to: its state leaving `connected` (it
    /// noticed; the SDK asks for its next socket at once), and the socket of the
    /// attempt that resumed it asked for (p50 / p99 each).
    pub noticed_ms: (u64, u64),
    /// See `noticed_ms`.
    pub last_asked_ms: (u64, u64),
    /// The surviving gateway's own accept → `welcome` time for the sessions opened
    /// from the fault on (its `session_open_seconds` histogram, read before the fault
    /// and at the end): sessions counted, and the bucket bounds holding p50 and p99.
    pub gateway_open: (u64, String, String),
    /// CPU time (user + system, ms) the surviving gateway used from the fault until the
    /// end of the run's wait for every message.
    pub gateway_cpu_ms: u64,
    /// `error` events the moved clients got after the fault, by message, most
    /// frequent first (at most five kinds).
    pub errors_after_fault: Vec<(String, usize)>,
}

impl Figures {
    /// Asserts that the fault moved clients (`fault`: which gateway, "killed",
    /// "drained"), and that every one of them came back and resumed its session.
    ///
    /// # Panics
    ///
    /// When any of those does not hold.
    pub fn assert_every_client_moved_and_resumed(&self, fault: &str) {
        assert!(self.moved > 0, "clients were on the {fault} gateway");
        assert_eq!(self.recovered, self.moved, "every client recovered");
        assert_eq!(
            self.resumed, self.recovered,
            "every client resumed its session"
        );
    }

    /// Asserts what every failover run guarantees: the load was real (at least 5,000
    /// deliveries, and 5,000 writes and some requests unless the load has none), no write was lost, duplicated or left unacked, no
    /// delivery was lost or reached the app twice, and every `writeAndWait` in flight
    /// resolved with its reply.
    ///
    /// # Panics
    ///
    /// When any of those does not hold.
    pub fn assert_nothing_lost_or_duplicated(&self) {
        assert!(self.deliveries_sent >= 5_000, "the load was real");
        assert_eq!(
            self.writes_sent, self.writes_expected,
            "every write was started"
        );
        assert!(self.writes_expected == 0 || self.writes_sent >= 5_000);
        assert_eq!(self.writes_lost, 0, "no client write is lost");
        assert_eq!(self.writes_duplicated, 0, "no write arrives under two ids");
        assert_eq!(self.writes_acked, self.writes_sent, "every write is acked");
        assert_eq!(self.deliveries_lost, 0, "no delivery is lost");
        assert_eq!(
            self.deliveries_misrouted, 0,
            "no delivery reaches a client it was not meant for (e.g. {:?})",
            self.misrouted_sample
        );
        assert_eq!(
            self.deliveries_duplicated, 0,
            "no duplicate reaches the app"
        );
        assert_eq!(self.requests_sent, self.requests_expected);
        assert!(
            self.requests_expected == 0 || self.requests_sent > 0,
            "requests were in flight"
        );
        assert_eq!(
            self.requests_resolved, self.requests_sent,
            "every pending writeAndWait resolves with its reply"
        );
        assert!(
            self.requests_expected == 0 || self.requests_across_fault > 0,
            "requests were in flight across the fault"
        );
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writes: sent {} acked {} delivered {} lost {} duplicated {} (re-sent copies suppressed by message_id: {}); \
             deliveries: sent {} delivered {} lost {} misrouted {} duplicated {}; \
             requests: sent {} resolved {} (across the fault {}; failed: {:?}); \
             clients moved {} recovered {} (resumed {}, told to drain {}; stream readers opened {}); recovery p50 {} ms p99 {} ms max {} ms; \
             attempts p50 {} p99 {} max {}; from the fault: noticed p50 {} p99 {} ms, \
             last socket asked p50 {} p99 {} ms; \
             last attempt: upgrade p50 {} ms p99 {} ms, welcome p50 {} ms p99 {} ms; \
             surviving gateway, accept → welcome of {} sessions: p50 ≤ {} s, p99 ≤ {} s, \
             CPU from the fault on {} ms; errors after the fault {:?}; run {} ms",
            self.writes_sent,
            self.writes_acked,
            self.writes_delivered,
            self.writes_lost,
            self.writes_duplicated,
            self.writes_resent_copies,
            self.deliveries_sent,
            self.deliveries_delivered,
            self.deliveries_lost,
            self.deliveries_misrouted,
            self.deliveries_duplicated,
            self.requests_sent,
            self.requests_resolved,
            self.requests_across_fault,
            self.request_failures,
            self.moved,
            self.recovered,
            self.resumed,
            self.drained,
            self.stream_readers_opened,
            self.recovery_ms.0,
            self.recovery_ms.1,
            self.recovery_ms.2,
            self.attempts.0,
            self.attempts.1,
            self.attempts.2,
            self.noticed_ms.0,
            self.noticed_ms.1,
            self.last_asked_ms.0,
            self.last_asked_ms.1,
            self.upgrade_ms.0,
            self.upgrade_ms.1,
            self.welcome_ms.0,
            self.welcome_ms.1,
            self.gateway_open.0,
            self.gateway_open.1,
            self.gateway_open.2,
            self.gateway_cpu_ms,
            self.errors_after_fault,
            self.total_ms,
        )
    }
}

/// What the stand-in service saw on `IN_CHAT`.
#[derive(Debug, Default)]
struct InboundTally {
    /// Copies per `message_id`.
    copies: HashMap<String, usize>,
    /// The `message_id`s each body arrived under.
    bodies: HashMap<String, std::collections::HashSet<String>>,
}

/// Publishes to `exchange` as a service would (persistent, with a message id); the
/// confirm is awaited by the caller, so publishes are pipelined.
async fn publish_out(
    ch: lapin::Channel,
    exchange: String,
    key: String,
    id: String,
    body: String,
) -> lapin::PublisherConfirm {
    let props = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(lapin::types::ShortString::from(id))
        .with_content_type("application/json".into());
    ch.basic_publish(
        lapin::types::ShortString::from(exchange),
        lapin::types::ShortString::from(key),
        lapin::options::BasicPublishOptions::default(),
        body.as_bytes(),
        props,
    )
    .await
    .expect("publish")
}

/// How long [`failover_under_load`]'s clients have, together, for their first
/// connection (plus 2 ms per client).
pub const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long [`failover_under_load`] waits, in all, for every write's ack and every
/// request's reply after the load (the SDK's request timeout there is 30 s), and for
/// the service's confirms after the load's spread.
pub const ANSWERS_WITHIN: Duration = Duration::from_secs(40);

/// Shape of a [`failover_under_load`] run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Clients (3/4 start on the faulty gateway, 1/4 on the other).
    pub clients: usize,
    /// Writes per client.
    pub writes_per_client: usize,
    /// Direct messages per client.
    pub directs_per_client: usize,
    /// Broadcasts (each reaches every client).
    pub broadcasts: usize,
    /// `writeAndWait` requests per client (on `tickets`).
    pub requests_per_client: usize,
    /// How long the writes and publishes are spread over, in ms.
    pub spread_ms: u64,
    /// When the fault is injected, in ms after the load starts.
    pub fault_at_ms: u64,
    /// Clients reconnect with the SDK's default backoff and connect timeout
    /// (250–10,000 ms, 5,000 ms) instead of the quicker 50–1,000 ms and 3,000 ms the
    /// smaller failover tests use to keep their run short.
    pub sdk_reconnect_defaults: bool,
    /// Extra arguments for both gateways (e.g. `--request-replies direct`).
    pub gateway_args: &'static [&'static str],
}

impl Default for Load {
    fn default() -> Self {
        Load {
            clients: 60,
            writes_per_client: 100,
            directs_per_client: 100,
            broadcasts: 20,
            requests_per_client: 5,
            spread_ms: 3_000,
            fault_at_ms: 1_000,
            sdk_reconnect_defaults: false,
            gateway_args: &[],
        }
    }
}

/// Two `warren-gateway` processes, `load.clients` SDK clients (most on the first
/// gateway, every one with both URLs), a raw AMQP service counting client writes on
/// `IN_CHAT` and publishing direct and broadcast messages to the clients; `fault` hits
/// the first gateway `fault_at_ms` into the load. Returns the figures once every
/// message arrived or 40 s passed.
///
/// Every wait is bounded, and the waits on many receivers share one deadline each
/// (not one bound per receiver, which for 60 clients × 100 writes would add up to
/// days): the clients' first connection [`READY_WITHIN`] (plus 2 ms per client), the
/// probes 15 s, the service's confirms [`ANSWERS_WITHIN`] after the load's spread,
/// the writes' acks and the requests' replies [`ANSWERS_WITHIN`] after the load.
pub async fn failover_under_load(label: &str, fault: Fault, load: Load) -> Figures {
    use lapin::options::{BasicAckOptions, ConfirmSelectOptions};
    use std::collections::HashSet;

    let run_start = Instant::now();
    let env = crate::env::TestEnv::new(label).await;
    let tag = env.namespace[env.namespace.len() - 8..].to_string();
    let (node_a, node_b) = (format!("gwa-{tag}"), format!("gwb-{tag}"));
    let (a, b) = tokio::join!(
        GatewayProcess::spawn(&env.namespace, &node_a, load.gateway_args),
        GatewayProcess::spawn(&env.namespace, &node_b, load.gateway_args),
    );
    let (mut a, mut b) = (a, b);
    let on_a = load.clients * 3 / 4;
    let clients: Vec<SdkClient> = (0..load.clients)
        .map(|i| {
            let urls = if i < on_a {
                vec![a.url(), b.url()]
            } else {
                vec![b.url(), a.url()]
            };
            let mut config = Config::new(urls);
            config.token = Some(format!("u{i}"));
            if !load.sdk_reconnect_defaults {
                config.backoff = warren_sdk::Backoff::new(50, 1_000);
                config.connect_timeout_ms = 3_000;
            }
            config.request_timeout_ms = 30_000;
            config.outbox_limit = 10_000;
            config.duplicate_window = 10_000;
            let c = SdkClient::start(config, 0x5eed + i as u64);
            c.subscribe(SubscribeOptions {
                channel: "chat".into(),
                broadcast: Some(true),
                direct: true,
                ..Default::default()
            });
            c
        })
        .collect();
    let ready_by = Instant::now() + READY_WITHIN + Duration::from_millis(2 * load.clients as u64);
    for c in &clients {
        c.ready(ready_by.saturating_duration_since(Instant::now()))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "every client connects within {:?}: {e:?}",
                    READY_WITHIN + Duration::from_millis(2 * load.clients as u64)
                )
            });
    }

    // The stand-in service: counts client writes by message id and body.
    let mut inbound = env.consume_inbound("chat").await;
    let seen: Arc<Mutex<InboundTally>> = Arc::default();
    let seen_in = seen.clone();
    let counter = tokio::spawn(async move {
        while let Some(Ok(d)) = inbound.next().await {
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&d.data).to_string();
            {
                let mut s = seen_in.lock().unwrap_or_else(|e| e.into_inner());
                *s.copies.entry(id.clone()).or_insert(0) += 1;
                s.bodies.entry(body).or_default().insert(id);
            }
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
    });

    // The stand-in request handler: replies 300 ms after taking a request, then acks;
    // a request taken before the fault is answered only once the fault happened, so
    // that requests are in flight across it.
    let (fault_tx, fault_rx) = tokio::sync::watch::channel(false);
    let responder_ch = env.new_channel().await;
    let mut requests_in = responder_ch
        .basic_consume(
            lapin::types::ShortString::from(env.names.channel_queue("tickets")),
            lapin::types::ShortString::from("responder"),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("consume IN_TICKETS");
    let responder = tokio::spawn(async move {
        while let Some(Ok(d)) = requests_in.next().await {
            let ch = responder_ch.clone();
            let mut fault = fault_rx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = fault.wait_for(|happened| *happened).await;
                if let (Some(reply_to), Some(corr)) = (
                    d.properties.reply_to().clone(),
                    d.properties.correlation_id().clone(),
                ) {
                    let props = lapin::BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_correlation_id(corr)
                        .with_message_id(lapin::types::ShortString::from(
                            uuid::Uuid::new_v4().simple().to_string(),
                        ));
                    let _ = ch
                        .basic_publish(
                            lapin::types::ShortString::from(""),
                            reply_to,
                            lapin::options::BasicPublishOptions::default(),
                            &d.data,
                            props,
                        )
                        .await;
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            });
        }
    });

    // Make sure every client's bindings exist: a probe each, until it arrives.
    let out = env.new_channel().await;
    out.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let exchange = env.names.outbound_exchange();
    let publish = |key: String, id: String, body: String| {
        publish_out(out.clone(), exchange.clone(), key, id, body)
    };
    let probe_deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let missing: Vec<usize> = clients
            .iter()
            .enumerate()
            .filter(|(i, c)| !c.delivered().contains(&format!("probe-{i}")))
            .map(|(i, _)| i)
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < probe_deadline,
            "{} clients never got their probe",
            missing.len()
        );
        // Pipelined, as the load is: awaiting one confirm at a time made RabbitMQ
        // write a stream chunk per probe (a 10,000-client storm: RabbitMQ's CPU up to
        // the kill 7.8 → 2.6 s, the whole run 19 → 9.5 s).
        let mut confirms = Vec::with_capacity(missing.len());
        for i in missing {
            confirms
                .push(publish(format!("chat.user.u{i}"), format!("probe-{i}"), "0".into()).await);
        }
        for c in confirms {
            // Bounded by the probes' deadline, checked above on the next round.
            let _ = tokio::time::timeout_at(probe_deadline, c).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The load.
    let rounds = load.writes_per_client.max(load.directs_per_client).max(1);
    let pause = Duration::from_millis(load.spread_ms / rounds as u64);
    let mut write_results = Vec::new();
    let mut writer_states: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c, Vec::new()))
        .collect();
    // Round k carries a broadcast `b-{k}` when this holds.
    let every = (rounds / load.broadcasts.max(1)).max(1);
    let broadcast_round = move |k: usize| k.is_multiple_of(every) && k / every < load.broadcasts;
    // What each client must receive, exactly: its direct messages and the broadcasts
    // (and its own probe, not counted).
    let broadcast_ids: Vec<String> = (0..rounds)
        .filter(|k| broadcast_round(*k))
        .map(|k| format!("b-{k}"))
        .collect();
    let meant_for: Vec<HashSet<String>> = (0..load.clients)
        .map(|i| {
            (0..load.directs_per_client)
                .map(|k| format!("d-{i}-{k}"))
                .chain(broadcast_ids.iter().cloned())
                .collect()
        })
        .collect();
    let confirms_by = Instant::now() + Duration::from_millis(load.spread_ms) + ANSWERS_WITHIN;
    let service = {
        let clients_n = load.clients;
        let publish = &publish;
        async move {
            let mut confirms = Vec::new();
            for k in 0..rounds {
                if k < load.directs_per_client {
                    for i in 0..clients_n {
                        confirms.push(
                            publish(
                                format!("chat.user.u{i}"),
                                format!("d-{i}-{k}"),
                                format!("{{\"d\":{k}}}"),
                            )
                            .await,
                        );
                    }
                }
                if broadcast_round(k) {
                    confirms.push(
                        publish(
                            "chat.all".into(),
                            format!("b-{k}"),
                            format!("{{\"b\":{k}}}"),
                        )
                        .await,
                    );
                }
                tokio::time::sleep(pause).await;
            }
            for c in confirms {
                let confirm = tokio::time::timeout_at(confirms_by, c)
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "RabbitMQ confirmed the service's messages within {ANSWERS_WITHIN:?} \
                             of the load's end"
                        )
                    });
                assert!(
                    confirm.expect("confirm").is_ack(),
                    "broker took the message"
                );
            }
        }
    };
    let mut request_results = Vec::new();
    let request_every = (rounds / load.requests_per_client.max(1)).max(1);
    let clients_side = async {
        for k in 0..rounds {
            if k % request_every == 0 && k / request_every < load.requests_per_client {
                for (i, c, _) in writer_states.iter() {
                    let body = format!("{{\"r\":{i},\"k\":{k}}}");
                    let rx = c.request(envelope("tickets", payload(&body)), Some(30_000));
                    // When it settles, for the requests in flight across the fault.
                    let settled = tokio::spawn(async move { (rx.await, Instant::now()) });
                    request_results.push((body, Instant::now(), settled));
                }
            }
            if k < load.writes_per_client {
                for (i, c, pending) in writer_states.iter_mut() {
                    pending.push(c.write(envelope(
                        "chat",
                        payload(&format!("{{\"c\":{i},\"k\":{k}}}")),
                    )));
                }
            }
            tokio::time::sleep(pause).await;
        }
    };
    let mut fault_at = None;
    let mut open_before = Vec::new();
    let mut readers_before = None;
    let mut cpu_before = 0;
    let faulty = async {
        tokio::time::sleep(Duration::from_millis(load.fault_at_ms)).await;
        open_before = session_open_buckets(b.addr).await;
        readers_before = stream_readers_total(b.addr).await;
        cpu_before = cpu_ms(b.pid);
        let at = Instant::now();
        tracing::info!(?fault, "injecting the fault");
        if std::env::var_os("WARREN_TEST_TRACE_FAULT").is_some() {
            eprintln!("fault {fault:?} at {:?}", std::time::SystemTime::now());
        }
        match fault {
            Fault::Kill => a.kill().await,
            Fault::Terminate => a.signal_term(),
        }
        fault_at = Some(at);
        let _ = fault_tx.send(true);
    };
    // Which clients were on the faulty gateway right before the fault.
    tokio::join!(service, clients_side, faulty);
    let fault_at = fault_at.expect("the fault happened");
    for (_, _, pending) in writer_states.iter_mut() {
        for rx in pending.drain(..) {
            write_results.push(rx);
        }
    }
    let writes_sent = write_results.len();
    // One deadline for every write's ack and every request's reply.
    let answers_by = tokio::time::Instant::now() + ANSWERS_WITHIN;
    let mut writes_acked = 0;
    for rx in write_results {
        if let Ok(Ok(Ok(()))) = tokio::time::timeout_at(answers_by, rx).await {
            writes_acked += 1;
        }
    }
    let requests_sent = request_results.len();
    let mut requests_resolved = 0;
    let mut request_failures: HashMap<String, usize> = HashMap::new();
    let mut requests_across_fault = 0;
    for (body, sent, settled) in request_results {
        let abort = settled.abort_handle();
        let failure = match tokio::time::timeout_at(answers_by, settled).await {
            Ok(Ok((Ok(Ok(reply)), at))) if reply.get() == body => {
                requests_resolved += 1;
                if sent < fault_at && at > fault_at {
                    requests_across_fault += 1;
                }
                continue;
            }
            Ok(Ok((Ok(Ok(_)), _))) => "wrong reply".to_string(),
            Ok(Ok((Ok(Err(e)), _))) => e.code.as_str().to_string(),
            Ok(Ok((Err(_), _))) | Ok(Err(_)) | Err(_) => {
                abort.abort();
                "no outcome".to_string()
            }
        };
        *request_failures.entry(failure).or_insert(0) += 1;
    }
    if fault == Fault::Terminate {
        assert!(
            a.wait_exit(Duration::from_secs(20)).await,
            "the drained gateway exits 0"
        );
    }

    // Wait for every message to arrive (bounded).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let writes_in = seen.lock().unwrap_or_else(|e| e.into_inner()).bodies.len();
        let all_in = clients.iter().zip(&meant_for).all(|(c, meant)| {
            let d: HashSet<String> = c.delivered().into_iter().collect();
            meant.is_subset(&d)
        });
        if (all_in && writes_in >= writes_sent) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Late redeliveries would show up as duplicates: give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open_after = session_open_buckets(b.addr).await;
    let readers_after = stream_readers_total(b.addr).await;
    let cpu_after = cpu_ms(b.pid);

    let mut figures = Figures {
        writes_sent,
        writes_acked,
        requests_sent,
        requests_resolved,
        requests_across_fault,
        request_failures: request_failures.into_iter().collect(),
        writes_expected: load.clients * load.writes_per_client,
        requests_expected: load.clients * load.requests_per_client,
        ..Figures::default()
    };
    {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        let copies: usize = s.copies.values().sum();
        figures.writes_delivered = s.bodies.len();
        figures.writes_lost = writes_sent.saturating_sub(s.bodies.len());
        figures.writes_resent_copies = copies - s.copies.len();
        figures.writes_duplicated = s.bodies.values().filter(|ids| ids.len() > 1).count();
    }
    figures.deliveries_sent = meant_for.iter().map(HashSet::len).sum();
    let mut recovery = Vec::new();
    let mut attempts = Vec::new();
    let (mut upgrades, mut welcomes) = (Vec::new(), Vec::new());
    let (mut noticed, mut last_asked) = (Vec::new(), Vec::new());
    let mut errors: HashMap<String, usize> = HashMap::new();
    for (i, (c, meant)) in clients.iter().zip(&meant_for).enumerate() {
        let st = c.stats.lock().unwrap_or_else(|e| e.into_inner());
        let own_probe = format!("probe-{i}");
        let ids: Vec<&String> = st
            .deliveries
            .iter()
            .map(|(id, _)| id)
            .filter(|id| **id != own_probe)
            .collect();
        let distinct: HashSet<&String> = ids.iter().copied().collect();
        // Per client: what was meant for it and came, what was meant for it and did
        // not, and what came but was meant for another.
        let arrived = meant.iter().filter(|id| distinct.contains(id)).count();
        figures.deliveries_delivered += arrived;
        figures.deliveries_lost += meant.len() - arrived;
        for id in distinct.iter().filter(|id| !meant.contains(**id)) {
            figures.deliveries_misrouted += 1;
            if figures.misrouted_sample.len() < 5 {
                figures.misrouted_sample.push((i, (*id).clone()));
            }
        }
        figures.deliveries_duplicated += ids.len() - distinct.len();
        // Was this client on the faulty gateway at the fault?
        let before = st
            .states
            .iter()
            .rev()
            .find(|(s, at, _)| *s == State::Connected && *at < fault_at);
        if before.is_some_and(|(_, _, url)| url.as_deref() == Some(a.url().as_str())) {
            figures.moved += 1;
            if st.drains > 0 {
                figures.drained += 1;
            }
            if let Some(at) = st.connected_after(fault_at) {
                figures.recovered += 1;
                if st.sessions.windows(2).all(|w| w[0] == w[1]) && st.sessions.len() >= 2 {
                    figures.resumed += 1;
                }
                recovery.push(at.duration_since(fault_at).as_millis() as u64);
                // Each failed attempt is an `error` event naming its URL.
                let failed = st
                    .errors
                    .iter()
                    .filter(|(_, t)| *t >= fault_at && *t <= at)
                    .count();
                attempts.push(failed as u64 + 1);
                let since = |t: Instant| t.saturating_duration_since(fault_at).as_millis() as u64;
                if let Some((_, t, _)) = st.states.iter().find(|(_, t, _)| *t >= fault_at) {
                    noticed.push(since(*t));
                }
                if let Some((asked, Some(upgraded))) =
                    st.sockets.iter().rev().find(|(asked, _)| *asked <= at)
                {
                    last_asked.push(since(*asked));
                    upgrades.push(upgraded.duration_since(*asked).as_millis() as u64);
                    welcomes.push(at.saturating_duration_since(*upgraded).as_millis() as u64);
                }
            }
            for (e, t) in &st.errors {
                if *t < fault_at {
                    continue;
                }
                // The URL and numbers vary; the kind of failure is what counts.
                let kind: String = e
                    .message
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .take(80)
                    .collect();
                *errors.entry(kind).or_insert(0) += 1;
            }
        }
    }
    let max = recovery.iter().copied().max().unwrap_or(0);
    figures.recovery_ms = (
        percentile(&mut recovery, 50.0),
        percentile(&mut recovery, 99.0),
        max,
    );
    figures.total_ms = run_start.elapsed().as_millis() as u64;
    let max_attempts = attempts.iter().copied().max().unwrap_or(0);
    figures.attempts = (
        percentile(&mut attempts, 50.0),
        percentile(&mut attempts, 99.0),
        max_attempts,
    );
    let mut errors: Vec<(String, usize)> = errors.into_iter().collect();
    errors.sort_by_key(|b| std::cmp::Reverse(b.1));
    errors.truncate(5);
    figures.errors_after_fault = errors;
    let p50_p99 = |v: &mut Vec<u64>| (percentile(v, 50.0), percentile(v, 99.0));
    figures.noticed_ms = p50_p99(&mut noticed);
    figures.last_asked_ms = p50_p99(&mut last_asked);
    figures.gateway_open = open_quantiles(&open_before, &open_after);
    figures.stream_readers_opened = match (readers_before, readers_after) {
        (Some(before), Some(after)) => after - before,
        _ => panic!("the surviving gateway's /metrics answers stream_readers_total"),
    };
    figures.gateway_cpu_ms = cpu_after.saturating_sub(cpu_before);
    figures.upgrade_ms = p50_p99(&mut upgrades);
    figures.welcome_ms = p50_p99(&mut welcomes);

    // Cleanup.
    for c in clients {
        c.close().await;
    }
    counter.abort();
    responder.abort();
    b.signal_term();
    let _ = b.wait_exit(Duration::from_secs(10)).await;
    env.cleanup().await;
    figures
}
