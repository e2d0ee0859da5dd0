//! One partition of a topic: the only way front-ends reach its records.
//!
//! Kafka handlers, the admin API, forwarders and stream readers read and
//! locate records through [`Partition`]; none of them sees the log engine.
//! Every "read the records from here" goes through [`read_chunk`], with a
//! documented [`Undecodable`] policy per caller, and every "where is
//! earliest / latest / this time" through [`Partition::resolve`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Record, RecordBatchDecoder};
use sluice_log::{Durability, Log, ReadBound};
use sluice_types::{LeaderEpoch, Offset, PartitionId};
use tokio::sync::Notify;

use crate::CoreError;
use crate::producers::ProducerStates;

/// One partition: a log, and a signal that wakes readers waiting for data.
#[derive(Debug)]
pub struct Partition {
    pub(crate) topic: Arc<str>,
    pub(crate) id: PartitionId,
    pub(crate) log: Arc<Log>,
    /// The leader epoch this node writes records with: the log's newest,
    /// 0 for a new log. A single node never changes it; a replicated
    /// partition takes it from the controller.
    pub(crate) leader_epoch: AtomicI32,
    /// The single-node high watermark policy: consumers see what is synced
    /// (durability `always`) or what is written. A replicated partition
    /// replaces it with the in-sync replicas' end.
    pub(crate) visible_when_synced: AtomicBool,
    pub(crate) appended: Notify,
    pub(crate) producers: ProducerStates,
    pub(crate) traffic: PartitionTraffic,
    pub(crate) syncs: SyncDriver,
    /// Set when the partition has replicas on other nodes.
    pub(crate) replication: Option<crate::replication::Replication>,
    /// Held while the leader changes and while a follower applies what a
    /// leader sent (Kafka's `leaderIsrUpdateLock`): a fetcher's answer is
    /// applied whole under the leader and epoch it was asked in, or not
    /// at all.
    pub(crate) leadership: std::sync::Mutex<()>,
}

/// A change of a partition's in-sync replicas its leader asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InSyncChange {
    pub wanted: Vec<i32>,
    /// The set it was decided on.
    pub from: Vec<i32>,
    /// The leader epoch it was decided in.
    pub leader_epoch: i32,
}

/// The leader a follower takes a partition's records from and the epoch
/// it leads in, as the follower saw them when it asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Following {
    pub leader: i32,
    pub epoch: LeaderEpoch,
}

/// Runs a partition's syncs for acknowledgements awaited on the async
/// runtime. The first waiter starts one task on the blocking pool, which
/// syncs until every end asked of it is durable; the others await
/// `synced`. A burst of acks=all produces thus costs one trip to the
/// blocking pool per sync (group commit), not one thread per request.
#[derive(Debug)]
pub(crate) struct SyncDriver {
    /// Whether the sync task runs, and the furthest end asked of it.
    state: std::sync::Mutex<(bool, Offset)>,
    /// Bumped after every sync the task runs, failed ones included.
    synced: tokio::sync::watch::Sender<u64>,
    /// A sync failed: waiters ask the log themselves, which names the error.
    failed: AtomicBool,
}

impl Default for SyncDriver {
    fn default() -> SyncDriver {
        SyncDriver {
            state: std::sync::Mutex::new((false, Offset::from(0))),
            synced: tokio::sync::watch::Sender::new(0),
            failed: AtomicBool::new(false),
        }
    }
}

/// Records and bytes a partition took in and gave out since the broker
/// started, for metrics and the admin API.
#[derive(Debug, Default)]
pub struct PartitionTraffic {
    pub records_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub records_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl PartitionTraffic {
    /// Counts records handed to a consumer (a fetch).
    pub fn add_out(&self, records: u64, bytes: u64) {
        self.records_out.fetch_add(records, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_in(&self, records: u64, bytes: u64) {
        self.records_in.fetch_add(records, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A place in a partition, as clients name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The log start.
    Earliest,
    /// The high watermark: the next record to be produced.
    Latest,
    /// The last record (the log start when there is none).
    LastRecord,
    /// The first record whose timestamp is at or after this (ms).
    Timestamp(i64),
    /// The record with the largest timestamp.
    MaxTimestamp,
}

/// What a consumer-visible read does with a batch whose records cannot be
/// decoded (the log has checked its length and CRC, so this is a format
/// the reader does not know, such as an unknown codec, not damage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecodable {
    /// Refuse the read with [`CoreError::UndecodableBatch`]: the admin
    /// API's message browser shows the error.
    Fail,
    /// Skip the rest of the read, going on after it: stream consumers and
    /// the replay of internal logs are never stuck on one batch.
    SkipRest,
}

/// One read of decoded records.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Every record of the batches read, in offset order: control records
    /// and those below the read's start (its first batch is whole)
    /// included; [`Chunk::deliverable`] leaves them out.
    pub records: Vec<Record>,
    /// Where the next read starts.
    pub next: Offset,
    /// The aborted transactions whose records the chunk may hold.
    pub aborted: Vec<crate::transactions::AbortedTxn>,
}

impl Chunk {
    /// The data records at or after `from`, in order: not control records,
    /// nor those of an aborted transaction (a read is read_committed).
    pub fn deliverable(&self, from: Offset) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |r| {
            !r.control
                && r.offset >= from.get()
                && !(r.transactional
                    && self.aborted.iter().any(|txn| {
                        txn.producer_id == r.producer_id
                            && txn.first_offset.get() <= r.offset
                            && r.offset < txn.marker_offset.get()
                    }))
        })
    }
}

/// Raw batches for a Kafka Fetch.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Bytes,
    /// Records at or after the fetch offset in `records`.
    pub record_count: u64,
}

/// Most reads one fetch makes in one partition to get past emptied batches.
const MAX_READS_PAST_EMPTY: usize = 64;

impl Partition {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    pub(crate) fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The first offset still kept.
    pub fn log_start(&self) -> Offset {
        self.log.log_start()
    }

    /// The offset the next append gets.
    pub fn log_end(&self) -> Offset {
        self.log.log_end()
    }

    /// The offset below which consumers see records: the synced end under
    /// durability `always`, the log end otherwise. Lock-free.
    pub fn high_watermark(&self) -> Offset {
        match &self.replication {
            Some(replication) => replication.high_watermark(),
            None => self.own_end(),
        }
    }

    /// The last stable offset (Kafka's LSO): below it every transaction
    /// is decided and its marker under the high watermark, so a
    /// read_committed consumer reads up to it. The high watermark when no
    /// transaction is open.
    pub fn last_stable_offset(&self) -> Offset {
        let high_watermark = self.high_watermark();
        self.producers.txns().last_stable_offset(high_watermark)
    }

