//! `warren-stack`: a small supervisor for development and browser tests. It starts two
//! gateways (`primary`, `failover`) and the demo service as child processes, waits for
//! their `READY`, and serves a control API so scripts and test pages can read the URLs
//! and kill, stop or restart each process to exercise failover.
//!
//! ```text
//! GET  /state                      the stack as JSON (URLs, pids, alive flags)
//! POST /gateways/{name}/kill       SIGKILL the gateway
//! POST /gateways/{name}/stop       SIGTERM it (graceful drain) and wait for it to exit
//! POST /gateways/{name}/start      start it again on the same ports
//! POST /service/kill|stop|start    the same for the demo service
//! POST /token {"user": "ada"}      {"token": "..."}: a development token for that user
//!                                  (`lifetime_s`, `groups`: other than the defaults)
//! ```
//!
//! With `--auth jwt` the gateways verify HS256 tokens signed with a DEVELOPMENT secret
//! (`warren-development-secret-change-me!` unless `--jwt-secret` says otherwise, public
//! in this repository: never use it for anything real), and `POST /token` signs them
//! (`sub`, `exp` = now + `--token-lifetime-s`, `groups` `room-1` and `room-2`, never the
//! private `staff`, and `topics` `ticket.*` for the demo desk's events). With `--auth none` it answers the user name itself as the token.
//!
//! The state also names `silent`: a WebSocket URL whose port accepts TCP connections
//! and never answers (a gateway stuck before its handshake), for handshake-timeout
//! tests; each connection is dropped after 60 s.
//!
//! Every response is the new state. CORS allows any origin: the demo page and the wasm
//! test pages call this API from the browser. This is dev tooling, not product.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, ValueEnum};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Mutex};

/// How long a child may take to print `READY`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd child may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The HMAC secret `--auth jwt` uses unless `--jwt-secret` names another: a
/// DEVELOPMENT secret, published in this repository.
const DEV_SECRET: &str = "warren-development-secret-change-me!";
/// The HTTP API key every gateway of the stack accepts
/// (`Authorization: Bearer warren-demo-key`): a DEVELOPMENT key, published in this
/// repository.
const DEV_API_KEY: &str = "warren-demo-key";
/// Groups every development token grants (`staff` is left out on purpose: the demo page
/// shows the gateway refusing it).
const DEV_GROUPS: [&str; 2] = ["room-1", "room-2"];
/// Topic patterns every development token grants: the demo desk's ticket events
/// (`tickets.event.ticket.created`, `...closed`), which the demo page subscribes to.
const DEV_TOPICS: [&str; 1] = ["ticket.*"];

/// How the gateways check tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Auth {
    /// `auth.mode = "none"`: the token is the user id.
    None,
    /// `auth.mode = "jwt"`: HS256 tokens signed with `--jwt-secret`, from `POST /token`.
    Jwt,
}

/// Which ports the gateways listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// Fixed ports: primary 4000 (all) + 4001 voice, 4002 chat, 4003 tickets; failover
    /// 5000 + 5001–5003.
    Demo,
    /// Every listener on port 0, a unique namespace by default (for tests).
    Ephemeral,
}

