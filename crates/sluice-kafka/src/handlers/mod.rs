//! The table of implemented APIs and their versions, and dispatch.
//!
//! ApiVersions answers from [`SUPPORTED`], so a client is never offered an
//! API or version that has no handler here.

use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use sluice_core::{Broker, ConnectionStats};

use crate::listener::KafkaOptions;

pub(crate) mod acls;
mod admin;
pub(crate) mod api_versions;
mod configs;
mod consumer_groups;
mod coordinator;
pub(crate) mod fetch;
mod groups;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod migration;
pub(crate) mod produce;
pub(crate) mod quotas;
mod replicas;
pub(crate) mod sasl;
mod share_admin;
mod share_groups;
mod topics;
mod transactions;
mod users;

#[cfg(test)]
mod tests;

/// What every handler may use.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) broker: Arc<Broker>,
    pub(crate) options: Arc<KafkaOptions>,
    /// The client's address, as DescribeGroups reports it.
    pub(crate) peer: String,
    /// The connection's entry in the broker's registry (none in unit tests).
    pub(crate) connection: Option<Arc<ConnectionStats>>,
    /// Another node of the cluster on its inter-node link: only it may ask
    /// for what brokers ask each other (WriteTxnMarkers).
    pub(crate) inter_node: bool,
    /// The connection's SASL authentication.
    pub(crate) sasl: sasl::SharedSasl,
    /// On an `SSL` listener, the name its client certificate maps to
    /// (`kafka.ssl_principal_mapping_rules`).
    pub(crate) tls_user: Option<String>,
    /// Until when the connection reads no request: a client over its
    /// quota is muted (`quotas.rs`).
    pub(crate) muted_until: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl Context {
    /// Whether the connection must log in with SASL (a SASL listener's
    /// client; other nodes on the inter-node link never do). Only these
    /// connections touch their [`sasl::SaslState`] per request.
    pub(crate) fn sasl_gated(&self) -> bool {
        self.options.protocol.sasl() && !self.inter_node
    }

    /// The connection's SASL state, locked.
    pub(crate) fn sasl_state(&self) -> std::sync::MutexGuard<'_, sasl::SaslState> {
        self.sasl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who the client is: the user it logged in as on a SASL listener,
    /// its certificate's name on an `SSL` one; `None` for an anonymous
    /// client.
    pub(crate) fn user(&self) -> Option<String> {
        if self.sasl_gated() {
            self.sasl_state().principal_name().map(str::to_owned)
        } else if self.inter_node {
            None
        } else {
            self.tls_user.clone()
        }
    }

    pub(crate) fn host(&self) -> StrBytes {
        StrBytes::from_string(self.options.advertised_host.clone())
    }
}

/// ACL operations as Kafka numbers them (`AclOperation`), for the
/// "authorized operations" bit sets: with no authorizer, a client may do
/// everything that applies to a resource.
pub(crate) mod authorized {
    const fn bits(operations: &[u8]) -> i32 {
        let mut set = 0i32;
        let mut i = 0;
        while i < operations.len() {
            set |= 1 << operations[i];
            i += 1;
        }
        set
    }
    // READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8,
    // CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12
    pub(crate) const TOPIC: i32 = bits(&[3, 4, 5, 6, 7, 8, 10, 11]);
    pub(crate) const CLUSTER: i32 = bits(&[5, 7, 8, 9, 10, 11, 12]);
    pub(crate) const GROUP: i32 = bits(&[3, 6, 8]);
}

/// Every implemented API with the version range its handler serves.
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 2, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::ListConfigResources, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::ShareGroupHeartbeat, 1, 1),
    (ApiKey::ShareGroupDescribe, 1, 1),
    (ApiKey::ShareFetch, 1, 1),
    (ApiKey::ShareAcknowledge, 1, 1),
    (ApiKey::DescribeShareGroupOffsets, 0, 0),
    (ApiKey::AlterShareGroupOffsets, 0, 0),
    (ApiKey::DeleteShareGroupOffsets, 0, 0),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    (ApiKey::DeleteAcls, 1, 3),
];

pub(crate) fn supported_versions(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key == api)
        .map(|(_, min, max)| (*min, *max))
}

