//! The disk side of a durable queue: a log of enqueued persistent messages
//! and a log of which of them were settled (acknowledged, dropped, expired).
//!
//! A message's id is its offset in the message log. Settlements are written
//! at the end of each queue operation that settles, together with marks of
//! first delivery (so that a message delivered before a restart comes back
//! flagged `redelivered`), unsynced: they survive a crash of the process; a power loss
//! can cost the last ones, which only redelivers messages, as AMQP allows
//! for anything not yet settled. Every so often the store writes a
//! checkpoint (the lowest unsettled id, the settled ids above it, the
//! delivered ids still outstanding), syncs it and drops the older records;
//! message segments wholly below the lowest unsettled id are reclaimed.
//!
//! Settlement record value layout, big-endian: `[kind:1=0][count:4][id:8]*count`
//! for settled ids; `[kind:1=2][count:4][id:8]*count` for delivered ids;
//! `[kind:1=1][low:8][count:4][id:8]*count[delivered_count:4][id:8]*delivered_count`
//! `[source_count:4]([name_len:2][name][offset:8])*source_count` for a
//! checkpoint (the source part may be missing in older ones); `[kind:1=3]`
//! marks a clean close. A quorum queue on one node also keeps its delivery
//! counts, `[kind:1=4][count:4]([id:8][returns:4])*count`, and the dead
//! letters it holds until their target confirms them (`at-least-once`),
//! `[kind:1=5][count:4]([id:8][reason:1])*count`; a checkpoint carries both
//! after its sources, in the same layouts without the kind (missing in
//! older ones).
//!
//! A message forwarded from a topic carries its source (topic, partition and
//! offset) in its record key, `[1][offset:8][name]`. The store keeps the
//! highest offset it holds from each source, across restarts (checkpoints
//! carry the map, records after the last checkpoint are rescanned), so that
//! a forwarder resuming from an older position after a crash does not store
//! a record twice.
//!
//! Delivery marks are written lazily (with the next settlement, or by the
//! queue's maintenance); they are trusted only after a clean close. After a
//! crash every recovered message is flagged `redelivered`, as RabbitMQ does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use sluice_log::batch::{NewRecord, encode};
use sluice_log::{Durability, Log, LogManager, ReadBound};
use sluice_types::Offset;
use sluice_types::{Clock, SystemClock};

use super::message::Message;
use super::queue::DeathReason;
use crate::CoreError;
use crate::ack::{AckLevel, PendingAck};

/// Settlement records between checkpoints.
const CHECKPOINT_EVERY: u64 = 4096;

/// The durable part of one queue. Owned by the queue, behind its lock.
#[derive(Debug)]
pub(crate) struct QueueStore {
    messages: Arc<Log>,
    pending: Arc<PendingWrites>,
    settlements: Arc<Log>,
    /// Persisted and not yet settled.
    outstanding: BTreeSet<u64>,
    /// Settled ids at or above the lowest outstanding id.
    settled: BTreeSet<u64>,
    /// Outstanding ids that have been delivered at least once.
    delivered: BTreeSet<u64>,
    pending_settle: Vec<u64>,
    pending_delivered: Vec<u64>,
    records_since_checkpoint: u64,
    /// Highest offset stored from each forwarding source.
    sources: BTreeMap<String, i64>,
    /// Outstanding ids that came back unsettled: times in all.
    returns: BTreeMap<u64, u32>,
    /// Outstanding ids that died and wait for their dead-letter target.
    held: BTreeMap<u64, DeathReason>,
    pending_returns: Vec<(u64, u32)>,
    pending_held: Vec<(u64, DeathReason)>,
}

/// Where a forwarded message came from: a topic partition's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `topic/partition`.
    pub name: String,
    pub offset: i64,
}

impl Source {
    fn key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(9 + self.name.len());
        key.push(1);
        key.extend_from_slice(&self.offset.to_be_bytes());
        key.extend_from_slice(self.name.as_bytes());
        key
    }

    fn from_key(key: &[u8]) -> Option<Source> {
        let (&tag, rest) = key.split_first()?;
        if tag != 1 || rest.len() < 8 {
            return None;
        }
        let (offset, name) = rest.split_at(8);
        Some(Source {
            name: String::from_utf8(name.to_vec()).ok()?,
            offset: i64::from_be_bytes(offset.try_into().ok()?),
        })
    }
}

/// What a store read back on open.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) store: QueueStore,
    /// The oldest unsettled messages, in id order, up to the memory budget.
    pub(crate) messages: Vec<RecoveredMessage>,
    /// The unsettled messages behind them, left on disk, in id order.
    pub(crate) paged: Vec<RecoveredRun>,
}

