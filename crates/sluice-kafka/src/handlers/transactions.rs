//! The transactional APIs over the core's transaction coordinator:
//! AddPartitionsToTxn (v0-3 from clients, and the batched v4-5 form
//! brokers send, with KIP-890's `verify_only`), AddOffsetsToTxn,
//! TxnOffsetCommit and EndTxn, DescribeTransactions and ListTransactions;
//! WriteTxnMarkers from the coordinator on another node of a cluster.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as DescribeState,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListState;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
    WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::CommittedOffset;
use sluice_core::transactions::{Marker, Outcome, TxnState};

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, blocking};
use crate::errors;

/// The version from which a fenced producer hears PRODUCER_FENCED rather
/// than INVALID_PRODUCER_EPOCH (AddPartitionsToTxn, AddOffsetsToTxn,
/// EndTxn).
const FENCED_FROM: i16 = 2;

/// The first version of the batched form (KIP-890), which brokers send.
const BATCHED_FROM: i16 = 4;

/// Whether the client may not use the transactional id `id`
/// (TRANSACTIONAL_ID_AUTHORIZATION_FAILED): one of the broker's own ids
/// (AMQP transactions into streams), which only other nodes' brokers
/// use, or one the ACLs give it no WRITE on.
pub(crate) fn txn_id_refused(context: &Context, id: &str) -> bool {
    (!context.inter_node && id.starts_with(sluice_core::transactions::BROKER_TXN_PREFIX))
        || !context.allowed(Operation::Write, ResourceType::TransactionalId, id)
}

pub(crate) async fn add_partitions(
    context: &Context,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version < BATCHED_FROM {
        let results = add_to_one(
            context,
            request.v3_and_below_transactional_id.to_string(),
            request.v3_and_below_producer_id.0,
            request.v3_and_below_producer_epoch,
            request.v3_and_below_topics,
            version,
        )
        .await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    // The batched form is for brokers (KIP-890): CLUSTER_ACTION.
    if !context.allowed_on_cluster(Operation::ClusterAction) {
        return AddPartitionsToTxnResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let mut results = Vec::with_capacity(request.transactions.len());
    for transaction in request.transactions {
        let id = transaction.transactional_id.clone();
        let topics = if transaction.verify_only {
            verify_one(context, transaction).await
        } else {
            add_to_one(
                context,
                transaction.transactional_id.to_string(),
                transaction.producer_id.0,
                transaction.producer_epoch,
                transaction.topics,
                version,
            )
            .await
        };
        results.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(id)
                .with_topic_results(topics),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

/// KIP-890's check of one transaction (`verify_only`): each partition
/// answered NONE when the open transaction holds it, TRANSACTION_ABORTABLE
/// when not; the transaction's own error on every partition otherwise.
async fn verify_one(
    context: &Context,
    transaction: kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTransaction,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let broker = Arc::clone(&context.broker);
    let wanted: Vec<(String, i32)> = transaction
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.to_string(), *p)))
        .collect();
    let id = transaction.transactional_id.to_string();
    let (producer_id, epoch) = (transaction.producer_id.0, transaction.producer_epoch);
    let checked = {
        let wanted = wanted.clone();
        blocking(move || {
            broker
                .transactions()
                .verify_partitions(&id, producer_id, epoch, &wanted)
        })
        .await
    };
    let codes: Vec<i16> = match checked {
        Some(Ok(held)) => held
            .into_iter()
            .map(|held| {
                if held {
                    0
                } else {
                    ResponseError::TransactionAbortable.code()
                }
            })
            .collect(),
        Some(Err(error)) => vec![errors::txn_code(&error, true).code(); wanted.len()],
        None => vec![ResponseError::UnknownServerError.code(); wanted.len()],
    };
    let mut codes = codes.into_iter();
    topic_results(transaction.topics, |_, _| codes.next().unwrap_or_default())
}

/// Each partition of `topics` with its code from `code_of(topic, partition)`.
fn topic_results(
    topics: Vec<AddPartitionsToTxnTopic>,
    mut code_of: impl FnMut(&str, i32) -> i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(*partition)
                        .with_partition_error_code(code_of(topic.name.as_str(), *partition))
                })
                .collect();
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name)
                .with_results_by_partition(partitions)
        })
        .collect()
}