/// Runs the handler for `request`; `None` when no response is due.
pub(crate) async fn dispatch(
    context: &Context,
    request: RequestKind,
    version: i16,
    client_id: &str,
) -> Option<ResponseKind> {
    Some(match request {
        RequestKind::InitProducerId(request) => {
            ResponseKind::InitProducerId(init_producer_id::handle(context, request, version).await)
        }
        RequestKind::AddPartitionsToTxn(request) => ResponseKind::AddPartitionsToTxn(
            transactions::add_partitions(context, request, version).await,
        ),
        RequestKind::AddOffsetsToTxn(request) => ResponseKind::AddOffsetsToTxn(
            transactions::add_offsets(context, request, version).await,
        ),
        RequestKind::TxnOffsetCommit(request) => {
            ResponseKind::TxnOffsetCommit(transactions::commit_offsets(context, request).await)
        }
        RequestKind::EndTxn(request) => {
            ResponseKind::EndTxn(transactions::end(context, request, version).await)
        }
        RequestKind::WriteTxnMarkers(request) => {
            ResponseKind::WriteTxnMarkers(transactions::write_markers(context, request).await)
        }
        RequestKind::DescribeTransactions(request) => {
            ResponseKind::DescribeTransactions(transactions::describe(context, request))
        }
        RequestKind::ListTransactions(request) => {
            ResponseKind::ListTransactions(transactions::list(context, request))
        }
        RequestKind::DeleteRecords(request) => {
            ResponseKind::DeleteRecords(admin::delete_records(context, request).await)
        }
        RequestKind::OffsetForLeaderEpoch(request) => {
            ResponseKind::OffsetForLeaderEpoch(admin::offset_for_leader_epoch(context, request))
        }
        RequestKind::AlterConfigs(request) => {
            ResponseKind::AlterConfigs(admin::alter_configs(context, request).await)
        }
        RequestKind::IncrementalAlterConfigs(request) => ResponseKind::IncrementalAlterConfigs(
            admin::incremental_alter_configs(context, request).await,
        ),
        RequestKind::ElectLeaders(request) => {
            ResponseKind::ElectLeaders(replicas::elect_leaders(context, request, version).await)
        }
        RequestKind::DescribeLogDirs(request) => ResponseKind::DescribeLogDirs(
            replicas::describe_log_dirs(context, request, version).await,
        ),
        RequestKind::DescribeProducers(request) => {
            ResponseKind::DescribeProducers(replicas::describe_producers(context, request))
        }
        RequestKind::AlterPartitionReassignments(request) => {
            ResponseKind::AlterPartitionReassignments(
                replicas::alter_partition_reassignments(context, request).await,
            )
        }
        RequestKind::ListPartitionReassignments(request) => {
            ResponseKind::ListPartitionReassignments(replicas::list_partition_reassignments(
                context, request,
            ))
        }
        RequestKind::DescribeCluster(request) => {
            ResponseKind::DescribeCluster(admin::describe_cluster(context, request))
        }
        RequestKind::OffsetDelete(request) => {
            ResponseKind::OffsetDelete(admin::offset_delete(context, request).await)
        }
        RequestKind::JoinGroup(request) => {
            ResponseKind::JoinGroup(groups::join(context, request, version, client_id).await)
        }
        RequestKind::SyncGroup(request) => {
            ResponseKind::SyncGroup(groups::sync(context, request, version).await)
        }
        RequestKind::Heartbeat(request) => {
            ResponseKind::Heartbeat(groups::heartbeat(context, request))
        }
        RequestKind::LeaveGroup(request) => {
            ResponseKind::LeaveGroup(groups::leave(context, request, version).await)
        }
        RequestKind::ListGroups(request) => {
            ResponseKind::ListGroups(groups::list(context, request, version))
        }
        RequestKind::DescribeGroups(request) => {
            ResponseKind::DescribeGroups(groups::describe(context, request, version))
        }
        RequestKind::DeleteGroups(request) => {
            ResponseKind::DeleteGroups(groups::delete(context, request).await)
        }
        RequestKind::ConsumerGroupHeartbeat(request) => ResponseKind::ConsumerGroupHeartbeat(
            consumer_groups::heartbeat(context, request, version, client_id).await,
        ),
        RequestKind::ConsumerGroupDescribe(request) => ResponseKind::ConsumerGroupDescribe(
            consumer_groups::describe(context, request, version),
        ),
        RequestKind::ShareGroupHeartbeat(request) => {
            ResponseKind::ShareGroupHeartbeat(share_groups::heartbeat(context, request, client_id))
        }
        RequestKind::ShareGroupDescribe(request) => {
            ResponseKind::ShareGroupDescribe(share_groups::describe(context, request))
        }
        RequestKind::ShareFetch(request) => {
            ResponseKind::ShareFetch(share_groups::fetch(context, request).await)
        }
        RequestKind::ShareAcknowledge(request) => ResponseKind::ShareAcknowledge(
            share_groups::acknowledge_request(context, request).await,
        ),
        RequestKind::DescribeShareGroupOffsets(request) => ResponseKind::DescribeShareGroupOffsets(
            share_admin::describe_offsets(context, request).await,
        ),
        RequestKind::AlterShareGroupOffsets(request) => {
            ResponseKind::AlterShareGroupOffsets(share_admin::alter_offsets(context, request).await)
        }
        RequestKind::DeleteShareGroupOffsets(request) => ResponseKind::DeleteShareGroupOffsets(
            share_admin::delete_offsets(context, request).await,
        ),
        RequestKind::CreateAcls(request) => {
            ResponseKind::CreateAcls(acls::create(context, request).await)
        }
        RequestKind::DescribeClientQuotas(request) => {
            ResponseKind::DescribeClientQuotas(quotas::describe(context, request))
        }
        RequestKind::AlterClientQuotas(request) => {
            ResponseKind::AlterClientQuotas(quotas::alter(context, request).await)
        }
        RequestKind::DescribeAcls(request) => {
            ResponseKind::DescribeAcls(acls::describe(context, request))
        }
        RequestKind::DeleteAcls(request) => {
            ResponseKind::DeleteAcls(acls::delete(context, request).await)
        }
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle()),
        RequestKind::DescribeUserScramCredentials(request) => {
            ResponseKind::DescribeUserScramCredentials(users::describe(context, request))
        }
        RequestKind::AlterUserScramCredentials(request) => {
            ResponseKind::AlterUserScramCredentials(users::alter(context, request).await)
        }
        RequestKind::SaslHandshake(request) => {
            ResponseKind::SaslHandshake(sasl::handshake(context, request, version))
        }
        RequestKind::SaslAuthenticate(request) => {
            ResponseKind::SaslAuthenticate(sasl::authenticate(context, request, version).await)
        }
        RequestKind::Metadata(request) => {
            ResponseKind::Metadata(metadata::handle(context, request, version).await)
        }
        RequestKind::Produce(request) => {
            return produce::start(context, request, version)
                .await
                .finish()
                .await
                .map(ResponseKind::Produce);
        }
        RequestKind::Fetch(request) => {
            ResponseKind::Fetch(fetch::handle(context, request, version).await)
        }
        RequestKind::ListOffsets(request) => {
            ResponseKind::ListOffsets(list_offsets::handle(context, request, version).await)
        }
        RequestKind::CreateTopics(request) => {
            ResponseKind::CreateTopics(topics::create(context, request, version).await)
        }
        RequestKind::DeleteTopics(request) => {
            ResponseKind::DeleteTopics(topics::delete(context, request, version).await)
        }
        RequestKind::CreatePartitions(request) => {
            ResponseKind::CreatePartitions(topics::create_partitions(context, request).await)
        }
        RequestKind::DescribeConfigs(request) => {
            ResponseKind::DescribeConfigs(configs::describe(context, request))
        }
        RequestKind::ListConfigResources(request) => {
            ResponseKind::ListConfigResources(configs::list_resources(context, request, version))
        }
        RequestKind::FindCoordinator(request) => {
            ResponseKind::FindCoordinator(coordinator::find(context, request, version))
        }
        RequestKind::OffsetCommit(request) => {
            ResponseKind::OffsetCommit(coordinator::commit(context, request, version).await)
        }
        RequestKind::OffsetFetch(request) => {
            ResponseKind::OffsetFetch(coordinator::fetch_offsets(context, request, version))
        }
        // The connection checked the version table before decoding, so no
        // other request reaches this point.
        other => {
            tracing::warn!(request = ?std::mem::discriminant(&other), "request without a handler");
            return None;
        }
    })
}

