//! The command line: which scenarios to run, how hard, and against what.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioKind {
    /// N clients `publish` as fast as acks allow (pipelined with `--window`).
    Publish,
    /// N clients doing sequential `request` against the echo channel.
    Rpc,
    /// One publisher, N subscribers on a broadcast channel.
    Fanout,
    /// N sessions opened and held idle.
    Idle,
}

impl ScenarioKind {
    /// The scenario's name as printed.
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Publish => "publish",
            ScenarioKind::Rpc => "rpc",
            ScenarioKind::Fanout => "fanout",
            ScenarioKind::Idle => "idle",
        }
    }
}

/// Who answers the rpc scenario's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Responder {
    /// The demo service (`warren-demo-service`), started with the stack.
    Demo,
    /// An echo responder inside warren-bench (raw lapin), for both gateway and baseline.
    Builtin,
    /// Something already running consumes the echo queue; start nothing.
    External,
}

/// `warren-bench`: loads a Warren gateway the way real traffic would and measures the
/// same work done by raw AMQP clients against RabbitMQ in the same run.
#[derive(Debug, Clone, Parser, Serialize)]
// A later flag overrides an earlier one, so `bench/run.sh --runs 3` overrides the
// script's own `--runs 5`.
#[command(name = "warren-bench", version, about, args_override_self = true)]
pub struct Config {
    /// Scenarios to run, comma-separated (idle runs first: it restarts the gateway).
    #[arg(long, value_delimiter = ',', default_value = "idle,publish,rpc,fanout")]
    pub scenarios: Vec<ScenarioKind>,
    /// Client counts to sweep for publish, rpc and fanout (subscribers), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub clients: Vec<usize>,
    /// Subscriber counts for fanout alone, comma-separated, in place of `--clients`
    /// (the standard set adds 100, where issue 13 judges fan-out against Web-STOMP).
    #[arg(long, value_delimiter = ',')]
    pub fanout_clients: Option<Vec<usize>>,
    /// Runs per figure; each figure reported is the median of the runs.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Measured time of one run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Unmeasured load before the measured time of each run.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    /// Stop each client after this many messages (0: only the duration bounds a run).
    #[arg(long, default_value_t = 0)]
    pub messages: u64,
    /// Approximate size of each application message in bytes (JSON).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Publishes in flight per client in the publish scenario.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Messages the fanout publisher may be ahead of the slowest subscriber. The
    /// default is the gateway's default delivery window (its prefetch per session), so
    /// neither path is held back by the publisher: throughput is measured at saturation
    /// and latency includes the queueing that saturation brings.
    #[arg(long, default_value_t = 256)]
    pub fanout_window: usize,
    /// Deliveries (and replies) acknowledged per `ack_deliveries` / AMQP multiple-ack.
    #[arg(long, default_value_t = 32)]
    pub ack_every: u64,
    /// Sessions to open in the idle scenario.
    #[arg(long, default_value_t = 10_000)]
    pub idle_sessions: usize,
    /// How long the idle scenario measures the gateway's CPU with every session open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub idle_window: Duration,
    /// Sessions being opened at once in the idle scenario.
    #[arg(long, default_value_t = 128)]
    pub idle_concurrency: usize,
    /// Clients setting up at once (connecting, declaring, subscribing) in the publish,
    /// rpc and fanout scenarios, for every target. RabbitMQ closes an AMQP connection
    /// whose handshake takes over 10 s: 5,000 lapin connections opened at once on two
    /// cores lost 2,600 that way. Set-up is not measured.
    #[arg(long, default_value_t = 128)]
    pub setup_concurrency: usize,
    /// Spread client sockets over 127.0.0.1 .. 127.0.0.N (so ports do not run out).
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// What to load, comma-separated: the gateway, the gateway with clients offering
    /// permessage-deflate (`gateway-deflate`: the started gateway then runs with
    /// `--permessage-deflate=true`; plain `gateway` clients stay uncompressed), the
    /// raw-AMQP baseline, RabbitMQ's Web-STOMP plugin (rpc and fanout only), or several
    /// (without a gateway target none is started and idle is skipped; idle runs once per
    /// gateway target).
    #[arg(long, value_delimiter = ',', default_value = "gateway,raw")]
    pub targets: Vec<crate::scenario::Target>,
    /// Sessions authenticate with JSON Web Tokens signed with this HMAC secret (HS256,
    /// at least 32 bytes), each client as a user of its own (`bench-<n>`, every right);
    /// a gateway the bench starts runs with `--auth-mode jwt` and this secret. Without
    /// it the started gateway runs with `auth.mode = "none"` and clients send no token.
    #[arg(long, env = "WARREN_BENCH_AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,
    /// RabbitMQ Web-STOMP endpoint for the `web-stomp` target (plugin
    /// `rabbitmq_web_stomp`; `./dev` enables it).
    #[arg(long, default_value = "ws://127.0.0.1:15674/ws")]
    pub web_stomp_url: String,
    /// RabbitMQ, for the stack and the baseline.
    #[arg(long, env = "AMQP_ADDR", default_value = "amqp://127.0.0.1:5672/%2f")]
    pub amqp_uri: String,
    /// Namespace of every exchange and queue (default: a fresh `bench-<random>` when
    /// starting the stack, none with `--gateway-url`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Load this running gateway (`ws://host:port/ws`) instead of starting one.
    #[arg(long)]
    pub gateway_url: Option<String>,
    /// Process id of the gateway given with `--gateway-url`, for memory and CPU figures.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Gateway binary started when no `--gateway-url` is given.
    #[arg(long, default_value = "target/release/warren-gateway")]
    pub gateway_bin: PathBuf,
    /// Extra argument for the started gateway (repeatable), e.g.
    /// `--gateway-arg=--consumer-channels=8`.
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// Demo service binary started for `--responder demo`.
    #[arg(long, default_value = "target/release/warren-demo-service")]
    pub service_bin: PathBuf,
    /// Who answers rpc requests.
    #[arg(long, value_enum, default_value = "demo")]
    pub responder: Responder,
    /// Consumers of the builtin echo responder.
    #[arg(long, default_value_t = 4)]
    pub responder_consumers: usize,
    /// Prefetch of each builtin echo responder consumer.
    #[arg(long, default_value_t = 16)]
    pub responder_prefetch: u16,
    /// Channel the publish scenario writes to. Nothing consumes it (the queue is purged
    /// after each run), so only the path client → gateway → broker confirm is measured;
    /// the started gateway serves it next to chat, voice, tickets and echo.
    #[arg(long, default_value = "bench")]
    pub publish_channel: String,
    /// Channel whose service echoes requests.
    #[arg(long, default_value = "echo")]
    pub rpc_channel: String,
    /// Broadcast channel of the fanout scenario.
    #[arg(long, default_value = "chat")]
    pub fanout_channel: String,
    /// Longest wait for one answer (ack, reply, delivery) before a run gives up.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "as_secs")]
    pub op_timeout: Duration,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput and p99 against client count (SVG) here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Write the tables as Markdown here (for BENCHMARKS.md).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Exit with an error when a run failed or completed nothing (for smoke tests).
    #[arg(long)]
    pub strict: bool,
    /// Where the gateway's and demo service's output goes.
    #[arg(long, default_value = "target/warren-bench/stack.log")]
    pub stack_log: PathBuf,
}

