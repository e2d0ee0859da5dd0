//! FindCoordinator (of a group: the leader of its `__consumer_offsets`
//! partition on a cluster; of a transactional id: the leader of its
//! `__transaction_state` partition), OffsetCommit and OffsetFetch over the
//! core's offset store. Commits from a member are
//! checked against its group's generation; "simple" consumers (manual
//! assignment, no generation) may commit for a group with no members.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::CommittedOffset;

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, blocking};
use crate::errors;

/// `key_type` of a consumer group (0) and of a transactional id (1).
const GROUP_KEY: i8 = 0;
const TRANSACTION_KEY: i8 = 1;

pub(crate) fn find(
    context: &Context,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let transactional = request.key_type == TRANSACTION_KEY;
    let refused = match request.key_type {
        GROUP_KEY | TRANSACTION_KEY => None,
        _ => Some((
            ResponseError::InvalidRequest,
            StrBytes::from_static_str("unknown coordinator key type"),
        )),
    };
    // On a cluster the offsets and transaction state topics are created on
    // first need, as Kafka does, in the background (the quorum may take a
    // while, and a connection's later requests wait for this answer);
    // until their leaders are known the answer is
    // COORDINATOR_NOT_AVAILABLE and the client asks again.
    if refused.is_none() && !transactional && context.broker.offsets().needs_topic() {
        let broker = Arc::clone(&context.broker);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = broker.offsets().prepare() {
                tracing::warn!(%error, "cannot create the committed offsets topic yet");
            }
        });
    }
    if refused.is_none() && transactional && context.broker.transactions().needs_topic() {
        let broker = Arc::clone(&context.broker);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = broker.transactions().prepare() {
                tracing::warn!(%error, "cannot create the transaction state topic yet");
            }
        });
    }
    let answer = |key: &str| -> (i32, StrBytes, i32, i16, Option<StrBytes>) {
        if let Some((error, message)) = &refused {
            return (
                -1,
                StrBytes::default(),
                -1,
                error.code(),
                Some(message.clone()),
            );
        }
        // DESCRIBE on the group or transactional id (Kafka's rule).
        let (resource, denied) = if transactional {
            (
                ResourceType::TransactionalId,
                ResponseError::TransactionalIdAuthorizationFailed,
            )
        } else {
            (ResourceType::Group, ResponseError::GroupAuthorizationFailed)
        };
        if !context.allowed(Operation::Describe, resource, key) {
            return (-1, StrBytes::default(), -1, denied.code(), None);
        }
        let found = if transactional {
            super::node_of(context, context.broker.transactions().coordinator(key))
        } else {
            super::coordinator(context, key)
        };
        match found {
            Ok((node, host, port)) => (node, host, i32::from(port), 0, None),
            Err(error) => (-1, StrBytes::default(), -1, error.code(), None),
        }
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let (node, host, port, error, message) = answer(&key);
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(node))
                    .with_host(host)
                    .with_port(port)
                    .with_error_code(error)
                    .with_error_message(message)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (node, host, port, error, message) = answer(&request.key);
    FindCoordinatorResponse::default()
        .with_error_code(error)
        .with_error_message(if version >= 1 { message } else { None })
        .with_node_id(BrokerId(node))
        .with_host(host)
        .with_port(port)
}

