//! Produce: batches kept as sent; each partition appended on the blocking
//! pool so that partitions of one request sync in parallel.

use std::sync::Arc;

use bytes::BytesMut;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use sluice_core::TimestampType;
use sluice_types::PartitionId;

use super::Context;
use crate::errors;

pub(crate) async fn handle(
    context: &Context,
    request: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let valid_acks = matches!(acks, -1..=1);
    let mut pending = Vec::new();
    for topic_data in request.topic_data {
        let name = topic_data.name.to_string();
        let mut partitions = Vec::new();
        for data in topic_data.partition_data {
            let index = data.index;
            let broker = Arc::clone(&context.broker);
            let topic_name = name.clone();
            let task = tokio::task::spawn_blocking(move || {
                if !valid_acks {
                    return PartitionProduceResponse::default()
                        .with_index(index)
                        .with_error_code(ResponseError::InvalidRequiredAcks.code());
                }
                append(&broker, &topic_name, index, data.records, version)
            });
            partitions.push((index, task));
        }
        pending.push((topic_data.name, partitions));
    }
    let mut responses = Vec::new();
    for (name, partitions) in pending {
        let mut partition_responses = Vec::new();
        for (index, task) in partitions {
            partition_responses.push(task.await.unwrap_or_else(|_| {
                PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(ResponseError::UnknownServerError.code())
            }));
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partition_responses),
        );
    }
    // acks=0: the producer expects no answer at all.
    (acks != 0).then(|| ProduceResponse::default().with_responses(responses))
}

fn append(
    broker: &sluice_core::Broker,
    topic: &str,
    index: i32,
    records: Option<bytes::Bytes>,
    version: i16,
) -> PartitionProduceResponse {
    // log_start_offset exists from v5; earlier versions must keep the default.
    let log_start = |offset: i64| if version >= 5 { offset } else { -1 };
    let failed = |code: ResponseError| {
        PartitionProduceResponse::default()
            .with_index(index)
            .with_error_code(code.code())
            .with_base_offset(-1)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(-1)
    };
    let topic = match broker.topic_or_create(topic) {
        Ok(topic) => topic,
        Err(err) => return failed(errors::code(&err)),
    };
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return failed(ResponseError::CorruptMessage);
    };
    let mut records = BytesMut::from(&records[..]);
    match topic.append_blocking(PartitionId::from(index), &mut records) {
        Ok(info) => PartitionProduceResponse::default()
            .with_index(index)
            .with_error_code(0)
            .with_base_offset(info.first_offset.get())
            .with_log_append_time_ms(match topic.config().timestamp_type() {
                TimestampType::LogAppendTime => info.append_time_ms,
                TimestampType::CreateTime => -1,
            })
            .with_log_start_offset(log_start(info.log_start.get())),
        Err(err) => {
            tracing::debug!(topic = topic.name(), partition = index, error = %err, "produce refused");
            failed(errors::code(&err))
        }
    }
}
