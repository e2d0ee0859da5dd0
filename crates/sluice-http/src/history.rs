//! Rate and lag history for the UI's charts, so that a chart opened for
//! the first time shows the last hour rather than starting empty (as
//! RabbitMQ's management UI keeps samples in the broker). One bounded ring
//! per series: the node's totals (the overview's rates) and the total lag
//! of each consumer group. Owned by the rates sampler, which records a
//! point every [`INTERVAL`]; everything lives in memory and is lost on
//! restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Time between two points of a series.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);
/// Points kept per series: an hour at [`INTERVAL`].
pub(crate) const CAPACITY: usize = 720;
/// Most consumer groups whose lag is kept (the first by name); a node with
/// more keeps no lag history for the rest rather than grow without bound.
pub(crate) const MAX_GROUPS: usize = 500;

/// Names of the overview's rates, in the order of [`Point::values`].
pub(crate) const OVERVIEW_SERIES: [&str; 7] = [
    "kafka_records_in",
    "kafka_bytes_in",
    "kafka_records_out",
    "kafka_bytes_out",
    "amqp_publish",
    "amqp_deliver",
    "amqp_ack",
];

/// One point of a series: wall-clock time in ms since the epoch and values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point<T> {
    pub(crate) at_ms: i64,
    pub(crate) values: T,
}

/// A series keeping its newest [`CAPACITY`] points.
#[derive(Debug)]
struct Ring<T> {
    points: VecDeque<Point<T>>,
}

impl<T: Copy> Ring<T> {
    fn new() -> Self {
        Self {
            points: VecDeque::with_capacity(CAPACITY),
        }
    }

    fn push(&mut self, point: Point<T>) {
        if self.points.len() == CAPACITY {
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    fn since(&self, since_ms: i64) -> Vec<Point<T>> {
        self.points
            .iter()
            .filter(|p| p.at_ms > since_ms)
            .copied()
            .collect()
    }
}

/// What one sampling moment contributes to every series.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The overview's rates, named by [`OVERVIEW_SERIES`].
    pub(crate) overview: [f64; 7],
    /// Total lag of each consumer group that exists now.
    pub(crate) group_lag: Vec<(String, i64)>,
}

#[derive(Debug)]
struct Series {
    overview: Ring<[f64; 7]>,
    group_lag: HashMap<String, Ring<i64>>,
    /// When the last point was recorded.
    last_ms: Option<i64>,
}

/// Every series; the sampler task records, API handlers read.
#[derive(Debug)]
pub(crate) struct History {
    series: Mutex<Series>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            series: Mutex::new(Series {
                overview: Ring::new(),
                group_lag: HashMap::new(),
                last_ms: None,
            }),
        }
    }
}

impl History {
    /// Whether a point is due at `now_ms` (an [`INTERVAL`] after the last).
    pub(crate) fn due(&self, now_ms: i64) -> bool {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .last_ms
            .is_none_or(|last| now_ms - last >= INTERVAL.as_millis() as i64 - 50)
    }

    /// Appends `snapshot` as the point at `now_ms`. Groups missing from it
    /// are gone from the broker, and so is their history.
    pub(crate) fn record(&self, now_ms: i64, snapshot: Snapshot) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.last_ms = Some(now_ms);
        series.overview.push(Point {
            at_ms: now_ms,
            values: snapshot.overview,
        });
        let mut groups = snapshot.group_lag;
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        groups.truncate(MAX_GROUPS);
        series
            .group_lag
            .retain(|id, _| groups.binary_search_by(|(g, _)| g.cmp(id)).is_ok());
        for (id, lag) in groups {
            series
                .group_lag
                .entry(id)
                .or_insert_with(Ring::new)
                .push(Point {
                    at_ms: now_ms,
                    values: lag,
                });
        }
    }

    /// The overview's points after `since_ms`, oldest first.
    pub(crate) fn overview(&self, since_ms: i64) -> Vec<Point<[f64; 7]>> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.overview.since(since_ms)
    }

    /// A group's total lag after `since_ms`, oldest first; empty for a
    /// group without history.
    pub(crate) fn group_lag(&self, group: &str, since_ms: i64) -> Vec<Point<i64>> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .group_lag
            .get(group)
            .map(|ring| ring.since(since_ms))
            .unwrap_or_default()
    }
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(rate: f64, groups: &[(&str, i64)]) -> Snapshot {
        Snapshot {
            overview: [rate; 7],
            group_lag: groups.iter().map(|(g, l)| ((*g).to_owned(), *l)).collect(),
        }
    }

    #[test]
    fn each_series_keeps_its_newest_points_up_to_the_capacity() {
        let history = History::default();
        let step = INTERVAL.as_millis() as i64;
        for i in 0..(CAPACITY as i64 + 10) {
            history.record(i * step, snapshot(i as f64, &[("g", i)]));
        }
        let points = history.overview(i64::MIN);
        assert_eq!(points.len(), CAPACITY);
        assert_eq!(points.first().map(|p| p.at_ms), Some(10 * step));
        assert_eq!(
            points.last().map(|p| p.values[0]),
            Some((CAPACITY + 9) as f64)
        );
        let lag = history.group_lag("g", i64::MIN);
        assert_eq!(lag.len(), CAPACITY);
        assert_eq!(lag.last().map(|p| p.values), Some(CAPACITY as i64 + 9));
        // Only what came after `since`.
        assert_eq!(history.overview((CAPACITY as i64 + 7) * step).len(), 2);
    }

    #[test]
    fn a_point_is_due_one_interval_after_the_last() {
        let history = History::default();
        assert!(history.due(0));
        history.record(1_000, snapshot(0.0, &[]));
        assert!(!history.due(2_000));
        assert!(history.due(1_000 + INTERVAL.as_millis() as i64));
    }

    #[test]
    fn groups_that_disappear_lose_their_history_and_the_count_is_bounded() {
        let history = History::default();
        history.record(0, snapshot(0.0, &[("a", 1), ("b", 2)]));
        history.record(5_000, snapshot(0.0, &[("b", 3)]));
        assert!(history.group_lag("a", i64::MIN).is_empty());
        assert_eq!(history.group_lag("b", i64::MIN).len(), 2);
        let many: Vec<(String, i64)> = (0..MAX_GROUPS + 5)
            .map(|i| (format!("g{i:05}"), 0))
            .collect();
        history.record(
            10_000,
            Snapshot {
                overview: [0.0; 7],
                group_lag: many,
            },
        );
        let series = history.series.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(series.group_lag.len(), MAX_GROUPS);
    }
}
