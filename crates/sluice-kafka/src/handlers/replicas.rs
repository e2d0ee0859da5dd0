//! What Kafka's tools and UIs ask about replicas: ElectLeaders (preferred
//! or unclean, through the controller), DescribeLogDirs (this node's one
//! log directory and the partitions it holds) and DescribeProducers (the
//! idempotent producers of partitions this node leads), and moving
//! replicas: AlterPartitionReassignments and ListPartitionReassignments.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    DescribeLogDirsRequest, DescribeLogDirsResponse, DescribeProducersRequest,
    DescribeProducersResponse, ElectLeadersRequest, ElectLeadersResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::{Broker, CoreError, Election};

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, blocking};
use crate::errors;

/// `election_type` 1 (KIP-460); 0 is preferred.
const UNCLEAN: i8 = 1;

pub(crate) async fn elect_leaders(
    context: &Context,
    request: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    if !context.allowed_on_cluster(Operation::Alter) {
        return ElectLeadersResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let broker = Arc::clone(&context.broker);
    let unclean = version >= 1 && request.election_type == UNCLEAN;
    let results = blocking(move || {
        // Null asks for every partition; then, as Kafka, only the
        // partitions an election was tried for are answered.
        let every = request.topic_partitions.is_none();
        let asked: Vec<(TopicName, Vec<i32>)> = match request.topic_partitions {
            Some(topics) => topics
                .into_iter()
                .map(|t| (t.topic, t.partitions))
                .collect(),
            None => every_partition(&broker),
        };
        asked
            .into_iter()
            .map(|(topic, partitions)| {
                let results: Vec<PartitionResult> = partitions
                    .into_iter()
                    .map(|partition| {
                        let outcome = u32::try_from(partition)
                            .map_err(|_| CoreError::UnknownPartition {
                                topic: topic.to_string(),
                                partition: sluice_types::PartitionId::from(partition),
                            })
                            .and_then(|index| broker.topics().elect(&topic, index, unclean));
                        let (code, message) = match outcome {
                            Ok(Election::Elected(_)) => (0, None),
                            Ok(Election::NotNeeded) => {
                                (ResponseError::ElectionNotNeeded.code(), None)
                            }
                            Ok(Election::NotAvailable) if unclean => {
                                (ResponseError::EligibleLeadersNotAvailable.code(), None)
                            }
                            Ok(Election::NotAvailable) => {
                                (ResponseError::PreferredLeaderNotAvailable.code(), None)
                            }
                            Err(error) => (errors::code(&error).code(), Some(error.to_string())),
                        };
                        PartitionResult::default()
                            .with_partition_id(partition)
                            .with_error_code(code)
                            .with_error_message(message.map(StrBytes::from_string))
                    })
                    .filter(|result| {
                        !every || result.error_code != ResponseError::ElectionNotNeeded.code()
                    })
                    .collect();
                ReplicaElectionResult::default()
                    .with_topic(topic)
                    .with_partition_result(results)
            })
            .filter(|result| !result.partition_result.is_empty())
            .collect()
    })
    .await
    .unwrap_or_default();
    ElectLeadersResponse::default().with_replica_election_results(results)
}

/// Every partition of every topic.
fn every_partition(broker: &Broker) -> Vec<(TopicName, Vec<i32>)> {
    broker
        .topics()
        .names()
        .into_iter()
        .filter_map(|name| {
            let topic = broker.topics().get(&name)?;
            let count = topic.partition_count() as i32;
            Some((TopicName(StrBytes::from_string(name)), (0..count).collect()))
        })
        .collect()
}

pub(crate) async fn describe_log_dirs(
    context: &Context,
    request: DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    if !context.allowed_on_cluster(Operation::Describe) {
        // v1-2 have no error field: no directories, as Kafka answers.
        return DescribeLogDirsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let broker = Arc::clone(&context.broker);
    let result = blocking(move || {
        let asked: Vec<(TopicName, Option<Vec<i32>>)> = match request.topics {
            Some(topics) => topics
                .into_iter()
                .map(|t| (t.topic, Some(t.partitions)))
                .collect(),
            None => broker
                .topics()
                .names()
                .into_iter()
                .map(|name| (TopicName(StrBytes::from_string(name)), None))
                .collect(),
        };
        let topics: Vec<DescribeLogDirsTopic> = asked
            .into_iter()
            .filter_map(|(name, partitions)| {
                let topic = broker.topics().get(&name)?;
                // Only the replicas this node holds; others are left out.
                let held: Vec<DescribeLogDirsPartition> = topic
                    .partitions()
                    .into_iter()
                    .filter(|p| {
                        partitions
                            .as_ref()
                            .is_none_or(|wanted| wanted.contains(&p.id().get()))
                    })
                    .map(|p| {
                        let lag = (p.high_watermark().get() - p.log_end().get()).max(0);
                        DescribeLogDirsPartition::default()
                            .with_partition_index(p.id().get())
                            .with_partition_size(i64::try_from(p.size_bytes()).unwrap_or(i64::MAX))
                            .with_offset_lag(lag)
                    })
                    .collect();
                (!held.is_empty()).then(|| {
                    DescribeLogDirsTopic::default()
                        .with_name(name)
                        .with_partitions(held)
                })
            })
            .collect();
        let (total, usable) = broker.disk_space().map_or((-1, -1), |(total, free)| {
            (
                i64::try_from(total).unwrap_or(i64::MAX),
                i64::try_from(free).unwrap_or(i64::MAX),
            )
        });
        let dir = broker.data_dir().join("logs");
        let mut result = DescribeLogDirsResult::default()
            .with_log_dir(StrBytes::from_string(dir.display().to_string()))
            .with_topics(topics);
        if version >= 4 {
            result = result.with_total_bytes(total).with_usable_bytes(usable);
        }
        result
    })
    .await;
    match result {
        Some(result) => DescribeLogDirsResponse::default().with_results(vec![result]),
        None => DescribeLogDirsResponse::default().with_error_code(if version >= 3 {
            ResponseError::UnknownServerError.code()
        } else {
            0
        }),
    }
}

pub(crate) fn describe_producers(
    context: &Context,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|asked| {
            let topic = context.broker.topics().get(&asked.name);
            let readable = context.allowed(Operation::Read, ResourceType::Topic, &asked.name);
            let partitions = asked
                .partition_indexes
                .iter()
                .map(|index| {
                    let answer = PartitionResponse::default().with_partition_index(*index);
                    if !readable {
                        return answer
                            .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                    }
                    match super::partition_of(topic.as_ref(), *index) {
                        Ok(partition) => answer.with_active_producers(
                            partition
                                .producers()
                                .into_iter()
                                .map(|(id, epoch, last_sequence)| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(id))
                                        .with_producer_epoch(i32::from(epoch))
                                        .with_last_sequence(last_sequence)
                                        .with_last_timestamp(-1)
                                        .with_coordinator_epoch(-1)
                                        .with_current_txn_start_offset(-1)
                                })
                                .collect(),
                        ),
                        Err(error) => answer.with_error_code(error.code()),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(asked.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

/// AlterPartitionReassignments (KIP-455): each partition starts moving
/// to the replicas asked for, or its move is cancelled (null replicas);
/// the controller finishes a move once the new replicas are in sync.
pub(crate) async fn alter_partition_reassignments(
    context: &Context,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    if !context.allowed_on_cluster(Operation::Alter) {
        return AlterPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let broker = Arc::clone(&context.broker);
    let responses = blocking(move || {
        request
            .topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|asked| {
                        let target = asked
                            .replicas
                            .map(|replicas| replicas.into_iter().map(|b| b.0).collect());
                        let outcome = u32::try_from(asked.partition_index)
                            .map_err(|_| CoreError::UnknownPartition {
                                topic: topic.name.to_string(),
                                partition: sluice_types::PartitionId::from(asked.partition_index),
                            })
                            .and_then(|index| broker.topics().reassign(&topic.name, index, target));
                        let (code, message) = match outcome {
                            Ok(()) => (0, None),
                            Err(error) => (errors::code(&error).code(), Some(error.to_string())),
                        };
                        ReassignablePartitionResponse::default()
                            .with_partition_index(asked.partition_index)
                            .with_error_code(code)
                            .with_error_message(message.map(StrBytes::from_string))
                    })
                    .collect();
                ReassignableTopicResponse::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    AlterPartitionReassignmentsResponse::default().with_responses(responses)
}

/// ListPartitionReassignments: the moves under way, of the partitions
/// asked for (null: of every partition).
pub(crate) fn list_partition_reassignments(
    context: &Context,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    if !context.allowed_on_cluster(Operation::Describe) {
        return ListPartitionReassignmentsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let asked = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect::<std::collections::BTreeMap<_, _>>()
    });
    let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
    for moving in context.broker.topics().reassignments() {
        let partition = i32::try_from(moving.partition).unwrap_or(i32::MAX);
        let wanted = asked.as_ref().is_none_or(|asked| {
            asked
                .get(&moving.topic)
                .is_some_and(|partitions| partitions.contains(&partition))
        });
        if !wanted {
            continue;
        }
        let ids = |nodes: Vec<i32>| nodes.into_iter().map(BrokerId).collect();
        let ongoing = OngoingPartitionReassignment::default()
            .with_partition_index(partition)
            .with_replicas(ids(moving.replicas))
            .with_adding_replicas(ids(moving.adding))
            .with_removing_replicas(ids(moving.removing));
        match topics.last_mut() {
            Some(last) if last.name.as_str() == moving.topic => last.partitions.push(ongoing),
            _ => topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(StrBytes::from_string(moving.topic)))
                    .with_partitions(vec![ongoing]),
            ),
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