/// Runs two Warren gateways and the demo service, with an HTTP control API.
#[derive(Debug, Parser)]
#[command(name = "warren-stack", version)]
struct Cli {
    /// Port layout.
    #[arg(long, value_enum, default_value = "demo")]
    layout: Layout,
    /// AMQP URI of RabbitMQ.
    #[arg(long, env = "AMQP_ADDR", default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp_uri: String,
    /// Namespace prefix for every exchange and queue. Default: none for the demo
    /// layout, a unique `stack-<random>` for the ephemeral layout.
    #[arg(long)]
    namespace: Option<String>,
    /// Address of the control API.
    #[arg(long, default_value = "127.0.0.1:0")]
    control: String,
    /// Write the `/state` JSON (with `control`) here once everything is ready, and
    /// again after every change.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Path of `warren-gateway` (default: next to this executable).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Path of `warren-demo-service` (default: next to this executable).
    #[arg(long)]
    service_bin: Option<PathBuf>,
    /// Extra argument for every gateway (repeatable), e.g. `--gateway-arg=--heartbeat-ms=5000`
    /// (`--gateway-arg=--config=x.toml` only with `--auth none`: `--auth jwt` writes the
    /// gateways' configuration file itself).
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Extra argument for the demo service (repeatable), e.g. `--service-arg=--delay-ms=50`.
    #[arg(long, allow_hyphen_values = true)]
    service_arg: Vec<String>,
    /// Do not start the demo service.
    #[arg(long)]
    no_service: bool,
    /// Channels the gateways serve.
    #[arg(long, default_value = "chat,voice,tickets,echo")]
    channels: String,
    /// How the gateways check tokens: `none` (the token is the user id) or `jwt` (HS256
    /// tokens from `POST /token`; the gateways get a generated `--config` file).
    #[arg(long, value_enum, default_value = "none")]
    auth: Auth,
    /// HMAC secret of `--auth jwt` (at least 32 bytes). The default is a DEVELOPMENT
    /// secret, public in this repository.
    #[arg(long, env = "WARREN_STACK_JWT_SECRET", default_value = DEV_SECRET, hide_env_values = true)]
    jwt_secret: String,
    /// Lifetime of the tokens `POST /token` signs, in seconds (a body's `lifetime_s`
    /// may ask for another).
    #[arg(long, default_value_t = 120)]
    token_lifetime_s: u64,
    /// Clock skew the gateways allow on `exp` with `--auth jwt` (`auth.jwt.leeway_s`).
    #[arg(long, default_value_t = 30)]
    jwt_leeway_s: u64,
}

/// The channels that get their own port in both layouts, in port order.
const PINNED: [&str; 3] = ["voice", "chat", "tickets"];

/// One supervised process: how to start it and, while it runs, its handle.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// `LISTENING` lines seen at the first start: channel (`all` for `*`) → address.
    listeners: BTreeMap<String, String>,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Spawns the process and waits for `READY`, recording its listeners.
    async fn start(&mut self) -> Result<()> {
        if self.alive() {
            return Ok(());
        }
        let mut child = Command::new(&self.program)
            .args(&self.args)
            // The stack's gateways verify the tokens it signs: a secret inherited from
            // the environment would replace its own.
            .env_remove("WARREN_AUTH_JWT_SECRET")
            .env_remove("WARREN_AUTH_JWT_SECRET_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        let (lines_tx, mut lines_rx) = mpsc::unbounded_channel();
        forward(
            &self.name,
            child.stdout.take().expect("piped"),
            Some(lines_tx),
        );
        forward(&self.name, child.stderr.take().expect("piped"), None);
        let ready = async {
            while let Some(line) = lines_rx.recv().await {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("READY") => return Ok(()),
                    Some("LISTENING") => {
                        if let (Some(addr), Some(channel)) = (words.next(), words.next()) {
                            let channel = if channel == "*" { "all" } else { channel };
                            self.listeners.insert(channel.to_string(), addr.to_string());
                        }
                    }
                    _ => {}
                }
            }
            Err(anyhow!("{} exited before printing READY", self.name))
        };
        match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            Ok(Err(e)) => {
                let status = child.wait().await.ok();
                Err(e.context(format!("exit status: {status:?}")))
            }
            Err(_) => {
                let _ = child.kill().await;
                bail!("{} did not print READY within {READY_TIMEOUT:?}", self.name)
            }
        }
    }

    /// SIGKILL, and reap.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, wait for a graceful exit, SIGKILL after [`STOP_TIMEOUT`].
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "[stack] {} did not stop in {STOP_TIMEOUT:?}; killing",
                self.name
            );
            let _ = child.kill().await;
        }
    }
}

/// Copies a child's output to our stderr, prefixed with its name; hands stdout lines to
/// `lines` too, so `start` can watch for `LISTENING` and `READY`.
fn forward(
    name: &str,
    stream: impl AsyncRead + Unpin + Send + 'static,
    lines: Option<mpsc::UnboundedSender<String>>,
) {
    let name = name.to_string();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            eprintln!("[{name}] {line}");
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    });
}

