//! `GET /api/topics/{topic}/messages`: the message browser over every
//! partition of a topic, optionally searching keys, header names and
//! values, and values for a text. The scan is bounded: one request reads
//! at most `max_scan` records and returns at most `limit` matches, with a
//! cursor (the next offset of each partition) to go on from, so a search
//! of a large topic is a series of cheap pages.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use kafka_protocol::records::Record;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::Partition;
use sluice_types::PartitionId;

use super::messages::{record_json, scan_partition};
use super::{Encoding, blocking};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};

const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 50;
const MAX_SCAN: usize = 100_000;
const DEFAULT_SCAN: usize = 10_000;

#[derive(Debug, Deserialize)]
pub(crate) struct SearchQuery {
    /// Case-insensitive text to look for; without it every record matches.
    #[serde(default)]
    search: Option<String>,
    /// Where to look: a comma-separated subset of `key`, `headers`, `value`.
    #[serde(default, rename = "in")]
    fields: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    max_scan: Option<usize>,
    /// Only this partition.
    #[serde(default)]
    partition: Option<i32>,
    /// `PARTITION:OFFSET,…` from an earlier answer's `next_cursor`.
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    encoding: Encoding,
}

/// Which parts of a record a search looks at.
#[derive(Debug, Clone, Copy)]
struct Fields {
    key: bool,
    headers: bool,
    value: bool,
}

impl Fields {
    fn parse(text: Option<&str>) -> ApiResult<Self> {
        let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
            return Ok(Self {
                key: true,
                headers: true,
                value: true,
            });
        };
        let mut fields = Self {
            key: false,
            headers: false,
            value: false,
        };
        for part in text.split(',').map(str::trim) {
            match part {
                "key" => fields.key = true,
                "headers" => fields.headers = true,
                "value" => fields.value = true,
                other => {
                    return Err(ApiError::field(
                        "in",
                        format!("search in key, headers or value, not {other:?}"),
                    ));
                }
            }
        }
        Ok(fields)
    }
}

/// Whether `bytes`, read as UTF-8 (invalid bytes replaced), contain
/// `needle` (already lowercase), ignoring case.
fn contains(bytes: Option<&[u8]>, needle: &str) -> bool {
    bytes.is_some_and(|b| String::from_utf8_lossy(b).to_lowercase().contains(needle))
}

fn matches(record: &Record, needle: &str, fields: Fields) -> bool {
    if needle.is_empty() {
        return true;
    }
    (fields.key && contains(record.key.as_deref(), needle))
        || (fields.value && contains(record.value.as_deref(), needle))
        || (fields.headers
            && record.headers.iter().any(|(name, value)| {
                name.to_lowercase().contains(needle) || contains(value.as_deref(), needle)
            }))
}

/// Next offsets per partition from a cursor; partitions it does not name
/// start at their log start.
fn parse_cursor(text: &str, partitions: usize) -> ApiResult<Vec<Option<i64>>> {
    let mut positions = vec![None; partitions];
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let parsed = part
            .split_once(':')
            .and_then(|(p, o)| Some((p.parse::<usize>().ok()?, o.parse::<i64>().ok()?)));
        match parsed {
            Some((partition, offset)) if partition < partitions && offset >= 0 => {
                if let Some(slot) = positions.get_mut(partition) {
                    *slot = Some(offset);
                }
            }
            _ => {
                return Err(ApiError::field(
                    "cursor",
                    format!("not a cursor of this topic: {part:?}"),
                ));
            }
        }
    }
    Ok(positions)
}

