//! The result of one run: rates, latency percentiles, the broker's CPU and
//! memory, and the verdict of checking every consumed message. Printed for
//! people, and as one JSON line for scripts.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Whether every acknowledged message came back once, intact and in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Verdict {
    pub(crate) acknowledged: u64,
    pub(crate) consumed: u64,
    /// Acknowledged but never consumed.
    pub(crate) lost: u64,
    pub(crate) duplicates: u64,
    /// Out of order within one producer's messages to one partition.
    pub(crate) out_of_order: u64,
    pub(crate) corrupt: u64,
    pub(crate) produce_errors: u64,
}

impl Verdict {
    pub(crate) fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.corrupt == 0
            && self.produce_errors == 0
            && self.consumed >= self.acknowledged
    }
}

/// End-to-end latency percentiles in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
}

impl Latency {
    pub(crate) fn from_histogram(histogram: &Histogram<u64>) -> Latency {
        let at = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
        Latency {
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: histogram.max() as f64 / 1_000.0,
        }
    }
}

/// A broker's resource use over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct BrokerUsage {
    pub(crate) pid: u32,
    pub(crate) cpu_seconds: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub(crate) cores: f64,
    pub(crate) rss_mib_end: f64,
    pub(crate) peak_rss_mib: f64,
}

/// One run's report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) tool: &'static str,
    pub(crate) protocol: &'static str,
    pub(crate) workload: serde_json::Value,
    pub(crate) seconds: f64,
    pub(crate) produced_msgs_per_s: f64,
    pub(crate) produced_mb_per_s: f64,
    pub(crate) consumed_msgs_per_s: f64,
    pub(crate) consumed_mb_per_s: f64,
    pub(crate) latency: Latency,
    pub(crate) broker: Option<BrokerUsage>,
    pub(crate) verdict: Verdict,
    pub(crate) passed: bool,
    #[serde(skip)]
    pub(crate) json_only: bool,
}

/// Messages per second and MB/s of `count` messages of `size` bytes over
/// `seconds`.
fn rates(count: u64, size: usize, seconds: f64) -> (f64, f64) {
    let seconds = seconds.max(1e-9);
    (
        count as f64 / seconds,
        count as f64 * size as f64 / seconds / 1e6,
    )
}

/// What a workload measured, to be turned into its [`Report`].
#[derive(Debug)]
pub(crate) struct Run<'a> {
    pub(crate) protocol: &'static str,
    pub(crate) workload: serde_json::Value,
    pub(crate) size: usize,
    pub(crate) seen: &'a crate::seen::Seen,
    pub(crate) acknowledged: u64,
    pub(crate) produce_errors: u64,
    /// From the first send to the last acknowledgement.
    pub(crate) producing: std::time::Duration,
    /// Over which the consume rate is computed.
    pub(crate) consuming: std::time::Duration,
    /// The whole run (the broker's CPU is averaged over it).
    pub(crate) total: std::time::Duration,
    pub(crate) broker: Option<BrokerUsage>,
    pub(crate) json_only: bool,
}

impl Report {
    pub(crate) fn from_run(run: Run<'_>) -> Report {
        let verdict = run.seen.verdict(run.acknowledged, run.produce_errors);
        let (produced_msgs_per_s, produced_mb_per_s) =
            rates(run.acknowledged, run.size, run.producing.as_secs_f64());
        let (consumed_msgs_per_s, consumed_mb_per_s) =
            rates(run.seen.consumed, run.size, run.consuming.as_secs_f64());
        Report {
            tool: "sluice-bench",
            protocol: run.protocol,
            workload: run.workload,
            seconds: run.total.as_secs_f64(),
            produced_msgs_per_s,
            produced_mb_per_s,
            consumed_msgs_per_s,
            consumed_mb_per_s,
            latency: Latency::from_histogram(&run.seen.latency),
            broker: run.broker,
            passed: verdict.passed(),
            verdict,
            json_only: run.json_only,
        }
    }

    pub(crate) fn print(&self, json_only: bool) {
        if !json_only {
            println!(
                "{} workload {}",
                self.protocol,
                serde_json::to_string(&self.workload).unwrap_or_default()
            );
            println!(
                "  produced {:>12.0} msg/s {:>9.1} MB/s",
                self.produced_msgs_per_s, self.produced_mb_per_s
            );
            println!(
                "  consumed {:>12.0} msg/s {:>9.1} MB/s",
                self.consumed_msgs_per_s, self.consumed_mb_per_s
            );
            let l = &self.latency;
            println!(
                "  end-to-end latency us: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            );
            if let Some(b) = &self.broker {
                println!(
                    "  broker pid {}: {:.2} CPU s ({:.2} cores), RSS {:.1} MiB, peak {:.1} MiB",
                    b.pid, b.cpu_seconds, b.cores, b.rss_mib_end, b.peak_rss_mib
                );
            }
            let v = &self.verdict;
            println!(
                "  checked: acknowledged {} consumed {} lost {} duplicates {} out-of-order {} corrupt {} produce errors {} -> {}",
                v.acknowledged,
                v.consumed,
                v.lost,
                v.duplicates,
                v.out_of_order,
                v.corrupt,
                v.produce_errors,
                if self.passed { "PASS" } else { "FAIL" }
            );
        }
        println!("{}", serde_json::to_string(self).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_loss_duplicate_disorder_or_damage_fails_the_run() {
        let clean = Verdict {
            acknowledged: 10,
            consumed: 10,
            ..Verdict::default()
        };
        assert!(clean.passed());
        for broken in [
            Verdict {
                lost: 1,
                consumed: 9,
                ..clean.clone()
            },
            Verdict {
                duplicates: 1,
                consumed: 11,
                ..clean.clone()
            },
            Verdict {
                out_of_order: 1,
                ..clean.clone()
            },
            Verdict {
                corrupt: 1,
                ..clean.clone()
            },
            Verdict {
                produce_errors: 1,
                ..clean.clone()
            },
            Verdict {
                consumed: 9,
                ..clean.clone()
            },
        ] {
            assert!(!broken.passed(), "{broken:?} passed");
        }
    }
}
