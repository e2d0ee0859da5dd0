//! Topics and their partitions: created, grown and deleted here, each change
//! a [`MetadataCommand`] in the metadata log (see [`crate::metadata`]), each
//! partition a log named `<topic>-<partition>` in the broker's
//! [`LogManager`].

use std::collections::{BTreeMap, HashMap};

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::BytesMut;
use sluice_log::{AppendInfo, LogManager};
use sluice_types::{Clock, SystemClock};
use sluice_types::{LeaderEpoch, Offset, PartitionId};
use tokio::sync::Notify;

use crate::CoreError;
use crate::ack::{AckLevel, PendingAck};
use crate::metadata::{self, Metadata, MetadataCommand, TopicMeta};
use crate::partition::{Partition, PartitionTraffic};
use crate::producers::{self, ProducerStates, SequenceCheck};
use crate::topic_config::{TimestampType, TopicConfig};

/// Longest topic name, as Kafka allows.
pub const MAX_TOPIC_NAME: usize = 249;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

#[derive(Debug)]
struct TopicState {
    config: TopicConfig,
    /// How many partitions the topic has, on any node.
    count: u32,
    /// The nodes holding each partition, leader first; empty on a cluster
    /// of one.
    replicas: Vec<Vec<i32>>,
    /// The in-sync replicas where they are not all the replicas.
    in_sync: BTreeMap<u32, Vec<i32>>,
    /// (leader, epoch) where the leader is not the first replica in epoch 0.
    leaders: BTreeMap<u32, (i32, i32)>,
    /// The partitions this node holds, by index.
    partitions: BTreeMap<u32, Arc<Partition>>,
}

/// A topic: a name, an id, settings and partitions.
#[derive(Debug)]
pub struct Topic {
    name: Arc<str>,
    id: [u8; 16],
    state: Mutex<TopicState>,
}

