//! JoinGroup, SyncGroup, Heartbeat, LeaveGroup, ListGroups, DescribeGroups
//! and DeleteGroups over the core's group coordinator.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::consumer_groups::{CONSUMER_PROTOCOL_TYPE, ClassicJoin};
use sluice_core::{GroupError, JoinRequest, SHARE_FORGET_PREFIX, SHARE_STATE_PREFIX};

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, blocking, migration};
use crate::errors;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn code(error: Option<GroupError>) -> i16 {
    error.map_or(0, |e| errors::group_code(e).code())
}

pub(crate) async fn join(
    context: &Context,
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    if !context.allowed(Operation::Read, ResourceType::Group, &request.group_id) {
        let response = JoinGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code())
            .with_generation_id(-1);
        return if version < 7 {
            response.with_protocol_name(Some(StrBytes::default()))
        } else {
            response
        };
    }
    if !super::coordinates(context, &request.group_id) {
        let response = JoinGroupResponse::default()
            .with_error_code(ResponseError::NotCoordinator.code())
            .with_generation_id(-1);
        // Before v7 the protocol name is not nullable.
        return if version < 7 {
            response.with_protocol_name(Some(StrBytes::default()))
        } else {
            response
        };
    }
    // A consumer group of the new protocol with members takes classic
    // members (Kafka 4's online migration); an empty one is replaced; a
    // share group with members keeps its id.
    let group_id = request.group_id.to_string();
    if in_consumer_group(context, &group_id) {
        let response = join_consumer_group(context, request.clone(), version, client_id).await;
        if !moved_meanwhile(context, &group_id, true, response.error_code, 0) {
            return response;
        }
    }
    if context.broker.share_groups().exists(&group_id) == Some(true) {
        let response = JoinGroupResponse::default()
            .with_error_code(ResponseError::InconsistentGroupProtocol.code())
            .with_generation_id(-1)
            .with_member_id(request.member_id);
        return if version < 7 {
            response.with_protocol_name(Some(StrBytes::default()))
        } else {
            response
        };
    }
    let _ = context.broker.consumer_groups().remove_if_empty(&group_id);
    let retry = request.clone();
    let join = JoinRequest {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|i| i.to_string()),
        client_id: client_id.to_owned(),
        client_host: context.peer.clone(),
        session_timeout: millis(request.session_timeout_ms),
        // v0 has no rebalance timeout: it is the session timeout.
        rebalance_timeout: if version >= 1 {
            millis(request.rebalance_timeout_ms)
        } else {
            millis(request.session_timeout_ms)
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let answer = context.broker.groups().join(join).await;
    if answer.error == Some(GroupError::UnknownMemberId) && in_consumer_group(context, &group_id) {
        // Upgraded after it was routed here.
        return join_consumer_group(context, retry, version, client_id).await;
    }
    let members = answer
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(text(m.member_id))
                .with_group_instance_id(if version >= 5 {
                    m.group_instance_id.map(text)
                } else {
                    None
                })
                .with_metadata(m.metadata)
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(code(answer.error))
        .with_generation_id(answer.generation)
        .with_protocol_name(answer.protocol_name.map(text))
        .with_leader(text(answer.leader))
        .with_member_id(text(answer.member_id))
        .with_members(members);
    if version >= 7 {
        response = response.with_protocol_type(answer.protocol_type.map(text));
    }
    if version < 7 && response.protocol_name.is_none() {
        // Before v7 the protocol name is not nullable.
        response = response.with_protocol_name(Some(StrBytes::default()));
    }
    response
}

/// JoinGroup of a classic member to a consumer group with members: the
/// coordinator assigns it, so it is told it is not the leader and gets its
/// partitions from SyncGroup.
async fn join_consumer_group(
    context: &Context,
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let group_id = request.group_id.to_string();
    let response = join_consumer_group_now(context, request, version, client_id);
    store_membership(context, group_id).await;
    response
}

/// Stores a consumer group's membership as a classic member's request
/// changed it, before the member hears of it.
async fn store_membership(context: &Context, group_id: String) {
    let broker = Arc::clone(&context.broker);
    if broker.consumer_groups().needs_store(&group_id) {
        let _ = blocking(move || broker.store_consumer_groups(Some(&group_id))).await;
    }
}

