//! The ready list: messages waiting for a consumer, in delivery order. The
//! head is in memory, one bucket per priority; behind it, for a durable
//! queue whose head outgrew its memory budget, runs of persistent messages
//! wait on disk only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::messaging::alarms::MemoryCharge;
use crate::messaging::message::Message;

/// A message in the queue, ready or delivered.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) stored: Option<u64>,
    pub(super) message: Arc<Message>,
    pub(super) redelivered: bool,
    /// Times it came back to the queue unsettled (a quorum queue's
    /// delivery count, `x-delivery-count`), counted while the queue runs.
    pub(super) returns: u32,
    /// Wall-clock milliseconds after which the message is dead.
    pub(super) expires_at: Option<i64>,
    /// Delivered last to a consumer of this node's own clients (not one
    /// another node registered).
    pub(super) local_client: bool,
    /// Memory accounting; released when the entry goes.
    pub(super) _charge: MemoryCharge,
}

/// Ready messages in delivery order: the head in memory, by priority, and
/// behind it, for a durable queue without priorities whose head outgrew
/// its memory budget, what arrived since, mostly waiting on disk.
#[derive(Debug, Default)]
pub(super) struct Ready {
    /// Bucket per effective priority; bucket 0 only without `x-max-priority`.
    pub(super) buckets: BTreeMap<u8, VecDeque<Entry>>,
    /// Behind bucket 0, in arrival order.
    pub(super) paged: VecDeque<Paged>,
    /// Ready messages, paged ones included.
    pub(super) len: usize,
    /// Their body bytes.
    pub(super) bytes: u64,
    /// Of `len` and `bytes`, what `paged` holds.
    pub(super) paged_len: usize,
    pub(super) paged_bytes: u64,
}

/// What waits behind a queue's head.
#[derive(Debug)]
pub(super) enum Paged {
    /// Persistent messages on disk only.
    Run(PagedRun),
    /// A transient message that arrived behind them (it has no copy on disk).
    Entry(Entry),
}

/// Messages enqueued one after another and stored under consecutive ids.
#[derive(Debug)]
pub(super) struct PagedRun {
    pub(super) first_seq: u64,
    pub(super) first_id: u64,
    pub(super) count: u64,
    pub(super) bytes: u64,
    /// Recovered after a crash: flag them all.
    pub(super) redelivered: bool,
}

impl Ready {
    pub(super) fn push_back(&mut self, priority: u8, entry: Entry) {
        self.len += 1;
        let size = entry.message.body_size() as u64;
        self.bytes += size;
        if self.paged.is_empty() {
            self.buckets.entry(priority).or_default().push_back(entry);
        } else {
            self.paged_len += 1;
            self.paged_bytes += size;
            self.paged.push_back(Paged::Entry(entry));
        }
    }

    /// Adds a newly published message that stays on disk until the head
    /// reaches it.
    pub(super) fn push_paged(&mut self, seq: u64, id: u64, size: u64) {
        self.len += 1;
        self.bytes += size;
        self.paged_len += 1;
        self.paged_bytes += size;
        if let Some(Paged::Run(run)) = self.paged.back_mut()
            && run.first_seq + run.count == seq
            && run.first_id + run.count == id
            && !run.redelivered
        {
            run.count += 1;
            run.bytes += size;
            return;
        }
        self.paged.push_back(Paged::Run(PagedRun {
            first_seq: seq,
            first_id: id,
            count: 1,
            bytes: size,
            redelivered: false,
        }));
    }

    /// Body bytes of the in-memory head.
    pub(super) fn head_bytes(&self) -> u64 {
        self.bytes - self.paged_bytes
    }

    /// Whether the in-memory head is empty.
    pub(super) fn head_is_empty(&self) -> bool {
        self.len == self.paged_len
    }

    /// Adds recovered messages left on disk.
    pub(super) fn push_run(&mut self, run: PagedRun) {
        let count = usize::try_from(run.count).unwrap_or(usize::MAX);
        self.len += count;
        self.paged_len += count;
        self.bytes += run.bytes;
        self.paged_bytes += run.bytes;
        self.paged.push_back(Paged::Run(run));
    }

    /// Accounts for paged messages that leave `paged` (to the head, or
    /// skipped): `count` messages, `bytes` of which are now in the head.
    pub(super) fn unpage(&mut self, count: usize, bytes: u64) {
        self.paged_len = self.paged_len.saturating_sub(count);
        self.paged_bytes = self.paged_bytes.saturating_sub(bytes);
    }

    /// Accounts for paged messages that left without reaching the head.
    pub(super) fn forget(&mut self, count: usize, bytes: u64) {
        self.unpage(count, bytes);
        self.len = self.len.saturating_sub(count);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Puts a returned message back in sequence order within its bucket.
    pub(super) fn requeue(&mut self, priority: u8, entry: Entry) {
        self.len += 1;
        self.bytes += entry.message.body_size() as u64;
        let bucket = self.buckets.entry(priority).or_default();
        let at = bucket.partition_point(|e| e.seq < entry.seq);
        bucket.insert(at, entry);
    }

    /// Takes the entries in memory whose messages are stored under
    /// `ids`, in delivery order within each priority.
    pub(super) fn take_stored(&mut self, ids: &std::collections::HashSet<u64>) -> Vec<Entry> {
        let mut taken = Vec::new();
        for bucket in self.buckets.values_mut() {
            let mut kept = VecDeque::with_capacity(bucket.len());
            for entry in bucket.drain(..) {
                if entry.stored.is_some_and(|id| ids.contains(&id)) {
                    self.len -= 1;
                    self.bytes = self.bytes.saturating_sub(entry.message.body_size() as u64);
                    taken.push(entry);
                } else {
                    kept.push_back(entry);
                }
            }
            *bucket = kept;
        }
        taken
    }

    pub(super) fn front(&self) -> Option<&Entry> {
        self.buckets.values().rev().find_map(|b| b.front())
    }

    pub(super) fn pop_front(&mut self) -> Option<Entry> {
        let entry = self
            .buckets
            .values_mut()
            .rev()
            .find_map(|b| b.pop_front())?;
        self.len -= 1;
        self.bytes -= entry.message.body_size() as u64;
        Some(entry)
    }

    /// The oldest message of the lowest priority (what drop-head drops).
    pub(super) fn pop_oldest(&mut self) -> Option<Entry> {
        let entry = self.buckets.values_mut().find_map(|b| b.pop_front())?;
        self.len -= 1;
        self.bytes -= entry.message.body_size() as u64;
        Some(entry)
    }

    /// The first `count` entries in delivery order, left in place.
    pub(super) fn peek(&self, count: usize) -> Vec<&Entry> {
        self.buckets.values().rev().flatten().take(count).collect()
    }

    /// Empties the queue: the in-memory messages, and the stored ids of
    /// those waiting on disk.
    pub(super) fn drain(&mut self) -> (Vec<Entry>, Vec<u64>) {
        self.len = 0;
        self.bytes = 0;
        self.paged_len = 0;
        self.paged_bytes = 0;
        let mut entries: Vec<Entry> = std::mem::take(&mut self.buckets)
            .into_values()
            .flatten()
            .collect();
        let mut ids = Vec::new();
        for paged in std::mem::take(&mut self.paged) {
            match paged {
                Paged::Entry(entry) => entries.push(entry),
                Paged::Run(run) => ids.extend(run.first_id..run.first_id + run.count),
            }
        }
        (entries, ids)
    }
}
