//! Rates per second over the last few seconds, from counters sampled once a
//! second: per topic, per queue, per connection and for the whole node.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_core::Broker;

/// The window rates are averaged over.
const WINDOW: Duration = Duration::from_secs(5);

/// Counters of one moment.
#[derive(Debug, Default)]
struct Sample {
    at: Option<Instant>,
    /// Records in, bytes in, records out, bytes out.
    topics: HashMap<String, [u64; 4]>,
    /// Published, delivered, acknowledged, redelivered.
    queues: HashMap<(String, String), [u64; 4]>,
    /// Bytes in, bytes out.
    connections: HashMap<u64, [u64; 2]>,
}

/// Samples of the last [`WINDOW`] and a little more.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    samples: Mutex<VecDeque<Sample>>,
}

impl Rates {
    /// Reads every counter now.
    pub(crate) fn sample(&self, broker: &Broker) {
        let mut sample = Sample {
            at: Some(Instant::now()),
            ..Sample::default()
        };
        for name in broker.topics().names() {
            let Some(topic) = broker.topics().get(&name) else {
                continue;
            };
            let mut sums = [0u64; 4];
            for partition in topic.partitions() {
                let traffic = partition.traffic();
                sums[0] += traffic.records_in.load(Ordering::Relaxed);
                sums[1] += traffic.bytes_in.load(Ordering::Relaxed);
                sums[2] += traffic.records_out.load(Ordering::Relaxed);
                sums[3] += traffic.bytes_out.load(Ordering::Relaxed);
            }
            sample.topics.insert(name, sums);
        }
        for vhost in broker.vhosts().all() {
            for queue in vhost.queues() {
                let traffic = queue.traffic();
                sample.queues.insert(
                    (vhost.name().to_owned(), queue.name().to_owned()),
                    [
                        traffic.published.load(Ordering::Relaxed),
                        traffic.delivered.load(Ordering::Relaxed),
                        traffic.acked.load(Ordering::Relaxed),
                        traffic.redelivered.load(Ordering::Relaxed),
                    ],
                );
            }
        }
        for connection in broker.connections().list() {
            sample.connections.insert(
                connection.id(),
                [
                    connection.bytes_in.load(Ordering::Relaxed),
                    connection.bytes_out.load(Ordering::Relaxed),
                ],
            );
        }
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back(sample);
        // Keep the newest sample that is at least WINDOW old as the base.
        while samples.len() > 2
            && samples
                .get(1)
                .and_then(|s| s.at)
                .is_some_and(|at| at.elapsed() >= WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Per-second change of the counters `read` picks, between the oldest
    /// and newest sample; zeros until two samples exist.
    fn rate<const N: usize>(&self, read: impl Fn(&Sample) -> Option<[u64; N]>) -> [f64; N] {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(old), Some(new)) = (samples.front(), samples.back()) else {
            return [0.0; N];
        };
        let seconds = match (old.at, new.at) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => return [0.0; N],
        };
        let Some(now) = read(new) else {
            return [0.0; N];
        };
        let before = read(old).unwrap_or([0; N]);
        let mut out = [0.0; N];
        for (slot, (n, b)) in out.iter_mut().zip(now.iter().zip(before.iter())) {
            *slot = n.saturating_sub(*b) as f64 / seconds;
        }
        out
    }

    /// Records in, bytes in, records out, bytes out per second of a topic.
    pub(crate) fn topic(&self, name: &str) -> [f64; 4] {
        self.rate(|s| s.topics.get(name).copied())
    }

    /// Publish, deliver, ack, redeliver per second of a queue.
    pub(crate) fn queue(&self, vhost: &str, name: &str) -> [f64; 4] {
        self.rate(|s| s.queues.get(&(vhost.to_owned(), name.to_owned())).copied())
    }

    /// Bytes received and sent per second on a connection.
    pub(crate) fn connection(&self, id: u64) -> [f64; 2] {
        self.rate(|s| s.connections.get(&id).copied())
    }

    /// The node's Kafka totals (as [`Rates::topic`]) and AMQP totals (as
    /// [`Rates::queue`]).
    pub(crate) fn totals(&self) -> ([f64; 4], [f64; 4]) {
        let kafka = self.rate(|s| Some(sum(s.topics.values())));
        let amqp = self.rate(|s| Some(sum(s.queues.values())));
        (kafka, amqp)
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a [u64; 4]>) -> [u64; 4] {
    values.fold([0; 4], |mut acc, v| {
        for (a, x) in acc.iter_mut().zip(v) {
            *a += x;
        }
        acc
    })
}