/// Everything the control API manages.
struct Stack {
    silent: String,
    namespace: String,
    /// Whether the namespace was made up here (and its topology is deleted at exit).
    own_namespace: bool,
    control: String,
    state_file: Option<PathBuf>,
    gateways: Vec<Proc>,
    service: Option<Proc>,
    /// The signing key of `POST /token` (`--auth jwt`), and the tokens' lifetime.
    tokens: Option<(EncodingKey, u64)>,
}

#[derive(Serialize)]
struct GatewayState {
    name: String,
    urls: BTreeMap<String, String>,
    health: Option<String>,
    pid: Option<u32>,
    alive: bool,
}

#[derive(Serialize)]
struct ServiceState {
    pid: Option<u32>,
    alive: bool,
}

#[derive(Serialize)]
struct StackState {
    namespace: String,
    control: String,
    /// A port that accepts and never answers, as a WebSocket URL.
    silent: String,
    /// `none` or `jwt`.
    auth: &'static str,
    gateways: Vec<GatewayState>,
    service: Option<ServiceState>,
}

impl Stack {
    fn state(&mut self) -> StackState {
        StackState {
            namespace: self.namespace.clone(),
            control: self.control.clone(),
            silent: self.silent.clone(),
            auth: if self.tokens.is_some() { "jwt" } else { "none" },
            gateways: self
                .gateways
                .iter_mut()
                .map(|g| GatewayState {
                    name: g.name.clone(),
                    urls: g
                        .listeners
                        .iter()
                        .map(|(ch, addr)| (ch.clone(), format!("ws://{addr}/ws")))
                        .collect(),
                    health: g
                        .listeners
                        .get("all")
                        .map(|a| format!("http://{a}/healthz")),
                    pid: g.pid(),
                    alive: g.alive(),
                })
                .collect(),
            service: self.service.as_mut().map(|s| ServiceState {
                pid: s.pid(),
                alive: s.alive(),
            }),
        }
    }

    /// Rewrites the state file (atomically), when one was asked for.
    fn save(&mut self) -> Result<()> {
        let Some(path) = self.state_file.clone() else {
            return Ok(());
        };
        let json = serde_json::to_string_pretty(&self.state())?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// After the first start, pin every listener to the port it got, so a restarted
    /// gateway comes back on the same URLs.
    fn pin_ports(gateway: &mut Proc) {
        let mut args = Vec::new();
        let mut it = std::mem::take(&mut gateway.args).into_iter();
        while let Some(arg) = it.next() {
            if arg == "--listen" {
                let _ = it.next();
            } else {
                args.push(arg);
            }
        }
        for (channel, addr) in &gateway.listeners {
            args.push("--listen".into());
            args.push(if channel == "all" {
                addr.clone()
            } else {
                format!("{addr}={channel}")
            });
        }
        gateway.args = args;
    }

    async fn shutdown(&mut self) {
        if let Some(service) = &mut self.service {
            service.stop().await;
        }
        for gateway in &mut self.gateways {
            gateway.stop().await;
        }
    }
}

type Shared = Arc<Mutex<Stack>>;

#[derive(Clone, Copy)]
enum Action {
    Kill,
    Stop,
    Start,
}

impl Action {
    fn parse(name: &str) -> Option<Action> {
        match name {
            "kill" => Some(Action::Kill),
            "stop" => Some(Action::Stop),
            "start" => Some(Action::Start),
            _ => None,
        }
    }
}

async fn apply(stack: &mut Stack, which: Option<&str>, action: Action) -> Response {
    let proc = match which {
        Some(name) => stack.gateways.iter_mut().find(|g| g.name == name),
        None => stack.service.as_mut(),
    };
    let Some(proc) = proc else {
        return (StatusCode::NOT_FOUND, "no such process\n").into_response();
    };
    eprintln!(
        "[stack] {} {}",
        match action {
            Action::Kill => "killing",
            Action::Stop => "stopping",
            Action::Start => "starting",
        },
        proc.name
    );
    let result = match action {
        Action::Kill => {
            proc.kill().await;
            Ok(())
        }
        Action::Stop => {
            proc.stop().await;
            Ok(())
        }
        Action::Start => proc.start().await,
    };
    if let Err(e) = result {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response();
    }
    if let Err(e) = stack.save() {
        eprintln!("[stack] {e:#}");
    }
    Json(stack.state()).into_response()
}

async fn get_state(State(stack): State<Shared>) -> Json<StackState> {
    Json(stack.lock().await.state())
}

async fn gateway_action(
    State(stack): State<Shared>,
    UrlPath((name, action)): UrlPath<(String, String)>,
) -> Response {
    let Some(action) = Action::parse(&action) else {
        return (StatusCode::NOT_FOUND, "actions: kill, stop, start\n").into_response();
    };
    apply(&mut *stack.lock().await, Some(&name), action).await
}

async fn service_action(State(stack): State<Shared>, UrlPath(action): UrlPath<String>) -> Response {
    let Some(action) = Action::parse(&action) else {
        return (StatusCode::NOT_FOUND, "actions: kill, stop, start\n").into_response();
    };
    apply(&mut *stack.lock().await, None, action).await
}

/// Body of `POST /token`.
#[derive(Deserialize)]
struct TokenRequest {
    user: String,
    /// Another lifetime than `--token-lifetime-s` (tests of expiry and renewal).
    lifetime_s: Option<u64>,
    /// Other groups than `room-1` and `room-2`, only among them (tests of a renewed
    /// token that grants less): never `staff`.
    groups: Option<Vec<String>>,
}

/// The claims of a development token.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    groups: Vec<&'a str>,
    topics: [&'a str; 1],
}

/// Why `POST /token` refuses `user`: a name the gateways would refuse too, told at
/// sign-in rather than as a client stopped with `unauthorized`.
fn token_user(user: &str) -> Result<(), &'static str> {
    let valid = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:@".contains(&b));
    if !valid {
        return Err("`user`: 1 to 64 letters, digits, `_`, `-`, `:` or `@`\n");
    }
    if user == warren_gateway::http_api::API_USER {
        return Err("`user`: `http-api` is the HTTP API keys' user, which no token may name\n");
    }
    Ok(())
}

