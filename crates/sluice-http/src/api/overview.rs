//! `GET /api/overview`: the node at a glance.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiResult;

pub(crate) async fn show(State(shared): State<AppState>) -> ApiResult<Json<Value>> {
    let broker = &shared.broker;
    let topics = broker.topics().names();
    let partitions: usize = topics
        .iter()
        .filter_map(|name| broker.topics().get(name))
        .map(|topic| topic.partition_count())
        .sum();
    let mut groups = broker.offsets().group_ids();
    groups.extend(broker.groups().list().into_iter().map(|(id, _, _)| id));
    groups.sort();
    groups.dedup();
    let vhosts = broker.vhosts().all();
    let (mut exchanges, mut queues, mut ready, mut unacked) = (0, 0, 0, 0);
    for vhost in &vhosts {
        exchanges += vhost.exchange_list().len();
        for queue in vhost.queues() {
            queues += 1;
            ready += queue.message_count();
            unacked += queue.unacked_count();
        }
    }
    let connections = broker.connections().list();
    let channels: usize = connections.iter().map(|c| c.channel_count()).sum();
    let (kafka, amqp) = shared.rates.totals();
    let listeners = listeners(&shared);
    let monitor = broker.vhosts().memory();
    let cluster = broker.cluster_view();
    let nodes = super::cluster::nodes(&cluster);
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "cluster": {
            "clustered": cluster.clustered,
            "node_id": cluster.node_id,
            "controller": cluster.controller,
            "nodes": nodes,
            "under_replicated_partitions": cluster.under_replicated,
            "offline_partitions": cluster.offline,
            "partitions_led_here": cluster.led_here,
            "in_sync_shrinks": cluster.replication.in_sync_shrinks,
            "in_sync_expands": cluster.replication.in_sync_expands,
            "follower_lag_records": cluster.replication.follower_lag_records,
            "follower_lag_ms": cluster.replication.follower_lag_ms,
            "controller_changes": cluster.controller_changes,
        },
        "uptime_ms": u64::try_from(broker.uptime().as_millis()).unwrap_or(u64::MAX),
        "listeners": listeners,
        "totals": {
            "topics": topics.len(),
            "partitions": partitions,
            "groups": groups.len(),
            "vhosts": vhosts.len(),
            "exchanges": exchanges,
            "queues": queues,
            "connections": connections.len(),
            "channels": channels,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "rates": {
            "kafka_records_in": kafka[0],
            "kafka_bytes_in": kafka[1],
            "kafka_records_out": kafka[2],
            "kafka_bytes_out": kafka[3],
            "amqp_publish": amqp[0],
            "amqp_deliver": amqp[1],
            "amqp_ack": amqp[2],
        },
        "alarms": {
            "memory": monitor.memory_alarm(),
            "disk": monitor.disk_alarm(),
        },
        "memory_bytes": crate::metrics::resident_memory_bytes(),
    })))
}

/// The bound listeners as `[{"protocol", "address"}]`, for the overview
/// and the readiness check.
pub(crate) fn listeners(shared: &AppState) -> Vec<Value> {
    shared
        .options
        .listeners
        .iter()
        .map(|l| json!({"protocol": l.protocol, "address": l.address}))
        .collect()
}
