//! A fixed-bucket histogram of durations or sizes, updated with atomics so
//! hot paths record without a lock, and read whole for Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of latency buckets, in microseconds: 25 µs to 10 s.
pub const LATENCY_BOUNDS_MICROS: &[u64] = &[
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Upper bounds of count buckets (group-commit batch sizes and the like).
pub const COUNT_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// Counts of observations at or below each bound, plus their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound, then one for observations above the last bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram read at one moment: cumulative counts per bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(bound, observations at or below it)`, in bound order.
    pub cumulative: Vec<(u64, u64)>,
    /// Every observation.
    pub count: u64,
    /// Sum of the observed values.
    pub sum: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// A latency histogram in microseconds.
    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_BOUNDS_MICROS)
    }

    /// Records one value.
    pub fn observe(&self, value: u64) {
        let slot = self.bounds.partition_point(|bound| *bound < value);
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Records a duration in microseconds.
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The counts as Prometheus wants them: cumulative per bound.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        for (bound, bucket) in self.bounds.iter().zip(self.buckets.iter()) {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push((*bound, running));
        }
        let above = self.buckets.last().map_or(0, |b| b.load(Ordering::Relaxed));
        HistogramSnapshot {
            cumulative,
            count: running + above,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_first_bucket_whose_bound_holds_them() {
        let histogram = Histogram::new(&[10, 100]);
        for value in [0, 10, 11, 100, 101, 5_000] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.cumulative, vec![(10, 2), (100, 4)]);
        assert_eq!(snapshot.count, 6);
        assert_eq!(snapshot.sum, 5_222);
        assert_eq!(histogram.count(), 6);
    }

    #[test]
    fn durations_are_recorded_in_microseconds() {
        let histogram = Histogram::latency();
        histogram.observe_duration(Duration::from_millis(3));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.sum, 3_000);
        let at_5ms = snapshot.cumulative.iter().find(|(b, _)| *b == 5_000);
        assert_eq!(at_5ms, Some(&(5_000, 1)));
        let at_1ms = snapshot.cumulative.iter().find(|(b, _)| *b == 1_000);
        assert_eq!(at_1ms, Some(&(1_000, 0)));
    }
}
