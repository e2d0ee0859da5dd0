//! What consumers saw: every message checked, counted once, in order per
//! stream (a partition or a queue consumer) and producer, with its
//! end-to-end latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;

use crate::payload;
use crate::report::Verdict;

/// What the consumers saw.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) consumed: u64,
    pub(crate) bytes: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) corrupt: u64,
    pub(crate) latency: Histogram<u64>,
    /// Per producer: one bit per sequence number.
    received: HashMap<u32, Vec<u64>>,
    /// Per (stream, producer): the last sequence seen.
    last: HashMap<(i32, u32), u64>,
    pub(crate) last_at: Instant,
}

impl Seen {
    pub(crate) fn new() -> anyhow::Result<Seen> {
        Ok(Seen {
            consumed: 0,
            bytes: 0,
            duplicates: 0,
            out_of_order: 0,
            corrupt: 0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .context("latency histogram")?,
            received: HashMap::new(),
            last: HashMap::new(),
            last_at: Instant::now(),
        })
    }

    pub(crate) fn record(&mut self, stream: i32, payload: Option<&[u8]>, size: usize) {
        let now = payload::now_ns();
        self.last_at = Instant::now();
        let Some(checked) = payload.and_then(|p| payload::check(p, size)) else {
            self.corrupt += 1;
            return;
        };
        self.consumed += 1;
        self.bytes += size as u64;
        let _ = self
            .latency
            .record(now.saturating_sub(checked.sent_at_ns).max(1));
        let bits = self.received.entry(checked.producer).or_default();
        let word = usize::try_from(checked.sequence / 64).unwrap_or(usize::MAX);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let mask = 1u64 << (checked.sequence % 64);
        if let Some(slot) = bits.get_mut(word) {
            if *slot & mask != 0 {
                self.duplicates += 1;
            }
            *slot |= mask;
        }
        let key = (stream, checked.producer);
        if let Some(previous) = self.last.get(&key)
            && checked.sequence <= *previous
        {
            self.out_of_order += 1;
        }
        self.last.insert(key, checked.sequence);
    }

    /// The run's verdict: `acknowledged` messages were sent and confirmed,
    /// `produce_errors` were refused.
    pub(crate) fn verdict(&self, acknowledged: u64, produce_errors: u64) -> Verdict {
        Verdict {
            acknowledged,
            consumed: self.consumed,
            lost: acknowledged.saturating_sub(self.distinct()),
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            corrupt: self.corrupt,
            produce_errors,
        }
    }

    pub(crate) fn distinct(&self) -> u64 {
        self.received
            .values()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }
}

/// Prints how far a run got to stderr every `every` until dropped.
#[derive(Debug)]
pub(crate) struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting `acknowledged` of `total` sent and what `seen` holds;
    /// `None` when `every` is zero.
    pub(crate) fn start(
        every: Duration,
        total: u64,
        acknowledged: Arc<AtomicU64>,
        seen: Arc<Mutex<Seen>>,
    ) -> Option<Progress> {
        if every.is_zero() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut next = every;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if started.elapsed() < next {
                    continue;
                }
                next += every;
                let consumed = seen.lock().unwrap_or_else(|e| e.into_inner()).consumed;
                eprintln!(
                    "  … {:.0}s: sent {} / {total}, consumed {consumed}",
                    started.elapsed().as_secs_f64(),
                    acknowledged.load(Ordering::Relaxed),
                );
            }
        });
        Some(Progress {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What producers sent: acknowledged sends, refused ones, and the first
/// refusal's text.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub(crate) acknowledged: Arc<AtomicU64>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Sent {
    pub(crate) fn acknowledge(&self) {
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self, error: impl ToString) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(|| error.to_string());
    }

    /// Acknowledged and refused counts now.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.acknowledged.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// Prints the first refusal, if any, to stderr.
    pub(crate) fn print_first_error(&self) {
        if let Some(error) = self
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            eprintln!("first send error: {error}");
        }
    }
}
