//! Helpers shared by the log's integration tests: real record batches from
//! kafka-protocol's encoder, and decoding of what the log returns.

#![allow(dead_code, unreachable_pub)]

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use sluice_log::batch::{NewRecord, encode};

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
