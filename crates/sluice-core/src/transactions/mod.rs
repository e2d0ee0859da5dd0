//! Kafka transactions on a partition's log (issue 19, docs/transactions.md):
//! transaction markers, what each producer has open, the last stable
//! offset and the aborted transactions a read_committed Fetch returns.
//!
//! This is the partition's side alone: [`TxnIndex`] learns every batch in
//! log order ([`TxnIndex::learn`]) and answers the last stable offset and
//! the aborted transactions of a range. The transaction coordinator and
//! the wiring into Produce and Fetch are in [`TxnCoordinator`] and the
//! Kafka front-end (docs/transactions.md).
//!
//! A marker is a control batch of one record (attributes 0x30: control
//! and transactional) carrying the transaction's producer id and epoch and
//! base sequence -1; its key is `[version:2 = 0][type:2]` (0 abort,
//! 1 commit) and its value `[version:2 = 0][coordinator epoch:4]`, as
//! Kafka writes them.

use std::collections::{BTreeMap, HashMap};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_log::batch::BatchHeader;
use sluice_types::Offset;

use crate::CoreError;

mod coordinator;

pub use coordinator::{
    TXN_STATE_LOG, TXN_STATE_TOPIC, TxnCoordinator, TxnError, TxnMeta, TxnState,
};

/// The prefix of the broker's own transactional ids (an AMQP channel's
/// commits into streams); Kafka clients may not use it.
pub const BROKER_TXN_PREFIX: &str = "__sluice_";

/// Record batches the broker writes as one Kafka transaction (AMQP
/// publishes of a `tx.commit` routed to streams): each for a partition of
/// a topic, in order.
#[derive(Debug, Default)]
pub struct TxnWrites {
    entries: Vec<(
        std::sync::Arc<crate::Topic>,
        sluice_types::PartitionId,
        BytesMut,
    )>,
}

impl TxnWrites {
    pub(crate) fn add(
        &mut self,
        topic: std::sync::Arc<crate::Topic>,
        partition: sluice_types::PartitionId,
        batch: BytesMut,
    ) {
        self.entries.push((topic, partition, batch));
    }

    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Abort,
    Commit,
}

/// What a marker says: how the transaction ended, and the epoch of the
/// coordinator that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub outcome: Outcome,
    pub coordinator_epoch: i32,
}

/// A marker for a partition another node leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMarker {
    pub topic: String,
    pub partition: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub marker: Marker,
}

/// One partition's batches of a broker transaction
/// ([`TxnCoordinator::write_atomically`]) for its leader on another node:
/// stamped with the producer, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBatches {
    pub topic: String,
    pub partition: i32,
    pub records: Bytes,
}

/// How a cluster's transactions reach other nodes, as Kafka's brokers and
/// clients do (the inter-node layer gives one to the coordinator of a
/// cluster): a coordinator's markers for partitions others lead
/// (WriteTxnMarkers), and the broker's own transactions (AMQP `tx.commit`
/// into streams) as a Kafka producer of the id's coordinator and of the
/// partitions' leaders. Each call is blocking.
pub trait TxnPeers: Send + Sync + std::fmt::Debug {
    /// Writes `markers` on `node`, each acknowledged by its partition's
    /// in-sync replicas.
    ///
    /// # Errors
    /// The first marker's failure ([`CoreError::NotLeader`] when the node
    /// no longer leads its partition, say), or the link's: the transaction
    /// stays decided and its markers are written again later.
    fn write_markers(&self, node: i32, markers: Vec<RemoteMarker>) -> Result<(), CoreError>;

    /// InitProducerId of transactional id `id` on `node`, its coordinator:
    /// the producer id and its new epoch.
    ///
    /// # Errors
    /// The coordinator's answer as a [`TxnError`]
    /// ([`TxnError::Concurrent`], [`TxnError::NotCoordinator`] to try
    /// again), or the link's.
    fn init_producer(&self, node: i32, id: &str, timeout_ms: i32) -> Result<(i64, i16), TxnError>;

