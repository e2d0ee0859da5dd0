//! ShareGroupHeartbeat, ShareGroupDescribe, ShareFetch and
//! ShareAcknowledge: share groups (KIP-932) over the core's share state.
//! ShareFetch long-polls like Fetch: it answers once it acquired records,
//! or when `max_wait_ms` passes; appends, releases and lock expiries wake
//! it (librdkafka fetches again at once after an empty answer).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::share_acknowledge_response::{
    self as ack_response, ShareAcknowledgeTopicResponse,
};
use kafka_protocol::messages::share_fetch_response::{
    AcquiredRecords, LeaderIdAndEpoch, PartitionData, ShareFetchableTopicResponse,
};
use kafka_protocol::messages::share_group_describe_response::{self as describe_response};
use kafka_protocol::messages::share_group_heartbeat_response::{self, Assignment};
use kafka_protocol::messages::{
    ShareAcknowledgeRequest, ShareAcknowledgeResponse, ShareFetchRequest, ShareFetchResponse,
    ShareGroupDescribeRequest, ShareGroupDescribeResponse, ShareGroupHeartbeatRequest,
    ShareGroupHeartbeatResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::consumer_groups::TopicId;
use sluice_core::share_groups::{AckBatch, AckType, ShareError, ShareHeartbeat};
use sluice_core::{Broker, Partition};
use sluice_types::Offset;
use tokio::time::Instant;

use sluice_core::acls::{Operation, ResourceType};

use super::acls::Checker;

use super::Context;

/// Longest wait a client may ask for; longer requests are cut to this.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// An acknowledgement batch as the wire has it: first, last, types.
type WireBatch = (i64, i64, Vec<i8>);

/// A session partition: led here, or why not.
type Target = Result<Arc<Partition>, ResponseError>;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn share_code(error: &ShareError) -> ResponseError {
    match error {
        ShareError::InvalidRequest(_) => ResponseError::InvalidRequest,
        ShareError::UnknownMemberId => ResponseError::UnknownMemberId,
        ShareError::FencedMemberEpoch => ResponseError::FencedMemberEpoch,
        ShareError::NotShareGroup(_) => ResponseError::GroupIdNotFound,
        ShareError::SessionNotFound => ResponseError::ShareSessionNotFound,
        ShareError::InvalidSessionEpoch => ResponseError::InvalidShareSessionEpoch,
        ShareError::InvalidRecordState => ResponseError::InvalidRecordState,
    }
}

/// Whether `group_id` is taken by a group of another kind with members.
fn other_kind(broker: &Broker, group_id: &str) -> bool {
    broker
        .groups()
        .describe(group_id)
        .is_some_and(|g| !g.members.is_empty())
        || broker.consumer_groups().exists(group_id) == Some(true)
}

pub(crate) fn heartbeat(
    context: &Context,
    request: ShareGroupHeartbeatRequest,
    client_id: &str,
) -> ShareGroupHeartbeatResponse {
    let refused = |error: ResponseError, message: Option<String>| {
        ShareGroupHeartbeatResponse::default()
            .with_error_code(error.code())
            .with_error_message(message.map(text))
    };
    let group_id = request.group_id.to_string();
    if let Some((error, message)) =
        context.heartbeat_denied(&group_id, request.subscribed_topic_names.as_deref())
    {
        return refused(error, message);
    }
    if !super::coordinates(context, &group_id) {
        return refused(ResponseError::NotCoordinator, None);
    }
    let broker = &context.broker;
    if request.member_epoch == 0 && other_kind(broker, &group_id) {
        let error = ShareError::NotShareGroup(group_id);
        return refused(share_code(&error), Some(error.to_string()));
    }
    let heartbeat = ShareHeartbeat {
        group_id,
        member_id: request.member_id.to_string(),
        member_epoch: request.member_epoch,
        rack_id: request.rack_id.map(|s| s.to_string()),
        subscribed_names: request
            .subscribed_topic_names
            .map(|names| names.into_iter().map(|n| n.to_string()).collect()),
        client_id: client_id.to_owned(),
        client_host: context.peer.clone(),
    };
    let catalog = broker.topic_catalog();
    match broker
        .share_groups()
        .heartbeat(heartbeat, &catalog, Instant::now())
    {
        Ok(answer) => ShareGroupHeartbeatResponse::default()
            .with_member_id(Some(text(answer.member_id)))
            .with_member_epoch(answer.member_epoch)
            .with_heartbeat_interval_ms(
                i32::try_from(answer.heartbeat_interval.as_millis()).unwrap_or(i32::MAX),
            )
            .with_assignment(answer.assignment.map(|assignment| {
                Assignment::default().with_topic_partitions(
                    assignment
                        .into_iter()
                        .map(|(topic, partitions)| {
                            share_group_heartbeat_response::TopicPartitions::default()
                                .with_topic_id(uuid::Uuid::from_bytes(topic))
                                .with_partitions(partitions.into_iter().collect())
                        })
                        .collect(),
                )
            })),
        Err(error) => {
            tracing::debug!(%error, "share group heartbeat refused");
            refused(share_code(&error), Some(error.to_string()))
        }
    }
}

pub(crate) fn describe(
    context: &Context,
    request: ShareGroupDescribeRequest,
) -> ShareGroupDescribeResponse {
    let catalog = context.broker.topic_catalog();
    let groups = request
        .group_ids
        .into_iter()
        .map(|group_id| {
            let group =
                describe_response::DescribedGroup::default().with_group_id(group_id.clone());
            if !context.allowed(Operation::Describe, ResourceType::Group, &group_id) {
                return group.with_error_code(ResponseError::GroupAuthorizationFailed.code());
            }
            if !super::coordinates(context, &group_id) {
                return group.with_error_code(ResponseError::NotCoordinator.code());
            }
            let Some(found) = context.broker.share_groups().describe(&group_id) else {
                return group
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(text(format!(
                        "Group {} is not a share group.",
                        group_id.as_str()
                    ))));
            };
            let members = found
                .members
                .into_iter()
                .map(|m| {
                    describe_response::Member::default()
                        .with_member_id(text(m.member_id))
                        .with_rack_id(m.rack_id.map(text))
                        .with_member_epoch(m.member_epoch)
                        .with_client_id(text(m.client_id))
                        .with_client_host(text(m.client_host))
                        .with_subscribed_topic_names(
                            m.subscribed_names
                                .into_iter()
                                .map(|n| TopicName(text(n)))
                                .collect(),
                        )
                        .with_assignment(
                            describe_response::Assignment::default().with_topic_partitions(
                                m.assignment
                                    .iter()
                                    .map(|(topic, partitions)| {
                                        describe_response::TopicPartitions::default()
                                            .with_topic_id(uuid::Uuid::from_bytes(*topic))
                                            .with_topic_name(TopicName(text(
                                                catalog.name_of(topic).unwrap_or_default(),
                                            )))
                                            .with_partitions(partitions.iter().copied().collect())
                                    })
                                    .collect(),
                            ),
                        )
                })
                .collect();
            let group = group
                .with_group_state(StrBytes::from_static_str(found.state))
                .with_group_epoch(found.group_epoch)
                .with_assignment_epoch(found.group_epoch)
                .with_assignor_name(StrBytes::from_static_str("simple"))
                .with_members(members);
            if request.include_authorized_operations {
                group.with_authorized_operations(super::authorized::GROUP)
            } else {
                group
            }
        })
        .collect();
    ShareGroupDescribeResponse::default().with_groups(groups)
}

