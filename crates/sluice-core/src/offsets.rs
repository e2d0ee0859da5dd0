//! Committed consumer offsets, per group, topic and partition.
//!
//! Every commit is appended as one record batch (one record per
//! partition) and acknowledged once durable; the latest record per key
//! wins, so the log is ready for compaction.
//!
//! - On a cluster of one the log is the internal `__consumer_offsets-0`,
//!   replayed into memory on open.
//! - On a cluster it is the replicated topic `__consumer_offsets`
//!   (`kafka.offsets_partitions` partitions, three replicas or one per
//!   node when fewer), created when a client first looks for a
//!   coordinator. As in Kafka, a group belongs to partition
//!   `abs(java_hash(group)) % partitions` and its coordinator is that
//!   partition's leader: a commit is acknowledged once every in-sync
//!   replica has it (acks=all), and a node that becomes the leader loads
//!   the partition's groups from its log before it answers for them (and
//!   forgets them when it stops leading).
//!
//! On a cluster, offsets a transaction commits (TxnOffsetCommit, sent to
//! the group's coordinator) are written to the group's partition as
//! pending records of their producer, and become the group's committed
//! offsets when the transaction's commit marker is written to that
//! partition (the transaction coordinator added it to the transaction at
//! AddOffsetsToTxn), or are dropped at an abort marker; a new leader
//! replays them the same way, as Kafka's group coordinator does. Each
//! pending record has a key of its own (a nonce in it), so compaction
//! never drops one before its marker; after the marker the leader writes
//! the committed offsets as plain records and tombstones the pending ones.
//!
//! Record key layout: `[version:2=0][group_len:2][group][topic_len:2][topic][partition:4]`,
//! a pending one `[version:2=1][group_len:2][group][topic_len:2][topic][partition:4][producer id:8][nonce:8]`;
//! value layout: `[version:2=0][offset:8][leader_epoch:4][metadata_len:4 (-1 = null)][metadata]`,
//! big-endian.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_log::{Log, LogManager};
use sluice_types::{Clock, SystemClock};

use crate::CoreError;
use crate::coordinated::{CoordinatedTopic, Lead, Unwritten};
use crate::fields::{get_str, put_str};
use crate::partition::Partition;
use crate::topics::Topics;

/// The internal log holding committed offsets on a cluster of one.
pub const OFFSETS_LOG: &str = "__consumer_offsets-0";
/// The internal log holding the positions of the forwarders a node of a
/// cluster runs (they move with partition leaders, not with a group's
/// coordinator, so they stay on the node).
const FORWARD_POSITIONS_LOG: &str = "__sluice_forward_positions-0";
/// The replicated topic holding committed offsets on a cluster.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// One committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Which node coordinates a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordinator {
    /// This one.
    Here,
    /// Another node of the cluster.
    Node(i32),
    /// None yet: the offsets topic is being created, or the group's
    /// partition has no leader.
    Unavailable,
}

type GroupOffsets = BTreeMap<(String, i32), CommittedOffset>;

/// An offset a transaction commits, waiting for its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingCommit {
    group: String,
    topic: String,
    partition: i32,
    committed: CommittedOffset,
    /// Its record's key, tombstoned once the marker is written.
    key: Bytes,
}

/// Per producer id, what its open transaction commits.
type Pending = HashMap<i64, Vec<PendingCommit>>;

/// Where the records go.
#[derive(Debug)]
enum Backend {
    /// A cluster of one: the internal log, all groups in memory.
    Local(Arc<Log>),
    /// A cluster: the replicated topic; the groups of the partitions this
    /// node leads in memory.
    Replicated(Replicated),
}

#[derive(Debug)]
struct Replicated {
    /// `__consumer_offsets`, its replication Kafka's
    /// `offsets.topic.replication.factor`.
    topic: CoordinatedTopic,
    /// The forwarders' positions on this node.
    forwarders: Box<OffsetStore>,
}

/// Committed offsets of every group.
#[derive(Debug)]
pub struct OffsetStore {
    backend: Backend,
    groups: Mutex<HashMap<String, GroupOffsets>>,
    /// Per group, the time of its latest commit (record time), for expiry.
    last_commit: Mutex<HashMap<String, i64>>,
    /// On a cluster, the transactions' offsets waiting for their markers,
    /// of the partitions loaded here.
    pending: Mutex<Pending>,
}