/// Adds `topics` to the transaction of `id` (`producer_id` at `epoch`):
/// every partition's result.
async fn add_to_one(
    context: &Context,
    id: String,
    producer_id: i64,
    epoch: i16,
    topics: Vec<AddPartitionsToTxnTopic>,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    if txn_id_refused(context, &id) {
        let code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return topic_results(topics, |_, _| code);
    }
    // WRITE on every topic, or nothing is added.
    let unwritable: Vec<String> = topics
        .iter()
        .map(|t| t.name.to_string())
        .filter(|name| !context.allowed(Operation::Write, ResourceType::Topic, name))
        .collect();
    if !unwritable.is_empty() {
        return topic_results(topics, |topic, _| {
            if unwritable.iter().any(|t| t == topic) {
                ResponseError::TopicAuthorizationFailed.code()
            } else {
                ResponseError::OperationNotAttempted.code()
            }
        });
    }
    let broker = Arc::clone(&context.broker);
    let wanted: Vec<(String, i32)> = topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.to_string(), *p)))
        .collect();
    // Partitions that do not exist are refused each; the others are then
    // not attempted, as Kafka answers. On a cluster they may be led by any
    // node: the markers reach them there.
    let missing: Vec<(String, i32)> = wanted
        .iter()
        .filter(|(topic, partition)| {
            broker.topics().get(topic).is_none_or(|t| {
                usize::try_from(*partition).map_or(true, |p| p >= t.partition_count())
            })
        })
        .cloned()
        .collect();
    let outcome: Result<(), ResponseError> = if missing.is_empty() {
        let added = blocking(move || {
            broker
                .transactions()
                .add(&id, producer_id, epoch, &wanted, None)
        })
        .await;
        match added {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(errors::txn_code(&error, version >= FENCED_FROM)),
            None => Err(ResponseError::UnknownServerError),
        }
    } else {
        Err(ResponseError::OperationNotAttempted)
    };
    topic_results(topics, |topic, partition| match &outcome {
        Ok(()) => 0,
        Err(_) if missing.iter().any(|(t, p)| t == topic && *p == partition) => {
            ResponseError::UnknownTopicOrPartition.code()
        }
        Err(error) => error.code(),
    })
}