    /// What this node has of the partition by the single-node rule: the
    /// synced end under durability `always`, the log end otherwise.
    fn own_end(&self) -> Offset {
        if self.visible_when_synced.load(Ordering::Acquire) {
            self.log.durable_end()
        } else {
            self.log.log_end()
        }
    }

    /// A verification guard for `producer_id`'s first batch of a
    /// transaction here, taken before asking its coordinator
    /// ([`crate::Topic::append_start_guarded`]).
    pub fn verification_guard(&self, producer_id: i64) -> u64 {
        self.producers.guard(producer_id)
    }

    /// Whether `producer_id` at `epoch` has a transaction open on this
    /// partition (its first batch in it was taken, and no marker since).
    pub fn in_transaction(&self, producer_id: i64, epoch: i16) -> bool {
        let same_epoch =
            crate::producers::epoch_of(&self.producers.lock(), producer_id) == Some(epoch);
        same_epoch && self.producers.txns().is_open(producer_id)
    }

    /// Whether this node takes produce requests for the partition: it is
    /// its leader, or the partition is not replicated.
    pub fn is_leader(&self) -> bool {
        self.replication.as_ref().is_none_or(|r| r.is_leader())
    }

    /// Whom this node follows the partition from, and in which epoch;
    /// `None` when it leads it or the partition is not replicated.
    pub fn following(&self) -> Option<Following> {
        self.replication
            .as_ref()
            .filter(|r| !r.is_leader())
            .map(|r| Following {
                leader: r.leader(),
                epoch: self.leader_epoch(),
            })
    }

