//! idle: open many sessions, hold them, and measure what they cost the gateway: resident
//! memory per session (`VmRSS` before and after), how fast sessions are set up, and the
//! gateway's CPU while every session sits idle. Client sockets are spread over several
//! loopback source addresses so ports do not run out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};

use super::{SharedEnv, Target};
use crate::client::{source_ip, GatewayClient};
use crate::error::{BenchError, Result};
use crate::process_stats::{broker_pid, rss_kib, CpuMeter};

/// The figures of one idle run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct IdleFigures {
    /// Sessions asked for.
    pub requested: usize,
    /// Sessions that got a `welcome`.
    pub opened: usize,
    /// Sessions still open at the end of the CPU window.
    pub held: usize,
    /// Sessions opened per second.
    pub setup_rate: f64,
    /// Gateway RSS before opening, KiB.
    pub rss_before_kib: u64,
    /// Gateway RSS with every session open, KiB.
    pub rss_after_kib: u64,
    /// Gateway RSS after every session closed again, KiB.
    pub rss_closed_kib: u64,
    /// (after − before) / opened, bytes: negative when the RSS fell (the report then
    /// judges nothing by it), NaN when no session opened.
    pub rss_per_session_bytes: f64,
    /// Gateway CPU while idle, percent of one core.
    pub idle_cpu_pct: f64,
    /// RabbitMQ's RSS growth per open session, bytes (when RabbitMQ is local).
    pub broker_rss_per_session_bytes: f64,
}

impl IdleFigures {
    /// The median of each figure over several runs.
    pub fn median(runs: &[IdleFigures]) -> IdleFigures {
        use crate::measurement::median;
        let med = |f: fn(&IdleFigures) -> f64| median(runs.iter().map(f).collect());
        IdleFigures {
            requested: med(|r| r.requested as f64) as usize,
            opened: med(|r| r.opened as f64) as usize,
            held: med(|r| r.held as f64) as usize,
            setup_rate: med(|r| r.setup_rate),
            rss_before_kib: med(|r| r.rss_before_kib as f64) as u64,
            rss_after_kib: med(|r| r.rss_after_kib as f64) as u64,
            rss_closed_kib: med(|r| r.rss_closed_kib as f64) as u64,
            rss_per_session_bytes: med(|r| r.rss_per_session_bytes),
            idle_cpu_pct: med(|r| r.idle_cpu_pct),
            broker_rss_per_session_bytes: med(|r| r.broker_rss_per_session_bytes),
        }
    }
}

/// Opens `sessions` sessions of `target` (plain or deflate clients of the gateway),
/// holds them for the CPU window, then closes them.
///
/// # Errors
/// `Config` without a gateway pid (nothing to measure) or for a target that is not the
/// gateway, `Io` when `/proc` cannot be read.
pub async fn run(env: &SharedEnv, target: Target, sessions: usize) -> Result<IdleFigures> {
    if !target.is_gateway() {
        return Err(BenchError::Config(format!(
            "the idle scenario loads the gateway, not {}",
            target.name()
        )));
    }
    let compression = target.compression();
    let cfg = &env.config;
    let pid = env
        .gateway_pid
        .ok_or_else(|| BenchError::Config("the idle scenario needs --gateway-pid".into()))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = rss_kib(pid)?;
    let broker = broker_pid();
    let broker_before_kib = broker.and_then(|b| rss_kib(b).ok());

    let (stop_tx, stop_rx) = watch::channel(false);
    let (opened_tx, mut opened_rx) =
        mpsc::unbounded_channel::<std::result::Result<String, String>>();
    let open = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(cfg.idle_concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let permit = gate.clone().acquire_owned().await.expect("never closed");
        let (gateway, opened_tx, mut stop_rx, open) = (
            env.gateway()?.clone(),
            opened_tx.clone(),
            stop_rx.clone(),
            open.clone(),
        );
        let (spread, timeout) = (cfg.source_ips, cfg.op_timeout);
        tasks.push(tokio::spawn(async move {
            let client =
                GatewayClient::connect(&gateway, source_ip(i, spread), timeout, compression).await;
            drop(permit);
            let mut client = match client {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "idle session failed to open");
                    let _ = opened_tx.send(Err(e.to_string()));
                    return;
                }
            };
            open.fetch_add(1, Ordering::AcqRel);
            let _ = opened_tx.send(Ok(client.session().to_string()));
            loop {
                tokio::select! {
                    r = client.recv() => if r.is_err() { break },
                    _ = stop_rx.changed() => break,
                }
            }
            open.fetch_sub(1, Ordering::AcqRel);
            client.close().await;
        }));
    }
    drop(opened_tx);
    let mut ids = Vec::with_capacity(sessions);
    let mut failed = 0usize;
    let mut first_error = None;
    while ids.len() + failed < sessions {
        match opened_rx.recv().await {
            Some(Ok(id)) => ids.push(id),
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    let setup = started.elapsed();
    if let Some(first_error) = first_error {
        tracing::warn!(
            failed,
            target = target.name(),
            first_error,
            "some idle sessions did not open"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = rss_kib(pid)?;
    let broker_after_kib = broker.and_then(|b| rss_kib(b).ok());
    let meter = CpuMeter::start(pid)?;
    tokio::time::sleep(cfg.idle_window).await;
    let idle_cpu_pct = meter.percent()?;
    let held = open.load(Ordering::Acquire);

    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_closed_kib = rss_kib(pid).unwrap_or(0);
    let opened = ids.len();
    Ok(IdleFigures {
        requested: sessions,
        opened,
        held,
        setup_rate: opened as f64 / setup.as_secs_f64(),
        rss_before_kib,
        rss_after_kib,
        rss_closed_kib,
        rss_per_session_bytes: per_session_bytes(rss_before_kib, rss_after_kib, opened),
        idle_cpu_pct,
        broker_rss_per_session_bytes: match (broker_before_kib, broker_after_kib) {
            (Some(before), Some(after)) => per_session_bytes(before, after, opened),
            _ => f64::NAN,
        },
    })
}

/// RSS growth from `before_kib` to `after_kib` per session of `opened`, in bytes, with
/// its sign: a fall is reported as one (not as 0 B, which would read as free
/// sessions). NaN when no session opened.
fn per_session_bytes(before_kib: u64, after_kib: u64, opened: usize) -> f64 {
    if opened == 0 {
        return f64::NAN;
    }
    (after_kib as f64 - before_kib as f64) * 1024.0 / opened as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_per_session_keeps_its_sign() {
        assert_eq!(per_session_bytes(1_000, 1_080, 10), 8.0 * 1024.0);
        assert_eq!(per_session_bytes(1_000, 900, 10), -10.0 * 1024.0);
        assert!(per_session_bytes(1_000, 2_000, 0).is_nan());
    }
}
