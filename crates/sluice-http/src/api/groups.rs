//! `/api/groups`: Kafka groups of every kind (classic, consumer groups of
//! the new protocol, share groups) with their members, assignments,
//! committed offsets and lag, and a share group's records in flight,
//! acquired and archived; offset resets for stopped groups; delete.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::Position;
use sluice_core::share_groups::ShareCounts;
use sluice_core::{Broker, CommittedOffset, GroupState};
use sluice_types::PartitionId;

use super::{Paging, blocking};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path, Query};

/// Every group the broker knows: with members, or with committed offsets.
pub(crate) fn group_ids(broker: &Broker) -> Vec<String> {
    let mut ids: BTreeSet<String> = broker.offsets().group_ids().into_iter().collect();
    ids.extend(broker.groups().list().into_iter().map(|(id, _, _)| id));
    ids.extend(
        broker
            .consumer_groups()
            .list()
            .into_iter()
            .map(|(id, _)| id),
    );
    ids.extend(broker.share_groups().list().into_iter().map(|(id, _)| id));
    ids.into_iter().collect()
}

/// A group's kind, state and member count: a share group, a consumer
/// group of the new protocol (KIP-848), else a classic group.
fn kind(broker: &Broker, id: &str) -> (&'static str, String, usize) {
    if let Some(share) = broker.share_groups().describe(id) {
        return ("share", share.state.to_owned(), share.members.len());
    }
    if let Some(group) = broker.consumer_groups().describe(id) {
        return ("consumer", group.state.to_owned(), group.members.len());
    }
    let classic = broker.groups().describe(id);
    (
        "classic",
        classic
            .as_ref()
            .map_or(GroupState::Empty, |d| d.state)
            .name()
            .to_owned(),
        classic.map_or(0, |d| d.members.len()),
    )
}

/// Longest a share group's records wait for another node's count.
const SHARE_COUNTS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Share groups' records on every partition they read, group by group:
/// each partition's leader keeps them, this node or another one of the
/// cluster, asked over its message link (every node at once and once for
/// all the groups: a slow node costs one timeout). A partition two nodes
/// answer for (a leader that just moved) is taken from the node that
/// leads it now. Blocking.
fn share_counts(broker: &Broker, ids: &[String]) -> Vec<Vec<([u8; 16], i32, ShareCounts)>> {
    type Counted = std::collections::BTreeMap<([u8; 16], i32), (i32, ShareCounts)>;
    let own = broker.node_id();
    let mut all: Vec<Counted> = ids
        .iter()
        .map(|id| {
            broker
                .share_groups()
                .counts(id)
                .into_iter()
                .map(|(topic, partition, counts)| ((topic, partition), (own, counts)))
                .collect()
        })
        .collect();
    let metadata = broker.topics().metadata();
    if metadata.clustered() && !ids.is_empty() {
        let fenced = metadata.fenced();
        let others: Vec<i32> = metadata
            .brokers()
            .iter()
            .map(|b| b.node)
            .filter(|node| *node != own && !fenced.contains(node))
            .collect();
        let answers: Vec<(i32, Vec<sluice_core::share_groups::CountedShares>)> =
            std::thread::scope(|scope| {
                let asked: Vec<_> = others
                    .iter()
                    .map(|node| {
                        let node = *node;
                        scope.spawn(move || {
                            broker
                                .vhosts()
                                .share_counts_on(node, ids, SHARE_COUNTS_TIMEOUT)
                                .map(|counts| (node, counts))
                        })
                    })
                    .collect();
                asked
                    .into_iter()
                    .filter_map(|answer| answer.join().ok().flatten())
                    .collect()
            });
        let catalog = broker.topic_catalog();
        let leader = |topic: &[u8; 16], partition: i32| {
            let name = catalog.name_of(topic)?;
            let found = broker.topics().get(name)?;
            found
                .leader(sluice_types::PartitionId::from(partition))
                .map(|(leader, _)| leader)
        };
        for (node, counts) in answers {
            for (index, topic, partition, counted) in counts {
                let Some(group) = all.get_mut(index) else {
                    continue;
                };
                match group.entry((topic, partition)) {
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        entry.insert((node, counted));
                    }
                    std::collections::btree_map::Entry::Occupied(mut entry) => {
                        if leader(&topic, partition) == Some(node) {
                            entry.insert((node, counted));
                        }
                    }
                }
            }
        }
    }
    all.into_iter()
        .map(|group| {
            group
                .into_iter()
                .map(|((topic, partition), (_, counts))| (topic, partition, counts))
                .collect()
        })
        .collect()
}

