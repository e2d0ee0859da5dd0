//! Kafka RecordBatch v2 headers, as the log reads and stamps them.
//!
//! The log stores batches byte for byte as producers sent them; it reads only
//! the fixed header and, on append, overwrites the two fields the broker owns
//! (base offset and partition leader epoch). Neither is covered by the CRC,
//! which starts at `attributes`, so stamping never invalidates a batch.
//!
//! Layout (big-endian), per Kafka's "Record Batch" format:
//! `[base_offset:8][batch_length:4][partition_leader_epoch:4][magic:1][crc:4]`
//! `[attributes:2][last_offset_delta:4][base_timestamp:8][max_timestamp:8]`
//! `[producer_id:8][producer_epoch:2][base_sequence:4][records_count:4][records…]`

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
pub use kafka_protocol::records::Compression;
use kafka_protocol::records::{
    Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_types::{LeaderEpoch, Offset};

use crate::error::BatchFault;

/// Bytes before `batch_length` counts: base offset and the length itself.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed RecordBatch v2 header.
pub const HEADER_SIZE: usize = 61;

const LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;
const COMPRESSION_MASK: i16 = 0x07;
/// Attributes bit 4: the batch belongs to a transaction.
const TRANSACTIONAL: i16 = 0x10;
/// Attributes bit 5: a control batch (a transaction marker).
const CONTROL: i16 = 0x20;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;

/// The fields of a batch header that the log uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    /// Whole batch size on disk, `LOG_OVERHEAD` included.
    pub size: usize,
    pub leader_epoch: LeaderEpoch,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub records_count: i32,
    /// -1 when the producer is not idempotent.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchHeader {
    /// Reads and sanity-checks the header at the start of `buf`. The records
    /// need not be present; use [`verify`] for the whole batch.
    ///
    /// # Errors
    /// A [`BatchFault`] when the header is short, the length field is out of
    /// range, the magic is not 2, or the offset delta is negative.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchFault> {
        let header: &[u8; HEADER_SIZE] = buf
            .get(..HEADER_SIZE)
            .and_then(|h| h.try_into().ok())
            .ok_or(BatchFault::Truncated {
                needed: HEADER_SIZE,
                available: buf.len(),
            })?;
        let length = i32::from_be_bytes(field(header, LENGTH_AT));
        if length < (HEADER_SIZE - LOG_OVERHEAD) as i32 {
            return Err(BatchFault::BadLength { length });
        }
        let magic = i8::from_be_bytes(field(header, MAGIC_AT));
        if magic != 2 {
            return Err(BatchFault::BadMagic { magic });
        }
        let last_offset_delta = i32::from_be_bytes(field(header, LAST_OFFSET_DELTA_AT));
        if last_offset_delta < 0 {
            return Err(BatchFault::BadOffsetDelta {
                delta: last_offset_delta,
            });
        }
        Ok(BatchHeader {
            base_offset: Offset::from(i64::from_be_bytes(field(header, 0))),
            size: length as usize + LOG_OVERHEAD,
            leader_epoch: LeaderEpoch::from(i32::from_be_bytes(field(header, LEADER_EPOCH_AT))),
            crc: u32::from_be_bytes(field(header, CRC_AT)),
            attributes: i16::from_be_bytes(field(header, ATTRIBUTES_AT)),
            last_offset_delta,
            base_timestamp: i64::from_be_bytes(field(header, BASE_TIMESTAMP_AT)),
            max_timestamp: i64::from_be_bytes(field(header, MAX_TIMESTAMP_AT)),
            records_count: i32::from_be_bytes(field(header, RECORDS_COUNT_AT)),
            producer_id: i64::from_be_bytes(field(header, PRODUCER_ID_AT)),
            producer_epoch: i16::from_be_bytes(field(header, PRODUCER_EPOCH_AT)),
            base_sequence: i32::from_be_bytes(field(header, BASE_SEQUENCE_AT)),
        })
    }

    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(i64::from(self.last_offset_delta))
    }

    /// Offset right after the batch.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }

    /// Sequence number of the batch's last record (sequences wrap at `i32::MAX`).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return self.base_sequence;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (last % (i64::from(i32::MAX) + 1)) as i32
    }

    /// Whether the records are compressed (attributes bits 0-2).
    pub fn is_compressed(&self) -> bool {
        self.attributes & COMPRESSION_MASK != 0
    }

    /// Whether the batch belongs to a transaction (attributes bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }

    /// Whether the batch is a control batch, a transaction marker
    /// (attributes bit 5).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }
}