/// The nodes clients reach (id, host, port): the cluster's registered
/// nodes that are not fenced, and this one as it advertises itself (before it is registered,
/// and on a cluster of one, where it is the only node).
pub(crate) fn nodes(context: &Context) -> Vec<(i32, StrBytes, u16)> {
    let own = context.options.node_id;
    let metadata = context.broker.topics().metadata();
    // Fenced nodes (the controller has not heard from them) are left out,
    // as KRaft does; this node always lists itself.
    let fenced = metadata.fenced();
    let listener = &context.options.listener_name;
    let mut nodes: Vec<(i32, StrBytes, u16)> = metadata
        .brokers()
        .into_iter()
        .filter(|b| b.node != own && !fenced.contains(&b.node))
        .filter_map(|b| {
            if b.listeners.is_empty() {
                return Some((b.node, StrBytes::from_string(b.host), b.port));
            }
            // The same listener on the other node; a node without it is
            // not offered to this listener's clients.
            let (host, port) = b.listeners.get(listener)?.rsplit_once(':')?;
            Some((
                b.node,
                StrBytes::from_string(host.to_owned()),
                port.parse().ok()?,
            ))
        })
        .collect();
    nodes.push((own, context.host(), context.options.advertised_port));
    nodes.sort_by_key(|(id, _, _)| *id);
    nodes
}