/// A share group's records from its counts: per partition, and summed.
fn share_records(
    catalog: &sluice_core::consumer_groups::TopicCatalog,
    counted: Vec<([u8; 16], i32, ShareCounts)>,
) -> (Vec<Value>, Value) {
    let mut totals = (0u64, 0u64, 0u64);
    let partitions = counted
        .into_iter()
        .map(|(topic, partition, counts)| {
            totals.0 += counts.available;
            totals.1 += counts.acquired;
            totals.2 += counts.archived;
            json!({
                "topic": catalog.name_of(&topic).unwrap_or_default(),
                "partition": partition,
                "start_offset": counts.start,
                "available": counts.available,
                "acquired": counts.acquired,
                "archived": counts.archived,
            })
        })
        .collect();
    let summed = json!({
        "available": totals.0,
        "acquired": totals.1,
        "in_flight": totals.0 + totals.1,
        "archived": totals.2,
    });
    (partitions, summed)
}

/// `(topic, partition, committed, log end, lag)` of every committed offset.
fn committed(broker: &Broker, group: &str) -> Vec<(String, i32, CommittedOffset, Option<i64>)> {
    broker
        .offsets()
        .group(group)
        .into_iter()
        .filter(|(topic, _, _)| topic != sluice_core::consumer_groups::MEMBERSHIP_TOPIC)
        .map(|(topic, partition, offset)| {
            let end = broker
                .topics()
                .get(&topic)
                .and_then(|t| t.partition(PartitionId::from(partition)))
                .map(|p| p.high_watermark().get());
            (topic, partition, offset, end)
        })
        .collect()
}

fn lag(committed: &CommittedOffset, end: Option<i64>) -> Option<i64> {
    end.map(|end| (end - committed.offset).max(0))
}

/// A group's lag summed over the partitions it has committed offsets for.
pub(crate) fn total_lag(broker: &Broker, group: &str) -> i64 {
    committed(broker, group)
        .iter()
        .filter_map(|(_, _, offset, end)| lag(offset, *end))
        .sum()
}

/// Whether a group is the broker's own: the consumer of a topic forwarded
/// to an exchange (docs/bridging.md).
fn is_internal(group: &str) -> bool {
    group.starts_with(sluice_core::forwarding::FORWARD_GROUP_PREFIX)
        || group.starts_with(sluice_core::SHARE_STATE_PREFIX)
}

/// `?internal=false` leaves the broker's own groups out of a list.
#[derive(Debug, Deserialize)]
pub(crate) struct Internal {
    #[serde(default = "yes")]
    internal: bool,
}

fn yes() -> bool {
    true
}

pub(crate) async fn list(
    State(shared): State<AppState>,
    Query(paging): Query<Paging>,
    Query(shown): Query<Internal>,
) -> ApiResult<Json<Value>> {
    let broker = Arc::clone(&shared.broker);
    blocking(move || list_page(&broker, &paging, &shown)).await
}

/// A page of the groups list (blocking: a share group's records may be
/// asked of other nodes).
fn list_page(broker: &Broker, paging: &Paging, shown: &Internal) -> ApiResult<Json<Value>> {
    let mut ids = group_ids(broker);
    if !shown.internal {
        ids.retain(|id| !is_internal(id));
    }
    let (ids, total) = paging.apply(ids, String::clone)?;
    let items = ids
        .iter()
        .map(|id| {
            let description = broker.groups().describe(id);
            let total_lag = total_lag(broker, id);
            let (kind, state, members) = kind(broker, id);
            let item = json!({
                "group_id": id,
                "type": kind,
                "state": state,
                "protocol_type": match kind {
                    "classic" => description.as_ref().map_or("consumer", |d| d.protocol_type.as_str()),
                    other => other,
                },
                "members": members,
                "lag": total_lag,
                "internal": is_internal(id),
            });
            item
        })
        .collect::<Vec<Value>>();
    // Every share group's records on the page, asked of the other nodes
    // once for them all.
    let shares: Vec<String> = items
        .iter()
        .filter(|item| item["type"] == "share")
        .filter_map(|item| item["group_id"].as_str().map(str::to_owned))
        .collect();
    let catalog = broker.topic_catalog();
    let mut records = shares
        .iter()
        .cloned()
        .zip(share_counts(broker, &shares))
        .collect::<std::collections::HashMap<String, _>>();
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut item| {
            let counted = item["group_id"].as_str().and_then(|id| records.remove(id));
            if let Some(counted) = counted {
                item["records"] = share_records(&catalog, counted).1;
            }
            item
        })
        .collect();
    Ok(Json(paging.answer(items, total)))
}

