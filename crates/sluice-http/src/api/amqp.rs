//! Virtual hosts, exchanges, queues and bindings (`/api/vhosts`,
//! `/api/exchanges`, `/api/queues`, `/api/bindings`): list, declare,
//! delete, purge, bind, unbind, publish a message, peek at or take messages.
//! The API acts as connection 0, which owns nothing: another connection's
//! exclusive queue is refused as it would be over AMQP.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::messaging::{
    Binding, Destination, Exchange, ExchangeOptions, Message, Queue, QueueArgs, QueueDefinition,
    QueueOptions, VirtualHost, short,
};

use super::tables::{properties_from_json, properties_to_json, table_from_json, table_to_json};
use super::{Encoding, Paging, blocking};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path, Query};

/// The connection id the API acts as; no AMQP connection has it.
const API_CONNECTION: u64 = 0;
/// Most messages one peek or get returns.
const MAX_MESSAGES: usize = 1000;

pub(super) fn vhost(shared: &AppState, name: &str) -> ApiResult<Arc<VirtualHost>> {
    shared
        .broker
        .vhosts()
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no vhost '{name}'")))
}

/// The virtual hosts a list covers: one (`?vhost=`) or all.
fn covered(shared: &AppState, only: Option<&str>) -> ApiResult<Vec<Arc<VirtualHost>>> {
    match only {
        Some(name) => Ok(vec![vhost(shared, name)?]),
        None => Ok(shared.broker.vhosts().all()),
    }
}

fn vhosts_list(shared: &AppState, paging: &Paging) -> ApiResult<Value> {
    let (hosts, total) = paging.apply(shared.broker.vhosts().all(), |v| v.name().to_owned())?;
    let items = hosts
        .iter()
        .map(|vhost| {
            let queues = vhost.queues();
            json!({
                "name": vhost.name(),
                "exchanges": vhost.exchange_list().len(),
                "queues": queues.len(),
                "messages_ready": queues.iter().map(|q| q.message_count()).sum::<usize>(),
                "messages_unacknowledged": queues.iter().map(|q| q.unacked_count()).sum::<usize>(),
            })
        })
        .collect();
    Ok(paging.answer(items, total))
}

pub(crate) async fn vhosts(
    State(shared): State<AppState>,
    Query(paging): Query<Paging>,
) -> ApiResult<Json<Value>> {
    Ok(Json(vhosts_list(&shared, &paging)?))
}

fn exchange_json(vhost: &str, exchange: &Exchange) -> Value {
    json!({
        "vhost": vhost,
        "name": exchange.name,
        "type": exchange.kind.as_str(),
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": table_to_json(&exchange.arguments),
        "bindings": exchange.binding_count(),
    })
}

pub(crate) async fn exchanges(
    State(shared): State<AppState>,
    Query(paging): Query<Paging>,
) -> ApiResult<Json<Value>> {
    let mut all = Vec::new();
    for vhost in covered(&shared, paging.vhost.as_deref())? {
        for exchange in vhost.exchange_list() {
            all.push((vhost.name().to_owned(), exchange));
        }
    }
    let (page, total) = paging.apply(all, |(vhost, e)| format!("{}\u{0}{vhost}", e.name))?;
    let items = page.iter().map(|(v, e)| exchange_json(v, e)).collect();
    Ok(Json(paging.answer(items, total)))
}

/// RabbitMQ's management API name for the default exchange.
const DEFAULT_EXCHANGE_ALIAS: &str = "amq.default";

/// An exchange name from a path: `amq.default` is the default exchange.
fn exchange_name(name: String) -> String {
    if name == DEFAULT_EXCHANGE_ALIAS {
        String::new()
    } else {
        name
    }
}

fn find_exchange(vhost: &VirtualHost, name: &str) -> ApiResult<Arc<Exchange>> {
    vhost.exchange(name).ok_or_else(|| {
        ApiError::not_found(format!("no exchange '{name}' in vhost '{}'", vhost.name()))
    })
}

