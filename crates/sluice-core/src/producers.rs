//! Idempotent producers (KIP-98): producer ids, and per partition the
//! sequence numbers of each producer's recent batches, so a retried batch
//! is answered with its first offset instead of being written twice.
//!
//! Producer ids are handed out from blocks whose end is an
//! `AllocateProducerIds` command in the metadata log, durable before any id
//! of the block is used, so an id is never handed out twice, restarts
//! included. Sequence state is rebuilt on open from the batch headers of
//! each partition's newest segments; transactions (open, aborted) from the
//! partition's transaction checkpoint and the batches after it.
//!
//! A partition that has seen a transaction writes its transaction
//! checkpoint ([`TXN_CHECKPOINT`]) each time its log rolls to a new
//! segment: its transactions as of the log end then, so that a restart
//! knows a transaction open (or aborted) in segments older than those
//! read back, as Kafka keeps producer snapshots and an aborted
//! transaction index. A checkpoint past the log end (the log was cut
//! below it) is deleted, and the partition falls back to its newest
//! segments.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
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
/// A partition's transaction checkpoint, in its log's directory.
pub(crate) const TXN_CHECKPOINT: &str = "transactions.checkpoint";

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
    /// A transaction was seen here: the checkpoint follows the log's rolls.
    transactional: AtomicBool,
    /// The log's segment count at the last checkpoint.
    checkpointed_segments: AtomicUsize,
    /// The offset the last checkpoint covers (-1: none).
    checkpointed_at: AtomicI64,
    /// Held while a checkpoint is written: one writer at a time.
    checkpointing: Mutex<()>,
    /// KIP-890's verification guards: a producer's first batch of a
    /// transaction here is verified with its coordinator under a guard
    /// taken before asking, which a marker of the producer clears; the
    /// batch is written only if its guard still stands (a verification
    /// overtaken by the transaction's end writes nothing).
    guards: Mutex<HashMap<i64, u64>>,
    next_guard: std::sync::atomic::AtomicU64,
}

impl ProducerStates {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<i64, ProducerEntry>> {
        self.producers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The partition's transactions.
    pub(crate) fn txns(&self) -> MutexGuard<'_, TxnIndex> {
        self.txns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The verification guard of `producer_id`'s first batches of a
    /// transaction here: the one standing (batches in flight together
    /// share it, as Kafka's `VerificationStateEntry`), else a new one.
    pub(crate) fn guard(&self, producer_id: i64) -> u64 {
        *self
            .guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(producer_id)
            .or_insert_with(|| self.next_guard.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether `token` is still `producer_id`'s guard (no marker since).
    pub(crate) fn guarded(&self, producer_id: i64, token: u64) -> bool {
        self.guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&producer_id)
            == Some(&token)
    }

    /// A marker of `producer_id` ends what any guard verified.
    fn unguard(&self, producer_id: i64) {
        self.guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&producer_id);
    }

    /// A transactional batch or a marker was appended (the caller holds
    /// `producers`): the checkpoint follows the log from now on.
    pub(crate) fn saw_transaction(&self) {
        self.transactional.store(true, Ordering::Release);
    }

    /// After an append: when the log rolled to a new segment since the
    /// last checkpoint of a partition that has seen a transaction, writes
    /// the checkpoint (its transactions as of the log end). A failure is
    /// logged: the next roll tries again, and a restart without it reads
    /// the newest segments as before.
    pub(crate) fn checkpoint_if_rolled(&self, log: &sluice_log::Log) {
        if !self.transactional.load(Ordering::Acquire) {
            return;
        }
        let segments = log.segment_count();
        // Also once the log start passed what the checkpoint covers
        // (DeleteRecords): it would no longer be read back.
        let stale = log.log_start().get() > self.checkpointed_at.load(Ordering::Acquire);
        if self.checkpointed_segments.load(Ordering::Acquire) == segments && !stale {
            return;
        }
        // One writer at a time; another one busy writes a newer state.
        let Ok(_writing) = self.checkpointing.try_lock() else {
            return;
        };
        self.checkpointed_segments
            .store(segments, Ordering::Release);
        // Under the producer lock no transactional batch is appended
        // unlearnt: the index covers the whole log up to its end.
        let producers = self.lock();
        let covered = log.log_end();
        let bytes = self.txns().encode_checkpoint(covered);
        drop(producers);
        // What it covers is on disk first: a checkpoint past the log end
        // after a power loss would be dropped, and with it what it knew.
        if let Err(error) = log.sync_to(covered) {
            tracing::warn!(%error, "cannot sync a log before its transaction checkpoint");
            return;
        }
        let path = log.dir().join(TXN_CHECKPOINT);
        match sluice_log::write_file_atomically(&path, &bytes) {
            Ok(()) => self.checkpointed_at.store(covered.get(), Ordering::Release),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot write a transaction checkpoint");
            }
        }
    }

