//! Helpers shared by the log's integration tests: real record batches from
//! kafka-protocol's encoder, and decoding of what the log returns.

#![allow(dead_code, unreachable_pub)]

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// One batch of `values`, record timestamps `timestamp`, `timestamp + 1`, ….
pub fn batch(values: &[Vec<u8>], timestamp: i64) -> BytesMut {
    batch_with(values, timestamp, Compression::None)
}

pub fn batch_with(values: &[Vec<u8>], timestamp: i64, compression: Compression) -> BytesMut {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: timestamp + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(value.clone())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode");
    buf
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