    /// Holds the partition's leadership still while a follower applies
    /// what `from` sent; refused when the partition no longer follows that
    /// leader in that epoch (promoted, or a newer leader chosen while the
    /// request was in flight: Kafka stops a partition's fetcher first).
    fn still_following(&self, from: Following) -> Result<std::sync::MutexGuard<'_, ()>, CoreError> {
        let guard = self.leadership.lock().unwrap_or_else(|e| e.into_inner());
        if self.following() == Some(from) {
            Ok(guard)
        } else {
            Err(CoreError::FencedFollower {
                topic: self.topic.to_string(),
                partition: self.id,
            })
        }
    }

    /// Holds the partition's leadership still while this node, as its
    /// leader, writes records (Kafka appends to a leader under the read
    /// side of `leaderIsrUpdateLock`): with the epoch to stamp them with.
    /// Checked once before the lock, the leadership could move between
    /// the check and the write, and the records land, in a former epoch,
    /// in the log of a node that already follows the next leader.
    ///
    /// # Errors
    /// [`CoreError::NotLeader`] when this node no longer leads it.
    pub(crate) fn leading(
        &self,
    ) -> Result<(std::sync::MutexGuard<'_, ()>, LeaderEpoch), CoreError> {
        let guard = self.leadership.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_leader() {
            return Err(CoreError::NotLeader {
                topic: self.topic.to_string(),
                partition: self.id,
                leader: self.replication.as_ref().map(|r| r.leader()),
            });
        }
        Ok((guard, self.leader_epoch()))
    }

    /// The partition's leader, replicas and in-sync replicas; `None` when
    /// it is not replicated.
    pub fn replica_set(&self) -> Option<(i32, Vec<i32>, Vec<i32>)> {
        self.replication
            .as_ref()
            .map(|r| (r.leader(), r.replicas().to_vec(), r.in_sync()))
    }

    /// How many replicas are in sync; `None` when it is not replicated.
    /// Read per acks=all produce, so nothing is copied.
    pub fn in_sync_count(&self) -> Option<usize> {
        self.replication.as_ref().map(|r| r.in_sync_count())
    }

    /// On the leader: follower `replica` asks for records from `offset`,
    /// so its log ends there; the high watermark may move.
    pub fn replica_fetched(&self, replica: i32, offset: Offset) {
        if let Some(replication) = &self.replication {
            let before = replication.high_watermark();
            replication.fetched(replica, offset, self.log.log_end(), self.own_end());
            // Consumers waiting for records see them once the high
            // watermark passes them, not when they were written.
            if replication.high_watermark() > before {
                self.appended.notify_waiters();
            }
        }
    }

    /// On the leader: whole batches from `from` up to the log end (not the
    /// high watermark), for a follower's fetch.
    ///
    /// # Errors
    /// [`sluice_log::LogError::OffsetOutOfRange`] and read errors.
    pub fn read_for_replica(&self, from: Offset, budget: usize) -> Result<Bytes, CoreError> {
        let read = self
            .log
            .read(from, budget, ReadBound::Upto(self.log.log_end()))?;
        Ok(read.records)
    }

    /// Resolves once records were written on the leader (before they are
    /// synced): a follower's fetch waits on it.
    pub fn replica_written(&self) -> Option<tokio::sync::futures::Notified<'_>> {
        self.replication.as_ref().map(|r| r.written.notified())
    }

    /// On a follower: appends batches fetched from the leader as they are
    /// (offsets and epochs kept), makes them durable as the log's
    /// durability asks, and takes the leader's high watermark and, as far
    /// as that reaches, its log start (as Kafka's followers: records
    /// DeleteRecords removed on the leader stay removed after a
    /// failover). Blocking.
    ///
    /// # Errors
    /// [`CoreError::FencedFollower`] when the partition no longer follows
    /// `from`; the log's refusal (a batch that does not start at the log
    /// end).
    pub fn append_from_leader(
        &self,
        from: Following,
        batches: &mut [u8],
        leader_high_watermark: Offset,
        leader_log_start: Offset,
    ) -> Result<(), CoreError> {
        let _leadership = self.still_following(from)?;
        if !batches.is_empty() {
            // The leader's log start fell inside a batch (DeleteRecords,
            // retention): a log that restarted there takes the whole batch
            // from its first offset, as Kafka's followers do.
            let first = sluice_log::batch::split_verified(batches)
                .ok()
                .and_then(|headers| headers.first().map(|(_, h)| h.base_offset));
            if let Some(base) = first
                && self.log.log_start() == self.log.log_end()
                && base < self.log.log_end()
            {
                self.restart_locked(base)?;
            }
            // Under the producer lock, as a leader's idempotent appends: a
            // produce checked on this node (just promoted) sees either
            // none or all of these batches' sequences.
            // Markers are replayed as the leader wrote them, so the last
            // stable offset moves on every replica alike.
            let mut producers = self.producers.lock();
            let info = self.log.append_replicated(batches)?;
            if let Ok(headers) = sluice_log::batch::split_verified(batches) {
                crate::producers::learn_appended(
                    &self.producers,
                    &mut producers,
                    batches,
                    &headers,
                );
            }
            drop(producers);
            self.producers.checkpoint_if_rolled(&self.log);
            if info.sync_due || self.log.durability() == Durability::Always {
                self.log.sync_to(info.last_offset.plus(1))?;
            }
            if let Some(epoch) = self.log.latest_epoch() {
                self.leader_epoch.fetch_max(epoch.get(), Ordering::AcqRel);
            }
        }
        if let Some(replication) = &self.replication {
            replication.follow(leader_high_watermark, self.own_end());
        }
        let start = leader_log_start.min(self.high_watermark());
        if start > self.log.log_start() {
            self.log.advance_log_start(start)?;
            tracing::debug!(topic = %self.topic, partition = %self.id, %start, "log start moved with the leader's");
        }
        self.appended.notify_waiters();
        Ok(())
    }

    /// On a follower: cuts the log back to `offset` (its records past it
    /// are not the history of `from`, the leader it follows). Blocking.
    ///
    /// # Errors
    /// [`CoreError::FencedFollower`] when the partition no longer follows
    /// `from` (a leader's log is the partition's history, never cut to a
    /// former leader's: the nemesis saw a just-promoted leader drop ~2,000
    /// acknowledged records so); the log's I/O errors.
    pub fn truncate_to(&self, from: Following, offset: Offset) -> Result<Offset, CoreError> {
        let _leadership = self.still_following(from)?;
        let before = self.log.log_end();
        let end = self.log.truncate_to(offset)?;
        if end < before {
            // Idempotent producers' sequences learnt from the batches cut
            // are gone with them: a retry of those batches on this node
            // (leading later) is new, not a duplicate, and the next ones
            // are not out of order.
            self.producers.rebuild(&self.log)?;
        }
        if let Some(replication) = &self.replication {
            replication.truncated(end);
        }
        Ok(end)
    }

    /// On a follower whose leader's log starts past this node's end (its
    /// older records are gone): empties the log and starts it at `offset`,
    /// the leader's log start, to fetch from there.
    ///
    /// # Errors
    /// [`CoreError::FencedFollower`] when the partition no longer follows
    /// `from`; the log's failure.
    pub fn restart_at(&self, from: Following, offset: Offset) -> Result<Offset, CoreError> {
        let _leadership = self.still_following(from)?;
        self.restart_locked(offset)
    }

    /// [`Partition::restart_at`] under the leadership lock.
    fn restart_locked(&self, offset: Offset) -> Result<Offset, CoreError> {
        let end = self.log.restart_at(offset)?;
        self.producers.rebuild(&self.log)?;
        if let Some(replication) = &self.replication {
            replication.truncated(end);
        }
        tracing::info!(topic = %self.topic, partition = %self.id, start = %end, "follower log restarted at its leader's log start");
        Ok(end)
    }

    /// At start: takes the high watermark this node checkpointed, as far
    /// as its log reaches (replicated partitions; a partition of one node
    /// derives it from its log).
    pub(crate) fn resume_high_watermark(&self, checkpointed: Offset) {
        if let Some(replication) = &self.replication {
            replication.resume(checkpointed, self.own_end(), self.log.log_end());
        }
    }

    /// Whether this node's offsets can be answered: false on a new
    /// leader whose high watermark has not yet reached the log end it took
    /// the lead with (Kafka then answers ListOffsets with
    /// OFFSET_NOT_AVAILABLE, so the end a client sees never goes back).
    pub fn offsets_settled(&self) -> bool {
        self.replication
            .as_ref()
            .is_none_or(crate::replication::Replication::caught_up_to_lead)
    }

    /// The newest leader epoch in the log.
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.log.latest_epoch()
    }

    /// Sets the high watermark policy from the log's durability; call
    /// whenever the log's settings change.
    pub(crate) fn follow_durability(&self, durability: Durability) {
        self.visible_when_synced
            .store(durability == Durability::Always, Ordering::Release);
    }

    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    /// The leader epoch this node writes the partition's records with.
    pub fn leader_epoch(&self) -> LeaderEpoch {
        LeaderEpoch::from(self.leader_epoch.load(Ordering::Acquire))
    }

    /// Where `position` is: `None` for a timestamp no record reaches (or
    /// an empty partition's largest timestamp). Never past the high
    /// watermark.
    ///
    /// # Errors
    /// The log's read errors (timestamp lookups read the time index).
    pub fn resolve(&self, position: Position) -> Result<Option<(Offset, i64)>, CoreError> {
        self.resolve_below(position, self.high_watermark())
    }

    /// [`Partition::resolve`] for a read_committed client: never past the
    /// last stable offset (Kafka's ListOffsets under `isolation_level` 1).
    ///
    /// # Errors
    /// As [`Partition::resolve`].
    pub fn resolve_committed(
        &self,
        position: Position,
    ) -> Result<Option<(Offset, i64)>, CoreError> {
        self.resolve_below(position, self.last_stable_offset())
    }

    fn resolve_below(
        &self,
        position: Position,
        end: Offset,
    ) -> Result<Option<(Offset, i64)>, CoreError> {
        let log_start = self.log_start();
        Ok(match position {
            Position::Earliest => Some((log_start, -1)),
            Position::Latest => Some((end, -1)),
            Position::LastRecord => Some((end.plus(-1).max(log_start), -1)),
            Position::Timestamp(ms) => self.log.offset_for_timestamp(ms, end)?,
            Position::MaxTimestamp => self.log.max_timestamp(end)?,
        })
    }

    /// Moves the log start to `offset` (Kafka's DeleteRecords); returns
    /// the new log start.
    ///
    /// # Errors
    /// An offset past the high watermark, or the log's I/O errors.
    pub fn delete_records(&self, offset: Offset) -> Result<Offset, CoreError> {
        let high_watermark = self.high_watermark();
        if offset > high_watermark {
            return Err(CoreError::Log(sluice_log::LogError::OffsetOutOfRange {
                offset,
                log_start: self.log_start(),
                log_end: high_watermark,
            }));
        }
        Ok(self.log.advance_log_start(offset)?)
    }

    /// The largest epoch at or below `epoch` and the offset its records end
    /// at (Kafka's OffsetForLeaderEpoch).
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        self.log.end_offset_for_epoch(epoch)
    }

    /// Whole batches from the one holding `from`, up to `budget` bytes (at
    /// least one batch) below the high watermark, for a Kafka Fetch. If a
    /// read holds no record at all (only batches compaction emptied), reads
    /// on until a batch with records is included: librdkafka reports
    /// MSG_SIZE_TOO_LARGE for a non-empty answer it can take no message
    /// from, so an answer of only empty batches is never given (an empty
    /// one, wait for data, is).
    ///
    /// # Errors
    /// [`sluice_log::LogError::OffsetOutOfRange`] and read errors.
    pub fn read_for_fetch(&self, from: Offset, budget: usize) -> Result<Fetched, CoreError> {
        self.read_below(from, budget, self.high_watermark())
    }

    /// [`Partition::read_for_fetch`] for a read_committed consumer: up to
    /// the last stable offset, with the aborted transactions whose
    /// batches the answer may hold (marker at or after `from`, first
    /// offset before the end of what is returned), sorted by first
    /// offset, for the consumer to drop their records.
    ///
    /// # Errors
    /// As [`Partition::read_for_fetch`].
    pub fn read_committed(
        &self,
        from: Offset,
        budget: usize,
    ) -> Result<(Fetched, Vec<crate::transactions::AbortedTxn>), CoreError> {
        let fetched = self.read_below(from, budget, self.last_stable_offset())?;
        let end = sluice_log::batch::headers(&fetched.records)
            .last()
            .map(|(_, header)| header.last_offset().plus(1));
        let aborted = match end {
            Some(end) => {
                let mut txns = self.producers.txns();
                txns.trim(self.log.log_start());
                txns.aborted_between(from, end)
            }
            None => Vec::new(),
        };
        Ok((fetched, aborted))
    }

    fn read_below(&self, from: Offset, budget: usize, bound: Offset) -> Result<Fetched, CoreError> {
        let mut next = from;
        let mut gathered = BytesMut::new();
        for _ in 0..MAX_READS_PAST_EMPTY {
            let read = self.log.read(next, budget, ReadBound::Upto(bound))?;
            if read.records.is_empty() {
                break;
            }
            let has_records = sluice_log::batch::split_verified(&read.records)
                .map(|batches| batches.iter().any(|(_, h)| h.records_count > 0))
                .unwrap_or(true);
            if has_records {
                let records = if gathered.is_empty() {
                    read.records
                } else {
                    gathered.extend_from_slice(&read.records);
                    gathered.freeze()
                };
                let record_count = records_from(&records, from);
                return Ok(Fetched {
                    records,
                    record_count,
                });
            }
            gathered.extend_from_slice(&read.records);
            match read.next_offset {
                Some(after) => next = after,
                None => break,
            }
        }
        // Nothing but emptied batches up to the high watermark: answer with
        // no data, so the consumer waits for the next append after them.
        Ok(Fetched::default())
    }

    /// One read of decoded records from `from` (raised to the log start),
    /// about `max_bytes`, below the last stable offset (what AMQP stream
    /// consumers, forwarding and the admin API read is committed), with
    /// the aborted transactions it may hold; `None` when there is nothing
    /// to read yet.
    ///
    /// # Errors
    /// The log's read errors; [`CoreError::UndecodableBatch`] under
    /// [`Undecodable::Fail`].
    pub fn read_chunk(
        &self,
        from: Offset,
        max_bytes: usize,
        undecodable: Undecodable,
    ) -> Result<Option<Chunk>, CoreError> {
        let chunk = read_chunk(
            &self.log,
            from,
            max_bytes,
            ReadBound::Upto(self.last_stable_offset()),
            undecodable,
        )?;
        Ok(chunk.map(|mut chunk| {
            chunk.aborted = self.producers.txns().aborted_between(from, chunk.next);
            chunk
        }))
    }

    /// Resolves once data may have become readable (an append completed).
    /// Enable it before checking for data so that no append is missed.
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// What went in and out of this partition.
    pub fn traffic(&self) -> &PartitionTraffic {
        &self.traffic
    }

    pub(crate) fn wake_readers(&self) {
        if let Some(replication) = &self.replication
            && replication.is_leader()
        {
            replication.recompute(self.own_end());
        }
        self.appended.notify_waiters();
    }

    /// Right after a write on the leader: followers' fetches go.
    pub(crate) fn written(&self) {
        self.producers.checkpoint_if_rolled(&self.log);
        if let Some(replication) = &self.replication {
            replication.written.notify_waiters();
            if replication.is_leader() && !self.visible_when_synced.load(Ordering::Acquire) {
                replication.recompute(self.own_end());
            }
        }
    }

    /// Takes a leader the controller chose, in `epoch`: a new leader
    /// writes its records in that epoch; a former one stops taking them.
    pub(crate) fn change_leader(&self, leader: i32, epoch: i32, in_sync: Vec<i32>) {
        if let Some(replication) = &self.replication {
            let _leadership = self.leadership.lock().unwrap_or_else(|e| e.into_inner());
            self.leader_epoch.fetch_max(epoch, Ordering::AcqRel);
            replication.change_leader(leader, in_sync, self.own_end(), self.log.log_end());
            tracing::info!(topic = %self.topic, partition = %self.id, leader, epoch, "partition leader changed");
            self.appended.notify_waiters();
        }
    }

    /// The in-sync replicas this node, leading the partition, wants it to
    /// have (a follower lagged too long, or one caught up), with the set
    /// and the leader epoch it decided on, read under the leadership lock:
    /// the metadata refuses a proposal made in an epoch that has passed
    /// (as Kafka's AlterPartition carries the leader epoch) or from a set
    /// that changed since. `None` when nothing should change or this node
    /// does not lead.
    pub(crate) fn wanted_in_sync(&self, max_lag: std::time::Duration) -> Option<InSyncChange> {
        let replication = self.replication.as_ref()?;
        let _leadership = self.leadership.lock().unwrap_or_else(|e| e.into_inner());
        let (wanted, from) = replication.wanted_in_sync(max_lag)?;
        Some(InSyncChange {
            wanted,
            from,
            leader_epoch: self.leader_epoch().get(),
        })
    }

    /// The in-sync change `change` was asked for and no answer came (it
    /// may still commit): unless the leader changed since, it is asked
    /// again by the next checks and its additions keep counting toward the
    /// high watermark until the metadata settles it.
    pub(crate) fn unanswered(&self, change: InSyncChange) {
        if let Some(replication) = &self.replication {
            let _leadership = self.leadership.lock().unwrap_or_else(|e| e.into_inner());
            if self.leader_epoch().get() == change.leader_epoch {
                replication.unanswered(change.wanted, change.from);
            }
        }
    }

    /// Takes the replicas and in-sync replicas the metadata names after a
    /// move.
    pub(crate) fn set_replicas(&self, replicas: Vec<i32>, in_sync: Vec<i32>) {
        if let Some(replication) = &self.replication {
            replication.set_replicas(replicas, in_sync, self.own_end());
        }
    }

    /// Takes the in-sync replicas the metadata now names.
    pub(crate) fn set_in_sync(&self, in_sync: Vec<i32>) {
        if let Some(replication) = &self.replication {
            replication.set_in_sync(in_sync, self.own_end());
        }
    }

    /// The idempotent producers writing here: (id, epoch, last sequence).
    pub fn producers(&self) -> Vec<(i64, i16, i32)> {
        self.producers.active()
    }

    /// The epoch this partition knows for `producer_id` (from its batches
    /// and its transactions' markers), if any.
    pub(crate) fn producer_epoch(&self, producer_id: i64) -> Option<i16> {
        crate::producers::epoch_of(&self.producers.lock(), producer_id)
    }

    /// How its replication fares (`None` when it has no other replica).
    pub fn replication_stats(&self) -> Option<crate::replication::ReplicationStats> {
        self.replication
            .as_ref()
            .map(|replication| replication.stats(self.own_end()))
    }

    /// The replication, when the partition has replicas elsewhere.
    pub(crate) fn replication(&self) -> Option<&crate::replication::Replication> {
        self.replication.as_ref()
    }

    /// Waits, without holding a thread, until everything below `end` is on
    /// disk; readers are woken after each sync. Call it on a tokio runtime.
    ///
    /// # Errors
    /// The log's sync failure.
    pub(crate) async fn synced_to(self: &Arc<Self>, end: Offset) -> Result<(), CoreError> {
        let mut synced = self.syncs.synced.subscribe();
        loop {
            if self.log.durable_end() >= end {
                return Ok(());
            }
            if self.syncs.failed.load(Ordering::Acquire) {
                let log = Arc::clone(&self.log);
                return tokio::task::spawn_blocking(move || log.sync_to(end))
                    .await
                    .map_err(|join| CoreError::Internal {
                        reason: format!("sync task failed: {join}"),
                    })?
                    .map_err(CoreError::from);
            }
            self.start_sync(end);
            if synced.changed().await.is_err() {
                return Err(CoreError::Internal {
                    reason: "the partition's sync driver is gone".to_owned(),
                });
            }
        }
    }

    /// Starts syncing the log up to `end` without waiting, under durability
    /// `always` (where the leader counts only what it synced toward the
    /// high watermark): records written unacknowledged, such as a quorum
    /// queue's settlements, become durable and replicated without waiting
    /// for the next acknowledged write. Synced at once outside a runtime.
    pub(crate) fn sync_soon(self: &Arc<Self>, end: Offset) {
        if self.log.durability() != Durability::Always || self.log.durable_end() >= end {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            self.start_sync(end);
        } else if let Err(error) = self.log.sync_to(end) {
            tracing::warn!(topic = %self.topic, partition = %self.id, %error, "sync failed");
        }
    }

    /// Asks the sync task for `end`, starting it if it is not running.
    fn start_sync(self: &Arc<Self>, end: Offset) {
        let mut state = self.syncs.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 = state.1.max(end);
        if state.0 {
            return;
        }
        state.0 = true;
        let partition = Arc::clone(self);
        tokio::task::spawn_blocking(move || partition.run_syncs());
    }

    /// The sync task: syncs until the furthest end asked for is durable, or
    /// a sync fails.
    fn run_syncs(&self) {
        loop {
            let wanted = self.syncs.state.lock().unwrap_or_else(|e| e.into_inner()).1;
            let result = self.log.sync_to(wanted);
            if let Err(error) = &result {
                tracing::warn!(topic = %self.topic, partition = %self.id, %error, "sync failed");
                self.syncs.failed.store(true, Ordering::Release);
            }
            self.wake_readers();
            self.syncs.synced.send_modify(|count| *count += 1);
            let mut state = self.syncs.state.lock().unwrap_or_else(|e| e.into_inner());
            if result.is_err() || state.1 <= self.log.durable_end() {
                state.0 = false;
                return;
            }
        }
    }
}

