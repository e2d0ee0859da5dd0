//! CPU time and memory of a broker process, read from `/proc/<pid>`.

use std::fs;

/// A sample of a process's resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// User plus system CPU time, in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// Resident memory now, in KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident memory, in KiB.
    pub(crate) peak_rss_kib: u64,
}

/// Clock ticks per second for `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// Reads the process's counters; `None` if it is gone or unreadable.
pub(crate) fn sample(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    Some(Sample {
        cpu_ticks: utime + stime,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    })
}

/// The broker's use between two samples over `wall_seconds`.
pub(crate) fn usage(
    pid: Option<u32>,
    before: Option<Sample>,
    after: Option<Sample>,
    wall_seconds: f64,
) -> Option<crate::report::BrokerUsage> {
    let (pid, before, after) = (pid?, before?, after?);
    let cpu_seconds = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_SECOND;
    Some(crate::report::BrokerUsage {
        pid,
        cpu_seconds,
        cores: cpu_seconds / wall_seconds.max(1e-9),
        rss_mib_end: after.rss_kib as f64 / 1024.0,
        peak_rss_mib: after.peak_rss_kib as f64 / 1024.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_can_be_sampled() {
        let own = sample(std::process::id()).expect("own /proc entry");
        assert!(own.rss_kib > 0);
        assert!(own.peak_rss_kib >= own.rss_kib);
        assert!(sample(u32::MAX).is_none());
    }
}