    /// The transactions of `log`'s checkpoint and the offset it covers,
    /// if it has a sound one within the log; one past the log end (the
    /// log was cut below it) or below its start (records it did not see
    /// are gone, markers perhaps among them) is deleted.
    fn read_checkpoint(log: &sluice_log::Log) -> Option<(TxnIndex, Offset)> {
        let path = log.dir().join(TXN_CHECKPOINT);
        let bytes = std::fs::read(&path).ok()?;
        match TxnIndex::decode_checkpoint(&bytes) {
            Some((index, covered)) if log.log_start() <= covered && covered <= log.log_end() => {
                Some((index, covered))
            }
            found => {
                if found.is_none() {
                    tracing::warn!(path = %path.display(), "a damaged transaction checkpoint; reading the newest segments instead");
                }
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot delete a transaction checkpoint");
                }
                None
            }
        }
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
        self.rebuild_within(log, crate::topics::PRODUCER_REPLAY_BYTES)
    }

    /// As [`ProducerStates::rebuild`], reading back `replay_bytes` past
    /// the two newest segments.
    fn rebuild_within(&self, log: &sluice_log::Log, replay_bytes: u64) -> Result<(), CoreError> {
        let mut producers = self.lock();
        producers.clear();
        // Markers cut off with the log cleared no guard: none stands.
        self.guards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let checkpoint = Self::read_checkpoint(log);
        let had_checkpoint = checkpoint.is_some();
        let (mut txns, covered) = checkpoint.unwrap_or_default();
        let window = crate::topics::producer_replay_start(&log.segment_sizes(), replay_bytes);
        // Transactions are learnt from the checkpoint on (or the window
        // without one), sequences from the window.
        let from = match (window, had_checkpoint) {
            (Some(window), true) => Some(window.min(covered)),
            (window, _) => window,
        };
        if let Some(from) = from {
            let mut transactional = Vec::new();
            log.scan_headers(from, |header| {
                if window.is_some_and(|window| header.base_offset >= window) {
                    replay_into(&mut producers, header);
                }
                if header.producer_id >= 0
                    && header.is_transactional()
                    && (!had_checkpoint || header.base_offset >= covered)
                {
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
        self.transactional
            .store(!txns.is_empty(), Ordering::Release);
        self.checkpointed_segments
            .store(log.segment_count(), Ordering::Release);
        self.checkpointed_at.store(
            if had_checkpoint { covered.get() } else { -1 },
            Ordering::Release,
        );
        *self.txns() = txns;
        Ok(())
    }
}

/// Learns batches appended to a partition (`batches`, whose headers are
/// `headers` at their positions) under the producer lock the caller
/// holds: their sequences, and what they open or close of a transaction.
pub(crate) fn learn_appended(
    states: &ProducerStates,
    producers: &mut HashMap<i64, ProducerEntry>,
    batches: &[u8],
    headers: &[(usize, BatchHeader)],
) {
    for (_, header) in headers {
        replay_into(producers, header);
    }
    learn_txns(states, batches, headers);
}

/// Learns what `batches` (whose headers are `headers`, with their
/// offsets in the log) open or close of a transaction, under the producer
/// lock the caller holds.
pub(crate) fn learn_txns(
    states: &ProducerStates,
    batches: &[u8],
    headers: &[(usize, BatchHeader)],
) {
    let mut txns = None;
    for (at, header) in headers {
        if header.producer_id >= 0 && header.is_transactional() {
            let marker = if header.is_control() {
                states.unguard(header.producer_id);
                batches.get(*at..at + header.size).and_then(decode_marker)
            } else {
                None
            };
            txns.get_or_insert_with(|| states.txns())
                .learn(header, marker);
        }
    }
    if txns.is_some() {
        states.saw_transaction();
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
    use crate::transactions::{Marker, Outcome, encode_marker};
    use sluice_types::LeaderEpoch;

    /// A transactional batch of one record from `producer_id`.
    fn transactional(producer_id: i64, sequence: i32) -> bytes::BytesMut {
        let mut batch = sluice_log::batch::encode(&[sluice_log::batch::NewRecord {
            key: None,
            value: Some(b"in a transaction"),
            timestamp: 1,
        }])
        .expect("batch");
        sluice_log::batch::set_producer(&mut batch, producer_id, 0, sequence, true)
            .expect("producer");
        batch
    }

    /// Appends `batch` as a partition does (under the producer lock,
    /// learning it, then checkpointing after a roll).
    fn append(states: &ProducerStates, log: &sluice_log::Log, mut batch: bytes::BytesMut) {
        let mut producers = states.lock();
        log.append_unsynced(&mut batch, LeaderEpoch::from(0))
            .expect("append");
        let headers: Vec<_> = sluice_log::batch::headers(&batch).collect();
        learn_appended(states, &mut producers, &batch, &headers);
        drop(producers);
        states.checkpoint_if_rolled(log);
    }

    /// A transaction aborted, and one left open, in segments older than
    /// those a restart reads back: the checkpoint written as the log rolled
    /// keeps them (the aborted one listed for read_committed, the open one
    /// holding the last stable offset); a checkpoint past a cut log end is
    /// dropped.
    #[test]
    fn transactions_older_than_the_replayed_segments_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = sluice_log::LogConfig {
            segment_bytes: 300,
            ..sluice_log::LogConfig::default()
        };
        let log = sluice_log::Log::open(dir.path(), config.clone()).expect("open");
        let states = ProducerStates::default();
        let abort = Marker {
            outcome: Outcome::Abort,
            coordinator_epoch: 0,
        };
        append(&states, &log, transactional(7, 0));
        append(
            &states,
            &log,
            encode_marker(7, 0, abort, 1).expect("marker"),
        );
        append(&states, &log, transactional(8, 0));
        for sequence in 1..40 {
            append(&states, &log, transactional(9, sequence - 1));
            append(
                &states,
                &log,
                encode_marker(
                    9,
                    0,
                    Marker {
                        outcome: Outcome::Commit,
                        coordinator_epoch: 0,
                    },
                    1,
                )
                .expect("marker"),
            );
        }
        let end = log.log_end();
        assert!(log.segment_count() > 10, "the log rolled");
        let aborted = states.txns().aborted_between(Offset::from(0), end);
        let stable = states.txns().last_stable_offset(end);
        assert_eq!(stable, Offset::from(2), "producer 8's transaction is open");
        drop(log);

        let reopened = sluice_log::Log::open(dir.path(), config.clone()).expect("reopen");
        let again = ProducerStates::default();
        again.rebuild_within(&reopened, 0).expect("rebuild");
        assert_eq!(again.txns().aborted_between(Offset::from(0), end), aborted);
        assert_eq!(aborted.len(), 1);
        assert_eq!(again.txns().last_stable_offset(end), stable);

        // Without the checkpoint only the two newest segments count.
        std::fs::remove_file(dir.path().join(TXN_CHECKPOINT)).expect("remove");
        let forgetful = ProducerStates::default();
        forgetful.rebuild_within(&reopened, 0).expect("rebuild");
        assert!(
            forgetful
                .txns()
                .aborted_between(Offset::from(0), end)
                .is_empty()
        );

        // A checkpoint past the log end (cut below it) is not used.
        std::fs::write(
            dir.path().join(TXN_CHECKPOINT),
            again.txns().encode_checkpoint(end.plus(100)),
        )
        .expect("write");
        let cut = ProducerStates::default();
        cut.rebuild_within(&reopened, 0).expect("rebuild");
        assert!(cut.txns().aborted_between(Offset::from(0), end).is_empty());
        assert!(!dir.path().join(TXN_CHECKPOINT).exists(), "deleted");

        // Nor one below the log start (what it did not see is gone, the
        // marker of a transaction it holds open perhaps among it).
        std::fs::write(
            dir.path().join(TXN_CHECKPOINT),
            again.txns().encode_checkpoint(Offset::from(3)),
        )
        .expect("write");
        reopened
            .advance_log_start(Offset::from(10))
            .expect("delete records");
        let trimmed = ProducerStates::default();
        trimmed.rebuild_within(&reopened, 0).expect("rebuild");
        assert!(!dir.path().join(TXN_CHECKPOINT).exists(), "deleted");
        assert_eq!(
            trimmed.txns().last_stable_offset(end),
            end,
            "producer 8's transaction, open at 2, is not taken from it"
        );
    }

    #[test]
    fn a_checkpoint_round_trips_and_a_damaged_one_is_refused() {
        let states = ProducerStates::default();
        let dir = tempfile::tempdir().expect("temp dir");
        let log =
            sluice_log::Log::open(dir.path(), sluice_log::LogConfig::default()).expect("open");
        append(&states, &log, transactional(3, 0));
        let bytes = states.txns().encode_checkpoint(Offset::from(1));
        let (index, covered) = TxnIndex::decode_checkpoint(&bytes).expect("decoded");
        assert_eq!(covered, Offset::from(1));
        assert!(index.is_open(3));
        let mut damaged = bytes.clone();
        damaged[12] ^= 1;
        assert!(TxnIndex::decode_checkpoint(&damaged).is_none());
        assert!(TxnIndex::decode_checkpoint(&bytes[..bytes.len() - 1]).is_none());
        assert!(TxnIndex::decode_checkpoint(&[]).is_none());
    }

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