/// What a reader of a node-local log (a queue's messages) may see, by the
/// same rule as a partition's high watermark: the synced end under
/// durability `always`, the log end otherwise.
pub(crate) fn visible_end(log: &Log) -> Offset {
    if log.durability() == Durability::Always {
        log.durable_end()
    } else {
        log.log_end()
    }
}

/// Records at or after `from` in the batches of `buf`, from their headers
/// alone (the read already verified them).
fn records_from(buf: &[u8], from: Offset) -> u64 {
    sluice_log::batch::headers(buf)
        .map(|(_, header)| {
            let skipped =
                (from.get() - header.base_offset.get()).clamp(0, i64::from(header.records_count));
            u64::try_from(i64::from(header.records_count) - skipped).unwrap_or(0)
        })
        .sum()
}

/// The one "read records from here" of the crate: one read of `log` from
/// `from` (raised to the log start) up to `bound`, every batch decoded.
/// `None` when nothing is readable there yet.
///
/// # Errors
/// The log's read errors; [`CoreError::UndecodableBatch`] under
/// [`Undecodable::Fail`].
pub(crate) fn read_chunk(
    log: &Log,
    from: Offset,
    max_bytes: usize,
    bound: ReadBound,
    undecodable: Undecodable,
) -> Result<Option<Chunk>, CoreError> {
    let from = from.max(log.log_start());
    let end = match bound {
        ReadBound::Upto(upper) => upper.min(log.log_end()),
        ReadBound::LogEnd => log.log_end(),
    };
    if from >= end {
        return Ok(None);
    }
    let read = log.read(from, max_bytes, bound)?;
    let Some(next) = read.next_offset else {
        return Ok(None);
    };
    let mut records = Vec::new();
    let mut bytes = read.records;
    while !bytes.is_empty() {
        let batch_start = records.last().map_or(from.get(), |r: &Record| r.offset + 1);
        match RecordBatchDecoder::decode(&mut bytes) {
            Ok(set) => records.extend(set.records),
            Err(error) => match undecodable {
                Undecodable::Fail => {
                    return Err(CoreError::UndecodableBatch {
                        offset: Offset::from(batch_start),
                        reason: error.to_string(),
                    });
                }
                Undecodable::SkipRest => {
                    tracing::warn!(offset = batch_start, log = %log.dir().display(), %error, "skipping an undecodable batch");
                    break;
                }
            },
        }
    }
    Ok(Some(Chunk {
        records,
        next: next.max(from),
        aborted: Vec::new(),
    }))
}

