//! ConsumerGroupHeartbeat and ConsumerGroupDescribe: consumer groups of
//! the new protocol (KIP-848) over the core's coordinator. A classic group
//! with members of the consumer protocol is upgraded by the first member
//! of the new protocol that joins (Kafka 4's online migration), one of
//! another protocol refuses it (GROUP_ID_NOT_FOUND), an empty one is
//! replaced. When the last member of the new protocol leaves, the classic
//! members left go back to a classic group.

use std::sync::atomic::{AtomicU64, Ordering};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response::{
    self as describe_response, DescribedGroup, Member,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{self, Assignment};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::consumer_groups::{self as core, ConsumerGroupError, Heartbeat, TopicCatalog};

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, migration};
use crate::errors;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn refused(error: ResponseError, message: Option<String>) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(error.code())
        .with_error_message(message.map(text))
}

/// A member id for a version 0 join without one: Kafka's coordinator made
/// them until v1, where the client does (KIP-1082).
pub(super) fn new_member_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(crate) async fn heartbeat(
    context: &Context,
    request: ConsumerGroupHeartbeatRequest,
    version: i16,
    client_id: &str,
) -> ConsumerGroupHeartbeatResponse {
    let group_id = request.group_id.to_string();
    if let Some((error, message)) =
        context.heartbeat_denied(&group_id, request.subscribed_topic_names.as_deref())
    {
        return refused(error, message);
    }
    if !super::coordinates(context, &group_id) {
        return refused(ResponseError::NotCoordinator, None);
    }
    let broker = &context.broker;
    let catalog = broker.topic_catalog();
    if request.member_epoch == 0 && broker.share_groups().exists(&group_id) == Some(true) {
        let error = ConsumerGroupError::NotConsumerGroup(group_id);
        return refused(
            errors::consumer_group_code(&error),
            Some(format!("{error}: it is a share group with members")),
        );
    }
    let leaving = request.member_epoch == -1;
    let owned = request.topic_partitions.map(|topics| {
        topics
            .into_iter()
            .map(|t| (*t.topic_id.as_bytes(), t.partitions.into_iter().collect()))
            .collect()
    });
    let member_id = if version == 0 && request.member_epoch == 0 && request.member_id.is_empty() {
        new_member_id()
    } else {
        request.member_id.to_string()
    };
    let heartbeat = Heartbeat {
        group_id,
        member_id,
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.map(|s| s.to_string()),
        rack_id: request.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_names: request
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.to_string()).collect()),
        subscribed_regex: request.subscribed_topic_regex.map(|s| s.to_string()),
        server_assignor: request.server_assignor.map(|s| s.to_string()),
        owned,
        client_id: client_id.to_owned(),
        client_host: context.peer.clone(),
    };
    // A join to a classic group with members of the consumer protocol
    // upgrades it (an empty one is replaced); one of another protocol
    // refuses the join.
    let group_id = heartbeat.group_id.clone();
    let answer = broker.consumer_groups().heartbeat_upgrading(
        heartbeat,
        &catalog,
        tokio::time::Instant::now(),
        || {
            let settings = broker.consumer_groups().base_settings();
            // With upgrades off, a classic group with members has no room.
            let room = if settings.migration.upgrades() {
                settings.max_size
            } else {
                0
            };
            broker.groups().take_for_upgrade(&group_id, room, |member| {
                migration::decode_member(member, &catalog)
            })
        },
    );
    if leaving {
        // The last member of the new protocol may have left classic ones.
        broker.downgrade_consumer_groups();
    }
    // The membership as changed is durable before the member hears of it;
    // a change that could not be stored is not answered (the member tries
    // again, at its coordinator then).
    if broker.consumer_groups().needs_store(&group_id) {
        let stored = std::sync::Arc::clone(broker);
        let outcome = super::blocking(move || stored.store_consumer_groups(Some(&group_id))).await;
        let failed = match outcome {
            Some(Ok(())) => None,
            Some(Err(error)) => Some(error.to_string()),
            None => Some("the store was cancelled".to_owned()),
        };
        if let Some(reason) = failed {
            return refused(
                ResponseError::NotCoordinator,
                Some(format!(
                    "the group's membership could not be stored: {reason}"
                )),
            );
        }
    }
    match answer {
        Ok(answer) => ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(text(answer.member_id)))
            .with_member_epoch(answer.member_epoch)
            .with_heartbeat_interval_ms(
                i32::try_from(answer.heartbeat_interval.as_millis()).unwrap_or(i32::MAX),
            )
            .with_assignment(answer.assignment.map(|assignment| {
                Assignment::default().with_topic_partitions(
                    assignment
                        .into_iter()
                        .map(|(topic, partitions)| {
                            consumer_group_heartbeat_response::TopicPartitions::default()
                                .with_topic_id(uuid::Uuid::from_bytes(topic))
                                .with_partitions(partitions.into_iter().collect())
                        })
                        .collect(),
                )
            })),
        Err(error) => {
            tracing::debug!(%error, "consumer group heartbeat refused");
            refused(errors::consumer_group_code(&error), Some(error.to_string()))
        }
    }
}

