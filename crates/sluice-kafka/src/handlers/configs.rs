//! DescribeConfigs for topics and groups (and an empty set for this
//! broker): every topic config Kafka 3.9 knows and every group config
//! Sluice takes, plus Sluice's own, with its source, type (v3+) and, when
//! asked, synonyms: the topic's or group's own value, then the broker
//! setting the default comes from.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::list_config_resources_response::ConfigResource;
use kafka_protocol::messages::{
    DescribeConfigsRequest, DescribeConfigsResponse, ListConfigResourcesRequest,
    ListConfigResourcesResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::{ConfigEntry, ConfigSource, ConfigType};

use sluice_core::acls::Operation;

use super::Context;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const GROUP: i8 = 32;
/// Config sources, as DescribeConfigs v1+ numbers them.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;
const GROUP_CONFIG: i8 = 8;

pub(crate) fn describe(
    context: &Context,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let include_synonyms = request.include_synonyms;
    let checker = context.checker();
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            if let Some(error) = checker.config_denied(
                resource.resource_type,
                &resource.resource_name,
                Operation::DescribeConfigs,
            ) {
                return result.with_error_code(error.code());
            }
            match resource.resource_type {
                TOPIC => {
                    let Some(topic) = context.broker.topics().get(&resource.resource_name) else {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "topic {:?} does not exist",
                                resource.resource_name.as_str()
                            ))));
                    };
                    let entries = topic.config().entries(context.broker.log_defaults());
                    result.with_error_code(0).with_configs(asked(
                        entries,
                        resource.configuration_keys.as_deref(),
                        include_synonyms,
                    ))
                }
                GROUP if resource.resource_name.is_empty() => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_static_str("the group id is empty"))),
                GROUP => {
                    let entries = context.broker.group_config_entries(&resource.resource_name);
                    result.with_error_code(0).with_configs(asked(
                        entries,
                        resource.configuration_keys.as_deref(),
                        include_synonyms,
                    ))
                }
                BROKER => result.with_error_code(0),
                _ => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "only topic, group and broker resources can be described",
                    ))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Config resource types ListConfigResources v1 knows: topics, brokers,
/// broker loggers, client metrics, groups.
const LISTABLE: [i8; 5] = [TOPIC, BROKER, 8, 16, GROUP];

/// ListConfigResources (KIP-1142; v0 was ListClientMetricsResources):
/// topics, this cluster's nodes and the groups with configs of their own,
/// as `kafka-configs --describe --entity-type groups` lists them. Sluice
/// has no client-metrics or logger resources.
pub(crate) fn list_resources(
    context: &Context,
    request: ListConfigResourcesRequest,
    version: i16,
) -> ListConfigResourcesResponse {
    // v0 asks for client-metrics resources only.
    let wanted: Vec<i8> = if version == 0 {
        vec![16]
    } else if request.resource_types.is_empty() {
        LISTABLE.to_vec()
    } else {
        request.resource_types
    };
    if let Some(unknown) = wanted.iter().find(|t| !LISTABLE.contains(t)) {
        tracing::debug!(
            resource_type = unknown,
            "ListConfigResources of an unknown resource type"
        );
        return ListConfigResourcesResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code());
    }
    if !context.allowed_on_cluster(Operation::DescribeConfigs) {
        return ListConfigResourcesResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let resource = |name: String, kind: i8| {
        ConfigResource::default()
            .with_resource_name(StrBytes::from_string(name))
            .with_resource_type(if version >= 1 { kind } else { 16 })
    };
    let mut listed = Vec::new();
    for kind in wanted {
        match kind {
            TOPIC => listed.extend(
                context
                    .broker
                    .topics()
                    .names()
                    .into_iter()
                    .map(|name| resource(name, TOPIC)),
            ),
            BROKER => listed.extend(
                super::nodes(context)
                    .into_iter()
                    .map(|(id, _, _)| resource(id.to_string(), BROKER)),
            ),
            GROUP => listed.extend(
                context
                    .broker
                    .configured_groups()
                    .into_iter()
                    .map(|group| resource(group, GROUP)),
            ),
            _ => {}
        }
    }
    ListConfigResourcesResponse::default().with_config_resources(listed)
}

/// The entries a DescribeConfigs resource asks for (`keys`; none: all).
fn asked(
    entries: Vec<ConfigEntry>,
    keys: Option<&[StrBytes]>,
    include_synonyms: bool,
) -> Vec<DescribeConfigsResourceResult> {
    entries
        .into_iter()
        .filter(|e| keys.is_none_or(|keys| keys.iter().any(|k| k.as_str() == e.name)))
        .map(|e| entry(e, include_synonyms))
        .collect()
}

fn entry(e: ConfigEntry, include_synonyms: bool) -> DescribeConfigsResourceResult {
    let source = match e.source {
        ConfigSource::Topic => DYNAMIC_TOPIC_CONFIG,
        ConfigSource::Group => GROUP_CONFIG,
        ConfigSource::Default => DEFAULT_CONFIG,
    };
    let mut synonyms = Vec::new();
    if include_synonyms {
        if e.source != ConfigSource::Default {
            synonyms.push(
                DescribeConfigsSynonym::default()
                    .with_name(StrBytes::from_static_str(e.name))
                    .with_value(Some(StrBytes::from_string(e.value.clone())))
                    .with_source(source),
            );
        }
        if let Some((broker, value)) = e.broker_synonym {
            synonyms.push(
                DescribeConfigsSynonym::default()
                    .with_name(StrBytes::from_static_str(broker))
                    .with_value(Some(StrBytes::from_string(value)))
                    .with_source(DEFAULT_CONFIG),
            );
        }
    }
    DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(e.name))
        .with_value(Some(StrBytes::from_string(e.value)))
        .with_read_only(false)
        .with_config_source(source)
        .with_synonyms(synonyms)
        .with_config_type(config_type(e.config_type))
}

/// DescribeConfigs v3+ numbering of Kafka's `ConfigDef.Type`.
fn config_type(kind: ConfigType) -> i8 {
    match kind {
        ConfigType::Boolean => 1,
        ConfigType::String => 2,
        ConfigType::Int => 3,
        ConfigType::Long => 5,
        ConfigType::Double => 6,
        ConfigType::List => 7,
    }
}