/// A partition on a fresh log in `dir` (durability `never`), for tests.
#[cfg(test)]
pub(crate) fn test_partition(dir: &std::path::Path) -> Partition {
    let config = sluice_log::LogConfig {
        durability: Durability::Never,
        ..sluice_log::LogConfig::default()
    };
    Partition {
        topic: Arc::from("t"),
        id: PartitionId::from(0),
        log: Arc::new(Log::open(dir, config).expect("open")),
        leader_epoch: AtomicI32::new(0),
        visible_when_synced: AtomicBool::new(false),
        appended: Notify::new(),
        producers: ProducerStates::default(),
        traffic: PartitionTraffic::default(),
        syncs: SyncDriver::default(),
        replication: None,
        leadership: std::sync::Mutex::new(()),
    }
}

#[cfg(test)]
mod tests {
    use sluice_log::Durability;
    use sluice_log::batch::{self, NewRecord};

    use super::test_partition as partition;
    use super::*;

    fn one(value: &[u8]) -> BytesMut {
        batch::encode(&[NewRecord {
            key: Some(b"k"),
            value: Some(value),
            timestamp: 0,
        }])
        .expect("encode")
    }

    fn emptied() -> BytesMut {
        let full = one(b"old");
        BytesMut::from(&batch::with_records(&full, &[]).expect("emptied")[..])
    }

