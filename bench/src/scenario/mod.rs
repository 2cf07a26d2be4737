//! The load scenarios. Each runs once against one target (the gateway, with plain or
//! compressed sockets, raw AMQP or Web-STOMP) with
//! a given number of clients and returns that run's [`Figures`]; the runner repeats
//! runs and takes medians.
//!
//! - [`publish`]: pipelined publishes answered by acks (broker confirms).
//! - [`rpc`]: sequential requests answered by an echo service.
//! - [`fanout`]: one raw AMQP publisher, N subscribers of a broadcast.
//! - [`idle`]: many sessions opened and held.

pub mod fanout;
pub mod idle;
pub mod publish;
pub mod rpc;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;
use warren_protocol::amqp::Names;

use crate::client::{source_ip, Compression, GatewayAddr, GatewayClient};
use crate::config::{Config, ScenarioKind};
use crate::error::{BenchError, Result};
use crate::measurement::{now_us, Figures, MeasureWindow, Tally};
use crate::process_stats::CpuMeter;

/// What a scenario loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Clients speak protocol v1 to the gateway over WebSockets.
    Gateway,
    /// The same clients offering permessage-deflate (RFC 7692), which they require the
    /// gateway to accept; the started gateway gets `--permessage-deflate=true` (plain
    /// `gateway` clients offer nothing, so they stay uncompressed in the same run).
    GatewayDeflate,
    /// The same work done by lapin clients straight against RabbitMQ.
    Raw,
    /// RabbitMQ's own Web-STOMP plugin (rpc and fanout): STOMP 1.2 over WebSocket;
    /// fanout subscribers on `/exchange/<ns>.warren.out/<channel>.all`, rpc requests
    /// sent to `/exchange/<ns>.warren.in/<channel>` with a `/temp-queue/` reply-to.
    WebStomp,
}

impl Target {
    /// The target's name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Target::Gateway => "gateway",
            Target::GatewayDeflate => "gateway+deflate",
            Target::Raw => "raw amqp",
            Target::WebStomp => "web-stomp",
        }
    }

    /// Whether clients of this target go through the gateway.
    pub fn is_gateway(self) -> bool {
        matches!(self, Target::Gateway | Target::GatewayDeflate)
    }

    /// What the gateway clients of this target offer.
    pub fn compression(self) -> Compression {
        match self {
            Target::GatewayDeflate => Compression::Deflate,
            _ => Compression::None,
        }
    }

    /// Whether this target has a client for `scenario` (Web-STOMP: rpc and fanout).
    pub fn serves(self, scenario: ScenarioKind) -> bool {
        match self {
            Target::Gateway | Target::GatewayDeflate | Target::Raw => true,
            Target::WebStomp => matches!(scenario, ScenarioKind::Rpc | ScenarioKind::Fanout),
        }
    }
}

/// Everything a scenario needs: options, where the gateway is, the namespace, and an
/// AMQP connection for set-up and clean-up.
pub struct Env {
    /// The command line.
    pub config: Config,
    /// Where the gateway listens (none when only raw AMQP is loaded).
    pub gateway: Option<GatewayAddr>,
    /// The gateway's process id, for CPU and memory figures.
    pub gateway_pid: Option<u32>,
    /// AMQP names of this run's namespace.
    pub names: Names,
    /// Connection used for set-up and clean-up (not for load).
    pub amqp: Arc<Connection>,
    /// Permits of clients setting up at once (`--setup-concurrency`).
    pub setup: Arc<Semaphore>,
}

/// Eight random hex digits: makes message ids and queue names unique to one run (the
/// demo service remembers message ids for 10 minutes).
pub fn run_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Shared handle to the environment.
pub type SharedEnv = Arc<Env>;

impl Env {
    /// A fresh measurement window per the options.
    pub fn window(&self) -> MeasureWindow {
        MeasureWindow::starting_in(
            self.config.warmup,
            self.config.duration,
            self.config.messages,
        )
    }

    /// Opens one load connection named `name` ([`crate::amqp::connect_load`] with this
    /// run's URI, frame size and `--op-timeout`).
    pub async fn connect_load(&self, name: &str) -> crate::error::Result<lapin::Connection> {
        let cfg = &self.config;
        crate::amqp::connect_load(
            &cfg.amqp_uri,
            name,
            crate::amqp::load_frame_max(cfg.size),
            cfg.op_timeout,
        )
        .await
    }