fn field<const N: usize>(header: &[u8; HEADER_SIZE], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        // Every caller passes a constant position inside the fixed header.
        *byte = header.get(at + i).copied().unwrap_or_default();
    }
    out
}

/// Checks that `batch` is exactly one whole batch with a valid CRC-32C.
///
/// # Errors
/// A [`BatchFault`] describing the first problem found.
pub fn verify(batch: &[u8]) -> Result<BatchHeader, BatchFault> {
    let header = BatchHeader::parse(batch)?;
    if batch.len() < header.size {
        return Err(BatchFault::Truncated {
            needed: header.size,
            available: batch.len(),
        });
    }
    let covered = batch
        .get(ATTRIBUTES_AT..header.size)
        .ok_or(BatchFault::BadLength {
            length: (header.size - LOG_OVERHEAD) as i32,
        })?;
    let actual = crc32c::crc32c(covered);
    if actual != header.crc {
        return Err(BatchFault::BadCrc {
            stored: header.crc,
            actual,
        });
    }
    Ok(header)
}

/// The headers of the batches in `buf` with their positions, parsed but
/// not verified: for bytes already checked (read from the log, or just
/// appended). Stops at the first header that does not parse.
pub fn headers(buf: &[u8]) -> impl Iterator<Item = (usize, BatchHeader)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = BatchHeader::parse(buf.get(at..)?).ok()?;
        if header.size == 0 {
            return None;
        }
        let here = at;
        at += header.size;
        Some((here, header))
    })
}

/// Splits `buf` into whole batches, verifying each. Used on append, where the
/// input must be nothing but valid batches.
///
/// # Errors
/// The first batch's [`BatchFault`], or [`BatchFault::Empty`] for no input.
pub fn split_verified(buf: &[u8]) -> Result<Vec<(usize, BatchHeader)>, BatchFault> {
    if buf.is_empty() {
        return Err(BatchFault::Empty);
    }
    let mut batches = Vec::new();
    let mut position = 0;
    while let Some(rest) = buf.get(position..).filter(|rest| !rest.is_empty()) {
        let header = verify(rest)?;
        batches.push((position, header));
        position += header.size;
    }
    Ok(batches)
}

/// Writes the broker-owned fields into the batch header at the start of `batch`.
pub fn stamp(batch: &mut [u8], base_offset: Offset, leader_epoch: LeaderEpoch) {
    if let Some(slot) = batch.get_mut(..8) {
        slot.copy_from_slice(&base_offset.get().to_be_bytes());
    }
    if let Some(slot) = batch.get_mut(LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4) {
        slot.copy_from_slice(&leader_epoch.get().to_be_bytes());
    }
}

/// Makes the batch at the start of `batch` one of producer `producer_id`
/// at `producer_epoch`, its records numbered from `base_sequence`, part of
/// a transaction when `transactional`; the CRC is computed again (these
/// fields are covered by it). For batches the broker builds itself (AMQP
/// publishes written as a Kafka transaction).
///
/// # Errors
/// [`BatchFault`] when `batch` does not start with a whole v2 header.
pub fn set_producer(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
) -> Result<(), BatchFault> {
    let header = BatchHeader::parse(batch)?;
    let end = header.size.min(batch.len());
    let mut attributes = header.attributes & !TRANSACTIONAL;
    if transactional {
        attributes |= TRANSACTIONAL;
    }
    put(batch, ATTRIBUTES_AT, &attributes.to_be_bytes())?;
    put(batch, PRODUCER_ID_AT, &producer_id.to_be_bytes())?;
    put(batch, PRODUCER_EPOCH_AT, &producer_epoch.to_be_bytes())?;
    put(batch, BASE_SEQUENCE_AT, &base_sequence.to_be_bytes())?;
    let covered = batch.get(ATTRIBUTES_AT..end).ok_or(BatchFault::Truncated {
        needed: end,
        available: batch.len(),
    })?;
    let crc = crc32c::crc32c(covered);
    put(batch, CRC_AT, &crc.to_be_bytes())
}

