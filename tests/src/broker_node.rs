//! Private RabbitMQ nodes for fault-injection tests: one node, or a cluster of three,
//! started on this machine next to the shared broker, which they never touch.
//!
//! # How a cluster is laid out
//!
//! ```text
//! <tmp>/warren-broker-nodes/<run>/          one run (one BrokerCluster), deleted on Drop
//!   owner                                   pid of the test process (stale-run sweep)
//!   home/.erlang.cookie                     a fresh cookie shared by the run's nodes and CLI
//!   n1/ n2/ n3/                             one directory per node:
//!     rabbitmq.conf  enabled_plugins        generated config; no plugins at all
//!     mnesia/  log/  stdout.log  pid        data, logs, the beam's OS pid
//! ```
//!
//! - Node names `warren-f<run>-<i>@localhost` (Erlang short names; `localhost` resolves
//!   on every machine, and `hostname -s` is not needed), registered with the machine's
//!   one `epmd` beside `rabbit@<host>`.
//! - Each node listens for AMQP on `127.0.0.1:<free port>` and for distribution on
//!   another free port bound to loopback (`RABBITMQ_NODE_PORT`, `RABBITMQ_DIST_PORT`);
//!   `RABBITMQ_ENABLED_PLUGINS_FILE` points at an empty list, so no management,
//!   prometheus, stream or web-stomp listener is opened and nothing clashes with the
//!   shared broker's 5672, 15672, 15692, 5552, 25672.
//! - The cookie is generated per run, so the CLI calls made here cannot even
//!   authenticate against the shared node `rabbit@<host>`: stopping it by mistake is
//!   impossible.
//! - The server runs in the foreground as a child of the test process. The Debian
//!   script stays as the beam's parent (it turns signals into a graceful stop), so once
//!   the node is up its beam's own pid (the script's `beam.smp` child, from `/proc`;
//!   else `os:getpid()` asked over the CLI) is written to `n<i>/pid`:
//!   [`BrokerCluster::kill_node`] is a SIGKILL of that pid.
//!   [`BrokerCluster::stop_node`] is a graceful `rabbitmqctl stop`.
//! - Clustering: nodes 2 and 3 `stop_app`, `join_cluster <node 1>`, `start_app`. A
//!   quorum queue declared afterwards has a member on each node.
//! - `guest`/`guest` can log in from loopback only, which is where the tests connect.
//! - [`BrokerCluster::start_with_tls`]: each node also listens for AMQPS on
//!   `127.0.0.1:<free port>` ([`BrokerCluster::tls_port`]) with the caller's
//!   certificate files; clients present no certificate (`verify_none`).
//! - Drop stops every node (`rabbitmqctl stop` in parallel, SIGKILL after 20 s) and
//!   removes the run directory; a run whose test process died without dropping is
//!   swept (its beams killed, its directory removed) by the next run's start.
//!
//! Measured on the 2-core development VM (other builds running): one node is ready in
//! 5–11 s; a three-node cluster (parallel boot, then two joins) in 27–34 s; a graceful
//! stop takes 1.5–3 s; starting a stopped or killed node again 4–11 s.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to boot (or to come back after `start_app`).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one `rabbitmqctl` call may take.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a stopped or killed node's process may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the Debian package keeps the scripts that run as the calling user (the
/// `/usr/sbin` wrappers switch to the `rabbitmq` user and its home, losing our
/// environment). `RABBITMQ_SCRIPTS_DIR` overrides it.
const DEFAULT_SCRIPTS_DIR: &str = "/usr/lib/rabbitmq/bin";

