//! Produce, in two phases so that a connection can pipeline: `start` writes
//! every partition's batches (in request order: the connection awaits it
//! before reading the next request), `finish` waits for durability and
//! builds the answer (concurrently with later requests, whose appends then
//! share the same group-committed sync).
//!
//! Resource alarms reach producers here. While the data directory's disk is
//! under `amqp.disk_free_limit`, every partition answers
//! KAFKA_STORAGE_ERROR, which clients retry, so producing resumes by itself
//! once space is freed. While queued messages are over the memory high
//! watermark, a request waits (up to [`MAX_THROTTLE`]) for the alarm to
//! clear before it is written, and answers with that wait as
//! `throttle_time_ms`: the connection reads nothing meanwhile, so the
//! producer slows down whether or not it honours the field.

use std::sync::Arc;

use bytes::BytesMut;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use sluice_core::records::BatchHeader;
use sluice_core::transactions::TxnError;
use sluice_core::{Appended, Broker, CoreError, TimestampType, Verdict, Writer};
use sluice_types::PartitionId;

use sluice_core::acls::{Operation, ResourceType};

use super::Context;
use crate::errors;

type Started = Result<(Appended, TimestampType), ResponseError>;

/// Longest a produce request waits for the memory alarm to clear.
pub(crate) const MAX_THROTTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// A produce request whose batches are written but not yet acknowledged.
pub(crate) struct ProducePending {
    acks: i16,
    version: i16,
    topics: Vec<(TopicName, Vec<(i32, Started)>)>,
    throttle_time_ms: i32,
}

/// Asks the broker's admission check: while the memory alarm is raised,
/// waits for it to clear, at most [`MAX_THROTTLE`]. Returns the time
/// waited in milliseconds, and whether the disk alarm refuses the write.
async fn admit(broker: &Broker) -> (i32, bool) {
    match broker.admission().check(Writer::KafkaProduce) {
        Verdict::Admit => (0, false),
        Verdict::Refuse(_) => (0, true),
        Verdict::Wait(_) => {
            let started = std::time::Instant::now();
            let mut alarm = broker.admission().changes();
            let _ = tokio::time::timeout(MAX_THROTTLE, alarm.wait_for(|raised| !raised)).await;
            let waited = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
            // The disk may have filled meanwhile.
            let refused = matches!(
                broker.admission().check(Writer::KafkaProduce),
                Verdict::Refuse(_)
            );
            (waited, refused)
        }
    }
}

fn failed(index: i32, code: ResponseError) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code.code())
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
}

/// Writes every partition's batches. A write to an existing topic is a
/// page-cache write (a segment roll included: it runs no fsync) and runs in
/// place; one that must create the topic runs on the blocking pool.
pub(crate) async fn start(
    context: &Context,
    request: ProduceRequest,
    version: i16,
) -> ProducePending {
    let acks = request.acks;
    let valid_acks = matches!(acks, -1..=1);
    let (throttle_time_ms, disk_full) = admit(&context.broker).await;
    // One authorization for the whole request.
    let checker = context.checker();
    let transactional_id: Option<Arc<str>> =
        request.transactional_id.map(|id| Arc::from(id.as_str()));
    let owned = transactional_id
        .as_deref()
        .is_some_and(|id| super::transactions::txn_id_refused(context, id));
    let mut topics = Vec::new();
    for topic_data in request.topic_data {
        let name = topic_data.name.to_string();
        let exists = context.broker.topics().get(&name).is_some();
        let writable = checker.allows(Operation::Write, ResourceType::Topic, &name);
        // A topic a write would create needs CREATE (on it or the cluster).
        let creatable = exists
            || checker.allows_on_cluster(Operation::Create)
            || checker.allows(Operation::Create, ResourceType::Topic, &name);
        let mut started = Vec::new();
        for data in topic_data.partition_data {
            let index = data.index;
            let outcome = if !valid_acks {
                Err(ResponseError::InvalidRequiredAcks)
            } else if owned {
                Err(ResponseError::TransactionalIdAuthorizationFailed)
            } else if !writable {
                Err(ResponseError::TopicAuthorizationFailed)
            } else if !creatable {
                Err(ResponseError::UnknownTopicOrPartition)
            } else if disk_full {
                Err(ResponseError::KafkaStorageError)
            } else if exists {
                write(
                    &context.broker,
                    (&name, index),
                    acks,
                    transactional_id.as_deref(),
                    data.records,
                )
            } else {
                let broker = Arc::clone(&context.broker);
                let name = name.clone();
                let transactional_id = transactional_id.clone();
                tokio::task::spawn_blocking(move || {
                    write(
                        &broker,
                        (&name, index),
                        acks,
                        transactional_id.as_deref(),
                        data.records,
                    )
                })
                .await
                .unwrap_or(Err(ResponseError::UnknownServerError))
            };
            started.push((index, outcome));
        }
        topics.push((topic_data.name, started));
    }
    if disk_full {
        tracing::debug!("produce refused: the disk alarm is raised");
    }
    ProducePending {
        acks,
        version,
        topics,
        throttle_time_ms,
    }
}