    /// AddPartitionsToTxn of `partitions` on `node`, the id's coordinator.
    ///
    /// # Errors
    /// As [`TxnPeers::init_producer`].
    fn add_partitions(
        &self,
        node: i32,
        id: &str,
        producer: (i64, i16),
        partitions: &[(String, i32)],
    ) -> Result<(), TxnError>;

    /// Produce (acks=all) of a transaction's `batches` on `node`, their
    /// partitions' leader.
    ///
    /// # Errors
    /// The first partition's error, or the link's.
    fn produce(&self, node: i32, id: &str, batches: Vec<RemoteBatches>) -> Result<(), TxnError>;

    /// KIP-890's verification (AddPartitionsToTxn v4, `verify_only`) on
    /// `node`, the id's coordinator: whether `producer`'s open transaction
    /// holds partition `partition` of `topic`.
    ///
    /// # Errors
    /// [`TxnError::InvalidState`] when it does not, else as
    /// [`TxnPeers::init_producer`].
    fn verify(
        &self,
        node: i32,
        id: &str,
        producer: (i64, i16),
        topic: &str,
        partition: i32,
    ) -> Result<(), TxnError>;

    /// EndTxn (`commit` or abort) on `node`, the id's coordinator.
    ///
    /// # Errors
    /// As [`TxnPeers::init_producer`].
    fn end(&self, node: i32, id: &str, producer: (i64, i16), commit: bool) -> Result<(), TxnError>;

    /// OffsetCommit of `offsets` for `group` on `node`, its coordinator
    /// (the broker's own groups: share-partition state).
    ///
    /// # Errors
    /// The first partition's error code as [`CoreError::Internal`], or the
    /// link's.
    fn commit_offsets(
        &self,
        node: i32,
        group: &str,
        offsets: &[(String, i32, crate::CommittedOffset)],
    ) -> Result<(), CoreError>;

    /// OffsetFetch of everything `group` committed, on `node`, its
    /// coordinator.
    ///
    /// # Errors
    /// The coordinator's error as [`CoreError::Internal`], or the link's.
    fn committed_offsets(
        &self,
        node: i32,
        group: &str,
    ) -> Result<Vec<(String, i32, crate::CommittedOffset)>, CoreError>;

    /// DeleteGroups of the broker's own `group` on `node`: with the
    /// forget prefix the node forgets what it holds in memory of a share
    /// group (after any store of it in progress), with the state prefix
    /// the node, its coordinator, deletes what is stored.
    ///
    /// # Errors
    /// The node's error code as [`CoreError::Internal`], or the link's.
    fn delete_group(&self, node: i32, group: &str) -> Result<(), CoreError>;
}

/// An aborted transaction as a read_committed Fetch lists it: the
/// producer, the first offset of its batches in this partition, and the
/// offset of its abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: Offset,
    pub marker_offset: Offset,
}

/// One control batch holding `marker` for producer `producer_id` at
/// `producer_epoch`, stamped `timestamp`, for the log to give its offset.
///
/// # Errors
/// [`CoreError::Internal`] when the encoder refuses.
pub fn encode_marker(
    producer_id: i64,
    producer_epoch: i16,
    marker: Marker,
    timestamp: i64,
) -> Result<BytesMut, CoreError> {
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(match marker.outcome {
        Outcome::Abort => 0,
        Outcome::Commit => 1,
    });
    let mut value = BytesMut::with_capacity(6);
    value.put_i16(0);
    value.put_i32(marker.coordinator_epoch);
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Default::default(),
    };
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|error| CoreError::Internal {
        reason: format!("cannot encode a transaction marker: {error}"),
    })?;
    Ok(out)
}

