//! `/api/topics`: list, create, describe, alter configs, add partitions,
//! delete. Mutations go through the same core calls as Kafka's admin APIs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{ConfigSource, CoreError, Topic, TopicConfig};

use super::{Paging, blocking};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path, Query};

pub(crate) async fn list(
    State(shared): State<AppState>,
    Query(paging): Query<Paging>,
) -> ApiResult<Json<Value>> {
    let (names, total) = paging.apply(shared.broker.topics().names(), String::clone)?;
    let items = names
        .iter()
        .filter_map(|name| shared.broker.topics().get(name))
        .map(|topic| {
            let partitions = topic.partitions();
            let records: i64 = partitions
                .iter()
                .map(|p| p.high_watermark().get() - p.log_start().get())
                .sum();
            let size: u64 = partitions.iter().map(|p| p.size_bytes()).sum();
            let rates = shared.rates.topic(topic.name());
            json!({
                "name": topic.name(),
                "partitions": partitions.len(),
                "records": records,
                "size_bytes": size,
                "records_in_rate": rates[0],
                "bytes_in_rate": rates[1],
                "records_out_rate": rates[2],
                "bytes_out_rate": rates[3],
            })
        })
        .collect();
    Ok(Json(paging.answer(items, total)))
}

/// A topic's partitions, offsets and settings.
pub(crate) fn description(shared: &AppState, topic: &Topic) -> Value {
    let partitions: Vec<Value> = topic
        .partitions()
        .iter()
        .map(|partition| {
            let traffic = partition.traffic();
            let load = |counter: &std::sync::atomic::AtomicU64| {
                counter.load(std::sync::atomic::Ordering::Relaxed)
            };
            let (leader, epoch) = topic
                .leader(partition.id())
                .unwrap_or((shared.broker.node_id(), partition.leader_epoch().get()));
            let replicas = topic
                .replicas(partition.id())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| vec![leader]);
            let in_sync = match topic.in_sync(partition.id()) {
                in_sync if in_sync.is_empty() => vec![leader],
                in_sync => in_sync,
            };
            json!({
                "partition": partition.id().get(),
                "leader": leader,
                "leader_epoch": epoch,
                "replicas": replicas,
                "in_sync_replicas": in_sync,
                "log_start_offset": partition.log_start().get(),
                "log_end_offset": partition.log_end().get(),
                "high_watermark": partition.high_watermark().get(),
                "size_bytes": partition.size_bytes(),
                "segments": partition.segment_count(),
                "records_in": load(&traffic.records_in),
                "bytes_in": load(&traffic.bytes_in),
                "records_out": load(&traffic.records_out),
                "bytes_out": load(&traffic.bytes_out),
            })
        })
        .collect();
    let configs: Vec<Value> = topic
        .config()
        .entries(shared.broker.log_defaults())
        .into_iter()
        .map(|entry| {
            json!({
                "name": entry.name,
                "value": entry.value,
                "source": match entry.source {
                    ConfigSource::Topic => "topic",
                    ConfigSource::Group => "group",
                    ConfigSource::Default => "default",
                },
            })
        })
        .collect();
    let id: String = topic.id().iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "name": topic.name(),
        "id": id,
        "partitions": partitions,
        "configs": configs,
        "stream_queues": stream_queues(shared, topic.name()),
        "forwarding": forwarding(shared, topic),
    })
}

/// The AMQP stream queues that are views of topic `name`.
fn stream_queues(shared: &AppState, name: &str) -> Vec<Value> {
    let mut found = Vec::new();
    for vhost in shared.broker.vhosts().all() {
        for queue in vhost.queues() {
            if queue.stream_topic().is_some_and(|t| t.name() == name) {
                found.push(json!({"vhost": vhost.name(), "name": queue.name()}));
            }
        }
    }
    found
}

/// Where the topic forwards its records, with each partition's position
/// and lag; `null` when it does not.
fn forwarding(shared: &AppState, topic: &Topic) -> Value {
    let Some(forwarding) = topic.config().forwarding() else {
        return Value::Null;
    };
    let group = sluice_core::forwarding::forward_group(&forwarding);
    let positions: Vec<Value> = topic
        .partitions()
        .iter()
        .map(|partition| {
            let position = shared
                .broker
                .offsets()
                .fetch(&group, topic.name(), partition.id().get())
                .map_or(partition.log_start().get(), |c| c.offset);
            json!({
                "partition": partition.id().get(),
                "position": position,
                "lag": (partition.high_watermark().get() - position).max(0),
            })
        })
        .collect();
    json!({
        "vhost": forwarding.vhost,
        "exchange": forwarding.exchange,
        "routing_key": forwarding.routing_key_header.map_or_else(|| "key".to_owned(), |h| format!("header:{h}")),
        "group": group,
        "partitions": positions,
    })
}

fn find(shared: &AppState, name: &str) -> ApiResult<Arc<Topic>> {
    shared
        .broker
        .topics()
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("topic {name:?} does not exist")))
}

pub(crate) async fn describe(
    State(shared): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let topic = find(&shared, &name)?;
    Ok(Json(description(&shared, &topic)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTopic {
    name: String,
    #[serde(default = "one")]
    partitions: u32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

pub(crate) async fn create(
    State(shared): State<AppState>,
    Body(new): Body<NewTopic>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let broker = Arc::clone(&shared.broker);
    let topic = blocking(move || {
        let config = TopicConfig::new(new.configs)?;
        Ok(broker.topics().create(&new.name, new.partitions, config)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(description(&shared, &topic))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigChange {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    delete: Vec<String>,
}

pub(crate) async fn alter_configs(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    Body(change): Body<ConfigChange>,
) -> ApiResult<Json<Value>> {
    let topic = find(&shared, &name)?;
    let broker = Arc::clone(&shared.broker);
    blocking(move || {
        let mut config = topic.config();
        for key in change.delete {
            if !sluice_core::TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                return Err(ApiError::field(
                    "delete",
                    format!("unknown topic config {key}"),
                ));
            }
            config.remove(&key);
        }
        for (key, value) in change.set {
            config
                .set(key, value)
                .map_err(|error| ApiError::field("set", error.to_string()))?;
        }
        Ok(broker.set_topic_config(topic.name(), config)?)
    })
    .await?;
    let topic = find(&shared, &name)?;
    Ok(Json(description(&shared, &topic)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PartitionCount {
    count: u32,
}

pub(crate) async fn add_partitions(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    Body(wanted): Body<PartitionCount>,
) -> ApiResult<Json<Value>> {
    let broker = Arc::clone(&shared.broker);
    let topic_name = name.clone();
    blocking(
        move || match broker.topics().grow(&topic_name, wanted.count, false) {
            Err(error @ CoreError::InvalidPartitions { .. }) => {
                Err(ApiError::field("count", error.to_string()))
            }
            other => Ok(other?),
        },
    )
    .await?;
    let topic = find(&shared, &name)?;
    Ok(Json(description(&shared, &topic)))
}

pub(crate) async fn delete(
    State(shared): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let broker = Arc::clone(&shared.broker);
    blocking(move || Ok(broker.topics().delete(&name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
