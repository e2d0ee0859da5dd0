//! `POST /api/queues/{vhost}/{queue}/move`: moves ready messages to another
//! queue of the same virtual host, as RabbitMQ users do with a shovel from
//! a dead-letter queue back to the work queue. Each message is taken from
//! the source as an unacknowledged delivery of the API's connection,
//! published to the destination through the default exchange and only
//! then acknowledged on the source, once the destination holds it (on disk
//! for a persistent message in a durable queue): a failure in between
//! leaves it in the source, never in neither.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::messaging::{Message, Queue, VirtualHost, short};

use super::blocking;
use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::{Body, Path};

/// The connection id the API acts as (as in `amqp.rs`).
const API_CONNECTION: u64 = 0;
/// Most messages one request moves.
const MAX_MOVE: usize = 100_000;
/// Messages published before waiting for their storage and settling them
/// on the source: one disk sync covers a batch.
const BATCH: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Move {
    destination: String,
    /// How many; without it, every message ready when the move starts.
    #[serde(default)]
    count: Option<usize>,
}

pub(crate) async fn move_messages(
    State(shared): State<AppState>,
    Path((vhost_name, name)): Path<(String, String)>,
    Body(request): Body<Move>,
) -> ApiResult<Json<Value>> {
    let vhost = shared
        .broker
        .vhosts()
        .get(&vhost_name)
        .ok_or_else(|| ApiError::not_found(format!("no vhost '{vhost_name}'")))?;
    ApiError::admit(&shared.broker)?;
    let source = vhost.usable_queue(&name, API_CONNECTION)?;
    if source.stream_topic().is_some() {
        return Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            format!("queue {name:?} is a stream queue; its records stay in its topic"),
        ));
    }
    if request.destination == name {
        return Err(ApiError::field(
            "destination",
            "the destination is the source queue",
        ));
    }
    let destination = vhost.queue(&request.destination).ok_or_else(|| {
        ApiError::field(
            "destination",
            format!(
                "no queue '{}' in vhost '{}'",
                request.destination,
                vhost.name()
            ),
        )
    })?;
    if destination.stream_topic().is_none() && !destination.usable_by(API_CONNECTION) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "queue {:?} is exclusive to another connection",
                request.destination
            ),
        ));
    }
    let count = match request.count {
        Some(count) if (1..=MAX_MOVE).contains(&count) => count,
        Some(count) => {
            return Err(ApiError::field(
                "count",
                format!("count must be between 1 and {MAX_MOVE}, got {count}"),
            ));
        }
        None => source.message_count().min(MAX_MOVE),
    };
    blocking(move || {
        let moved = move_ready(&vhost, &source, &request.destination, count)?;
        Ok(Json(json!({
            "moved": moved,
            "source_messages_ready": source.message_count(),
        })))
    })
    .await
}

/// Moves up to `count` ready messages of `source` to the queue named
/// `destination`; returns how many moved.
fn move_ready(
    vhost: &VirtualHost,
    source: &Arc<Queue>,
    destination: &str,
    count: usize,
) -> ApiResult<usize> {
    let mut moved = 0;
    while moved < count {
        let mut taken = Vec::new();
        while taken.len() < BATCH.min(count - moved) {
            match source.get(false) {
                Ok((Some((seq, message, _, _)), dead)) => {
                    vhost.dead_letter(dead);
                    taken.push((seq, message));
                }
                Ok((None, dead)) => {
                    vhost.dead_letter(dead);
                    break;
                }
                Err(error) => {
                    // What this batch took goes back, or it would stay
                    // unacknowledged until a restart.
                    give_back(vhost, source, taken.iter().map(|(seq, _)| *seq));
                    return Err(error.into());
                }
            }
        }
        if taken.is_empty() {
            break;
        }
        let mut stored = Vec::with_capacity(taken.len());
        let mut acks = sluice_core::Acks::default();
        let mut failure = None;
        for (seq, message) in &taken {
            let copy = Message {
                exchange: short(""),
                routing_key: short(destination),
                properties: message.properties.clone(),
                body: message.body.clone(),
            };
            match vhost.publish("", copy) {
                Ok(outcome) if outcome.queues == 1 && !outcome.rejected => {
                    acks.merge(outcome.acks);
                    stored.push(*seq);
                }
                Ok(outcome) => {
                    failure = Some(ApiError::new(
                        ErrorCode::PreconditionFailed,
                        if outcome.rejected {
                            format!("queue {destination:?} is full and rejects publishes")
                        } else {
                            format!("queue {destination:?} no longer exists")
                        },
                    ));
                    break;
                }
                Err(error) => {
                    failure = Some(error.into());
                    break;
                }
            }
        }
        let waited = acks.wait();
        let rest: Vec<u64> = taken
            .iter()
            .map(|(seq, _)| *seq)
            .filter(|seq| !stored.contains(seq))
            .collect();
        if let Err(error) = waited {
            // The destination may not have them on disk: keep them in the
            // source too (a copy may survive in both, none is lost).
            give_back(vhost, source, taken.iter().map(|(seq, _)| *seq));
            return Err(error.into());
        }
        if let Err(error) = source.ack(&stored) {
            // Stored in the destination but still in the source: requeued,
            // a copy may survive in both, none is lost or stuck.
            give_back(vhost, source, taken.iter().map(|(seq, _)| *seq));
            return Err(error.into());
        }
        give_back(vhost, source, rest);
        moved += stored.len();
        if let Some(error) = failure {
            return Err(error);
        }
    }
    Ok(moved)
}

/// Requeues taken messages of `source`; a failure is logged, since the
/// caller is already answering with an error or has nothing left to do.
fn give_back(vhost: &VirtualHost, source: &Arc<Queue>, seqs: impl IntoIterator<Item = u64>) {
    let seqs: Vec<u64> = seqs.into_iter().collect();
    if seqs.is_empty() {
        return;
    }
    match source.reject(&seqs, true) {
        Ok(dead) => vhost.dead_letter(dead),
        Err(error) => {
            tracing::warn!(queue = source.name(), %error, "cannot requeue messages taken for a move");
        }
    }
}