fn join_consumer_group_now(
    context: &Context,
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let refuse = |error: ResponseError, member_id: StrBytes| {
        let response = JoinGroupResponse::default()
            .with_error_code(error.code())
            .with_generation_id(-1)
            .with_member_id(member_id);
        if version < 7 {
            response.with_protocol_name(Some(StrBytes::default()))
        } else {
            response
        }
    };
    let settings = context.broker.groups().settings();
    let session_timeout = millis(request.session_timeout_ms);
    if !(settings.min_session_timeout..=settings.max_session_timeout).contains(&session_timeout) {
        return refuse(ResponseError::InvalidSessionTimeout, request.member_id);
    }
    let mut member_id = request.member_id.to_string();
    if member_id.is_empty() {
        member_id = format!("{client_id}-{}", super::consumer_groups::new_member_id());
        if version >= 4 && request.group_instance_id.is_none() {
            return refuse(ResponseError::MemberIdRequired, text(member_id));
        }
    }
    let protocols: Vec<(String, bytes::Bytes)> = request
        .protocols
        .into_iter()
        .map(|p| (p.name.to_string(), p.metadata))
        .collect();
    let Some(subscribed) = migration::subscription(&protocols) else {
        return refuse(ResponseError::InconsistentGroupProtocol, text(member_id));
    };
    let catalog = context.broker.topic_catalog();
    let join = ClassicJoin {
        group_id: request.group_id.to_string(),
        member_id: member_id.clone(),
        instance_id: request.group_instance_id.map(|i| i.to_string()),
        client_id: client_id.to_owned(),
        client_host: context.peer.clone(),
        session_timeout,
        rebalance_timeout: if version >= 1 {
            millis(request.rebalance_timeout_ms)
        } else {
            session_timeout
        },
        protocol_type: request.protocol_type.to_string(),
        protocols,
        topics: subscribed.topics,
        owned: migration::by_id(&subscribed.owned, &catalog),
    };
    match context
        .broker
        .consumer_groups()
        .classic_join(join, &catalog, tokio::time::Instant::now())
    {
        Ok(joined) => {
            let response = JoinGroupResponse::default()
                .with_generation_id(joined.generation)
                .with_protocol_name(Some(text(joined.protocol_name)))
                .with_leader(StrBytes::default())
                .with_member_id(text(joined.member_id));
            if version >= 7 {
                response.with_protocol_type(Some(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE)))
            } else {
                response
            }
        }
        Err(error) => refuse(errors::consumer_group_code(&error), text(member_id)),
    }
}

pub(crate) async fn sync(
    context: &Context,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    if !context.allowed(Operation::Read, ResourceType::Group, &request.group_id) {
        return SyncGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    if !super::coordinates(context, &request.group_id) {
        return SyncGroupResponse::default().with_error_code(ResponseError::NotCoordinator.code());
    }
    let was_consumer = in_consumer_group(context, &request.group_id);
    let response = sync_once(context, request.clone(), version, was_consumer).await;
    if moved_meanwhile(
        context,
        &request.group_id,
        was_consumer,
        response.error_code,
        0,
    ) {
        return sync_once(context, request, version, !was_consumer).await;
    }
    response
}

async fn sync_once(
    context: &Context,
    request: SyncGroupRequest,
    version: i16,
    in_consumer: bool,
) -> SyncGroupResponse {
    if in_consumer {
        let synced = context.broker.consumer_groups().classic_sync(
            &request.group_id,
            (&request.member_id, request.group_instance_id.as_deref()),
            request.generation_id,
            (
                request.protocol_type.as_deref(),
                request.protocol_name.as_deref(),
            ),
            tokio::time::Instant::now(),
        );
        return match synced {
            Ok(synced) => {
                let catalog = context.broker.topic_catalog();
                let response = SyncGroupResponse::default().with_assignment(
                    migration::encode_assignment(&synced.assignment, &synced.metadata, &catalog),
                );
                if version >= 5 {
                    response
                        .with_protocol_type(Some(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE)))
                        .with_protocol_name(Some(text(synced.protocol_name)))
                } else {
                    response
                }
            }
            Err(error) => SyncGroupResponse::default()
                .with_error_code(errors::consumer_group_code(&error).code()),
        };
    }
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let answer = context
        .broker
        .groups()
        .sync(
            &request.group_id,
            request.generation_id,
            &request.member_id,
            assignments,
        )
        .await;
    let mut response = SyncGroupResponse::default()
        .with_error_code(code(answer.error))
        .with_assignment(answer.assignment);
    if version >= 5 {
        response = response
            .with_protocol_type(answer.protocol_type.map(text))
            .with_protocol_name(answer.protocol_name.map(text));
    }
    response
}