/// The marker a control batch holds (`batch` is the whole batch, header
/// included); `None` for any other batch, or a control record of a kind
/// other than a marker.
pub fn decode_marker(batch: &[u8]) -> Option<Marker> {
    let mut bytes = Bytes::copy_from_slice(batch);
    let set = RecordBatchDecoder::decode(&mut bytes).ok()?;
    let record = set.records.into_iter().next().filter(|r| r.control)?;
    let mut key = record.key?;
    if key.remaining() < 4 || key.get_i16() != 0 {
        return None;
    }
    let outcome = match key.get_i16() {
        0 => Outcome::Abort,
        1 => Outcome::Commit,
        _ => return None,
    };
    let mut value = record.value?;
    if value.remaining() < 6 {
        return None;
    }
    let _version = value.get_i16();
    Some(Marker {
        outcome,
        coordinator_epoch: value.get_i32(),
    })
}

/// The transactions of one partition, learnt from its batches in log
/// order.
#[derive(Debug, Default)]
pub struct TxnIndex {
    /// Producers with a transaction open here: the first offset of its
    /// batches.
    open: HashMap<i64, Offset>,
    /// Transactions whose marker is written, by marker offset: their
    /// first offset. They count for the last stable offset until the
    /// high watermark passes the marker.
    decided: BTreeMap<Offset, Offset>,
    /// Aborted transactions, in marker order.
    aborted: Vec<AbortedTxn>,
    /// The coordinator epoch of each producer's last marker.
    coordinator_epochs: HashMap<i64, i32>,
}

impl TxnIndex {
    /// Learns a batch written at `header.base_offset`: a transactional
    /// batch opens its producer's transaction (if none is open), a marker
    /// (`marker`, decoded from a control batch) closes it. Compaction's
    /// emptied batches: a data batch opens nothing (its records went once
    /// its transaction was decided); a control batch is a commit marker
    /// (the only kind compaction empties), which closes what a replica
    /// that lagged behind the compaction may still have open.
    pub fn learn(&mut self, header: &BatchHeader, marker: Option<Marker>) {
        if header.producer_id < 0 || !header.is_transactional() {
            return;
        }
        if !header.is_control() {
            if header.records_count > 0 {
                self.open
                    .entry(header.producer_id)
                    .or_insert(header.base_offset);
            }
            return;
        }
        let marker = match marker {
            Some(marker) => {
                self.coordinator_epochs
                    .insert(header.producer_id, marker.coordinator_epoch);
                marker
            }
            None if header.records_count == 0 => Marker {
                outcome: Outcome::Commit,
                coordinator_epoch: -1,
            },
            // A control record other than a marker changes nothing.
            None => return,
        };
        // A marker with nothing open here changes only the epochs.
        let Some(first) = self.open.remove(&header.producer_id) else {
            return;
        };
        self.decided.insert(header.base_offset, first);
        if marker.outcome == Outcome::Abort {
            self.aborted.push(AbortedTxn {
                producer_id: header.producer_id,
                first_offset: first,
                marker_offset: header.base_offset,
            });
        }
    }

    /// Whether `producer_id` has a transaction open here.
    pub fn is_open(&self, producer_id: i64) -> bool {
        self.open.contains_key(&producer_id)
    }

    /// The coordinator epoch of `producer_id`'s last marker here.
    pub fn coordinator_epoch(&self, producer_id: i64) -> Option<i32> {
        self.coordinator_epochs.get(&producer_id).copied()
    }