impl Config {
    /// Whether the gateway is loaded at all, plain or with deflate (otherwise none is
    /// started).
    pub fn loads_gateway(&self) -> bool {
        self.targets.iter().any(|t| t.is_gateway())
    }

    /// The client counts `scenario` sweeps: `--fanout-clients` for fanout when given,
    /// `--clients` otherwise.
    pub fn clients_of(&self, scenario: ScenarioKind) -> &[usize] {
        match (&self.fanout_clients, scenario) {
            (Some(fanout), ScenarioKind::Fanout) => fanout,
            _ => &self.clients,
        }
    }

    /// Whether clients offering permessage-deflate are among the targets (the started
    /// gateway must then accept it).
    pub fn loads_deflate(&self) -> bool {
        self.targets
            .contains(&crate::scenario::Target::GatewayDeflate)
    }

    /// Every channel the gateway must serve: the defaults and the scenarios' channels.
    pub fn channels(&self) -> Vec<String> {
        let mut all: Vec<String> = ["chat", "voice", "tickets", "echo"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for c in [
            &self.publish_channel,
            &self.rpc_channel,
            &self.fanout_channel,
        ] {
            if !all.contains(c) {
                all.push(c.clone());
            }
        }
        all
    }

    /// Checks the options once, before anything starts.
    ///
    /// # Errors
    /// `Config` when a count is zero or options contradict each other.
    pub fn validate(&self) -> crate::error::Result<()> {
        use crate::error::BenchError::Config as Bad;
        if self.runs == 0 {
            return Err(Bad("--runs must be at least 1".into()));
        }
        if self.clients.is_empty() || self.clients.contains(&0) {
            return Err(Bad("--clients needs counts of at least 1".into()));
        }
        if self
            .fanout_clients
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.contains(&0))
        {
            return Err(Bad("--fanout-clients needs counts of at least 1".into()));
        }
        if self.window == 0 || self.fanout_window == 0 || self.ack_every == 0 {
            return Err(Bad("windows and --ack-every must be at least 1".into()));
        }
        if self.targets.is_empty() {
            return Err(Bad(
                "--targets needs gateway, gateway-deflate, raw or web-stomp".into(),
            ));
        }
        if self.setup_concurrency == 0 || self.idle_concurrency == 0 {
            return Err(Bad(
                "--setup-concurrency and --idle-concurrency must be at least 1".into(),
            ));
        }
        if self.source_ips == 0 {
            return Err(Bad("--source-ips must be at least 1".into()));
        }
        if self.gateway_pid.is_some() && self.gateway_url.is_none() {
            return Err(Bad("--gateway-pid only goes with --gateway-url".into()));
        }
        Ok(())
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds.
///
/// # Errors
/// When the text is not a number with one of those units.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (num, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 5s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}` (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_or_without_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn defaults_are_the_standard_set() {
        let c = Config::parse_from(["warren-bench"]);
        assert_eq!(c.runs, 3);
        assert_eq!(c.idle_sessions, 10_000);
        assert!(c.validate().is_ok());
        assert!(Config::parse_from(["warren-bench", "--runs", "0"])
            .validate()
            .is_err());
    }