impl Topic {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kafka's topic id (KIP-516), fixed at creation.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    fn state(&self) -> MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The partitions this node holds (all of them on a cluster of one).
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.state().partitions.values().cloned().collect()
    }

    /// How many partitions the topic has, on any node.
    pub fn partition_count(&self) -> usize {
        self.state().count as usize
    }

    /// Partition `id`, when this node holds it.
    pub fn partition(&self, id: PartitionId) -> Option<Arc<Partition>> {
        let index = u32::try_from(id.get()).ok()?;
        self.state().partitions.get(&index).cloned()
    }

    /// The nodes holding partition `id`, leader first; `None` for a
    /// partition the topic does not have, empty on a cluster of one.
    pub fn replicas(&self, id: PartitionId) -> Option<Vec<i32>> {
        let index = u32::try_from(id.get()).ok()?;
        let state = self.state();
        if index >= state.count {
            return None;
        }
        Some(
            state
                .replicas
                .get(index as usize)
                .cloned()
                .unwrap_or_default(),
        )
    }

    /// The leader and leader epoch of partition `id` as the metadata names
    /// them (on any node); `None` on a cluster of one or for no partition.
    pub fn leader(&self, id: PartitionId) -> Option<(i32, i32)> {
        let index = u32::try_from(id.get()).ok()?;
        let state = self.state();
        if let Some(changed) = state.leaders.get(&index) {
            return Some(*changed);
        }
        let first = state.replicas.get(index as usize)?.first()?;
        Some((*first, 0))
    }

    /// The in-sync replicas of partition `id` as the metadata names them
    /// (on any node); empty on a cluster of one.
    pub fn in_sync(&self, id: PartitionId) -> Vec<i32> {
        let index = u32::try_from(id.get()).unwrap_or(u32::MAX);
        let state = self.state();
        state.in_sync.get(&index).cloned().unwrap_or_else(|| {
            state
                .replicas
                .get(index as usize)
                .cloned()
                .unwrap_or_default()
        })
    }

    /// Partition `id` of this node, or why not: the topic has no such
    /// partition, or another node leads it.
    ///
    /// # Errors
    /// [`CoreError::UnknownPartition`] or [`CoreError::NotLeader`].
    pub fn local_partition(&self, id: PartitionId) -> Result<Arc<Partition>, CoreError> {
        if let Some(partition) = self.partition(id) {
            if !partition.is_leader() {
                return Err(CoreError::NotLeader {
                    topic: self.name.to_string(),
                    partition: id,
                    leader: partition.replica_set().map(|(leader, _, _)| leader),
                });
            }
            return Ok(partition);
        }
        match self.replicas(id) {
            Some(replicas) => Err(CoreError::NotLeader {
                topic: self.name.to_string(),
                partition: id,
                leader: replicas.first().copied(),
            }),
            None => Err(CoreError::UnknownPartition {
                topic: self.name.to_string(),
                partition: id,
            }),
        }
    }

    pub fn config(&self) -> TopicConfig {
        self.state().config.clone()
    }

    /// The topic's `message.timestamp.type`, read without copying its settings.
    pub fn timestamp_type(&self) -> TimestampType {
        self.state().config.timestamp_type()
    }

    /// The codec the broker recompresses appended batches with; `None`
    /// keeps them as the producer sent them (see
    /// [`TopicConfig::compression`]).
    pub fn compression(&self) -> Option<sluice_log::batch::Compression> {
        self.state().config.compression()
    }

    /// `min.insync.replicas` of the topic.
    pub fn min_insync_replicas(&self) -> u32 {
        self.state().config.min_insync_replicas()
    }

    /// The topic's CreateTime bounds (see [`TopicConfig::timestamp_bounds`]).
    pub fn timestamp_bounds(&self) -> (i64, i64) {
        self.state().config.timestamp_bounds()
    }

    /// Appends record batches to a partition, waits as the log's durability
    /// asks, and wakes fetches. Blocking: call it off the async runtime.
    ///
    /// # Errors
    /// [`CoreError::UnknownPartition`], or the log's refusal.
    pub fn append_blocking(
        &self,
        partition: PartitionId,
        records: &mut BytesMut,
    ) -> Result<AppendInfo, CoreError> {
        self.append_start(partition, records)?.wait()
    }

    /// Writes record batches to a partition without waiting for them to be
    /// durable: appends made in this order keep it, and the returned
    /// [`Appended`] waits for durability later, so that the waits of
    /// several appends (pipelined requests, say) share one sync. Blocking
    /// (a write to the page cache), but short.
    ///
    /// # Errors
    /// [`CoreError::UnknownPartition`], the producer checks
    /// ([`CoreError::OutOfOrderSequence`], [`CoreError::InvalidProducerEpoch`]),
    /// or the log's refusal.
    pub fn append_start(
        &self,
        partition: PartitionId,
        records: &mut BytesMut,
    ) -> Result<Appended, CoreError> {
        self.append_start_guarded(partition, records, None)
    }

    /// As [`Topic::append_start`], for a producer's batch verified with its
    /// transaction coordinator under `guard`
    /// ([`crate::Partition::verification_guard`]): a transactional batch
    /// that would open the producer's transaction here is refused
    /// ([`CoreError::TransactionOvertaken`]) when a marker of the producer
    /// came since the guard was taken.
    ///
    /// # Errors
    /// As [`Topic::append_start`], and [`CoreError::TransactionOvertaken`].
    pub fn append_start_guarded(
        &self,
        partition: PartitionId,
        records: &mut BytesMut,
        guard: Option<u64>,
    ) -> Result<Appended, CoreError> {
        let target = self.local_partition(partition)?;
        let invalid = |reason| CoreError::Log(sluice_log::LogError::InvalidBatch { reason });
        if let Some(codec) = self.compression()
            && let Some(recompressed) =
                sluice_log::batch::recompress(records, codec).map_err(invalid)?
        {
            *records = recompressed;
        }
        if self.timestamp_type() == TimestampType::LogAppendTime {
            sluice_log::batch::set_log_append_time(records, SystemClock.now_ms())
                .map_err(invalid)?;
        }
        let headers = sluice_log::batch::split_verified(records).map_err(invalid)?;
        let (first, last) = match (headers.first(), headers.last()) {
            (Some((_, first)), Some((_, last))) => (*first, *last),
            _ => return Err(invalid(sluice_log::BatchFault::Empty)),
        };
        for (_, header) in &headers {
            refuse_from_clients(header)?;
        }
        if self.timestamp_type() == TimestampType::CreateTime {
            check_timestamps(records, &headers, self.timestamp_bounds())?;
        }
        let record_count: u64 = headers
            .iter()
            .map(|(_, header)| u64::try_from(header.records_count).unwrap_or(0))
            .sum();
        let byte_count = records.len() as u64;
        // The epoch the records are stamped with, which their
        // acknowledgement by the in-sync replicas must still be in; the
        // leadership stays until they are written.
        let (leading, epoch) = target.leading()?;
        if let Some(pause) = append_pause(&self.name) {
            tracing::warn!(topic = %self.name, ?pause, "pausing a leader's write (SLUICE_TEST_APPEND_PAUSE)");
            // Off the async worker it may run on: the node goes on.
            let on_workers = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
                runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            });
            if on_workers {
                tokio::task::block_in_place(|| std::thread::sleep(pause));
            } else {
                std::thread::sleep(pause);
            }
        }
        if first.producer_id < 0 {
            let info = target.log.append_unsynced(records, epoch)?;
            drop(leading);
            target.traffic.add_in(record_count, byte_count);
            target.written();
            return Ok(appended(target, info, epoch));
        }
        // Idempotent: check and write under the partition's producer lock,
        // so two copies of one batch cannot both pass; sync outside it.
        let mut producers = target.producers.lock();
        if let Some(token) = guard
            && first.is_transactional()
            && !first.is_control()
            && !target.producers.txns().is_open(first.producer_id)
            && !target.producers.guarded(first.producer_id, token)
        {
            return Err(CoreError::TransactionOvertaken {
                producer_id: first.producer_id,
            });
        }
        let checked = producers::check(
            &producers,
            first.producer_id,
            first.producer_epoch,
            first.base_sequence,
            last.last_sequence(),
        );
        if let Err(error) = &checked {
            // A refused sequence is fatal to librdkafka's idempotent
            // producer: say what this partition knew.
            tracing::warn!(
                topic = %target.topic(),
                partition = %target.id(),
                %error,
                batch = %format!("epoch {} {}..={}", first.producer_epoch, first.base_sequence, last.last_sequence()),
                known = %producers::describe(&producers, first.producer_id),
                leader_epoch = %target.leader_epoch(),
                log_end = %target.log.log_end(),
                high_watermark = %target.high_watermark(),
                "idempotent batch refused"
            );
        }
        let info = match checked? {
            SequenceCheck::Duplicate { first_offset } => AppendInfo {
                first_offset,
                last_offset: first_offset,
                append_time_ms: -1,
                log_start: target.log.log_start(),
                sync_due: target.log.durability() == sluice_log::Durability::Always,
            },
            SequenceCheck::Append => {
                let info = target.log.append_unsynced(records, epoch)?;
                target.traffic.add_in(record_count, byte_count);
                producers::record(
                    &mut producers,
                    first.producer_id,
                    first.producer_epoch,
                    first.base_sequence,
                    last.last_sequence(),
                    info.first_offset,
                );
                if first.is_transactional() {
                    // The batches (verified above) now carry their offsets
                    // in the log.
                    let written: Vec<_> = sluice_log::batch::headers(records).collect();
                    producers::learn_txns(&target.producers, records, &written);
                }
                info
            }
        };
        drop(producers);
        drop(leading);
        target.written();
        Ok(appended(target, info, epoch))
    }

    /// Writes a transaction marker for `producer_id` at `producer_epoch`
    /// (the transaction coordinator's decision) and waits until every
    /// in-sync replica has it. Blocking.
    ///
    /// # Errors
    /// [`CoreError::UnknownPartition`], [`CoreError::NotLeader`],
    /// [`CoreError::InvalidProducerEpoch`] for an epoch older than the
    /// partition knows, the log's and the replication's errors.
    pub fn write_marker(
        &self,
        partition: PartitionId,
        producer_id: i64,
        producer_epoch: i16,
        marker: crate::transactions::Marker,
    ) -> Result<(), CoreError> {
        let target = self.local_partition(partition)?;
        let mut batch = crate::transactions::encode_marker(
            producer_id,
            producer_epoch,
            marker,
            SystemClock.now_ms(),
        )?;
        let (leading, epoch) = target.leading()?;
        let mut producers = target.producers.lock();
        // As Kafka's leader: a marker from a coordinator older than the
        // last one here is refused (TRANSACTION_COORDINATOR_FENCED);
        // checked under the producers' lock, which the marker's write
        // holds until it has recorded its own epoch.
        let known = target.producers.txns().coordinator_epoch(producer_id);
        if let Some(current) = known
            && current > marker.coordinator_epoch
        {
            return Err(CoreError::CoordinatorFenced {
                producer_id,
                current,
                found: marker.coordinator_epoch,
            });
        }
        if let Some(current) = producers::epoch_of(&producers, producer_id)
            && current > producer_epoch
        {
            return Err(CoreError::InvalidProducerEpoch {
                producer_id,
                current,
                found: producer_epoch,
            });
        }
        let info = target.log.append_unsynced(&mut batch, epoch)?;
        producers::fence(&mut producers, producer_id, producer_epoch);
        let written: Vec<_> = sluice_log::batch::headers(&batch).collect();
        producers::learn_txns(&target.producers, &batch, &written);
        drop(producers);
        drop(leading);
        target.written();
        appended(target, info, epoch).in_sync().wait()?;
        Ok(())
    }
}

