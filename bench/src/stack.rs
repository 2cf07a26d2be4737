//! The processes under test: a gateway and the demo service started by the benchmark
//! with a fresh namespace, or an external gateway given by URL (and pid).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::GatewayAddr;
use crate::config::{Config, Responder};
use crate::error::{BenchError, Result};

/// How long a process may take to print `READY`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A started child process.
struct Process {
    what: &'static str,
    child: Child,
}

impl Process {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(process = self.what, "did not stop on SIGTERM; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// The gateway (and demo service) under load.
pub struct Stack {
    /// Namespace of every exchange and queue of this run.
    pub namespace: String,
    /// Where the gateway listens (none when only raw AMQP is loaded).
    pub gateway: Option<GatewayAddr>,
    /// The gateway's process id, when known (memory and CPU figures need it).
    pub gateway_pid: Option<u32>,
    /// Whether this stack started the gateway (so it may restart it).
    owned: bool,
    gateway_proc: Option<Process>,
    service_proc: Option<Process>,
    config: Config,
}

impl Stack {
    /// Starts the gateway and, for `--responder demo`, the demo service; or attaches to
    /// `--gateway-url`.
    ///
    /// # Errors
    /// `Stack` when a process does not start or print `READY` in time.
    pub async fn start(config: &Config) -> Result<Self> {
        if let Some(url) = &config.gateway_url {
            return Ok(Stack {
                namespace: config.namespace.clone().unwrap_or_default(),
                gateway: Some(
                    GatewayAddr::resolve(url)
                        .await?
                        .with_jwt(config.auth_jwt_secret.as_deref()),
                ),
                gateway_pid: config.gateway_pid,
                owned: false,
                gateway_proc: None,
                service_proc: None,
                config: config.clone(),
            });
        }
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| format!("bench-{}", crate::scenario::run_tag()));
        if let Some(dir) = config.stack_log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (gateway_proc, gateway) = if config.loads_gateway() {
            let (p, a) = start_gateway(config, &namespace).await?;
            (Some(p), Some(a))
        } else {
            (None, None)
        };
        let service_proc = if config.responder == Responder::Demo {
            Some(start_service(config, &namespace).await?)
        } else {
            None
        };
        Ok(Stack {
            namespace,
            gateway,
            gateway_pid: gateway_proc.as_ref().and_then(Process::pid),
            owned: true,
            gateway_proc,
            service_proc,
            config: config.clone(),
        })
    }

    /// Restarts the gateway (same namespace) so a measurement starts from a fresh
    /// process; does nothing for an external gateway. Returns whether it restarted.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn restart_gateway(&mut self) -> Result<bool> {
        if !self.owned || self.gateway_proc.is_none() {
            return Ok(false);
        }
        if let Some(p) = self.gateway_proc.take() {
            p.stop(Duration::from_secs(10)).await;
        }
        let (proc_, addr) = start_gateway(&self.config, &self.namespace).await?;
        self.gateway_pid = proc_.pid();
        self.gateway = Some(addr);
        self.gateway_proc = Some(proc_);
        Ok(true)
    }

    /// Whether this stack started its own gateway (and made up its namespace).
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Stops what this stack started.
    pub async fn stop(mut self) {
        if let Some(p) = self.service_proc.take() {
            p.stop(Duration::from_secs(5)).await;
        }
        if let Some(p) = self.gateway_proc.take() {
            p.stop(Duration::from_secs(10)).await;
        }
    }
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?)
}

fn command(bin: &Path, log: &Path) -> Result<Command> {
    let mut cmd = Command::new(bin);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(log)?)
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    Ok(cmd)
}

/// Starts the gateway and reads its `LISTENING <addr> <ch|*>` lines up to `READY`.
async fn start_gateway(config: &Config, namespace: &str) -> Result<(Process, GatewayAddr)> {
    let what = "gateway";
    let mut cmd = command(&config.gateway_bin, &config.stack_log)?;
    cmd.args(["--amqp-uri", &config.amqp_uri])
        .args(["--namespace", namespace])
        .args(["--node", "bench-gw"])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--channels", &config.channels().join(",")])
        .args(&config.gateway_args);
    if let Some(secret) = &config.auth_jwt_secret {
        // Through the environment: kept out of the process list.
        cmd.args(["--auth-mode", "jwt"])
            .env("WARREN_AUTH_JWT_SECRET", secret);
    }
    if config.loads_deflate() {
        // Only clients that offer it get compression: plain `gateway` clients of the
        // same run stay on the uncompressed socket.
        cmd.arg("--permessage-deflate=true");
    }
    let mut child = cmd.spawn().map_err(|e| BenchError::Stack {
        what,
        why: format!("{}: {e}", config.gateway_bin.display()),
    })?;
    let lines = wait_ready(what, &mut child).await?;
    let listen = lines
        .iter()
        .filter_map(|l| l.strip_prefix("LISTENING "))
        .map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next().unwrap_or(""), parts.next().unwrap_or("*"))
        })
        .min_by_key(|(_, ch)| *ch != "*")
        .map(|(addr, _)| addr.to_string())
        .ok_or_else(|| BenchError::Stack {
            what,
            why: "printed READY without a LISTENING line".into(),
        })?;
    let url = if listen.starts_with("ws://") {
        listen
    } else {
        format!("ws://{listen}/ws")
    };
    let addr = GatewayAddr::resolve(&url)
        .await?
        .with_jwt(config.auth_jwt_secret.as_deref());
    tracing::info!(url = %addr.url, pid = ?child.id(), "gateway ready");
    Ok((Process { what, child }, addr))
}

async fn start_service(config: &Config, namespace: &str) -> Result<Process> {
    let what = "demo service";
    let mut cmd = command(&config.service_bin, &config.stack_log)?;
    cmd.args(["--amqp-uri", &config.amqp_uri])
        .args(["--namespace", namespace]);
    let mut child = cmd.spawn().map_err(|e| BenchError::Stack {
        what,
        why: format!("{}: {e}", config.service_bin.display()),
    })?;
    wait_ready(what, &mut child).await?;
    tracing::info!(pid = ?child.id(), "demo service ready");
    Ok(Process { what, child })
}

/// Reads stdout lines until `READY`, returns them, and keeps draining stdout afterwards
/// so the child never blocks on a full pipe.
async fn wait_ready(what: &'static str, child: &mut Child) -> Result<Vec<String>> {
    let stdout = child.stdout.take().ok_or_else(|| BenchError::Stack {
        what,
        why: "no stdout".into(),
    })?;
    let mut reader = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let read = async {
        while let Some(line) = reader.next_line().await? {
            let line = line.trim().to_string();
            if line == "READY" {
                return Ok(true);
            }
            seen.push(line);
        }
        Ok::<bool, std::io::Error>(false)
    };
    match tokio::time::timeout(READY_TIMEOUT, read).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            return Err(BenchError::Stack {
                what,
                why: format!("exited before READY (see the stack log); said {seen:?}"),
            })
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(BenchError::Stack {
                what,
                why: format!("no READY within {READY_TIMEOUT:?}"),
            })
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
    Ok(seen)
}
