//! Idempotent producers (KIP-98): producer ids, and per partition the
//! sequence numbers of each producer's recent batches, so a retried batch
//! is answered with its first offset instead of being written twice.
//!
//! Producer ids are handed out from blocks whose end is an
//! `AllocateProducerIds` command in the metadata log, durable before any id
//! of the block is used, so an id is never handed out twice, restarts
//! included. Sequence state and transactions are rebuilt on open from the
//! batch headers of each partition's newest segments.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_log::batch::BatchHeader;
use sluice_types::Offset;

use crate::CoreError;
use crate::metadata::{Metadata, MetadataCommand};
use crate::transactions::{TxnIndex, decode_marker};

/// Batches remembered per producer and partition, as Kafka keeps (and as
/// clients bound their in-flight requests: max.in.flight <= 5).
const REMEMBERED_BATCHES: usize = 5;
/// Ids reserved at a time.
const ID_BLOCK: i64 = 1_000;

/// Hands out producer ids.
#[derive(Debug)]
pub struct ProducerIds {
    metadata: Arc<Metadata>,
    /// (next id, end of the allocated block).
    next: Mutex<(i64, i64)>,
}

impl ProducerIds {
    /// Hands out ids from the blocks `metadata` records (ids below the end
    /// of the last block may have been handed out).
    pub(crate) fn new(metadata: Arc<Metadata>) -> ProducerIds {
        ProducerIds {
            metadata,
            next: Mutex::new((0, 0)),
        }
    }

    /// A producer id never handed out before, by any node. Blocking: a new
    /// block is an `AllocateProducerIds` command, committed before any of
    /// its ids is used.
    ///
    /// # Errors
    /// The metadata's commit failure.
    pub fn allocate(&self) -> Result<i64, CoreError> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        Self::reserve(&self.metadata, &mut next)?;
        let id = next.0;
        next.0 += 1;
        Ok(id)
    }

    /// Reserves a block of ids now if none is in hand, so that this node
    /// can hand out ids while it cannot reach the controller (a node of a
    /// cluster does it once registered, as Kafka's brokers hold a block
    /// from the controller). Blocking.
    ///
    /// # Errors
    /// The metadata's commit failure.
    pub fn prefetch(&self) -> Result<(), CoreError> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        Self::reserve(&self.metadata, &mut next)
    }

    fn reserve(metadata: &Metadata, next: &mut (i64, i64)) -> Result<(), CoreError> {
        // Another node may take the block this one asked for first; then
        // ask again past it.
        let mut attempts = 0;
        while next.0 >= next.1 {
            let end = metadata.state().producer_ids_end + ID_BLOCK;
            match metadata.commit(MetadataCommand::AllocateProducerIds { end }) {
                Ok(()) => *next = (end - ID_BLOCK, end),
                Err(CoreError::Internal { .. }) if attempts < 5 => attempts += 1,
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchRecord {
    first_sequence: i32,
    last_sequence: i32,
    first_offset: Offset,
}

#[derive(Debug, Default)]
pub(crate) struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchRecord>,
}

/// What a partition remembers of `producer_id`, for a refusal's log line:
/// its epoch and its recent batches as `first..=last@offset`.
pub(crate) fn describe(producers: &HashMap<i64, ProducerEntry>, producer_id: i64) -> String {
    producers.get(&producer_id).map_or_else(
        || "unknown".to_owned(),
        |entry| {
            let batches: Vec<String> = entry
                .batches
                .iter()
                .map(|b| {
                    format!(
                        "{}..={}@{}",
                        b.first_sequence, b.last_sequence, b.first_offset
                    )
                })
                .collect();
            format!("epoch {} batches [{}]", entry.epoch, batches.join(", "))
        },
    )
}

/// What to do with an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// New data in sequence: append it.
    Append,
    /// A retry of a batch already written at this offset.
    Duplicate { first_offset: Offset },
}

/// Sequence state of every idempotent producer writing to one partition,
/// and its transactions (open, decided, aborted).
#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: Mutex<HashMap<i64, ProducerEntry>>,
    /// Locked after `producers` when both are.
    txns: Mutex<TxnIndex>,
}