/// `POST /token`: a development token for `user` (`--auth jwt`), or the user name itself
/// (`--auth none`, where the token is the user id).
async fn token(State(stack): State<Shared>, Json(request): Json<TokenRequest>) -> Response {
    let user = request.user.trim();
    if let Err(message) = token_user(user) {
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let groups: Vec<&str> = match &request.groups {
        None => DEV_GROUPS.to_vec(),
        Some(asked) => {
            let Some(groups) = asked
                .iter()
                .map(|g| DEV_GROUPS.iter().copied().find(|d| d == g))
                .collect::<Option<Vec<&str>>>()
            else {
                let message = format!("`groups`: only among {DEV_GROUPS:?}\n");
                return (StatusCode::BAD_REQUEST, message).into_response();
            };
            groups
        }
    };
    let Some((key, lifetime_s)) = stack.lock().await.tokens.clone() else {
        return Json(serde_json::json!({ "token": user })).into_response();
    };
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let exp = iat.saturating_add(request.lifetime_s.unwrap_or(lifetime_s));
    let claims = Claims {
        sub: user,
        iat,
        exp,
        groups,
        topics: DEV_TOPICS,
    };
    match encode(&Header::new(Algorithm::HS256), &claims, &key) {
        Ok(token) => Json(serde_json::json!({ "token": token, "exp": exp })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Writes the gateways' config file of `--auth jwt` (mode, secret, leeway) into the
/// temporary directory; returns its path.
fn write_auth_config(cli: &Cli) -> Result<PathBuf> {
    if cli.jwt_secret.len() < 32 {
        bail!("--jwt-secret must be at least 32 bytes");
    }
    // The gateway takes one --config: a second one made both gateways exit at once
    // ("cannot be used multiple times") and the stack fail without saying why.
    if let Some(given) = cli
        .gateway_arg
        .iter()
        .find(|a| *a == "--config" || a.starts_with("--config="))
    {
        bail!(
            "--gateway-arg={given}: with --auth jwt, warren-stack gives the gateways a \
             configuration file of its own (auth.mode, the secret); pass settings as \
             --gateway-arg flags instead (every file setting but [auth], [tenants] and \
             [channel_options] has one: warren-gateway --help), or use --auth none with \
             your own file"
        );
    }
    let path = std::env::temp_dir().join(format!("warren-stack-{}-auth.toml", std::process::id()));
    let toml = format!(
        "# Written by warren-stack --auth jwt (development secret).\n\
         [auth]\nmode = \"jwt\"\n\n[auth.jwt]\nsecret = {:?}\nleeway_s = {}\n",
        cli.jwt_secret, cli.jwt_leeway_s
    );
    // It holds the secret: readable by its owner only.
    let mut file = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    let _ = std::fs::remove_file(&path);
    std::io::Write::write_all(
        &mut file
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?,
        toml.as_bytes(),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Binds a port on `ip` that accepts TCP connections and never answers, each held
/// 60 s; its WebSocket URL.
async fn silent_port(ip: std::net::IpAddr) -> Result<String> {
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .context("binding the silent port")?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(socket);
            });
        }
    });
    Ok(url)
}

/// Allows any origin, and answers CORS preflight requests.
async fn cors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
    response
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating warren-stack")?;
    Ok(exe.parent().unwrap_or(Path::new(".")).join(name))
}