/// The topic config of the committed offsets: compacted, never deleted by
/// age or size (the latest commit per key is the state, as in Kafka).
fn offsets_config(logs: &LogManager, segment_bytes: u64) -> sluice_log::LogConfig {
    sluice_log::LogConfig {
        cleanup_compact: true,
        cleanup_delete: false,
        segment_bytes,
        ..logs.defaults().clone()
    }
}

/// Reads every commit of `log` into `groups` and `last_commit`, keeping
/// only the groups `keep` accepts; a transaction's pending offsets are
/// applied at its commit marker, dropped at its abort marker, and left in
/// `pending` when no marker follows yet.
fn replay(
    log: &Log,
    keep: impl Fn(&str) -> bool,
    groups: &mut HashMap<String, GroupOffsets>,
    last_commit: &mut HashMap<String, i64>,
    pending: &mut Pending,
) -> Result<(), CoreError> {
    let mut loaded: HashMap<String, GroupOffsets> = HashMap::new();
    let mut times: HashMap<String, i64> = HashMap::new();
    let mut open: Pending = HashMap::new();
    crate::replay::for_each_record(log, log.log_start(), |record| {
        if record.control {
            let commit = record.key.as_ref().and_then(control_is_commit);
            let commits = open.remove(&record.producer_id).unwrap_or_default();
            if commit == Some(true) {
                for pending in commits {
                    let latest = times
                        .entry(pending.group.clone())
                        .or_insert(record.timestamp);
                    *latest = (*latest).max(record.timestamp);
                    loaded
                        .entry(pending.group)
                        .or_default()
                        .insert((pending.topic, pending.partition), pending.committed);
                }
            }
            return;
        }
        if let Some(((group, topic, partition), producer_id)) =
            record.key.as_ref().and_then(decode_pending_key)
        {
            if let (true, Some(committed), Some(key)) = (
                keep(&group),
                record.value.as_ref().and_then(decode_value),
                record.key.clone(),
            ) {
                open.entry(producer_id).or_default().push(PendingCommit {
                    group,
                    topic,
                    partition,
                    committed,
                    key,
                });
            }
            return;
        }
        let Some((group, topic, partition)) = record.key.as_ref().and_then(decode_key) else {
            return;
        };
        if !keep(&group) {
            return;
        }
        let latest = times.entry(group.clone()).or_insert(record.timestamp);
        *latest = (*latest).max(record.timestamp);
        let entry = loaded.entry(group).or_default();
        match record.value.as_ref().and_then(decode_value) {
            Some(committed) => {
                entry.insert((topic, partition), committed);
            }
            None => {
                entry.remove(&(topic, partition));
            }
        }
    })?;
    loaded.retain(|_, offsets| !offsets.is_empty());
    times.retain(|group, _| loaded.contains_key(group));
    groups.extend(loaded);
    last_commit.extend(times);
    for (producer_id, commits) in open {
        pending.entry(producer_id).or_default().extend(commits);
    }
    Ok(())
}

/// A control record's key, `[version:2=0][type:2]`: whether it is a
/// commit marker (type 1) or an abort (0).
fn control_is_commit(key: &Bytes) -> Option<bool> {
    let mut buf = key.clone();
    if buf.remaining() < 4 {
        return None;
    }
    let _version = buf.get_i16();
    Some(buf.get_i16() == 1)
}

impl OffsetStore {
    pub(crate) fn open(logs: &LogManager, segment_bytes: u64) -> Result<OffsetStore, CoreError> {
        OffsetStore::open_log(logs, OFFSETS_LOG, segment_bytes)
    }

    fn open_log(
        logs: &LogManager,
        name: &str,
        segment_bytes: u64,
    ) -> Result<OffsetStore, CoreError> {
        let config = offsets_config(logs, segment_bytes);
        let log = logs.get_or_create(name, Some(config.clone()))?;
        log.set_config(config);
        let mut groups = HashMap::new();
        let mut last_commit = HashMap::new();
        replay(
            &log,
            |_| true,
            &mut groups,
            &mut last_commit,
            &mut Pending::new(),
        )?;
        Ok(OffsetStore {
            backend: Backend::Local(log),
            groups: Mutex::new(groups),
            last_commit: Mutex::new(last_commit),
            pending: Mutex::default(),
        })
    }