/// Refuses what only the broker writes, as Kafka refuses a client's batch:
/// control batches (transaction markers), idempotent batches without a
/// sequence and transactional batches without a producer are
/// INVALID_RECORD.
fn refuse_from_clients(header: &sluice_log::batch::BatchHeader) -> Result<(), CoreError> {
    if header.is_control() {
        return Err(CoreError::InvalidRecord {
            reason: "clients are not allowed to write control records".to_owned(),
        });
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(CoreError::InvalidRecord {
            reason: format!(
                "invalid sequence number {} in a batch of producer {}",
                header.base_sequence, header.producer_id
            ),
        });
    }
    if header.is_transactional() && header.producer_id < 0 {
        return Err(CoreError::InvalidRecord {
            reason: "a transactional batch without a producer id".to_owned(),
        });
    }
    Ok(())
}

/// Fault injection for the cluster tests only: a leader's writes to topic
/// `topic` wait this long once its leadership is checked
/// (`SLUICE_TEST_APPEND_PAUSE=<topic>:<ms>`; none by default), so that a
/// leader change reliably comes in between.
fn append_pause(topic: &str) -> Option<std::time::Duration> {
    static PAUSE: std::sync::OnceLock<Option<(String, std::time::Duration)>> =
        std::sync::OnceLock::new();
    let (paused, pause) = PAUSE
        .get_or_init(|| {
            let spec = std::env::var("SLUICE_TEST_APPEND_PAUSE").ok()?;
            let (name, millis) = spec.rsplit_once(':')?;
            let millis = millis.trim().parse().ok()?;
            Some((name.to_owned(), std::time::Duration::from_millis(millis)))
        })
        .as_ref()?;
    (paused == topic).then_some(*pause)
}

/// The acknowledgement level of an append: on this node's disk when the
/// log asks for a sync (durability `always`, or `flush.messages` reached),
/// written otherwise.
fn appended(partition: Arc<Partition>, info: AppendInfo, epoch: LeaderEpoch) -> Appended {
    let level = if info.sync_due {
        AckLevel::LocalDurable
    } else {
        AckLevel::Written
    };
    Appended {
        ack: PendingAck::partition(partition, info.last_offset.plus(1), level, epoch.get()),
        info,
    }
}

/// An append written, with the acknowledgement it waits for.
#[derive(Debug)]
#[must_use = "an append is acknowledged only once wait() returns"]
pub struct Appended {
    pub info: AppendInfo,
    pub ack: PendingAck,
}

impl Appended {
    /// Waits for every in-sync replica too, on a replicated partition
    /// (Kafka's acks=all).
    pub fn in_sync(self) -> Appended {
        Appended {
            info: self.info,
            ack: self.ack.in_sync(),
        }
    }

    /// Waits until the append reached its acknowledgement level (sharing
    /// the sync with concurrent appends), then wakes readers. Blocking.
    ///
    /// # Errors
    /// The log's sync failure.
    pub fn wait(self) -> Result<AppendInfo, CoreError> {
        self.ack.wait()?;
        Ok(self.info)
    }

    /// As [`Appended::wait`], awaited on the async runtime without holding
    /// a thread.
    ///
    /// # Errors
    /// The log's sync failure.
    pub async fn wait_async(self) -> Result<AppendInfo, CoreError> {
        self.ack.wait_async().await?;
        Ok(self.info)
    }
}

/// A partition moving to other replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassigning {
    pub topic: String,
    pub partition: u32,
    /// Its replicas now: the target's, then those leaving.
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

/// Where a replicated partition is: its replicas, (leader, epoch) and
/// in-sync replicas.
#[derive(Debug)]
struct Placement {
    replicas: Vec<i32>,
    leader: (i32, i32),
    in_sync: Vec<i32>,
}

/// Every topic of the broker.
#[derive(Debug)]
pub struct Topics {
    logs: Arc<LogManager>,
    /// Writers hold its writer from their check to their command's apply;
    /// readers never take it.
    metadata: Arc<Metadata>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Most topics; creating one more fails with [`CoreError::TopicLimit`].
    max_topics: Option<u32>,
    /// Replicas of each partition of a topic created without a replication
    /// factor (Kafka's `default.replication.factor`); 1 on a cluster of one.
    default_replication: u16,
}

/// The file in a partition's log directory naming the topic it belongs to
/// (Kafka's `partition.metadata`).
const PARTITION_METADATA: &str = "partition.metadata";

/// What to do with a partition log that names no topic (written before
/// partition logs named theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unmarked {
    /// Opening from the metadata: it is the topic's.
    Adopt,
    /// Applying a new topic or partition: it was left by a deleted topic.
    Delete,
}

impl Topics {
    /// Opens the partitions of the topics `metadata` holds, then hands the
    /// runtime topics to it, so that the commands it applies from now on
    /// change them.
    pub(crate) fn open(
        logs: Arc<LogManager>,
        metadata: Arc<Metadata>,
        (max_topics, default_replication): (Option<u32>, u16),
    ) -> Result<Arc<Topics>, CoreError> {
        let state = metadata.state().topics.clone();
        let default_replication = if metadata.clustered() {
            default_replication.max(1)
        } else {
            1
        };
        let topics = Arc::new(Topics {
            logs,
            metadata: Arc::clone(&metadata),
            topics: RwLock::new(HashMap::new()),
            max_topics,
            default_replication,
        });
        for (name, meta) in state {
            let topic = topics.build(&name, &meta, Unmarked::Adopt)?;
            topics.write().insert(name, topic);
        }
        metadata.attach_topics(&topics)?;
        Ok(topics)
    }