/// Unsettled messages with consecutive ids left on disk on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveredRun {
    pub(crate) first_id: u64,
    pub(crate) count: u64,
    /// Their body bytes.
    pub(crate) bytes: u64,
    /// Flag every message `redelivered` (after a crash).
    pub(crate) redelivered: bool,
}

/// A message read back from the log for a queue's head.
#[derive(Debug)]
pub(crate) struct PagedIn {
    pub(crate) id: u64,
    /// `None` when the record does not decode (it is skipped and settled).
    pub(crate) message: Option<Message>,
    /// Append time, wall-clock milliseconds.
    pub(crate) timestamp: i64,
    /// Delivered before a clean restart.
    pub(crate) delivered: bool,
    /// Times it came back unsettled (a quorum queue's delivery count).
    pub(crate) returns: u32,
}

/// An unsettled message read back on open.
#[derive(Debug)]
pub(crate) struct RecoveredMessage {
    pub(crate) id: u64,
    pub(crate) message: Message,
    /// Append time, wall-clock milliseconds (TTL counts from it).
    pub(crate) timestamp: i64,
    /// Delivered at least once before the restart.
    pub(crate) delivered: bool,
    /// Times it came back unsettled (a quorum queue's delivery count).
    pub(crate) returns: u32,
    /// It died and its dead-letter target had not confirmed it (a quorum
    /// queue dead-lettering at least once): dead-lettered again.
    pub(crate) held: Option<crate::messaging::queue::DeathReason>,
}

/// Messages enqueued but not yet written to the queue's log. Their ids are
/// given at enqueue (the log's next offsets, in order); the batch is written
/// by whoever needs it on disk first — a confirm's sync waiter, the
/// maintenance tick, a full buffer, or close — so a burst of publishes to a
/// queue costs one write, not one per message.
#[derive(Debug)]
pub(crate) struct PendingWrites {
    log: Arc<Log>,
    state: std::sync::Mutex<PendingState>,
}

#[derive(Debug)]
struct PendingState {
    /// Id of the first buffered message.
    first_id: u64,
    /// `(record key, encoded message, append time)`.
    values: Vec<(Option<Vec<u8>>, Vec<u8>, i64)>,
    bytes: usize,
}

/// Buffered bytes at which the enqueueing thread writes the batch itself.
const PENDING_WRITE_BYTES: usize = 512 << 10;

impl PendingWrites {
    fn state(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue's message log.
    pub(crate) fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Writes the buffered messages as one record batch (unsynced).
    pub(crate) fn write(&self) -> Result<(), CoreError> {
        let mut state = self.state();
        if state.values.is_empty() {
            return Ok(());
        }
        let records: Vec<NewRecord<'_>> = state
            .values
            .iter()
            .map(|(key, value, timestamp)| NewRecord {
                key: key.as_deref(),
                value: Some(value),
                timestamp: *timestamp,
            })
            .collect();
        let mut batch = encode(&records).map_err(|reason| CoreError::Internal {
            reason: format!("cannot encode a queue batch: {reason}"),
        })?;
        let info = self.log.append_unsynced(&mut batch, crate::LOCAL_EPOCH)?;
        let written = u64::try_from(info.first_offset.get()).unwrap_or(0);
        if written != state.first_id {
            // Ids were handed out as the log's next offsets; only this
            // buffer appends to the log, so a mismatch is a broken invariant.
            return Err(CoreError::Internal {
                reason: format!(
                    "queue log {} wrote offset {written} where id {} was expected",
                    self.log.dir().display(),
                    state.first_id
                ),
            });
        }
        state.first_id += state.values.len() as u64;
        state.values.clear();
        state.bytes = 0;
        Ok(())
    }
}

/// Longest readable part of a store id: the log names around it stay within
/// the log manager's 249 characters.
const READABLE_NAME_MAX: usize = 120;

/// The store id of a new durable queue: its name, escaped to the characters
/// a log directory may hold, then `token`, so that an operator can tell the
/// queues' logs apart on disk while each id stays unique. Letters, digits,
/// `.` and `-` stay as they are; every other byte becomes `_` and two hex
/// digits (`dead letters/1` is `dead_20letters_2f1`). Ids are stored in the
/// definitions, so queues created before this naming keep their bare tokens.
pub(crate) fn store_id(queue_name: &str, token: &str) -> String {
    let mut readable = String::new();
    for byte in queue_name.bytes() {
        if readable.len() >= READABLE_NAME_MAX {
            break;
        }
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-') {
            readable.push(char::from(byte));
        } else {
            readable.push_str(&format!("_{byte:02x}"));
        }
    }
    if readable.is_empty() {
        token.to_owned()
    } else {
        format!("{readable}-{token}")
    }
}

pub(crate) fn message_log_name(id: &str) -> String {
    format!("queue-{id}-messages")
}

pub(crate) fn settlement_log_name(id: &str) -> String {
    format!("queue-{id}-settled")
}

