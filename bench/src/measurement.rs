//! What one run measures: the measured time window, per-worker tallies, and the figures
//! (throughput, latency percentiles) computed from them.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The process-wide time origin; message timestamps are microseconds since it, so
/// latencies measured across tasks in this process share one monotonic clock.
pub fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Microseconds since [`origin`].
pub fn now_us() -> u64 {
    origin().elapsed().as_micros() as u64
}

/// The measured part of a run: work finished inside `[start, end)` counts.
#[derive(Debug, Clone, Copy)]
pub struct MeasureWindow {
    /// Start of measurement (after the warm-up), in microseconds since [`origin`].
    pub start_us: u64,
    /// End of measurement; workers stop issuing new work here.
    pub end_us: u64,
    /// Most operations one client issues (`u64::MAX` when unbounded).
    pub per_client_limit: u64,
}

impl MeasureWindow {
    /// A window opening `warmup` from now and lasting `duration`.
    pub fn starting_in(warmup: Duration, duration: Duration, limit: u64) -> Self {
        let start_us = now_us() + warmup.as_micros() as u64;
        MeasureWindow {
            start_us,
            end_us: start_us + duration.as_micros() as u64,
            per_client_limit: if limit == 0 { u64::MAX } else { limit },
        }
    }

    /// A client finished its set-up (connected, subscribed, its channel ready): it
    /// must have before the window opens, or the window would count set-up time as
    /// load and divide by it.
    ///
    /// # Errors
    /// [`crate::error::BenchError::SetupOverran`] when the window is open already.
    pub fn set_up(&self) -> crate::error::Result<()> {
        let now = now_us();
        if now >= self.start_us {
            return Err(crate::error::BenchError::SetupOverran(
                (now - self.start_us) / 1000,
            ));
        }
        Ok(())
    }

    /// Whether a client that issued `issued` operations may issue another now.
    pub fn may_issue(&self, issued: u64) -> bool {
        issued < self.per_client_limit && now_us() < self.end_us
    }

    /// Whether an operation completed at `t_us` falls inside the window.
    pub fn contains(&self, t_us: u64) -> bool {
        (self.start_us..self.end_us).contains(&t_us)
    }
}

/// What one worker (client) counted.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Operations completed inside the window.
    pub ops: u64,
    /// Operations answered with an error (inside or outside the window); in fan-out,
    /// messages that never came (published − distinct messages received).
    pub errors: u64,
    /// Latency of each operation completed inside the window, in microseconds.
    pub latencies_us: Vec<u32>,
    /// When the last operation inside the window completed.
    pub last_us: u64,
}

impl Tally {
    /// Records an operation issued at `sent_us` and completed at `done_us`.
    pub fn record(&mut self, window: &MeasureWindow, sent_us: u64, done_us: u64) {
        if window.contains(done_us) {
            self.ops += 1;
            self.latencies_us
                .push(done_us.saturating_sub(sent_us).min(u32::MAX as u64) as u32);
            self.last_us = self.last_us.max(done_us);
        }
    }

    /// Adds another worker's tally to this one.
    pub fn merge(&mut self, other: Tally) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        self.last_us = self.last_us.max(other.last_us);
    }
}

/// The figures of one run of one scenario against one target.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Figures {
    /// Operations (acked writes, replies, distinct fan-out messages) completed in the
    /// window.
    pub ops: u64,
    /// Operations answered with an error; in fan-out, messages that never came.
    pub errors: u64,
    /// Operations per second.
    pub throughput: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Largest latency seen, milliseconds.
    pub max_ms: f64,
    /// CPU the gateway used during the window, percent of one core (gateway runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_cpu_pct: Option<f64>,
    /// Bytes the gateway sent its clients during the window per operation, as read
    /// off the clients' sockets: frames (compressed, with deflate) with their
    /// WebSocket headers (gateway runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_bytes_per_op: Option<f64>,
}

impl Figures {
    /// Computes the figures of a merged tally over `window`.
    pub fn from_tally(mut tally: Tally, window: &MeasureWindow) -> Self {
        let window_end = if window.per_client_limit == u64::MAX {
            window.end_us
        } else {
            window.end_us.min(tally.last_us.max(window.start_us + 1))
        };
        let secs = (window_end - window.start_us) as f64 / 1e6;
        tally.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            percentile(&tally.latencies_us, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
        };
        Figures {
            ops: tally.ops,
            errors: tally.errors,
            throughput: tally.ops as f64 / secs,
            p50_ms: pct(50.0),
            p99_ms: pct(99.0),
            max_ms: tally
                .latencies_us
                .last()
                .map_or(f64::NAN, |&us| us as f64 / 1000.0),
            gateway_cpu_pct: None,
            gateway_bytes_per_op: None,
        }
    }

    /// Takes in what the gateway used over the window.
    pub fn add_gateway_use(&mut self, used: Option<crate::scenario::GatewayUse>) {
        self.gateway_cpu_pct = used.map(|u| u.cpu_pct);
        self.gateway_bytes_per_op = used
            .filter(|_| self.ops > 0)
            .map(|u| u.bytes_received as f64 / self.ops as f64);
    }

    /// The median of each figure over several runs, taken figure by figure; `errors`
    /// is the most any run had.
    pub fn median(runs: &[Figures]) -> Figures {
        let med = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
        let cpu: Vec<f64> = runs.iter().filter_map(|r| r.gateway_cpu_pct).collect();
        let bytes: Vec<f64> = runs.iter().filter_map(|r| r.gateway_bytes_per_op).collect();
        Figures {
            ops: med(|r| r.ops as f64) as u64,
            // The most any run had: a loss in some runs is not a median of 0.
            errors: runs.iter().map(|r| r.errors).max().unwrap_or(0),
            throughput: med(|r| r.throughput),
            p50_ms: med(|r| r.p50_ms),
            p99_ms: med(|r| r.p99_ms),
            max_ms: med(|r| r.max_ms),
            gateway_cpu_pct: (!cpu.is_empty()).then(|| median(cpu)),
            gateway_bytes_per_op: (!bytes.is_empty()).then(|| median(bytes)),
        }
    }
}

/// The value below which `p` percent of the sorted samples fall (nearest rank).
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of some values (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn a_set_up_that_ends_after_the_window_opened_fails_the_run() {
        let later = MeasureWindow::starting_in(Duration::from_secs(60), Duration::from_secs(1), 0);
        assert!(later.set_up().is_ok());
        let open = MeasureWindow::starting_in(Duration::ZERO, Duration::from_secs(1), 0);
        assert!(matches!(
            open.set_up(),
            Err(crate::error::BenchError::SetupOverran(_))
        ));
    }

    #[test]
    fn only_work_finished_inside_the_window_counts() {
        let w = MeasureWindow {
            start_us: 1_000_000,
            end_us: 2_000_000,
            per_client_limit: u64::MAX,
        };
        let mut t = Tally::default();
        t.record(&w, 900_000, 999_999);
        t.record(&w, 1_000_000, 1_000_500);
        t.record(&w, 1_999_000, 2_000_001);
        assert_eq!(t.ops, 1);
        let f = Figures::from_tally(t, &w);
        assert_eq!(f.throughput, 1.0);
        assert_eq!(f.p50_ms, 0.5);
    }
}
