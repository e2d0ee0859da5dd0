//! A replicated internal topic whose partitions' leaders coordinate the
//! keys hashed to them, as Kafka's `__consumer_offsets` (groups) and
//! `__transaction_state` (transactional ids): created when a client first
//! looks for a coordinator, a key's partition is `abs(java_hash(key)) %
//! partitions`, and a node leading a partition loads its keys from the
//! log before it answers for them (in each new leader epoch) and forgets
//! them when it stops leading. Records are written with acks=all.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use sluice_log::Log;
use sluice_types::PartitionId;

use crate::CoreError;
use crate::partition::Partition;
use crate::topic_config::TopicConfig;
use crate::topics::Topics;

/// Kafka's partition of a key (a group, a transactional id):
/// `Utils.abs(key.hashCode()) % partitions`, Java's string hash over
/// UTF-16 code units.
pub(crate) fn partition_for(key: &str, partitions: u32) -> u32 {
    let hash = key.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive as u32 % partitions.max(1)
}

/// Who coordinates a key's partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lead {
    /// This node leads it (its keys may still have to be loaded).
    Here,
    /// Another node leads it.
    Node(i32),
    /// None: the topic does not exist yet, or the partition has no leader.
    Unavailable,
}

/// Why a record was not written.
#[derive(Debug)]
pub(crate) enum Unwritten {
    /// This node does not (or no longer) lead the key's partition, or its
    /// replicas did not answer in time: the client looks for the
    /// coordinator again (the node that leads now, when known).
    Moved(Option<i32>),
    Failed(CoreError),
}

impl From<CoreError> for Unwritten {
    fn from(error: CoreError) -> Unwritten {
        Unwritten::Failed(error)
    }
}

#[derive(Debug)]
pub(crate) struct CoordinatedTopic {
    topics: Arc<Topics>,
    name: &'static str,
    /// Partitions the topic is created with.
    partitions: u32,
    /// Replicas of each partition: the topic waits until that many nodes
    /// are registered and not fenced.
    replication: u16,
    segment_bytes: u64,
    /// The partitions whose keys are in memory, with the leader epoch they
    /// were loaded in.
    loaded: Mutex<BTreeMap<u32, i32>>,
    /// A creation of the topic is under way.
    creating: AtomicBool,
}

impl CoordinatedTopic {
    pub(crate) fn new(
        topics: Arc<Topics>,
        name: &'static str,
        (partitions, replication): (u32, u16),
        segment_bytes: u64,
    ) -> CoordinatedTopic {
        CoordinatedTopic {
            topics,
            name,
            partitions: partitions.max(1),
            replication: replication.max(1),
            segment_bytes,
            loaded: Mutex::new(BTreeMap::new()),
            creating: AtomicBool::new(false),
        }
    }

