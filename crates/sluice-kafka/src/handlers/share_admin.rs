//! DescribeShareGroupOffsets, AlterShareGroupOffsets and
//! DeleteShareGroupOffsets (KIP-932's admin side, what
//! `kafka-share-groups.sh` uses), answered by the group's coordinator over
//! the stored share-partition state: the start offset of each partition, set
//! for an empty group, or deleted so that it starts anew at
//! `share.auto.offset.reset`.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_share_group_offsets_response::{
    AlterShareGroupOffsetsResponsePartition, AlterShareGroupOffsetsResponseTopic,
};
use kafka_protocol::messages::delete_share_group_offsets_response::DeleteShareGroupOffsetsResponseTopic;
use kafka_protocol::messages::describe_share_group_offsets_response::{
    DescribeShareGroupOffsetsResponseGroup, DescribeShareGroupOffsetsResponsePartition,
    DescribeShareGroupOffsetsResponseTopic,
};
use kafka_protocol::messages::{
    AlterShareGroupOffsetsRequest, AlterShareGroupOffsetsResponse, DeleteShareGroupOffsetsRequest,
    DeleteShareGroupOffsetsResponse, DescribeShareGroupOffsetsRequest,
    DescribeShareGroupOffsetsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::ShareAdminError;

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, blocking};
use crate::errors;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn admin_code(error: &ShareAdminError) -> ResponseError {
    match error {
        ShareAdminError::NonEmpty => ResponseError::NonEmptyGroup,
        ShareAdminError::NotFound(_) => ResponseError::GroupIdNotFound,
        ShareAdminError::Core(error) => errors::code(error),
    }
}

fn cancelled() -> ShareAdminError {
    ShareAdminError::Core(sluice_core::CoreError::Internal {
        reason: "the request's work was cancelled".to_owned(),
    })
}

/// A topic's id by name, if it exists.
fn topic_id(context: &Context, name: &str) -> Option<uuid::Uuid> {
    context
        .broker
        .topics()
        .get(name)
        .map(|topic| uuid::Uuid::from_bytes(topic.id()))
}

pub(crate) async fn describe_offsets(
    context: &Context,
    request: DescribeShareGroupOffsetsRequest,
) -> DescribeShareGroupOffsetsResponse {
    let mut groups = Vec::new();
    for asked in request.groups {
        let group_id = asked.group_id.to_string();
        let group = DescribeShareGroupOffsetsResponseGroup::default().with_group_id(asked.group_id);
        if !context.allowed(Operation::Describe, ResourceType::Group, &group_id) {
            groups.push(group.with_error_code(ResponseError::GroupAuthorizationFailed.code()));
            continue;
        }
        if !super::coordinates(context, &group_id) {
            groups.push(group.with_error_code(ResponseError::NotCoordinator.code()));
            continue;
        }
        let broker = Arc::clone(&context.broker);
        let id = group_id.clone();
        let stored = blocking(move || broker.share_start_offsets(&id))
            .await
            .unwrap_or_else(|| Err(cancelled()));
        let stored = match stored {
            Ok(stored) => stored,
            Err(error) => {
                groups.push(
                    group
                        .with_error_code(admin_code(&error).code())
                        .with_error_message(Some(text(error.to_string()))),
                );
                continue;
            }
        };
        let mut starts: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for (topic, partition, start) in stored {
            starts.entry(topic).or_default().insert(partition, start);
        }
        // Null: every partition with a state; else the ones named, -1 for
        // a partition with none yet (as Kafka answers).
        // Topics the client may not describe are left out of the null
        // listing, refused when named.
        let describable =
            |topic: &str| context.allowed(Operation::Describe, ResourceType::Topic, topic);
        let wanted: Vec<(String, Vec<i32>)> = match asked.topics {
            None => starts
                .iter()
                .filter(|(topic, _)| describable(topic))
                .map(|(topic, partitions)| (topic.clone(), partitions.keys().copied().collect()))
                .collect(),
            Some(topics) => topics
                .into_iter()
                .map(|t| (t.topic_name.to_string(), t.partitions))
                .collect(),
        };
        let topics = wanted
            .into_iter()
            .map(|(topic, partitions)| {
                let id = topic_id(context, &topic);
                let allowed = describable(&topic);
                let partitions = partitions
                    .into_iter()
                    .map(|index| {
                        let answer = DescribeShareGroupOffsetsResponsePartition::default()
                            .with_partition_index(index)
                            .with_leader_epoch(-1);
                        if !allowed {
                            return answer
                                .with_start_offset(-1)
                                .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                        }
                        match (id, starts.get(&topic).and_then(|p| p.get(&index))) {
                            (None, _) => answer
                                .with_start_offset(-1)
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                            (Some(_), start) => {
                                answer.with_start_offset(start.copied().unwrap_or(-1))
                            }
                        }
                    })
                    .collect();
                DescribeShareGroupOffsetsResponseTopic::default()
                    .with_topic_name(TopicName(text(topic)))
                    .with_topic_id(id.unwrap_or_default())
                    .with_partitions(partitions)
            })
            .collect();
        groups.push(group.with_topics(topics));
    }
    DescribeShareGroupOffsetsResponse::default().with_groups(groups)
}

