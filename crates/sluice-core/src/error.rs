use std::io;
use std::path::PathBuf;

/// Errors of the broker core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(
        "data directory {} is in use by another Sluice process (lock file {})",
        .path.display(),
        .lock_file.display()
    )]
    DataDirLocked { path: PathBuf, lock_file: PathBuf },
    #[error("cannot use data directory {}", .path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Log(#[from] sluice_log::LogError),
    #[error("topic {topic:?} does not exist")]
    UnknownTopic { topic: String },
    #[error("user {name:?} already exists")]
    UserExists { name: String },
    #[error("user {name:?} (or that credential of theirs) does not exist")]
    UnknownUser { name: String },
    #[error("partition {partition} of topic {topic:?} does not exist")]
    UnknownPartition {
        topic: String,
        partition: sluice_types::PartitionId,
    },
    /// The partition exists but this node does not lead it.
    #[error(
        "this node does not lead partition {partition} of topic {topic:?} (its leader is {leader:?})"
    )]
    NotLeader {
        topic: String,
        partition: sluice_types::PartitionId,
        leader: Option<i32>,
    },
    /// Fewer replicas in sync than a write needs (a quorum queue's
    /// majority, a topic's `min.insync.replicas`).
    #[error("only {in_sync} replicas of {topic:?} are in sync; {needed} are needed")]
    NotEnoughReplicas {
        topic: String,
        in_sync: usize,
        needed: usize,
    },
    /// A replica fetcher's answer came from a leader, or in an epoch, this
    /// node no longer follows the partition under: it is not applied.
    #[error("partition {partition} of topic {topic:?} no longer follows that leader in that epoch")]
    FencedFollower {
        topic: String,
        partition: sluice_types::PartitionId,
    },
    /// Another node coordinates the group (the leader of its offsets
    /// partition), or none does yet (`coordinator` is `None`).
    #[error("this node does not coordinate group {group:?} (its coordinator is {coordinator:?})")]
    NotCoordinator {
        group: String,
        coordinator: Option<i32>,
    },
    /// More replicas than nodes, or none.
    #[error(
        "topic {topic:?}: a replication factor of {replication} needs as many nodes; the cluster has {nodes}"
    )]
    InvalidReplication {
        topic: String,
        replication: usize,
        nodes: usize,
    },
    /// acks=all: the in-sync replicas did not all take the records in time.
    #[error("the in-sync replicas did not take the records within {waited_ms} ms")]
    ReplicationTimedOut { waited_ms: u64 },
    /// The metadata quorum did not commit a change.
    #[error("the metadata quorum did not answer: {reason}")]
    Quorum { reason: String },
    #[error("topic {topic:?} already exists")]
    TopicExists { topic: String },
    /// Another node declared a queue of that name first (the metadata
    /// keeps its declaration).
    #[error("queue '{name}' in vhost '{vhost}' was declared on another node first")]
    QueueExists { vhost: String, name: String },
    #[error("topic name {topic:?} is not valid: use 1 to 249 of letters, digits, '.', '_' and '-'")]
    InvalidTopicName { topic: String },
    #[error("cannot create topic {topic:?}: topic limit ({limit}) reached (limits.max_topics)")]
    TopicLimit { topic: String, limit: u32 },
    #[error("invalid partition count for topic {topic:?}: {reason}")]
    InvalidPartitions { topic: String, reason: String },
    /// A partition's replicas cannot move as asked (Kafka's
    /// INVALID_REPLICA_ASSIGNMENT).
    #[error("topic {topic:?}: {reason}")]
    InvalidReplicaAssignment { topic: String, reason: String },
    /// A cancel for a partition that is not moving (Kafka's
    /// NO_REASSIGNMENT_IN_PROGRESS).
    #[error("topic {topic:?} partition {partition}: no reassignment in progress")]
    NoReassignmentInProgress { topic: String, partition: u32 },
    #[error("config {key} {reason}")]
    InvalidConfig { key: String, reason: String },
    /// A group's settings changed between the read and the write of an
    /// alteration (another node's, or a concurrent one): read again.
    #[error("the configs of group {group:?} changed meanwhile")]
    GroupConfigChanged { group: String },
    #[error("producer {producer_id}: sequence {found} where {expected} was expected")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        found: i32,
    },
    #[error(
        "producer {producer_id} is unknown to this partition; sequence {found} where 0 was expected"
    )]
    UnknownProducerId { producer_id: i64, found: i32 },
    /// A batch a client may not write (Kafka's INVALID_RECORD).
    #[error("{reason}")]
    InvalidRecord { reason: String },
    #[error("producer {producer_id}: epoch {found} is older than the current {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        current: i16,
        found: i16,
    },
    /// A producer's first transactional batch here whose verification
    /// with its coordinator was overtaken by a marker of the producer (the
    /// transaction it was verified for has ended: KIP-890's guard).
    #[error("producer {producer_id}: its transaction ended while its batch was verified")]
    TransactionOvertaken { producer_id: i64 },
    /// A transaction marker from a coordinator older than the one that
    /// last wrote a marker for this producer here (a coordinator that
    /// lost its partition of `__transaction_state` and does not know it).
    #[error(
        "a marker of producer {producer_id} from coordinator epoch {found}: this partition has seen epoch {current}"
    )]
    CoordinatorFenced {
        producer_id: i64,
        current: i32,
        found: i32,
    },
    #[error(
        "timestamp {timestamp} of a record is out of range: it must be within [{earliest}, {latest}]"
    )]
    InvalidTimestamp {
        timestamp: i64,
        earliest: i64,
        latest: i64,
    },
    #[error("cannot decode the batch at offset {offset}: {reason}")]
    UndecodableBatch {
        offset: sluice_types::Offset,
        reason: String,
    },
    #[error("internal error: {reason}")]
    Internal { reason: String },
    #[error("topic record {} is damaged: {reason}", .path.display())]
    TopicRecord { path: PathBuf, reason: String },
}