/// The wire's acknowledgement batches as the core takes them.
fn batches(
    wire: impl IntoIterator<Item = (i64, i64, Vec<i8>)>,
) -> Result<Vec<AckBatch>, ShareError> {
    wire.into_iter()
        .map(|(first, last, types)| {
            let types = types
                .into_iter()
                .map(|t| {
                    AckType::from_wire(t).ok_or_else(|| {
                        ShareError::InvalidRequest(format!("unknown acknowledge type {t}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AckBatch { first, last, types })
        })
        .collect()
}

/// Applies one partition's acknowledgements; the partition's
/// acknowledge error code (0: applied).
fn acknowledge(
    broker: &Broker,
    group_id: &str,
    member_id: &str,
    topic: TopicId,
    partition: i32,
    wire: Vec<WireBatch>,
) -> i16 {
    // Only the partition's leader, with the state it loaded as leader,
    // takes acknowledgements: records acquired from an earlier leader are
    // available again there.
    let led = led_here(broker, &topic, partition).and_then(|led| {
        let epoch = led.leader_epoch().get();
        if broker
            .share_groups()
            .needs_load(group_id, topic, partition, epoch)
        {
            Err(ResponseError::InvalidRecordState)
        } else {
            Ok(())
        }
    });
    if let Err(error) = led {
        return error.code();
    }
    let applied = batches(wire).and_then(|batches| {
        broker
            .share_groups()
            .acknowledge(group_id, member_id, topic, partition, &batches)
    });
    match applied {
        Ok(()) => 0,
        Err(error) => {
            tracing::debug!(%error, group = group_id, member = member_id, partition, "share acknowledgement refused");
            share_code(&error).code()
        }
    }
}

/// The partition `topic`/`index` if this node leads it.
/// Whether the client may read the topic of id `topic` (Kafka checks READ
/// on every topic of each ShareFetch and ShareAcknowledge). An unknown id
/// is left to the partition lookup.
fn readable(broker: &Broker, checker: &Checker, topic: &TopicId) -> bool {
    broker
        .topic_catalog()
        .name_of(topic)
        .is_none_or(|name| checker.allows(Operation::Read, ResourceType::Topic, name))
}

fn led_here(broker: &Broker, topic: &TopicId, index: i32) -> Result<Arc<Partition>, ResponseError> {
    let catalog = broker.topic_catalog();
    let name = catalog
        .name_of(topic)
        .ok_or(ResponseError::UnknownTopicId)?;
    super::partition_of(broker.topics().get(name).as_ref(), index)
}

/// One partition's share fetch result.
#[derive(Default)]
struct Taken {
    records: Bytes,
    acquired: Vec<AcquiredRecords>,
    error: i16,
    leader_epoch: i32,
}

/// Acquires what `partition` has for `member_id`, reading at most
/// `budget` bytes and `max_records` records.
fn take(
    broker: &Broker,
    group_id: &str,
    member_id: &str,
    topic: TopicId,
    partition: &Partition,
    budget: usize,
    max_records: usize,
) -> Taken {
    let index = partition.id().get();
    let high_watermark = partition.high_watermark().get();
    let log_start = partition.log_start().get();
    let shares = broker.share_groups();
    let mut taken = Taken {
        leader_epoch: partition.leader_epoch().get(),
        ..Taken::default()
    };
    let from = shares.with_partition(
        group_id,
        topic,
        index,
        log_start,
        high_watermark,
        |state, settings| state.wanted_from(high_watermark, settings.max_record_locks),
    );
    let Some(from) = from else {
        return taken;
    };
    let fetched = match partition.read_for_fetch(Offset::from(from), budget.max(1)) {
        Ok(fetched) => fetched,
        Err(error) => {
            taken.error = crate::errors::code(&error).code();
            return taken;
        }
    };
    let Some(end) = sluice_core::records::headers(&fetched.records)
        .last()
        .map(|(_, header)| header.last_offset().get() + 1)
    else {
        return taken;
    };
    let end = end.min(high_watermark);
    let acquired = shares.with_partition(
        group_id,
        topic,
        index,
        log_start,
        high_watermark,
        |state, settings| {
            state.acquire(member_id, from..end, max_records, settings, Instant::now())
        },
    );
    if acquired.is_empty() {
        return taken;
    }
    taken.records = fetched.records;
    taken.acquired = acquired
        .into_iter()
        .map(|a| {
            AcquiredRecords::default()
                .with_first_offset(a.first)
                .with_last_offset(a.last)
                .with_delivery_count(i16::try_from(a.delivery_count).unwrap_or(i16::MAX))
        })
        .collect();
    taken
}

pub(crate) async fn fetch(context: &Context, request: ShareFetchRequest) -> ShareFetchResponse {
    let broker = Arc::clone(&context.broker);
    let lock_duration = match request.group_id.as_ref() {
        Some(group_id) => broker.share_groups().settings(group_id).lock_duration,
        None => broker.share_groups().base_settings().lock_duration,
    };
    let lock_ms = i32::try_from(lock_duration.as_millis()).unwrap_or(i32::MAX);
    let refused = |error: ResponseError, message: String| {
        ShareFetchResponse::default()
            .with_error_code(error.code())
            .with_error_message(Some(text(message)))
            .with_acquisition_lock_timeout_ms(lock_ms)
    };
    let (Some(group_id), Some(member_id)) = (request.group_id, request.member_id) else {
        return refused(
            ResponseError::InvalidRequest,
            "GroupId and MemberId are required".to_owned(),
        );
    };
    let (group_id, member_id) = (group_id.to_string(), member_id.to_string());
    if !context.allowed(Operation::Read, ResourceType::Group, &group_id) {
        return refused(
            ResponseError::GroupAuthorizationFailed,
            format!("not authorized to read group {group_id}"),
        );
    }
    // Topics may repeat (librdkafka lists a topic again for acks): merged.
    let mut added: Vec<(TopicId, i32)> = Vec::new();
    let mut acks: BTreeMap<(TopicId, i32), Vec<WireBatch>> = BTreeMap::new();
    for topic in request.topics {
        let id = *topic.topic_id.as_bytes();
        for p in topic.partitions {
            if !added.contains(&(id, p.partition_index)) {
                added.push((id, p.partition_index));
            }
            if !p.acknowledgement_batches.is_empty() {
                acks.entry((id, p.partition_index)).or_default().extend(
                    p.acknowledgement_batches
                        .into_iter()
                        .map(|b| (b.first_offset, b.last_offset, b.acknowledge_types)),
                );
            }
        }
    }
    let forgotten: Vec<(TopicId, i32)> = request
        .forgotten_topics_data
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (*t.topic_id.as_bytes(), *p)))
        .collect();
    let epoch = request.share_session_epoch;
    let connection = context.connection.as_ref().map(|c| c.id());
    if epoch == 0 && !acks.is_empty() {
        return refused(
            ResponseError::InvalidRequest,
            "acknowledgements in a request that opens a share session".to_owned(),
        );
    }
    let session = match broker.share_groups().session(
        (&group_id, &member_id),
        epoch,
        &added,
        &forgotten,
        connection,
    ) {
        Ok(partitions) => partitions,
        Err(error) => return refused(share_code(&error), error.to_string()),
    };
    let checker = context.checker();
    let mut results: BTreeMap<(TopicId, i32), (i16, Taken)> = BTreeMap::new();
    for ((topic, partition), wire) in acks {
        let code = if readable(&broker, &checker, &topic) {
            acknowledge(&broker, &group_id, &member_id, topic, partition, wire)
        } else {
            ResponseError::TopicAuthorizationFailed.code()
        };
        results.insert((topic, partition), (code, Taken::default()));
    }
    if epoch == -1 {
        // The session closed: nothing is fetched, what is held is released.
        broker.share_groups().release_member(&group_id, &member_id);
        store(&broker).await;
        return answer(results, lock_ms);
    }
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0)).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let max_bytes = usize::try_from(request.max_bytes).unwrap_or(0).max(1);
    let max_records = usize::try_from(request.max_records).unwrap_or(0).max(1);
    let mut targets: Vec<((TopicId, i32), Target)> = session
        .iter()
        .map(|(topic, index)| {
            let target = if readable(&broker, &checker, topic) {
                led_here(&broker, topic, *index)
            } else {
                Err(ResponseError::TopicAuthorizationFailed)
            };
            ((*topic, *index), target)
        })
        .collect();
    for ((topic, index), target) in &mut targets {
        if let Ok(partition) = target {
            let epoch = partition.leader_epoch().get();
            if broker
                .share_groups()
                .needs_load(&group_id, *topic, *index, epoch)
                && let Err(error) = load(&broker, &group_id, *topic, partition).await
            {
                tracing::warn!(%error, group = %group_id, partition = *index, "share-partition state not loaded yet");
                *target = Err(ResponseError::CoordinatorLoadInProgress);
            }
        }
    }
    // Each fetch starts at another partition, so none starves.
    let rotate = usize::try_from(epoch).unwrap_or(0) % targets.len().max(1);
    loop {
        let mut woken: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = targets
            .iter()
            .filter_map(|(_, target)| target.as_ref().ok())
            .map(|p| Box::pin(p.appended()))
            .collect();
        woken.push(Box::pin(broker.share_groups().released()));
        for notified in &mut woken {
            notified.as_mut().enable();
        }
        let mut bytes = 0usize;
        let mut records = 0usize;
        for i in 0..targets.len() {
            let ((topic, index), target) = &targets[(i + rotate) % targets.len()];
            let entry = results
                .entry((*topic, *index))
                .or_insert((0, Taken::default()));
            let partition = match target {
                Ok(partition) => partition,
                Err(error) => {
                    entry.1.error = error.code();
                    continue;
                }
            };
            if bytes >= max_bytes || records >= max_records || !entry.1.acquired.is_empty() {
                continue;
            }
            let taken = take(
                &broker,
                &group_id,
                &member_id,
                *topic,
                partition,
                max_bytes - bytes,
                max_records - records,
            );
            bytes += taken.records.len();
            records += taken
                .acquired
                .iter()
                .map(|a| usize::try_from(a.last_offset - a.first_offset + 1).unwrap_or(0))
                .sum::<usize>();
            entry.1 = taken;
        }
        if records > 0 || Instant::now() >= deadline {
            store(&broker).await;
            return answer(results, lock_ms);
        }
        let any = std::future::poll_fn(|cx| {
            for notified in &mut woken {
                if notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        });
        tokio::select! {
            () = any => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The response: every partition of the session or acknowledged, each
/// with records (never null: librdkafka drops a response with null
/// records) and its acquired ranges.
fn answer(results: BTreeMap<(TopicId, i32), (i16, Taken)>, lock_ms: i32) -> ShareFetchResponse {
    let mut topics: Vec<ShareFetchableTopicResponse> = Vec::new();
    for ((topic, index), (ack_code, taken)) in results {
        let data = PartitionData::default()
            .with_partition_index(index)
            .with_error_code(taken.error)
            .with_acknowledge_error_code(ack_code)
            .with_current_leader(
                LeaderIdAndEpoch::default()
                    .with_leader_id(-1)
                    .with_leader_epoch(if taken.error == 0 {
                        taken.leader_epoch
                    } else {
                        -1
                    }),
            )
            .with_records(Some(taken.records))
            .with_acquired_records(taken.acquired);
        let id = uuid::Uuid::from_bytes(topic);
        match topics.last_mut() {
            Some(last) if last.topic_id == id => last.partitions.push(data),
            _ => topics.push(
                ShareFetchableTopicResponse::default()
                    .with_topic_id(id)
                    .with_partitions(vec![data]),
            ),
        }
    }
    ShareFetchResponse::default()
        .with_acquisition_lock_timeout_ms(lock_ms)
        .with_responses(topics)
}

/// Loads a share partition's stored state (from the group's coordinator,
/// perhaps another node).
async fn load(
    broker: &Arc<Broker>,
    group_id: &str,
    topic: TopicId,
    partition: &Partition,
) -> Result<(), sluice_core::CoreError> {
    let broker = Arc::clone(broker);
    let group_id = group_id.to_owned();
    let name = partition.topic().to_owned();
    let index = partition.id().get();
    let epoch = partition.leader_epoch().get();
    let bounds = (
        partition.log_start().get(),
        partition.high_watermark().get(),
    );
    super::blocking(move || {
        broker.load_share_partition(&group_id, (&name, topic), index, epoch, bounds)
    })
    .await
    .unwrap_or_else(|| {
        Err(sluice_core::CoreError::Internal {
            reason: "loading share state was cancelled".to_owned(),
        })
    })
}

/// Stores the share-partition states this request changed before it is
/// answered, so what a member was told survives a restart.
async fn store(broker: &Arc<Broker>) {
    let broker = Arc::clone(broker);
    let _ = super::blocking(move || broker.store_share_state()).await;
}

pub(crate) async fn acknowledge_request(
    context: &Context,
    request: ShareAcknowledgeRequest,
) -> ShareAcknowledgeResponse {
    let refused = |error: ResponseError, message: String| {
        ShareAcknowledgeResponse::default()
            .with_error_code(error.code())
            .with_error_message(Some(text(message)))
    };
    let (Some(group_id), Some(member_id)) = (request.group_id, request.member_id) else {
        return refused(
            ResponseError::InvalidRequest,
            "GroupId and MemberId are required".to_owned(),
        );
    };
    let (group_id, member_id) = (group_id.to_string(), member_id.to_string());
    if !context.allowed(Operation::Read, ResourceType::Group, &group_id) {
        return refused(
            ResponseError::GroupAuthorizationFailed,
            format!("not authorized to read group {group_id}"),
        );
    }
    let epoch = request.share_session_epoch;
    let connection = context.connection.as_ref().map(|c| c.id());
    if epoch == 0 {
        let error = ShareError::InvalidSessionEpoch;
        return refused(
            share_code(&error),
            "ShareAcknowledge cannot open a share session".to_owned(),
        );
    }
    let broker = &context.broker;
    // Checks (and steps) the session; on -1 closes it, after the acks.
    if let Err(error) =
        broker
            .share_groups()
            .session((&group_id, &member_id), epoch, &[], &[], connection)
    {
        return refused(share_code(&error), error.to_string());
    }
    let checker = context.checker();
    let mut topics: Vec<ShareAcknowledgeTopicResponse> = Vec::new();
    for topic in request.topics {
        let id = *topic.topic_id.as_bytes();
        let allowed = readable(broker, &checker, &id);
        let partitions = topic
            .partitions
            .into_iter()
            .map(|p| {
                let wire = p
                    .acknowledgement_batches
                    .into_iter()
                    .map(|b| (b.first_offset, b.last_offset, b.acknowledge_types))
                    .collect();
                let code = if allowed {
                    acknowledge(broker, &group_id, &member_id, id, p.partition_index, wire)
                } else {
                    ResponseError::TopicAuthorizationFailed.code()
                };
                ack_response::PartitionData::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code)
                    .with_current_leader(
                        ack_response::LeaderIdAndEpoch::default()
                            .with_leader_id(-1)
                            .with_leader_epoch(-1),
                    )
            })
            .collect();
        topics.push(
            ShareAcknowledgeTopicResponse::default()
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    if epoch == -1 {
        broker.share_groups().release_member(&group_id, &member_id);
    }
    store(broker).await;
    ShareAcknowledgeResponse::default().with_responses(topics)
}
