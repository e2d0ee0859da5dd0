//! The Fetch response, written by hand so that record bytes go from the
//! log's read buffer to the socket without another copy: the response is a
//! list of chunks, the records of each partition one of them, by reference.
//! Everything else is written as `kafka-protocol` writes it; the tests
//! compare the two byte for byte at every version served (4-12).
//!
//! Layout (Kafka's FetchResponse; `[v7+]` marks fields from that version,
//! v12 is flexible: compact lengths as unsigned varints of n+1, and an empty
//! tagged-field section after each structure):
//! `[size:4][correlation_id:4][tags v12][throttle_time_ms:4][error_code:2 v7+][session_id:4 v7+]`
//! `[topics: [name][partitions: [index:4][error_code:2][high_watermark:8]`
//! `[last_stable_offset:8][log_start_offset:8 v5+][aborted: nullable [producer_id:8][first_offset:8]]`
//! `[preferred_read_replica:4 v11+][records: nullable bytes][tags v12]][tags v12]][tags v12]`

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::FetchResponse;
use kafka_protocol::messages::fetch_response::PartitionData;

/// Highest version this encoder writes (v13 names topics by id).
pub(crate) const MAX_VERSION: i16 = 12;

/// The response as chunks (length prefix included), or `None` when it
/// carries something this encoder does not write (tagged fields with
/// values, or a version outside 4-12): the caller then uses the codec.
pub(crate) fn encode(
    correlation_id: i32,
    version: i16,
    response: &FetchResponse,
) -> Option<Vec<Bytes>> {
    if !(4..=MAX_VERSION).contains(&version) || !plain(response) {
        return None;
    }
    let flexible = version >= 12;
    let mut chunks = Vec::new();
    let mut head = BytesMut::with_capacity(256);
    head.put_i32(0); // size, filled in below
    head.put_i32(correlation_id);
    if flexible {
        head.put_u8(0); // header tagged fields
    }
    head.put_i32(response.throttle_time_ms);
    if version >= 7 {
        head.put_i16(response.error_code);
        head.put_i32(response.session_id);
    }
    put_len(&mut head, response.responses.len(), flexible);
    for topic in &response.responses {
        put_str(&mut head, topic.topic.as_bytes(), flexible);
        put_len(&mut head, topic.partitions.len(), flexible);
        for partition in &topic.partitions {
            head.put_i32(partition.partition_index);
            head.put_i16(partition.error_code);
            head.put_i64(partition.high_watermark);
            head.put_i64(partition.last_stable_offset);
            if version >= 5 {
                head.put_i64(partition.log_start_offset);
            }
            match &partition.aborted_transactions {
                None => put_null(&mut head, flexible),
                Some(aborted) => {
                    put_len(&mut head, aborted.len(), flexible);
                    for transaction in aborted {
                        head.put_i64(transaction.producer_id.0);
                        head.put_i64(transaction.first_offset);
                        if flexible {
                            head.put_u8(0);
                        }
                    }
                }
            }
            if version >= 11 {
                head.put_i32(partition.preferred_read_replica.0);
            }
            match &partition.records {
                None => put_null(&mut head, flexible),
                Some(records) => {
                    put_len(&mut head, records.len(), flexible);
                    if !records.is_empty() {
                        chunks.push(head.split().freeze());
                        chunks.push(records.clone());
                    }
                }
            }
            if flexible {
                head.put_u8(0); // partition tagged fields
            }
        }
        if flexible {
            head.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        head.put_u8(0); // response tagged fields
    }
    chunks.push(head.freeze());
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let size = i32::try_from(total - 4).ok()?;
    let first = chunks.first_mut()?;
    let mut sized = BytesMut::from(&first[..]);
    sized.get_mut(..4)?.copy_from_slice(&size.to_be_bytes());
    *first = sized.freeze();
    Some(chunks)
}

/// Whether every tagged field holds its default (nothing to write).
fn plain(response: &FetchResponse) -> bool {
    let default = PartitionData::default();
    response.unknown_tagged_fields.is_empty()
        && response.node_endpoints.is_empty()
        && response.responses.iter().all(|topic| {
            topic.unknown_tagged_fields.is_empty()
                && topic.partitions.iter().all(|p| {
                    p.unknown_tagged_fields.is_empty()
                        && p.diverging_epoch == default.diverging_epoch
                        && p.current_leader == default.current_leader
                        && p.snapshot_id == default.snapshot_id
                        && p.aborted_transactions
                            .iter()
                            .flatten()
                            .all(|t| t.unknown_tagged_fields.is_empty())
                })
        })
}

fn put_uvarint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// An array or bytes length: compact (n + 1) when flexible.
fn put_len(out: &mut BytesMut, len: usize, flexible: bool) {
    if flexible {
        put_uvarint(out, len as u64 + 1);
    } else {
        out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
    }
}

fn put_null(out: &mut BytesMut, flexible: bool) {
    if flexible {
        put_uvarint(out, 0);
    } else {
        out.put_i32(-1);
    }
}

fn put_str(out: &mut BytesMut, value: &[u8], flexible: bool) {
    if flexible {
        put_uvarint(out, value.len() as u64 + 1);
    } else {
        out.put_i16(i16::try_from(value.len()).unwrap_or(i16::MAX));
    }
    out.put_slice(value);
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse};
    use kafka_protocol::messages::{ApiKey, BrokerId, ProducerId, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    fn codec(correlation_id: i32, version: i16, response: &FetchResponse) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut out, ApiKey::Fetch.response_header_version(version))
            .expect("header");
        response.encode(&mut out, version).expect("body");
        let size = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&size.to_be_bytes());
        out.to_vec()
    }

    fn partition(
        index: i32,
        records: Option<&'static [u8]>,
        aborted: Option<usize>,
        version: i16,
    ) -> PartitionData {
        PartitionData::default()
            .with_partition_index(index)
            .with_error_code(if records.is_none() { 3 } else { 0 })
            .with_high_watermark(1_000 + i64::from(index))
            .with_last_stable_offset(900)
            .with_log_start_offset(if version >= 5 { 7 } else { -1 })
            .with_preferred_read_replica(BrokerId(if version >= 11 { 2 } else { -1 }))
            .with_aborted_transactions(aborted.map(|n| {
                (0..n)
                    .map(|i| {
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(i as i64))
                            .with_first_offset(100 + i as i64)
                    })
                    .collect()
            }))
            .with_records(records.map(Bytes::from_static))
    }

    #[test]
    fn chunks_match_the_codec_byte_for_byte_at_every_version() {
        let big: &'static [u8] = Box::leak(vec![7u8; 70_000].into_boxed_slice());
        for version in 4..=MAX_VERSION {
            let response = FetchResponse::default()
                .with_throttle_time_ms(5)
                .with_error_code(0)
                .with_session_id(if version >= 7 { 42 } else { 0 })
                .with_responses(vec![
                    FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_static_str("orders")))
                        .with_partitions(vec![
                            partition(0, Some(b"batch-bytes"), Some(0), version),
                            partition(1, Some(b""), None, version),
                            partition(2, None, Some(2), version),
                        ]),
                    FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_static_str("t")))
                        .with_partitions(vec![partition(0, Some(big), Some(1), version)]),
                    FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_static_str("empty")))
                        .with_partitions(vec![]),
                ]);
            let chunks = encode(99, version, &response).expect("plain response");
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(joined, codec(99, version, &response), "v{version}");
            // The big records travel by reference: one chunk is exactly them.
            assert!(
                chunks.iter().any(|c| c.as_ptr() == big.as_ptr()),
                "v{version} copied the records"
            );
        }
    }

    #[test]
    fn responses_it_does_not_write_fall_back_to_the_codec() {
        let response = FetchResponse::default();
        assert!(encode(1, 13, &response).is_none());
        assert!(encode(1, 3, &response).is_none());
        let tagged = FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default().with_partitions(vec![
                PartitionData::default().with_snapshot_id(
                    kafka_protocol::messages::fetch_response::SnapshotId::default().with_epoch(3),
                ),
            ]),
        ]);
        assert!(encode(1, 12, &tagged).is_none());
        assert!(encode(1, 12, &FetchResponse::default()).is_some());
    }
}