/// The replicas in sync with an unreplicated partition: its one node.
const IN_SYNC_REPLICAS: u32 = 1;

fn write(
    broker: &Broker,
    (topic, index): (&str, i32),
    acks: i16,
    transactional_id: Option<&str>,
    records: Option<bytes::Bytes>,
) -> Started {
    let refuse = |err: &CoreError| {
        tracing::debug!(topic, partition = index, error = %err, "produce refused");
        errors::code(err)
    };
    let name = topic;
    // Clients may not write the broker's internal topics (Kafka answers
    // INVALID_TOPIC_EXCEPTION): a forged commit would be loaded as a
    // group's offsets.
    if sluice_core::is_internal(name) {
        return Err(kafka_protocol::ResponseError::InvalidTopicException);
    }
    let topic = broker.topic_or_create(topic).map_err(|err| refuse(&err))?;
    // As Kafka: acks=all needs min.insync.replicas in sync, checked before
    // anything is written.
    let min_insync = topic.min_insync_replicas();
    let in_sync = if acks == -1 {
        topic
            .partition(PartitionId::from(index))
            .and_then(|p| p.in_sync_count())
            .map_or(IN_SYNC_REPLICAS, |n| u32::try_from(n).unwrap_or(u32::MAX))
    } else {
        IN_SYNC_REPLICAS
    };
    if acks == -1 && min_insync > in_sync {
        tracing::debug!(
            topic = name,
            partition = index,
            min_insync,
            in_sync,
            "produce refused: fewer replicas in sync than min.insync.replicas"
        );
        return Err(ResponseError::NotEnoughReplicas);
    }
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return Err(ResponseError::CorruptMessage);
    };
    // A transactional batch goes only to a partition its transaction
    // holds (KIP-890's verification, by the id's coordinator), under a
    // guard taken first: a marker of the producer before the batch is
    // written (the transaction ended meanwhile) refuses it.
    let mut guard = None;
    if let Ok(header) = BatchHeader::parse(&records)
        && header.is_transactional()
        && !header.is_control()
    {
        let Some(id) = transactional_id else {
            return Err(ResponseError::TransactionalIdAuthorizationFailed);
        };
        let local = topic.partition(PartitionId::from(index));
        let open_here = local
            .as_ref()
            .is_some_and(|p| p.in_transaction(header.producer_id, header.producer_epoch));
        // Taken whatever the check finds: a transaction open now may end
        // before the batch is written.
        guard = local.map(|p| p.verification_guard(header.producer_id));
        if let Err(error) = broker.transactions().verify(
            id,
            header.producer_id,
            header.producer_epoch,
            name,
            index,
            open_here,
        ) {
            tracing::debug!(topic = name, partition = index, %error, "transactional produce refused");
            return Err(match error {
                // The coordinator busy, moving or out of reach: the
                // producer sends again (as Kafka's leaders answer).
                TxnError::Concurrent { .. }
                | TxnError::NotCoordinator { .. }
                | TxnError::Core(_) => ResponseError::NotEnoughReplicas,
                other => errors::txn_code(&other, false),
            });
        }
    }
    let mut records = BytesMut::from(&records[..]);
    let pending = topic
        .append_start_guarded(PartitionId::from(index), &mut records, guard)
        .map_err(|err| refuse(&err))?;
    // acks=all waits for every in-sync replica of a replicated partition.
    let pending = if acks == -1 {
        pending.in_sync()
    } else {
        pending
    };
    Ok((pending, topic.timestamp_type()))
}