fn described(
    assignment: &core::Assignment,
    catalog: &TopicCatalog,
) -> describe_response::Assignment {
    describe_response::Assignment::default().with_topic_partitions(
        assignment
            .iter()
            .map(|(topic, partitions)| {
                describe_response::TopicPartitions::default()
                    .with_topic_id(uuid::Uuid::from_bytes(*topic))
                    .with_topic_name(TopicName(text(catalog.name_of(topic).unwrap_or_default())))
                    .with_partitions(partitions.iter().copied().collect())
            })
            .collect(),
    )
}

pub(crate) fn describe(
    context: &Context,
    request: ConsumerGroupDescribeRequest,
    version: i16,
) -> ConsumerGroupDescribeResponse {
    let catalog = context.broker.topic_catalog();
    let groups = request
        .group_ids
        .into_iter()
        .map(|group_id| {
            let group = DescribedGroup::default().with_group_id(group_id.clone());
            if !context.allowed(Operation::Describe, ResourceType::Group, &group_id) {
                return group.with_error_code(ResponseError::GroupAuthorizationFailed.code());
            }
            if !super::coordinates(context, &group_id) {
                return group.with_error_code(ResponseError::NotCoordinator.code());
            }
            let Some(found) = context.broker.consumer_groups().describe(&group_id) else {
                let message = if context.broker.groups().describe(&group_id).is_some() {
                    format!("Group {} is not a consumer group.", group_id.as_str())
                } else {
                    format!("Group {} not found.", group_id.as_str())
                };
                return group
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(text(message)));
            };
            let members = found
                .members
                .iter()
                .map(|m| {
                    let member = Member::default()
                        .with_member_id(text(m.member_id.clone()))
                        .with_instance_id(m.instance_id.clone().map(text))
                        .with_rack_id(m.rack_id.clone().map(text))
                        .with_member_epoch(m.member_epoch)
                        .with_client_id(text(m.client_id.clone()))
                        .with_client_host(text(m.client_host.clone()))
                        .with_subscribed_topic_names(
                            m.subscribed_names
                                .iter()
                                .map(|n| TopicName(text(n.clone())))
                                .collect(),
                        )
                        .with_subscribed_topic_regex(m.subscribed_regex.clone().map(text))
                        .with_assignment(described(&m.assignment, &catalog))
                        .with_target_assignment(described(&m.target, &catalog));
                    // v1: 0 = a classic member, 1 = of the consumer protocol.
                    if version >= 1 {
                        member.with_member_type(if m.classic { 0 } else { 1 })
                    } else {
                        member
                    }
                })
                .collect();
            let group = group
                .with_group_state(StrBytes::from_static_str(found.state))
                .with_group_epoch(found.group_epoch)
                .with_assignment_epoch(found.assignment_epoch)
                .with_assignor_name(StrBytes::from_static_str(found.assignor))
                .with_members(members);
            if request.include_authorized_operations {
                group.with_authorized_operations(super::authorized::GROUP)
            } else {
                group
            }
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