impl QueueStore {
    /// Opens (or creates) the logs of the queue with store id `id` and reads
    /// back every unsettled message in id order: the oldest into memory,
    /// up to `budget` body bytes, the rest as runs left on disk.
    pub(crate) fn open(logs: &LogManager, id: &str, budget: u64) -> Result<Recovered, CoreError> {
        // Reclaimed by settlement, never by age or size.
        let config = sluice_log::LogConfig {
            cleanup_delete: false,
            cleanup_compact: false,
            retention_bytes: None,
            retention_time: None,
            ..logs.defaults().clone()
        };
        let messages = logs.get_or_create(&message_log_name(id), Some(config.clone()))?;
        let settlements = logs.get_or_create(&settlement_log_name(id), Some(config.clone()))?;
        messages.set_config(config.clone());
        settlements.set_config(config);

        let mut marks = Marks::default();
        let mut records = 0u64;
        crate::replay::for_each_record(&settlements, settlements.log_start(), |record| {
            records += 1;
            if let Some(value) = record.value {
                marks.apply(value);
            }
        })?;
        let Marks {
            low,
            mut settled,
            mut delivered,
            clean,
            mut sources,
            mut returns,
            mut held,
        } = marks;

        let start = u64::try_from(messages.log_start().get()).unwrap_or(0);
        let low = low.max(start);
        settled.retain(|id| *id >= low);
        let mut recovered = Vec::new();
        let mut paged: Vec<RecoveredRun> = Vec::new();
        let mut in_memory = 0u64;
        let mut outstanding = BTreeSet::new();
        let from = Offset::from(i64::try_from(low).unwrap_or(i64::MAX));
        crate::replay::for_each_record(&messages, from, |record| {
            if let Some(source) = record.key.as_deref().and_then(Source::from_key) {
                let highest = sources.entry(source.name).or_insert(source.offset);
                *highest = (*highest).max(source.offset);
            }
            let Ok(id) = u64::try_from(record.offset) else {
                return;
            };
            if id < low || settled.contains(&id) {
                return;
            }
            let Some(message) = record.value.and_then(Message::decode) else {
                tracing::warn!(id, "skipping an undecodable queued message");
                return;
            };
            outstanding.insert(id);
            let size = message.body_size() as u64;
            // A held dead letter is not queued: it is dead-lettered again,
            // wherever it is.
            let held = held.get(&id).copied();
            if held.is_some() || (paged.is_empty() && in_memory.saturating_add(size) <= budget) {
                in_memory += size;
                recovered.push(RecoveredMessage {
                    id,
                    message,
                    timestamp: record.timestamp,
                    // After a crash the latest marks may be missing: flag every
                    // message (RabbitMQ does the same after an unclean stop).
                    delivered: !clean || delivered.contains(&id),
                    returns: returns.get(&id).copied().unwrap_or(0),
                    held,
                });
                return;
            }
            match paged.last_mut() {
                Some(run) if run.first_id + run.count == id => {
                    run.count += 1;
                    run.bytes += size;
                }
                _ => paged.push(RecoveredRun {
                    first_id: id,
                    count: 1,
                    bytes: size,
                    redelivered: !clean,
                }),
            }
        })?;
        delivered.retain(|id| outstanding.contains(id));
        returns.retain(|id, _| outstanding.contains(id));
        held.retain(|id, _| outstanding.contains(id));
        let pending = Arc::new(PendingWrites {
            log: Arc::clone(&messages),
            state: std::sync::Mutex::new(PendingState {
                first_id: u64::try_from(messages.log_end().get()).unwrap_or(0),
                values: Vec::new(),
                bytes: 0,
            }),
        });
        let mut store = QueueStore {
            pending,
            messages,
            settlements,
            outstanding,
            settled,
            delivered,
            pending_settle: Vec::new(),
            pending_delivered: Vec::new(),
            records_since_checkpoint: records,
            sources,
            returns,
            held,
            pending_returns: Vec::new(),
            pending_held: Vec::new(),
        };
        store.checkpoint()?;
        Ok(Recovered {
            store,
            messages: recovered,
            paged,
        })
    }