fn gateway_proc(
    cli: &Cli,
    auth_config: Option<&Path>,
    program: &Path,
    name: &str,
    base_port: Option<u16>,
    namespace: &str,
) -> Proc {
    let port = |offset: u16| base_port.map_or(0, |p| p + offset);
    let mut args = vec![
        "--amqp-uri".to_string(),
        cli.amqp_uri.clone(),
        "--node".into(),
        name.into(),
        "--channels".into(),
        cli.channels.clone(),
        "--listen".into(),
        format!("127.0.0.1:{}", port(0)),
    ];
    for (i, channel) in PINNED.iter().enumerate() {
        args.push("--listen".into());
        args.push(format!("127.0.0.1:{}={channel}", port(i as u16 + 1)));
    }
    // The external HTTP API beside /ws on the all-channels port (4000 in the demo
    // layout), with the development key.
    args.extend([
        "--http-api-enabled".into(),
        "true".into(),
        "--http-api-keys".into(),
        DEV_API_KEY.into(),
    ]);
    // Always explicit, even when empty, so a WARREN_NAMESPACE in the environment
    // cannot split the gateways and the service into two deployments.
    args.extend(["--namespace".into(), namespace.to_string()]);
    if let Some(path) = auth_config {
        args.extend(["--config".into(), path.display().to_string()]);
    }
    args.extend(cli.gateway_arg.iter().cloned());
    Proc {
        name: name.into(),
        program: program.to_path_buf(),
        args,
        child: None,
        listeners: BTreeMap::new(),
    }
}

