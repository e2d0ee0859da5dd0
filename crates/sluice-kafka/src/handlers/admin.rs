//! DeleteRecords, OffsetForLeaderEpoch, AlterConfigs,
//! IncrementalAlterConfigs (of topics and groups), DescribeCluster and
//! OffsetDelete.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResourceResponse;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, BrokerId, DeleteRecordsRequest,
    DeleteRecordsResponse, DescribeClusterRequest, DescribeClusterResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::consumer_groups::MEMBERSHIP_TOPIC;
use sluice_core::{Broker, CoreError, GroupConfig, TopicConfig};
use sluice_types::{LeaderEpoch, Offset};

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, blocking};
use crate::errors;

const TOPIC: i8 = 2;
/// Config resource type of a group (KIP-848's group configs).
const GROUP: i8 = 32;
/// DeleteRecords offset meaning "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

pub(crate) async fn delete_records(
    context: &Context,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let broker = Arc::clone(&context.broker);
    let checker = context.checker();
    let topics = blocking(move || {
        request
            .topics
            .into_iter()
            .map(|topic| {
                let found = broker.topics().get(&topic.name);
                let deletable = checker.allows(Operation::Delete, ResourceType::Topic, &topic.name);
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let result = DeleteRecordsPartitionResult::default()
                            .with_partition_index(p.partition_index)
                            .with_low_watermark(-1);
                        if !deletable {
                            return result
                                .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                        }
                        let partition = match super::partition_of(found.as_ref(), p.partition_index)
                        {
                            Ok(partition) => partition,
                            Err(error) => return result.with_error_code(error.code()),
                        };
                        let target = if p.offset == HIGH_WATERMARK {
                            partition.high_watermark()
                        } else {
                            Offset::from(p.offset)
                        };
                        if target.get() < 0 {
                            return result.with_error_code(ResponseError::OffsetOutOfRange.code());
                        }
                        match partition.delete_records(target) {
                            Ok(start) => result.with_error_code(0).with_low_watermark(start.get()),
                            Err(err) => result.with_error_code(errors::code(&err).code()),
                        }
                    })
                    .collect();
                DeleteRecordsTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    DeleteRecordsResponse::default().with_topics(topics)
}

pub(crate) fn offset_for_leader_epoch(
    context: &Context,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let found = context.broker.topics().get(&topic.topic);
            // A follower (replica_id >= 0) needs CLUSTER_ACTION, a client
            // DESCRIBE on the topic.
            let allowed = if request.replica_id.0 >= 0 {
                context.allowed_on_cluster(Operation::ClusterAction)
            } else {
                context.allowed(Operation::Describe, ResourceType::Topic, &topic.topic)
            };
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let result = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    if !allowed {
                        return result
                            .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                    }
                    let partition = match super::partition_of(found.as_ref(), p.partition) {
                        Ok(partition) => partition,
                        Err(error) => return result.with_error_code(error.code()),
                    };
                    // KIP-320: an older epoch is fenced, a newer one is from
                    // a future this broker has not seen.
                    if let Err(error) =
                        super::check_leader_epoch(&partition, p.current_leader_epoch)
                    {
                        return result.with_error_code(error.code());
                    }
                    match partition.end_offset_for_epoch(LeaderEpoch::from(p.leader_epoch)) {
                        Some((epoch, end)) => result
                            .with_error_code(0)
                            .with_leader_epoch(epoch.get())
                            .with_end_offset(end.get()),
                        None => result.with_error_code(0),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// A group's outcome for AlterConfigs and IncrementalAlterConfigs: the
/// group need not exist (Kafka keeps configs of groups to come).
fn alter_group(
    broker: &Broker,
    name: &str,
    validate_only: bool,
    change: impl Fn(GroupConfig) -> Result<GroupConfig, CoreError>,
) -> (i16, Option<StrBytes>) {
    if name.is_empty() {
        return (
            ResponseError::InvalidRequest.code(),
            Some(StrBytes::from_static_str("the group id is empty")),
        );
    }
    match broker.alter_group_config(name, validate_only, change) {
        Ok(()) => (0, None),
        Err(err) => (
            errors::code(&err).code(),
            Some(StrBytes::from_string(err.to_string())),
        ),
    }
}

/// Kafka refuses a null value for a group config.
fn null_value(key: &str) -> CoreError {
    CoreError::InvalidConfig {
        key: key.to_owned(),
        reason: "has a null value, which group configs do not take".to_owned(),
    }
}

/// One resource's outcome for AlterConfigs and IncrementalAlterConfigs.
fn alter_topic(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    change: impl FnOnce(TopicConfig) -> Result<TopicConfig, CoreError>,
) -> (i16, Option<StrBytes>) {
    if resource_type != TOPIC {
        return (
            ResponseError::InvalidRequest.code(),
            Some(StrBytes::from_static_str(
                "only topic and group configs can be altered",
            )),
        );
    }
    let Some(topic) = broker.topics().get(name) else {
        return (
            ResponseError::UnknownTopicOrPartition.code(),
            Some(StrBytes::from_string(format!(
                "topic {name:?} does not exist"
            ))),
        );
    };
    let outcome = change(topic.config()).and_then(|config| {
        if validate_only {
            Ok(())
        } else {
            broker.set_topic_config(name, config)
        }
    });
    match outcome {
        Ok(()) => (0, None),
        Err(err) => (
            errors::code(&err).code(),
            Some(StrBytes::from_string(err.to_string())),
        ),
    }
}

pub(crate) async fn alter_configs(
    context: &Context,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let broker = Arc::clone(&context.broker);
    let validate_only = request.validate_only;
    let checker = context.checker();
    let responses = blocking(move || {
        request
            .resources
            .into_iter()
            .map(|resource| {
                if let Some(error) = checker.config_denied(
                    resource.resource_type,
                    &resource.resource_name,
                    Operation::AlterConfigs,
                ) {
                    return AlterConfigsResourceResponse::default()
                        .with_resource_type(resource.resource_type)
                        .with_resource_name(resource.resource_name)
                        .with_error_code(error.code());
                }
                // AlterConfigs replaces the whole set: unnamed keys go back to defaults.
                let settings: Vec<(String, String)> = resource
                    .configs
                    .iter()
                    .filter_map(|c| {
                        c.value
                            .as_ref()
                            .map(|v| (c.name.to_string(), v.to_string()))
                    })
                    .collect();
                let null = resource
                    .configs
                    .iter()
                    .find(|c| c.value.is_none())
                    .map(|c| c.name.to_string());
                let (code, message) = if resource.resource_type == GROUP {
                    alter_group(&broker, &resource.resource_name, validate_only, |_| {
                        if let Some(key) = &null {
                            return Err(null_value(key));
                        }
                        let mut config = GroupConfig::default();
                        for (key, value) in &settings {
                            config.set(key.clone(), value)?;
                        }
                        Ok(config)
                    })
                } else {
                    alter_topic(
                        &broker,
                        resource.resource_type,
                        &resource.resource_name,
                        validate_only,
                        |_| TopicConfig::new(settings),
                    )
                };
                AlterConfigsResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs operations (KIP-339).
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

pub(crate) async fn incremental_alter_configs(
    context: &Context,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let broker = Arc::clone(&context.broker);
    let validate_only = request.validate_only;
    let checker = context.checker();
    let responses = blocking(move || {
        request
            .resources
            .into_iter()
            .map(|resource| {
                if let Some(error) = checker.config_denied(
                    resource.resource_type,
                    &resource.resource_name,
                    Operation::AlterConfigs,
                ) {
                    return IncrementalResourceResponse::default()
                        .with_resource_type(resource.resource_type)
                        .with_resource_name(resource.resource_name)
                        .with_error_code(error.code());
                }
                let changes: Vec<(String, i8, Option<String>)> = resource
                    .configs
                    .iter()
                    .map(|c| {
                        (
                            c.name.to_string(),
                            c.config_operation,
                            c.value.as_ref().map(|v| v.to_string()),
                        )
                    })
                    .collect();
                if resource.resource_type == GROUP {
                    let (code, message) =
                        alter_group(&broker, &resource.resource_name, validate_only, |mut config| {
                            for (key, operation, value) in changes.iter().cloned() {
                                match (operation, value) {
                                    (SET, Some(value)) => config.set(key, &value)?,
                                    (SET, None) => return Err(null_value(&key)),
                                    (DELETE, _) => config.remove(&key),
                                    _ => {
                                        return Err(CoreError::InvalidConfig {
                                            key,
                                            reason: format!(
                                                "operation {operation} does not apply: group configs are not lists"
                                            ),
                                        });
                                    }
                                }
                            }
                            Ok(config)
                        });
                    return IncrementalResourceResponse::default()
                        .with_error_code(code)
                        .with_error_message(message)
                        .with_resource_type(resource.resource_type)
                        .with_resource_name(resource.resource_name);
                }
                let (code, message) = alter_topic(
                    &broker,
                    resource.resource_type,
                    &resource.resource_name,
                    validate_only,
                    |mut config| {
                        for (key, operation, value) in changes {
                            match operation {
                                SET => config.set(key, value.unwrap_or_default())?,
                                DELETE => config.remove(&key),
                                APPEND => config.append(key, value.as_deref().unwrap_or(""))?,
                                SUBTRACT => {
                                    config.subtract(key, value.as_deref().unwrap_or(""))?;
                                }
                                _ => {
                                    return Err(CoreError::InvalidConfig {
                                        key,
                                        reason: format!("operation {operation} is unknown"),
                                    });
                                }
                            }
                        }
                        Ok(config)
                    },
                );
                IncrementalResourceResponse::default()
                    .with_error_code(code)
                    .with_error_message(message)
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

pub(crate) fn describe_cluster(
    context: &Context,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    // Anyone may describe the cluster (Kafka does not gate it); without
    // DESCRIBE on it the authorized operations are none.
    let response = if request.include_cluster_authorized_operations {
        DescribeClusterResponse::default().with_cluster_authorized_operations(
            if context.allowed_on_cluster(Operation::Describe) {
                super::authorized::CLUSTER
            } else {
                0
            },
        )
    } else {
        DescribeClusterResponse::default()
    };
    response
        .with_cluster_id(StrBytes::from_static_str("sluice"))
        .with_controller_id(BrokerId(context.broker.controller()))
        .with_brokers(
            super::nodes(context)
                .into_iter()
                .map(|(id, host, port)| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(id))
                        .with_host(host)
                        .with_port(i32::from(port))
                })
                .collect(),
        )
}

pub(crate) async fn offset_delete(
    context: &Context,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let broker = Arc::clone(&context.broker);
    let checker = context.checker();
    blocking(move || {
        let group = request.group_id.to_string();
        if !checker.allows(Operation::Delete, ResourceType::Group, &group) {
            return OffsetDeleteResponse::default()
                .with_error_code(ResponseError::GroupAuthorizationFailed.code());
        }
        if group.starts_with(sluice_core::SHARE_STATE_PREFIX) {
            // Share groups' state is the broker's own.
            return OffsetDeleteResponse::default()
                .with_error_code(ResponseError::GroupAuthorizationFailed.code());
        }
        if broker.offsets().coordinator(&group) != sluice_core::Coordinator::Here {
            return OffsetDeleteResponse::default()
                .with_error_code(ResponseError::NotCoordinator.code());
        }
        // Offsets of a group with active members stay (Kafka refuses with
        // GROUP_SUBSCRIBED_TO_TOPIC; without subscription data this broker
        // refuses any non-empty group).
        let busy = broker
            .groups()
            .describe(&group)
            .is_some_and(|g| !g.members.is_empty())
            || broker.consumer_groups().exists(&group) == Some(true);
        if broker.offsets().group(&group).is_empty() && broker.groups().describe(&group).is_none() {
            return OffsetDeleteResponse::default()
                .with_error_code(ResponseError::GroupIdNotFound.code());
        }
        let mut doomed = Vec::new();
        let topics = request
            .topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        let code =
                            if !checker.allows(Operation::Read, ResourceType::Topic, &topic.name) {
                                ResponseError::TopicAuthorizationFailed.code()
                            } else if topic.name.as_str() == MEMBERSHIP_TOPIC {
                                // A consumer group's stored membership is the broker's.
                                ResponseError::UnknownTopicOrPartition.code()
                            } else if busy {
                                ResponseError::GroupSubscribedToTopic.code()
                            } else {
                                doomed.push((topic.name.to_string(), p.partition_index));
                                0
                            };
                        OffsetDeleteResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(code)
                    })
                    .collect();
                OffsetDeleteResponseTopic::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect();
        match broker.offsets().delete(&group, &doomed) {
            Ok(()) => OffsetDeleteResponse::default().with_topics(topics),
            Err(err) => OffsetDeleteResponse::default().with_error_code(errors::code(&err).code()),
        }
    })
    .await
    .unwrap_or_default()
}