    /// The store of a node of a cluster: the topic `__consumer_offsets`
    /// with `partitions` partitions, created on first need, and the
    /// node's own log of its forwarders' positions.
    ///
    /// # Errors
    /// [`CoreError::Log`] when the forwarders' log cannot be opened.
    pub(crate) fn replicated(
        logs: &LogManager,
        topics: Arc<Topics>,
        (partitions, replication): (u32, u16),
        segment_bytes: u64,
    ) -> Result<OffsetStore, CoreError> {
        let forwarders = OffsetStore::open_log(logs, FORWARD_POSITIONS_LOG, segment_bytes)?;
        Ok(OffsetStore {
            backend: Backend::Replicated(Replicated {
                topic: CoordinatedTopic::new(
                    topics,
                    OFFSETS_TOPIC,
                    (partitions, replication),
                    segment_bytes,
                ),
                forwarders: Box::new(forwarders),
            }),
            groups: Mutex::new(HashMap::new()),
            last_commit: Mutex::new(HashMap::new()),
            pending: Mutex::default(),
        })
    }

    /// The store a forwarder's group is kept in on a cluster (this node's
    /// own log); `None` for every other group, and on a cluster of one.
    fn node_local(&self, group: &str) -> Option<&OffsetStore> {
        match &self.backend {
            Backend::Replicated(replicated)
                if group.starts_with(crate::forwarding::FORWARD_GROUP_PREFIX) =>
            {
                Some(&replicated.forwarders)
            }
            _ => None,
        }
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, GroupOffsets>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn last_commits(&self) -> MutexGuard<'_, HashMap<String, i64>> {
        self.last_commit.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On a cluster, the offsets partition a transaction that commits
    /// offsets of `group` writes a marker to (Kafka's AddOffsetsToTxn adds
    /// it to the transaction); `None` on a cluster of one, where the
    /// transaction coordinator keeps them.
    pub fn txn_partition(&self, group: &str) -> Option<(String, i32)> {
        match &self.backend {
            Backend::Replicated(replicated) if self.node_local(group).is_none() => Some((
                OFFSETS_TOPIC.to_owned(),
                replicated.topic.index_of(group) as i32,
            )),
            _ => None,
        }
    }

    /// On a cluster, TxnOffsetCommit on the group's coordinator: `offsets`
    /// written as pending records of `producer_id`, made the group's
    /// committed offsets by the commit marker of its transaction. Blocking.
    ///
    /// # Errors
    /// [`CoreError::NotCoordinator`] when this node does not coordinate
    /// `group`; [`CoreError::InvalidProducerEpoch`] for an `epoch` older
    /// than a marker of the producer on the group's partition (a zombie
    /// whose transaction was aborted for a newer one); the replication's
    /// errors.
    pub fn commit_pending(
        &self,
        group: &str,
        producer_id: i64,
        epoch: i16,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), CoreError> {
        if self.txn_partition(group).is_none() {
            return Err(CoreError::Internal {
                reason: "transactional offsets are kept by the coordinator on a cluster of one"
                    .to_owned(),
            });
        }
        if offsets.is_empty() {
            return Ok(());
        }
        if let Some(partition) = self.led(group)?
            && let Some(current) = partition.producer_epoch(producer_id)
            && current > epoch
        {
            return Err(CoreError::InvalidProducerEpoch {
                producer_id,
                current,
                found: epoch,
            });
        }
        let pending: Vec<PendingCommit> = offsets
            .iter()
            .map(|(topic, partition, committed)| PendingCommit {
                group: group.to_owned(),
                topic: topic.clone(),
                partition: *partition,
                committed: committed.clone(),
                key: encode_pending_key(group, topic, *partition, producer_id),
            })
            .collect();
        self.append(
            group,
            pending
                .iter()
                .map(|p| (p.key.clone(), Some(encode_value(&p.committed))))
                .collect(),
        )?;
        if self.holds(group) {
            self.pending()
                .entry(producer_id)
                .or_default()
                .extend(pending);
        }
        Ok(())
    }

    /// A transaction marker of `producer_id` was written to offsets
    /// partition `index` here: its pending offsets of the partition's
    /// groups become committed (`commit`) or are dropped, and the log says
    /// so with plain records of what was committed and tombstones of the
    /// pending records (lost in a crash, the marker says it again on the
    /// next load). Blocking.
    pub(crate) fn complete_txn(&self, index: u32, producer_id: i64, commit: bool) {
        let Backend::Replicated(replicated) = &self.backend else {
            return;
        };
        let of_index = replicated.topic.holds_key(index);
        let done: Vec<PendingCommit> = {
            let mut pending = self.pending();
            let Some(commits) = pending.get_mut(&producer_id) else {
                return;
            };
            let (done, kept) = std::mem::take(commits)
                .into_iter()
                .partition(|p| of_index(&p.group));
            *commits = kept;
            if commits.is_empty() {
                pending.remove(&producer_id);
            }
            done
        };
        let Some(group) = done.first().map(|p| p.group.clone()) else {
            return;
        };
        let mut records: Vec<(Bytes, Option<Bytes>)> =
            done.iter().map(|p| (p.key.clone(), None)).collect();
        if commit {
            records.extend(done.iter().map(|p| {
                (
                    encode_key(&p.group, &p.topic, p.partition),
                    Some(encode_value(&p.committed)),
                )
            }));
        }
        if let Err(error) = self.append(&group, records) {
            tracing::warn!(partition = index, producer_id, %error, "cannot record a transaction's offsets after its marker; its marker stands for them");
        }
        if commit && self.holds(&group) {
            let now = SystemClock.now_ms();
            let mut groups = self.groups();
            let mut last_commit = self.last_commits();
            for pending in done {
                last_commit.insert(pending.group.clone(), now);
                groups
                    .entry(pending.group)
                    .or_default()
                    .insert((pending.topic, pending.partition), pending.committed);
            }
        }
    }

    /// Which node coordinates `group`: this one on a cluster of one; on a
    /// cluster, the leader of the group's offsets partition.
    pub fn coordinator(&self, group: &str) -> Coordinator {
        let Backend::Replicated(replicated) = &self.backend else {
            return Coordinator::Here;
        };
        if self.node_local(group).is_some() {
            return Coordinator::Here;
        }
        match replicated.topic.lead(group) {
            Lead::Node(node) => Coordinator::Node(node),
            Lead::Unavailable => Coordinator::Unavailable,
            Lead::Here => match self.led(group) {
                Ok(_) => Coordinator::Here,
                Err(_) => Coordinator::Unavailable,
            },
        }
    }

    /// Whether the caller should create the offsets topic now (with
    /// [`OffsetStore::prepare`], off the request path): on a cluster, when
    /// it does not exist and no creation is under way.
    pub fn needs_topic(&self) -> bool {
        match &self.backend {
            Backend::Replicated(replicated) => replicated.topic.needs_topic(),
            Backend::Local(_) => false,
        }
    }

    /// Creates the offsets topic of a cluster if it does not exist yet
    /// (Kafka creates it when a client first asks for a coordinator).
    /// Blocking (up to the quorum's time limit); nothing to do on a cluster
    /// of one.
    ///
    /// # Errors
    /// The creation's failure ([`CoreError::Quorum`], say).
    pub fn prepare(&self) -> Result<(), CoreError> {
        match &self.backend {
            Backend::Replicated(replicated) => replicated.topic.prepare(),
            Backend::Local(_) => Ok(()),
        }
    }

    /// The offsets partition of `group` when this node leads it (its
    /// groups loaded), `None` on a cluster of one.
    ///
    /// # Errors
    /// [`CoreError::NotCoordinator`] when another node leads it or it has
    /// no leader; the log's read errors while loading.
    fn led(&self, group: &str) -> Result<Option<Arc<Partition>>, CoreError> {
        let Backend::Replicated(replicated) = &self.backend else {
            return Ok(None);
        };
        let index = replicated.topic.index_of(group);
        match self.refresh(replicated, index)? {
            Some(partition) => Ok(Some(partition)),
            None => Err(CoreError::NotCoordinator {
                group: group.to_owned(),
                coordinator: replicated.topic.leader_of(index),
            }),
        }
    }

    /// Brings the groups of offsets partition `index` in memory in line
    /// with its leadership (see [`CoordinatedTopic::refresh`]). Returns the
    /// partition when this node leads it.
    fn refresh(
        &self,
        replicated: &Replicated,
        index: u32,
    ) -> Result<Option<Arc<Partition>>, CoreError> {
        let of_index = replicated.topic.holds_key(index);
        let forget = || {
            self.groups().retain(|group, _| !of_index(group));
            self.last_commits().retain(|group, _| !of_index(group));
            for commits in self.pending().values_mut() {
                commits.retain(|pending| !of_index(&pending.group));
            }
            self.pending().retain(|_, commits| !commits.is_empty());
        };
        let load = |log: &Log| {
            let mut groups = self.groups();
            replay(
                log,
                &of_index,
                &mut groups,
                &mut self.last_commits(),
                &mut self.pending(),
            )?;
            tracing::info!(
                partition = index,
                groups = groups.keys().filter(|g| of_index(g)).count(),
                "loaded the committed offsets of the groups this node now coordinates"
            );
            Ok(())
        };
        Ok(replicated
            .topic
            .refresh(index, load, forget)?
            .map(|(partition, _)| partition))
    }

    /// Whether `group`'s offsets are in memory here: always on a cluster
    /// of one; on a cluster, while its partition is loaded.
    fn holds(&self, group: &str) -> bool {
        match &self.backend {
            Backend::Local(_) => true,
            Backend::Replicated(replicated) => replicated
                .topic
                .loaded_epoch(replicated.topic.index_of(group))
                .is_some(),
        }
    }

    /// Refreshes every offsets partition (see [`OffsetStore::refresh`]).
    fn refresh_all(&self) {
        if let Backend::Replicated(replicated) = &self.backend {
            for index in 0..replicated.topic.partition_count() {
                if let Err(error) = self.refresh(replicated, index) {
                    tracing::warn!(partition = index, %error, "cannot load committed offsets");
                }
            }
        }
    }

    /// Stores `offsets` for `group` durably, all or nothing. Blocking.
    ///
    /// # Errors
    /// [`CoreError::Log`] when the append fails; nothing is stored then.
    /// On a cluster, [`CoreError::NotCoordinator`] when this node does not
    /// coordinate `group`, and the replication's errors.
    pub fn commit(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), CoreError> {
        if let Some(local) = self.node_local(group) {
            return local.commit(group, offsets);
        }
        if offsets.is_empty() {
            return Ok(());
        }
        self.append(
            group,
            offsets
                .iter()
                .map(|(topic, partition, committed)| {
                    (
                        encode_key(group, topic, *partition),
                        Some(encode_value(committed)),
                    )
                })
                .collect(),
        )?;
        if !self.holds(group) {
            // Written and replicated, but this node stopped coordinating
            // the group meanwhile: the new coordinator loads it.
            return Ok(());
        }
        self.last_commits()
            .insert(group.to_owned(), SystemClock.now_ms());
        let mut groups = self.groups();
        let entry = groups.entry(group.to_owned()).or_default();
        for (topic, partition, committed) in offsets {
            entry.insert((topic.clone(), *partition), committed.clone());
        }
        Ok(())
    }

    /// Forgets every committed offset of `group` (tombstones in the log).
    /// Blocking.
    ///
    /// # Errors
    /// As [`OffsetStore::commit`].
    pub fn delete_group(&self, group: &str) -> Result<(), CoreError> {
        let keys: Vec<(String, i32)> = self
            .group(group)
            .into_iter()
            .map(|(topic, partition, _)| (topic, partition))
            .collect();
        self.delete(group, &keys)
    }

    /// Forgets the offsets of every group that has not committed for
    /// `retention` and has no members now (Kafka's `offsets.retention.minutes`,
    /// KIP-211). Returns the groups forgotten. Blocking.
    ///
    /// # Errors
    /// [`CoreError::Log`] when the tombstones cannot be appended.
    pub fn expire(
        &self,
        retention: std::time::Duration,
        has_members: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, CoreError> {
        self.refresh_all();
        let cutoff = SystemClock
            .now_ms()
            .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        // Asked with no lock held: `has_members` reaches the groups'
        // coordinators, which read this store.
        let old: Vec<String> = self
            .last_commits()
            .iter()
            .filter(|(_, at)| **at < cutoff)
            .map(|(group, _)| group.clone())
            .collect();
        let stale: Vec<String> = old
            .into_iter()
            .filter(|group| !has_members(group))
            .collect();
        let mut expired = Vec::new();
        let mut failure = None;
        for group in stale {
            // One group that cannot be expired now does not keep the
            // others: it is tried again next time.
            match self.delete_group(&group) {
                Ok(()) => {
                    self.last_commits().remove(&group);
                    tracing::info!(group = %group, "committed offsets expired");
                    expired.push(group);
                }
                Err(error) => {
                    tracing::warn!(group = %group, %error, "cannot expire committed offsets yet");
                    failure = Some(error);
                }
            }
        }
        match failure {
            Some(error) if expired.is_empty() => Err(error),
            _ => Ok(expired),
        }
    }

    /// Forgets the committed offsets of some partitions (OffsetDelete).
    /// Blocking.
    ///
    /// # Errors
    /// As [`OffsetStore::commit`].
    pub fn delete(&self, group: &str, partitions: &[(String, i32)]) -> Result<(), CoreError> {
        if let Some(local) = self.node_local(group) {
            return local.delete(group, partitions);
        }
        if partitions.is_empty() {
            return Ok(());
        }
        let records: Vec<(Bytes, Option<Bytes>)> = partitions
            .iter()
            .map(|(topic, partition)| (encode_key(group, topic, *partition), None))
            .collect();
        self.append(group, records)?;
        if !self.holds(group) {
            return Ok(());
        }
        let mut groups = self.groups();
        if let Some(offsets) = groups.get_mut(group) {
            for key in partitions {
                offsets.remove(key);
            }
            if offsets.is_empty() {
                groups.remove(group);
            }
        }
        Ok(())
    }

    /// Appends the records of `group` durably: to the local log, or to the
    /// group's offsets partition, acknowledged by its in-sync replicas.
    fn append(&self, group: &str, entries: Vec<(Bytes, Option<Bytes>)>) -> Result<(), CoreError> {
        let entries: Vec<_> = entries
            .iter()
            .map(|(key, value)| (Some(key.as_ref()), value.as_deref()))
            .collect();
        let mut batch = crate::replay::batch_of(&entries, "offsets")?;
        match (&self.backend, self.led(group)?) {
            (Backend::Local(log), _) => {
                log.append(&mut batch, crate::LOCAL_EPOCH)?;
            }
            (Backend::Replicated(replicated), Some(partition)) => {
                match replicated.topic.append(&partition, &mut batch) {
                    Ok(()) => {}
                    Err(Unwritten::Moved(coordinator)) => {
                        return Err(CoreError::NotCoordinator {
                            group: group.to_owned(),
                            coordinator,
                        });
                    }
                    Err(Unwritten::Failed(error)) => return Err(error),
                }
            }
            (Backend::Replicated(_), None) => {
                return Err(CoreError::Internal {
                    reason: "no offsets partition for a group".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The committed offset of one partition for `group` (none when this
    /// node does not coordinate it).
    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        if let Some(local) = self.node_local(group) {
            return local.fetch(group, topic, partition);
        }
        self.led(group).ok()?;
        self.groups()
            .get(group)
            .and_then(|offsets| offsets.get(&(topic.to_owned(), partition)).cloned())
    }

    /// Every group with at least one committed offset (that this node
    /// coordinates).
    pub fn group_ids(&self) -> Vec<String> {
        self.refresh_all();
        let mut ids: Vec<String> = self
            .groups()
            .iter()
            .filter(|(_, offsets)| !offsets.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        if let Backend::Replicated(replicated) = &self.backend {
            ids.extend(replicated.forwarders.group_ids());
        }
        ids
    }

    /// Every committed offset of `group`, sorted by topic and partition
    /// (none when this node does not coordinate it), the broker's own
    /// entry (a consumer group's stored membership) left out.
    pub fn group(&self, group: &str) -> Vec<(String, i32, CommittedOffset)> {
        let mut offsets = self.committed(group).unwrap_or_default();
        offsets.retain(|(topic, _, _)| topic != crate::consumer_groups::MEMBERSHIP_TOPIC);
        offsets
    }

    /// The leader epoch this node coordinates `group` in (0 on a cluster
    /// of one) and, for a `topic` asked for, its partition 0's committed
    /// offset, if any: what a coordinator reads its own state of the group
    /// from. `None` when this node does not coordinate the group.
    pub fn coordinated_entry(
        &self,
        group: &str,
        topic: Option<&str>,
    ) -> Option<(i32, Option<CommittedOffset>)> {
        if let Some(local) = self.node_local(group) {
            return local.coordinated_entry(group, topic);
        }
        let epoch = match (&self.backend, self.led(group).ok()?) {
            (Backend::Replicated(replicated), Some(partition)) => {
                let loaded = replicated
                    .topic
                    .loaded_epoch(replicated.topic.index_of(group))?;
                if !partition.is_leader() || loaded != partition.leader_epoch().get() {
                    return None;
                }
                loaded
            }
            _ => 0,
        };
        let entry = topic.and_then(|topic| {
            self.groups()
                .get(group)
                .and_then(|offsets| offsets.get(&(topic.to_owned(), 0)).cloned())
        });
        Some((epoch, entry))
    }

    /// Every committed offset of `group`, sorted by topic and partition,
    /// read while this node coordinates it (what OffsetFetch answers: no
    /// offset must mean none was committed, never that the group moved).
    ///
    /// # Errors
    /// On a cluster, [`CoreError::NotCoordinator`] when this node does not
    /// coordinate `group`, or stopped during the read; the log's errors
    /// when loading the group's offsets.
    pub fn committed(&self, group: &str) -> Result<Vec<(String, i32, CommittedOffset)>, CoreError> {
        if let Some(local) = self.node_local(group) {
            return local.committed(group);
        }
        let led = self.led(group)?;
        let read = self.groups().get(group).map_or_else(Vec::new, |offsets| {
            offsets
                .iter()
                .map(|((topic, partition), c)| (topic.clone(), *partition, c.clone()))
                .collect()
        });
        // Leadership may have moved during the read (and the groups been
        // forgotten, or loaded for a later epoch): the read stands only if
        // the epoch loaded is still the one this node leads in.
        if let (Backend::Replicated(replicated), Some(partition)) = (&self.backend, led) {
            let loaded = replicated
                .topic
                .loaded_epoch(replicated.topic.index_of(group));
            if !partition.is_leader() || loaded != Some(partition.leader_epoch().get()) {
                return Err(CoreError::NotCoordinator {
                    group: group.to_owned(),
                    coordinator: None,
                });
            }
        }
        Ok(read)
    }
}

fn encode_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u16(0);
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.put_i32(partition);
    out.freeze()
}

fn encode_value(committed: &CommittedOffset) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u16(0);
    out.put_i64(committed.offset);
    out.put_i32(committed.leader_epoch);
    match &committed.metadata {
        Some(metadata) => {
            out.put_i32(metadata.len() as i32);
            out.put_slice(metadata.as_bytes());
        }
        None => out.put_i32(-1),
    }
    out.freeze()
}

/// A pending record's key: unique (a nonce from the clock and a counter),
/// so that compaction keeps every one until it is tombstoned.
fn encode_pending_key(group: &str, topic: &str, partition: i32, producer_id: i64) -> Bytes {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nonce = ((SystemClock.now_ms() as u64) << 20)
        | (COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xF_FFFF);
    let mut out = BytesMut::new();
    out.put_u16(1);
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.put_i32(partition);
    out.put_i64(producer_id);
    out.put_u64(nonce);
    out.freeze()
}

/// A pending record's group, topic and partition, and its producer.
fn decode_pending_key(key: &Bytes) -> Option<((String, String, i32), i64)> {
    let mut buf = key.clone();
    if buf.remaining() < 2 || buf.get_u16() != 1 {
        return None;
    }
    let group = get_str(&mut buf)?;
    let topic = get_str(&mut buf)?;
    (buf.remaining() >= 20).then(|| ((group, topic, buf.get_i32()), buf.get_i64()))
}

fn decode_key(key: &Bytes) -> Option<(String, String, i32)> {
    let mut buf = key.clone();
    if buf.remaining() < 2 || buf.get_u16() != 0 {
        return None;
    }
    let group = get_str(&mut buf)?;
    let topic = get_str(&mut buf)?;
    (buf.remaining() >= 4).then(|| (group, topic, buf.get_i32()))
}

fn decode_value(value: &Bytes) -> Option<CommittedOffset> {
    let mut buf = value.clone();
    if buf.remaining() < 2 + 8 + 4 + 4 || buf.get_u16() != 0 {
        return None;
    }
    let offset = buf.get_i64();
    let leader_epoch = buf.get_i32();
    let len = buf.get_i32();
    let metadata = match usize::try_from(len) {
        Ok(len) if buf.remaining() >= len => {
            Some(String::from_utf8_lossy(&buf.split_to(len)).into_owned())
        }
        _ => None,
    };
    Some(CommittedOffset {
        offset,
        leader_epoch,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_log::LogConfig;

    #[test]
    fn commits_survive_reopen_and_latest_wins() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let committed = |offset, metadata: Option<&str>| CommittedOffset {
            offset,
            leader_epoch: 0,
            metadata: metadata.map(str::to_owned),
        };
        {
            let logs = LogManager::open(dir.path(), LogConfig::default())?;
            let store = OffsetStore::open(&logs, 100 << 20)?;
            store.commit("g", &[("t".into(), 0, committed(5, Some("meta")))])?;
            store.commit(
                "g",
                &[
                    ("t".into(), 0, committed(7, None)),
                    ("t".into(), 1, committed(3, Some(""))),
                ],
            )?;
            store.commit("other", &[("t".into(), 0, committed(1, None))])?;
            logs.shutdown()?;
        }
        let logs = LogManager::open(dir.path(), LogConfig::default())?;
        let store = OffsetStore::open(&logs, 100 << 20)?;
        assert_eq!(store.fetch("g", "t", 0), Some(committed(7, None)));
        assert_eq!(store.fetch("g", "t", 1), Some(committed(3, Some(""))));
        assert_eq!(store.fetch("other", "t", 0), Some(committed(1, None)));
        assert_eq!(store.fetch("g", "t", 2), None);
        assert_eq!(store.group("g").len(), 2);

        // Nothing is recent enough to survive a zero retention, but a group
        // with members keeps its offsets.
        let expired = store.expire(std::time::Duration::ZERO, |group| group == "other")?;
        assert_eq!(expired, vec!["g".to_owned()]);
        assert_eq!(store.fetch("g", "t", 0), None);
        assert_eq!(store.fetch("other", "t", 0), Some(committed(1, None)));
        assert!(
            store
                .expire(std::time::Duration::from_secs(3600), |_| false)?
                .is_empty()
        );
        logs.shutdown()?;

        let logs = LogManager::open(dir.path(), LogConfig::default())?;
        let store = OffsetStore::open(&logs, 100 << 20)?;
        assert_eq!(store.fetch("g", "t", 0), None, "expiry survives a restart");
        assert_eq!(store.fetch("other", "t", 0), Some(committed(1, None)));
        logs.shutdown()?;
        Ok(())
    }

    /// A transaction's offsets in an offsets partition's log (a new
    /// leader's load): committed at its commit marker, dropped at its
    /// abort marker, still pending with no marker yet; other groups'
    /// records left to their own partitions' leaders.
    #[test]
    fn transactional_offsets_replay_by_their_markers() -> Result<(), CoreError> {
        use crate::transactions::{Marker, Outcome, encode_marker};
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = LogManager::open(dir.path(), LogConfig::default())?;
        let log = logs.get_or_create("offsets-7", None)?;
        let at = |offset| CommittedOffset {
            offset,
            leader_epoch: 0,
            metadata: None,
        };
        let pending = |group: &str, producer_id, offset| -> Result<(), CoreError> {
            let key = encode_pending_key(group, "t", 0, producer_id);
            let value = encode_value(&at(offset));
            let mut batch = crate::replay::batch_of(&[(Some(&key[..]), Some(&value[..]))], "test")?;
            log.append(&mut batch, crate::LOCAL_EPOCH)?;
            Ok(())
        };
        let marker = |producer_id, outcome| -> Result<(), CoreError> {
            let marker = Marker {
                outcome,
                coordinator_epoch: 0,
            };
            let mut batch = encode_marker(producer_id, 0, marker, 1)?;
            log.append(&mut batch, crate::LOCAL_EPOCH)?;
            Ok(())
        };
        pending("g", 5, 10)?;
        pending("other", 5, 11)?;
        pending("g", 6, 99)?;
        pending("g", 7, 20)?;
        marker(5, Outcome::Commit)?;
        marker(6, Outcome::Abort)?;
        let (mut groups, mut times, mut open) = (HashMap::new(), HashMap::new(), Pending::new());
        replay(
            &log,
            |group| group != "other",
            &mut groups,
            &mut times,
            &mut open,
        )?;
        assert_eq!(
            groups.get("g").and_then(|g| g.get(&("t".to_owned(), 0))),
            Some(&at(10)),
            "committed by 5's marker; 6's aborted, 7's still open"
        );
        assert!(!groups.contains_key("other"), "another partition's group");
        let left: Vec<(i64, String, i32, CommittedOffset)> = open
            .into_iter()
            .flat_map(|(producer, commits)| {
                commits
                    .into_iter()
                    .map(move |p| (producer, p.group, p.partition, p.committed))
            })
            .collect();
        assert_eq!(left, vec![(7, "g".to_owned(), 0, at(20))]);
        logs.shutdown()?;
        Ok(())
    }
}