impl ProducerStates {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<i64, ProducerEntry>> {
        self.producers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The partition's transactions.
    pub(crate) fn txns(&self) -> MutexGuard<'_, TxnIndex> {
        self.txns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every producer this partition knows: (id, epoch, last sequence),
    /// sorted by id (Kafka's DescribeProducers).
    pub(crate) fn active(&self) -> Vec<(i64, i16, i32)> {
        let mut active: Vec<(i64, i16, i32)> = self
            .lock()
            .iter()
            .map(|(id, entry)| {
                let last = entry.batches.back().map_or(-1, |b| b.last_sequence);
                (*id, entry.epoch, last)
            })
            .collect();
        active.sort_unstable();
        active
    }

    /// Forgets everything and learns again from the batches of `log`'s
    /// newest segments (after a follower cut its log: the producers'
    /// sequences must not count batches that are gone, as Kafka reloads
    /// its producer state on truncation).
    ///
    /// # Errors
    /// The log's read errors.
    pub(crate) fn rebuild(&self, log: &sluice_log::Log) -> Result<(), CoreError> {
        let mut producers = self.lock();
        producers.clear();
        let mut txns = TxnIndex::default();
        if let Some(from) = crate::topics::producer_replay_start(&log.segment_sizes()) {
            let mut transactional = Vec::new();
            log.scan_headers(from, |header| {
                replay_into(&mut producers, header);
                if header.producer_id >= 0 && header.is_transactional() {
                    transactional.push(*header);
                }
            })?;
            // Markers are rare: their records are read one batch each.
            for header in transactional {
                let marker = if header.is_control() {
                    let read = log.read(
                        header.base_offset,
                        header.size,
                        sluice_log::ReadBound::LogEnd,
                    )?;
                    read.records.get(..header.size).and_then(decode_marker)
                } else {
                    None
                };
                txns.learn(&header, marker);
            }
        }
        txns.trim(log.log_start());
        *self.txns() = txns;
        Ok(())
    }
}

/// Learns batches appended to a partition (`batches`, whose headers are
/// `headers` at their positions) under the producer lock the caller
/// holds: their sequences, and what they open or close of a transaction.
pub(crate) fn learn_appended(
    producers: &mut HashMap<i64, ProducerEntry>,
    txns: &mut TxnIndex,
    batches: &[u8],
    headers: &[(usize, BatchHeader)],
) {
    for (_, header) in headers {
        replay_into(producers, header);
    }
    learn_txns(txns, batches, headers);
}

/// Learns what `batches` (whose headers are `headers`, with their
/// offsets in the log) open or close of a transaction.
pub(crate) fn learn_txns(txns: &mut TxnIndex, batches: &[u8], headers: &[(usize, BatchHeader)]) {
    for (at, header) in headers {
        if header.producer_id >= 0 && header.is_transactional() {
            let marker = if header.is_control() {
                batches.get(*at..at + header.size).and_then(decode_marker)
            } else {
                None
            };
            txns.learn(header, marker);
        }
    }
}

/// Learns from a batch already in the log, under a lock the caller holds.
pub(crate) fn replay_into(producers: &mut HashMap<i64, ProducerEntry>, header: &BatchHeader) {
    if header.producer_id >= 0 && header.is_control() {
        fence(producers, header.producer_id, header.producer_epoch);
    } else if header.producer_id >= 0 && header.base_sequence >= 0 {
        record(
            producers,
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            header.last_sequence(),
            header.base_offset,
        );
    }
}

/// Checks an idempotent batch against what the producer wrote before.
///
/// # Errors
/// [`CoreError::InvalidProducerEpoch`] for an epoch older than the
/// producer's; [`CoreError::OutOfOrderSequence`] for a gap or a sequence
/// the partition has not seen follow.
pub(crate) fn check(
    producers: &HashMap<i64, ProducerEntry>,
    producer_id: i64,
    epoch: i16,
    first_sequence: i32,
    last_sequence: i32,
) -> Result<SequenceCheck, CoreError> {
    // A producer new to this partition, or one with a bumped epoch
    // (KIP-360), starts its sequences at 0.
    let fresh_start = || {
        if first_sequence == 0 {
            Ok(SequenceCheck::Append)
        } else {
            Err(CoreError::OutOfOrderSequence {
                producer_id,
                expected: 0,
                found: first_sequence,
            })
        }
    };
    let Some(entry) = producers.get(&producer_id) else {
        // Kafka's answer when it knows nothing of the producer (its
        // batches are older than what was replayed, or retention removed
        // them): the client starts a new epoch from sequence 0 instead of
        // failing as it would on OUT_OF_ORDER_SEQUENCE_NUMBER.
        return if first_sequence == 0 {
            Ok(SequenceCheck::Append)
        } else {
            Err(CoreError::UnknownProducerId {
                producer_id,
                found: first_sequence,
            })
        };
    };
    if epoch < entry.epoch {
        return Err(CoreError::InvalidProducerEpoch {
            producer_id,
            current: entry.epoch,
            found: epoch,
        });
    }
    if epoch > entry.epoch {
        return fresh_start();
    }
    if let Some(done) = entry
        .batches
        .iter()
        .find(|b| b.first_sequence == first_sequence && b.last_sequence == last_sequence)
    {
        return Ok(SequenceCheck::Duplicate {
            first_offset: done.first_offset,
        });
    }
    let expected = entry.batches.back().map_or(0, |b| {
        if b.last_sequence == i32::MAX {
            0
        } else {
            b.last_sequence + 1
        }
    });
    if first_sequence == expected {
        Ok(SequenceCheck::Append)
    } else {
        Err(CoreError::OutOfOrderSequence {
            producer_id,
            expected,
            found: first_sequence,
        })
    }
}

/// A transaction marker written for a producer at `epoch`: an older epoch
/// of the producer (a zombie) is refused from now on, and a newer one
/// starts its sequences at 0, as after any epoch change.
pub(crate) fn fence(producers: &mut HashMap<i64, ProducerEntry>, producer_id: i64, epoch: i16) {
    let entry = producers.entry(producer_id).or_default();
    if epoch > entry.epoch {
        entry.epoch = epoch;
        entry.batches.clear();
    }
}

/// The epoch a partition knows of `producer_id`.
pub(crate) fn epoch_of(producers: &HashMap<i64, ProducerEntry>, producer_id: i64) -> Option<i16> {
    producers.get(&producer_id).map(|entry| entry.epoch)
}

/// Remembers a batch written for a producer.
pub(crate) fn record(
    producers: &mut HashMap<i64, ProducerEntry>,
    producer_id: i64,
    epoch: i16,
    first_sequence: i32,
    last_sequence: i32,
    first_offset: Offset,
) {
    let entry = producers.entry(producer_id).or_default();
    if epoch != entry.epoch {
        entry.epoch = epoch;
        entry.batches.clear();
    }
    entry.batches.push_back(BatchRecord {
        first_sequence,
        last_sequence,
        first_offset,
    });
    while entry.batches.len() > REMEMBERED_BATCHES {
        entry.batches.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_recognised_and_gaps_refused() {
        let mut producers = HashMap::new();
        assert_eq!(
            check(&producers, 7, 0, 0, 4).ok(),
            Some(SequenceCheck::Append)
        );
        record(&mut producers, 7, 0, 0, 4, Offset::from(100));
        assert_eq!(
            check(&producers, 7, 0, 0, 4).ok(),
            Some(SequenceCheck::Duplicate {
                first_offset: Offset::from(100)
            })
        );
        assert_eq!(
            check(&producers, 7, 0, 5, 9).ok(),
            Some(SequenceCheck::Append)
        );
        assert!(matches!(
            check(&producers, 7, 0, 7, 9),
            Err(CoreError::OutOfOrderSequence { expected: 5, .. })
        ));
        assert!(matches!(
            check(&producers, 8, 0, 3, 3),
            Err(CoreError::UnknownProducerId { .. })
        ));
        record(&mut producers, 7, 1, 0, 0, Offset::from(200));
        assert!(matches!(
            check(&producers, 7, 0, 5, 5),
            Err(CoreError::InvalidProducerEpoch { .. })
        ));
    }

    #[test]
    fn producer_ids_are_never_reused_across_restarts() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || -> Result<ProducerIds, CoreError> {
            let logs = sluice_log::LogManager::open(dir.path(), sluice_log::LogConfig::default())?;
            let metadata = Metadata::open(dir.path(), &logs, 1)?;
            Ok(ProducerIds::new(metadata))
        };
        let first = open()?;
        let a = first.allocate()?;
        let b = first.allocate()?;
        assert_ne!(a, b);
        drop(first);
        let second = open()?;
        let c = second.allocate()?;
        assert!(c > b, "{c} after {b}");
        Ok(())
    }
}
