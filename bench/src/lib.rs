//! What the benchmarks share: reading a process's CPU time and memory from
//! `/proc`, and percentiles of latency samples.

/// Process figures from `/proc/<pid>` (Linux; `None` elsewhere or when the
/// process is gone).
pub mod procfs {
    /// User + system CPU seconds the process has used.
    pub fn cpu_seconds(pid: u32) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which may itself hold spaces.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
        // utime and stime, in clock ticks (100 per second on Linux).
        Some((ticks(11)? + ticks(12)?) / 100.0)
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

/// The `p`-quantile (0.0..=1.0) of ascending microsecond samples, in
/// milliseconds rounded to 0.1 ms; 0 for no samples.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    (f64::from(sorted_us[index]) / 100.0).round() / 10.0
}

/// `{p50, p99, max}` of microsecond samples, in milliseconds (sorts them).
pub fn latency_summary(samples_us: &mut [u32]) -> serde_json::Value {
    samples_us.sort_unstable();
    serde_json::json!({
        "p50": percentile_ms(samples_us, 0.50),
        "p99": percentile_ms(samples_us, 0.99),
        "max": percentile_ms(samples_us, 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        samples.reverse();
        let summary = latency_summary(&mut samples);
        assert_eq!(summary["p50"], 51.0);
        assert_eq!(summary["p99"], 99.0);
        assert_eq!(summary["max"], 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn own_process_figures_are_readable() {
        let pid = std::process::id();
        assert!(procfs::rss_bytes(pid).is_some_and(|rss| rss > 0));
        assert!(procfs::cpu_seconds(pid).is_some());
        assert_eq!(procfs::rss_bytes(u32::MAX), None);
    }
}