pub(crate) async fn exchange(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let vhost = vhost(&shared, &vhost_name)?;
    let exchange = find_exchange(&vhost, &exchange_name(name))?;
    Ok(Json(exchange_json(vhost.name(), &exchange)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewExchange {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Value,
}

pub(crate) async fn declare_exchange(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Body(new): Body<NewExchange>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let vhost = vhost(&shared, &vhost_name)?;
    let options = ExchangeOptions {
        durable: new.durable,
        auto_delete: new.auto_delete,
        internal: new.internal,
        arguments: table_from_json(&new.arguments, "arguments")?,
    };
    if !["direct", "fanout", "topic", "headers"].contains(&new.kind.as_str()) {
        return Err(ApiError::field(
            "type",
            format!(
                "exchange type must be direct, fanout, topic or headers, got {:?}",
                new.kind
            ),
        ));
    }
    let name = exchange_name(name);
    let declared = Arc::clone(&vhost);
    let declared_name = name.clone();
    blocking(move || Ok(declared.declare_exchange(&declared_name, &new.kind, options, false)?))
        .await?;
    let exchange = find_exchange(&vhost, &name)?;
    Ok((
        StatusCode::CREATED,
        Json(exchange_json(vhost.name(), &exchange)),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteConditions {
    #[serde(default)]
    if_unused: bool,
    #[serde(default)]
    if_empty: bool,
}

pub(crate) async fn delete_exchange(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Query(conditions): Query<DeleteConditions>,
) -> ApiResult<StatusCode> {
    let vhost = vhost(&shared, &vhost_name)?;
    let name = exchange_name(name);
    find_exchange(&vhost, &name)?;
    blocking(move || Ok(vhost.delete_exchange(&name, conditions.if_unused)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Publish {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    properties: Value,
}

pub(crate) async fn publish(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Body(request): Body<Publish>,
) -> ApiResult<Json<Value>> {
    let vhost = vhost(&shared, &vhost_name)?;
    let name = exchange_name(name);
    if request.routing_key.len() > 255 {
        return Err(ApiError::field(
            "routing_key",
            "routing_key is at most 255 bytes",
        ));
    }
    let message = Message {
        exchange: short(&name),
        routing_key: short(&request.routing_key),
        properties: properties_from_json(&request.properties)?,
        body: Bytes::from(request.encoding.decode(&request.payload, "payload")?),
    };
    ApiError::admit(&shared.broker)?;
    blocking(move || {
        let outcome = vhost.publish(&name, message)?;
        outcome.acks.wait()?;
        Ok(Json(json!({
            "routed": outcome.queues > 0,
            "queues": outcome.queues,
            "rejected": outcome.rejected,
        })))
    })
    .await
}

/// Most messages one batch publish may carry.
const MAX_BATCH: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchMessage {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    properties: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishBatch {
    messages: Vec<BatchMessage>,
    #[serde(default)]
    encoding: Encoding,
}

/// `POST …/messages`: many messages in one request, published in order,
/// answered once every persistent one is on disk (as AMQP confirms are):
/// one sync per queue log covers the whole batch. Every message is decoded
/// before any is published, so a malformed one changes nothing.
pub(crate) async fn publish_batch(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Body(request): Body<PublishBatch>,
) -> ApiResult<Json<Value>> {
    let vhost = vhost(&shared, &vhost_name)?;
    let name = exchange_name(name);
    let total = request.messages.len();
    if !(1..=MAX_BATCH).contains(&total) {
        return Err(ApiError::field(
            "messages",
            format!("send 1 to {MAX_BATCH} messages, got {total}"),
        ));
    }
    find_exchange(&vhost, &name)?;
    let mut messages = Vec::with_capacity(total);
    for (index, new) in request.messages.into_iter().enumerate() {
        if new.routing_key.len() > 255 {
            return Err(ApiError::field(
                "routing_key",
                format!("routing_key of message {index} is longer than 255 bytes"),
            ));
        }
        messages.push(Message {
            exchange: short(&name),
            routing_key: short(&new.routing_key),
            properties: properties_from_json(&new.properties)?,
            body: Bytes::from(request.encoding.decode(&new.payload, "payload")?),
        });
    }
    ApiError::admit(&shared.broker)?;
    blocking(move || {
        let mut acks = sluice_core::Acks::default();
        let (mut routed, mut unroutable, mut rejected) = (0usize, Vec::new(), Vec::new());
        let mut failure = None;
        for (index, message) in messages.into_iter().enumerate() {
            let outcome = match vhost.publish(&name, message) {
                Ok(outcome) => outcome,
                Err(error) => {
                    failure = Some((index, ApiError::from(error)));
                    break;
                }
            };
            if outcome.queues > 0 {
                routed += 1;
            } else {
                unroutable.push(index);
            }
            if outcome.rejected {
                rejected.push(index);
            }
            acks.merge(outcome.acks);
        }
        // What was published before a refusal is made durable all the same.
        acks.wait()?;
        if let Some((index, mut error)) = failure {
            error.message = format!(
                "message {index} refused, after {index} of {total} were published: {}",
                error.message
            );
            return Err(error);
        }
        Ok(Json(json!({
            "published": total,
            "routed": routed,
            "unroutable": unroutable,
            "rejected": rejected,
        })))
    })
    .await
}

fn queue_json(shared: &AppState, vhost: &str, queue: &Queue) -> Value {
    let options = queue.options();
    let rates = shared.rates.queue(vhost, queue.name());
    let ready = queue.message_count();
    let unacked = queue.unacked_count();
    let clustered = shared.broker.topics().metadata().clustered();
    // The node holding its messages (RabbitMQ's `node`); a stream's are
    // its topic's, on every node.
    let node = (clustered && queue.stream_topic().is_none()).then(|| shared.broker.node_id());
    // As RabbitMQ shows quorum queues: the leader, the members and those
    // online (a classic queue's one member is its home).
    let (members, online) = match placement(shared, vhost, queue.name()) {
        Some((members, online)) => (Some(members), Some(online)),
        None => (node.map(|n| vec![n]), node.map(|n| vec![n])),
    };
    json!({
        "vhost": vhost,
        "name": queue.name(),
        "type": queue.queue_type().as_str(),
        "node": node,
        "leader": node,
        "members": members,
        "online": online,
        "state": "running",
        "topic": queue.stream_topic().map(|topic| topic.name()),
        "durable": options.durable,
        "auto_delete": options.auto_delete,
        "exclusive": options.exclusive_owner.is_some(),
        "arguments": table_to_json(&options.arguments),
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "messages_paged_out": queue.paged_out_count(),
        "consumers": queue.consumer_count(),
        "publish_rate": rates[0],
        "deliver_rate": rates[1],
        "ack_rate": rates[2],
        "redeliver_rate": rates[3],
    })
}

/// A classic queue living on another node of the cluster: its definition
/// (its counts are its home's).
/// A quorum queue's members and those in sync and not fenced, on a
/// cluster.
fn placement(shared: &AppState, vhost: &str, name: &str) -> Option<(Vec<i32>, Vec<i32>)> {
    let placement = shared.broker.vhosts().get(vhost)?.quorum_placement(name)?;
    let fenced = shared.broker.topics().metadata().fenced();
    let online = placement
        .in_sync
        .into_iter()
        .filter(|n| !fenced.contains(n))
        .collect();
    Some((placement.members, online))
}

fn remote_queue_json(shared: &AppState, vhost: &str, queue: &QueueDefinition) -> Value {
    let fenced = shared.broker.topics().metadata().fenced();
    let (members, online) = placement(shared, vhost, &queue.name).unwrap_or_else(|| {
        let home: Vec<i32> = queue.home.into_iter().collect();
        let online = home
            .iter()
            .copied()
            .filter(|h| !fenced.contains(h))
            .collect();
        (home, online)
    });
    let kind = sluice_core::messaging::QueueArgs::parse(&queue.name, vhost, &queue.arguments)
        .map_or("classic", |args| args.queue_type.as_str());
    json!({
        "vhost": vhost,
        "name": queue.name,
        "type": kind,
        "node": queue.home,
        "leader": queue.home,
        "members": members,
        "online": online,
        "state": "remote",
        "topic": null,
        "durable": true,
        "auto_delete": queue.auto_delete,
        "exclusive": false,
        "arguments": table_to_json(&queue.arguments),
        "messages": null,
        "messages_ready": null,
        "messages_unacknowledged": null,
        "messages_paged_out": null,
        "consumers": null,
        "publish_rate": null,
        "deliver_rate": null,
        "ack_rate": null,
        "redeliver_rate": null,
    })
}

/// A queue as a list shows it: held here, or living on another node.
enum Listed {
    Local(Arc<Queue>),
    Remote(QueueDefinition),
}

impl Listed {
    fn name(&self) -> &str {
        match self {
            Listed::Local(queue) => queue.name(),
            Listed::Remote(queue) => &queue.name,
        }
    }
}

pub(crate) async fn queues(
    State(shared): State<AppState>,
    Query(paging): Query<Paging>,
) -> ApiResult<Json<Value>> {
    let mut all = Vec::new();
    for vhost in covered(&shared, paging.vhost.as_deref())? {
        for queue in vhost.queues() {
            all.push((vhost.name().to_owned(), Listed::Local(queue)));
        }
        for queue in vhost.remote_queues() {
            all.push((vhost.name().to_owned(), Listed::Remote(queue)));
        }
    }
    let (page, total) = paging.apply(all, |(vhost, q)| format!("{}\u{0}{vhost}", q.name()))?;
    let items = page
        .iter()
        .map(|(v, q)| match q {
            Listed::Local(queue) => queue_json(&shared, v, queue),
            Listed::Remote(queue) => remote_queue_json(&shared, v, queue),
        })
        .collect();
    Ok(Json(paging.answer(items, total)))
}

fn find_queue(vhost: &VirtualHost, name: &str) -> ApiResult<Arc<Queue>> {
    vhost.queue(name).ok_or_else(|| {
        ApiError::not_found(format!("no queue '{name}' in vhost '{}'", vhost.name()))
    })
}

pub(crate) async fn queue(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let vhost = vhost(&shared, &vhost_name)?;
    Ok(Json(shown_queue(&shared, &vhost, &name)?))
}

/// A queue as `GET /api/queues/{vhost}/{queue}` shows it: held here, or
/// living on another node (a quorum queue led elsewhere, say).
fn shown_queue(shared: &AppState, vhost: &VirtualHost, name: &str) -> ApiResult<Value> {
    if vhost.queue(name).is_none()
        && let Some(remote) = vhost.remote_queue(name)
    {
        return Ok(remote_queue_json(shared, vhost.name(), &remote));
    }
    let queue = find_queue(vhost, name)?;
    Ok(queue_json(shared, vhost.name(), &queue))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewQueue {
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Value,
}

pub(crate) async fn declare_queue(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Body(new): Body<NewQueue>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let vhost = vhost(&shared, &vhost_name)?;
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::field("name", "queue names are 1 to 255 bytes"));
    }
    let options = QueueOptions {
        durable: new.durable,
        exclusive_owner: None,
        auto_delete: new.auto_delete,
        arguments: table_from_json(&new.arguments, "arguments")?,
    };
    // Checked here for plain words; over AMQP the same refusal carries
    // RabbitMQ's text, which clients match on.
    QueueArgs::check(&options.arguments)
        .map_err(|invalid| ApiError::field("arguments", invalid.to_string()))?;
    let declared = Arc::clone(&vhost);
    let queue_name = name.clone();
    blocking(move || Ok(declared.declare_queue(&queue_name, options, false, API_CONNECTION)?))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(shown_queue(&shared, &vhost, &name)?),
    ))
}

pub(crate) async fn delete_queue(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Query(conditions): Query<DeleteConditions>,
) -> ApiResult<StatusCode> {
    let vhost = vhost(&shared, &vhost_name)?;
    if vhost.remote_queue(&name).is_none() {
        find_queue(&vhost, &name)?;
    }
    blocking(move || {
        Ok(vhost.delete_queue(
            &name,
            conditions.if_unused,
            conditions.if_empty,
            API_CONNECTION,
        )?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn purge(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let vhost = vhost(&shared, &vhost_name)?;
    if vhost.remote_queue(&name).is_none() {
        find_queue(&vhost, &name)?;
    }
    let purged = blocking(move || Ok(vhost.purge_queue(&name, API_CONNECTION)?)).await?;
    Ok(Json(json!({ "purged": purged })))
}

fn message_json(message: &Message, redelivered: bool, encoding: Encoding) -> Value {
    json!({
        "exchange": message.exchange.as_str(),
        "routing_key": message.routing_key.as_str(),
        "redelivered": redelivered,
        "payload": encoding.encode(&message.body),
        "payload_bytes": message.body.len(),
        "properties": properties_to_json(&message.properties),
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct PeekQuery {
    count: Option<usize>,
    #[serde(default)]
    encoding: Encoding,
}

fn check_count(count: usize) -> ApiResult<usize> {
    if (1..=MAX_MESSAGES).contains(&count) {
        Ok(count)
    } else {
        Err(ApiError::field(
            "count",
            format!("count must be between 1 and {MAX_MESSAGES}, got {count}"),
        ))
    }
}

pub(crate) async fn peek(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Query(query): Query<PeekQuery>,
) -> ApiResult<Json<Value>> {
    let vhost = vhost(&shared, &vhost_name)?;
    let queue = find_queue(&vhost, &name)?;
    if !queue.usable_by(API_CONNECTION) {
        return Err(ApiError::new(
            crate::error::ErrorCode::Forbidden,
            format!("queue {name:?} is exclusive to another connection"),
        ));
    }
    let count = check_count(query.count.unwrap_or(10))?;
    // A stream queue peeks at its topic's oldest records; a paged queue
    // reads its disk: both block.
    let messages: Vec<Value> = blocking(move || {
        Ok(queue
            .peek(count)
            .iter()
            .map(|(message, redelivered)| message_json(message, *redelivered, query.encoding))
            .collect())
    })
    .await?;
    Ok(Json(
        json!({ "messages": messages, "encoding": query.encoding.name() }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Get {
    #[serde(default = "one")]
    count: usize,
    /// Older spelling: `true` is `ack_requeue_false`, `false` `reject_requeue_true`.
    #[serde(default)]
    ack: Option<bool>,
    #[serde(default)]
    ackmode: Option<AckMode>,
    #[serde(default)]
    encoding: Encoding,
}

/// What happens to messages taken by `get`, as RabbitMQ's management API
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AckMode {
    /// Acknowledged: removed from the queue.
    AckRequeueFalse,
    /// Put back at the head, marked redelivered.
    AckRequeueTrue,
    /// Put back at the head, marked redelivered.
    RejectRequeueTrue,
    /// Rejected: dead-lettered when the queue has a dead-letter exchange,
    /// else dropped.
    RejectRequeueFalse,
}

fn one() -> usize {
    1
}

pub(crate) async fn get(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Body(request): Body<Get>,
) -> ApiResult<Json<Value>> {
    let vhost = vhost(&shared, &vhost_name)?;
    let queue = vhost.usable_queue(&name, API_CONNECTION)?;
    let count = check_count(request.count)?;
    let mode = match (request.ackmode, request.ack) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("ackmode", "give ackmode or ack, not both"));
        }
        (Some(mode), None) => mode,
        (None, Some(false)) => AckMode::RejectRequeueTrue,
        (None, Some(true) | None) => AckMode::AckRequeueFalse,
    };
    blocking(move || {
        let mut taken = Vec::new();
        let mut messages = Vec::new();
        for _ in 0..count {
            let (taken_one, dead) = queue.get(false)?;
            vhost.dead_letter(dead);
            let Some((seq, message, redelivered, _)) = taken_one else {
                break;
            };
            messages.push(message_json(&message, redelivered, request.encoding));
            taken.push(seq);
        }
        match mode {
            AckMode::AckRequeueFalse => queue.ack(&taken)?,
            AckMode::AckRequeueTrue | AckMode::RejectRequeueTrue => {
                vhost.dead_letter(queue.reject(&taken, true)?);
            }
            AckMode::RejectRequeueFalse => vhost.dead_letter(queue.reject(&taken, false)?),
        }
        Ok(Json(
            json!({ "messages": messages, "encoding": request.encoding.name() }),
        ))
    })
    .await
}

pub(crate) async fn bindings(
    State(shared): State<AppState>,
    Query(paging): Query<Paging>,
) -> ApiResult<Json<Value>> {
    let mut all = Vec::new();
    for vhost in covered(&shared, paging.vhost.as_deref())? {
        for binding in vhost.bindings() {
            all.push((vhost.name().to_owned(), binding));
        }
    }
    let (page, total) = paging.apply(all, |(vhost, b)| {
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{vhost}",
            b.source,
            b.destination.name(),
            b.routing_key
        )
    })?;
    let items = page
        .iter()
        .map(|(vhost, binding)| binding_json(vhost, binding))
        .collect();
    Ok(Json(paging.answer(items, total)))
}

fn binding_json(vhost: &str, binding: &Binding) -> Value {
    let (destination_type, destination) = match &binding.destination {
        Destination::Queue(name) => ("queue", name),
        Destination::Exchange(name) => ("exchange", name),
    };
    json!({
        "vhost": vhost,
        "source": binding.source,
        "destination": destination,
        "destination_type": destination_type,
        "routing_key": binding.routing_key,
        "arguments": table_to_json(&binding.arguments),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BindingSpec {
    vhost: String,
    source: String,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Value,
}

impl BindingSpec {
    fn parts(&self) -> ApiResult<(Destination, FieldTable)> {
        let destination = match self.destination_type.as_str() {
            "queue" => Destination::Queue(self.destination.clone()),
            "exchange" => Destination::Exchange(self.destination.clone()),
            other => {
                return Err(ApiError::field(
                    "destination_type",
                    format!("destination_type must be queue or exchange, got {other:?}"),
                ));
            }
        };
        Ok((destination, table_from_json(&self.arguments, "arguments")?))
    }
}

pub(crate) async fn bind(
    State(shared): State<AppState>,
    Body(spec): Body<BindingSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let vhost = vhost(&shared, &spec.vhost)?;
    let (destination, arguments) = spec.parts()?;
    let binding = Binding {
        source: spec.source,
        destination,
        routing_key: spec.routing_key,
        arguments,
    };
    let created = binding.clone();
    let name = vhost.name().to_owned();
    blocking(move || {
        Ok(vhost.bind(
            &created.source,
            created.destination.clone(),
            &created.routing_key,
            &created.arguments,
            API_CONNECTION,
        )?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(binding_json(&name, &binding))))
}

#[derive(Debug, Deserialize)]
pub(crate) struct BindingQuery {
    vhost: String,
    source: String,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    /// A JSON object, for bindings with arguments.
    arguments: Option<String>,
}

pub(crate) async fn unbind(
    State(shared): State<AppState>,
    Query(query): Query<BindingQuery>,
) -> ApiResult<StatusCode> {
    let arguments = match &query.arguments {
        Some(text) => serde_json::from_str(text)
            .map_err(|error| ApiError::field("arguments", format!("not JSON: {error}")))?,
        None => Value::Null,
    };
    let spec = BindingSpec {
        vhost: query.vhost,
        source: query.source,
        destination: query.destination,
        destination_type: query.destination_type,
        routing_key: query.routing_key,
        arguments,
    };
    let vhost = vhost(&shared, &spec.vhost)?;
    let (destination, arguments) = spec.parts()?;
    let exists = vhost.bindings().iter().any(|b| {
        b.source == spec.source
            && b.destination == destination
            && b.routing_key == spec.routing_key
            && b.arguments == arguments
    });
    if !exists {
        return Err(ApiError::not_found("no such binding"));
    }
    blocking(move || {
        Ok(vhost.unbind(
            &spec.source,
            destination,
            &spec.routing_key,
            &arguments,
            API_CONNECTION,
        )?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