/// The node coordinating `group` (id, host, port): this node on a
/// cluster of one; on a cluster, the leader of the group's
/// `__consumer_offsets` partition, as in Kafka.
///
/// # Errors
/// COORDINATOR_NOT_AVAILABLE while the partition has no leader (or the
/// leader is not registered).
pub(crate) fn coordinator(
    context: &Context,
    group: &str,
) -> Result<(i32, StrBytes, u16), kafka_protocol::ResponseError> {
    node_of(context, context.broker.offsets().coordinator(group))
}

/// The id, host and port of `coordinator`, COORDINATOR_NOT_AVAILABLE when
/// there is none or its node's address is not known.
pub(crate) fn node_of(
    context: &Context,
    coordinator: sluice_core::Coordinator,
) -> Result<(i32, StrBytes, u16), kafka_protocol::ResponseError> {
    let unavailable = kafka_protocol::ResponseError::CoordinatorNotAvailable;
    let node = match coordinator {
        sluice_core::Coordinator::Here => context.options.node_id,
        sluice_core::Coordinator::Node(node) => node,
        sluice_core::Coordinator::Unavailable => return Err(unavailable),
    };
    nodes(context)
        .into_iter()
        .find(|(id, _, _)| *id == node)
        .ok_or(unavailable)
}

/// Whether this node coordinates `group`; the others answer its requests
/// with NOT_COORDINATOR, so clients ask FindCoordinator again.
pub(crate) fn coordinates(context: &Context, group: &str) -> bool {
    context.broker.offsets().coordinator(group) == sluice_core::Coordinator::Here
}

/// A partition of a topic that may not exist, or the error code for it:
/// UNKNOWN_TOPIC_OR_PARTITION, or NOT_LEADER_OR_FOLLOWER for a partition
/// another node of the cluster leads.
pub(crate) fn partition_of(
    topic: Option<&Arc<sluice_core::Topic>>,
    index: i32,
) -> Result<Arc<sluice_core::Partition>, kafka_protocol::ResponseError> {
    let topic = topic.ok_or(kafka_protocol::ResponseError::UnknownTopicOrPartition)?;
    topic
        .local_partition(sluice_types::PartitionId::from(index))
        .map_err(|error| crate::errors::code(&error))
}

/// KIP-320: a request naming the leader epoch it believes current (-1:
/// none) is refused with FENCED_LEADER_EPOCH when that epoch is older than
/// the partition's (the client's metadata is stale) and
/// UNKNOWN_LEADER_EPOCH when it is newer (this node has not applied the
/// change yet); clients refresh their metadata and retry.
pub(crate) fn check_leader_epoch(
    partition: &sluice_core::Partition,
    current: i32,
) -> Result<(), kafka_protocol::ResponseError> {
    let epoch = partition.leader_epoch().get();
    match current {
        c if c < 0 || c == epoch => Ok(()),
        c if c < epoch => Err(kafka_protocol::ResponseError::FencedLeaderEpoch),
        _ => Err(kafka_protocol::ResponseError::UnknownLeaderEpoch),
    }
}

/// Runs blocking core work (fsync, file creation) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}