    /// The last stable offset under `high_watermark`: the first offset of
    /// the oldest transaction still open, or decided with its marker not
    /// yet below the high watermark; the high watermark when none is.
    /// Transactions decided below it are forgotten.
    pub fn last_stable_offset(&mut self, high_watermark: Offset) -> Offset {
        while let Some(entry) = self.decided.first_entry() {
            if *entry.key() >= high_watermark {
                break;
            }
            entry.remove();
        }
        self.open
            .values()
            .chain(self.decided.values())
            .copied()
            .min()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// The aborted transactions a read_committed Fetch from `from` that
    /// returns data up to `upto` (exclusive) lists: marker at or after
    /// `from`, first offset before `upto`; sorted by first offset (kafkajs
    /// assumes so).
    pub fn aborted_between(&self, from: Offset, upto: Offset) -> Vec<AbortedTxn> {
        let mut found: Vec<AbortedTxn> = self
            .aborted
            .iter()
            .filter(|txn| txn.marker_offset >= from && txn.first_offset < upto)
            .copied()
            .collect();
        found.sort_by_key(|txn| (txn.first_offset, txn.producer_id));
        found
    }

    /// Forgets the aborted transactions whose markers are below
    /// `log_start` (their batches are gone).
    pub fn trim(&mut self, log_start: Offset) {
        self.aborted.retain(|txn| txn.marker_offset >= log_start);
    }

    /// Whether nothing transactional was learnt.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
            && self.decided.is_empty()
            && self.aborted.is_empty()
            && self.coordinator_epochs.is_empty()
    }