    /// One idempotent batch of producer 9 with `sequence`, at offset
    /// `sequence` (as the leader wrote it: one record each).
    fn idempotent(sequence: i32) -> BytesMut {
        one_record(9, i64::from(sequence), sequence, false)
    }

    /// A batch of one record at `offset`, from `producer` in a
    /// transaction, or plain (`producer` -1).
    fn transactional(producer: i64, offset: i64) -> BytesMut {
        one_record(
            producer,
            offset,
            if producer >= 0 { 0 } else { -1 },
            producer >= 0,
        )
    }

    fn one_record(producer_id: i64, offset: i64, sequence: i32, transactional: bool) -> BytesMut {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence,
            timestamp: 0,
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Default::default(),
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &[record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("encode");
        buf
    }

    /// `producer`'s transaction marker at `offset`.
    fn marker(producer: i64, offset: i64, outcome: crate::transactions::Outcome) -> BytesMut {
        let marker = crate::transactions::Marker {
            outcome,
            coordinator_epoch: 1,
        };
        let mut buf = crate::transactions::encode_marker(producer, 0, marker, 0).expect("a marker");
        // The base offset leads the batch, outside its checksum.
        buf[..8].copy_from_slice(&offset.to_be_bytes());
        buf
    }

    /// A partition on node 1 replicated to node 2, which leads it in
    /// epoch 0.
    fn followed(dir: &std::path::Path) -> (Partition, Following) {
        let mut partition = partition(dir);
        partition.replication = Some(crate::replication::Replication::new(
            1,
            vec![1, 2],
            2,
            vec![1, 2],
            Offset::from(0),
        ));
        let from = partition.following().expect("a follower");
        assert_eq!(
            from,
            Following {
                leader: 2,
                epoch: LeaderEpoch::from(0)
            }
        );
        (partition, from)
    }

    /// Transactions replicated to a follower: read_committed reads and
    /// ListOffsets stop at the first open (or not yet replicated)
    /// transaction, list the aborted ones, and a cut log learns again from
    /// the markers left on disk.
    #[test]
    fn read_committed_stops_at_the_last_stable_offset_and_lists_aborted_transactions() {
        use crate::transactions::Outcome::{Abort, Commit};
        let dir = tempfile::tempdir().expect("temp dir");
        let (partition, from) = followed(dir.path());
        let replicate = |mut batch: BytesMut, high_watermark: i64| {
            partition
                .append_from_leader(
                    from,
                    &mut batch,
                    Offset::from(high_watermark),
                    Offset::from(0),
                )
                .expect("replicated");
        };
        let committed_read = |at: i64| {
            let (fetched, aborted) = partition
                .read_committed(Offset::from(at), 1 << 20)
                .expect("read");
            let offsets: Vec<i64> = batch::split_verified(&fetched.records)
                .map(|h| h.iter().map(|(_, h)| h.base_offset.get()).collect())
                .unwrap_or_default();
            let aborted: Vec<(i64, i64)> = aborted
                .iter()
                .map(|t| (t.producer_id, t.first_offset.get()))
                .collect();
            (offsets, aborted)
        };
        let latest = || {
            partition
                .resolve_committed(Position::Latest)
                .expect("resolve")
                .map(|(offset, _)| offset.get())
        };
        // Producer 7 opens a transaction at 0, producer 8 at 1; a plain
        // batch at 2.
        replicate(transactional(7, 0), 1);
        replicate(transactional(8, 1), 2);
        replicate(transactional(-1, 2), 3);
        assert_eq!(partition.high_watermark(), Offset::from(3));
        assert_eq!(partition.last_stable_offset(), Offset::from(0));
        assert_eq!(committed_read(0), (vec![], vec![]));
        assert_eq!(latest(), Some(0));
        // 7 aborts at 3: stable up to 8's open transaction.
        replicate(marker(7, 3, Abort), 4);
        assert_eq!(partition.last_stable_offset(), Offset::from(1));
        assert_eq!(committed_read(0), (vec![0], vec![(7, 0)]));
        // 8 commits at 4, but its marker is not under the high watermark
        // yet: 8's batches are not stable.
        replicate(marker(8, 4, Commit), 4);
        assert_eq!(partition.last_stable_offset(), Offset::from(1));
        replicate(transactional(-1, 5), 6);
        assert_eq!(partition.last_stable_offset(), Offset::from(6));
        assert_eq!(latest(), Some(6));
        assert_eq!(committed_read(0), (vec![0, 1, 2, 3, 4, 5], vec![(7, 0)]));
        // A read past 7's marker needs no aborted list.
        assert_eq!(committed_read(4), (vec![4, 5], vec![]));
        // What AMQP stream consumers and forwarding read: committed data
        // records only (7's aborted one and the markers left out).
        let chunk = partition
            .read_chunk(Offset::from(0), 1 << 20, Undecodable::Fail)
            .expect("read")
            .expect("records");
        let delivered: Vec<i64> = chunk
            .deliverable(Offset::from(0))
            .map(|r| r.offset)
            .collect();
        assert_eq!(delivered, vec![1, 2, 5]);
        // Uncommitted reads and ListOffsets see the high watermark.
        assert_eq!(
            partition.resolve(Position::Latest).expect("resolve"),
            Some((Offset::from(6), -1))
        );
        // Cutting 8's marker (a leader that never had it) opens 8's
        // transaction again; 7's abort is learnt again from the disk.
        partition.truncate_to(from, Offset::from(4)).expect("cut");
        assert_eq!(partition.last_stable_offset(), Offset::from(1));
        assert_eq!(committed_read(0), (vec![0], vec![(7, 0)]));
        let chunk = partition
            .read_chunk(Offset::from(0), 1 << 20, Undecodable::Fail)
            .expect("read")
            .expect("records");
        assert_eq!(
            chunk.deliverable(Offset::from(0)).count(),
            0,
            "7's record is aborted"
        );
        assert_eq!(
            chunk.next,
            Offset::from(1),
            "nothing past the open transaction"
        );
    }

    /// A follower that cuts its log to its leader's forgets the sequences
    /// of the batches cut: leading later, a producer's retry of them is
    /// new, not a duplicate answered with an offset that is gone.
    #[test]
    fn cutting_the_log_forgets_the_producer_sequences_of_what_was_cut() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (partition, from) = followed(dir.path());
        for sequence in 0..5 {
            partition
                .append_from_leader(
                    from,
                    &mut idempotent(sequence),
                    Offset::from(0),
                    Offset::from(0),
                )
                .expect("replicated");
        }
        assert_eq!(partition.producers(), vec![(9, 0, 4)]);
        partition.truncate_to(from, Offset::from(3)).expect("cut");
        assert_eq!(partition.producers(), vec![(9, 0, 2)]);
        // Nothing cut: nothing forgotten.
        partition.truncate_to(from, Offset::from(3)).expect("no-op");
        assert_eq!(partition.producers(), vec![(9, 0, 2)]);
    }

