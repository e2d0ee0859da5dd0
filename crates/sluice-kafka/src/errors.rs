//! Core and log errors as Kafka error codes, in one place.

use kafka_protocol::ResponseError;
use sluice_core::consumer_groups::ConsumerGroupError;
use sluice_core::storage::LogError;
use sluice_core::transactions::TxnError;
use sluice_core::{CoreError, GroupError};

/// The Kafka error for a core error.
pub(crate) fn code(err: &CoreError) -> ResponseError {
    match err {
        CoreError::UnknownTopic { .. } | CoreError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        CoreError::NotLeader { .. } => ResponseError::NotLeaderOrFollower,
        CoreError::FencedFollower { .. } => ResponseError::FencedLeaderEpoch,
        CoreError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
        CoreError::NotCoordinator {
            coordinator: Some(_),
            ..
        } => ResponseError::NotCoordinator,
        CoreError::NotCoordinator {
            coordinator: None, ..
        } => ResponseError::CoordinatorNotAvailable,
        CoreError::Quorum { .. } | CoreError::ReplicationTimedOut { .. } => {
            ResponseError::RequestTimedOut
        }
        CoreError::InvalidReplication { .. } => ResponseError::InvalidReplicationFactor,
        CoreError::TopicExists { .. } => ResponseError::TopicAlreadyExists,
        CoreError::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
        CoreError::InvalidPartitions { .. } => ResponseError::InvalidPartitions,
        CoreError::InvalidReplicaAssignment { .. } => ResponseError::InvalidReplicaAssignment,
        CoreError::NoReassignmentInProgress { .. } => ResponseError::NoReassignmentInProgress,
        CoreError::TopicLimit { .. } => ResponseError::PolicyViolation,
        CoreError::InvalidConfig { .. } => ResponseError::InvalidConfig,
        CoreError::UnknownUser { .. } => ResponseError::ResourceNotFound,
        CoreError::UserExists { .. } => ResponseError::DuplicateResource,
        // Retriable: the admin client sends it again.
        CoreError::GroupConfigChanged { .. } => ResponseError::RequestTimedOut,
        CoreError::InvalidTimestamp { .. } => ResponseError::InvalidTimestamp,
        CoreError::Log(log) => log_code(log),
        CoreError::DataDirLocked { .. }
        | CoreError::DataDir { .. }
        | CoreError::TopicRecord { .. } => ResponseError::KafkaStorageError,
        CoreError::Internal { .. } | CoreError::QueueExists { .. } => {
            ResponseError::UnknownServerError
        }
        CoreError::UndecodableBatch { .. } => ResponseError::CorruptMessage,
        CoreError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        CoreError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        CoreError::CoordinatorFenced { .. } => ResponseError::TransactionCoordinatorFenced,
        CoreError::TransactionOvertaken { .. } => ResponseError::InvalidTxnState,
        CoreError::UnknownProducerId { .. } => ResponseError::UnknownProducerId,
        CoreError::InvalidRecord { .. } => ResponseError::InvalidRecord,
    }
}

/// The Kafka error for a refusal of the transaction coordinator;
/// `fenced` when the request's version knows PRODUCER_FENCED (older ones
/// hear INVALID_PRODUCER_EPOCH).
pub(crate) fn txn_code(err: &TxnError, fenced: bool) -> ResponseError {
    match err {
        TxnError::Fenced { .. } if fenced => ResponseError::ProducerFenced,
        TxnError::Fenced { .. } => ResponseError::InvalidProducerEpoch,
        TxnError::UnknownProducer { .. } => ResponseError::InvalidProducerIdMapping,
        TxnError::InvalidState { .. } => ResponseError::InvalidTxnState,
        TxnError::Concurrent { .. } => ResponseError::ConcurrentTransactions,
        TxnError::InvalidTimeout { .. } => ResponseError::InvalidTransactionTimeout,
        TxnError::NotCoordinator { .. } => ResponseError::NotCoordinator,
        TxnError::Core(core) => code(core),
    }
}

pub(crate) fn group_code(err: GroupError) -> ResponseError {
    match err {
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
    }
}

/// The code of a refused heartbeat, commit or describe of a consumer
/// group of the new protocol (KIP-848).
pub(crate) fn consumer_group_code(err: &ConsumerGroupError) -> ResponseError {
    match err {
        ConsumerGroupError::InvalidRequest(_) => ResponseError::InvalidRequest,
        ConsumerGroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        ConsumerGroupError::FencedMemberEpoch => ResponseError::FencedMemberEpoch,
        ConsumerGroupError::StaleMemberEpoch => ResponseError::StaleMemberEpoch,
        ConsumerGroupError::UnreleasedInstanceId(_) => ResponseError::UnreleasedInstanceId,
        ConsumerGroupError::FencedInstanceId(_) => ResponseError::FencedInstanceId,
        ConsumerGroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        ConsumerGroupError::UnsupportedAssignor(_) => ResponseError::UnsupportedAssignor,
        ConsumerGroupError::InvalidRegularExpression(_) => ResponseError::InvalidRegularExpression,
        ConsumerGroupError::NotConsumerGroup(_) => ResponseError::GroupIdNotFound,
        ConsumerGroupError::UnsupportedVersion => ResponseError::UnsupportedVersion,
        ConsumerGroupError::InconsistentGroupProtocol(_) => {
            ResponseError::InconsistentGroupProtocol
        }
        ConsumerGroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        ConsumerGroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
    }
}

pub(crate) fn log_code(err: &LogError) -> ResponseError {
    match err {
        LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::InvalidBatch { .. } => ResponseError::CorruptMessage,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::Closed => ResponseError::NotLeaderOrFollower,
        LogError::Io { .. }
        | LogError::Corrupt { .. }
        | LogError::Unrecoverable { .. }
        | LogError::Poisoned
        | LogError::Truncated { .. } => ResponseError::KafkaStorageError,
        LogError::InvalidName { .. } => ResponseError::InvalidTopicException,
    }
}