/// Writes `bytes` at `at` in `batch`.
fn put(batch: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), BatchFault> {
    let available = batch.len();
    batch
        .get_mut(at..at + bytes.len())
        .ok_or(BatchFault::Truncated {
            needed: at + bytes.len(),
            available,
        })?
        .copy_from_slice(bytes);
    Ok(())
}

/// One record for [`encode`]: a key, a value (`None` is a tombstone) and a
/// create timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp: i64,
}

/// A header of a record for [`encode_with_headers`]: a name and a value
/// (`None` is a null value).
pub type RecordHeader<'a> = (&'a str, Option<&'a [u8]>);

/// One uncompressed RecordBatch v2 holding `records`, from the
/// `kafka-protocol` encoder; the log writes its internal records (committed
/// offsets) this way, and tests and benchmarks build their input with it.
/// Offsets are relative (0, 1, …) until an append stamps the base offset.
///
/// # Errors
/// The encoder's message when it refuses (no records, say).
pub fn encode(records: &[NewRecord<'_>]) -> Result<BytesMut, String> {
    let with_headers: Vec<(NewRecord<'_>, &[RecordHeader<'_>])> =
        records.iter().map(|record| (*record, &[][..])).collect();
    encode_with_headers(&with_headers)
}

/// As [`encode`], each record with its headers (the admin API's produce,
/// AMQP messages appended to streams).
///
/// # Errors
/// The encoder's message when it refuses (no records, say).
pub fn encode_with_headers(
    records: &[(NewRecord<'_>, &[RecordHeader<'_>])],
) -> Result<BytesMut, String> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (record, headers))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder splits batches where offset minus sequence changes.
            sequence: i as i32,
            timestamp: record.timestamp,
            key: record.key.map(Bytes::copy_from_slice),
            value: record.value.map(Bytes::copy_from_slice),
            headers: headers
                .iter()
                .map(|(name, value)| {
                    (
                        StrBytes::from_string((*name).to_owned()),
                        value.map(Bytes::copy_from_slice),
                    )
                })
                .collect(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|err| err.to_string())?;
    Ok(buf)
}

/// Marks every batch in `buf` as stamped with the broker's append time
/// (attributes bit 3, `max_timestamp = now`) and recomputes its CRC-32C, as
/// Kafka does for topics with `message.timestamp.type=LogAppendTime`.
///
/// # Errors
/// The [`BatchFault`] of the first invalid batch; nothing is changed then.
pub fn set_log_append_time(buf: &mut [u8], now_ms: i64) -> Result<(), BatchFault> {
    for (at, header) in split_verified(buf)? {
        let Some(batch) = buf.get_mut(at..at + header.size) else {
            continue;
        };
        let attributes = header.attributes | TIMESTAMP_TYPE_BIT;
        if let Some(slot) = batch.get_mut(ATTRIBUTES_AT..ATTRIBUTES_AT + 2) {
            slot.copy_from_slice(&attributes.to_be_bytes());
        }
        if let Some(slot) = batch.get_mut(MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8) {
            slot.copy_from_slice(&now_ms.to_be_bytes());
        }
        let crc = crc32c::crc32c(batch.get(ATTRIBUTES_AT..).unwrap_or_default());
        if let Some(slot) = batch.get_mut(CRC_AT..CRC_AT + 4) {
            slot.copy_from_slice(&crc.to_be_bytes());
        }
    }
    Ok(())
}

/// The first record of an uncompressed batch, at or above `min_offset`, whose
/// timestamp is at or after `target`: its offset and timestamp. `None` when no
/// record qualifies or the records cannot be walked (compressed, or
/// malformed), in which case callers fall back to batch granularity.
pub fn first_record_at_or_after(
    batch: &[u8],
    target: i64,
    min_offset: Offset,
) -> Option<(Offset, i64)> {
    let header = BatchHeader::parse(batch).ok()?;
    if header.is_compressed() {
        return None;
    }
    let mut rest = batch.get(HEADER_SIZE..header.size)?;
    for _ in 0..header.records_count.max(0) {
        // Record: [length:varint][attributes:1][timestamp_delta:varlong][offset_delta:varint]…
        let (length, used) = read_varlong(rest)?;
        let body = rest.get(used..used + usize::try_from(length).ok()?)?;
        let after_attributes = body.get(1..)?;
        let (timestamp_delta, used_ts) = read_varlong(after_attributes)?;
        let (offset_delta, _) = read_varlong(after_attributes.get(used_ts..)?)?;
        let timestamp = header.base_timestamp + timestamp_delta;
        let offset = header.base_offset.plus(offset_delta);
        if timestamp >= target && offset >= min_offset {
            return Some((offset, timestamp));
        }
        rest = rest.get(used + body.len()..)?;
    }
    None
}

