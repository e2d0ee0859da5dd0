//! The disk side of a durable queue: a log of enqueued persistent messages
//! and a log of which of them were settled (acknowledged, dropped, expired).
//!
//! A message's id is its offset in the message log. Settlements are written
//! unsynced and in groups: losing the last few after a crash only redelivers
//! messages, which AMQP allows for anything not yet settled. Every so often
//! the store writes a checkpoint (the lowest unsettled id and the settled ids
//! above it) into the settlement log and drops the older settlement records;
//! message segments wholly below the lowest unsettled id are reclaimed.
//!
//! Settlement record value layout: `[kind:1][count:4][id:8]*count` with kind
//! 0 for settled ids, or `[kind:1=1][low:8][count:4][id:8]*count` for a
//! checkpoint, big-endian.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_log::batch::{NewRecord, encode};
use sluice_log::{Clock, Durability, Log, LogManager, SystemClock};
use sluice_types::{LeaderEpoch, Offset};

use super::message::Message;
use crate::CoreError;

/// Settled ids waiting to be written, at most.
const SETTLE_FLUSH: usize = 512;
/// Settlement records between checkpoints.
const CHECKPOINT_EVERY: u64 = 256;

/// The durable part of one queue. Owned by the queue, behind its lock.
#[derive(Debug)]
pub(crate) struct QueueStore {
    messages: Arc<Log>,
    settlements: Arc<Log>,
    /// Persisted and not yet settled.
    outstanding: BTreeSet<u64>,
    /// Settled ids at or above the lowest outstanding id.
    settled: BTreeSet<u64>,
    pending_settle: Vec<u64>,
    records_since_checkpoint: u64,
}

/// What a store read back on open.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) store: QueueStore,
    pub(crate) messages: Vec<(u64, Message, i64)>,
}

/// A sync the publisher must wait for before confirming.
#[derive(Debug, Clone)]
pub struct PendingSync {
    log: Arc<Log>,
    end: Offset,
}

impl PendingSync {
    /// Waits until the message is on disk, sharing the sync with concurrent
    /// writers. Blocking.
    ///
    /// # Errors
    /// The log's sync failure.
    pub fn wait(&self) -> Result<(), CoreError> {
        self.log.sync_to(self.end)?;
        Ok(())
    }

    /// Whether two pending syncs are on the same log (the later one covers both).
    pub fn same_log(&self, other: &PendingSync) -> bool {
        Arc::ptr_eq(&self.log, &other.log)
    }