/// `GET /api/topics/{topic}/groups`: the groups consuming a topic, that is
/// with committed offsets on it or members assigned some of its partitions.
pub(crate) async fn of_topic(
    State(shared): State<AppState>,
    Path(topic): Path<String>,
    Query(paging): Query<Paging>,
    Query(shown): Query<Internal>,
) -> ApiResult<Json<Value>> {
    let broker = &shared.broker;
    if broker.topics().get(&topic).is_none() {
        return Err(ApiError::not_found(format!(
            "topic {topic:?} does not exist"
        )));
    }
    let mut found = Vec::new();
    for id in group_ids(broker) {
        if !shown.internal && is_internal(&id) {
            continue;
        }
        let offsets: Vec<_> = committed(broker, &id)
            .into_iter()
            .filter(|(t, ..)| *t == topic)
            .collect();
        let description = broker.groups().describe(&id);
        let assigned_members = description.as_ref().map_or(0, |d| {
            if d.protocol_type != "consumer" {
                return 0;
            }
            d.members
                .iter()
                .filter(|m| {
                    assignments(&m.assignment)
                        .iter()
                        .any(|a| a["topic"].as_str() == Some(topic.as_str()))
                })
                .count()
        });
        if offsets.is_empty() && assigned_members == 0 {
            continue;
        }
        let lag: i64 = offsets
            .iter()
            .filter_map(|(_, _, offset, end)| lag(offset, *end))
            .sum();
        found.push(json!({
            "group_id": id,
            "state": description.as_ref().map_or(GroupState::Empty, |d| d.state).name(),
            "members": description.as_ref().map_or(0, |d| d.members.len()),
            "assigned_members": assigned_members,
            "partitions_committed": offsets.len(),
            "lag": lag,
            "internal": is_internal(&id),
        }));
    }
    let (items, total) = paging.apply(found, |g| {
        g["group_id"].as_str().unwrap_or_default().to_owned()
    })?;
    Ok(Json(paging.answer(items, total)))
}

/// The partitions a consumer-protocol assignment names.
fn assignments(assignment: &Bytes) -> Vec<Value> {
    let mut bytes = assignment.clone();
    if bytes.remaining() < 2 {
        return Vec::new();
    }
    let version = bytes.get_i16();
    let Ok(decoded) = ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3)) else {
        return Vec::new();
    };
    decoded
        .assigned_partitions
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(move |p| json!({"topic": topic.topic.as_str(), "partition": p}))
        })
        .collect()
}

/// A consumer group of the new protocol's or a share group's members,
/// with their assignments by topic name.
fn modern_members(broker: &Broker, id: &str) -> Option<(Vec<Value>, i32, &'static str)> {
    let catalog = broker.topic_catalog();
    let named = |assignment: &sluice_core::consumer_groups::Assignment| -> Vec<Value> {
        assignment
            .iter()
            .flat_map(|(topic, partitions)| {
                let name = catalog.name_of(topic).unwrap_or_default().to_owned();
                partitions
                    .iter()
                    .map(move |p| json!({"topic": name, "partition": p}))
            })
            .collect()
    };
    if let Some(share) = broker.share_groups().describe(id) {
        let members = share
            .members
            .iter()
            .map(|m| {
                json!({
                    "member_id": m.member_id,
                    "group_instance_id": null,
                    "member_epoch": m.member_epoch,
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                    "assignments": named(&m.assignment),
                })
            })
            .collect();
        return Some((members, share.group_epoch, "simple"));
    }
    let group = broker.consumer_groups().describe(id)?;
    let members = group
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "group_instance_id": m.instance_id,
                "member_epoch": m.member_epoch,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "assignments": named(&m.assignment),
                "target_assignments": named(&m.target),
            })
        })
        .collect();
    Some((members, group.group_epoch, group.assignor))
}