pub(crate) async fn alter_offsets(
    context: &Context,
    request: AlterShareGroupOffsetsRequest,
) -> AlterShareGroupOffsetsResponse {
    let group_id = request.group_id.to_string();
    let refused = |error: ResponseError, message: Option<String>| {
        AlterShareGroupOffsetsResponse::default()
            .with_error_code(error.code())
            .with_error_message(message.map(text))
    };
    // Kafka: READ on the group to alter its offsets, DELETE to delete them.
    if !context.allowed(Operation::Read, ResourceType::Group, &group_id) {
        return refused(ResponseError::GroupAuthorizationFailed, None);
    }
    if !super::coordinates(context, &group_id) {
        return refused(ResponseError::NotCoordinator, None);
    }
    // Per topic: unknown topics and partitions are refused, the rest set.
    let mut responses = Vec::new();
    let mut offsets = Vec::new();
    for topic in request.topics {
        let name = topic.topic_name.to_string();
        let found = context.broker.topics().get(&name);
        let id = found.as_ref().map(|t| t.id());
        let readable = context.allowed(Operation::Read, ResourceType::Topic, &name);
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                if !readable {
                    return AlterShareGroupOffsetsResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                }
                let known = found.as_ref().is_some_and(|t| {
                    t.replicas(sluice_types::PartitionId::from(p.partition_index))
                        .is_some()
                });
                let answer = AlterShareGroupOffsetsResponsePartition::default()
                    .with_partition_index(p.partition_index);
                match id {
                    Some(id) if known && p.start_offset >= 0 => {
                        offsets.push((name.clone(), id, p.partition_index, p.start_offset));
                        answer
                    }
                    Some(_) if known => answer
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(text("a start offset must not be negative"))),
                    _ => answer.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                }
            })
            .collect();
        responses.push(
            AlterShareGroupOffsetsResponseTopic::default()
                .with_topic_name(topic.topic_name)
                .with_topic_id(id.map(uuid::Uuid::from_bytes).unwrap_or_default())
                .with_partitions(partitions),
        );
    }
    let broker = Arc::clone(&context.broker);
    let group = group_id.clone();
    let altered = blocking(move || broker.alter_share_offsets(&group, &offsets))
        .await
        .unwrap_or_else(|| Err(cancelled()));
    match altered {
        Ok(()) => AlterShareGroupOffsetsResponse::default().with_responses(responses),
        Err(error) => refused(admin_code(&error), Some(error.to_string())),
    }
}

pub(crate) async fn delete_offsets(
    context: &Context,
    request: DeleteShareGroupOffsetsRequest,
) -> DeleteShareGroupOffsetsResponse {
    let group_id = request.group_id.to_string();
    let refused = |error: ResponseError, message: Option<String>| {
        DeleteShareGroupOffsetsResponse::default()
            .with_error_code(error.code())
            .with_error_message(message.map(text))
    };
    // Kafka: READ on the group to alter its offsets, DELETE to delete them.
    if !context.allowed(Operation::Delete, ResourceType::Group, &group_id) {
        return refused(ResponseError::GroupAuthorizationFailed, None);
    }
    if !super::coordinates(context, &group_id) {
        return refused(ResponseError::NotCoordinator, None);
    }
    let mut responses = Vec::new();
    let mut deleted = Vec::new();
    for topic in request.topics {
        let name = topic.topic_name.to_string();
        let id = topic_id(context, &name);
        let answer = DeleteShareGroupOffsetsResponseTopic::default()
            .with_topic_name(topic.topic_name)
            .with_topic_id(id.unwrap_or_default());
        responses.push(match id {
            _ if !context.allowed(Operation::Read, ResourceType::Topic, &name) => {
                answer.with_error_code(ResponseError::TopicAuthorizationFailed.code())
            }
            Some(_) => {
                deleted.push(name);
                answer
            }
            None => answer.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
        });
    }
    let broker = Arc::clone(&context.broker);
    let group = group_id.clone();
    let done = blocking(move || broker.delete_share_offsets(&group, &deleted))
        .await
        .unwrap_or_else(|| Err(cancelled()));
    match done {
        Ok(()) => DeleteShareGroupOffsetsResponse::default().with_responses(responses),
        Err(error) => refused(admin_code(&error), Some(error.to_string())),
    }
}