    /// The runtime topic of its metadata, this node's partitions opened.
    fn build(
        &self,
        name: &str,
        meta: &TopicMeta,
        unmarked: Unmarked,
    ) -> Result<Arc<Topic>, CoreError> {
        let damaged = |reason: String| CoreError::TopicRecord {
            path: PathBuf::from(metadata::METADATA_LOG),
            reason: format!("topic {name:?}: {reason}"),
        };
        let id = parse_id(&meta.id).ok_or_else(|| damaged(format!("bad id {:?}", meta.id)))?;
        let config = TopicConfig::new(meta.config.clone()).map_err(|e| damaged(e.to_string()))?;
        let topic = Arc::new(Topic {
            name: Arc::from(name),
            id,
            state: Mutex::new(TopicState {
                config,
                count: 0,
                replicas: Vec::new(),
                in_sync: BTreeMap::new(),
                leaders: BTreeMap::new(),
                partitions: BTreeMap::new(),
            }),
        });
        self.open_added(&topic, meta, unmarked)?;
        Ok(topic)
    }

    /// Opens the partitions `meta` adds to `topic` that this node holds.
    fn open_added(
        &self,
        topic: &Arc<Topic>,
        meta: &TopicMeta,
        unmarked: Unmarked,
    ) -> Result<(), CoreError> {
        let (from, config) = {
            let state = topic.state();
            (state.count, state.config.clone())
        };
        let node = self.metadata.node_id();
        let mut opened = Vec::new();
        for index in from..meta.partitions {
            let local = meta
                .replicas
                .get(index as usize)
                .is_none_or(|replicas| replicas.contains(&node));
            if local {
                let replicas = meta
                    .replicas
                    .get(index as usize)
                    .cloned()
                    .unwrap_or_default();
                // On a cluster every partition is replicated, with one
                // replica or more: it can move.
                let placement = (!replicas.is_empty()).then(|| Placement {
                    replicas,
                    leader: meta.leader_of(index),
                    in_sync: meta.in_sync_of(index),
                });
                let partition = self.open_partition(topic, index, &config, unmarked, placement)?;
                opened.push((index, partition));
            }
        }
        let mut state = topic.state();
        state.partitions.extend(opened);
        state.count = state.count.max(meta.partitions);
        state.replicas.clone_from(&meta.replicas);
        state.in_sync.clone_from(&meta.in_sync);
        state.leaders.clone_from(&meta.leaders);
        Ok(())
    }

    fn open_partition(
        &self,
        topic: &Topic,
        index: u32,
        config: &TopicConfig,
        unmarked: Unmarked,
        placement: Option<Placement>,
    ) -> Result<Arc<Partition>, CoreError> {
        let name = log_name(&topic.name, index);
        let marker = format!("topic_id: {}\n", hex(&topic.id));
        if let Some(existing) = self.logs.get(&name) {
            let path = existing.dir().join(PARTITION_METADATA);
            let stale = match std::fs::read_to_string(&path) {
                Ok(found) => found != marker,
                Err(_) => unmarked == Unmarked::Delete,
            };
            if stale {
                tracing::info!(
                    log = name,
                    "deleting a partition log left by an earlier topic"
                );
                drop(existing);
                self.logs.delete(&name)?;
            }
        }
        let log_config = config.log_config(self.logs.defaults());
        let log = self.logs.get_or_create(&name, Some(log_config.clone()))?;
        let path = log.dir().join(PARTITION_METADATA);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(marker.as_str()) {
            sluice_log::write_file_atomically(&path, marker.as_bytes())?;
        }
        log.set_config(log_config);
        let producers = ProducerStates::default();
        producers.rebuild(&log)?;
        let leader_epoch = log
            .latest_epoch()
            .map_or(0, LeaderEpoch::get)
            .max(placement.as_ref().map_or(0, |p| p.leader.1));
        let synced = log.durability() == sluice_log::Durability::Always;
        let partition = Arc::new(Partition {
            topic: Arc::clone(&topic.name),
            id: PartitionId::from(index as i32),
            leader_epoch: std::sync::atomic::AtomicI32::new(leader_epoch),
            visible_when_synced: std::sync::atomic::AtomicBool::new(synced),
            log,
            appended: Notify::new(),
            producers,
            traffic: PartitionTraffic::default(),
            syncs: crate::partition::SyncDriver::default(),
            replication: placement.map(|p| {
                crate::replication::Replication::new(
                    self.metadata.node_id(),
                    p.replicas,
                    p.leader.0,
                    p.in_sync,
                    Offset::from(0),
                )
            }),
            leadership: std::sync::Mutex::new(()),
        });
        // A leader alone in sync serves its log at once (the checkpoint,
        // read later, only moves it further).
        partition.resume_high_watermark(Offset::from(0));
        Ok(partition)
    }

    /// Brings the runtime topic `name` in line with its metadata (`None`:
    /// the topic is gone). The metadata applier calls it, in commit order;
    /// calling it again with the same metadata changes nothing.
    pub(crate) fn reconcile(&self, name: &str, meta: Option<&TopicMeta>) -> Result<(), CoreError> {
        let current = self.get(name);
        let same_id = |topic: &Topic, meta: &TopicMeta| hex(&topic.id) == meta.id;
        match (current, meta) {
            (None, None) => Ok(()),
            (Some(_), None) => self.remove(name),
            (Some(topic), Some(meta)) if same_id(&topic, meta) => {
                self.open_added(&topic, meta, Unmarked::Delete)?;
                self.follow_moves(&topic, meta)?;
                for partition in topic.partitions() {
                    if let Some(replication) = partition.replication() {
                        let index = partition.id.get() as u32;
                        let in_sync = meta.in_sync_of(index);
                        let (leader, epoch) = meta.leader_of(index);
                        if replication.leader() != leader || partition.leader_epoch().get() < epoch
                        {
                            partition.change_leader(leader, epoch, in_sync);
                        } else if replication.in_sync() != in_sync {
                            partition.set_in_sync(in_sync);
                        }
                    }
                }
                if topic.config().overrides() != &meta.config {
                    let config = TopicConfig::new(meta.config.clone()).map_err(|e| {
                        CoreError::TopicRecord {
                            path: PathBuf::from(metadata::METADATA_LOG),
                            reason: format!("topic {name:?}: {e}"),
                        }
                    })?;
                    self.configure(&topic, config);
                }
                Ok(())
            }
            (current, Some(meta)) => {
                if current.is_some() {
                    // Deleted and created again while this node looked away.
                    self.remove(name)?;
                }
                let topic = self.build(name, meta, Unmarked::Delete)?;
                self.write().insert(name.to_owned(), topic);
                tracing::info!(topic = name, partitions = meta.partitions, "topic created");
                Ok(())
            }
        }
    }

