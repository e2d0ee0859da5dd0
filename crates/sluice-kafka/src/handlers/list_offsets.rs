//! ListOffsets: earliest (-2), latest (-1), or the first offset at or
//! after a timestamp.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use sluice_core::Position;

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, blocking};
use crate::errors;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// KIP-734 (v7+): the record with the largest timestamp.
const MAX_TIMESTAMP: i64 = -3;

pub(crate) async fn handle(
    context: &Context,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let broker = std::sync::Arc::clone(&context.broker);
    // One authorization for the whole request.
    let checker = context.checker();
    let describable: Vec<bool> = request
        .topics
        .iter()
        .map(|t| checker.allows(Operation::Describe, ResourceType::Topic, &t.name))
        .collect();
    let topics = blocking(move || {
        request
            .topics
            .into_iter()
            .zip(describable)
            .map(|(topic, describable)| {
                let found = broker.topics().get(&topic.name);
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let answer = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_timestamp(-1)
                            .with_offset(-1)
                            .with_leader_epoch(-1);
                        if !describable {
                            return answer
                                .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                        }
                        let partition = match super::partition_of(found.as_ref(), p.partition_index)
                        {
                            Ok(partition) => partition,
                            Err(error) => return answer.with_error_code(error.code()),
                        };
                        if let Err(error) =
                            super::check_leader_epoch(&partition, p.current_leader_epoch)
                        {
                            return answer.with_error_code(error.code());
                        }
                        // A new leader until its high watermark reaches
                        // where its epoch began (Kafka's KAFKA-7395 rule).
                        if !partition.offsets_settled() {
                            return answer
                                .with_error_code(ResponseError::OffsetNotAvailable.code());
                        }
                        let answer = answer.with_leader_epoch(if version >= 4 {
                            partition.leader_epoch().get()
                        } else {
                            -1
                        });
                        let position = match p.timestamp {
                            LATEST => Position::Latest,
                            EARLIEST => Position::Earliest,
                            MAX_TIMESTAMP if version >= 7 => Position::MaxTimestamp,
                            timestamp if timestamp >= 0 => Position::Timestamp(timestamp),
                            _ => {
                                return answer
                                    .with_error_code(ResponseError::InvalidRequest.code());
                            }
                        };
                        // read_committed (v2+) sees up to the last stable offset.
                        let resolved = if version >= 2 && request.isolation_level == 1 {
                            partition.resolve_committed(position)
                        } else {
                            partition.resolve(position)
                        };
                        match resolved {
                            // Earliest and latest carry no timestamp (-1).
                            Ok(Some((offset, found))) => {
                                answer.with_offset(offset.get()).with_timestamp(found)
                            }
                            Ok(None) => answer,
                            Err(err) => answer.with_error_code(errors::code(&err).code()),
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    ListOffsetsResponse::default().with_topics(topics)
}