    /// Reads back unsettled messages from `first_id` on, at most `count`
    /// and about `max_bytes` (at least one), for a queue whose head has
    /// run dry. Writes the buffered messages first if they are wanted.
    ///
    /// # Errors
    /// The log's write or read failure.
    pub(crate) fn read(
        &self,
        first_id: u64,
        count: u64,
        max_bytes: usize,
    ) -> Result<Vec<PagedIn>, CoreError> {
        let end = first_id.saturating_add(count);
        if end > self.pending.state().first_id {
            self.pending.write()?;
        }
        let mut out = Vec::new();
        let mut next = first_id;
        let mut bytes = 0usize;
        while next < end && (out.is_empty() || bytes < max_bytes) {
            let from = Offset::from(i64::try_from(next).unwrap_or(i64::MAX));
            if from >= self.messages.log_end() {
                break;
            }
            let read = self.messages.read(from, max_bytes, ReadBound::LogEnd)?;
            let Some(after) = read.next_offset else { break };
            let mut batches = read.records;
            while batches.has_remaining() {
                let Ok(set) = RecordBatchDecoder::decode(&mut batches) else {
                    break;
                };
                for record in set.records {
                    let Ok(id) = u64::try_from(record.offset) else {
                        continue;
                    };
                    if id < next || id >= end {
                        continue;
                    }
                    let value = record.value.unwrap_or_default();
                    bytes += value.len();
                    out.push(PagedIn {
                        id,
                        message: Message::decode(value),
                        timestamp: record.timestamp,
                        delivered: self.delivered.contains(&id),
                        returns: self.returns.get(&id).copied().unwrap_or(0),
                    });
                }
            }
            let after = u64::try_from(after.get()).unwrap_or(u64::MAX);
            if after <= next {
                break;
            }
            next = after;
        }
        Ok(out)
    }

    /// Buffers one message for the queue's log; returns its id and what a
    /// confirm must wait for.
    pub(crate) fn append(
        &mut self,
        message: &Message,
        source: Option<&Source>,
    ) -> Result<(u64, Option<PendingAck>), CoreError> {
        let value = message
            .encode()
            .map_err(|reason| CoreError::Internal { reason })?;
        let key = source.map(Source::key);
        if let Some(source) = source {
            let highest = self
                .sources
                .entry(source.name.clone())
                .or_insert(source.offset);
            *highest = (*highest).max(source.offset);
        }
        let (id, full) = {
            let mut state = self.pending.state();
            let id = state.first_id + state.values.len() as u64;
            state.bytes += value.len();
            state.values.push((key, value, SystemClock.now_ms()));
            // A forwarded message is written before it can be delivered: a
            // consumer may see it at once, and if the process died with it
            // only in memory, the forwarder would publish it again as new
            // (unflagged) instead of the queue redelivering it.
            (id, source.is_some() || state.bytes >= PENDING_WRITE_BYTES)
        };
        if full {
            self.pending.write()?;
        }
        self.outstanding.insert(id);
        // Written-level confirms need no wait: only `always` returns one.
        let sync = (self.messages.durability() == Durability::Always).then(|| {
            PendingAck::queue(
                Arc::clone(&self.pending),
                Offset::from(i64::try_from(id + 1).unwrap_or(i64::MAX)),
                AckLevel::LocalDurable,
            )
        });
        Ok((id, sync))
    }

    /// Whether the store already holds (or held) `source`'s record.
    pub(crate) fn has_source(&self, source: &Source) -> bool {
        self.sources
            .get(&source.name)
            .is_some_and(|highest| *highest >= source.offset)
    }

    /// Records that `id` is settled; written by the next flush.
    pub(crate) fn settle(&mut self, id: u64) {
        if self.outstanding.remove(&id) {
            self.delivered.remove(&id);
            self.returns.remove(&id);
            self.held.remove(&id);
            self.pending_settle.push(id);
        }
    }

    /// Records that `id` came back unsettled, `returns` times in all (a
    /// quorum queue's delivery count); written by the next flush.
    pub(crate) fn returned(&mut self, id: u64, returns: u32) {
        if self.outstanding.contains(&id) {
            self.returns.insert(id, returns);
            self.pending_returns.push((id, returns));
        }
    }

    /// Records that `id` died and is held until its dead-letter target
    /// confirmed it; written by the next flush.
    pub(crate) fn held(&mut self, id: u64, reason: DeathReason) {
        if self.outstanding.contains(&id) {
            self.held.insert(id, reason);
            self.pending_held.push((id, reason));
        }
    }

    /// Records that `id` has been delivered; written by the next flush.
    pub(crate) fn mark_delivered(&mut self, id: u64) {
        if self.outstanding.contains(&id) && self.delivered.insert(id) {
            self.pending_delivered.push(id);
        }
    }

