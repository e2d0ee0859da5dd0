//! Quorum queue membership on a cluster, as RabbitMQ's `rabbitmq-queues`:
//! `POST /api/queues/{vhost}/{queue}/members` adds a node to a queue,
//! `DELETE /api/queues/{vhost}/{queue}/members/{node}` removes one, `POST
//! /api/quorum/grow` and `POST /api/quorum/shrink` add or remove a node
//! on every quorum queue, and `POST /api/rebalance/queues[?vhost=]`
//! (RabbitMQ's path) spreads quorum queue leaders over the nodes.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::messaging::{GrowSelector, MemberChange};

use super::amqp::vhost;
use super::blocking;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path, Query};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberRequest {
    node: i32,
}

pub(crate) async fn add_member(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Body(request): Body<MemberRequest>,
) -> ApiResult<Json<Value>> {
    let vhost = vhost(&shared, &vhost_name)?;
    let members = blocking(move || Ok(vhost.add_quorum_member(&name, request.node)?)).await?;
    Ok(Json(json!({ "members": members })))
}

pub(crate) async fn delete_member(
    State(shared): State<AppState>,
    Path((vhost_name, name, node)): Path<(String, String, i32)>,
) -> ApiResult<Json<Value>> {
    let vhost = vhost(&shared, &vhost_name)?;
    let members = blocking(move || Ok(vhost.delete_quorum_member(&name, node)?)).await?;
    Ok(Json(json!({ "members": members })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrowRequest {
    node: i32,
    /// `all` (the default) or `even`: only queues with an even number of
    /// members.
    #[serde(default)]
    selector: Option<String>,
    /// Only this virtual host's queues.
    #[serde(default)]
    vhost: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShrinkRequest {
    node: i32,
    #[serde(default)]
    vhost: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RebalanceRequest {
    #[serde(default)]
    vhost: Option<String>,
}

fn changes_json(changes: &[MemberChange]) -> Value {
    let list: Vec<Value> = changes
        .iter()
        .map(|change| match &change.outcome {
            Ok(members) => json!({
                "vhost": change.vhost,
                "queue": change.queue,
                "members": members,
            }),
            Err(error) => json!({
                "vhost": change.vhost,
                "queue": change.queue,
                "error": error,
            }),
        })
        .collect();
    json!({ "queues": list })
}

/// A registered node of a cluster, or the reason it is not one.
fn check_node(shared: &AppState, node: i32) -> ApiResult<()> {
    let metadata = shared.broker.topics().metadata();
    if !metadata.clustered() {
        return Err(ApiError::field(
            "node",
            "a cluster of one has no quorum queue members to change",
        ));
    }
    if !metadata.brokers().iter().any(|broker| broker.node == node) {
        return Err(ApiError::field(
            "node",
            format!("no node {node} in the cluster"),
        ));
    }
    Ok(())
}

/// Checks a grow or shrink's node and virtual host, then runs it off the
/// async workers.
async fn member_changes(
    shared: &AppState,
    node: i32,
    vhost_name: Option<String>,
    run: impl FnOnce(&sluice_core::messaging::VirtualHosts, Option<&str>) -> Vec<MemberChange>
    + Send
    + 'static,
) -> ApiResult<Json<Value>> {
    check_node(shared, node)?;
    if let Some(name) = &vhost_name {
        vhost(shared, name)?;
    }
    let broker = Arc::clone(&shared.broker);
    let changes = blocking(move || Ok(run(broker.vhosts(), vhost_name.as_deref()))).await?;
    Ok(Json(changes_json(&changes)))
}

pub(crate) async fn grow(
    State(shared): State<AppState>,
    Body(request): Body<GrowRequest>,
) -> ApiResult<Json<Value>> {
    let selector = match request.selector.as_deref() {
        None | Some("all") => GrowSelector::All,
        Some("even") => GrowSelector::Even,
        Some(other) => {
            return Err(ApiError::field(
                "selector",
                format!("unknown selector {other:?}: all or even"),
            ));
        }
    };
    let node = request.node;
    member_changes(&shared, node, request.vhost, move |hosts, vhost| {
        hosts.grow_quorum(node, selector, vhost)
    })
    .await
}

pub(crate) async fn shrink(
    State(shared): State<AppState>,
    Body(request): Body<ShrinkRequest>,
) -> ApiResult<Json<Value>> {
    let node = request.node;
    member_changes(&shared, node, request.vhost, move |hosts, vhost| {
        hosts.shrink_quorum(node, vhost)
    })
    .await
}

pub(crate) async fn rebalance(
    State(shared): State<AppState>,
    Query(request): Query<RebalanceRequest>,
) -> ApiResult<Json<Value>> {
    if let Some(name) = &request.vhost {
        vhost(&shared, name)?;
    }
    let broker = Arc::clone(&shared.broker);
    let moves =
        blocking(move || Ok(broker.vhosts().rebalance_quorum(request.vhost.as_deref()))).await?;
    let list: Vec<Value> = moves
        .iter()
        .map(|moved| {
            json!({
                "vhost": moved.vhost,
                "queue": moved.queue,
                "from": moved.from,
                "to": moved.to,
            })
        })
        .collect();
    Ok(Json(json!({ "moved": list })))
}
