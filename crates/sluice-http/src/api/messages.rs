//! The message browser of topics: read a range of a partition by offset or
//! timestamp, and produce records (durable before the answer, as acks=all).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use kafka_protocol::records::Record;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::messaging::partition_for_key;
use sluice_core::records::{NewRecord, RecordHeader};
use sluice_core::{CoreError, Partition, Position, Undecodable};
use sluice_types::{Offset, PartitionId};

use super::{Encoding, blocking};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path, Query};

/// Most records one read returns.
const MAX_READ: usize = 1000;
const DEFAULT_READ: usize = 50;
/// Bytes asked of the log per read step.
const READ_STEP_BYTES: usize = 1 << 20;
/// Most records one produce request may carry.
const MAX_PRODUCE: usize = 10_000;

#[derive(Debug, Deserialize)]
pub(crate) struct ReadQuery {
    offset: Option<i64>,
    timestamp: Option<i64>,
    limit: Option<usize>,
    #[serde(default)]
    encoding: Encoding,
}

pub(crate) async fn read(
    State(shared): State<AppState>,
    Path((topic_name, partition)): Path<(String, i32)>,
    Query(query): Query<ReadQuery>,
) -> ApiResult<Json<Value>> {
    let limit = query.limit.unwrap_or(DEFAULT_READ);
    if !(1..=MAX_READ).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("limit must be between 1 and {MAX_READ}, got {limit}"),
        ));
    }
    if query.offset.is_some() && query.timestamp.is_some() {
        return Err(ApiError::field(
            "timestamp",
            "give offset or timestamp, not both",
        ));
    }
    let topic = shared
        .broker
        .topics()
        .get(&topic_name)
        .ok_or_else(|| ApiError::not_found(format!("topic {topic_name:?} does not exist")))?;
    let target = topic
        .partition(PartitionId::from(partition))
        .ok_or_else(|| {
            ApiError::not_found(format!("topic {topic_name:?} has no partition {partition}"))
        })?;
    let encoding = query.encoding;
    blocking(move || {
        let log_start = target.log_start().get();
        let high_watermark = target.high_watermark().get();
        let start = match (query.offset, query.timestamp) {
            (Some(offset), _) => offset.max(log_start),
            (None, Some(timestamp)) => target
                .resolve(Position::Timestamp(timestamp))?
                .map_or(high_watermark, |(offset, _)| offset.get()),
            (None, None) => log_start,
        };
        let mut messages = Vec::new();
        let next = scan_partition(&target, start, |record| {
            if messages.len() >= limit {
                return false;
            }
            messages.push(record_json(record, encoding));
            true
        })?;
        Ok(Json(json!({
            "topic": topic.name(),
            "partition": partition,
            "log_start_offset": log_start,
            "high_watermark": high_watermark,
            "next_offset": next,
            "encoding": encoding.name(),
            "messages": messages,
        })))
    })
    .await
}

/// Visits the committed records of `partition` from `from` up to its high
/// watermark (as it was when the scan began; a read stops at the last
/// stable offset) until `visit` returns false; returns the offset to go on
/// from. Control records and those of aborted transactions are skipped; a batch that cannot
/// be decoded fails the scan ([`Undecodable::Fail`]: 400). Every read of a
/// topic's records goes through here.
pub(crate) fn scan_partition(
    partition: &Partition,
    from: i64,
    mut visit: impl FnMut(&Record) -> bool,
) -> ApiResult<i64> {
    let high_watermark = partition.high_watermark();
    let mut next = Offset::from(from).max(partition.log_start());
    while next < high_watermark {
        let Some(chunk) = partition.read_chunk(next, READ_STEP_BYTES, Undecodable::Fail)? else {
            break;
        };
        let mut visited = next;
        for record in chunk.deliverable(next) {
            if !visit(record) {
                return Ok(visited.get());
            }
            visited = Offset::from(record.offset + 1);
        }
        next = chunk.next.max(visited);
    }
    Ok(next.get().max(from))
}

