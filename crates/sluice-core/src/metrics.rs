//! Request counts and latencies per Kafka API and per AMQP method, kept by
//! the front-ends and read by the admin API's `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use sluice_types::Histogram;

/// One latency histogram per request kind; the front-end that owns it
/// names the kinds once and records by index.
#[derive(Debug)]
pub struct RequestMetrics {
    names: Vec<&'static str>,
    latency: Vec<Histogram>,
}

impl RequestMetrics {
    /// Histograms for `names`; index `i` records requests named `names[i]`.
    pub fn new(names: Vec<&'static str>) -> RequestMetrics {
        let latency = names.iter().map(|_| Histogram::latency()).collect();
        RequestMetrics { names, latency }
    }

    /// Records one request of kind `index`; unknown indexes are ignored.
    pub fn observe(&self, index: usize, elapsed: Duration) {
        if let Some(histogram) = self.latency.get(index) {
            histogram.observe_duration(elapsed);
        }
    }

    /// Every kind with its histogram.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Histogram)> {
        self.names.iter().copied().zip(self.latency.iter())
    }
}

/// Per-protocol request metrics, set up by each front-end when it starts.
#[derive(Debug, Default)]
pub struct ProtocolMetrics {
    /// Per Kafka API, by API name.
    pub kafka: OnceLock<RequestMetrics>,
    /// Per AMQP method, by `class.method`.
    pub amqp: OnceLock<RequestMetrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_recorded_under_their_name() {
        let metrics = RequestMetrics::new(vec!["Produce", "Fetch"]);
        metrics.observe(1, Duration::from_micros(700));
        metrics.observe(1, Duration::from_micros(30));
        metrics.observe(7, Duration::from_micros(30));
        let counts: Vec<(&str, u64)> = metrics.iter().map(|(n, h)| (n, h.count())).collect();
        assert_eq!(counts, vec![("Produce", 0), ("Fetch", 2)]);
    }
}