/// Waits for one partition's append to reach its acknowledgement level and
/// answers for it.
async fn answer(index: i32, started: Started, version: i16) -> PartitionProduceResponse {
    // log_start_offset exists from v5; earlier versions keep the default.
    let log_start = |offset: i64| if version >= 5 { offset } else { -1 };
    match started {
        Err(code) => failed(index, code),
        Ok((pending, timestamp_type)) => match pending.wait_async().await {
            Ok(info) => PartitionProduceResponse::default()
                .with_index(index)
                .with_error_code(0)
                .with_base_offset(info.first_offset.get())
                .with_log_append_time_ms(match timestamp_type {
                    TimestampType::LogAppendTime => info.append_time_ms,
                    TimestampType::CreateTime => -1,
                })
                .with_log_start_offset(log_start(info.log_start.get())),
            Err(err) => failed(index, errors::code(&err)),
        },
    }
}

impl ProducePending {
    /// Adds a quota's throttle time to the answer's `throttle_time_ms`.
    pub(crate) fn throttled(&mut self, time: std::time::Duration) {
        let millis = i32::try_from(time.as_millis()).unwrap_or(i32::MAX);
        self.throttle_time_ms = self.throttle_time_ms.max(millis);
    }

    /// Waits for every partition's append to be durable; `None` for acks=0,
    /// which gets no answer at all. The waits hold no thread: a partition's
    /// sync driver runs the group-committed sync on the blocking pool.
    pub(crate) async fn finish(self) -> Option<ProduceResponse> {
        let version = self.version;
        let acks = self.acks;
        let throttle_time_ms = self.throttle_time_ms;
        let partitions: usize = self.topics.iter().map(|(_, p)| p.len()).sum();
        let mut responses = Vec::with_capacity(self.topics.len());
        if partitions <= 1 {
            for (name, partitions) in self.topics {
                let mut partition_responses = Vec::with_capacity(partitions.len());
                for (index, started) in partitions {
                    partition_responses.push(answer(index, started, version).await);
                }
                responses.push(
                    TopicProduceResponse::default()
                        .with_name(name)
                        .with_partition_responses(partition_responses),
                );
            }
        } else {
            // One task per partition, so that every log's sync starts at
            // once instead of after the previous partition's.
            let waits: Vec<_> = self
                .topics
                .into_iter()
                .map(|(name, partitions)| {
                    let tasks: Vec<_> = partitions
                        .into_iter()
                        .map(|(index, started)| {
                            (index, tokio::spawn(answer(index, started, version)))
                        })
                        .collect();
                    (name, tasks)
                })
                .collect();
            for (name, tasks) in waits {
                let mut partition_responses = Vec::with_capacity(tasks.len());
                for (index, task) in tasks {
                    partition_responses.push(
                        task.await
                            .unwrap_or_else(|_| failed(index, ResponseError::UnknownServerError)),
                    );
                }
                responses.push(
                    TopicProduceResponse::default()
                        .with_name(name)
                        .with_partition_responses(partition_responses),
                );
            }
        }
        (acks != 0).then(|| {
            ProduceResponse::default()
                .with_responses(responses)
                .with_throttle_time_ms(throttle_time_ms)
        })
    }
}