pub(crate) async fn search(
    State(shared): State<AppState>,
    Path(topic_name): Path<String>,
    Query(query): Query<SearchQuery>,
) -> ApiResult<Json<Value>> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}, got {limit}"),
        ));
    }
    let max_scan = query.max_scan.unwrap_or(DEFAULT_SCAN);
    if !(1..=MAX_SCAN).contains(&max_scan) {
        return Err(ApiError::field(
            "max_scan",
            format!("max_scan must be between 1 and {MAX_SCAN}, got {max_scan}"),
        ));
    }
    let fields = Fields::parse(query.fields.as_deref())?;
    let needle = query.search.unwrap_or_default().to_lowercase();
    let topic = shared
        .broker
        .topics()
        .get(&topic_name)
        .ok_or_else(|| ApiError::not_found(format!("topic {topic_name:?} does not exist")))?;
    let count = topic.partition_count() as i32;
    if let Some(only) = query.partition.filter(|p| !(0..count).contains(p)) {
        return Err(ApiError::field(
            "partition",
            format!(
                "topic {topic_name:?} has partitions 0 to {}, got {only}",
                count - 1
            ),
        ));
    }
    let partitions: Vec<Arc<Partition>> = (0..count)
        .filter_map(|p| topic.partition(PartitionId::from(p)))
        .collect();
    let only = query.partition.map(|p| p as usize);
    let starts = parse_cursor(query.cursor.as_deref().unwrap_or(""), partitions.len())?;
    let encoding = query.encoding;
    blocking(move || {
        let mut scanned = 0usize;
        let mut found = Vec::new();
        let mut cursor = Vec::with_capacity(partitions.len());
        let mut positions = Vec::with_capacity(partitions.len());
        let mut done = true;
        for (index, partition) in partitions.iter().enumerate() {
            if only.is_some_and(|p| p != index) {
                continue;
            }
            let high_watermark = partition.high_watermark().get();
            let start = starts
                .get(index)
                .copied()
                .flatten()
                .unwrap_or_else(|| partition.log_start().get());
            let next = if scanned < max_scan && found.len() < limit {
                scan_partition(partition, start, |record| {
                    if scanned >= max_scan || found.len() >= limit {
                        return false;
                    }
                    scanned += 1;
                    if matches(record, &needle, fields) {
                        let mut item = record_json(record, encoding);
                        item["partition"] = json!(index);
                        found.push(item);
                    }
                    true
                })?
            } else {
                start
            };
            if next < high_watermark {
                done = false;
            }
            cursor.push(format!("{index}:{next}"));
            positions.push(json!({
                "partition": index,
                "next_offset": next,
                "high_watermark": high_watermark,
            }));
        }
        Ok(Json(json!({
            "topic": topic.name(),
            "search": needle,
            "encoding": encoding.name(),
            "scanned": scanned,
            "messages": found,
            "positions": positions,
            "next_cursor": if done { Value::Null } else { Value::String(cursor.join(",")) },
        })))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_name_partitions_of_the_topic() -> ApiResult<()> {
        assert_eq!(parse_cursor("0:5,2:7", 3)?, vec![Some(5), None, Some(7)]);
        assert_eq!(parse_cursor("", 2)?, vec![None, None]);
        for bad in ["3:1", "0:-1", "x", "0:y"] {
            assert_eq!(
                parse_cursor(bad, 3).map_err(|e| e.field),
                Err(Some("cursor")),
                "{bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_search_looks_where_it_is_told_and_ignores_case() -> ApiResult<()> {
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 0,
            key: Some(bytes::Bytes::from_static(b"Order-17")),
            value: Some(bytes::Bytes::from_static(b"{\"total\": 12}")),
            headers: [(
                kafka_protocol::protocol::StrBytes::from_static_str("Source"),
                Some(bytes::Bytes::from_static(b"web")),
            )]
            .into_iter()
            .collect(),
        };
        let all = Fields::parse(None)?;
        assert!(matches(&record, "order-17", all));
        assert!(matches(&record, "total", all));
        assert!(matches(&record, "source", all));
        assert!(matches(&record, "web", all));
        assert!(!matches(&record, "mobile", all));
        let keys = Fields::parse(Some("key"))?;
        assert!(!matches(&record, "total", keys));
        assert!(matches(&record, "", keys));
        assert!(Fields::parse(Some("key,body")).is_err());
        Ok(())
    }
}