fn description(broker: &Broker, id: &str) -> ApiResult<Value> {
    let described = broker.groups().describe(id);
    let offsets = committed(broker, id);
    let modern = modern_members(broker, id);
    if described.is_none() && offsets.is_empty() && modern.is_none() {
        return Err(ApiError::not_found(format!("group {id:?} does not exist")));
    }
    let members: Vec<Value> = described
        .as_ref()
        .map(|d| {
            d.members
                .iter()
                .map(|m| {
                    json!({
                        "member_id": m.member_id,
                        "group_instance_id": m.group_instance_id,
                        "client_id": m.client_id,
                        "client_host": m.client_host,
                        "assignments": if d.protocol_type == "consumer" { assignments(&m.assignment) } else { Vec::new() },
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let offsets: Vec<Value> = offsets
        .iter()
        .map(|(topic, partition, offset, end)| {
            json!({
                "topic": topic,
                "partition": partition,
                "committed_offset": offset.offset,
                "log_end_offset": end,
                "lag": lag(offset, *end),
                "metadata": offset.metadata.clone().unwrap_or_default(),
            })
        })
        .collect();
    let (kind, state, _) = kind(broker, id);
    let mut answer = json!({
        "group_id": id,
        "type": kind,
        "state": state,
        "protocol_type": described.as_ref().map_or("consumer", |d| d.protocol_type.as_str()),
        "protocol": described.as_ref().map_or("", |d| d.protocol.as_str()),
        "members": members,
        "offsets": offsets,
        "configs": broker.group_config(id).overrides(),
    });
    if let Some((members, epoch, assignor)) = modern {
        answer["members"] = Value::Array(members);
        answer["group_epoch"] = json!(epoch);
        answer["protocol_type"] = json!(kind);
        answer["protocol"] = json!(assignor);
    }
    if kind == "share" {
        let counted = share_counts(broker, &[id.to_owned()])
            .pop()
            .unwrap_or_default();
        let (partitions, summed) = share_records(&broker.topic_catalog(), counted);
        answer["share_partitions"] = Value::Array(partitions);
        answer["records"] = summed;
    }
    Ok(answer)
}

pub(crate) async fn describe(
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let broker = Arc::clone(&shared.broker);
    Ok(Json(blocking(move || description(&broker, &id)).await?))
}

fn refuse_if_active(broker: &Broker, id: &str, action: &str) -> ApiResult<()> {
    match kind(broker, id) {
        (_, _, members) if members > 0 => Err(ApiError::precondition(format!(
            "group {id:?} has {members} active members; stop its consumers before you {action}",
        ))),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ResetTo {
    Earliest,
    Latest,
    Timestamp,
    Offset,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reset {
    topic: Option<String>,
    partitions: Option<Vec<i32>>,
    to: ResetTo,
    timestamp: Option<i64>,
    offset: Option<i64>,
}

pub(crate) async fn reset_offsets(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    Body(reset): Body<Reset>,
) -> ApiResult<Json<Value>> {
    if reset.partitions.is_some() && reset.topic.is_none() {
        return Err(ApiError::field("partitions", "partitions need a topic"));
    }
    let broker = Arc::clone(&shared.broker);
    blocking(move || {
        if group_ids(&broker).binary_search(&id).is_err() && reset.topic.is_none() {
            return Err(ApiError::not_found(format!("group {id:?} does not exist")));
        }
        refuse_if_active(&broker, &id, "reset its offsets")?;
        let topics: Vec<String> = match &reset.topic {
            Some(topic) => vec![topic.clone()],
            None => {
                let mut topics: Vec<String> = broker
                    .offsets()
                    .group(&id)
                    .into_iter()
                    .map(|(t, _, _)| t)
                    .collect();
                topics.dedup();
                topics
            }
        };
        let mut changes = Vec::new();
        for name in topics {
            let topic = broker.topics().get(&name).ok_or_else(|| {
                ApiError::field("topic", format!("topic {name:?} does not exist"))
            })?;
            let partitions: Vec<i32> = match (&reset.partitions, &reset.topic) {
                (Some(list), Some(_)) => list.clone(),
                _ => (0..topic.partition_count() as i32).collect(),
            };
            for partition in partitions {
                let target = topic
                    .partition(PartitionId::from(partition))
                    .ok_or_else(|| {
                        ApiError::field(
                            "partitions",
                            format!("topic {name:?} has no partition {partition}"),
                        )
                    })?;
                let (start, end) = (target.log_start().get(), target.high_watermark().get());
                let offset = match reset.to {
                    ResetTo::Earliest => start,
                    ResetTo::Latest => end,
                    ResetTo::Timestamp => {
                        let timestamp = reset.timestamp.ok_or_else(|| {
                            ApiError::field("timestamp", "to=timestamp needs a timestamp")
                        })?;
                        target
                            .resolve(Position::Timestamp(timestamp))?
                            .map_or(end, |(offset, _)| offset.get())
                    }
                    ResetTo::Offset => reset
                        .offset
                        .ok_or_else(|| ApiError::field("offset", "to=offset needs an offset"))?
                        .clamp(start, end),
                };
                changes.push((
                    name.clone(),
                    partition,
                    CommittedOffset {
                        offset,
                        leader_epoch: -1,
                        metadata: None,
                    },
                ));
            }
        }
        broker.offsets().commit(&id, &changes)?;
        description(&broker, &id).map(Json)
    })
    .await
}

pub(crate) async fn delete(
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let broker = Arc::clone(&shared.broker);
    blocking(move || {
        if group_ids(&broker).binary_search(&id).is_err() {
            return Err(ApiError::not_found(format!("group {id:?} does not exist")));
        }
        refuse_if_active(&broker, &id, "delete it")?;
        broker.offsets().delete_group(&id)?;
        broker
            .groups()
            .remove_if_empty(&id)
            .map_err(|error| ApiError::precondition(error.to_string()))?;
        let _ = broker.consumer_groups().remove_if_empty(&id);
        let _ = broker.share_groups().remove_if_empty(&id);
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
