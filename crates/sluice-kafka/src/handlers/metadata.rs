//! Metadata: this broker, and the topics asked for (auto-created when
//! allowed, as Kafka does on Metadata from a producer).

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_core::acls::{Operation, ResourceType};
use sluice_core::{CoreError, Topic};

use super::{Context, blocking};
use crate::errors;

/// A topic a Metadata request names: by name, or by id (v10+).
enum Asked {
    Name(String),
    Id(uuid::Uuid),
}

pub(crate) async fn handle(
    context: &Context,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let broker = Arc::clone(&context.broker);
    // v0: an empty list means every topic; v1+: null means every topic.
    // From v10 a topic may be asked for by id instead of name (KIP-516;
    // KIP-848 consumers resolve their assignments' ids this way).
    let requested: Option<Vec<Asked>> = match request.topics {
        None => None,
        Some(topics) if version == 0 && topics.is_empty() => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .filter_map(|t| match t.name {
                    Some(name) => Some(Asked::Name(name.to_string())),
                    None if !t.topic_id.is_nil() => Some(Asked::Id(t.topic_id)),
                    None => None,
                })
                .collect(),
        ),
    };
    let topic_operations = version >= 8 && request.include_topic_authorized_operations;
    let cluster_operations =
        (8..=10).contains(&version) && request.include_cluster_authorized_operations;
    // Before v4 there is no flag, and Kafka creates topics on request.
    let may_create = version < 4 || request.allow_auto_topic_creation;
    let listing = requested.is_none();
    // Named topics the client may not describe, or not create when they
    // are missing (ACLs; checked here, the lookup runs off the runtime).
    // One authorization for the whole request.
    let checker = context.checker();
    let mut hidden = std::collections::HashSet::new();
    let mut uncreatable = std::collections::HashSet::new();
    for asked in requested.iter().flatten() {
        if let Asked::Name(name) = asked {
            if !checker.allows(Operation::Describe, ResourceType::Topic, name) {
                hidden.insert(name.clone());
            } else if may_create
                && context.broker.auto_create_topics()
                && !checker.allows_on_cluster(Operation::Create)
                && !checker.allows(Operation::Create, ResourceType::Topic, name)
            {
                uncreatable.insert(name.clone());
            }
        }
    }
    let results: Vec<(Asked, Result<Arc<Topic>, ResponseError>)> = blocking(move || {
        let asked = requested.unwrap_or_else(|| {
            broker
                .topics()
                .names()
                .into_iter()
                .map(Asked::Name)
                .collect()
        });
        asked
            .into_iter()
            .map(|asked| {
                let found = match &asked {
                    Asked::Name(name) if hidden.contains(name) => {
                        return (asked, Err(ResponseError::TopicAuthorizationFailed));
                    }
                    Asked::Name(name) if uncreatable.contains(name) => {
                        let found = broker.topics().get(name);
                        return (asked, found.ok_or(ResponseError::TopicAuthorizationFailed));
                    }
                    Asked::Name(name) if may_create => broker.topic_or_create(name),
                    Asked::Name(name) => {
                        broker
                            .topics()
                            .get(name)
                            .ok_or_else(|| CoreError::UnknownTopic {
                                topic: name.clone(),
                            })
                    }
                    Asked::Id(id) => broker
                        .topics()
                        .names()
                        .into_iter()
                        .filter_map(|name| broker.topics().get(&name))
                        .find(|topic| topic.id() == *id.as_bytes())
                        .ok_or_else(|| CoreError::UnknownTopic {
                            topic: id.to_string(),
                        }),
                };
                (asked, found.map_err(|err| errors::code(&err)))
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    // Every topic found must be one the client may describe: a listing
    // leaves the others out, a topic asked for by id is refused.
    let results = results
        .into_iter()
        .filter_map(|(asked, found)| match found {
            Ok(topic)
                if !checker.allows(Operation::Describe, ResourceType::Topic, topic.name()) =>
            {
                (!listing).then_some((asked, Err(ResponseError::TopicAuthorizationFailed)))
            }
            found => Some((asked, found)),
        });

    let node = BrokerId(context.options.node_id);
    let fenced = context.broker.topics().metadata().fenced();
    let topics = results
        .into_iter()
        .map(|(asked, found)| match (asked, found) {
            (_, Ok(topic)) => {
                let described = describe(&topic, node, &fenced, version);
                if topic_operations {
                    described.with_topic_authorized_operations(super::authorized::TOPIC)
                } else {
                    described
                }
            }
            (Asked::Name(name), Err(error)) => MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name))))
                .with_error_code(error.code()),
            (Asked::Id(id), Err(error)) => MetadataResponseTopic::default()
                // The name is nullable from v12 only.
                .with_name((version < 12).then(|| TopicName(StrBytes::default())))
                .with_topic_id(id)
                .with_error_code(if error == ResponseError::TopicAuthorizationFailed {
                    error.code()
                } else {
                    ResponseError::UnknownTopicId.code()
                }),
        })
        .collect();
    let brokers = super::nodes(context)
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(host)
                .with_port(i32::from(port))
        })
        .collect();
    // Fields a version does not carry must keep their defaults, or the
    // codec refuses to encode the response.
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if version >= 1 {
        response = response.with_controller_id(BrokerId(context.broker.controller()));
    }
    if version >= 2 {
        response = response.with_cluster_id(Some(StrBytes::from_static_str("sluice")));
    }
    if cluster_operations {
        response = response.with_cluster_authorized_operations(super::authorized::CLUSTER);
    }
    response
}