/// What can go wrong starting or driving a private node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerNodeError {
    /// `rabbitmq-server` is not installed where expected.
    #[error("RabbitMQ server scripts not found in {0} (set RABBITMQ_SCRIPTS_DIR)")]
    NotInstalled(PathBuf),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node's process exited while it should be running.
    #[error("node {node} exited ({status}); last log lines:\n{log}")]
    Exited {
        /// The node name.
        node: String,
        /// Its exit status.
        status: String,
        /// The end of its stdout log.
        log: String,
    },
    /// Something took longer than its bound.
    #[error("node {node}: {what} did not finish within {after:?}")]
    Timeout {
        /// The node name.
        node: String,
        /// What was awaited.
        what: String,
        /// The bound.
        after: Duration,
    },
    /// A `rabbitmqctl` command failed.
    #[error("node {node}: `rabbitmqctl {command}` failed: {output}")]
    Ctl {
        /// The node name.
        node: String,
        /// The command.
        command: String,
        /// Its stdout and stderr.
        output: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerNodeError {
    let what = what.into();
    move |source| BrokerNodeError::Io { what, source }
}

/// Whether a node is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Booted; AMQP accepts connections.
    Running,
    /// Stopped gracefully (`rabbitmqctl stop`).
    Stopped,
    /// SIGKILLed.
    Killed,
}

/// One private node.
#[derive(Debug)]
struct BrokerNode {
    name: String,
    amqp_port: u16,
    dist_port: u16,
    /// The AMQPS listener's port, with [`BrokerCluster::start_with_tls`].
    tls_port: Option<u16>,
    dir: PathBuf,
    /// The `rabbitmq-server` script (the beam's parent).
    child: Option<Child>,
    /// The beam's OS pid, once the node is up.
    beam: Option<u32>,
    state: NodeState,
}

/// Runs a test that starts its own nodes within `limit`. Where RabbitMQ's server
/// scripts are not installed it fails saying so, or, with `WARREN_ALLOW_SKIP=1`,
/// prints that `name` is skipped ([`crate::env::cannot_check`]).
///
/// # Panics
/// When `test` panics or takes longer than `limit`, or without the server scripts.
pub async fn with_private_nodes(
    name: &str,
    limit: Duration,
    test: impl std::future::Future<Output = ()>,
) {
    if !BrokerCluster::available() {
        crate::env::cannot_check(
            name,
            &format!(
                "RabbitMQ's server scripts are not installed ({} is missing; set \
                 RABBITMQ_SCRIPTS_DIR)",
                scripts_dir().join("rabbitmq-server").display()
            ),
        );
        return;
    }
    tokio::time::timeout(limit, test)
        .await
        .expect("the test finished within its limit");
}

/// The certificate files of a TLS listener ([`BrokerCluster::start_with_tls`]), in
/// PEM, readable by the nodes (they run as the test's user).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate(s) RabbitMQ sends with its own (`ssl_options.cacertfile`).
    pub cacertfile: PathBuf,
    /// The server's certificate (`ssl_options.certfile`).
    pub certfile: PathBuf,
    /// The server's private key, unencrypted (`ssl_options.keyfile`).
    pub keyfile: PathBuf,
}

/// One private RabbitMQ node or a cluster of them, stopped and removed on Drop.
#[derive(Debug)]
pub struct BrokerCluster {
    run: String,
    dir: PathBuf,
    home: PathBuf,
    scripts: PathBuf,
    nodes: Vec<BrokerNode>,
}

impl BrokerCluster {
    /// Whether the RabbitMQ server scripts are installed, so private nodes can start.
    pub fn available() -> bool {
        scripts_dir().join("rabbitmq-server").exists()
    }

    /// Starts one node (a cluster of one).
    ///
    /// # Errors
    /// As [`BrokerCluster::start`].
    pub async fn single() -> Result<BrokerCluster, BrokerNodeError> {
        BrokerCluster::start(1).await
    }

    /// Starts `size` nodes in parallel and, for more than one, joins nodes 2.. to
    /// node 1. Every node accepts AMQP connections when this returns. On error,
    /// whatever was started is stopped and removed.
    ///
    /// # Errors
    /// [`BrokerNodeError::NotInstalled`] without RabbitMQ; otherwise the first node
    /// that failed to boot or join, with its log.
    pub async fn start(size: usize) -> Result<BrokerCluster, BrokerNodeError> {
        BrokerCluster::start_nodes(size, None).await
    }