    /// Opens the partitions whose replicas now include this node (it
    /// follows their leader from offset 0) and closes those whose replicas
    /// no longer do, deleting their logs; the others take their replicas
    /// as `meta` names them.
    fn follow_moves(&self, topic: &Arc<Topic>, meta: &TopicMeta) -> Result<(), CoreError> {
        if meta.replicas.is_empty() {
            return Ok(());
        }
        let node = self.metadata.node_id();
        let config = topic.state().config.clone();
        for index in 0..meta.partitions {
            let replicas = meta.replicas_of(index);
            let held = topic.state().partitions.get(&index).cloned();
            let in_sync = meta.in_sync_of(index);
            let (leader, epoch) = meta.leader_of(index);
            match (held, replicas.contains(&node)) {
                (None, true) => {
                    let placement = Placement {
                        replicas,
                        leader: (leader, epoch),
                        in_sync,
                    };
                    let partition = self.open_partition(
                        topic,
                        index,
                        &config,
                        Unmarked::Delete,
                        Some(placement),
                    )?;
                    topic.state().partitions.insert(index, partition);
                    tracing::info!(topic = %topic.name, partition = index, "replica moved to this node");
                }
                (Some(partition), false) => {
                    // Waiters on it learn of the new leader first.
                    partition.change_leader(leader, epoch, in_sync);
                    topic.state().partitions.remove(&index);
                    partition.wake_readers();
                    self.logs.delete(&log_name(&topic.name, index))?;
                    tracing::info!(topic = %topic.name, partition = index, "replica moved away from this node");
                }
                (Some(partition), true) => {
                    if partition
                        .replication()
                        .is_some_and(|r| r.replicas() != replicas)
                    {
                        partition.set_replicas(replicas, in_sync);
                    }
                }
                (None, false) => {}
            }
        }
        Ok(())
    }

    /// [`Topics::reconcile`] for every topic, runtime or in `state`.
    pub(crate) fn reconcile_all(
        &self,
        state: &BTreeMap<String, TopicMeta>,
    ) -> Result<(), CoreError> {
        for name in self.names() {
            if !state.contains_key(&name) {
                self.reconcile(&name, None)?;
            }
        }
        for (name, meta) in state {
            self.reconcile(name, Some(meta))?;
        }
        Ok(())
    }

