//! CreateTopics, DeleteTopics, CreatePartitions: one result per topic asked
//! about, errors included, never an empty answer.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::{Broker, ConfigSource, CoreError, TopicConfig};

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, blocking};
use crate::errors;

/// Partition count used when a request leaves it to the broker (-1, KIP-464).
const DEFAULT_PARTITIONS: i32 = 1;

fn message(err: &CoreError) -> Option<StrBytes> {
    Some(StrBytes::from_string(err.to_string()))
}

pub(crate) async fn create(
    context: &Context,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let broker = Arc::clone(&context.broker);
    let validate_only = request.validate_only;
    let node_id = context.options.node_id;
    let checker = context.checker();
    let topics = blocking(move || {
        let on_cluster = checker.allows_on_cluster(Operation::Create);
        request
            .topics
            .into_iter()
            .map(|topic| {
                if !on_cluster
                    && !checker.allows(Operation::Create, ResourceType::Topic, &topic.name)
                {
                    return CreatableTopicResult::default()
                        .with_name(topic.name)
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                        .with_error_message(Some(StrBytes::from_static_str(
                            "creating the topic needs CREATE on it or on the cluster",
                        )));
                }
                // Kafka shows a new topic's configs only to a client that
                // may describe them.
                let configs_visible =
                    checker.allows(Operation::DescribeConfigs, ResourceType::Topic, &topic.name);
                let result = create_one(&broker, topic, validate_only, version, node_id);
                if configs_visible || version < 5 || result.error_code != 0 {
                    result
                } else {
                    result.with_configs(None).with_topic_config_error_code(
                        ResponseError::TopicAuthorizationFailed.code(),
                    )
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    CreateTopicsResponse::default().with_topics(topics)
}

fn create_one(
    broker: &Broker,
    topic: kafka_protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
    version: i16,
    node_id: i32,
) -> CreatableTopicResult {
    let name = topic.name.to_string();
    let result = CreatableTopicResult::default().with_name(topic.name.clone());
    // On a cluster, partitions get the replicas asked for (-1:
    // kafka.default_replication_factor, Kafka's default.replication.factor);
    // the nodes are checked there.
    let clustered = broker.topics().metadata().clustered();
    let replication = match topic.replication_factor {
        -1 => broker.topics().default_replication(),
        factor => u16::try_from(factor).unwrap_or(0),
    };
    let fail = |code: ResponseError, text: String| {
        result
            .clone()
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from_string(text)))
    };
    let partitions = if !topic.assignments.is_empty() {
        match assigned_partitions(&topic, node_id) {
            Ok(partitions) => partitions,
            Err((code, text)) => return fail(code, text),
        }
    } else if !clustered && !matches!(topic.replication_factor, -1 | 1) {
        return fail(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {} is larger than the 1 available broker",
                topic.replication_factor
            ),
        );
    } else if topic.num_partitions == -1 {
        DEFAULT_PARTITIONS
    } else {
        topic.num_partitions
    };
    let settings = topic
        .configs
        .into_iter()
        .filter_map(|c| c.value.map(|v| (c.name.to_string(), v.to_string())));
    let config = match TopicConfig::new(settings) {
        Ok(config) => config,
        Err(err) => return fail(errors::code(&err), err.to_string()),
    };
    let count = u32::try_from(partitions).unwrap_or(0);
    let outcome = if validate_only {
        broker.topics().validate_new(&name, count)
    } else {
        broker
            .topics()
            .create_replicated(
                &name,
                count,
                if clustered { replication } else { 1 },
                config.clone(),
            )
            .map(|_| ())
    };
    if let Err(err) = outcome {
        return fail(errors::code(&err), err.to_string());
    }
    let topic_id = broker
        .topics()
        .get(&name)
        .map_or(uuid::Uuid::nil(), |t| uuid::Uuid::from_bytes(t.id()));
    let configs = config
        .entries(broker.log_defaults())
        .into_iter()
        .map(|entry| {
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(entry.name))
                .with_value(Some(StrBytes::from_string(entry.value)))
                .with_config_source(match entry.source {
                    ConfigSource::Topic => 1,
                    ConfigSource::Group => 8,
                    ConfigSource::Default => 5,
                })
        })
        .collect();
    // Fields a version does not carry keep their defaults.
    let mut result = result.with_error_code(0);
    if version >= 5 {
        result = result
            .with_num_partitions(partitions)
            .with_replication_factor(if clustered {
                i16::try_from(replication).unwrap_or(1)
            } else {
                1
            })
            .with_configs(Some(configs));
    }
    if version >= 7 {
        result = result.with_topic_id(topic_id);
    }
    result
}

/// The partition count of a manual replica assignment, checked as Kafka's
/// controller does: partition count and replication factor left at -1,
/// partitions numbered 0..n-1 in order, each with the same number of
/// distinct, registered brokers. The only registered broker is this node,
/// so every partition names exactly it (which also makes the replica
/// counts equal).
fn assigned_partitions(
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    node_id: i32,
) -> Result<i32, (ResponseError, String)> {
    let invalid = |text: String| (ResponseError::InvalidReplicaAssignment, text);
    if topic.replication_factor != -1 {
        return Err((
            ResponseError::InvalidRequest,
            "a manual partition assignment was specified, but replication factor was not set to -1"
                .to_owned(),
        ));
    }
    if topic.num_partitions != -1 {
        return Err((
            ResponseError::InvalidRequest,
            "a manual partition assignment was specified, but num_partitions was not set to -1"
                .to_owned(),
        ));
    }
    for (expected, assignment) in (0_i32..).zip(&topic.assignments) {
        if assignment.partition_index != expected {
            return Err(invalid(
                "partitions should be a consecutive 0-based integer sequence".to_owned(),
            ));
        }
        let brokers = &assignment.broker_ids;
        if brokers.is_empty() {
            return Err(invalid(
                "the manual partition assignment includes an empty replica list".to_owned(),
            ));
        }
        for (i, broker) in brokers.iter().enumerate() {
            if brokers.iter().skip(i + 1).any(|b| b == broker) {
                return Err(invalid(format!(
                    "the manual partition assignment includes the broker {} more than once",
                    broker.0
                )));
            }
            if broker.0 != node_id {
                return Err(invalid(format!(
                    "the manual partition assignment includes broker {}, but no such broker is registered",
                    broker.0
                )));
            }
        }
    }
    i32::try_from(topic.assignments.len())
        .map_err(|_| invalid("too many partitions in the assignment".to_owned()))
}

pub(crate) async fn delete(
    context: &Context,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let broker = Arc::clone(&context.broker);
    let checker = context.checker();
    let responses = blocking(move || {
        // v0-5 name topics in `topic_names`; v6 in `topics`, by name or id.
        let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
            .topic_names
            .into_iter()
            .map(|n| (Some(n.to_string()), uuid::Uuid::nil()))
            .collect();
        wanted.extend(
            request
                .topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.to_string()), t.topic_id)),
        );
        wanted
            .into_iter()
            .map(|(name, id)| {
                let by_id = name.is_none();
                let name = name.or_else(|| {
                    broker.topics().names().into_iter().find(|n| {
                        broker
                            .topics()
                            .get(n)
                            .is_some_and(|t| uuid::Uuid::from_bytes(t.id()) == id)
                    })
                });
                let gate_id = |id: uuid::Uuid| if version >= 6 { id } else { uuid::Uuid::nil() };
                let result = DeletableTopicResult::default().with_topic_id(gate_id(id));
                let Some(name) = name else {
                    return result.with_error_code(ResponseError::UnknownTopicId.code());
                };
                // Asked for by id, a topic the client may not describe
                // keeps its name to itself (Kafka).
                if by_id && !checker.allows(Operation::Describe, ResourceType::Topic, &name) {
                    return result.with_error_code(ResponseError::TopicAuthorizationFailed.code());
                }
                let topic_id = broker
                    .topics()
                    .get(&name)
                    .map_or(id, |t| uuid::Uuid::from_bytes(t.id()));
                let result = result
                    .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                    .with_topic_id(gate_id(topic_id));
                if !checker.allows(Operation::Delete, ResourceType::Topic, &name) {
                    return result.with_error_code(ResponseError::TopicAuthorizationFailed.code());
                }
                match broker.topics().delete(&name) {
                    Ok(()) => result.with_error_code(0),
                    Err(err) => {
                        let result = result.with_error_code(errors::code(&err).code());
                        if version >= 5 {
                            result.with_error_message(message(&err))
                        } else {
                            result
                        }
                    }
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub(crate) async fn create_partitions(
    context: &Context,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let broker = Arc::clone(&context.broker);
    let validate_only = request.validate_only;
    let checker = context.checker();
    let results = blocking(move || {
        request
            .topics
            .into_iter()
            .map(|topic| {
                let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
                if !checker.allows(Operation::Alter, ResourceType::Topic, &topic.name) {
                    return result.with_error_code(ResponseError::TopicAuthorizationFailed.code());
                }
                let count = u32::try_from(topic.count).unwrap_or(0);
                match broker.topics().grow(&topic.name, count, validate_only) {
                    Ok(()) => result.with_error_code(0),
                    Err(err) => result
                        .with_error_code(errors::code(&err).code())
                        .with_error_message(message(&err)),
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    CreatePartitionsResponse::default().with_results(results)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::BrokerId;
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic,
    };

    use super::*;

    fn assigned(partitions: &[(i32, &[i32])]) -> CreatableTopic {
        CreatableTopic::default()
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(
                partitions
                    .iter()
                    .map(|(index, brokers)| {
                        CreatableReplicaAssignment::default()
                            .with_partition_index(*index)
                            .with_broker_ids(brokers.iter().copied().map(BrokerId).collect())
                    })
                    .collect(),
            )
    }

    #[test]
    fn assignment_on_this_node_gives_its_partition_count() {
        let topic = assigned(&[(0, &[1]), (1, &[1]), (2, &[1])]);
        assert_eq!(assigned_partitions(&topic, 1), Ok(3));
    }

    #[test]
    fn assignment_checks_follow_kafkas_controller() {
        let code = |topic: &CreatableTopic| assigned_partitions(topic, 1).map_err(|(code, _)| code);
        let invalid = Err(ResponseError::InvalidReplicaAssignment);
        assert_eq!(code(&assigned(&[(0, &[7])])), invalid);
        assert_eq!(code(&assigned(&[(0, &[1, 1])])), invalid);
        assert_eq!(code(&assigned(&[(0, &[1]), (2, &[1])])), invalid);
        assert_eq!(code(&assigned(&[(1, &[1])])), invalid);
        assert_eq!(code(&assigned(&[(0, &[])])), invalid);
        let bad_request = Err(ResponseError::InvalidRequest);
        assert_eq!(
            code(&assigned(&[(0, &[1])]).with_num_partitions(1)),
            bad_request
        );
        assert_eq!(
            code(&assigned(&[(0, &[1])]).with_replication_factor(1)),
            bad_request
        );
    }
}