pub(crate) fn record_json(record: &Record, encoding: Encoding) -> Value {
    let text = |bytes: &Option<Bytes>| bytes.as_ref().map(|b| encoding.encode(b));
    let headers: Vec<Value> = record
        .headers
        .iter()
        .map(|(key, value)| json!({"key": key.as_str(), "value": text(value)}))
        .collect();
    json!({
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": text(&record.key),
        "value": text(&record.value),
        "headers": headers,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewHeader {
    key: String,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestRecord {
    partition: Option<i32>,
    key: Option<String>,
    value: Option<String>,
    #[serde(default)]
    headers: Vec<NewHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Produce {
    records: Vec<RequestRecord>,
    #[serde(default)]
    encoding: Encoding,
}

pub(crate) async fn produce(
    State(shared): State<AppState>,
    Path(topic_name): Path<String>,
    Body(request): Body<Produce>,
) -> ApiResult<Json<Value>> {
    if request.records.is_empty() || request.records.len() > MAX_PRODUCE {
        return Err(ApiError::field(
            "records",
            format!(
                "send 1 to {MAX_PRODUCE} records, got {}",
                request.records.len()
            ),
        ));
    }
    ApiError::admit(&shared.broker)?;
    // As a Kafka Produce does: an unknown topic is created when
    // kafka.auto_create_topics is on, so the API and the protocol agree.
    let broker = Arc::clone(&shared.broker);
    let wanted = topic_name.clone();
    let topic = blocking(move || match broker.topic_or_create(&wanted) {
        Ok(topic) => Ok(topic),
        Err(CoreError::UnknownTopic { .. }) => Err(ApiError::not_found(format!(
            "topic {wanted:?} does not exist (kafka.auto_create_topics is off)"
        ))),
        Err(error) => Err(error.into()),
    })
    .await?;
    let partitions = topic.partition_count() as i32;
    let now = sluice_core::now_ms();
    // Decode and place every record before writing any.
    let mut placed: Vec<Placed> = Vec::with_capacity(request.records.len());
    for new in request.records {
        let key = new
            .key
            .map(|k| request.encoding.decode(&k, "key"))
            .transpose()?;
        let value = new
            .value
            .map(|v| request.encoding.decode(&v, "value"))
            .transpose()?;
        let headers = new
            .headers
            .into_iter()
            .map(|header| {
                let value = header
                    .value
                    .map(|v| request.encoding.decode(&v, "headers"))
                    .transpose()?;
                Ok((header.key, value))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let partition = match (new.partition, &key) {
            (Some(p), _) if (0..partitions).contains(&p) => p,
            (Some(p), _) => {
                return Err(ApiError::field(
                    "partition",
                    format!(
                        "topic {topic_name:?} has partitions 0 to {}, got {p}",
                        partitions - 1
                    ),
                ));
            }
            (None, Some(key)) => partition_for_key(key, partitions as u32) as i32,
            (None, None) => {
                (shared.round_robin.fetch_add(1, Ordering::Relaxed) % partitions as u32) as i32
            }
        };
        placed.push(Placed {
            partition,
            key,
            value,
            headers,
        });
    }
    blocking(move || {
        let mut offsets = vec![Value::Null; placed.len()];
        for partition in 0..partitions {
            let indexes: Vec<usize> = (0..placed.len())
                .filter(|i| placed[*i].partition == partition)
                .collect();
            if indexes.is_empty() {
                continue;
            }
            let headers: Vec<Vec<RecordHeader<'_>>> = indexes
                .iter()
                .map(|i| {
                    placed[*i]
                        .headers
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_deref()))
                        .collect()
                })
                .collect();
            let records: Vec<(NewRecord<'_>, &[RecordHeader<'_>])> = indexes
                .iter()
                .zip(&headers)
                .map(|(i, headers)| {
                    let record = &placed[*i];
                    (
                        NewRecord {
                            key: record.key.as_deref(),
                            value: record.value.as_deref(),
                            timestamp: now,
                        },
                        headers.as_slice(),
                    )
                })
                .collect();
            let mut batch =
                sluice_core::records::encode_with_headers(&records).map_err(|error| {
                    ApiError::bad_request(format!("cannot encode records: {error}"))
                })?;
            let info = topic.append_blocking(PartitionId::from(partition), &mut batch)?;
            for (n, i) in indexes.iter().enumerate() {
                offsets[*i] = json!({
                    "partition": partition,
                    "offset": info.first_offset.get() + n as i64,
                });
            }
        }
        Ok(Json(json!({ "offsets": offsets })))
    })
    .await
}

/// A record decoded from the request, placed in a partition.
struct Placed {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}
