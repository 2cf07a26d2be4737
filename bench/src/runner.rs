//! Runs the chosen scenarios: starts (or attaches to) the stack, sweeps client counts,
//! alternates gateway and raw-AMQP runs so drift hits both alike, takes medians, and
//! cleans up the namespace.

use std::sync::Arc;
use std::time::Duration;

use warren_protocol::amqp::Names;

use crate::config::{Config, Responder, ScenarioKind};
use crate::error::Result;
use crate::measurement::Figures;
use crate::process_stats::Machine;
use crate::report::{IdleResult, Report, ScenarioResult};
use crate::responder::EchoResponder;
use crate::scenario::idle::IdleFigures;
use crate::scenario::{fanout, idle, publish, rpc, Env, SharedEnv, Target};
use crate::stack::Stack;

/// Pause between runs, so deletions and acks of one run settle before the next.
const SETTLE: Duration = Duration::from_millis(500);

/// Runs the benchmark described by `config` and returns its report.
///
/// # Errors
/// When the options are invalid, the stack does not start or RabbitMQ cannot be
/// reached. A failing run does not stop the benchmark: it is recorded in the report.
pub async fn run(config: Config) -> Result<Report> {
    config.validate()?;
    crate::measurement::origin();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let mut stack = Stack::start(&config).await?;
    let amqp = Arc::new(crate::amqp::connect(&config.amqp_uri, "warren-bench-control").await?);
    let names = Names::new(&stack.namespace);
    let responder = if config.responder == Responder::Builtin {
        Some(
            EchoResponder::start(
                &config.amqp_uri,
                &names,
                &config.rpc_channel,
                config.responder_consumers,
                config.responder_prefetch,
            )
            .await?,
        )
    } else {
        None
    };
    let mut report = Report {
        tool: concat!("warren-bench ", env!("CARGO_PKG_VERSION")).into(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: Machine::describe(),
        config: config.clone(),
        namespace: stack.namespace.clone(),
        fanout_publisher: format!(
            "raw lapin publisher to {} with key {}.all (persistent, with confirms waited for before it closes), \
             at most --fanout-window messages ahead of the slowest subscriber",
            names.outbound_exchange(),
            config.fanout_channel
        ),
        results: Vec::new(),
        idle: Vec::new(),
        ratios: Vec::new(),
        targets: Vec::new(),
    };
    let setup = Arc::new(tokio::sync::Semaphore::new(config.setup_concurrency));
    let env_of = |stack: &Stack| -> SharedEnv {
        Arc::new(Env {
            config: config.clone(),
            gateway: stack.gateway.clone(),
            gateway_pid: stack.gateway_pid,
            names: names.clone(),
            amqp: amqp.clone(),
            setup: setup.clone(),
        })
    };
    for &scenario in &config.scenarios {
        if scenario == ScenarioKind::Idle {
            // Once per gateway target loaded (none without one).
            for target in [Target::Gateway, Target::GatewayDeflate] {
                if config.targets.contains(&target) {
                    let idle = run_idle(&config, target, &mut stack, &env_of).await;
                    report.idle.push(idle);
                }
            }
            continue;
        }
        let env = env_of(&stack);
        let targets: Vec<Target> = [
            Target::Gateway,
            Target::GatewayDeflate,
            Target::Raw,
            Target::WebStomp,
        ]
        .into_iter()
        .filter(|t| config.targets.contains(t))
        .filter(|t| t.serves(scenario))
        .collect();
        for &clients in config.clients_of(scenario) {
            let mut results: Vec<ScenarioResult> = targets
                .iter()
                .map(|&target| ScenarioResult {
                    scenario,
                    target,
                    clients,
                    runs: Vec::new(),
                    median: None,
                    failures: Vec::new(),
                })
                .collect();
            for run in 1..=config.runs {
                for result in results.iter_mut() {
                    let outcome = run_once(&env, scenario, result.target, clients).await;
                    match outcome {
                        Ok(f) => {
                            tracing::info!(
                                scenario = scenario.name(),
                                target = result.target.name(),
                                clients,
                                run,
                                ops_per_s = format!("{:.0}", f.throughput),
                                p50_ms = format!("{:.2}", f.p50_ms),
                                p99_ms = format!("{:.2}", f.p99_ms),
                                errors = f.errors,
                                "run done"
                            );
                            result.runs.push(f);
                        }
                        Err(e) => {
                            tracing::warn!(
                                scenario = scenario.name(),
                                target = result.target.name(),
                                clients,
                                run,
                                error = %e,
                                "run failed"
                            );
                            result.failures.push(e.to_string());
                        }
                    }
                    tokio::time::sleep(SETTLE).await;
                }
            }
            for mut result in results {
                if !result.runs.is_empty() {
                    result.median = Some(Figures::median(&result.runs));
                }
                report.results.push(result);
            }
        }
    }
    if let Some(r) = responder {
        r.stop().await;
    }
    let owned = stack.owned();
    stack.stop().await;
    if owned {
        crate::amqp::delete_namespace(
            &amqp,
            &names,
            &[
                "chat",
                "voice",
                "tickets",
                "echo",
                config.publish_channel.as_str(),
                config.rpc_channel.as_str(),
                config.fanout_channel.as_str(),
            ],
        )
        .await;
    }
    crate::amqp::close(&amqp, Duration::from_secs(10)).await;
    report.conclude();
    Ok(report)
}

async fn run_once(
    env: &SharedEnv,
    scenario: ScenarioKind,
    target: Target,
    clients: usize,
) -> Result<Figures> {
    match scenario {
        ScenarioKind::Publish => publish::run(env, target, clients).await,
        ScenarioKind::Rpc => rpc::run(env, target, clients).await,
        ScenarioKind::Fanout => fanout::run(env, target, clients).await,
        ScenarioKind::Idle => unreachable!("idle runs on its own"),
    }
}

/// Each idle run starts from a freshly started gateway (when the benchmark owns it; not
/// with `--gateway-url`, which the result records), so memory freed by earlier runs
/// does not hide what sessions cost. `target` is which
/// gateway clients the sessions are: plain or deflate.
async fn run_idle(
    config: &Config,
    target: Target,
    stack: &mut Stack,
    env_of: &impl Fn(&Stack) -> SharedEnv,
) -> IdleResult {
    let mut runs: Vec<IdleFigures> = Vec::new();
    let mut failures = Vec::new();
    let mut gateway_restarted = true;
    for run in 1..=config.runs {
        match stack.restart_gateway().await {
            Ok(restarted) => gateway_restarted &= restarted,
            Err(e) => {
                // This run and those after it did not run: each is a failed run, so
                // the report says of how many of those asked the median is.
                let e = e.to_string();
                failures.extend((run..=config.runs).map(|_| e.clone()));
                break;
            }
        }
        let env = env_of(stack);
        match idle::run(&env, target, config.idle_sessions).await {
            Ok(f) => {
                tracing::info!(
                    target = target.name(),
                    run,
                    opened = f.opened,
                    held = f.held,
                    setup_per_s = format!("{:.0}", f.setup_rate),
                    kib_per_session = format!("{:.1}", f.rss_per_session_bytes / 1024.0),
                    idle_cpu_pct = format!("{:.2}", f.idle_cpu_pct),
                    "idle run done"
                );
                runs.push(f);
            }
            Err(e) => {
                tracing::warn!(target = target.name(), run, error = %e, "idle run failed");
                failures.push(e.to_string());
            }
        }
        tokio::time::sleep(SETTLE).await;
    }
    // The scenarios after this one start from a fresh gateway too.
    if let Err(e) = stack.restart_gateway().await {
        failures.push(e.to_string());
    }
    IdleResult {
        target,
        median: (!runs.is_empty()).then(|| IdleFigures::median(&runs)),
        runs,
        failures,
        gateway_restarted,
    }
}