async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cli: Cli) -> Result<()> {
    let own_namespace = cli.namespace.is_none() && cli.layout == Layout::Ephemeral;
    let namespace = match (&cli.namespace, cli.layout) {
        (Some(ns), _) => ns.clone(),
        (None, Layout::Demo) => String::new(),
        (None, Layout::Ephemeral) => {
            format!("stack-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        }
    };
    let gateway_bin = match &cli.gateway_bin {
        Some(p) => p.clone(),
        None => sibling("warren-gateway")?,
    };
    let service_bin = match &cli.service_bin {
        Some(p) => p.clone(),
        None => sibling("warren-demo-service")?,
    };
    for bin in [
        Some(&gateway_bin),
        (!cli.no_service).then_some(&service_bin),
    ]
    .into_iter()
    .flatten()
    {
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --workspace --bins)",
                bin.display()
            );
        }
    }
    let (primary, failover) = match cli.layout {
        Layout::Demo => (Some(4000), Some(5000)),
        Layout::Ephemeral => (None, None),
    };
    let auth_config = match cli.auth {
        Auth::Jwt => Some(write_auth_config(&cli)?),
        Auth::None => None,
    };
    let tokens = auth_config.is_some().then(|| {
        (
            EncodingKey::from_secret(cli.jwt_secret.as_bytes()),
            cli.token_lifetime_s,
        )
    });
    let config = auth_config.as_deref();
    let gateways = vec![
        gateway_proc(&cli, config, &gateway_bin, "primary", primary, &namespace),
        gateway_proc(&cli, config, &gateway_bin, "failover", failover, &namespace),
    ];
    let service = (!cli.no_service).then(|| {
        let mut args = vec![
            "--amqp-uri".to_string(),
            cli.amqp_uri.clone(),
            "--namespace".into(),
            namespace.clone(),
        ];
        args.extend(cli.service_arg.iter().cloned());
        Proc {
            name: "service".into(),
            program: service_bin.clone(),
            args,
            child: None,
            listeners: BTreeMap::new(),
        }
    });

    let listener = tokio::net::TcpListener::bind(&cli.control)
        .await
        .with_context(|| format!("binding the control API on {}", cli.control))?;
    let control = format!("http://{}", listener.local_addr()?);
    let silent = silent_port(listener.local_addr()?.ip()).await?;
    let stack: Shared = Arc::new(Mutex::new(Stack {
        silent,
        namespace,
        own_namespace,
        control: control.clone(),
        state_file: cli.state_file.clone(),
        gateways,
        service,
        tokens,
    }));

    let started = async {
        let mut s = stack.lock().await;
        for gateway in &mut s.gateways {
            gateway.start().await?;
            Stack::pin_ports(gateway);
        }
        if let Some(service) = &mut s.service {
            service.start().await?;
        }
        s.save()?;
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = started => r,
        _ = signal() => Err(anyhow!("interrupted while starting")),
    };
    if let Err(e) = result {
        stack.lock().await.shutdown().await;
        delete_topology(&cli, &stack).await;
        remove(auth_config.as_deref());
        return Err(e);
    }

    let app = Router::new()
        .route("/state", get(get_state))
        .route("/gateways/{name}/{action}", post(gateway_action))
        .route("/service/{action}", post(service_action))
        .route("/token", post(token))
        .layer(axum::middleware::from_fn(cors))
        .with_state(stack.clone());
    {
        let state = serde_json::to_string(&stack.lock().await.state())?;
        println!("STATE {state}");
        println!("CONTROL {control}");
        println!("READY");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(signal())
        .await
        .context("serving the control API")?;
    eprintln!("[stack] stopping");
    stack.lock().await.shutdown().await;
    delete_topology(&cli, &stack).await;
    remove(auth_config.as_deref());
    Ok(())
}

/// Removes the generated gateway config file, if any.
fn remove(path: Option<&Path>) {
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

/// Deletes the exchanges, channel queues and streams (the outbound stream and each
/// channel's own) of a namespace made up by this run, so test runs do not pile quorum
/// queues and streams up in the broker. Best effort, bounded in time.
async fn delete_topology(cli: &Cli, stack: &Shared) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    use lapin::{Connection, ConnectionProperties};
    let (own, namespace) = {
        let s = stack.lock().await;
        (s.own_namespace, s.namespace.clone())
    };
    if !own {
        return;
    }
    let names = warren_protocol::amqp::Names::new(&namespace);
    let work = async {
        let conn = Connection::connect(&cli.amqp_uri, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        let mut queues = vec![names.dead_letter_queue(), names.outbound_stream()];
        for c in cli.channels.split(',').map(str::trim) {
            // Deleting a queue that is not there is not an error.
            queues.extend([names.channel_queue(c), names.channel_stream(c)]);
        }
        for q in queues {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for x in [
            names.inbound_exchange(),
            names.outbound_exchange(),
            names.gateways_exchange(),
            names.presence_exchange(),
            names.services_exchange(),
            names.dead_letter_exchange(),
        ] {
            ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        conn.close(200, "warren-stack done".into()).await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(5), work).await {
        Ok(Ok(())) => eprintln!("[stack] deleted the topology of namespace {namespace}"),
        Ok(Err(e)) => eprintln!("[stack] deleting namespace {namespace}: {e:#}"),
        Err(_) => eprintln!("[stack] deleting namespace {namespace}: timed out"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    run(Cli::parse()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_users_the_gateway_would_refuse_are_refused_at_sign_in() {
        assert!(token_user("ada").is_ok());
        assert!(token_user("a:b@c_d-e").is_ok());
        for bad in ["", "a b", "ä", "http-api", &"x".repeat(65)] {
            assert!(token_user(bad).is_err(), "{bad:?}");
        }
    }
}