pub(crate) async fn commit(
    context: &Context,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let broker = Arc::clone(&context.broker);
    let coordinates = super::coordinates(context, &request.group_id);
    // Share groups' state is the broker's own: only other nodes write it.
    let internal = request
        .group_id
        .starts_with(sluice_core::SHARE_STATE_PREFIX)
        && !context.inter_node;
    let checker = context.checker();
    let topics = blocking(move || {
        let group = request.group_id.to_string();
        let checked = if internal || !checker.allows(Operation::Read, ResourceType::Group, &group) {
            Err(ResponseError::GroupAuthorizationFailed.code())
        } else if coordinates {
            // A consumer group of the new protocol checks the member's
            // epoch (KIP-848); a classic group its generation.
            match broker.consumer_groups().check_offset_commit(
                &group,
                &request.member_id,
                request.generation_id_or_member_epoch,
                Some(version),
            ) {
                Some(checked) => checked.map_err(|err| errors::consumer_group_code(&err).code()),
                None => broker
                    .groups()
                    .check_commit(
                        &group,
                        request.generation_id_or_member_epoch,
                        &request.member_id,
                    )
                    .map_err(|err| errors::group_code(err).code()),
            }
        } else {
            Err(ResponseError::NotCoordinator.code())
        };
        if let Err(code) = checked {
            return request
                .topics
                .into_iter()
                .map(|topic| {
                    let partitions = topic
                        .partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect();
                    OffsetCommitResponseTopic::default()
                        .with_name(topic.name)
                        .with_partitions(partitions)
                })
                .collect();
        }
        let mut accepted = Vec::new();
        let mut answers: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
        for topic in request.topics {
            let known = broker.topics().get(&topic.name);
            let readable = checker.allows(Operation::Read, ResourceType::Topic, &topic.name);
            let mut codes = Vec::new();
            for p in topic.partitions {
                if !readable {
                    codes.push((
                        p.partition_index,
                        ResponseError::TopicAuthorizationFailed.code(),
                    ));
                    continue;
                }
                // On a cluster the partition may be on another node: the
                // group's coordinator keeps its offsets all the same.
                let exists = known.as_ref().is_some_and(|t| {
                    t.replicas(sluice_types::PartitionId::from(p.partition_index))
                        .is_some()
                });
                if !exists {
                    codes.push((
                        p.partition_index,
                        ResponseError::UnknownTopicOrPartition.code(),
                    ));
                    continue;
                }
                accepted.push((
                    topic.name.to_string(),
                    p.partition_index,
                    CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.map(|m| m.to_string()),
                    },
                ));
                codes.push((p.partition_index, 0));
            }
            answers.push((topic.name, codes));
        }
        let stored = broker.offsets().commit(&group, &accepted);
        let failure = stored.as_ref().err().map(|err| errors::code(err).code());
        answers
            .into_iter()
            .map(|(name, codes)| {
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        codes
                            .into_iter()
                            .map(|(index, code)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_error_code(if code == 0 {
                                        failure.unwrap_or(0)
                                    } else {
                                        code
                                    })
                            })
                            .collect(),
                    )
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    OffsetCommitResponse::default().with_topics(topics)
}

/// A topic's partitions with their committed offsets, if any, and an
/// error code (TOPIC_AUTHORIZATION_FAILED for a topic the client may not
/// describe).
type TopicOffsets = (TopicName, Vec<(i32, Option<CommittedOffset>, i16)>);

/// One group's committed offsets, as OffsetFetch asks for them: every
/// partition the group committed (`topics` null) or the ones named, each
/// with its offset if any; the error code when this node does not
/// coordinate the group, or the member named is not current.
fn group_offsets(
    context: &Context,
    group: &str,
    member: Option<(&str, i32)>,
    topics: Option<Vec<(TopicName, Vec<i32>)>>,
) -> Result<Vec<TopicOffsets>, i16> {
    let checker = context.checker();
    if !checker.allows(Operation::Describe, ResourceType::Group, group) {
        return Err(ResponseError::GroupAuthorizationFailed.code());
    }
    let describable = |topic: &str| checker.allows(Operation::Describe, ResourceType::Topic, topic);
    if let Some((member_id, epoch)) = member
        && let Some(Err(error)) = context
            .broker
            .consumer_groups()
            .check_commit(group, member_id, epoch)
    {
        return Err(errors::consumer_group_code(&error).code());
    }
    // Read at once, while this node coordinates the group: a coordinator
    // replaced between a check and the reads would answer "no offset".
    let committed: BTreeMap<(String, i32), CommittedOffset> = context
        .broker
        .offsets()
        .committed(group)
        .map(|all| all.into_iter().map(|(t, p, c)| ((t, p), c)).collect())
        .map_err(|_| ResponseError::NotCoordinator.code())?;
    Ok(match topics {
        // Null (v2+): every partition the group has committed.
        None => {
            let mut found: Vec<TopicOffsets> = Vec::new();
            for ((topic, partition), offset) in committed {
                // A consumer group's stored membership is the broker's own.
                // ... and topics the client may not describe are left out.
                if topic == sluice_core::consumer_groups::MEMBERSHIP_TOPIC || !describable(&topic) {
                    continue;
                }
                let data = (partition, Some(offset), 0);
                match found.last_mut() {
                    Some(last) if last.0.as_str() == topic => last.1.push(data),
                    _ => found.push((TopicName(StrBytes::from_string(topic)), vec![data])),
                }
            }
            found
        }
        Some(requested) => requested
            .into_iter()
            .map(|(name, partitions)| {
                let hidden = name.as_str() == sluice_core::consumer_groups::MEMBERSHIP_TOPIC;
                let code = if describable(&name) {
                    0
                } else {
                    ResponseError::TopicAuthorizationFailed.code()
                };
                let offsets = partitions
                    .into_iter()
                    .map(|p| {
                        (
                            p,
                            committed
                                .get(&(name.to_string(), p))
                                .filter(|_| !hidden && code == 0)
                                .cloned(),
                            code,
                        )
                    })
                    .collect();
                (name, offsets)
            })
            .collect(),
    })
}

/// A committed offset's fields: offset, leader epoch (v5+) and metadata.
fn fields(committed: Option<&CommittedOffset>, version: i16) -> (i64, i32, Option<StrBytes>) {
    (
        committed.map_or(-1, |c| c.offset),
        if version >= 5 {
            committed.map_or(-1, |c| c.leader_epoch)
        } else {
            -1
        },
        Some(StrBytes::from_string(
            committed
                .and_then(|c| c.metadata.clone())
                .unwrap_or_default(),
        )),
    )
}

pub(crate) fn fetch_offsets(
    context: &Context,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        // Batched: one entry per group (KIP-709), with the member (v9).
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let member_id = g.member_id.as_ref().map(|m| m.to_string());
                // A fetch naming no epoch (librdkafka's null and -1) is
                // not checked, as in Kafka.
                let member = (g.member_epoch >= 0)
                    .then(|| (member_id.as_deref().unwrap_or_default(), g.member_epoch));
                let topics = g.topics.map(|topics| {
                    topics
                        .into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect()
                });
                let response =
                    OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                match group_offsets(context, &g.group_id, member, topics) {
                    Err(code) => response.with_error_code(code),
                    Ok(found) => response.with_topics(
                        found
                            .into_iter()
                            .map(|(name, partitions)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(name)
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|(index, committed, code)| {
                                                let (offset, epoch, metadata) =
                                                    fields(committed.as_ref(), version);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(index)
                                                    .with_error_code(code)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(metadata)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let requested: Option<Vec<(TopicName, Vec<i32>)>> = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name, t.partition_indexes))
            .collect()
    });
    match group_offsets(context, &request.group_id, None, requested.clone()) {
        Ok(found) => OffsetFetchResponse::default().with_topics(
            found
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(index, committed, code)| {
                                    let (offset, epoch, metadata) =
                                        fields(committed.as_ref(), version);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(index)
                                        .with_error_code(code)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(epoch)
                                        .with_metadata(metadata)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(code) if version >= 2 => OffsetFetchResponse::default().with_error_code(code),
        // v0-1 have no top-level error: each partition says it, so the
        // consumer looks for the coordinator instead of resetting.
        Err(code) => OffsetFetchResponse::default().with_topics(
            requested
                .unwrap_or_default()
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    }
}
