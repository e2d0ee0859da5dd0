//! Helpers shared by the log's integration tests: real record batches from
//! kafka-protocol's encoder, and decoding of what the log returns.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use sluice_log::batch::{NewRecord, encode};
use sluice_log::{Durability, Log, ReadBound};
use sluice_types::Offset;

/// One batch of `values` with keys `k0`, `k1`, …, record timestamps
/// `timestamp`, `timestamp + 1`, ….
pub fn batch(values: &[Vec<u8>], timestamp: i64) -> BytesMut {
    let keys: Vec<String> = (0..values.len()).map(|i| format!("k{i}")).collect();
    let records: Vec<NewRecord<'_>> = values
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (value, key))| NewRecord {
            key: Some(key.as_bytes()),
            value: Some(value),
            timestamp: timestamp + i as i64,
        })
        .collect();
    encode(&records).expect("encode")
}

/// `count` values of `size` bytes each, tagged with `tag` so they can be told apart.
pub fn values(tag: u64, count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut v = format!("{tag}:{i}:").into_bytes();
            v.resize(size.max(v.len()), b'x');
            v
        })
        .collect()
}

/// Decodes every record in `bytes` to (offset, timestamp, value).
pub fn decode(bytes: &Bytes) -> Vec<(i64, i64, Vec<u8>)> {
    let mut buf = bytes.clone();
    let mut out = Vec::new();
    while !buf.is_empty() {
        let set = RecordBatchDecoder::decode(&mut buf).expect("decode");
        for record in set.records {
            out.push((
                record.offset,
                record.timestamp,
                record.value.map(|v| v.to_vec()).unwrap_or_default(),
            ));
        }
    }
    out
}

/// What a consumer of `log` may see, by the rule a single-node partition
/// applies: the synced end under durability `always`, the log end
/// otherwise.
pub fn visible(log: &Log) -> Offset {
    if log.durability() == Durability::Always {
        log.durable_end()
    } else {
        log.log_end()
    }
}

/// Every record up to the visible end, by offset; panics naming `what`
/// when a read fails or an offset is served twice.
pub fn read_all(log: &Log, what: &str) -> BTreeMap<i64, Vec<u8>> {
    let mut records = BTreeMap::new();
    let mut next = Offset::from(0);
    while next < visible(log) {
        let result = log
            .read(next, 1 << 20, ReadBound::Upto(visible(log)))
            .unwrap_or_else(|err| panic!("{what}: read at {next}: {err}"));
        let Some(after) = result.next_offset else {
            break;
        };
        for (offset, _, value) in decode(&result.records) {
            assert!(
                records.insert(offset, value).is_none(),
                "{what}: offset {offset} served twice"
            );
        }
        next = after;
    }
    records
}