/// A topic's partitions as Metadata gives them: a partition whose leader
/// is fenced (not heard from by the controller, and no in-sync replica to
/// take over) has no leader (-1, LEADER_NOT_AVAILABLE), and fenced
/// replicas are offline, as in Kafka.
fn describe(
    topic: &Topic,
    node: BrokerId,
    fenced: &std::collections::BTreeSet<i32>,
    version: i16,
) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count() as i32)
        .map(|index| {
            let id = sluice_types::PartitionId::from(index);
            let replicas: Vec<BrokerId> = match topic.replicas(id) {
                Some(replicas) if !replicas.is_empty() => {
                    replicas.into_iter().map(BrokerId).collect()
                }
                _ => vec![node],
            };
            // The leader and its epoch as the metadata says (a cluster);
            // this node and its partition's epoch on a cluster of one.
            let (leader, epoch) = topic.leader(id).unwrap_or_else(|| {
                let epoch = topic.partition(id).map_or(0, |p| p.leader_epoch().get());
                (replicas[0].0, epoch)
            });
            let offline: Vec<BrokerId> = replicas
                .iter()
                .copied()
                .filter(|r| fenced.contains(&r.0))
                .collect();
            let (leader, error) = if fenced.contains(&leader) {
                (-1, kafka_protocol::ResponseError::LeaderNotAvailable.code())
            } else {
                (leader, 0)
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(index)
                .with_leader_id(BrokerId(leader))
                .with_leader_epoch(epoch)
                .with_offline_replicas(if version >= 5 { offline } else { Vec::new() })
                .with_isr_nodes(match topic.in_sync(id) {
                    in_sync if in_sync.is_empty() => replicas[..1].to_vec(),
                    in_sync => in_sync.into_iter().map(BrokerId).collect(),
                })
                .with_replica_nodes(replicas)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_error_code(0)
        .with_name(Some(TopicName(StrBytes::from_string(
            topic.name().to_owned(),
        ))))
        .with_topic_id(if version >= 10 {
            uuid::Uuid::from_bytes(topic.id())
        } else {
            uuid::Uuid::nil()
        })
        .with_is_internal(
            topic.name() == sluice_core::OFFSETS_TOPIC
                || topic.name() == sluice_core::transactions::TXN_STATE_TOPIC,
        )
        .with_partitions(partitions)
}