    /// A follower promoted while its fetch was in flight takes nothing of
    /// what the former leader then sends, and never cuts its log to the
    /// former leader's history (the nemesis saw a new leader cut ~2,000
    /// acknowledged records so).
    #[test]
    fn a_leader_takes_no_batches_from_its_former_leader_and_keeps_its_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (partition, from) = followed(dir.path());
        partition
            .append_from_leader(from, &mut idempotent(0), Offset::from(0), Offset::from(0))
            .expect("replicated");
        partition.change_leader(1, 1, vec![1, 2]);
        assert_eq!(partition.following(), None);
        let fenced = |result: Result<_, CoreError>| {
            assert!(
                matches!(result, Err(CoreError::FencedFollower { .. })),
                "{result:?}"
            );
        };
        fenced(
            partition
                .append_from_leader(from, &mut idempotent(1), Offset::from(0), Offset::from(0))
                .map(|()| Offset::from(0)),
        );
        fenced(partition.truncate_to(from, Offset::from(0)));
        fenced(partition.restart_at(from, Offset::from(5)));
        assert_eq!(partition.log_end(), Offset::from(1));
        assert_eq!(partition.producers(), vec![(9, 0, 0)]);
    }

    /// A proposal of in-sync replicas carries the epoch it was decided in,
    /// not the one the partition is in when it is sent: the nemesis saw a
    /// deposed leader's late proposal (still counting itself, with a tail
    /// the new leader never had) committed under the new leader's epoch,
    /// which made it in sync, then preferred leader, before it truncated.
    #[test]
    fn an_in_sync_proposal_keeps_the_epoch_it_was_decided_in() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut partition = partition(dir.path());
        partition.replication = Some(crate::replication::Replication::new(
            1,
            vec![1, 2, 3],
            1,
            vec![1, 2, 3],
            Offset::from(0),
        ));
        partition.change_leader(1, 4, vec![1, 2, 3]);
        // Nothing heard from the followers for longer than the lag allowed.
        let change = partition
            .wanted_in_sync(std::time::Duration::ZERO)
            .expect("the leader wants its followers out");
        assert_eq!(
            (change.wanted, change.from, change.leader_epoch),
            (vec![1], vec![1, 2, 3], 4)
        );
        partition.change_leader(3, 5, vec![2, 3]);
        assert_eq!(partition.wanted_in_sync(std::time::Duration::ZERO), None);
        assert_eq!(
            partition.leader_epoch().get(),
            5,
            "the proposal above stays at 4"
        );
    }

    /// A fetch asked of the leader of an older epoch is not applied once
    /// a newer leader (another node) was chosen: its records may be ones
    /// the new leader's history does not hold (the nemesis lost 880
    /// acknowledged records when a late answer from a former leader
    /// landed after the cut to the new leader's history).
    #[test]
    fn a_follower_takes_nothing_asked_in_an_older_epoch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut partition, from) = followed(dir.path());
        partition.replication = Some(crate::replication::Replication::new(
            1,
            vec![1, 2, 3],
            2,
            vec![1, 2, 3],
            Offset::from(0),
        ));
        partition
            .append_from_leader(from, &mut idempotent(0), Offset::from(0), Offset::from(0))
            .expect("replicated");
        partition.change_leader(3, 1, vec![1, 3]);
        let now = partition.following().expect("follows node 3");
        assert_eq!(now.leader, 3);
        assert!(matches!(
            partition.append_from_leader(
                from,
                &mut idempotent(1),
                Offset::from(0),
                Offset::from(0)
            ),
            Err(CoreError::FencedFollower { .. })
        ));
        assert!(matches!(
            partition.truncate_to(from, Offset::from(0)),
            Err(CoreError::FencedFollower { .. })
        ));
        assert_eq!(partition.log_end(), Offset::from(1));
        // The new leader's answers are taken.
        partition
            .append_from_leader(now, &mut idempotent(1), Offset::from(0), Offset::from(0))
            .expect("from the new leader");
        assert_eq!(partition.log_end(), Offset::from(2));
    }

    /// A follower's log start follows the leader's (DeleteRecords), as
    /// far as its high watermark: what the leader deleted stays deleted
    /// when the follower leads.
    #[test]
    fn a_follower_moves_its_log_start_with_the_leader() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (partition, from) = followed(dir.path());
        for sequence in 0..4 {
            partition
                .append_from_leader(
                    from,
                    &mut idempotent(sequence),
                    Offset::from(2),
                    Offset::from(0),
                )
                .expect("replicated");
        }
        assert_eq!(partition.log_start(), Offset::from(0));
        // The leader deleted up to 3; this node knows records up to 2 are
        // committed, so it goes that far.
        partition
            .append_from_leader(from, &mut [], Offset::from(2), Offset::from(3))
            .expect("nothing new");
        assert_eq!(partition.log_start(), Offset::from(2));
        partition
            .append_from_leader(from, &mut [], Offset::from(4), Offset::from(3))
            .expect("nothing new");
        assert_eq!(partition.log_start(), Offset::from(3));
        assert_eq!(partition.log_end(), Offset::from(4));
    }

    #[test]
    fn emptied_batches_are_never_sent_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let partition = partition(dir.path());
        let epoch = partition.leader_epoch();
        for _ in 0..3 {
            partition.log.append(&mut emptied(), epoch).expect("append");
        }
        // Only emptied batches below the high watermark: no data at all.
        let answer = partition
            .read_for_fetch(Offset::from(0), 1 << 20)
            .expect("read");
        assert!(answer.records.is_empty());
        assert_eq!(answer.record_count, 0);

        partition
            .log
            .append(&mut one(b"new"), epoch)
            .expect("append");
        // A tiny budget returns one batch per read: the answer must still
        // reach the batch with a record.
        let answer = partition.read_for_fetch(Offset::from(0), 1).expect("read");
        let headers = batch::split_verified(&answer.records).expect("whole batches");
        assert_eq!(headers.len(), 4);
        assert_eq!(headers.last().map(|(_, h)| h.records_count), Some(1));
        assert_eq!(answer.record_count, 1);
    }

    /// A batch whose CRC is valid but whose codec (7) no decoder knows.
    fn undecodable() -> BytesMut {
        let mut bad = one(b"bad");
        let attributes = 21;
        if let Some(slot) = bad.get_mut(attributes..attributes + 2) {
            slot.copy_from_slice(&7i16.to_be_bytes());
        }
        let crc = crc32c::crc32c(bad.get(attributes..).unwrap_or_default());
        if let Some(slot) = bad.get_mut(17..21) {
            slot.copy_from_slice(&crc.to_be_bytes());
        }
        bad
    }

    #[test]
    fn each_policy_does_its_documented_thing_with_an_undecodable_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let partition = partition(dir.path());
        let epoch = partition.leader_epoch();
        partition.log.append(&mut one(b"a"), epoch).expect("append");
        partition
            .log
            .append(&mut undecodable(), epoch)
            .expect("a CRC-valid batch is stored");
        partition.log.append(&mut one(b"c"), epoch).expect("append");

        let err = partition
            .read_chunk(Offset::from(0), 1 << 20, Undecodable::Fail)
            .expect_err("fail refuses the read");
        assert!(
            matches!(err, CoreError::UndecodableBatch { offset, .. } if offset == Offset::from(1)),
            "{err}"
        );

        // Skip: what came before is kept, the rest of the read skipped.
        let chunk = partition
            .read_chunk(Offset::from(0), 1 << 20, Undecodable::SkipRest)
            .expect("read")
            .expect("data");
        let values: Vec<_> = chunk
            .deliverable(Offset::from(0))
            .map(|r| r.value.clone().unwrap_or_default())
            .collect();
        assert_eq!(values, vec![bytes::Bytes::from_static(b"a")]);
        assert_eq!(chunk.next, Offset::from(3), "goes on after the read");
        assert!(
            partition
                .read_chunk(chunk.next, 1 << 20, Undecodable::SkipRest)
                .expect("read")
                .is_none(),
            "nothing left below the high watermark"
        );
    }

    #[test]
    fn the_single_node_high_watermark_is_the_synced_end_under_always() {
        let dir = tempfile::tempdir().expect("temp dir");
        let partition = Partition {
            visible_when_synced: AtomicBool::new(true),
            ..partition(dir.path())
        };
        let epoch = partition.leader_epoch();
        partition
            .log
            .append_unsynced(&mut one(b"a"), epoch)
            .expect("append");
        assert_eq!(partition.log_end(), Offset::from(1));
        assert_eq!(
            partition.high_watermark(),
            Offset::from(0),
            "not synced yet"
        );
        assert!(
            partition
                .read_chunk(Offset::from(0), 1 << 20, Undecodable::Fail)
                .expect("read")
                .is_none(),
            "consumers see nothing above the high watermark"
        );
        assert!(partition.delete_records(Offset::from(1)).is_err());
        partition.log.flush().expect("sync");
        assert_eq!(partition.high_watermark(), Offset::from(1));

        // Written is visible when the log is not synced per append.
        partition.follow_durability(Durability::Never);
        partition
            .log
            .append_unsynced(&mut one(b"b"), epoch)
            .expect("append");
        assert_eq!(partition.high_watermark(), Offset::from(2));
        assert_eq!(
            partition.delete_records(Offset::from(2)).expect("delete"),
            Offset::from(2)
        );
    }

    #[test]
    fn positions_resolve_within_the_visible_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let partition = partition(dir.path());
        let empty = |p| partition.resolve(p).expect("resolve");
        assert_eq!(empty(Position::Earliest), Some((Offset::from(0), -1)));
        assert_eq!(empty(Position::Latest), Some((Offset::from(0), -1)));
        assert_eq!(empty(Position::LastRecord), Some((Offset::from(0), -1)));
        assert_eq!(empty(Position::MaxTimestamp), None);
        let epoch = partition.leader_epoch();
        for ts in [100, 300, 200] {
            let mut batch = batch::encode(&[NewRecord {
                key: None,
                value: Some(b"v"),
                timestamp: ts,
            }])
            .expect("encode");
            partition.log.append(&mut batch, epoch).expect("append");
        }
        let at = |p| partition.resolve(p).expect("resolve");
        assert_eq!(at(Position::Latest), Some((Offset::from(3), -1)));
        assert_eq!(at(Position::LastRecord), Some((Offset::from(2), -1)));
        assert_eq!(at(Position::Timestamp(150)), Some((Offset::from(1), 300)));
        assert_eq!(at(Position::Timestamp(301)), None);
        assert_eq!(at(Position::MaxTimestamp), Some((Offset::from(1), 300)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_waiters_share_the_sync_driver_and_wake_readers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let partition = Arc::new(partition(dir.path()));
        let epoch = partition.leader_epoch();
        for value in [b"a", b"b", b"c"] {
            partition
                .log
                .append_unsynced(&mut one(value), epoch)
                .expect("append");
        }
        assert_eq!(
            partition.log.durable_end(),
            Offset::from(0),
            "durability never: nothing synced yet"
        );
        let woken = partition.appended();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let waiters: Vec<_> = (1..=3)
            .map(|end| {
                let partition = Arc::clone(&partition);
                tokio::spawn(async move { partition.synced_to(Offset::from(end)).await })
            })
            .collect();
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                .await
                .expect("the wait ends")
                .expect("task")
                .expect("synced");
        }
        assert_eq!(partition.log.durable_end(), Offset::from(3));
        tokio::time::timeout(std::time::Duration::from_secs(10), woken)
            .await
            .expect("readers woken by the sync");
        // The task ends once every end asked is durable (it may still be
        // between its last wake-up and its exit).
        let running = || partition.syncs.state.lock().expect("state").0;
        for _ in 0..500 {
            if !running() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!running(), "the sync task ended");
    }
}