/// One record of an uncompressed batch, borrowed from the batch bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: Offset,
    pub timestamp: i64,
    /// `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Whether the value is null (a tombstone).
    pub tombstone: bool,
    /// The whole record, length prefix included, as stored.
    pub bytes: &'a [u8],
}

/// The records of an uncompressed batch; `None` for a compressed or
/// malformed one.
pub fn records(batch: &[u8]) -> Option<Vec<RecordView<'_>>> {
    let header = BatchHeader::parse(batch).ok()?;
    if header.is_compressed() {
        return None;
    }
    let mut rest = batch.get(HEADER_SIZE..header.size)?;
    let mut out = Vec::with_capacity(usize::try_from(header.records_count).unwrap_or(0).min(4096));
    for _ in 0..header.records_count.max(0) {
        // [length:varint][attributes:1][timestamp_delta:varlong][offset_delta:varint]
        // [key_length:varint][key][value_length:varint][value][headers…]
        let (length, used) = read_varlong(rest)?;
        let whole = rest.get(..used + usize::try_from(length).ok()?)?;
        let mut body = whole.get(used + 1..)?;
        let (timestamp_delta, n) = read_varlong(body)?;
        body = body.get(n..)?;
        let (offset_delta, n) = read_varlong(body)?;
        body = body.get(n..)?;
        let (key_length, n) = read_varlong(body)?;
        body = body.get(n..)?;
        let key = match usize::try_from(key_length) {
            Ok(len) => {
                let key = body.get(..len)?;
                body = body.get(len..)?;
                Some(key)
            }
            Err(_) => None,
        };
        let (value_length, _) = read_varlong(body)?;
        // Deltas that overflow mark a malformed batch, not a panic.
        out.push(RecordView {
            offset: Offset::from(header.base_offset.get().checked_add(offset_delta)?),
            timestamp: header.base_timestamp.checked_add(timestamp_delta)?,
            key,
            tombstone: value_length < 0,
            bytes: whole,
        });
        rest = rest.get(whole.len()..)?;
    }
    rest.is_empty().then_some(out)
}