    fn loaded(&self) -> MutexGuard<'_, BTreeMap<u32, i32>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The topic's partitions once it exists (the setting is read at
    /// creation only).
    pub(crate) fn partition_count(&self) -> u32 {
        self.topics
            .get(self.name)
            .map_or(self.partitions, |t| t.partition_count() as u32)
            .max(1)
    }

    /// The partition of `key`.
    pub(crate) fn index_of(&self, key: &str) -> u32 {
        partition_for(key, self.partition_count())
    }

    /// Whether `key` belongs to partition `index`, by the partition count
    /// now.
    pub(crate) fn holds_key(&self, index: u32) -> impl Fn(&str) -> bool + use<> {
        let partitions = self.partition_count();
        move |key: &str| partition_for(key, partitions) == index
    }

    /// The node leading partition `index`, when it has one.
    pub(crate) fn leader_of(&self, index: u32) -> Option<i32> {
        self.topics
            .get(self.name)
            .and_then(|t| t.leader(PartitionId::from(index as i32)))
            .map(|(node, _)| node)
            .filter(|node| *node >= 0)
    }

    /// Who coordinates `key`, as far as the metadata says (not loading
    /// anything).
    pub(crate) fn lead(&self, key: &str) -> Lead {
        let index = self.index_of(key);
        match self.leader_of(index) {
            Some(node) if node == self.topics.metadata().node_id() => Lead::Here,
            Some(node) => Lead::Node(node),
            None => Lead::Unavailable,
        }
    }

    /// Whether the caller should create the topic now (with
    /// [`CoordinatedTopic::prepare`], off the request path): it does not
    /// exist and no creation is under way.
    pub(crate) fn needs_topic(&self) -> bool {
        self.topics.get(self.name).is_none() && !self.creating.swap(true, Ordering::AcqRel)
    }

    /// Creates the topic if it does not exist yet. Blocking (up to the
    /// quorum's time limit).
    ///
    /// # Errors
    /// [`CoreError::InvalidReplication`] while fewer nodes are live than
    /// it has replicas, the creation's failure ([`CoreError::Quorum`]).
    pub(crate) fn prepare(&self) -> Result<(), CoreError> {
        let created = self.create_topic();
        self.creating.store(false, Ordering::Release);
        created
    }

    fn create_topic(&self) -> Result<(), CoreError> {
        if self.topics.get(self.name).is_some() {
            return Ok(());
        }
        let live = self.topics.metadata().live_broker_count();
        if live < usize::from(self.replication) {
            // As Kafka: not created with fewer replicas than asked for;
            // clients are told COORDINATOR_NOT_AVAILABLE meanwhile.
            return Err(CoreError::InvalidReplication {
                topic: self.name.to_owned(),
                replication: usize::from(self.replication),
                nodes: live,
            });
        }
        let mut overrides = BTreeMap::new();
        overrides.insert("cleanup.policy".to_owned(), "compact".to_owned());
        overrides.insert("segment.bytes".to_owned(), self.segment_bytes.to_string());
        let config = TopicConfig::new(overrides).map_err(|e| CoreError::Internal {
            reason: format!("the config of {}: {e}", self.name),
        })?;
        match self
            .topics
            .create_internal(self.name, self.partitions, self.replication, config)
        {
            Ok(_) | Err(CoreError::TopicExists { .. }) => {
                tracing::info!(
                    topic = self.name,
                    partitions = self.partitions,
                    replication = self.replication,
                    "created an internal coordinator topic"
                );
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Brings the keys of partition `index` in memory in line with its
    /// leadership: `load`ed from its log (after `forget`) when this node
    /// leads it in an epoch not loaded yet, `forget`-ed when it does not
    /// lead it. Returns the partition and its leader epoch when this node
    /// leads it.
    ///
    /// # Errors
    /// `load`'s errors (reading the log); the partition stays unloaded.
    pub(crate) fn refresh(
        &self,
        index: u32,
        load: impl FnOnce(&Log) -> Result<(), CoreError>,
        forget: impl FnOnce(),
    ) -> Result<Option<(Arc<Partition>, i32)>, CoreError> {
        let led = self
            .topics
            .get(self.name)
            .and_then(|t| t.partition(PartitionId::from(index as i32)))
            .filter(|p| p.is_leader());
        let mut loaded = self.loaded();
        match led {
            Some(partition) => {
                let epoch = partition.leader_epoch().get();
                if loaded.get(&index) != Some(&epoch) {
                    loaded.remove(&index);
                    forget();
                    load(partition.log())?;
                    loaded.insert(index, epoch);
                    tracing::info!(
                        topic = self.name,
                        partition = index,
                        leader_epoch = epoch,
                        "loaded the keys this node now coordinates"
                    );
                }
                Ok(Some((partition, epoch)))
            }
            None => {
                if loaded.remove(&index).is_some() {
                    forget();
                    tracing::info!(
                        topic = self.name,
                        partition = index,
                        "no longer coordinating the keys of this partition"
                    );
                }
                Ok(None)
            }
        }
    }

    /// The leader epoch partition `index`'s keys are loaded in, if they
    /// are.
    pub(crate) fn loaded_epoch(&self, index: u32) -> Option<i32> {
        self.loaded().get(&index).copied()
    }

    /// Partition `index` while this node leads it in the epoch its keys
    /// were loaded in.
    pub(crate) fn loaded_partition(&self, index: u32) -> Option<Arc<Partition>> {
        let partition = self
            .topics
            .get(self.name)
            .and_then(|t| t.partition(PartitionId::from(index as i32)))
            .filter(|p| p.is_leader())?;
        (self.loaded_epoch(index) == Some(partition.leader_epoch().get())).then_some(partition)
    }

    /// Appends `batch` to `partition`, acknowledged once every in-sync
    /// replica has it. Blocking.
    ///
    /// # Errors
    /// [`Unwritten::Moved`] when this node no longer leads it or its
    /// replicas are slow to answer (as Kafka's coordinator: another
    /// coordinator, or none for now; the client looks for it again);
    /// [`Unwritten::Failed`] with the log's errors.
    pub(crate) fn append(
        &self,
        partition: &Partition,
        batch: &mut BytesMut,
    ) -> Result<(), Unwritten> {
        let topic = self
            .topics
            .get(self.name)
            .ok_or_else(|| CoreError::UnknownTopic {
                topic: self.name.to_owned(),
            })?;
        let written = topic
            .append_start(partition.id(), batch)
            .and_then(|appended| appended.in_sync().wait());
        match written {
            Ok(_) => Ok(()),
            Err(CoreError::NotLeader { leader, .. }) => Err(Unwritten::Moved(leader)),
            Err(
                CoreError::ReplicationTimedOut { .. }
                | CoreError::UnknownPartition { .. }
                | CoreError::Quorum { .. },
            ) => Err(Unwritten::Moved(None)),
            Err(other) => Err(Unwritten::Failed(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_partitions_as_kafka_does() {
        // Java's "test".hashCode() is 3556498; "my-group"'s is negative
        // (-1906497762), so its absolute value is taken.
        assert_eq!(partition_for("test", 50), 48);
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("console-consumer-12345", 50), 6);
        assert_eq!(partition_for("anything", 1), 0);
    }
}
