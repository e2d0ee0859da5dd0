//! Fetch: long polling. Answers as soon as `min_bytes` are readable or
//! `max_wait_ms` passes; appends wake waiting fetches, nothing polls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use sluice_core::{Broker, Partition};
use sluice_log::ReadBound;
use sluice_types::Offset;
use tokio::time::Instant;

use super::Context;
use crate::errors;

/// Longest wait a client may ask for; longer requests are cut to this.
const MAX_WAIT: Duration = Duration::from_secs(30);

struct Wanted {
    topic: TopicName,
    partition: i32,
    fetch_offset: i64,
    max_bytes: usize,
    target: Option<Arc<Partition>>,
}

pub(crate) async fn handle(
    context: &Context,
    request: FetchRequest,
    version: i16,
) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0)).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let max_bytes = usize::try_from(request.max_bytes).unwrap_or(0).max(1);
    let wanted: Arc<Vec<Wanted>> = Arc::new(
        request
            .topics
            .into_iter()
            .flat_map(|topic| {
                let found = context.broker.topics().get(&topic.topic);
                topic.partitions.into_iter().map(move |p| Wanted {
                    topic: topic.topic.clone(),
                    partition: p.partition,
                    fetch_offset: p.fetch_offset,
                    max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
                    target: super::partition_of(found.as_ref(), p.partition),
                })
            })
            .collect(),
    );
    loop {
        // Register for wake-ups before reading, so an append between the
        // read and the wait is not missed.
        let mut woken: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = wanted
            .iter()
            .filter_map(|w| w.target.as_ref())
            .map(|p| Box::pin(p.appended()))
            .collect();
        for notified in &mut woken {
            notified.as_mut().enable();
        }
        // Reads below the high watermark are recent data, in the page
        // cache: they run in place rather than on the blocking pool.
        let (results, total, failed) = read_all(&context.broker, &wanted, max_bytes, version);
        if total >= min_bytes || failed || Instant::now() >= deadline {
            return response(&wanted, results);
        }
        let any_append = std::future::poll_fn(|cx| {
            for notified in &mut woken {
                if notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        });
        tokio::select! {
            () = any_append => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Reads every wanted partition; stops adding data once `max_bytes` is
/// reached (the first non-empty partition always gets one batch, KIP-74).
fn read_all(
    _broker: &Broker,
    wanted: &[Wanted],
    max_bytes: usize,
    version: i16,
) -> (Vec<PartitionData>, usize, bool) {
    let mut total = 0usize;
    let mut failed = false;
    let results = wanted
        .iter()
        .map(|w| {
            let base = PartitionData::default()
                .with_partition_index(w.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
                .with_aborted_transactions(Some(Vec::new()));
            let Some(partition) = &w.target else {
                failed = true;
                return base.with_error_code(ResponseError::UnknownTopicOrPartition.code());
            };
            let log = partition.log();
            let budget = if total == 0 {
                w.max_bytes.max(1)
            } else {
                w.max_bytes.min(max_bytes.saturating_sub(total))
            };
            let high_watermark = log.high_watermark().get();
            let base = base
                .with_high_watermark(high_watermark)
                .with_last_stable_offset(high_watermark)
                .with_log_start_offset(if version >= 5 {
                    log.log_start().get()
                } else {
                    -1
                });
            if budget == 0 {
                return base.with_records(Some(Bytes::new()));
            }
            match read_with_records(log, Offset::from(w.fetch_offset), budget) {
                Ok(records) => {
                    total += records.len();
                    partition
                        .traffic()
                        .add_out(records_from(&records, w.fetch_offset), records.len() as u64);
                    base.with_records(Some(records))
                }
                Err(err) => {
                    failed = true;
                    base.with_error_code(errors::log_code(&err).code())
                }
            }
        })
        .collect();
    (results, total, failed)
}

/// Records at or after `from` in the batches of `buf`, from their headers
/// alone (the read already verified them).
fn records_from(buf: &[u8], from: i64) -> u64 {
    let mut rest = buf;
    let mut count = 0u64;
    while let Ok(header) = sluice_log::batch::BatchHeader::parse(rest) {
        let skipped = (from - header.base_offset.get()).clamp(0, i64::from(header.records_count));
        count += u64::try_from(i64::from(header.records_count) - skipped).unwrap_or(0);
        match rest.get(header.size..) {
            Some(next) if header.size > 0 => rest = next,
            _ => break,
        }
    }
    count
}

/// Most reads one fetch makes in one partition to get past emptied batches.
const MAX_READS_PAST_EMPTY: usize = 64;

/// Reads from `offset`; if what comes back holds no record at all (only
/// batches compaction emptied), reads on until a batch with records is
/// included. librdkafka reports MSG_SIZE_TOO_LARGE for a non-empty answer
/// from which it can take no message, so an answer of only empty batches
/// must not be sent; an empty answer (wait for data) is fine.
fn read_with_records(
    log: &sluice_log::Log,
    offset: Offset,
    budget: usize,
) -> Result<Bytes, sluice_log::LogError> {
    let mut next = offset;
    let mut gathered = BytesMut::new();
    for _ in 0..MAX_READS_PAST_EMPTY {
        let read = log.read(next, budget, ReadBound::HighWatermark)?;
        if read.records.is_empty() {
            break;
        }
        let has_records = sluice_log::batch::split_verified(&read.records)
            .map(|batches| batches.iter().any(|(_, h)| h.records_count > 0))
            .unwrap_or(true);
        if has_records && gathered.is_empty() {
            return Ok(read.records);
        }
        gathered.extend_from_slice(&read.records);
        if has_records {
            return Ok(gathered.freeze());
        }
        match read.next_offset {
            Some(after) => next = after,
            None => break,
        }
    }
    // Nothing but emptied batches up to the high watermark: answer with no
    // data, so the consumer waits for the next append after them.
    Ok(Bytes::new())
}

fn response(wanted: &[Wanted], results: Vec<PartitionData>) -> FetchResponse {
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for (w, data) in wanted.iter().zip(results) {
        match topics.last_mut() {
            Some(last) if last.topic == w.topic => last.partitions.push(data),
            _ => topics.push(
                FetchableTopicResponse::default()
                    .with_topic(w.topic.clone())
                    .with_partitions(vec![data]),
            ),
        }
    }
    // session_id 0: no incremental fetch session (KIP-227); clients then
    // send full requests, which is what this broker serves.
    FetchResponse::default()
        .with_error_code(0)
        .with_session_id(0)
        .with_responses(topics)
}

#[cfg(test)]
mod tests {
    use sluice_log::batch::{self, NewRecord};
    use sluice_log::{Durability, Log, LogConfig};
    use sluice_types::LeaderEpoch;

    use super::*;

    fn emptied() -> BytesMut {
        let full = batch::encode(&[NewRecord {
            key: Some(b"k"),
            value: Some(b"old"),
            timestamp: 0,
        }])
        .expect("encode");
        BytesMut::from(&batch::with_records(&full, &[]).expect("emptied")[..])
    }

    #[test]
    fn emptied_batches_are_never_sent_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = LogConfig {
            durability: Durability::Never,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config).expect("open");
        for _ in 0..3 {
            log.append(&mut emptied(), LeaderEpoch::from(0))
                .expect("append");
        }
        // Only emptied batches below the high watermark: no data at all.
        let answer = read_with_records(&log, Offset::from(0), 1 << 20).expect("read");
        assert!(answer.is_empty());

        let mut live = batch::encode(&[NewRecord {
            key: Some(b"k"),
            value: Some(b"new"),
            timestamp: 0,
        }])
        .expect("encode");
        log.append(&mut live, LeaderEpoch::from(0)).expect("append");
        // A tiny budget returns one batch per read: the answer must still
        // reach the batch with a record.
        let answer = read_with_records(&log, Offset::from(0), 1).expect("read");
        let headers = batch::split_verified(&answer).expect("whole batches");
        assert_eq!(headers.len(), 4);
        assert_eq!(headers.last().map(|(_, h)| h.records_count), Some(1));
    }
}