    /// Writes pending settlements and delivery marks (unsynced, one
    /// batch), checkpoints when due, and reclaims message segments that
    /// hold only settled messages.
    pub(crate) fn flush(&mut self) -> Result<(), CoreError> {
        self.pending.write()?;
        if self.pending_settle.is_empty()
            && self.pending_delivered.is_empty()
            && self.pending_returns.is_empty()
            && self.pending_held.is_empty()
        {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.pending_settle);
        let delivered = std::mem::take(&mut self.pending_delivered);
        let returned = std::mem::take(&mut self.pending_returns);
        let held = std::mem::take(&mut self.pending_held);
        let mut values = Vec::with_capacity(4);
        // Counts and holds of ids settled since are dropped on open (only
        // outstanding ids keep theirs).
        if !returned.is_empty() {
            let mut value = BytesMut::with_capacity(5 + 12 * returned.len());
            value.put_u8(4);
            put_returns(&mut value, returned.iter().copied());
            values.push(value.freeze());
        }
        if !held.is_empty() {
            let mut value = BytesMut::with_capacity(5 + 9 * held.len());
            value.put_u8(5);
            put_held(&mut value, held.iter().copied());
            values.push(value.freeze());
        }
        if !ids.is_empty() {
            values.push(id_list(0, &ids));
        }
        if !delivered.is_empty() {
            values.push(id_list(2, &delivered));
        }
        self.append_settlements(&values)?;
        let low = self.low();
        self.settled.extend(ids.into_iter().filter(|id| *id >= low));
        self.settled = self.settled.split_off(&low);
        if self.records_since_checkpoint >= CHECKPOINT_EVERY {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Whether settlements, delivery counts or held dead letters wait to
    /// be written (delivery marks are written lazily).
    pub(crate) fn has_pending_settlements(&self) -> bool {
        !self.pending_settle.is_empty()
            || !self.pending_returns.is_empty()
            || !self.pending_held.is_empty()
    }

    /// Writes everything pending and then the marker of a clean close, so
    /// that the next open trusts the delivery marks.
    pub(crate) fn close(&mut self) -> Result<(), CoreError> {
        self.flush()?;
        self.append_settlements(&[Bytes::from_static(&[3])])?;
        Ok(())
    }

    /// The lowest id not yet settled (the log end when all are).
    fn low(&self) -> u64 {
        self.outstanding
            .first()
            .copied()
            .unwrap_or_else(|| self.pending.state().first_id)
    }

    fn checkpoint(&mut self) -> Result<(), CoreError> {
        let low = self.low();
        self.settled = self.settled.split_off(&low);
        let mut value =
            BytesMut::with_capacity(17 + 8 * (self.settled.len() + self.delivered.len()));
        value.put_u8(1);
        value.put_u64(low);
        for ids in [&self.settled, &self.delivered] {
            value.put_u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
            for id in ids {
                value.put_u64(*id);
            }
        }
        value.put_u32(u32::try_from(self.sources.len()).unwrap_or(u32::MAX));
        for (name, offset) in &self.sources {
            let name = name.as_bytes();
            let len = name.len().min(usize::from(u16::MAX));
            value.put_u16(len as u16);
            value.put_slice(name.get(..len).unwrap_or_default());
            value.put_i64(*offset);
        }
        put_returns(&mut value, self.returns.iter().map(|(id, n)| (*id, *n)));
        put_held(
            &mut value,
            self.held.iter().map(|(id, reason)| (*id, *reason)),
        );
        // The checkpoint must be on disk before the records it replaces go.
        let at = self.append_settlements(&[value.freeze()])?;
        self.settlements.sync_to(at.plus(1))?;
        self.settlements.advance_log_start(at)?;
        self.records_since_checkpoint = 0;
        let reclaim_to = Offset::from(i64::try_from(low).unwrap_or(i64::MAX))
            .min(crate::partition::visible_end(&self.messages));
        if reclaim_to > self.messages.log_start() {
            self.messages.advance_log_start(reclaim_to)?;
        }
        Ok(())
    }

    fn append_settlements(&mut self, values: &[Bytes]) -> Result<Offset, CoreError> {
        let entries: Vec<_> = values.iter().map(|v| (None, Some(v.as_ref()))).collect();
        let mut batch = crate::replay::batch_of(&entries, "settlement")?;
        let info = self
            .settlements
            .append_unsynced(&mut batch, crate::LOCAL_EPOCH)?;
        self.records_since_checkpoint += 1;
        Ok(info.first_offset)
    }

    /// Number of persisted messages not yet settled.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Bytes the queue's logs take on disk.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.messages.size_bytes() + self.settlements.size_bytes()
    }
}

/// `[kind:1][count:4][id:8]*count`.
fn id_list(kind: u8, ids: &[u64]) -> Bytes {
    let mut value = BytesMut::with_capacity(5 + 8 * ids.len());
    value.put_u8(kind);
    value.put_u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
    for id in ids {
        value.put_u64(*id);
    }
    value.freeze()
}

/// Delivery counts as a quorum queue's records hold them (here and in its
/// replicated store), `[count:4]([id:8][returns:4])*count`.
pub(crate) fn put_returns(value: &mut BytesMut, counts: impl ExactSizeIterator<Item = (u64, u32)>) {
    value.put_u32(u32::try_from(counts.len()).unwrap_or(u32::MAX));
    for (id, returns) in counts {
        value.put_u64(id);
        value.put_u32(returns);
    }
}

/// Held dead letters as a quorum queue's records hold them,
/// `[count:4]([id:8][reason:1])*count`.
pub(crate) fn put_held(
    value: &mut BytesMut,
    held: impl ExactSizeIterator<Item = (u64, DeathReason)>,
) {
    value.put_u32(u32::try_from(held.len()).unwrap_or(u32::MAX));
    for (id, reason) in held {
        value.put_u64(id);
        value.put_u8(reason.code());
    }
}

/// Reads what [`put_returns`] wrote (as much of it as is whole).
pub(crate) fn read_returns(value: &mut Bytes) -> Vec<(u64, u32)> {
    if value.remaining() < 4 {
        return Vec::new();
    }
    let count = value.get_u32() as usize;
    let mut out = Vec::with_capacity(count.min(value.remaining() / 12));
    while out.len() < count && value.remaining() >= 12 {
        out.push((value.get_u64(), value.get_u32()));
    }
    out
}

/// Reads what [`put_held`] wrote (as much of it as is whole).
pub(crate) fn read_held(value: &mut Bytes) -> Vec<(u64, DeathReason)> {
    if value.remaining() < 4 {
        return Vec::new();
    }
    let count = value.get_u32() as usize;
    let mut out = Vec::with_capacity(count.min(value.remaining() / 9));
    while out.len() < count && value.remaining() >= 9 {
        out.push((value.get_u64(), DeathReason::from_code(value.get_u8())));
    }
    out
}

/// What the settlement log says, replayed record by record.
#[derive(Debug, Default)]
struct Marks {
    low: u64,
    settled: BTreeSet<u64>,
    delivered: BTreeSet<u64>,
    /// The last record is the marker of a clean close.
    clean: bool,
    /// Highest offset per forwarding source, from the last checkpoint.
    sources: BTreeMap<String, i64>,
    /// Delivery counts (ids not yet settled when read back may be among
    /// them; the caller keeps the outstanding ones).
    returns: BTreeMap<u64, u32>,
    /// Held dead letters, as `returns`.
    held: BTreeMap<u64, DeathReason>,
}

impl Marks {
    fn apply(&mut self, mut value: Bytes) {
        fn ids(value: &mut Bytes, into: &mut BTreeSet<u64>) {
            if value.remaining() < 4 {
                return;
            }
            let count = value.get_u32();
            for _ in 0..count {
                if value.remaining() < 8 {
                    return;
                }
                into.insert(value.get_u64());
            }
        }
        fn sources(value: &mut Bytes) -> BTreeMap<String, i64> {
            let mut found = BTreeMap::new();
            if value.remaining() < 4 {
                return found;
            }
            for _ in 0..value.get_u32() {
                if value.remaining() < 2 {
                    break;
                }
                let len = usize::from(value.get_u16());
                if value.remaining() < len + 8 {
                    break;
                }
                let name = String::from_utf8_lossy(&value.split_to(len)).into_owned();
                found.insert(name, value.get_i64());
            }
            found
        }
        if !value.has_remaining() {
            return;
        }
        let kind = value.get_u8();
        self.clean = kind == 3;
        match kind {
            0 => ids(&mut value, &mut self.settled),
            3 => {}
            4 => self.returns.extend(read_returns(&mut value)),
            5 => self.held.extend(read_held(&mut value)),
            1 => {
                if value.remaining() < 8 {
                    return;
                }
                self.low = value.get_u64();
                self.settled.clear();
                self.delivered.clear();
                self.returns.clear();
                self.held.clear();
                ids(&mut value, &mut self.settled);
                ids(&mut value, &mut self.delivered);
                self.sources = sources(&mut value);
                self.returns.extend(read_returns(&mut value));
                self.held.extend(read_held(&mut value));
            }
            2 => ids(&mut value, &mut self.delivered),
            _ => tracing::warn!(kind, "skipping a settlement record of unknown kind"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;

    fn message(n: usize) -> Message {
        Message {
            exchange: "".into(),
            routing_key: "q".into(),
            properties: BasicProperties::default().with_delivery_mode(2),
            body: Bytes::from(format!("m{n}")),
        }
    }

    #[test]
    fn store_ids_carry_the_escaped_queue_name_and_open_as_logs() -> Result<(), CoreError> {
        assert_eq!(store_id("orders.dlq", "00ff"), "orders.dlq-00ff");
        assert_eq!(
            store_id("dead letters/1", "00ff"),
            "dead_20letters_2f1-00ff"
        );
        assert_eq!(store_id("", "00ff"), "00ff");
        assert_eq!(store_id("é", "00ff"), "_c3_a9-00ff");
        let long = store_id(&"x/".repeat(500), &"f".repeat(16));
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = LogManager::open(dir.path(), sluice_log::LogConfig::default())?;
        for id in [long, store_id("a b:c*?<>|\\\"'", "0123")] {
            QueueStore::open(&logs, &id, u64::MAX)?;
            assert!(logs.get(&message_log_name(&id)).is_some(), "{id}");
            assert!(logs.get(&settlement_log_name(&id)).is_some(), "{id}");
        }
        Ok(())
    }

    #[test]
    fn forwarded_sources_are_remembered_across_crashes_and_reclaim() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = sluice_log::LogConfig::default();
        let source = |offset| Source {
            name: "orders/0".into(),
            offset,
        };
        {
            let logs = LogManager::open(dir.path(), defaults.clone())?;
            let mut store = QueueStore::open(&logs, "f1", u64::MAX)?.store;
            for offset in 0..3 {
                let (id, sync) = store.append(&message(0), Some(&source(offset)))?;
                if let Some(sync) = sync {
                    sync.wait()?;
                }
                // Consumed and acknowledged right away.
                store.settle(id);
            }
            store.flush()?;
            // Dropped without close: a crash.
        }
        for _ in 0..2 {
            // The first open finds the sources in the message log, then
            // checkpoints (reclaiming the settled messages); the second
            // finds them in the checkpoint alone.
            let logs = LogManager::open(dir.path(), defaults.clone())?;
            let recovered = QueueStore::open(&logs, "f1", u64::MAX)?;
            assert!(recovered.messages.is_empty());
            assert!(recovered.store.has_source(&source(2)));
            assert!(recovered.store.has_source(&source(0)));
            assert!(!recovered.store.has_source(&source(3)));
            assert!(!recovered.store.has_source(&Source {
                name: "orders/1".into(),
                offset: 0,
            }));
        }
        Ok(())
    }

    #[test]
    fn unsettled_messages_come_back_and_settled_ones_do_not() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = sluice_log::LogConfig::default();
        {
            let logs = LogManager::open(dir.path(), defaults.clone())?;
            let mut store = QueueStore::open(&logs, "a1", u64::MAX)?.store;
            let mut ids = Vec::new();
            for n in 0..2000 {
                ids.push(store.append(&message(n), None)?.0);
            }
            // Settle all but every 7th, out of order.
            for id in ids.iter().rev().filter(|id| **id % 7 != 0) {
                store.settle(*id);
            }
            // Message 14 was delivered before the restart, 21 was not.
            store.mark_delivered(ids[14]);
            store.close()?;
            store.flush()?;
            logs.shutdown()?;
        }
        let logs = LogManager::open(dir.path(), defaults)?;
        let recovered = QueueStore::open(&logs, "a1", u64::MAX)?;
        let bodies: Vec<Bytes> = recovered
            .messages
            .iter()
            .map(|m| m.message.body.clone())
            .collect();
        let delivered: Vec<u64> = recovered
            .messages
            .iter()
            .filter(|m| m.delivered)
            .map(|m| m.id)
            .collect();
        assert_eq!(
            delivered,
            vec![14],
            "only the message delivered before the restart"
        );
        let expected: Vec<Bytes> = (0..2000)
            .filter(|n| n % 7 == 0)
            .map(|n| Bytes::from(format!("m{n}")))
            .collect();
        assert_eq!(bodies, expected);
        assert_eq!(recovered.store.outstanding(), expected.len());
        logs.shutdown()?;
        Ok(())
    }

    #[test]
    fn delivery_counts_and_held_dead_letters_survive_crashes_and_checkpoints()
    -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = sluice_log::LogConfig::default();
        {
            let logs = LogManager::open(dir.path(), defaults.clone())?;
            let mut store = QueueStore::open(&logs, "q1", u64::MAX)?.store;
            for n in 0..10 {
                store.append(&message(n), None)?;
            }
            store.returned(2, 1);
            store.returned(2, 2);
            store.returned(5, 1);
            store.held(7, DeathReason::DeliveryLimit);
            store.held(8, DeathReason::Expired);
            store.settle(5);
            store.settle(8);
            // No close: the process dies after the unsynced write.
            store.flush()?;
            logs.shutdown()?;
        }
        // Twice: the first open replays the records and checkpoints, the
        // second reads the checkpoint. Two bodies fit in memory; the
        // rest stays on disk, except the held letter.
        for round in 0..2 {
            let logs = LogManager::open(dir.path(), defaults.clone())?;
            let recovered = QueueStore::open(&logs, "q1", 4)?;
            let in_memory: Vec<(u64, u32, Option<DeathReason>)> = recovered
                .messages
                .iter()
                .map(|m| (m.id, m.returns, m.held))
                .collect();
            assert_eq!(
                in_memory,
                vec![
                    (0, 0, None),
                    (1, 0, None),
                    (7, 0, Some(DeathReason::DeliveryLimit))
                ],
                "round {round}"
            );
            let runs: Vec<(u64, u64)> = recovered
                .paged
                .iter()
                .map(|r| (r.first_id, r.count))
                .collect();
            assert_eq!(
                runs,
                vec![(2, 3), (6, 1), (9, 1)],
                "round {round}: 5 and 8 settled, 7 held"
            );
            let paged: Vec<(u64, u32)> = recovered
                .store
                .read(2, 3, usize::MAX)?
                .iter()
                .map(|m| (m.id, m.returns))
                .collect();
            assert_eq!(paged, vec![(2, 2), (3, 0), (4, 0)], "round {round}");
            logs.shutdown()?;
        }
        Ok(())
    }