    #[test]
    fn fanout_sweeps_its_own_subscriber_counts_only_when_given_them() {
        let c = Config::parse_from(["warren-bench", "--clients", "1,8"]);
        assert_eq!(c.clients_of(ScenarioKind::Fanout), [1, 8]);
        let c = Config::parse_from([
            "warren-bench",
            "--clients",
            "1,8",
            "--fanout-clients",
            "1,100",
        ]);
        assert_eq!(c.clients_of(ScenarioKind::Fanout), [1, 100]);
        assert_eq!(c.clients_of(ScenarioKind::Rpc), [1, 8]);
        assert_eq!(c.clients_of(ScenarioKind::Publish), [1, 8]);
        assert!(c.validate().is_ok());
        let zero = Config::parse_from(["warren-bench", "--fanout-clients", "0,100"]);
        let err = zero.validate().unwrap_err().to_string();
        assert!(err.contains("--fanout-clients"), "{err}");
    }

    #[test]
    fn either_gateway_target_loads_the_gateway() {
        let only = |t: &str| Config::parse_from(["warren-bench", "--targets", t]);
        assert!(only("gateway").loads_gateway() && !only("gateway").loads_deflate());
        let deflate = only("gateway-deflate");
        assert!(deflate.loads_gateway() && deflate.loads_deflate());
        assert!(deflate.validate().is_ok());
        assert!(!only("raw,web-stomp").loads_gateway());
        let both = only("gateway,gateway-deflate,raw");
        assert!(both.loads_gateway() && both.loads_deflate());
        let mut none = only("raw");
        none.targets.clear();
        let err = none.validate().unwrap_err().to_string();
        assert!(err.contains("gateway-deflate"), "{err}");
    }

    #[test]
    fn a_later_flag_overrides_an_earlier_one() {
        let c = Config::parse_from(["warren-bench", "--runs", "5", "--runs", "2"]);
        assert_eq!(c.runs, 2);
    }
}
