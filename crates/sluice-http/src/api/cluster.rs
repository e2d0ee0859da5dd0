//! `GET /api/cluster`: the nodes (role, fencing) and every partition as
//! the metadata places it, on any node, and the moves under way;
//! `POST /api/cluster/elect-leaders`: preferred (or unclean) leader
//! elections through the controller; `POST /api/cluster/reassign`: a
//! partition moves to other replicas; `POST
//! /api/cluster/nodes/{id}/decommission`: a node's replicas move away and
//! it leaves the cluster.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{ClusterView, Election, PartitionPlacement};

use super::blocking;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;

pub(crate) async fn show(State(shared): State<AppState>) -> ApiResult<Json<Value>> {
    let broker = Arc::clone(&shared.broker);
    let (view, placements, moving, connections) = blocking(move || {
        let view = broker.cluster_view();
        let connections = node_connections(&broker, &view);
        Ok((
            view,
            broker.cluster_partitions(),
            broker.topics().reassignments(),
            connections,
        ))
    })
    .await?;
    let mut nodes = nodes(&view);
    for node in &mut nodes {
        let id = node["id"].as_i64().and_then(|id| i32::try_from(id).ok());
        node["connections"] = match id.and_then(|id| connections.get(&id)) {
            Some((kafka, amqp)) => json!({ "kafka": kafka, "amqp": amqp }),
            None => Value::Null,
        };
    }
    let partitions: Vec<Value> = placements.iter().map(placement).collect();
    let reassignments: Vec<Value> = moving
        .iter()
        .map(|m| {
            json!({
                "topic": m.topic,
                "partition": m.partition,
                "replicas": m.replicas,
                "adding_replicas": m.adding,
                "removing_replicas": m.removing,
            })
        })
        .collect();
    Ok(Json(json!({
        "clustered": view.clustered,
        "node_id": view.node_id,
        "controller": view.controller,
        "nodes": nodes,
        "partitions": partitions,
        "reassignments": reassignments,
        "under_replicated_partitions": placements.iter().filter(|p| p.under_replicated()).count(),
        "offline_partitions": placements.iter().filter(|p| p.offline()).count(),
    })))
}

/// Longest `/api/cluster` waits for another node to count its connections.
const CONNECTIONS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The client connections open on each live node (Kafka, AMQP): this
/// node's own, the others' asked over their message links, all at once
/// (a slow node costs one timeout, not one each). Blocking.
fn node_connections(
    broker: &sluice_core::Broker,
    view: &ClusterView,
) -> std::collections::BTreeMap<i32, (u64, u64)> {
    let others: Vec<i32> = view
        .nodes
        .iter()
        .map(|n| n.node)
        .filter(|node| *node != view.node_id && !view.fenced.contains(node))
        .collect();
    let mut counts: std::collections::BTreeMap<i32, (u64, u64)> = std::thread::scope(|scope| {
        let asked: Vec<_> = others
            .iter()
            .map(|node| {
                (
                    *node,
                    scope.spawn(move || broker.vhosts().connections_on(*node, CONNECTIONS_TIMEOUT)),
                )
            })
            .collect();
        asked
            .into_iter()
            .filter_map(|(node, answer)| Some((node, answer.join().ok()??)))
            .collect()
    });
    if !view.fenced.contains(&view.node_id) {
        counts.insert(view.node_id, broker.connections().open_counts());
    }
    counts
}

/// The registered nodes as the overview and `/api/cluster` show them.
pub(crate) fn nodes(view: &ClusterView) -> Vec<Value> {
    view.nodes
        .iter()
        .map(|n| {
            let controller = n.node == view.controller;
            let voter = view.voters.contains(&n.node);
            json!({
                "id": n.node,
                "kafka": format!("{}:{}", n.host, n.port),
                "role": if controller { "controller" } else if voter { "voter" } else { "broker" },
                "controller": controller,
                "voter": voter,
                "fenced": view.fenced.contains(&n.node),
                "decommissioning": view.leaving.contains(&n.node),
                // Classic AMQP queues living there (their home).
                "queues": view.queue_homes.get(&n.node).copied().unwrap_or(0),
                // Quorum queues led there.
                "quorum_leaders": view.quorum_leaders.get(&n.node).copied().unwrap_or(0),
                "this_node": n.node == view.node_id,
            })
        })
        .collect()
}