    /// The index as a partition's transaction checkpoint holds it, for the
    /// batches below `covered` (crc-checked on read):
    /// `[version:2=0][covered:8][open:4]([producer:8][first:8])*
    /// [aborted:4]([producer:8][first:8][marker:8])*
    /// [epochs:4]([producer:8][coordinator epoch:4])*[crc32c:4]`. Decided
    /// transactions are written as open ones are not: their markers are
    /// below `covered`, so they count as aborted or committed.
    pub fn encode_checkpoint(&self, covered: Offset) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(
            30 + 16 * self.open.len()
                + 24 * self.aborted.len()
                + 12 * self.coordinator_epochs.len(),
        );
        out.put_u16(0);
        out.put_i64(covered.get());
        let mut open: Vec<(i64, Offset)> = self.open.iter().map(|(p, f)| (*p, *f)).collect();
        open.sort_unstable();
        out.put_u32(u32::try_from(open.len()).unwrap_or(u32::MAX));
        for (producer, first) in open {
            out.put_i64(producer);
            out.put_i64(first.get());
        }
        out.put_u32(u32::try_from(self.aborted.len()).unwrap_or(u32::MAX));
        for txn in &self.aborted {
            out.put_i64(txn.producer_id);
            out.put_i64(txn.first_offset.get());
            out.put_i64(txn.marker_offset.get());
        }
        let mut epochs: Vec<(i64, i32)> = self
            .coordinator_epochs
            .iter()
            .map(|(p, e)| (*p, *e))
            .collect();
        epochs.sort_unstable();
        out.put_u32(u32::try_from(epochs.len()).unwrap_or(u32::MAX));
        for (producer, epoch) in epochs {
            out.put_i64(producer);
            out.put_i32(epoch);
        }
        let crc = crc32c::crc32c(&out);
        out.put_u32(crc);
        out.to_vec()
    }

    /// What [`TxnIndex::encode_checkpoint`] wrote, with the offset it
    /// covers; `None` when damaged.
    pub fn decode_checkpoint(bytes: &[u8]) -> Option<(TxnIndex, Offset)> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut body = body;
        if body.remaining() < 2 + 8 + 4 || body.get_u16() != 0 {
            return None;
        }
        let covered = Offset::from(body.get_i64());
        let mut index = TxnIndex::default();
        let count = body.get_u32() as usize;
        if body.remaining() < count.checked_mul(16)? {
            return None;
        }
        for _ in 0..count {
            let producer = body.get_i64();
            index.open.insert(producer, Offset::from(body.get_i64()));
        }
        if body.remaining() < 4 {
            return None;
        }
        let count = body.get_u32() as usize;
        if body.remaining() < count.checked_mul(24)? {
            return None;
        }
        for _ in 0..count {
            index.aborted.push(AbortedTxn {
                producer_id: body.get_i64(),
                first_offset: Offset::from(body.get_i64()),
                marker_offset: Offset::from(body.get_i64()),
            });
        }
        if body.remaining() < 4 {
            return None;
        }
        let count = body.get_u32() as usize;
        if body.remaining() != count.checked_mul(12)? {
            return None;
        }
        for _ in 0..count {
            let producer = body.get_i64();
            index.coordinator_epochs.insert(producer, body.get_i32());
        }
        Some((index, covered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of a batch of `count` records at `base` from
    /// `producer_id`, transactional or a marker.
    fn header(base: i64, count: i32, producer_id: i64, marker: bool) -> BatchHeader {
        let batch = if marker {
            encode_marker(
                producer_id,
                0,
                Marker {
                    outcome: Outcome::Commit,
                    coordinator_epoch: 0,
                },
                1,
            )
            .expect("marker")
        } else {
            let records: Vec<sluice_log::batch::NewRecord<'_>> = (0..count)
                .map(|_| sluice_log::batch::NewRecord {
                    key: None,
                    value: Some(b"v"),
                    timestamp: 1,
                })
                .collect();
            let mut batch = sluice_log::batch::encode(&records).expect("batch");
            sluice_log::batch::set_producer(&mut batch, producer_id, 0, 0, true).expect("producer");
            batch
        };
        let mut header = sluice_log::batch::split_verified(&batch)
            .expect("a valid batch")
            .remove(0)
            .1;
        header.base_offset = Offset::from(base);
        header
    }

    fn marker(outcome: Outcome) -> Option<Marker> {
        Some(Marker {
            outcome,
            coordinator_epoch: 3,
        })
    }

    #[test]
    fn markers_round_trip_through_a_control_batch() {
        for outcome in [Outcome::Abort, Outcome::Commit] {
            let written = Marker {
                outcome,
                coordinator_epoch: 7,
            };
            let batch = encode_marker(42, 5, written, 1_000).expect("encode");
            let (_, parsed) = sluice_log::batch::split_verified(&batch)
                .expect("a valid batch")
                .remove(0);
            assert!(parsed.is_control() && parsed.is_transactional());
            assert_eq!(parsed.producer_id, 42);
            assert_eq!(parsed.producer_epoch, 5);
            assert_eq!(parsed.base_sequence, -1);
            assert_eq!(decode_marker(&batch), Some(written));
        }
        let plain = header(0, 1, 9, false);
        assert!(!plain.is_control());
    }

    /// Batches compaction emptied when the log is read back: a decided
    /// transaction's records open nothing; an emptied commit marker opens
    /// nothing and closes, as committed, the transaction a replica that
    /// lagged behind the compaction still has open from records it holds.
    #[test]
    fn emptied_batches_open_nothing_and_an_emptied_marker_commits() {
        let mut txns = TxnIndex::default();
        let mut emptied_records = header(10, 1, 1, false);
        emptied_records.records_count = 0;
        txns.learn(&emptied_records, None);
        assert!(!txns.is_open(1));
        let mut emptied_marker = header(11, 1, 1, true);
        emptied_marker.records_count = 0;
        txns.learn(&emptied_marker, None);
        assert!(!txns.is_open(1));
        assert_eq!(txns.last_stable_offset(Offset::from(12)), Offset::from(12));
        // The lagging replica: records of producer 2 intact, its marker
        // emptied by the leader's compaction.
        txns.learn(&header(12, 1, 2, false), None);
        assert!(txns.is_open(2));
        let mut emptied_marker = header(13, 1, 2, true);
        emptied_marker.records_count = 0;
        txns.learn(&emptied_marker, None);
        assert!(!txns.is_open(2));
        assert_eq!(txns.last_stable_offset(Offset::from(14)), Offset::from(14));
        assert!(
            txns.aborted_between(Offset::from(0), Offset::from(14))
                .is_empty()
        );
    }

    /// Two producers interleave; the last stable offset stays at the
    /// oldest open transaction until its marker is below the high
    /// watermark, and an abort is listed for the fetches that cross it.
    #[test]
    fn the_last_stable_offset_waits_for_open_and_unreplicated_transactions() {
        let mut txns = TxnIndex::default();
        assert_eq!(txns.last_stable_offset(Offset::from(5)), Offset::from(5));
        txns.learn(&header(10, 2, 1, false), None); // 10..=11, producer 1
        txns.learn(&header(12, 1, 2, false), None); // 12, producer 2
        txns.learn(&header(13, 1, 1, false), None); // 13, producer 1 again
        assert!(txns.is_open(1) && txns.is_open(2));
        assert_eq!(txns.last_stable_offset(Offset::from(14)), Offset::from(10));
        assert_eq!(txns.last_stable_offset(Offset::from(8)), Offset::from(8));
        txns.learn(&header(14, 1, 1, true), marker(Outcome::Abort)); // aborts 10..
        assert!(!txns.is_open(1));
        assert_eq!(txns.coordinator_epoch(1), Some(3));
        // The marker is not below the high watermark yet.
        assert_eq!(txns.last_stable_offset(Offset::from(14)), Offset::from(10));
        // It is: producer 2's open transaction holds the LSO now.
        assert_eq!(txns.last_stable_offset(Offset::from(15)), Offset::from(12));
        txns.learn(&header(15, 1, 2, true), marker(Outcome::Commit));
        assert_eq!(txns.last_stable_offset(Offset::from(16)), Offset::from(16));
        let aborted = AbortedTxn {
            producer_id: 1,
            first_offset: Offset::from(10),
            marker_offset: Offset::from(14),
        };
        assert_eq!(
            txns.aborted_between(Offset::from(0), Offset::from(16)),
            vec![aborted]
        );
        assert_eq!(
            txns.aborted_between(Offset::from(14), Offset::from(16)),
            vec![aborted]
        );
        assert!(
            txns.aborted_between(Offset::from(15), Offset::from(16))
                .is_empty()
        );
        assert!(
            txns.aborted_between(Offset::from(0), Offset::from(10))
                .is_empty()
        );
        txns.trim(Offset::from(15));
        assert!(
            txns.aborted_between(Offset::from(0), Offset::from(16))
                .is_empty()
        );
    }

    /// A marker for a producer with nothing open here changes only its
    /// coordinator epoch; batches of other producers are not counted.
    #[test]
    fn markers_without_an_open_transaction_and_plain_batches_change_nothing() {
        let mut txns = TxnIndex::default();
        txns.learn(&header(0, 1, 5, true), marker(Outcome::Abort));
        assert_eq!(txns.coordinator_epoch(5), Some(3));
        assert!(
            txns.aborted_between(Offset::from(0), Offset::from(10))
                .is_empty()
        );
        let mut plain = header(1, 1, 6, false);
        plain.attributes &= !0x10;
        txns.learn(&plain, None);
        assert!(!txns.is_open(6));
        assert_eq!(txns.last_stable_offset(Offset::from(2)), Offset::from(2));
    }

    /// kafkajs assumes the aborted list is sorted by first offset.
    #[test]
    fn aborted_transactions_are_listed_by_first_offset() {
        let mut txns = TxnIndex::default();
        txns.learn(&header(0, 1, 1, false), None);
        txns.learn(&header(1, 1, 2, false), None);
        txns.learn(&header(2, 1, 2, true), marker(Outcome::Abort));
        txns.learn(&header(3, 1, 1, true), marker(Outcome::Abort));
        let firsts: Vec<i64> = txns
            .aborted_between(Offset::from(0), Offset::from(4))
            .iter()
            .map(|txn| txn.first_offset.get())
            .collect();
        assert_eq!(firsts, vec![0, 1]);
    }
}