    /// Waits for a turn to set a client up (`--setup-concurrency`); set-up ends when
    /// the permit is dropped.
    pub async fn setup_permit(&self) -> SemaphorePermit<'_> {
        self.setup
            .acquire()
            .await
            .expect("the set-up semaphore is never closed")
    }

    /// Connects the `i`-th client of `target` to the gateway during a set-up turn
    /// ([`Env::setup_permit`], returned: set-up ends when it is dropped).
    ///
    /// # Errors
    /// As [`GatewayClient::connect`]; `Config` without a gateway.
    pub async fn gateway_client(
        &self,
        target: Target,
        i: usize,
    ) -> Result<(GatewayClient, SemaphorePermit<'_>)> {
        let setup = self.setup_permit().await;
        let cfg = &self.config;
        let client = GatewayClient::connect(
            self.gateway()?,
            source_ip(i, cfg.source_ips),
            cfg.op_timeout,
            target.compression(),
        )
        .await?;
        Ok((client, setup))
    }

    /// When the workers of a run measured over `window` must have finished: the end
    /// of the window plus `--op-timeout` × 3 (the last answer, then closing).
    pub fn join_deadline(&self, window: &MeasureWindow) -> tokio::time::Instant {
        let left = Duration::from_micros(window.end_us.saturating_sub(now_us()));
        tokio::time::Instant::now() + left + self.config.op_timeout * 3
    }

    /// Where the gateway listens.
    ///
    /// # Errors
    /// `Config` when no gateway is loaded in this run.
    pub fn gateway(&self) -> Result<&GatewayAddr> {
        self.gateway
            .as_ref()
            .ok_or_else(|| BenchError::Config("no gateway in this run (--targets)".into()))
    }
}

/// A JSON message of about `size` bytes; with `stamp`, it carries `"t"`, the microseconds
/// since the benchmark's time origin when it was made (for end-to-end latency).
pub fn message(size: usize, stamp: Option<u64>) -> String {
    let head = match stamp {
        Some(t) => format!("{{\"t\":{t},\"pad\":\""),
        None => "{\"pad\":\"".to_string(),
    };
    padded(size, head)
}

/// A fan-out message of about `size` bytes: the stamp `"t"` as in [`message`] and
/// `"n"`, the publish number (from 1), so a subscriber tells messages apart whatever
/// its protocol passes on of the message's properties.
pub fn numbered_message(size: usize, n: u64, stamp: u64) -> String {
    padded(size, format!("{{\"t\":{stamp},\"n\":{n},\"pad\":\""))
}

/// Reads the `"t"` stamp and `"n"` publish number of a [`numbered_message`].
pub fn stamp_and_number_of(body: &[u8]) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Numbered {
        t: u64,
        n: u64,
    }
    serde_json::from_slice::<Numbered>(body)
        .ok()
        .map(|m| (m.t, m.n))
}