pub(crate) async fn add_offsets(
    context: &Context,
    request: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    if txn_id_refused(context, &request.transactional_id) {
        return AddOffsetsToTxnResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    if !context.allowed(Operation::Read, ResourceType::Group, &request.group_id) {
        return AddOffsetsToTxnResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let broker = Arc::clone(&context.broker);
    let added = blocking(move || {
        // On a cluster the group's offsets partition gets the marker that
        // makes the transaction's offsets committed (Kafka's
        // AddOffsetsToTxn).
        let partitions: Vec<(String, i32)> = broker
            .offsets()
            .txn_partition(&request.group_id)
            .into_iter()
            .collect();
        broker.transactions().add(
            &request.transactional_id,
            request.producer_id.0,
            request.producer_epoch,
            &partitions,
            Some(&request.group_id),
        )
    })
    .await;
    let code = match added {
        Some(Ok(())) => 0,
        Some(Err(error)) => errors::txn_code(&error, version >= FENCED_FROM).code(),
        None => ResponseError::UnknownServerError.code(),
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

pub(crate) async fn commit_offsets(
    context: &Context,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let broker = Arc::clone(&context.broker);
    // Kafka's rule: partitions of topics the client may not read are
    // refused one by one; the others are committed.
    let checker = context.checker();
    let unreadable: std::collections::HashSet<String> = request
        .topics
        .iter()
        .filter(|t| !checker.allows(Operation::Read, ResourceType::Topic, &t.name))
        .map(|t| t.name.to_string())
        .collect();
    let offsets: Vec<(String, i32, CommittedOffset)> = request
        .topics
        .iter()
        .filter(|topic| !unreadable.contains(topic.name.as_str()))
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| {
                (
                    topic.name.to_string(),
                    p.partition_index,
                    CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(ToString::to_string),
                    },
                )
            })
        })
        .collect();
    let group = request.group_id.to_string();
    let (id, producer_id, epoch) = (
        request.transactional_id.to_string(),
        request.producer_id.0,
        request.producer_epoch,
    );
    let (generation, member) = (request.generation_id, request.member_id.to_string());
    let coordinates = super::coordinates(context, &group);
    let owned = txn_id_refused(context, &id);
    let group_readable = context.allowed(Operation::Read, ResourceType::Group, &group);
    let committed = blocking(move || {
        if owned {
            return Err(ResponseError::TransactionalIdAuthorizationFailed);
        }
        if !group_readable {
            return Err(ResponseError::GroupAuthorizationFailed);
        }
        if offsets.is_empty() {
            // Every partition was refused (or none was named).
            return Ok(());
        }
        if group.starts_with(sluice_core::SHARE_STATE_PREFIX) {
            return Err(ResponseError::GroupAuthorizationFailed);
        }
        // A member of a group (v3+, KIP-447) commits only in its current
        // generation, or of a consumer group (KIP-848) its current epoch:
        // a zombie of an older one is fenced.
        match broker
            .consumer_groups()
            .check_offset_commit(&group, &member, generation, None)
        {
            // TxnOffsetCommit has no STALE_MEMBER_EPOCH: Kafka answers an
            // older epoch with ILLEGAL_GENERATION (the producer aborts).
            Some(checked) => checked.map_err(|err| match err {
                sluice_core::consumer_groups::ConsumerGroupError::StaleMemberEpoch => {
                    ResponseError::IllegalGeneration
                }
                other => errors::consumer_group_code(&other),
            })?,
            None if generation >= 0 => broker
                .groups()
                .check_commit(&group, generation, &member)
                .map_err(errors::group_code)?,
            None => {}
        }
        if broker.offsets().txn_partition(&group).is_some() {
            // A cluster: the group's coordinator keeps them, pending until
            // the transaction's marker reaches the group's partition.
            if !coordinates {
                return Err(ResponseError::NotCoordinator);
            }
            return broker
                .offsets()
                .commit_pending(&group, producer_id, epoch, &offsets)
                .map_err(|error| match error {
                    // Fenced by a newer instance's transaction (Kafka's
                    // answer to a zombie's commit).
                    sluice_core::CoreError::InvalidProducerEpoch { .. } => {
                        ResponseError::ProducerFenced
                    }
                    other => errors::code(&other),
                });
        }
        broker
            .transactions()
            .commit_offsets(&id, producer_id, epoch, &group, &offsets)
            .map_err(|error| errors::txn_code(&error, false))
    })
    .await;
    let code = match committed {
        Some(Ok(())) => 0,
        Some(Err(error)) => error.code(),
        None => ResponseError::UnknownServerError.code(),
    };
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let code = if unreadable.contains(topic.name.as_str()) && code == 0 {
                ResponseError::TopicAuthorizationFailed.code()
            } else {
                code
            };
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            TxnOffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub(crate) async fn end(context: &Context, request: EndTxnRequest, version: i16) -> EndTxnResponse {
    if txn_id_refused(context, &request.transactional_id) {
        return EndTxnResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    let broker = Arc::clone(&context.broker);
    let ended = blocking(move || {
        broker.transactions().end(
            &broker,
            &request.transactional_id,
            request.producer_id.0,
            request.producer_epoch,
            request.committed,
        )
    })
    .await;
    let code = match ended {
        Some(Ok(())) => 0,
        Some(Err(error)) => {
            tracing::debug!(%error, "EndTxn refused");
            errors::txn_code(&error, version >= FENCED_FROM).code()
        }
        None => ResponseError::UnknownServerError.code(),
    };
    EndTxnResponse::default().with_error_code(code)
}

/// DescribeTransactions (what `kafka-transactions.sh describe` shows):
/// each id's state, producer, timeout, start and partitions.
pub(crate) fn describe(
    context: &Context,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let coordinator = context.broker.transactions();
    let checker = context.checker();
    let states = request
        .transactional_ids
        .into_iter()
        .map(|id| {
            let answer = DescribeState::default().with_producer_id(ProducerId(-1));
            if !context.allowed(Operation::Describe, ResourceType::TransactionalId, &id) {
                return answer
                    .with_transactional_id(id)
                    .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
            }
            if coordinator.coordinator(&id) != sluice_core::Coordinator::Here {
                return answer
                    .with_transactional_id(id)
                    .with_error_code(ResponseError::NotCoordinator.code());
            }
            let Some(meta) = coordinator.describe(&id) else {
                return answer
                    .with_transactional_id(id)
                    .with_error_code(ResponseError::TransactionalIdNotFound.code());
            };
            let mut topics: Vec<TopicData> = Vec::new();
            // Kafka leaves out the partitions of topics the client may not
            // describe.
            let visible = meta.partitions.iter().filter(|(topic, _)| {
                checker.allows(Operation::Describe, ResourceType::Topic, topic)
            });
            for (topic, partition) in visible {
                match topics.last_mut() {
                    Some(last) if last.topic.as_str() == topic.as_str() => {
                        last.partitions.push(*partition);
                    }
                    _ => topics.push(
                        TopicData::default()
                            .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                            .with_partitions(vec![*partition]),
                    ),
                }
            }
            answer
                .with_transactional_id(id)
                .with_transaction_state(StrBytes::from_static_str(meta.state.as_str()))
                .with_transaction_timeout_ms(meta.timeout_ms)
                .with_transaction_start_time_ms(meta.started_ms)
                .with_producer_id(ProducerId(meta.producer_id))
                .with_producer_epoch(meta.epoch)
                .with_topics(topics)
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// ListTransactions (`kafka-transactions.sh list`): the ids, filtered by
/// state, producer id and (v1+) running longer than `duration_filter` ms.
pub(crate) fn list(
    context: &Context,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let known: Vec<&str> = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect();
    let unknown: Vec<StrBytes> = request
        .state_filters
        .iter()
        .filter(|s| {
            !known.contains(&s.as_str())
                && s.as_str() != "PrepareEpochFence"
                && s.as_str() != "Dead"
        })
        .cloned()
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    // Only the ids the client may describe.
    let checker = context.checker();
    let states = context
        .broker
        .transactions()
        .list()
        .into_iter()
        .filter(|(id, _)| checker.allows(Operation::Describe, ResourceType::TransactionalId, id))
        .filter(|(_, meta)| {
            (request.state_filters.is_empty()
                || request
                    .state_filters
                    .iter()
                    .any(|s| s.as_str() == meta.state.as_str()))
                && (request.producer_id_filters.is_empty()
                    || request
                        .producer_id_filters
                        .contains(&ProducerId(meta.producer_id)))
                && (request.duration_filter < 0
                    || (meta.state == TxnState::Ongoing
                        && now - meta.started_ms >= request.duration_filter))
        })
        .map(|(id, meta)| {
            ListState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id)))
                .with_producer_id(ProducerId(meta.producer_id))
                .with_transaction_state(StrBytes::from_static_str(meta.state.as_str()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}

/// WriteTxnMarkers (from the coordinator of a transaction on another node
/// of the cluster): each marker written to its partitions, which this
/// node leads, and acknowledged by their in-sync replicas, as Kafka's
/// leader appends them with acks=all. A marker from a coordinator older
/// than the last one a partition saw for its producer is
/// TRANSACTION_COORDINATOR_FENCED. Anyone but another node (a client on
/// the Kafka listener) gets CLUSTER_AUTHORIZATION_FAILED, Kafka's answer
/// to a caller without ClusterAction.
pub(crate) async fn write_markers(
    context: &Context,
    request: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let markers = request.markers;
    // Every partition asked for, in the request's order.
    let writes: Vec<(String, i32, i64, i16, Marker)> = markers
        .iter()
        .flat_map(|marker| {
            let written = Marker {
                outcome: if marker.transaction_result {
                    Outcome::Commit
                } else {
                    Outcome::Abort
                },
                coordinator_epoch: marker.coordinator_epoch,
            };
            marker.topics.iter().flat_map(move |topic| {
                topic.partition_indexes.iter().map(move |partition| {
                    let (id, epoch) = (marker.producer_id.0, marker.producer_epoch);
                    (topic.name.to_string(), *partition, id, epoch, written)
                })
            })
        })
        .collect();
    let codes: Vec<i16> = if context.inter_node {
        let broker = Arc::clone(&context.broker);
        blocking(move || {
            writes
                .iter()
                .map(|(topic, partition, id, epoch, marker)| {
                    match broker.write_marker(topic, *partition, *id, *epoch, *marker) {
                        Ok(()) => 0,
                        Err(error) => errors::code(&error).code(),
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    } else {
        vec![ResponseError::ClusterAuthorizationFailed.code(); writes.len()]
    };
    // Every partition asked for is answered, never left out (a coordinator
    // counts only answered ones): one the work did not reach with
    // UNKNOWN_SERVER_ERROR.
    let mut codes = codes.into_iter();
    let mut answered = Vec::with_capacity(markers.len());
    for marker in markers {
        let mut topics = Vec::with_capacity(marker.topics.len());
        for topic in marker.topics {
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|partition| {
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(*partition)
                        .with_error_code(
                            codes
                                .next()
                                .unwrap_or(ResponseError::UnknownServerError.code()),
                        )
                })
                .collect();
            topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions),
            );
        }
        answered.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(answered)
}
