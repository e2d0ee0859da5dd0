//! Fetch: long polling. Answers as soon as `min_bytes` are readable or
//! `max_wait_ms` passes; appends wake waiting fetches, nothing polls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use sluice_core::Partition;
use sluice_types::Offset;
use tokio::time::Instant;

use sluice_core::acls::{Operation, ResourceType};

use super::Context;
use crate::errors;

/// Longest wait a client may ask for; longer requests are cut to this.
const MAX_WAIT: Duration = Duration::from_secs(30);

struct Wanted {
    topic: TopicName,
    partition: i32,
    fetch_offset: i64,
    max_bytes: usize,
    target: Result<Arc<Partition>, ResponseError>,
}

pub(crate) async fn handle(
    context: &Context,
    request: FetchRequest,
    version: i16,
) -> FetchResponse {
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0)).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    // A follower of the cluster fetching as a replica (KIP-392 moved the id
    // into replica_state in v15); consumers send -1.
    let replica = if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    // One authorization for the whole request.
    let checker = context.checker();
    let max_bytes = usize::try_from(request.max_bytes).unwrap_or(0).max(1);
    // isolation_level (v4+): 1 reads up to the last stable offset, with
    // the aborted transactions listed.
    let committed = version >= 4 && request.isolation_level == 1;
    let wanted: Arc<Vec<Wanted>> = Arc::new(
        request
            .topics
            .into_iter()
            .flat_map(|topic| {
                // A follower needs CLUSTER_ACTION, a consumer READ on the topic.
                let readable = if replica >= 0 {
                    checker.allows_on_cluster(Operation::ClusterAction)
                } else {
                    checker.allows(Operation::Read, ResourceType::Topic, &topic.topic)
                };
                let found = context.broker.topics().get(&topic.topic);
                topic.partitions.into_iter().map(move |p| Wanted {
                    topic: topic.topic.clone(),
                    partition: p.partition,
                    fetch_offset: p.fetch_offset,
                    max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
                    target: readable
                        .then_some(())
                        .ok_or(kafka_protocol::ResponseError::TopicAuthorizationFailed)
                        .and_then(|()| super::partition_of(found.as_ref(), p.partition))
                        .and_then(|partition| {
                            super::check_leader_epoch(&partition, p.current_leader_epoch)
                                .map(|()| partition)
                        }),
                })
            })
            .collect(),
    );
    loop {
        // Register for wake-ups before reading, so an append between the
        // read and the wait is not missed.
        let mut woken: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = wanted
            .iter()
            .filter_map(|w| w.target.as_ref().ok())
            .map(|p| {
                let written = if replica >= 0 {
                    p.replica_written()
                } else {
                    None
                };
                Box::pin(written.unwrap_or_else(|| p.appended()))
            })
            .collect();
        for notified in &mut woken {
            notified.as_mut().enable();
        }
        // Reads below the high watermark are recent data, in the page
        // cache: they run in place rather than on the blocking pool.
        let (results, total, failed) = read_all(&wanted, max_bytes, version, replica, committed);
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
    wanted: &[Wanted],
    max_bytes: usize,
    version: i16,
    replica: i32,
    committed: bool,
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
                // A list under read_committed, null otherwise, as Kafka.
                .with_aborted_transactions(committed.then(Vec::new));
            let partition = match &w.target {
                Ok(partition) => partition,
                Err(error) => {
                    failed = true;
                    return base.with_error_code(error.code());
                }
            };
            let budget = if total == 0 {
                w.max_bytes.max(1)
            } else {
                w.max_bytes.min(max_bytes.saturating_sub(total))
            };
            // Only a follower of this partition reads past the high
            // watermark; any other replica id is served as a consumer.
            let follower = replica >= 0
                && partition
                    .replica_set()
                    .is_some_and(|(leader, replicas, _)| {
                        replica != leader && replicas.contains(&replica)
                    });
            if follower {
                // Its fetch offset is where its log ends: the high
                // watermark may move before it is read below.
                partition.replica_fetched(replica, Offset::from(w.fetch_offset));
            }
            let base = base
                .with_high_watermark(partition.high_watermark().get())
                .with_last_stable_offset(partition.last_stable_offset().get())
                .with_log_start_offset(if version >= 5 {
                    partition.log_start().get()
                } else {
                    -1
                });
            if budget == 0 {
                return base.with_records(Some(Bytes::new()));
            }
            if follower {
                return match partition.read_for_replica(Offset::from(w.fetch_offset), budget) {
                    Ok(records) => {
                        total += records.len();
                        base.with_records(Some(records))
                    }
                    Err(err) => {
                        failed = true;
                        base.with_error_code(errors::code(&err).code())
                    }
                };
            }
            let from = Offset::from(w.fetch_offset);
            let read = if committed {
                partition
                    .read_committed(from, budget)
                    .map(|(fetched, aborted)| (fetched, Some(aborted)))
            } else {
                partition.read_for_fetch(from, budget).map(|f| (f, None))
            };
            match read {
                Ok((fetched, aborted)) => {
                    total += fetched.records.len();
                    partition
                        .traffic()
                        .add_out(fetched.record_count, fetched.records.len() as u64);
                    let base = match aborted {
                        Some(aborted) => base.with_aborted_transactions(Some(
                            aborted.into_iter().map(aborted_entry).collect(),
                        )),
                        None => base,
                    };
                    base.with_records(Some(fetched.records))
                }
                Err(err) => {
                    failed = true;
                    base.with_error_code(errors::code(&err).code())
                }
            }
        })
        .collect();
    (results, total, failed)
}

fn aborted_entry(txn: sluice_core::transactions::AbortedTxn) -> AbortedTransaction {
    AbortedTransaction::default()
        .with_producer_id(kafka_protocol::messages::ProducerId(txn.producer_id))
        .with_first_offset(txn.first_offset.get())
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
