//! Produce, in two phases so that a connection can pipeline: `start` writes
//! every partition's batches (in request order: the connection awaits it
//! before reading the next request), `finish` waits for durability and
//! builds the answer (concurrently with later requests, whose appends then
//! share the same group-committed sync).

use std::sync::Arc;

use bytes::BytesMut;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use sluice_core::{Broker, CoreError, PendingAppend, TimestampType};
use sluice_types::PartitionId;

use super::Context;
use crate::errors;

type Started = Result<(PendingAppend, TimestampType), ResponseError>;

/// A produce request whose batches are written but not yet acknowledged.
pub(crate) struct ProducePending {
    acks: i16,
    version: i16,
    topics: Vec<(TopicName, Vec<(i32, Started)>)>,
}

fn failed(index: i32, code: ResponseError) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code.code())
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
}

/// Writes every partition's batches, partitions in parallel.
pub(crate) async fn start(
    context: &Context,
    request: ProduceRequest,
    version: i16,
) -> ProducePending {
    let acks = request.acks;
    let valid_acks = matches!(acks, -1..=1);
    let mut tasks = Vec::new();
    for topic_data in request.topic_data {
        let mut partitions = Vec::new();
        for data in topic_data.partition_data {
            let index = data.index;
            let broker = Arc::clone(&context.broker);
            let topic = topic_data.name.to_string();
            let task = tokio::task::spawn_blocking(move || -> Started {
                if !valid_acks {
                    return Err(ResponseError::InvalidRequiredAcks);
                }
                write(&broker, &topic, index, data.records)
            });
            partitions.push((index, task));
        }
        tasks.push((topic_data.name, partitions));
    }
    let mut topics = Vec::new();
    for (name, partitions) in tasks {
        let mut started = Vec::new();
        for (index, task) in partitions {
            let outcome = task.await.unwrap_or(Err(ResponseError::UnknownServerError));
            started.push((index, outcome));
        }
        topics.push((name, started));
    }
    ProducePending {
        acks,
        version,
        topics,
    }
}

fn write(broker: &Broker, topic: &str, index: i32, records: Option<bytes::Bytes>) -> Started {
    let refuse = |err: &CoreError| {
        tracing::debug!(topic, partition = index, error = %err, "produce refused");
        errors::code(err)
    };
    let topic = broker.topic_or_create(topic).map_err(|err| refuse(&err))?;
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return Err(ResponseError::CorruptMessage);
    };
    let mut records = BytesMut::from(&records[..]);
    let pending = topic
        .append_start(PartitionId::from(index), &mut records)
        .map_err(|err| refuse(&err))?;
    Ok((pending, topic.config().timestamp_type()))
}

impl ProducePending {
    /// Waits for every partition's append to be durable; `None` for acks=0,
    /// which gets no answer at all.
    pub(crate) async fn finish(self) -> Option<ProduceResponse> {
        let version = self.version;
        // log_start_offset exists from v5; earlier versions keep the default.
        let log_start = move |offset: i64| if version >= 5 { offset } else { -1 };
        let mut waits = Vec::new();
        for (name, partitions) in self.topics {
            let mut tasks = Vec::new();
            for (index, started) in partitions {
                let task = tokio::task::spawn_blocking(move || match started {
                    Err(code) => failed(index, code),
                    Ok((pending, timestamp_type)) => match pending.wait() {
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
                });
                tasks.push((index, task));
            }
            waits.push((name, tasks));
        }
        let mut responses = Vec::new();
        for (name, tasks) in waits {
            let mut partition_responses = Vec::new();
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
        (self.acks != 0).then(|| ProduceResponse::default().with_responses(responses))
    }
}