/// A copy of `batch` holding only `kept` (records taken from it, in order).
/// Base offset, last offset delta, timestamps and producer fields stay, so
/// offsets are never renumbered and an emptied batch still marks its range.
pub fn with_records(batch: &[u8], kept: &[RecordView<'_>]) -> Option<Vec<u8>> {
    rebuilt(batch.get(..HEADER_SIZE)?.to_vec(), kept)
}

/// A copy of `batch` (compressed or not) with no records left, its
/// header otherwise kept as [`with_records`] keeps it (compression bits
/// cleared: there is nothing to decompress).
pub fn emptied(batch: &[u8]) -> Option<Vec<u8>> {
    let mut header = batch.get(..HEADER_SIZE)?.to_vec();
    let attributes: &mut [u8; 2] = header
        .get_mut(ATTRIBUTES_AT..ATTRIBUTES_AT + 2)?
        .try_into()
        .ok()?;
    let cleared = i16::from_be_bytes(*attributes) & !COMPRESSION_MASK;
    *attributes = cleared.to_be_bytes();
    rebuilt(header, &[])
}

/// `header` followed by `kept`, its length, record count and CRC set.
fn rebuilt(header: Vec<u8>, kept: &[RecordView<'_>]) -> Option<Vec<u8>> {
    let mut out = header;
    for record in kept {
        out.extend_from_slice(record.bytes);
    }
    let length = i32::try_from(out.len() - LOG_OVERHEAD).ok()?;
    out.get_mut(LENGTH_AT..LENGTH_AT + 4)?
        .copy_from_slice(&length.to_be_bytes());
    let count = i32::try_from(kept.len()).ok()?;
    out.get_mut(RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4)?
        .copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(out.get(ATTRIBUTES_AT..)?);
    out.get_mut(CRC_AT..CRC_AT + 4)?
        .copy_from_slice(&crc.to_be_bytes());
    Some(out)
}

/// The codec a batch's records are compressed with (attributes bits 0-2).
pub fn compression(header: &BatchHeader) -> Option<Compression> {
    match header.attributes & COMPRESSION_MASK {
        0 => Some(Compression::None),
        1 => Some(Compression::Gzip),
        2 => Some(Compression::Snappy),
        3 => Some(Compression::Lz4),
        4 => Some(Compression::Zstd),
        _ => None,
    }
}

/// The timestamps of every record of one batch, decompressing it if need
/// be (Kafka validates each record of a compressed batch too).
///
/// # Errors
/// [`BatchFault::Undecodable`] when the records cannot be read.
pub fn record_timestamps(batch: &[u8]) -> Result<Vec<i64>, BatchFault> {
    if let Some(views) = records(batch) {
        return Ok(views.iter().map(|r| r.timestamp).collect());
    }
    Ok(decode(batch)?.iter().map(|r| r.timestamp).collect())
}

fn decode(batch: &[u8]) -> Result<Vec<Record>, BatchFault> {
    let mut bytes = Bytes::copy_from_slice(batch);
    RecordBatchDecoder::decode(&mut bytes)
        .map(|set| set.records)
        .map_err(|err| BatchFault::Undecodable {
            reason: err.to_string(),
        })
}

/// Re-encodes every batch of `buf` whose records are not compressed with
/// `codec`, as Kafka does for a topic whose `compression.type` is a codec
/// rather than `producer`: offsets, timestamps, producer id, epoch and
/// sequence, transactional and control flags stay. `None` when every batch
/// already uses `codec` (nothing to do).
///
/// # Errors
/// [`BatchFault`] for a batch that fails its check or cannot be decoded
/// or encoded; `buf` is unchanged then.
pub fn recompress(buf: &[u8], codec: Compression) -> Result<Option<BytesMut>, BatchFault> {
    let batches = split_verified(buf)?;
    if batches
        .iter()
        .all(|(_, header)| compression(header) == Some(codec))
    {
        return Ok(None);
    }
    let mut out = BytesMut::with_capacity(buf.len());
    for (at, header) in batches {
        let batch = buf.get(at..at + header.size).unwrap_or_default();
        if compression(&header) == Some(codec) {
            out.extend_from_slice(batch);
            continue;
        }
        let records = decode(batch)?;
        let before = out.len();
        RecordBatchEncoder::encode(
            &mut out,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: codec,
            },
        )
        .map_err(|err| BatchFault::Undecodable {
            reason: err.to_string(),
        })?;
        // One batch in, one batch out: the encoder splits only where the
        // producer fields change, which they cannot inside one batch.
        let written = out.get(before..).unwrap_or_default();
        let single = BatchHeader::parse(written).is_ok_and(|h| h.size == written.len());
        if !single {
            return Err(BatchFault::Undecodable {
                reason: "re-encoding split the batch".to_owned(),
            });
        }
    }
    Ok(Some(out))
}

/// A zig-zag varint as Kafka records encode lengths and deltas.
fn read_varlong(buf: &[u8]) -> Option<(i64, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let decoded = ((value >> 1) as i64) ^ -((value & 1) as i64);
            return Some((decoded, i + 1));
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_batch_given_a_producer_keeps_a_valid_checksum() {
        let mut batch = encode(&[
            NewRecord {
                key: None,
                value: Some(b"a"),
                timestamp: 1,
            },
            NewRecord {
                key: None,
                value: Some(b"b"),
                timestamp: 2,
            },
        ])
        .expect("encode");
        set_producer(&mut batch, 42, 3, 10, true).expect("set");
        let header = verify(&batch).expect("still valid");
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (42, 3, 10)
        );
        assert!(header.is_transactional() && !header.is_control());
        assert_eq!(header.last_sequence(), 11);
        set_producer(&mut batch, 42, 3, 10, false).expect("set");
        assert!(!verify(&batch).expect("valid").is_transactional());
        assert!(set_producer(&mut [0u8; 10], 1, 0, 0, true).is_err());
    }

    /// An emptied batch (compaction's for an aborted transaction's, even
    /// compressed) is valid, holds no record, needs no codec and keeps its
    /// offsets and producer.
    #[test]
    fn an_emptied_batch_is_valid_and_keeps_its_range() {
        let plain = encoded_batch(5, 10, 1);
        let compressed = recompress(&plain, Compression::Gzip)
            .expect("recompress")
            .expect("changed");
        for batch in [&plain[..], &compressed[..]] {
            let mut stamped = BytesMut::from(batch);
            set_producer(&mut stamped, 42, 3, 0, true).expect("set");
            let before = verify(&stamped).expect("valid");
            let emptied = emptied(&stamped).expect("emptied");
            let after = verify(&emptied).expect("still valid");
            assert_eq!(after.records_count, 0);
            assert!(!after.is_compressed() && after.is_transactional());
            assert_eq!(after.last_offset_delta, before.last_offset_delta);
            assert_eq!(
                (after.producer_id, after.base_sequence),
                (42, before.base_sequence)
            );
            assert_eq!(records(&emptied).map(|r| r.len()), Some(0));
        }
    }

    /// A real batch from kafka-protocol's encoder: `count` records of `value_size` bytes.
    pub(crate) fn encoded_batch(count: usize, value_size: usize, timestamp: i64) -> Vec<u8> {
        let keys: Vec<String> = (0..count).map(|i| format!("key-{i}")).collect();
        let value = vec![b'v'; value_size];
        let records: Vec<NewRecord<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| NewRecord {
                key: Some(key.as_bytes()),
                value: Some(&value),
                timestamp: timestamp + i as i64,
            })
            .collect();
        encode(&records)
            .expect("encoding a plain batch succeeds")
            .to_vec()
    }

    /// Found by fuzzing (fuzz/fuzz_targets/record_batch.rs): deltas that
    /// overflow the base offset or timestamp panicked in debug builds.
    #[test]
    fn records_with_overflowing_deltas_are_malformed_not_a_panic() {
        let batch = encoded_batch(3, 8, 1_000);
        assert_eq!(records(&batch).map(|r| r.len()), Some(3));
        let mut late = batch.clone();
        late.get_mut(27..35)
            .expect("base timestamp field")
            .copy_from_slice(&i64::MAX.to_be_bytes());
        assert!(records(&late).is_none(), "timestamp delta past i64::MAX");
        let mut far = batch;
        far.get_mut(..8)
            .expect("base offset field")
            .copy_from_slice(&i64::MAX.to_be_bytes());
        assert!(records(&far).is_none(), "offset delta past i64::MAX");
    }

    #[test]
    fn recompression_keeps_every_record_and_the_producer_fields() {
        let mut plain = encoded_batch(4, 100, 5_000);
        // An idempotent producer's batch: id 7, epoch 2, sequence 40.
        let mut put = |at: usize, bytes: &[u8]| {
            plain
                .get_mut(at..at + bytes.len())
                .expect("inside the header")
                .copy_from_slice(bytes);
        };
        put(PRODUCER_ID_AT, &7i64.to_be_bytes());
        put(PRODUCER_EPOCH_AT, &2i16.to_be_bytes());
        put(BASE_SEQUENCE_AT, &40i32.to_be_bytes());
        let crc = crc32c::crc32c(plain.get(ATTRIBUTES_AT..).expect("a whole batch"));
        plain
            .get_mut(CRC_AT..CRC_AT + 4)
            .expect("inside the header")
            .copy_from_slice(&crc.to_be_bytes());
        let original = decode(&plain).expect("decodes");
        let mut two = plain.clone();
        two.extend_from_slice(&plain);
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = recompress(&two, codec)
                .expect("recompresses")
                .expect("changed");
            let batches = split_verified(&packed).expect("valid batches, CRCs included");
            assert_eq!(batches.len(), 2, "{codec:?}: one batch out per batch in");
            for (at, header) in batches {
                assert_eq!(compression(&header), Some(codec));
                assert_eq!(
                    (
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence
                    ),
                    (7, 2, 40)
                );
                assert_eq!((header.last_offset_delta, header.records_count), (3, 4));
                let batch = packed.get(at..at + header.size).expect("a whole batch");
                assert_eq!(decode(batch).expect("decodes"), original, "{codec:?}");
                assert_eq!(
                    record_timestamps(batch).expect("timestamps"),
                    vec![5_000, 5_001, 5_002, 5_003]
                );
            }
            assert_eq!(
                recompress(&packed, codec).expect("checked"),
                None,
                "already {codec:?}"
            );
            let unpacked = recompress(&packed, Compression::None)
                .expect("decompresses")
                .expect("changed");
            assert_eq!(
                unpacked.as_ref(),
                two.as_slice(),
                "back to the producer's bytes"
            );
        }
        assert_eq!(
            recompress(&plain, Compression::None).expect("checked"),
            None
        );
    }

    #[test]
    fn header_of_encoded_batch_is_read() {
        let batch = encoded_batch(3, 10, 1_000);
        let header = verify(&batch).expect("valid");
        assert_eq!(header.size, batch.len());
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.records_count, 3);
        assert_eq!(header.base_timestamp, 1_000);
        assert_eq!(header.max_timestamp, 1_002);
        assert!(!header.is_compressed());
    }

    #[test]
    fn stamping_keeps_the_crc_valid() {
        let mut batch = encoded_batch(2, 5, 0);
        stamp(&mut batch, Offset::from(1234), LeaderEpoch::from(7));
        let header = verify(&batch).expect("still valid");
        assert_eq!(header.base_offset, Offset::from(1234));
        assert_eq!(header.leader_epoch, LeaderEpoch::from(7));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let batch = encoded_batch(2, 20, 0);
        for cut in 0..batch.len() {
            let prefix = batch.get(..cut).expect("in range");
            assert!(verify(prefix).is_err(), "prefix of {cut} bytes accepted");
        }
    }

    #[test]
    fn every_flipped_byte_after_the_length_is_caught() {
        let batch = encoded_batch(2, 20, 0);
        // Bytes 0..8 (base offset) are the broker's to overwrite; every other
        // byte is covered by a length, magic or CRC check.
        for at in 8..batch.len() {
            let mut damaged = batch.clone();
            if let Some(byte) = damaged.get_mut(at) {
                *byte ^= 0x5a;
            }
            if (LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4).contains(&at) {
                continue;
            }
            assert!(verify(&damaged).is_err(), "flip at {at} accepted");
        }
    }

    #[test]
    fn log_append_time_is_stamped_with_a_valid_crc() {
        let mut two = encoded_batch(2, 5, 10);
        two.extend(encoded_batch(1, 5, 20));
        set_log_append_time(&mut two, 99_000).expect("valid input");
        for (_, header) in split_verified(&two).expect("still valid") {
            assert_eq!(header.max_timestamp, 99_000);
            assert_eq!(header.attributes & TIMESTAMP_TYPE_BIT, TIMESTAMP_TYPE_BIT);
        }
    }

    #[test]
    fn records_can_be_dropped_without_renumbering() {
        let batch = encoded_batch(4, 3, 100);
        let all = records(&batch).expect("uncompressed");
        assert_eq!(all.len(), 4);
        assert_eq!(
            all.get(2).map(|r| (r.offset, r.timestamp)),
            Some((Offset::from(2), 102))
        );
        assert_eq!(all.get(1).and_then(|r| r.key), Some(&b"key-1"[..]));
        let kept: Vec<_> = all
            .iter()
            .copied()
            .filter(|r| r.offset.get() % 2 == 1)
            .collect();
        let rewritten = with_records(&batch, &kept).expect("rebuilt");
        let header = verify(&rewritten).expect("valid");
        assert_eq!((header.records_count, header.last_offset_delta), (2, 3));
        let offsets: Vec<i64> = records(&rewritten)
            .expect("records")
            .iter()
            .map(|r| r.offset.get())
            .collect();
        assert_eq!(offsets, vec![1, 3]);
        let empty = with_records(&batch, &[]).expect("rebuilt");
        assert_eq!(verify(&empty).map(|h| h.records_count), Ok(0));
    }

    #[test]
    fn split_rejects_trailing_garbage() {
        let mut two = encoded_batch(1, 3, 0);
        two.extend(encoded_batch(2, 3, 0));
        assert_eq!(split_verified(&two).expect("valid").len(), 2);
        two.push(0);
        assert!(split_verified(&two).is_err());
        assert_eq!(split_verified(&[]), Err(BatchFault::Empty));
    }

    #[test]
    fn record_timestamps_are_found_inside_a_batch() {
        let batch = encoded_batch(5, 3, 100);
        let zero = Offset::from(0);
        let find = |target, min| first_record_at_or_after(&batch, target, min);
        assert_eq!(find(102, zero), Some((Offset::from(2), 102)));
        assert_eq!(find(0, zero), Some((zero, 100)));
        assert_eq!(find(0, Offset::from(3)), Some((Offset::from(3), 103)));
        assert_eq!(find(105, zero), None);
    }
}