    /// Drops a runtime topic and deletes its logs.
    fn remove(&self, name: &str) -> Result<(), CoreError> {
        let Some(topic) = self.write().remove(name) else {
            return Ok(());
        };
        for partition in topic.partitions() {
            partition.wake_readers();
            self.logs
                .delete(&log_name(name, partition.id.get() as u32))?;
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    fn configure(&self, topic: &Topic, config: TopicConfig) {
        let mut state = topic.state();
        let log_config = config.log_config(self.logs.defaults());
        for partition in state.partitions.values() {
            partition.log.set_config(log_config.clone());
            partition.follow_durability(log_config.durability);
        }
        state.config = config;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().get(name).cloned()
    }

    /// Names of all topics, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// The partitions this node follows (it holds a replica another node
    /// leads), with their leaders.
    pub fn followed(&self) -> Vec<(i32, Arc<Partition>)> {
        let topics: Vec<Arc<Topic>> = self.read().values().cloned().collect();
        topics
            .iter()
            .flat_map(|t| t.partitions())
            .filter_map(|p| {
                let leader = p.replication().filter(|r| !r.is_leader())?.leader();
                Some((leader, p))
            })
            .collect()
    }

    /// The partitions this node leads whose in-sync replicas should change
    /// (a follower lagged for `max_lag`, or one caught up), with the
    /// change each asks for.
    pub fn in_sync_changes(
        &self,
        max_lag: std::time::Duration,
    ) -> Vec<(Arc<Partition>, crate::partition::InSyncChange)> {
        let topics: Vec<Arc<Topic>> = self.read().values().cloned().collect();
        topics
            .iter()
            .flat_map(|t| t.partitions())
            .filter_map(|p| {
                let change = p.wanted_in_sync(max_lag)?;
                Some((p, change))
            })
            .collect()
    }

    /// Commits a partition's new in-sync replicas, decided by its leader
    /// (the leader asks the controller, as Kafka's AlterPartition; refused
    /// once the epoch it was decided in has passed, or the set it was
    /// decided on changed). Blocking.
    ///
    /// # Errors
    /// The metadata's refusal or [`CoreError::Quorum`].
    pub fn set_in_sync(
        &self,
        partition: &Partition,
        change: crate::partition::InSyncChange,
    ) -> Result<(), CoreError> {
        tracing::info!(
            topic = %partition.topic,
            partition = %partition.id,
            in_sync = ?change.wanted,
            from = ?change.from,
            leader_epoch = change.leader_epoch,
            "changing the in-sync replicas"
        );
        let committed = self.metadata.commit(MetadataCommand::SetInSync {
            name: partition.topic.to_string(),
            partition: partition.id.get() as u32,
            in_sync: change.wanted.clone(),
            leader_epoch: Some(change.leader_epoch),
            from: Some(change.from.clone()),
        });
        if let Err(CoreError::Quorum { .. }) = &committed {
            // No answer: it may commit later, so it is asked again (and
            // what it adds still counts) until the metadata settles it.
            partition.unanswered(change);
        }
        committed
    }

    /// What the controller should commit when the nodes in `live` are the
    /// ones alive: new leaders, in-sync replicas without dead nodes,
    /// preferred leaders back (see `metadata::leadership_changes`).
    pub fn leadership_changes(
        &self,
        live: &std::collections::BTreeSet<i32>,
    ) -> Vec<MetadataCommand> {
        metadata::leadership_changes(&self.metadata.state(), live)
    }

    /// Commits a command the controller decided. Blocking.
    ///
    /// # Errors
    /// The metadata's refusal or [`CoreError::Quorum`].
    pub fn commit(&self, command: MetadataCommand) -> Result<(), CoreError> {
        tracing::info!(?command, "controller decision");
        self.metadata.commit(command)
    }

    /// Elects a leader for a partition as an operator asks (Kafka's
    /// ElectLeaders): the preferred replica, or with `unclean` any live
    /// replica of a partition whose leader is fenced. Blocking.
    ///
    /// # Errors
    /// [`CoreError::UnknownTopic`], [`CoreError::UnknownPartition`], the
    /// metadata's refusal or [`CoreError::Quorum`].
    pub fn elect(
        &self,
        name: &str,
        partition: u32,
        unclean: bool,
    ) -> Result<metadata::Election, CoreError> {
        let _writer = self.metadata.writer();
        let (outcome, command) =
            metadata::election(&self.metadata.state(), name, partition, unclean)?;
        if let Some(command) = command {
            tracing::info!(?command, unclean, "leader election asked for");
            self.metadata.commit(command)?;
        }
        Ok(outcome)
    }

    /// Moves partition `partition` of `name` to the replicas `target`, or
    /// cancels its move (`None`) (Kafka's AlterPartitionReassignments).
    /// Returns once the move is under way; the controller finishes it when
    /// the target replicas are all in sync. Blocking.
    ///
    /// # Errors
    /// [`CoreError::UnknownTopic`], [`CoreError::UnknownPartition`],
    /// [`CoreError::InvalidReplicaAssignment`] (a node not registered, say),
    /// [`CoreError::NoReassignmentInProgress`], [`CoreError::Quorum`].
    pub fn reassign(
        &self,
        name: &str,
        partition: u32,
        target: Option<Vec<i32>>,
    ) -> Result<(), CoreError> {
        tracing::info!(
            topic = name,
            partition,
            ?target,
            "partition reassignment asked for"
        );
        self.metadata.commit(MetadataCommand::ReassignPartition {
            name: name.to_owned(),
            partition,
            target,
        })
    }

    /// The partitions moving, by topic and partition: (topic, partition,
    /// replicas, adding, removing) (Kafka's ListPartitionReassignments).
    pub fn reassignments(&self) -> Vec<Reassigning> {
        let state = self.metadata.state();
        state
            .topics
            .iter()
            .flat_map(|(name, topic)| {
                topic.moving.iter().map(|(partition, moving)| Reassigning {
                    topic: name.clone(),
                    partition: *partition,
                    replicas: topic.replicas_of(*partition),
                    adding: moving.adding.clone(),
                    removing: moving.removing.clone(),
                })
            })
            .collect()
    }

    /// The metadata behind the topics (nodes, the quorum).
    pub fn metadata(&self) -> &Arc<Metadata> {
        &self.metadata
    }

    /// Checks a CreateTopics request without creating anything.
    ///
    /// # Errors
    /// [`CoreError::TopicLimit`] when `existing` topics leave no room for `name`.
    fn check_limit(&self, name: &str, existing: usize) -> Result<(), CoreError> {
        match self.max_topics {
            Some(limit) if existing >= limit as usize => Err(CoreError::TopicLimit {
                topic: name.to_owned(),
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// As [`Topics::create`], except for I/O.
    pub fn validate_new(&self, name: &str, partitions: u32) -> Result<(), CoreError> {
        validate_name(name)?;
        let topics = self.read();
        if topics.contains_key(name) {
            return Err(CoreError::TopicExists {
                topic: name.to_owned(),
            });
        }
        self.check_limit(name, topics.len())?;
        drop(topics);
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(CoreError::InvalidPartitions {
                topic: name.to_owned(),
                reason: format!(
                    "partition count must be between 1 and {MAX_PARTITIONS}, got {partitions}"
                ),
            });
        }
        Ok(())
    }

    /// Where partitions `from..to` of topic `name` go: nothing on a
    /// cluster of one; on a cluster, `replication` registered nodes each,
    /// the leaders in turn from a node picked by the name and each
    /// partition's followers the nodes after its leader (Kafka spreads
    /// replicas the same way).
    ///
    /// # Errors
    /// [`CoreError::InvalidReplication`] for more replicas than nodes.
    fn place(
        &self,
        name: &str,
        from: u32,
        to: u32,
        replication: u16,
    ) -> Result<Vec<Vec<i32>>, CoreError> {
        if !self.metadata.clustered() {
            return Ok(Vec::new());
        }
        // Fenced nodes get no new replicas (KRaft places on unfenced
        // brokers only).
        // Nor do nodes being decommissioned.
        let fenced = self.metadata.fenced();
        let leaving = self.metadata.leaving();
        let nodes: Vec<i32> = self
            .metadata
            .brokers()
            .iter()
            .map(|b| b.node)
            .filter(|node| !fenced.contains(node) && !leaving.contains(node))
            .collect();
        if nodes.is_empty() {
            return Err(CoreError::Quorum {
                reason: "no node has registered with the controller yet".to_owned(),
            });
        }
        let replication = usize::from(replication);
        if replication == 0 || replication > nodes.len() {
            return Err(CoreError::InvalidReplication {
                topic: name.to_owned(),
                replication,
                nodes: nodes.len(),
            });
        }
        let start = name
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        Ok((from..to)
            .map(|p| {
                (0..replication)
                    .map(|r| nodes[(start + p as usize + r) % nodes.len()])
                    .collect()
            })
            .collect())
    }

    /// Replicas of each partition of a topic created without a replication
    /// factor: `kafka.default_replication_factor` on a cluster, 1 alone.
    pub fn default_replication(&self) -> u16 {
        self.default_replication
    }

    /// Creates a topic with `partitions` empty partitions, each with the
    /// default replication factor. Blocking.
    ///
    /// # Errors
    /// [`CoreError::InvalidTopicName`], [`CoreError::TopicExists`],
    /// [`CoreError::InvalidPartitions`], [`CoreError::InvalidConfig`],
    /// [`CoreError::Quorum`], or I/O.
    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<Arc<Topic>, CoreError> {
        self.create_replicated(name, partitions, self.default_replication, config)
    }

    /// As [`Topics::create`], each partition on `replication` nodes of a
    /// cluster (a cluster of one takes only 1).
    ///
    /// # Errors
    /// As [`Topics::create`]; [`CoreError::InvalidReplication`].
    pub fn create_replicated(
        &self,
        name: &str,
        partitions: u32,
        replication: u16,
        config: TopicConfig,
    ) -> Result<Arc<Topic>, CoreError> {
        self.validate_new(name, partitions)?;
        self.create_checked(name, partitions, replication, config)
    }

    /// Creates one of the broker's internal topics (on a cluster, the
    /// committed offsets), whose names clients may not use. Blocking.
    ///
    /// # Errors
    /// As [`Topics::create_replicated`].
    pub(crate) fn create_internal(
        &self,
        name: &str,
        partitions: u32,
        replication: u16,
        config: TopicConfig,
    ) -> Result<Arc<Topic>, CoreError> {
        self.create_checked(name, partitions, replication, config)
    }

    fn create_checked(
        &self,
        name: &str,
        partitions: u32,
        replication: u16,
        config: TopicConfig,
    ) -> Result<Arc<Topic>, CoreError> {
        if !self.metadata.clustered() && replication != 1 {
            return Err(CoreError::InvalidReplication {
                topic: name.to_owned(),
                replication: usize::from(replication),
                nodes: 1,
            });
        }
        let writer = self.metadata.writer();
        // Checked again in the writers' order: concurrent creations passed
        // `validate_new` together.
        {
            let topics = self.read();
            if let Some(existing) = topics.get(name) {
                return Err(CoreError::TopicExists {
                    topic: existing.name.to_string(),
                });
            }
            self.check_limit(name, topics.len())?;
        }
        self.metadata.commit(MetadataCommand::CreateTopic {
            name: name.to_owned(),
            id: hex(&new_id(name)),
            partitions,
            config: config.overrides().clone(),
            replicas: self.place(name, 0, partitions, replication)?,
        })?;
        drop(writer);
        self.get(name).ok_or_else(|| CoreError::UnknownTopic {
            topic: name.to_owned(),
        })
    }

    /// The topic called `name`, created with `partitions` and `config` when
    /// missing (a concurrent creation wins and is returned).
    ///
    /// # Errors
    /// As [`Topics::create`], except that an existing topic is no error.
    pub fn create_or_get(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<Arc<Topic>, CoreError> {
        if let Some(topic) = self.get(name) {
            return Ok(topic);
        }
        match self.create(name, partitions, config) {
            Err(CoreError::TopicExists { .. }) => {
                self.get(name).ok_or_else(|| CoreError::UnknownTopic {
                    topic: name.to_owned(),
                })
            }
            other => other,
        }
    }

    /// Grows a topic to `total` partitions; partitions never shrink.
    ///
    /// # Errors
    /// [`CoreError::UnknownTopic`], [`CoreError::InvalidPartitions`], or I/O.
    pub fn grow(&self, name: &str, total: u32, validate_only: bool) -> Result<(), CoreError> {
        refuse_internal(name)?;
        let writer = self.metadata.writer();
        let topic = self.get(name).ok_or_else(|| CoreError::UnknownTopic {
            topic: name.to_owned(),
        })?;
        let current = topic.partition_count() as u32;
        if total <= current || total > MAX_PARTITIONS {
            return Err(CoreError::InvalidPartitions {
                topic: name.to_owned(),
                reason: format!(
                    "the topic has {current} partition(s); the new count must be greater and at most {MAX_PARTITIONS}, got {total}"
                ),
            });
        }
        if validate_only {
            return Ok(());
        }
        // Added partitions get as many replicas as the first has.
        let replication = topic
            .replicas(PartitionId::from(0))
            .map_or(1, |r| u16::try_from(r.len().max(1)).unwrap_or(1));
        self.metadata.commit(MetadataCommand::GrowTopic {
            name: name.to_owned(),
            partitions: total,
            replicas: self.place(name, current, total, replication)?,
        })?;
        drop(writer);
        tracing::info!(topic = name, partitions = total, "partitions added");
        Ok(())
    }

    /// Changes a topic's settings (AlterConfigs replaces them all,
    /// IncrementalAlterConfigs edits some).
    ///
    /// # Errors
    /// [`CoreError::UnknownTopic`] or I/O.
    pub fn set_config(&self, name: &str, config: TopicConfig) -> Result<(), CoreError> {
        let _writer = self.metadata.writer();
        if self.get(name).is_none() {
            return Err(CoreError::UnknownTopic {
                topic: name.to_owned(),
            });
        }
        self.metadata.commit(MetadataCommand::SetTopicConfig {
            name: name.to_owned(),
            config: config.overrides().clone(),
        })
    }

    /// Deletes a topic and its data. Blocking.
    ///
    /// # Errors
    /// [`CoreError::UnknownTopic`] or I/O.
    pub fn delete(&self, name: &str) -> Result<(), CoreError> {
        refuse_internal(name)?;
        self.delete_any(name)
    }

    /// Deletes a topic, an internal one too (a quorum queue's, with it).
    ///
    /// # Errors
    /// As [`Topics::delete`].
    pub(crate) fn delete_any(&self, name: &str) -> Result<(), CoreError> {
        let _writer = self.metadata.writer();
        if self.get(name).is_none() {
            return Err(CoreError::UnknownTopic {
                topic: name.to_owned(),
            });
        }
        // The command goes first: a crash after it leaves orphan logs, which
        // a later topic of the same name deletes before use.
        self.metadata.commit(MetadataCommand::DeleteTopic {
            name: name.to_owned(),
        })
    }
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The log behind a partition, as Kafka names partition directories.
pub fn log_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

/// Bytes of a partition's newest segments read back on open to rebuild its
/// idempotent producers' sequence state; older producers are told
/// UNKNOWN_PRODUCER_ID and start a new epoch, as after Kafka's retention.
pub(crate) const PRODUCER_REPLAY_BYTES: u64 = 256 << 20;

/// Where producer state replay starts, given `(base, size)` of every
/// segment oldest first: at least the two newest segments (the active one
/// may have just rolled and be empty), then older ones while less than
/// `bytes` ([`PRODUCER_REPLAY_BYTES`] outside tests) is covered.
pub(crate) fn producer_replay_start(segments: &[(Offset, u64)], bytes: u64) -> Option<Offset> {
    let mut covered = 0;
    let mut start = None;
    for (newest, (base, size)) in segments.iter().rev().enumerate() {
        if newest >= 2 && covered >= bytes {
            break;
        }
        covered += size;
        start = Some(*base);
    }
    start
}

/// Names of internal topics, which clients may not create.
const RESERVED: &[&str] = &[
    "__consumer_offsets",
    "__transaction_state",
    // Sluice's own logs are named as partition 0 of these.
    "__cluster_metadata",
    "__amqp_definitions",
    "__sluice_forward_positions",
    // A consumer group's stored membership, in its offsets.
    crate::consumer_groups::MEMBERSHIP_TOPIC,
];

/// Whether `name` is one of the broker's internal topics (on a cluster,
/// `__consumer_offsets`), which clients may read but not write, grow or
/// delete (Kafka answers INVALID_TOPIC_EXCEPTION).
pub fn is_internal(name: &str) -> bool {
    RESERVED.contains(&name) || name.starts_with(crate::messaging::QUORUM_TOPIC_PREFIX)
}

fn refuse_internal(name: &str) -> Result<(), CoreError> {
    if is_internal(name) {
        return Err(CoreError::InvalidTopicName {
            topic: name.to_owned(),
        });
    }
    Ok(())
}

/// Kafka's rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`, and not
/// the name of an internal topic.
fn validate_name(name: &str) -> Result<(), CoreError> {
    let valid = !name.is_empty()
        && !RESERVED.contains(&name)
        && name.len() <= MAX_TOPIC_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(CoreError::InvalidTopicName {
            topic: name.to_owned(),
        })
    }
}

fn parse_id(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(id)
}

/// A topic id unique enough for one broker: time, process and name hashed.
fn new_id(name: &str) -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut id = [0u8; 16];
    for (i, chunk) in id.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write(name.as_bytes());
        hasher.write_usize(i);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&hasher.finish().to_be_bytes());
    }
    id
}

/// Refuses the batches if a CreateTime record lies further from the
/// broker's clock than `(before_ms, after_ms)` allow, as Kafka 3.6+
/// (`message.timestamp.before.max.ms` / `after.max.ms`). Every record is
/// checked, a compressed batch's after decompressing it, as Kafka does.
fn check_timestamps(
    records: &[u8],
    headers: &[(usize, sluice_log::batch::BatchHeader)],
    (before_ms, after_ms): (i64, i64),
) -> Result<(), CoreError> {
    if before_ms == i64::MAX && after_ms == i64::MAX {
        return Ok(());
    }
    let now = SystemClock.now_ms();
    let check = |timestamp: i64| {
        // -1: no timestamp, which Kafka lets through.
        if timestamp == -1 {
            return Ok(());
        }
        let late = now.saturating_sub(timestamp) > before_ms;
        let early = timestamp.saturating_sub(now) > after_ms;
        if late || early {
            Err(CoreError::InvalidTimestamp {
                timestamp,
                earliest: now.saturating_sub(before_ms),
                latest: now.saturating_add(after_ms),
            })
        } else {
            Ok(())
        }
    };
    for (start, header) in headers {
        let batch = records
            .get(*start..start.saturating_add(header.size))
            .unwrap_or_default();
        let timestamps = sluice_log::batch::record_timestamps(batch)
            .map_err(|reason| CoreError::Log(sluice_log::LogError::InvalidBatch { reason }))?;
        timestamps.into_iter().try_for_each(check)?;
    }
    Ok(())
}

#[cfg(test)]
mod replay_tests {
    use super::*;

    #[test]
    fn producer_replay_covers_two_segments_and_then_the_byte_budget() {
        let o = Offset::from;
        assert_eq!(producer_replay_start(&[], PRODUCER_REPLAY_BYTES), None);
        assert_eq!(
            producer_replay_start(&[(o(0), 10)], PRODUCER_REPLAY_BYTES),
            Some(o(0))
        );
        // Small logs are read whole.
        assert_eq!(
            producer_replay_start(&[(o(0), 10), (o(5), 10), (o(9), 0)], PRODUCER_REPLAY_BYTES),
            Some(o(0))
        );
        // A just-rolled, empty active segment does not hide the one before.
        let full = PRODUCER_REPLAY_BYTES;
        assert_eq!(
            producer_replay_start(
                &[(o(0), full), (o(5), full), (o(9), 0)],
                PRODUCER_REPLAY_BYTES
            ),
            Some(o(5))
        );
        let big = PRODUCER_REPLAY_BYTES / 2;
        assert_eq!(
            producer_replay_start(
                &[(o(0), big), (o(10), big), (o(20), big), (o(30), 0)],
                PRODUCER_REPLAY_BYTES
            ),
            Some(o(10))
        );
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;
    use sluice_log::batch::{NewRecord, encode, split_verified};

    fn check(timestamps: &[i64], bounds: (i64, i64)) -> Result<(), CoreError> {
        let records: Vec<NewRecord<'_>> = timestamps
            .iter()
            .map(|&timestamp| NewRecord {
                key: None,
                value: Some(b"v"),
                timestamp,
            })
            .collect();
        let batch = encode(&records).expect("records encode");
        let headers = split_verified(&batch).expect("a valid batch");
        check_timestamps(&batch, &headers, bounds)
    }

    #[test]
    fn every_record_of_a_batch_is_held_to_the_timestamp_bounds() {
        let now = SystemClock.now_ms();
        let hour = 3_600_000;
        assert!(check(&[now, now - 2 * hour], (i64::MAX, i64::MAX)).is_ok());
        assert!(check(&[now, now - hour / 2], (hour, hour)).is_ok());
        // The old record is second: the batch header's first timestamp is fresh.
        let err = check(&[now, now - 2 * hour], (hour, i64::MAX)).expect_err("too old");
        assert!(matches!(err, CoreError::InvalidTimestamp { .. }), "{err}");
        let err = check(&[now + 2 * hour], (i64::MAX, hour)).expect_err("too new");
        assert!(matches!(err, CoreError::InvalidTimestamp { .. }), "{err}");
        // No timestamp (-1) is let through, as Kafka does.
        assert!(check(&[-1], (hour, hour)).is_ok());
    }
}