/// `head` (an open JSON object whose last member is an open `"pad"` string) padded
/// and closed to about `size` bytes.
fn padded(size: usize, head: String) -> String {
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// What the gateway used over a measured window.
#[derive(Debug, Clone, Copy)]
pub struct GatewayUse {
    /// CPU, percent of one core.
    pub cpu_pct: f64,
    /// Bytes this process's gateway clients read off their sockets
    /// ([`crate::client::bytes_received`]).
    pub bytes_received: u64,
}

/// Measures the gateway's CPU, and the bytes it sent to this process's clients, over
/// the window, in the background.
pub fn watch_use(pid: Option<u32>, window: MeasureWindow) -> JoinHandle<Option<GatewayUse>> {
    tokio::spawn(async move {
        let pid = pid?;
        let until = |t: u64| Duration::from_micros(t.saturating_sub(now_us()));
        tokio::time::sleep(until(window.start_us)).await;
        let meter = CpuMeter::start(pid).ok()?;
        let received = crate::client::bytes_received();
        tokio::time::sleep(until(window.end_us)).await;
        Some(GatewayUse {
            cpu_pct: meter.percent().ok()?,
            bytes_received: crate::client::bytes_received().saturating_sub(received),
        })
    })
}

/// Watches the gateway's use over `window` when a gateway target is loaded.
pub fn watch_gateway_use(
    env: &SharedEnv,
    target: Target,
    window: MeasureWindow,
) -> JoinHandle<Option<GatewayUse>> {
    watch_use(
        target.is_gateway().then_some(env.gateway_pid).flatten(),
        window,
    )
}

/// Runs one worker per client (the publish and rpc scenarios, each worker the
/// scenario's client for `target`), spawned with the client's index and the measured
/// window, joined (each at most `--op-timeout` × 3 after the window: see
/// [`join_workers`]), their sessions forgotten, and the figures of the window taken,
/// with the gateway's CPU.
///
/// # Errors
/// The first worker's error, or `Timeout` when workers were still running at the end.
pub async fn run_workers<W, F>(
    env: &SharedEnv,
    target: Target,
    clients: usize,
    worker: W,
) -> Result<Figures>
where
    W: Fn(SharedEnv, usize, MeasureWindow) -> F,
    F: Future<Output = Result<WorkerOutcome>> + Send + 'static,
{
    let window = env.window();
    let used = watch_gateway_use(env, target, window);
    let handles = (0..clients)
        .map(|i| tokio::spawn(worker(env.clone(), i, window)))
        .collect();
    let (tally, _sessions) = join_workers(handles, env.join_deadline(&window)).await;
    let mut figures = Figures::from_tally(tally?, &window);
    figures.add_gateway_use(used.await.ok().flatten());
    Ok(figures)
}

/// What a worker hands back: its tally and the session it used (if any).
pub struct WorkerOutcome {
    /// Operations counted.
    pub tally: Tally,
    /// The gateway session id, for clean-up.
    pub session: Option<String>,
}

/// Waits for every worker until `deadline`; a failed worker fails the run with its
/// error, and workers still running at the deadline are aborted and fail it with
/// `Timeout` (every wait inside a worker is bounded too: this is the backstop for
/// one that is not, e.g. inside lapin).
///
/// # Errors
/// The first worker error, `Unexpected` when a worker panicked, `Timeout` when a
/// worker was still running at `deadline`.
pub async fn join_workers(
    handles: Vec<JoinHandle<Result<WorkerOutcome>>>,
    deadline: tokio::time::Instant,
) -> (Result<Tally>, Vec<String>) {
    let mut total = Tally::default();
    let mut sessions = Vec::new();
    let mut first_err = None;
    let mut stuck = 0usize;
    for mut h in handles {
        let joined = match tokio::time::timeout_at(deadline, &mut h).await {
            Ok(joined) => joined,
            Err(_) => {
                h.abort();
                stuck += 1;
                continue;
            }
        };
        match joined {
            Ok(Ok(o)) => {
                total.merge(o.tally);
                sessions.extend(o.session);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(BenchError::Unexpected(format!("worker panicked: {e}")));
            }
        }
    }
    if stuck > 0 {
        tracing::warn!(stuck, "workers still running at the deadline were aborted");
        first_err.get_or_insert(BenchError::Timeout("workers to finish (some were aborted)"));
    }
    match first_err {
        Some(e) => (Err(e), sessions),
        None => (Ok(total), sessions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_gateway_targets_serve_every_scenario_and_only_one_offers_deflate() {
        use clap::ValueEnum;
        for s in [
            ScenarioKind::Publish,
            ScenarioKind::Rpc,
            ScenarioKind::Fanout,
            ScenarioKind::Idle,
        ] {
            assert!(Target::Gateway.serves(s) && Target::GatewayDeflate.serves(s));
        }
        assert!(Target::Gateway.is_gateway() && Target::GatewayDeflate.is_gateway());
        assert!(!Target::Raw.is_gateway() && !Target::WebStomp.is_gateway());
        assert_eq!(Target::Gateway.compression(), Compression::None);
        assert_eq!(Target::GatewayDeflate.compression(), Compression::Deflate);
        assert_eq!(
            Target::from_str("gateway-deflate", false),
            Ok(Target::GatewayDeflate)
        );
        assert_eq!(Target::GatewayDeflate.name(), "gateway+deflate");
    }

    #[test]
    fn messages_have_the_asked_size_and_carry_their_stamp() {
        let m = message(128, Some(42));
        assert_eq!(m.len(), 128);
        assert!(m.starts_with("{\"t\":42,"), "{m}");
        assert_eq!(message(64, None).len(), 64);
        assert!(serde_json::from_str::<serde_json::Value>(&message(3, None)).is_ok());
        let m = numbered_message(128, 7, 42);
        assert_eq!(m.len(), 128);
        assert_eq!(stamp_and_number_of(m.as_bytes()), Some((42, 7)));
        assert_eq!(stamp_and_number_of(message(128, Some(42)).as_bytes()), None);
    }
}