    /// The later of two syncs on the same log.
    pub fn max(self, other: PendingSync) -> PendingSync {
        if other.end > self.end { other } else { self }
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
    /// back every unsettled message in id order.
    pub(crate) fn open(logs: &LogManager, id: &str) -> Result<Recovered, CoreError> {
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

        let mut low = 0u64;
        let mut settled = BTreeSet::new();
        let mut records = 0u64;
        crate::replay::for_each_record(&settlements, settlements.log_start(), |record| {
            records += 1;
            if let Some(value) = record.value {
                apply_settlement(value, &mut low, &mut settled);
            }
        })?;

        let start = u64::try_from(messages.log_start().get()).unwrap_or(0);
        let low = low.max(start);
        settled.retain(|id| *id >= low);
        let mut recovered = Vec::new();
        let mut outstanding = BTreeSet::new();
        let from = Offset::from(i64::try_from(low).unwrap_or(i64::MAX));
        crate::replay::for_each_record(&messages, from, |record| {
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
            recovered.push((id, message, record.timestamp));
        })?;
        let mut store = QueueStore {
            messages,
            settlements,
            outstanding,
            settled,
            pending_settle: Vec::new(),
            records_since_checkpoint: records,
        };
        store.checkpoint()?;
        Ok(Recovered {
            store,
            messages: recovered,
        })
    }

    /// Appends one message; returns its id and what a confirm must wait for.
    pub(crate) fn append(
        &mut self,
        message: &Message,
    ) -> Result<(u64, Option<PendingSync>), CoreError> {
        let value = message
            .encode()
            .map_err(|reason| CoreError::Internal { reason })?;
        let mut batch = encode(&[NewRecord {
            key: None,
            value: Some(&value),
            timestamp: SystemClock.now_ms(),
        }])
        .map_err(|reason| CoreError::Internal {
            reason: format!("cannot encode a queue batch: {reason}"),
        })?;
        let info = self
            .messages
            .append_unsynced(&mut batch, LeaderEpoch::from(0))?;
        let id = u64::try_from(info.first_offset.get()).unwrap_or(0);
        self.outstanding.insert(id);
        let sync = (self.messages.durability() == Durability::Always).then(|| PendingSync {
            log: Arc::clone(&self.messages),
            end: info.last_offset.plus(1),
        });
        Ok((id, sync))
    }

    /// Records that `id` is settled; written with the next flush.
    pub(crate) fn settle(&mut self, id: u64) -> Result<(), CoreError> {
        if !self.outstanding.remove(&id) {
            return Ok(());
        }
        self.pending_settle.push(id);
        if self.pending_settle.len() >= SETTLE_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending settlements (unsynced), checkpoints when due, and
    /// reclaims message segments that hold only settled messages.
    pub(crate) fn flush(&mut self) -> Result<(), CoreError> {
        if self.pending_settle.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.pending_settle);
        let mut value = BytesMut::with_capacity(5 + 8 * ids.len());
        value.put_u8(0);
        value.put_u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
        for id in &ids {
            value.put_u64(*id);
        }
        self.append_settlement(&value)?;
        let low = self.low();
        self.settled.extend(ids.into_iter().filter(|id| *id >= low));
        self.settled = self.settled.split_off(&low);
        if self.records_since_checkpoint >= CHECKPOINT_EVERY {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// The lowest id not yet settled (the log end when all are).
    fn low(&self) -> u64 {
        self.outstanding
            .first()
            .copied()
            .unwrap_or_else(|| u64::try_from(self.messages.log_end().get()).unwrap_or(0))
    }

    fn checkpoint(&mut self) -> Result<(), CoreError> {
        let low = self.low();
        self.settled = self.settled.split_off(&low);
        let mut value = BytesMut::with_capacity(13 + 8 * self.settled.len());
        value.put_u8(1);
        value.put_u64(low);
        value.put_u32(u32::try_from(self.settled.len()).unwrap_or(u32::MAX));
        for id in &self.settled {
            value.put_u64(*id);
        }
        // The checkpoint must be on disk before the records it replaces go.
        let at = self.append_settlement(&value)?;
        self.settlements.sync_to(at.plus(1))?;
        self.settlements.advance_log_start(at)?;
        self.records_since_checkpoint = 0;
        let reclaim_to = Offset::from(i64::try_from(low).unwrap_or(i64::MAX))
            .min(self.messages.high_watermark());
        if reclaim_to > self.messages.log_start() {
            self.messages.advance_log_start(reclaim_to)?;
        }
        Ok(())
    }

    fn append_settlement(&mut self, value: &[u8]) -> Result<Offset, CoreError> {
        let mut batch = encode(&[NewRecord {
            key: None,
            value: Some(value),
            timestamp: SystemClock.now_ms(),
        }])
        .map_err(|reason| CoreError::Internal {
            reason: format!("cannot encode a settlement batch: {reason}"),
        })?;
        let info = self
            .settlements
            .append_unsynced(&mut batch, LeaderEpoch::from(0))?;
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

fn apply_settlement(value: Bytes, low: &mut u64, settled: &mut BTreeSet<u64>) {
    let mut value = value;
    if !value.has_remaining() {
        return;
    }
    let kind = value.get_u8();
    if kind == 1 {
        if value.remaining() < 8 {
            return;
        }
        *low = value.get_u64();
        settled.clear();
    }
    if value.remaining() < 4 {
        return;
    }
    let count = value.get_u32();
    for _ in 0..count {
        if value.remaining() < 8 {
            return;
        }
        settled.insert(value.get_u64());
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
    fn unsettled_messages_come_back_and_settled_ones_do_not() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = sluice_log::LogConfig::default();
        {
            let logs = LogManager::open(dir.path(), defaults.clone())?;
            let mut store = QueueStore::open(&logs, "a1")?.store;
            let mut ids = Vec::new();
            for n in 0..2000 {
                ids.push(store.append(&message(n))?.0);
            }
            // Settle all but every 7th, out of order.
            for id in ids.iter().rev().filter(|id| **id % 7 != 0) {
                store.settle(*id)?;
            }
            store.flush()?;
            logs.shutdown()?;
        }
        let logs = LogManager::open(dir.path(), defaults)?;
        let recovered = QueueStore::open(&logs, "a1")?;
        let bodies: Vec<Bytes> = recovered
            .messages
            .iter()
            .map(|(_, m, _)| m.body.clone())
            .collect();
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
    fn settled_segments_are_reclaimed() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let defaults = sluice_log::LogConfig {
            segment_bytes: 1 << 20,
            ..sluice_log::LogConfig::default()
        };
        let logs = LogManager::open(dir.path(), defaults)?;
        let mut store = QueueStore::open(&logs, "b2")?.store;
        let big = Message {
            body: Bytes::from(vec![7u8; 64 << 10]),
            ..message(0)
        };
        let mut ids = Vec::new();
        for _ in 0..64 {
            ids.push(store.append(&big)?.0);
        }
        store.messages.sync_to(store.messages.log_end())?;
        let before = store.messages.segment_count();
        assert!(before > 2, "the test needs several segments, got {before}");
        for id in ids {
            store.settle(id)?;
        }
        store.flush()?;
        store.checkpoint()?;
        assert!(store.messages.segment_count() < before);
        assert_eq!(store.outstanding(), 0);
        logs.shutdown()?;
        Ok(())
    }
}