    #[test]
    fn recovery_reads_the_head_into_memory_and_leaves_the_rest_on_disk() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = sluice_log::LogConfig::default();
        {
            let logs = LogManager::open(dir.path(), defaults.clone())?;
            let mut store = QueueStore::open(&logs, "p1", u64::MAX)?.store;
            for n in 0..50 {
                // Bodies "m10".."m59": 3 bytes each.
                store.append(&message(n + 10), None)?;
            }
            for id in 20..25 {
                store.settle(id);
            }
            store.mark_delivered(30);
            store.close()?;
            logs.shutdown()?;
        }
        let logs = LogManager::open(dir.path(), defaults)?;
        let recovered = QueueStore::open(&logs, "p1", 30)?;
        let head: Vec<u64> = recovered.messages.iter().map(|m| m.id).collect();
        assert_eq!(
            head,
            (0..10).collect::<Vec<_>>(),
            "30 bytes of 3-byte bodies"
        );
        let runs: Vec<(u64, u64, u64)> = recovered
            .paged
            .iter()
            .map(|r| (r.first_id, r.count, r.bytes))
            .collect();
        assert_eq!(
            runs,
            vec![(10, 10, 30), (25, 25, 75)],
            "runs split where messages were settled"
        );
        assert!(
            recovered.paged.iter().all(|r| !r.redelivered),
            "clean close"
        );
        // Reading back a run: bounded by count, and by bytes after the first.
        let store = recovered.store;
        let read = store.read(25, 25, usize::MAX)?;
        let ids: Vec<u64> = read.iter().map(|m| m.id).collect();
        assert_eq!(ids, (25..50).collect::<Vec<_>>());
        let bodies: Vec<Bytes> = read
            .iter()
            .filter_map(|m| m.message.as_ref().map(|m| m.body.clone()))
            .collect();
        assert_eq!(
            bodies,
            (35..60)
                .map(|n| Bytes::from(format!("m{n}")))
                .collect::<Vec<_>>()
        );
        let delivered: Vec<u64> = read.iter().filter(|m| m.delivered).map(|m| m.id).collect();
        assert_eq!(delivered, vec![30]);
        assert_eq!(store.read(12, 3, usize::MAX)?.len(), 3);
        assert_eq!(store.read(12, 38, 1)?.first().map(|m| m.id), Some(12));
        logs.shutdown()?;
        Ok(())
    }