    /// As [`BrokerCluster::start`], each node also listening for AMQPS on a port of
    /// its own ([`BrokerCluster::tls_port`]) with the certificate files `tls`; clients
    /// are not asked for a certificate.
    ///
    /// # Errors
    /// As [`BrokerCluster::start`].
    pub async fn start_with_tls(
        size: usize,
        tls: &TlsFiles,
    ) -> Result<BrokerCluster, BrokerNodeError> {
        BrokerCluster::start_nodes(size, Some(tls)).await
    }

    async fn start_nodes(
        size: usize,
        tls: Option<&TlsFiles>,
    ) -> Result<BrokerCluster, BrokerNodeError> {
        assert!(size >= 1, "a cluster has at least one node");
        let scripts = scripts_dir();
        if !scripts.join("rabbitmq-server").exists() {
            return Err(BrokerNodeError::NotInstalled(scripts));
        }
        let base = std::env::temp_dir().join("warren-broker-nodes");
        fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
        sweep_stale_runs(&base);
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let dir = base.join(&run);
        let home = dir.join("home");
        fs::create_dir_all(&home).map_err(io_err(format!("creating {}", home.display())))?;
        fs::write(dir.join("owner"), std::process::id().to_string())
            .map_err(io_err("writing the owner file"))?;
        write_cookie(&home)?;
        let mut cluster = BrokerCluster {
            run,
            dir,
            home,
            scripts,
            nodes: Vec::new(),
        };
        let mut taken = Vec::new();
        for i in 1..=size {
            let amqp_port = free_port(&taken)?;
            taken.push(amqp_port);
            let dist_port = free_port(&taken)?;
            taken.push(dist_port);
            let (tls_port, tls_conf) = match tls {
                Some(files) => {
                    let port = free_port(&taken)?;
                    taken.push(port);
                    let conf = format!(
                        "listeners.ssl.default = 127.0.0.1:{port}\n\
                         ssl_options.cacertfile = {}\n\
                         ssl_options.certfile = {}\n\
                         ssl_options.keyfile = {}\n\
                         ssl_options.verify = verify_none\n\
                         ssl_options.fail_if_no_peer_cert = false\n",
                        files.cacertfile.display(),
                        files.certfile.display(),
                        files.keyfile.display()
                    );
                    (Some(port), conf)
                }
                None => (None, String::new()),
            };
            let name = format!("warren-f{}-{i}@localhost", cluster.run);
            let dir = cluster.dir.join(format!("n{i}"));
            for sub in ["mnesia", "log"] {
                fs::create_dir_all(dir.join(sub))
                    .map_err(io_err(format!("creating {}", dir.display())))?;
            }
            // Erlang term file: no plugins at all.
            fs::write(dir.join("enabled_plugins"), "[].\n")
                .map_err(io_err("writing enabled_plugins"))?;
            fs::write(
                dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.default = 127.0.0.1:{amqp_port}\n\
                     loopback_users.guest = true\n\
                     log.console = true\n\
                     log.console.level = warning\n\
                     log.file.level = info\n\
                     {tls_conf}"
                ),
            )
            .map_err(io_err("writing rabbitmq.conf"))?;
            cluster.nodes.push(BrokerNode {
                name,
                amqp_port,
                dist_port,
                tls_port,
                dir,
                child: None,
                beam: None,
                state: NodeState::Stopped,
            });
        }
        let started = Instant::now();
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_ready(i).await?;
        }
        tracing::info!(run = %cluster.run, size, boot_ms = started.elapsed().as_millis() as u64, "private RabbitMQ nodes booted");
        for i in 1..size {
            let first = cluster.nodes[0].name.clone();
            cluster.ctl(i, &["stop_app"]).await?;
            cluster.ctl(i, &["join_cluster", &first]).await?;
            cluster.ctl(i, &["start_app"]).await?;
            cluster.wait_ready(i).await?;
        }
        tracing::info!(run = %cluster.run, size, ready_ms = started.elapsed().as_millis() as u64, "private RabbitMQ cluster ready");
        Ok(cluster)
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never: kept for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The Erlang node name of node `i` (0-based), e.g. `warren-f1a2b3c4-1@localhost`.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The AMQP port of node `i`.
    pub fn amqp_port(&self, i: usize) -> u16 {
        self.nodes[i].amqp_port
    }

    /// The AMQPS port of node `i`, when started with [`BrokerCluster::start_with_tls`].
    pub fn tls_port(&self, i: usize) -> Option<u16> {
        self.nodes[i].tls_port
    }

    /// The state of node `i`.
    pub fn state(&self, i: usize) -> NodeState {
        self.nodes[i].state
    }

    /// The AMQP URI of node `i` (guest over loopback, default vhost).
    pub fn uri(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.nodes[i].amqp_port
        )
    }

    /// Every node's URI, starting with node `first` and wrapping around: a client
    /// given this list connects to `first` and fails over to the others in order.
    pub fn uris_from(&self, first: usize) -> Vec<String> {
        (0..self.len())
            .map(|k| self.uri((first + k) % self.len()))
            .collect()
    }

    /// Stops node `i` gracefully (`rabbitmqctl stop`; clients get `connection.close`
    /// 320) and waits for its process to exit.
    ///
    /// # Errors
    /// When the command fails or the process outlives [`EXIT_TIMEOUT`] (it is then
    /// SIGKILLed, and the error still returned).
    pub async fn stop_node(&mut self, i: usize) -> Result<(), BrokerNodeError> {
        self.ctl(i, &["stop"]).await?;
        self.wait_exit(i, EXIT_TIMEOUT).await?;
        self.nodes[i].state = NodeState::Stopped;
        Ok(())
    }

    /// SIGKILLs node `i`'s beam: its sockets close at once, nothing is flushed.
    ///
    /// # Errors
    /// When the process cannot be signalled or does not exit in time.
    pub async fn kill_node(&mut self, i: usize) -> Result<(), BrokerNodeError> {
        let node = &mut self.nodes[i];
        if let Some(beam) = node.beam.take() {
            sigkill(beam);
        }
        // The script exits with its beam.
        self.wait_exit(i, EXIT_TIMEOUT).await?;
        self.nodes[i].state = NodeState::Killed;
        Ok(())
    }

    /// Starts node `i` again with its data (a cluster member rejoins its cluster) and
    /// waits until it accepts AMQP connections.
    ///
    /// # Errors
    /// When it does not boot within [`BOOT_TIMEOUT`].
    pub async fn start_node(&mut self, i: usize) -> Result<(), BrokerNodeError> {
        if self.nodes[i].state == NodeState::Running {
            return Ok(());
        }
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    /// Deletes node `i`'s data (its queues, streams, users' state: what a node that
    /// lost its disk has), so that [`BrokerCluster::start_node`] boots it empty. The
    /// node must not be running.
    ///
    /// # Errors
    /// When it is running, or its data directory cannot be removed.
    pub fn wipe_node(&mut self, i: usize) -> Result<(), BrokerNodeError> {
        let io = |source| BrokerNodeError::Io {
            what: format!("wiping node {}", self.nodes[i].name),
            source,
        };
        if self.nodes[i].state == NodeState::Running {
            return Err(io(std::io::Error::other("it is running")));
        }
        match std::fs::remove_dir_all(self.nodes[i].dir.join("mnesia")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }

    /// Runs `rabbitmqctl -n <node i> <args>` and returns its output.
    ///
    /// # Errors
    /// [`BrokerNodeError::Ctl`] when it exits non-zero, [`BrokerNodeError::Timeout`]
    /// after [`CTL_TIMEOUT`].
    pub async fn ctl(&self, i: usize, args: &[&str]) -> Result<String, BrokerNodeError> {
        let node = &self.nodes[i];
        let mut cmd = tokio::process::Command::new(self.scripts.join("rabbitmqctl"));
        cmd.arg("-n")
            .arg(&node.name)
            .args(args)
            .env("HOME", &self.home)
            .env_remove("RABBITMQ_NODENAME")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(CTL_TIMEOUT, cmd.output())
            .await
            .map_err(|_| BrokerNodeError::Timeout {
                node: node.name.clone(),
                what: format!("rabbitmqctl {}", args.join(" ")),
                after: CTL_TIMEOUT,
            })?
            .map_err(io_err("running rabbitmqctl"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            return Err(BrokerNodeError::Ctl {
                node: node.name.clone(),
                command: args.join(" "),
                output: text,
            });
        }
        Ok(text)
    }

    /// Stops every node and removes the run directory (what Drop does, awaited).
    pub async fn shutdown(mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        let scripts = self.scripts.clone();
        let home = self.home.clone();
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || teardown(&scripts, &home, &dir, nodes)).await;
    }

    fn spawn(&mut self, i: usize) -> Result<(), BrokerNodeError> {
        let scripts = self.scripts.clone();
        let home = self.home.clone();
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("stdout.log"))
            .map_err(io_err("opening the node's stdout log"))?;
        let log2 = log.try_clone().map_err(io_err("cloning a file handle"))?;
        let mut cmd = Command::new(scripts.join("rabbitmq-server"));
        // Start from a clean RabbitMQ environment: only what this node needs.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RABBITMQ_") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(&node.dir)
            .env("HOME", &home)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: a Ctrl-C meant for the test runner does not
            // reach it; Drop stops it.
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", node.name)))?;
        node.child = Some(child);
        node.beam = None;
        node.state = NodeState::Running;
        Ok(())
    }

    /// Waits until node `i` accepts AMQP connections and `await_startup` agrees.
    async fn wait_ready(&mut self, i: usize) -> Result<(), BrokerNodeError> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.nodes[i].amqp_port));
        loop {
            self.check_alive(i)?;
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(BrokerNodeError::Timeout {
                    node: self.nodes[i].name.clone(),
                    what: "boot".into(),
                    after: BOOT_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.ctl(i, &["await_startup", "--timeout", "60"]).await?;
        let script = self.nodes[i].child.as_ref().map(Child::id);
        let pid = match script.and_then(beam_of) {
            Some(pid) => pid,
            None => {
                let out = self.ctl(i, &["eval", "os:getpid()."]).await?;
                out.trim()
                    .trim_matches('"')
                    .parse()
                    .map_err(|_| BrokerNodeError::Ctl {
                        node: self.nodes[i].name.clone(),
                        command: "eval os:getpid().".into(),
                        output: out.clone(),
                    })?
            }
        };
        let node = &mut self.nodes[i];
        node.beam = Some(pid);
        let _ = fs::write(node.dir.join("pid"), pid.to_string());
        Ok(())
    }

    fn check_alive(&mut self, i: usize) -> Result<(), BrokerNodeError> {
        let node = &mut self.nodes[i];
        let Some(child) = node.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(Some(status)) => Err(BrokerNodeError::Exited {
                node: node.name.clone(),
                status: status.to_string(),
                log: log_tail(&node.dir.join("stdout.log"), 30),
            }),
            _ => Ok(()),
        }
    }

    async fn wait_exit(&mut self, i: usize, within: Duration) -> Result<(), BrokerNodeError> {
        let deadline = Instant::now() + within;
        let node = &mut self.nodes[i];
        let Some(child) = node.child.as_mut() else {
            return Ok(());
        };
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                node.child = None;
                node.beam = None;
                return Ok(());
            }
            if Instant::now() > deadline {
                if let Some(beam) = node.beam.take() {
                    sigkill(beam);
                }
                let _ = child.kill();
                let _ = child.wait();
                node.child = None;
                return Err(BrokerNodeError::Timeout {
                    node: node.name.clone(),
                    what: "exit".into(),
                    after: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for BrokerCluster {
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        if nodes.is_empty() && !self.dir.exists() {
            return;
        }
        teardown(&self.scripts, &self.home, &self.dir, nodes);
    }
}

/// Stops the nodes still running (graceful stops in parallel, SIGKILL after 20 s),
/// then removes the run directory. Blocking.
fn teardown(scripts: &Path, home: &Path, dir: &Path, mut nodes: Vec<BrokerNode>) {
    let mut stops = Vec::new();
    for node in nodes.iter().filter(|n| n.child.is_some()) {
        let stop = Command::new(scripts.join("rabbitmqctl"))
            .arg("-n")
            .arg(&node.name)
            .arg("stop")
            .env("HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(stop) = stop {
            stops.push(stop);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut running = 0;
        for node in nodes.iter_mut() {
            if let Some(child) = node.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => node.child = None,
                    Ok(None) => running += 1,
                }
            }
        }
        if running == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for node in nodes.iter_mut() {
        if let Some(beam) = node.beam.take() {
            if node.child.is_some() {
                sigkill(beam);
            }
        }
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    for mut stop in stops {
        if !matches!(stop.try_wait(), Ok(Some(_))) {
            let _ = stop.kill();
        }
        let _ = stop.wait();
    }
    let _ = fs::remove_dir_all(dir);
}

/// The beam started by the `rabbitmq-server` script `script`: its child process whose
/// executable is `beam.smp` (read from `/proc`; `None` where that is not available).
fn beam_of(script: u32) -> Option<u32> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces, so split after the ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(script) && head.contains("beam") {
            return Some(pid);
        }
    }
    None
}

/// SIGKILLs a process (by `kill`, no libc binding needed).
fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn scripts_dir() -> PathBuf {
    std::env::var_os("RABBITMQ_SCRIPTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SCRIPTS_DIR))
}

/// A fresh Erlang cookie for the run, readable by its owner only (Erlang insists).
fn write_cookie(home: &Path) -> Result<(), BrokerNodeError> {
    use std::os::unix::fs::PermissionsExt;
    let raw = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    let cookie: String = raw
        .chars()
        .map(|c| if c.is_ascii_digit() { 'Q' } else { c })
        .collect();
    let path = home.join(".erlang.cookie");
    fs::write(&path, &cookie).map_err(io_err("writing the Erlang cookie"))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400))
        .map_err(io_err("chmod 400 the Erlang cookie"))?;
    Ok(())
}

/// A port free on every interface right now, outside the ranges RabbitMQ's own tools
/// use (the CLI's distribution ports 35672–35682, the shared broker's ports).
///
/// Taken from the 10,000 ports below the kernel's ephemeral range
/// (`ip_local_port_range`) when one there is free: the node binds it seconds later,
/// and meanwhile the other tests running beside this one (`./dev test` runs two
/// binaries at once) open connections whose local ports the kernel picks from the
/// ephemeral range, so a port probed there could be taken by one of them first.
fn free_port(taken: &[u16]) -> Result<u16, BrokerNodeError> {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if low > 11_024 {
        let from = low - 10_000;
        // No random crate here: the clock's nanoseconds and this process's id vary
        // enough between tries, runs and the two lanes.
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        for _ in 0..200 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let port = u16::try_from(from + (seed >> 8) % 10_000).unwrap_or(0);
            let reserved = (35672..=35682).contains(&port)
                || [4369, 5552, 5672, 15672, 15674, 15692, 25672].contains(&port);
            if port == 0 || reserved || taken.contains(&port) {
                continue;
            }
            if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .map_err(io_err("binding a probe port"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading a probe port"))?
            .port();
        let reserved = (35672..=35682).contains(&port)
            || [4369, 5552, 5672, 15672, 15674, 15692, 25672].contains(&port);
        if !reserved && !taken.contains(&port) {
            return Ok(port);
        }
    }
    Err(BrokerNodeError::Io {
        what: "finding a free port".into(),
        source: std::io::Error::other("no usable port in 100 tries"),
    })
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes runs whose test process is gone: kills their beams (every process whose
/// command line names the run's directory) and deletes their directories.
fn sweep_stale_runs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let run_dir = entry.path();
        let owner = fs::read_to_string(run_dir.join("owner")).unwrap_or_default();
        let alive = owner
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        let fresh = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(5));
        if alive || (owner.is_empty() && fresh) {
            continue;
        }
        let run = entry.file_name().to_string_lossy().to_string();
        // The run's beams name its directory on their command line (`-home`).
        let needle = format!("warren-broker-nodes/{run}/");
        for proc_entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                sigkill(pid);
            }
        }
        let _ = fs::remove_dir_all(&run_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_avoid_the_cli_range_and_each_other() {
        let a = free_port(&[]).unwrap();
        let b = free_port(&[a]).unwrap();
        assert_ne!(a, b);
        for p in [a, b] {
            assert!(!(35672..=35682).contains(&p));
        }
    }
}