pub(crate) fn heartbeat(context: &Context, request: HeartbeatRequest) -> HeartbeatResponse {
    if !context.allowed(Operation::Read, ResourceType::Group, &request.group_id) {
        return HeartbeatResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    if !super::coordinates(context, &request.group_id) {
        return HeartbeatResponse::default().with_error_code(ResponseError::NotCoordinator.code());
    }
    let mut error = 0;
    for attempt in 0..2 {
        let in_consumer = in_consumer_group(context, &request.group_id);
        error = if in_consumer {
            context
                .broker
                .consumer_groups()
                .classic_heartbeat(
                    &request.group_id,
                    (&request.member_id, request.group_instance_id.as_deref()),
                    request.generation_id,
                    tokio::time::Instant::now(),
                )
                .map_or_else(|e| errors::consumer_group_code(&e).code(), |()| 0)
        } else {
            code(
                context
                    .broker
                    .groups()
                    .heartbeat(&request.group_id, request.generation_id, &request.member_id)
                    .err(),
            )
        };
        if !moved_meanwhile(context, &request.group_id, in_consumer, error, attempt) {
            break;
        }
    }
    HeartbeatResponse::default().with_error_code(error)
}

/// Whether a consumer group of the new protocol with members has the id:
/// its classic members' requests go to it (online migration).
fn in_consumer_group(context: &Context, group_id: &str) -> bool {
    context.broker.consumer_groups().exists(group_id) == Some(true)
}

/// Whether a classic member's first try met UNKNOWN_MEMBER_ID because the
/// group moved between coordinators (an upgrade or a downgrade) after it
/// was routed: then it is asked once more where the group is now, as
/// clients take that error as their partitions lost.
fn moved_meanwhile(
    context: &Context,
    group_id: &str,
    was_consumer: bool,
    error: i16,
    attempt: usize,
) -> bool {
    attempt == 0
        && error == ResponseError::UnknownMemberId.code()
        && in_consumer_group(context, group_id) != was_consumer
}

pub(crate) async fn leave(
    context: &Context,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    if !context.allowed(Operation::Read, ResourceType::Group, &request.group_id) {
        return LeaveGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    if !super::coordinates(context, &request.group_id) {
        return LeaveGroupResponse::default().with_error_code(ResponseError::NotCoordinator.code());
    }
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let leave = |in_consumer: bool| -> Vec<Result<(), i16>> {
        if in_consumer {
            context
                .broker
                .consumer_groups()
                .classic_leave(&request.group_id, &members)
                .into_iter()
                .map(|r| r.map_err(|e| errors::consumer_group_code(&e).code()))
                .collect()
        } else {
            context
                .broker
                .groups()
                .leave(&request.group_id, &members)
                .into_iter()
                .map(|r| r.map_err(|e| code(Some(e))))
                .collect()
        }
    };
    let was_consumer = in_consumer_group(context, &request.group_id);
    let mut results = leave(was_consumer);
    let unknown = ResponseError::UnknownMemberId.code();
    if results.iter().all(|r| *r == Err(unknown))
        && moved_meanwhile(context, &request.group_id, was_consumer, unknown, 0)
    {
        results = leave(!was_consumer);
    }
    if in_consumer_group(context, &request.group_id) || was_consumer {
        store_membership(context, request.group_id.to_string()).await;
    }
    if version < 3 {
        let error = results.into_iter().next().and_then(Result::err);
        return LeaveGroupResponse::default().with_error_code(error.unwrap_or(0));
    }
    let responses = members
        .into_iter()
        .zip(results)
        .map(|((member_id, instance), result)| {
            MemberResponse::default()
                .with_member_id(text(member_id))
                .with_group_instance_id(instance.map(text))
                .with_error_code(result.err().unwrap_or(0))
        })
        .collect();
    LeaveGroupResponse::default().with_members(responses)
}

pub(crate) fn list(
    context: &Context,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    // Kafka matches states and types without regard to case.
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    // (id, protocol type, state, group type): classic groups, then
    // consumer groups of the new protocol (KIP-848), share groups (KIP-932).
    let mut all: Vec<(String, String, &'static str, &'static str)> = context
        .broker
        .groups()
        .list()
        .into_iter()
        .map(|(id, protocol_type, state)| (id, protocol_type, state.name(), "classic"))
        .collect();
    all.extend(
        context
            .broker
            .consumer_groups()
            .list()
            .into_iter()
            .map(|(id, state)| (id, "consumer".to_owned(), state, "consumer")),
    );
    all.extend(
        context
            .broker
            .share_groups()
            .list()
            .into_iter()
            .map(|(id, state)| (id, "share".to_owned(), state, "share")),
    );
    // DESCRIBE on the cluster lists every group, else those the client
    // may describe (as Kafka).
    let checker = context.checker();
    let every = checker.allows_on_cluster(Operation::Describe);
    let groups = all
        .into_iter()
        .filter(|(id, _, _, _)| {
            every || checker.allows(Operation::Describe, ResourceType::Group, id)
        })
        .filter(|(_, _, state, _)| {
            states.is_empty() || states.iter().any(|f| *f == state.to_lowercase())
        })
        .filter(|(_, _, _, kind)| types.is_empty() || types.iter().any(|t| t == kind))
        // On a cluster each node lists the groups it coordinates.
        .filter(|(id, _, _, _)| super::coordinates(context, id))
        .map(|(id, protocol_type, state, kind)| {
            let mut listed = ListedGroup::default()
                .with_group_id(GroupId(text(id)))
                .with_protocol_type(text(protocol_type));
            if version >= 4 {
                listed = listed.with_group_state(StrBytes::from_static_str(state));
            }
            if version >= 5 {
                listed = listed.with_group_type(StrBytes::from_static_str(kind));
            }
            listed
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub(crate) fn describe(
    context: &Context,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let operations = version >= 3 && request.include_authorized_operations;
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| {
            if !context.allowed(Operation::Describe, ResourceType::Group, &group_id) {
                return DescribedGroup::default()
                    .with_group_id(group_id)
                    .with_error_code(ResponseError::GroupAuthorizationFailed.code());
            }
            if !super::coordinates(context, &group_id) {
                return DescribedGroup::default()
                    .with_group_id(group_id)
                    .with_error_code(ResponseError::NotCoordinator.code());
            }
            match context.broker.groups().describe(&group_id) {
                Some(group) => DescribedGroup::default()
                    .with_group_id(group_id)
                    .with_group_state(StrBytes::from_static_str(group.state.name()))
                    .with_protocol_type(text(group.protocol_type))
                    .with_protocol_data(text(group.protocol))
                    .with_members(
                        group
                            .members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(text(m.member_id))
                                    .with_group_instance_id(if version >= 4 {
                                        m.group_instance_id.map(text)
                                    } else {
                                        None
                                    })
                                    .with_client_id(text(m.client_id))
                                    .with_client_host(text(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
                // Kafka describes an unknown group as Dead, without an error.
                None => DescribedGroup::default()
                    .with_group_id(group_id)
                    .with_group_state(StrBytes::from_static_str("Dead")),
            }
        })
        .map(|described| {
            if operations {
                described.with_authorized_operations(super::authorized::GROUP)
            } else {
                described
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub(crate) async fn delete(
    context: &Context,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let broker = Arc::clone(&context.broker);
    let inter_node = context.inter_node;
    let checker = context.checker();
    let results = blocking(move || {
        request
            .groups_names
            .into_iter()
            .map(|group_id| {
                if !checker.allows(Operation::Delete, ResourceType::Group, &group_id) {
                    return DeletableGroupResult::default()
                        .with_group_id(group_id)
                        .with_error_code(ResponseError::GroupAuthorizationFailed.code());
                }
                if group_id.starts_with(SHARE_STATE_PREFIX)
                    || group_id.starts_with(SHARE_FORGET_PREFIX)
                {
                    // The broker's own: only another node deletes it, for a
                    // share group deleted there.
                    let code = if !inter_node {
                        ResponseError::GroupAuthorizationFailed.code()
                    } else if let Err(error) = broker.forget_share_state(&group_id) {
                        errors::code(&error).code()
                    } else {
                        0
                    };
                    return DeletableGroupResult::default()
                        .with_group_id(group_id)
                        .with_error_code(code);
                }
                if broker.offsets().coordinator(&group_id) != sluice_core::Coordinator::Here {
                    return DeletableGroupResult::default()
                        .with_group_id(group_id)
                        .with_error_code(ResponseError::NotCoordinator.code());
                }
                let consumer_group = broker.consumer_groups().remove_if_empty(&group_id);
                let share_group = broker.share_groups().remove_if_empty(&group_id);
                if consumer_group.is_err() || share_group.is_err() {
                    return DeletableGroupResult::default()
                        .with_group_id(group_id)
                        .with_error_code(ResponseError::NonEmptyGroup.code());
                }
                let classic = broker.groups().describe(&group_id).is_some()
                    || !broker.offsets().group(&group_id).is_empty();
                // A share group's state outlives its members (a restart).
                let share = share_group == Ok(true)
                    || (consumer_group != Ok(true)
                        && !classic
                        && broker.has_share_state(&group_id));
                let result = DeletableGroupResult::default().with_group_id(group_id.clone());
                if !(consumer_group == Ok(true) || share || classic) {
                    return result.with_error_code(ResponseError::GroupIdNotFound.code());
                }
                if let Err(err) = broker.groups().remove_if_empty(&group_id) {
                    return result.with_error_code(errors::group_code(err).code());
                }
                if share && let Err(err) = broker.delete_share_state(&group_id) {
                    return result.with_error_code(errors::code(&err).code());
                }
                match broker.offsets().delete_group(&group_id) {
                    Ok(()) => result.with_error_code(0),
                    Err(err) => result.with_error_code(errors::code(&err).code()),
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    DeleteGroupsResponse::default().with_results(results)
}