    #[test]
    fn after_a_crash_every_recovered_message_is_flagged() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = sluice_log::LogConfig::default();
        {
            let logs = LogManager::open(dir.path(), defaults.clone())?;
            let mut store = QueueStore::open(&logs, "c3", u64::MAX)?.store;
            let first = store.append(&message(0), None)?.0;
            store.append(&message(1), None)?;
            store.mark_delivered(first);
            store.flush()?;
            // No close(): as after kill -9.
            logs.shutdown()?;
        }
        let logs = LogManager::open(dir.path(), defaults)?;
        let recovered = QueueStore::open(&logs, "c3", u64::MAX)?;
        assert_eq!(recovered.messages.len(), 2);
        assert!(recovered.messages.iter().all(|m| m.delivered));
        logs.shutdown()?;
        Ok(())
    }

    #[test]
    fn settled_segments_are_reclaimed() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = sluice_log::LogConfig {
            segment_bytes: 1 << 20,
            ..sluice_log::LogConfig::default()
        };
        let logs = LogManager::open(dir.path(), defaults)?;
        let mut store = QueueStore::open(&logs, "b2", u64::MAX)?.store;
        let big = Message {
            body: Bytes::from(vec![7u8; 64 << 10]),
            ..message(0)
        };
        let mut ids = Vec::new();
        for _ in 0..64 {
            ids.push(store.append(&big, None)?.0);
        }
        store.messages.sync_to(store.messages.log_end())?;
        let before = store.messages.segment_count();
        assert!(before > 2, "the test needs several segments, got {before}");
        for id in ids {
            store.settle(id);
        }
        store.flush()?;
        store.checkpoint()?;
        assert!(store.messages.segment_count() < before);
        assert_eq!(store.outstanding(), 0);
        logs.shutdown()?;
        Ok(())
    }
}
