//! Memory and CPU of another process, read from `/proc/<pid>/status` and `/proc/<pid>/stat`.

use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};

/// Resident set size of `pid` in KiB (`VmRSS`).
///
/// # Errors
/// `Io` when the process is gone or the file cannot be read.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BenchError::Unexpected(format!("no VmRSS in /proc/{pid}/status")))
}

/// The RabbitMQ node's process on this machine: `WARREN_BENCH_BROKER_PID` when set,
/// else the oldest `beam.smp` (the extra nodes of cluster tests start later). `None`
/// when RabbitMQ runs elsewhere.
pub fn broker_pid() -> Option<u32> {
    if let Some(pid) = std::env::var("WARREN_BENCH_BROKER_PID")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(pid);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .min()
}

/// CPU time `pid` has used (user + system), in clock ticks.
///
/// # Errors
/// `Io` when the process is gone or the file cannot be read.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Unexpected(format!("odd /proc/{pid}/stat")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| BenchError::Unexpected(format!("odd /proc/{pid}/stat")))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// A CPU meter over one process: started now, read as percent of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: u32,
    ticks: u64,
    since: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    ///
    /// # Errors
    /// As [`cpu_ticks`].
    pub fn start(pid: u32) -> Result<Self> {
        Ok(CpuMeter {
            pid,
            ticks: cpu_ticks(pid)?,
            since: Instant::now(),
        })
    }

    /// CPU used since the start, in percent of one core.
    ///
    /// # Errors
    /// As [`cpu_ticks`].
    pub fn percent(&self) -> Result<f64> {
        let used =
            cpu_ticks(self.pid)?.saturating_sub(self.ticks) as f64 / ticks_per_second() as f64;
        let wall = self
            .since
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        Ok(100.0 * used / wall)
    }
}

/// A short description of this machine for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs.
    pub cores: usize,
    /// Total memory in GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads `/proc` for the description; unknown parts stay empty.
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_ticks(pid).is_ok());
        // A thread spinning for 300 ms uses most of a core (clock ticks are 10 ms);
        // even on a machine busy with other work it gets more than a tenth of one.
        let meter = CpuMeter::start(pid).unwrap();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(300) {}
        let percent = meter.percent().unwrap();
        assert!(percent > 10.0, "{percent} % of a core while spinning");
    }
}