fn placement(p: &PartitionPlacement) -> Value {
    json!({
        "topic": p.topic,
        "partition": p.partition,
        "leader": if p.offline() { -1 } else { p.leader },
        "leader_epoch": p.leader_epoch,
        "replicas": p.replicas,
        "in_sync_replicas": p.in_sync,
        "offline_replicas": p.offline_replicas,
        "under_replicated": p.under_replicated(),
        "offline": p.offline(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ElectionRequest {
    /// One topic; every topic when absent.
    #[serde(default)]
    topic: Option<String>,
    /// One partition of `topic`; every partition when absent.
    #[serde(default)]
    partition: Option<u32>,
    /// Any live replica of a partition whose leader is fenced, losing
    /// what only the others had (Kafka's unclean election).
    #[serde(default)]
    unclean: bool,
}

pub(crate) async fn elect_leaders(
    State(shared): State<AppState>,
    Body(request): Body<ElectionRequest>,
) -> ApiResult<Json<Value>> {
    if request.partition.is_some() && request.topic.is_none() {
        return Err(ApiError::field("partition", "a partition needs its topic"));
    }
    let broker = Arc::clone(&shared.broker);
    let results = blocking(move || {
        let targets: Vec<(String, u32)> = broker
            .cluster_partitions()
            .into_iter()
            .filter(|p| request.topic.as_ref().is_none_or(|t| *t == p.topic))
            .filter(|p| {
                request
                    .partition
                    .is_none_or(|wanted| i64::from(wanted) == i64::from(p.partition))
            })
            .map(|p| (p.topic, p.partition as u32))
            .collect();
        if targets.is_empty() {
            return Err(ApiError::not_found(
                match (&request.topic, request.partition) {
                    (Some(topic), Some(partition)) => {
                        format!("no replicated partition {partition} of topic {topic:?}")
                    }
                    (Some(topic), None) => format!("no replicated partitions of topic {topic:?}"),
                    _ => "no replicated partitions".to_owned(),
                },
            ));
        }
        let mut results = Vec::new();
        // One answer per partition: a failure (the quorum, say) does not
        // hide the elections already made.
        for (topic, partition) in targets {
            let (outcome, leader, error) =
                match broker.topics().elect(&topic, partition, request.unclean) {
                    Ok(Election::Elected(leader)) => ("elected", Some(leader), None),
                    Ok(Election::NotNeeded) => ("not_needed", None, None),
                    Ok(Election::NotAvailable) => ("not_available", None, None),
                    Err(error) => ("failed", None, Some(error.to_string())),
                };
            results.push(json!({
                "topic": topic,
                "partition": partition,
                "outcome": outcome,
                "leader": leader,
                "error": error,
            }));
        }
        Ok(results)
    })
    .await?;
    Ok(Json(json!({ "results": results })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReassignRequest {
    topic: String,
    partition: u32,
    /// The replicas to move to, the preferred leader first; null cancels
    /// the move under way.
    replicas: Option<Vec<i32>>,
}

pub(crate) async fn reassign(
    State(shared): State<AppState>,
    Body(request): Body<ReassignRequest>,
) -> ApiResult<Json<Value>> {
    let broker = Arc::clone(&shared.broker);
    let cancel = request.replicas.is_none();
    blocking(move || {
        broker
            .topics()
            .reassign(&request.topic, request.partition, request.replicas)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(json!({
        "outcome": if cancel { "cancelled" } else { "started" },
    })))
}

pub(crate) async fn decommission(
    State(shared): State<AppState>,
    Path(node): Path<i32>,
) -> ApiResult<Json<Value>> {
    let broker = Arc::clone(&shared.broker);
    blocking(move || {
        if !broker.topics().metadata().clustered() {
            return Err(ApiError::field(
                "node",
                "a cluster of one has no node to decommission",
            ));
        }
        if !broker
            .topics()
            .metadata()
            .brokers()
            .iter()
            .any(|b| b.node == node)
        {
            return Err(ApiError::not_found(format!(
                "no node {node} in the cluster"
            )));
        }
        broker
            .topics()
            .metadata()
            .decommission(node)
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(json!({ "node": node, "outcome": "decommissioning" })))
}
