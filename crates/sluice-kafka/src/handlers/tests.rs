//! Every handler's answer encodes at every version the table advertises:
//! the codec refuses a field set that a version does not carry, so a
//! response built for the newest version must not leak into older ones.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_core::{Broker, BrokerOptions};

use super::{Context, SUPPORTED, dispatch};
use crate::listener::KafkaOptions;

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// WriteTxnMarkers for partition 0 of topic "t": producer `producer_id`
/// at `epoch` committed (or aborted), decided by `coordinator_epoch`.
fn markers_request(
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
) -> WriteTxnMarkersRequest {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_transaction_result(commit)
            .with_coordinator_epoch(coordinator_epoch)
            .with_topics(vec![
                WritableTxnMarkerTopic::default()
                    .with_name(topic("t"))
                    .with_partition_indexes(vec![0]),
            ]),
    ])
}

fn batch() -> Bytes {
    sluice_core::records::encode(&[sluice_core::records::NewRecord {
        key: Some(b"k"),
        value: Some(b"v"),
        timestamp: 1_000,
    }])
    .expect("encode batch")
    .freeze()
}

/// A representative request of each API, touching existing and unknown topics.
fn requests(round: usize) -> Vec<RequestKind> {
    let new_topic = format!("created-{round}");
    let group = || GroupId(StrBytes::from_string(format!("group-{round}")));
    let txn = || TransactionalId(StrBytes::from_string(format!("txn-{round}")));
    vec![
        RequestKind::AddPartitionsToTxn(
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(txn())
                .with_v3_and_below_topics(vec![
                    kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                        .with_name(topic("t"))
                        .with_partitions(vec![0, 5]),
                ]),
        ),
        RequestKind::AddOffsetsToTxn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(txn())
                .with_group_id(group()),
        ),
        RequestKind::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(txn())
                .with_group_id(group())
                .with_topics(vec![
                    kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(topic("t"))
                        .with_partitions(vec![
                            kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequestPartition::default(),
                        ]),
                ]),
        ),
        RequestKind::EndTxn(EndTxnRequest::default().with_transactional_id(txn())),
        RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default().with_transactional_ids(vec![txn()]),
        ),
        RequestKind::ListTransactions(
            ListTransactionsRequest::default()
                .with_state_filters(vec![StrBytes::from_static_str("Ongoing")]),
        ),
        RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
            kafka_protocol::messages::delete_records_request::DeleteRecordsTopic::default()
                .with_name(topic("t"))
                .with_partitions(vec![
                    kafka_protocol::messages::delete_records_request::DeleteRecordsPartition::default()
                        .with_offset(0),
                    kafka_protocol::messages::delete_records_request::DeleteRecordsPartition::default()
                        .with_partition_index(5),
                ]),
        ])),
        RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default().with_topics(vec![
            kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                .with_topic(topic("t"))
                .with_partitions(vec![
                    kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition::default(),
                ]),
        ])),
        RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
            kafka_protocol::messages::alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("t"))
                .with_configs(vec![
                    kafka_protocol::messages::alter_configs_request::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("nope"))),
                ]),
        ])),
        RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default().with_resources(vec![
            kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("t"))
                .with_configs(vec![
                    kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("1000"))),
                ]),
        ])),
        RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        RequestKind::InitProducerId(InitProducerIdRequest::default()),
        RequestKind::OffsetDelete(
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_topics(vec![
                    kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(topic("t"))
                        .with_partitions(vec![
                            kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestPartition::default(),
                        ]),
                ]),
        ),
        RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(group())
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(1_000)
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_group_instance_id(None)
                .with_protocols(vec![
                    kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(Bytes::from_static(b"meta")),
                ]),
        ),
        RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(group())
                .with_member_id(StrBytes::from_static_str("nobody")),
        ),
        RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(group())
                .with_member_id(StrBytes::from_static_str("nobody")),
        ),
        RequestKind::LeaveGroup(if round.is_multiple_of(2) {
            LeaveGroupRequest::default()
                .with_group_id(group())
                .with_member_id(StrBytes::from_static_str("nobody"))
        } else {
            LeaveGroupRequest::default().with_group_id(group()).with_members(vec![
                kafka_protocol::messages::leave_group_request::MemberIdentity::default()
                    .with_member_id(StrBytes::from_static_str("nobody")),
            ])
        }),
        RequestKind::ListGroups(ListGroupsRequest::default()),
        RequestKind::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatRequest::default()
                .with_group_id(group())
                .with_member_id(StrBytes::from_string(format!("member-{round}")))
                .with_rebalance_timeout_ms(30_000)
                .with_subscribed_topic_names(Some(vec![topic("t")]))
                .with_topic_partitions(Some(Vec::new())),
        ),
        RequestKind::ConsumerGroupDescribe(
            ConsumerGroupDescribeRequest::default().with_group_ids(vec![group()]),
        ),
        RequestKind::ShareGroupHeartbeat(
            ShareGroupHeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(format!("share-{round}"))))
                .with_member_id(StrBytes::from_string(format!("member-{round}")))
                .with_subscribed_topic_names(Some(vec![topic("t")])),
        ),
        RequestKind::ShareGroupDescribe(
            ShareGroupDescribeRequest::default().with_group_ids(vec![
                GroupId(StrBytes::from_string(format!("share-{round}"))),
                group(),
            ]),
        ),
        RequestKind::ShareFetch(
            ShareFetchRequest::default()
                .with_group_id(Some(GroupId(StrBytes::from_string(format!("share-{round}")))))
                .with_member_id(Some(StrBytes::from_string(format!("member-{round}"))))
                .with_max_wait_ms(0)
                .with_max_records(10)
                .with_max_bytes(1 << 20)
                .with_topics(vec![
                    kafka_protocol::messages::share_fetch_request::FetchTopic::default()
                        .with_topic_id(uuid::Uuid::from_bytes([round as u8; 16]))
                        .with_partitions(vec![
                            kafka_protocol::messages::share_fetch_request::FetchPartition::default(),
                        ]),
                ]),
        ),
        RequestKind::ShareAcknowledge(
            ShareAcknowledgeRequest::default()
                .with_group_id(Some(GroupId(StrBytes::from_string(format!("share-{round}")))))
                .with_member_id(Some(StrBytes::from_static_str("nobody")))
                .with_share_session_epoch(1),
        ),
        RequestKind::DescribeShareGroupOffsets(
            kafka_protocol::messages::DescribeShareGroupOffsetsRequest::default().with_groups(vec![
                kafka_protocol::messages::describe_share_group_offsets_request::DescribeShareGroupOffsetsRequestGroup::default()
                    .with_group_id(GroupId(StrBytes::from_string(format!("share-{round}")))),
            ]),
        ),
        RequestKind::AlterShareGroupOffsets(
            kafka_protocol::messages::AlterShareGroupOffsetsRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(format!("share-{round}"))))
                .with_topics(vec![
                    kafka_protocol::messages::alter_share_group_offsets_request::AlterShareGroupOffsetsRequestTopic::default()
                        .with_topic_name(topic("t"))
                        .with_partitions(vec![
                            kafka_protocol::messages::alter_share_group_offsets_request::AlterShareGroupOffsetsRequestPartition::default(),
                        ]),
                ]),
        ),
        RequestKind::DeleteShareGroupOffsets(
            kafka_protocol::messages::DeleteShareGroupOffsetsRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(format!("share-{round}"))))
                .with_topics(vec![
                    kafka_protocol::messages::delete_share_group_offsets_request::DeleteShareGroupOffsetsRequestTopic::default()
                        .with_topic_name(topic("t")),
                ]),
        ),
        RequestKind::DescribeGroups(
            DescribeGroupsRequest::default().with_groups(vec![group(), GroupId(StrBytes::from_static_str("g"))]),
        ),
        RequestKind::DeleteGroups(
            DeleteGroupsRequest::default().with_groups_names(vec![group(), GroupId(StrBytes::from_static_str("none"))]),
        ),
        RequestKind::ApiVersions(ApiVersionsRequest::default()),
        RequestKind::Metadata(
            MetadataRequest::default()
                .with_include_cluster_authorized_operations(true)
                .with_include_topic_authorized_operations(true),
        ),
        RequestKind::DescribeCluster(
            DescribeClusterRequest::default().with_include_cluster_authorized_operations(true),
        ),
        RequestKind::DescribeGroups(
            DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_static_str("g"))])
                .with_include_authorized_operations(true),
        ),
        RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic("t"))),
            MetadataRequestTopic::default().with_name(Some(topic("bad/name"))),
        ]))),
        RequestKind::Produce(
            ProduceRequest::default()
                .with_acks(-1)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(topic("t"))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch())),
                            PartitionProduceData::default()
                                .with_index(9)
                                .with_records(Some(batch())),
                        ]),
                ]),
        ),
        RequestKind::Fetch(
            FetchRequest::default()
                .with_max_bytes(1 << 20)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(topic("t"))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(0)
                                .with_partition_max_bytes(1 << 20),
                            FetchPartition::default()
                                .with_partition(0)
                                .with_fetch_offset(1 << 40),
                        ]),
                ]),
        ),
        RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
            ListOffsetsTopic::default().with_name(topic("t")).with_partitions(vec![
                ListOffsetsPartition::default().with_timestamp(-1),
                ListOffsetsPartition::default().with_timestamp(-2),
                ListOffsetsPartition::default().with_timestamp(0),
                ListOffsetsPartition::default().with_timestamp(-3),
            ]),
        ])),
        RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(topic(&new_topic))
                .with_num_partitions(2)
                .with_replication_factor(1)
                .with_configs(vec![
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("1000"))),
                ]),
            CreatableTopic::default()
                .with_name(topic("t"))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ])),
        RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
            CreatePartitionsTopic::default()
                .with_name(topic(&new_topic))
                .with_count(3),
            CreatePartitionsTopic::default().with_name(topic("t")).with_count(1),
        ])),
        RequestKind::ListConfigResources(
            kafka_protocol::messages::ListConfigResourcesRequest::default()
                .with_resource_types(vec![2, 4, 32]),
        ),
        RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("t")),
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("missing")),
        ])),
        RequestKind::FindCoordinator(
            FindCoordinatorRequest::default()
                .with_key(StrBytes::from_static_str("g"))
                .with_coordinator_keys(vec![StrBytes::from_static_str("g")]),
        ),
        RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(topic("t"))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1)
                                .with_committed_metadata(Some(StrBytes::from_static_str("m"))),
                        ]),
                ]),
        ),
        RequestKind::OffsetFetch(
            OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("g")))
                .with_topics(Some(vec![
                    OffsetFetchRequestTopic::default()
                        .with_name(topic("t"))
                        .with_partition_indexes(vec![0, 1]),
                ])),
        ),
        RequestKind::ElectLeaders(
            ElectLeadersRequest::default()
                .with_election_type(0)
                .with_topic_partitions(Some(vec![
                    kafka_protocol::messages::elect_leaders_request::TopicPartitions::default()
                        .with_topic(topic("t"))
                        .with_partitions(vec![0, 7]),
                    kafka_protocol::messages::elect_leaders_request::TopicPartitions::default()
                        .with_topic(topic("missing"))
                        .with_partitions(vec![0]),
                ])),
        ),
        RequestKind::ElectLeaders(ElectLeadersRequest::default().with_election_type(1)),
        RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default()),
        RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic::default()
                .with_topic(topic("t"))
                .with_partitions(vec![0, 3]),
        ]))),
        RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
            kafka_protocol::messages::describe_producers_request::TopicRequest::default()
                .with_name(topic("t"))
                .with_partition_indexes(vec![0, 9]),
        ])),
        // On a cluster of one nothing moves: INVALID_REPLICA_ASSIGNMENT,
        // and no move is listed.
        RequestKind::AlterPartitionReassignments(
            AlterPartitionReassignmentsRequest::default().with_topics(vec![
                kafka_protocol::messages::alter_partition_reassignments_request::ReassignableTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        kafka_protocol::messages::alter_partition_reassignments_request::ReassignablePartition::default()
                            .with_partition_index(0)
                            .with_replicas(Some(vec![BrokerId(1)])),
                    ]),
            ]),
        ),
        RequestKind::ListPartitionReassignments(ListPartitionReassignmentsRequest::default()),
        RequestKind::SaslHandshake(
            kafka_protocol::messages::SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str("PLAIN")),
        ),
        RequestKind::SaslAuthenticate(
            kafka_protocol::messages::SaslAuthenticateRequest::default()
                .with_auth_bytes(bytes::Bytes::from_static(b"\0guest\0guest")),
        ),
        RequestKind::DescribeUserScramCredentials(
            kafka_protocol::messages::DescribeUserScramCredentialsRequest::default(),
        ),
        RequestKind::AlterUserScramCredentials(
            kafka_protocol::messages::AlterUserScramCredentialsRequest::default().with_deletions(
                vec![
                    kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                        .with_name(StrBytes::from_static_str("guest"))
                        .with_mechanism(1),
                ],
            ),
        ),
        RequestKind::WriteTxnMarkers(markers_request(7, 0, true, 0)),
        RequestKind::CreateAcls(acl_creation("User:alice", 3)),
        RequestKind::DescribeAcls(
            kafka_protocol::messages::DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ),
        RequestKind::DeleteAcls(kafka_protocol::messages::DeleteAclsRequest::default().with_filters(
            vec![
                kafka_protocol::messages::delete_acls_request::DeleteAclsFilter::default()
                    .with_resource_type_filter(2)
                    .with_pattern_type_filter(2)
                    .with_resource_name_filter(Some(StrBytes::from_static_str("t")))
                    .with_principal_filter(None)
                    .with_host_filter(None)
                    .with_operation(1)
                    .with_permission_type(1),
            ],
        )),
        RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topic_names(vec![topic(&new_topic), topic("missing")])
                .with_topics(vec![
                    DeleteTopicState::default().with_name(Some(topic("gone"))),
                ]),
        ),
        RequestKind::DescribeClientQuotas(
            kafka_protocol::messages::DescribeClientQuotasRequest::default().with_components(vec![
                kafka_protocol::messages::describe_client_quotas_request::ComponentData::default()
                    .with_entity_type(StrBytes::from_static_str("user"))
                    .with_match_type(1)
                    .with_match(None),
            ]),
        ),
        RequestKind::AlterClientQuotas(
            kafka_protocol::messages::AlterClientQuotasRequest::default().with_entries(vec![
                kafka_protocol::messages::alter_client_quotas_request::EntryData::default()
                    .with_entity(vec![
                        kafka_protocol::messages::alter_client_quotas_request::EntityData::default()
                            .with_entity_type(StrBytes::from_static_str("client-id"))
                            .with_entity_name(Some(StrBytes::from_string(format!("c-{round}")))),
                    ])
                    .with_ops(vec![
                        kafka_protocol::messages::alter_client_quotas_request::OpData::default()
                            .with_key(StrBytes::from_static_str("producer_byte_rate"))
                            .with_value(1024.0),
                    ]),
            ]),
        ),
    ]
}

fn api_of(request: &RequestKind) -> ApiKey {
    match request {
        RequestKind::ApiVersions(_) => ApiKey::ApiVersions,
        RequestKind::SaslHandshake(_) => ApiKey::SaslHandshake,
        RequestKind::SaslAuthenticate(_) => ApiKey::SaslAuthenticate,
        RequestKind::DescribeUserScramCredentials(_) => ApiKey::DescribeUserScramCredentials,
        RequestKind::CreateAcls(_) => ApiKey::CreateAcls,
        RequestKind::DescribeAcls(_) => ApiKey::DescribeAcls,
        RequestKind::DeleteAcls(_) => ApiKey::DeleteAcls,
        RequestKind::AlterUserScramCredentials(_) => ApiKey::AlterUserScramCredentials,
        RequestKind::Metadata(_) => ApiKey::Metadata,
        RequestKind::Produce(_) => ApiKey::Produce,
        RequestKind::Fetch(_) => ApiKey::Fetch,
        RequestKind::ListOffsets(_) => ApiKey::ListOffsets,
        RequestKind::CreateTopics(_) => ApiKey::CreateTopics,
        RequestKind::CreatePartitions(_) => ApiKey::CreatePartitions,
        RequestKind::DescribeConfigs(_) => ApiKey::DescribeConfigs,
        RequestKind::FindCoordinator(_) => ApiKey::FindCoordinator,
        RequestKind::OffsetCommit(_) => ApiKey::OffsetCommit,
        RequestKind::OffsetFetch(_) => ApiKey::OffsetFetch,
        RequestKind::DeleteTopics(_) => ApiKey::DeleteTopics,
        RequestKind::JoinGroup(_) => ApiKey::JoinGroup,
        RequestKind::InitProducerId(_) => ApiKey::InitProducerId,
        RequestKind::DeleteRecords(_) => ApiKey::DeleteRecords,
        RequestKind::OffsetForLeaderEpoch(_) => ApiKey::OffsetForLeaderEpoch,
        RequestKind::AlterConfigs(_) => ApiKey::AlterConfigs,
        RequestKind::IncrementalAlterConfigs(_) => ApiKey::IncrementalAlterConfigs,
        RequestKind::DescribeCluster(_) => ApiKey::DescribeCluster,
        RequestKind::OffsetDelete(_) => ApiKey::OffsetDelete,
        RequestKind::SyncGroup(_) => ApiKey::SyncGroup,
        RequestKind::Heartbeat(_) => ApiKey::Heartbeat,
        RequestKind::LeaveGroup(_) => ApiKey::LeaveGroup,
        RequestKind::ListGroups(_) => ApiKey::ListGroups,
        RequestKind::ConsumerGroupHeartbeat(_) => ApiKey::ConsumerGroupHeartbeat,
        RequestKind::ConsumerGroupDescribe(_) => ApiKey::ConsumerGroupDescribe,
        RequestKind::ShareGroupHeartbeat(_) => ApiKey::ShareGroupHeartbeat,
        RequestKind::ShareGroupDescribe(_) => ApiKey::ShareGroupDescribe,
        RequestKind::ShareFetch(_) => ApiKey::ShareFetch,
        RequestKind::ShareAcknowledge(_) => ApiKey::ShareAcknowledge,
        RequestKind::DescribeShareGroupOffsets(_) => ApiKey::DescribeShareGroupOffsets,
        RequestKind::AlterShareGroupOffsets(_) => ApiKey::AlterShareGroupOffsets,
        RequestKind::DeleteShareGroupOffsets(_) => ApiKey::DeleteShareGroupOffsets,
        RequestKind::DescribeGroups(_) => ApiKey::DescribeGroups,
        RequestKind::DeleteGroups(_) => ApiKey::DeleteGroups,
        RequestKind::ElectLeaders(_) => ApiKey::ElectLeaders,
        RequestKind::DescribeLogDirs(_) => ApiKey::DescribeLogDirs,
        RequestKind::DescribeProducers(_) => ApiKey::DescribeProducers,
        RequestKind::AlterPartitionReassignments(_) => ApiKey::AlterPartitionReassignments,
        RequestKind::ListPartitionReassignments(_) => ApiKey::ListPartitionReassignments,
        RequestKind::WriteTxnMarkers(_) => ApiKey::WriteTxnMarkers,
        RequestKind::AddPartitionsToTxn(_) => ApiKey::AddPartitionsToTxn,
        RequestKind::AddOffsetsToTxn(_) => ApiKey::AddOffsetsToTxn,
        RequestKind::TxnOffsetCommit(_) => ApiKey::TxnOffsetCommit,
        RequestKind::EndTxn(_) => ApiKey::EndTxn,
        RequestKind::DescribeTransactions(_) => ApiKey::DescribeTransactions,
        RequestKind::ListConfigResources(_) => ApiKey::ListConfigResources,
        RequestKind::ListTransactions(_) => ApiKey::ListTransactions,
        RequestKind::DescribeClientQuotas(_) => ApiKey::DescribeClientQuotas,
        RequestKind::AlterClientQuotas(_) => ApiKey::AlterClientQuotas,
        _ => ApiKey::ApiVersions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_encodes_at_every_advertised_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let context = context_on(dir.path());
    context.broker.topic_or_create("t").expect("topic t");
    let mut round = 0;
    let mut exercised = Vec::new();
    for (api, min, max) in SUPPORTED {
        for version in *min..=*max {
            for request in requests(round).into_iter().filter(|r| api_of(r) == *api) {
                round += 1;
                exercised.push(*api);
                let response = dispatch(&context, request, version, "test-client")
                    .await
                    .unwrap_or_else(|| panic!("{api:?} v{version}: no response"));
                let mut out = BytesMut::new();
                if let Err(err) = response.encode(&mut out, version) {
                    panic!("{api:?} v{version} response does not encode: {err}");
                }
            }
        }
    }
    let missed: Vec<ApiKey> = SUPPORTED
        .iter()
        .map(|(api, _, _)| *api)
        .filter(|api| !exercised.contains(api))
        .collect();
    assert!(missed.is_empty(), "APIs without a request here: {missed:?}");
}

/// A cluster of one has no other replica to move to: the move is refused
/// with INVALID_REPLICA_ASSIGNMENT and none is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_refuses_to_move_replicas_and_lists_no_move() {
    let dir = tempfile::tempdir().expect("temp dir");
    let context = context_on(dir.path());
    context.broker.topic_or_create("t").expect("topic t");
    let [alter, list] = &requests(0)
        .into_iter()
        .filter(|r| {
            matches!(
                api_of(r),
                ApiKey::AlterPartitionReassignments | ApiKey::ListPartitionReassignments
            )
        })
        .collect::<Vec<_>>()[..]
    else {
        panic!("one request of each");
    };
    let Some(ResponseKind::AlterPartitionReassignments(altered)) =
        dispatch(&context, alter.clone(), 0, "test-client").await
    else {
        panic!("no AlterPartitionReassignments response");
    };
    assert_eq!(altered.error_code, 0);
    assert_eq!(
        altered.responses[0].partitions[0].error_code,
        kafka_protocol::ResponseError::InvalidReplicaAssignment.code()
    );
    let Some(ResponseKind::ListPartitionReassignments(listed)) =
        dispatch(&context, list.clone(), 0, "test-client").await
    else {
        panic!("no ListPartitionReassignments response");
    };
    assert_eq!((listed.error_code, listed.topics.len()), (0, 0));
}

/// A CreateAcls of one ACL: READ on topic `t` for `principal`, with
/// `operation` (3: READ).
fn acl_creation(principal: &str, operation: i8) -> kafka_protocol::messages::CreateAclsRequest {
    kafka_protocol::messages::CreateAclsRequest::default().with_creations(vec![
        kafka_protocol::messages::create_acls_request::AclCreation::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("t"))
            .with_resource_pattern_type(3)
            .with_principal(StrBytes::from_string(principal.to_owned()))
            .with_host(StrBytes::from_static_str("*"))
            .with_operation(operation)
            .with_permission_type(3),
    ])
}

/// With an authorizer, ACLs go in, are described and deleted, one not
/// valid is refused alone; the client (User:ANONYMOUS) passes only what
/// they allow. Without one, the APIs answer SECURITY_DISABLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_are_kept_described_deleted_and_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plain = context_on(dir.path());
    let Some(ResponseKind::DescribeAcls(disabled)) = dispatch(
        &plain,
        RequestKind::DescribeAcls(kafka_protocol::messages::DescribeAclsRequest::default()),
        3,
        "c",
    )
    .await
    else {
        panic!("a DescribeAcls response");
    };
    assert_eq!(
        disabled.error_code,
        kafka_protocol::ResponseError::SecurityDisabled.code()
    );
    let authorizing = |authorizer| guarded_context(&plain, authorizer);
    let context = authorizing(crate::AuthorizerOptions {
        super_users: vec!["User:ANONYMOUS".into()],
        everyone_if_none: false,
    });
    let mut creation = acl_creation("User:ANONYMOUS", 3);
    creation
        .creations
        .extend(acl_creation("alice", 3).creations);
    let Some(ResponseKind::CreateAcls(created)) =
        dispatch(&context, RequestKind::CreateAcls(creation), 3, "c").await
    else {
        panic!("a CreateAcls response");
    };
    let codes: Vec<i16> = created.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        [0, kafka_protocol::ResponseError::InvalidRequest.code()],
        "{created:?}"
    );
    assert_eq!(context.broker.acls().len(), 1);
    // As a super user the client passes; as ANONYMOUS with only READ on t,
    // it may read and describe t but not write it or describe the cluster.
    assert!(context.allowed_on_cluster(sluice_core::acls::Operation::Alter));
    let bound = authorizing(crate::AuthorizerOptions::default());
    use sluice_core::acls::{Operation, ResourceType};
    assert!(bound.allowed(Operation::Read, ResourceType::Topic, "t"));
    assert!(bound.allowed(Operation::Describe, ResourceType::Topic, "t"));
    assert!(!bound.allowed(Operation::Write, ResourceType::Topic, "t"));
    assert!(!bound.allowed_on_cluster(Operation::Describe));
    let Some(ResponseKind::DescribeAcls(described)) = dispatch(
        &bound,
        RequestKind::DescribeAcls(kafka_protocol::messages::DescribeAclsRequest::default()),
        3,
        "c",
    )
    .await
    else {
        panic!("a DescribeAcls response");
    };
    assert_eq!(
        described.error_code,
        kafka_protocol::ResponseError::ClusterAuthorizationFailed.code()
    );
    let Some(ResponseKind::DeleteAcls(deleted)) = dispatch(
        &context,
        requests(0)
            .into_iter()
            .find(|r| matches!(r, RequestKind::DeleteAcls(_)))
            .expect("a DeleteAcls"),
        3,
        "c",
    )
    .await
    else {
        panic!("a DeleteAcls response");
    };
    assert_eq!(
        deleted.filter_results[0].matching_acls.len(),
        1,
        "{deleted:?}"
    );
    assert!(context.broker.acls().is_empty());
    assert!(!bound.allowed(Operation::Read, ResourceType::Topic, "t"));
}

/// A Kafka front-end context over a broker on `dir` (node 1, loopback).
fn context_on(dir: &std::path::Path) -> Context {
    context_with(BrokerOptions::new(dir))
}

/// Another connection to `plain`'s broker, authorizing with `authorizer`
/// (as User:ANONYMOUS from `plain`'s address).
fn guarded_context(plain: &Context, authorizer: crate::AuthorizerOptions) -> Context {
    Context {
        options: Arc::new(KafkaOptions {
            authorizer: Some(Arc::new(authorizer)),
            ..(*plain.options).clone()
        }),
        broker: Arc::clone(&plain.broker),
        peer: plain.peer.clone(),
        connection: None,
        inter_node: false,
        sasl: Default::default(),
        tls_user: None,
        muted_until: Default::default(),
    }
}

/// A Kafka front-end context over a broker opened with `options`.
fn context_with(options: BrokerOptions) -> Context {
    Context {
        broker: Arc::new(Broker::open(options).expect("open broker")),
        options: Arc::new(KafkaOptions {
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            node_id: 1,
            max_request_bytes: 1 << 20,
            listener_name: "PLAINTEXT".into(),
            protocol: crate::SecurityProtocol::Plaintext,
            sasl: crate::SaslOptions::default(),
            tls: None,
            principal_rules: crate::PrincipalRules::default(),
            authorizer: None,
        }),
        peer: "/127.0.0.1".into(),
        connection: None,
        inter_node: false,
        sasl: Default::default(),
        tls_user: None,
        muted_until: Default::default(),
    }
}

/// One idempotent batch of producer `producer_id` with `sequence`,
/// encoded by kafka-protocol as a client would.
fn idempotent_batch(producer_id: i64, sequence: i32) -> BytesMut {
    flagged_batch(producer_id, sequence, false, false)
}

/// One batch of producer `producer_id` with `sequence`, transactional
/// and control as asked.
fn flagged_batch(producer_id: i64, sequence: i32, transactional: bool, control: bool) -> BytesMut {
    batch_of(producer_id, 3, sequence, transactional, control)
}

/// One transactional batch of `producer_id` at `epoch` with sequence 0.
fn flagged_batch_at_epoch(producer_id: i64, epoch: i16, sequence: i32) -> BytesMut {
    batch_of(producer_id, epoch, sequence, true, false)
}

fn batch_of(
    producer_id: i64,
    producer_epoch: i16,
    sequence: i32,
    transactional: bool,
    control: bool,
) -> BytesMut {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let record = Record {
        transactional,
        control,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence,
        timestamp: 1_000,
        key: None,
        value: Some(Bytes::from_static(b"v")),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_apis_answer_for_this_nodes_partitions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let context = context_on(dir.path());
    let t = context.broker.topic_or_create("t").expect("topic t");
    for sequence in [0, 1] {
        let mut records = idempotent_batch(42, sequence);
        t.append_start(sluice_types::PartitionId::from(0), &mut records)
            .expect("append")
            .wait()
            .expect("durable");
    }

    // DescribeProducers: producer 42 in epoch 3, last sequence 1.
    let asked = DescribeProducersRequest::default().with_topics(vec![
        kafka_protocol::messages::describe_producers_request::TopicRequest::default()
            .with_name(topic("t"))
            .with_partition_indexes(vec![0, 9]),
    ]);
    let Some(ResponseKind::DescribeProducers(answer)) = dispatch(
        &context,
        RequestKind::DescribeProducers(asked),
        0,
        "test-client",
    )
    .await
    else {
        panic!("no DescribeProducers answer");
    };
    let partitions = &answer.topics[0].partitions;
    assert_eq!(partitions[0].error_code, 0);
    let producers = &partitions[0].active_producers;
    assert_eq!(producers.len(), 1, "{producers:?}");
    assert_eq!(producers[0].producer_id.0, 42);
    assert_eq!(producers[0].producer_epoch, 3);
    assert_eq!(producers[0].last_sequence, 1);
    assert_eq!(
        partitions[1].error_code,
        kafka_protocol::ResponseError::UnknownTopicOrPartition.code()
    );

    // DescribeLogDirs (null: every topic): one directory, partition 0 of
    // t with its size.
    let Some(ResponseKind::DescribeLogDirs(answer)) = dispatch(
        &context,
        RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None)),
        4,
        "test-client",
    )
    .await
    else {
        panic!("no DescribeLogDirs answer");
    };
    assert_eq!(answer.results.len(), 1);
    let dir_result = &answer.results[0];
    assert!(
        dir_result.log_dir.ends_with("logs"),
        "{:?}",
        dir_result.log_dir
    );
    assert!(dir_result.total_bytes > 0 && dir_result.usable_bytes > 0);
    let t_dir = dir_result
        .topics
        .iter()
        .find(|topic| topic.name.as_str() == "t")
        .expect("topic t listed");
    assert_eq!(t_dir.partitions.len(), 1);
    assert!(t_dir.partitions[0].partition_size > 0);

    // ElectLeaders on a cluster of one: nothing to elect.
    let asked = ElectLeadersRequest::default().with_topic_partitions(Some(vec![
        kafka_protocol::messages::elect_leaders_request::TopicPartitions::default()
            .with_topic(topic("t"))
            .with_partitions(vec![0, 7]),
    ]));
    let Some(ResponseKind::ElectLeaders(answer)) =
        dispatch(&context, RequestKind::ElectLeaders(asked), 2, "test-client").await
    else {
        panic!("no ElectLeaders answer");
    };
    let results = &answer.replica_election_results[0].partition_result;
    assert_eq!(
        results[0].error_code,
        kafka_protocol::ResponseError::ElectionNotNeeded.code()
    );
    assert_eq!(
        results[1].error_code,
        kafka_protocol::ResponseError::UnknownTopicOrPartition.code()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_epoch_from_the_future_is_unknown_and_the_current_one_is_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let context = context_on(dir.path());
    context.broker.topic_or_create("t").expect("topic t");
    let list = |epoch: i32| {
        RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(topic("t"))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_timestamp(-1)
                        .with_current_leader_epoch(epoch),
                ]),
        ]))
    };
    let fetch = |epoch: i32| {
        RequestKind::Fetch(
            FetchRequest::default()
                .with_max_wait_ms(0)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(topic("t"))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(0)
                                .with_current_leader_epoch(epoch)
                                .with_partition_max_bytes(1 << 20),
                        ]),
                ]),
        )
    };
    let unknown = kafka_protocol::ResponseError::UnknownLeaderEpoch.code();
    for (epoch, expected) in [(-1, 0), (0, 0), (7, unknown)] {
        let Some(ResponseKind::ListOffsets(answer)) =
            dispatch(&context, list(epoch), 7, "test-client").await
        else {
            panic!("no ListOffsets answer");
        };
        assert_eq!(
            answer.topics[0].partitions[0].error_code, expected,
            "ListOffsets, epoch {epoch}"
        );
        let Some(ResponseKind::Fetch(answer)) =
            dispatch(&context, fetch(epoch), 12, "test-client").await
        else {
            panic!("no Fetch answer");
        };
        assert_eq!(
            answer.responses[0].partitions[0].error_code, expected,
            "Fetch, epoch {epoch}"
        );
    }
}

/// What only the broker writes is refused in a Produce, as Kafka does:
/// a transaction marker (control batch) or an idempotent batch without a
/// sequence is INVALID_RECORD; a transactional batch of a producer that
/// holds no transactional id is INVALID_PRODUCER_ID_MAPPING (the
/// coordinator verifies it). Nothing refused reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_refuses_markers_sequenceless_and_transactional_batches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let context = context_on(dir.path());
    let cases = [
        (
            flagged_batch(7, 0, true, true),
            kafka_protocol::ResponseError::InvalidRecord,
        ),
        (
            flagged_batch(7, -1, false, false),
            kafka_protocol::ResponseError::InvalidRecord,
        ),
        (
            flagged_batch(7, 0, true, false),
            kafka_protocol::ResponseError::InvalidProducerIdMapping,
        ),
        // A plain (not idempotent) batch carrying the control flag.
        (
            flagged_batch(-1, -1, false, true),
            kafka_protocol::ResponseError::InvalidRecord,
        ),
    ];
    for (case, (records, expected)) in cases.into_iter().enumerate() {
        let code = produce_one(&context, records, Some("tx")).await;
        assert_eq!(code, expected.code(), "case {case}");
    }
    let t = context.broker.topics().get("t").expect("topic t");
    let partition = t
        .partition(sluice_types::PartitionId::from(0))
        .expect("partition 0");
    assert_eq!(partition.log_end().get(), 0, "nothing refused was written");

    // An idempotent batch still goes in.
    assert_eq!(produce_one(&context, idempotent_batch(7, 0), None).await, 0);
    assert_eq!(partition.log_end().get(), 1);
}

/// The transactional APIs refuse what a well-behaved producer never
/// sends, with the error Kafka gives: an unknown transactional id, a
/// stale epoch (INVALID_PRODUCER_EPOCH before v2, PRODUCER_FENCED from
/// it), an end with nothing open, a write to a partition the transaction
/// does not hold, a timeout out of range; nothing reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_requests_out_of_turn_get_kafkas_errors() {
    use kafka_protocol::ResponseError;
    let dir = tempfile::tempdir().expect("temp dir");
    let context = context_on(dir.path());
    context.broker.topic_or_create("t").expect("topic t");
    let id = || TransactionalId(StrBytes::from_static_str("hostile"));
    let end = |producer: i64, epoch: i16, version: i16| {
        let request = EndTxnRequest::default()
            .with_transactional_id(id())
            .with_producer_id(ProducerId(producer))
            .with_producer_epoch(epoch)
            .with_committed(true);
        let context = &context;
        async move {
            match dispatch(
                context,
                RequestKind::EndTxn(request),
                version,
                "test-client",
            )
            .await
            {
                Some(ResponseKind::EndTxn(answer)) => answer.error_code,
                _ => panic!("no EndTxn response"),
            }
        }
    };
    let add = |producer: i64, epoch: i16, version: i16| {
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(id())
            .with_v3_and_below_producer_id(ProducerId(producer))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![
                kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![0]),
            ]);
        let context = &context;
        async move {
            match dispatch(
                context,
                RequestKind::AddPartitionsToTxn(request),
                version,
                "test-client",
            )
            .await
            {
                Some(ResponseKind::AddPartitionsToTxn(answer)) => {
                    answer.results_by_topic_v3_and_below[0].results_by_partition[0]
                        .partition_error_code
                }
                _ => panic!("no AddPartitionsToTxn response"),
            }
        }
    };
    let init = |timeout_ms: i32| {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(id()))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let context = &context;
        async move {
            match dispatch(
                context,
                RequestKind::InitProducerId(request),
                4,
                "test-client",
            )
            .await
            {
                Some(ResponseKind::InitProducerId(answer)) => (
                    answer.error_code,
                    answer.producer_id.0,
                    answer.producer_epoch,
                ),
                _ => panic!("no InitProducerId response"),
            }
        }
    };
    // Unknown id.
    assert_eq!(
        end(1, 0, 3).await,
        ResponseError::InvalidProducerIdMapping.code()
    );
    assert_eq!(
        init(0).await.0,
        ResponseError::InvalidTransactionTimeout.code()
    );
    let (code, producer, epoch) = init(60_000).await;
    assert_eq!((code, epoch), (0, 0));
    // Nothing open to end.
    assert_eq!(
        end(producer, 0, 3).await,
        ResponseError::InvalidTxnState.code()
    );
    // Another producer id, then a stale epoch.
    assert_eq!(
        add(producer + 1, 0, 3).await,
        ResponseError::InvalidProducerIdMapping.code()
    );
    assert_eq!(init(60_000).await, (0, producer, 1));
    assert_eq!(
        add(producer, 0, 1).await,
        ResponseError::InvalidProducerEpoch.code()
    );
    assert_eq!(
        add(producer, 0, 3).await,
        ResponseError::ProducerFenced.code()
    );
    // A transactional batch for a partition its transaction does not hold.
    assert_eq!(
        produce_one(
            &context,
            flagged_batch_at_epoch(producer, 1, 0),
            Some("hostile")
        )
        .await,
        ResponseError::InvalidTxnState.code()
    );
    // Without a transactional id at all.
    assert_eq!(
        produce_one(&context, flagged_batch_at_epoch(producer, 1, 0), None).await,
        ResponseError::TransactionalIdAuthorizationFailed.code()
    );
    let t = context.broker.topics().get("t").expect("topic t");
    let partition = t
        .partition(sluice_types::PartitionId::from(0))
        .expect("partition 0");
    assert_eq!(partition.log_end().get(), 0, "nothing refused was written");
    // Added, it goes in; the commit writes its marker after it.
    assert_eq!(add(producer, 1, 3).await, 0);
    assert_eq!(
        produce_one(
            &context,
            flagged_batch_at_epoch(producer, 1, 0),
            Some("hostile")
        )
        .await,
        0
    );
    assert_eq!(partition.last_stable_offset().get(), 0, "open: not stable");
    assert_eq!(end(producer, 1, 3).await, 0);
    assert_eq!(partition.log_end().get(), 2, "the batch and its marker");
    assert_eq!(partition.last_stable_offset().get(), 2);
    // A retried commit is answered as done.
    assert_eq!(end(producer, 1, 3).await, 0);
    assert_eq!(partition.log_end().get(), 2);
    // What kafka-transactions.sh shows.
    let described = match dispatch(
        &context,
        RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default().with_transactional_ids(vec![
                id(),
                TransactionalId(StrBytes::from_static_str("none")),
            ]),
        ),
        0,
        "test-client",
    )
    .await
    {
        Some(ResponseKind::DescribeTransactions(answer)) => answer.transaction_states,
        _ => panic!("no DescribeTransactions response"),
    };
    assert_eq!(described[0].error_code, 0);
    assert_eq!(described[0].transaction_state.as_str(), "CompleteCommit");
    assert_eq!(
        (described[0].producer_id.0, described[0].producer_epoch),
        (producer, 1)
    );
    assert_eq!(
        described[1].error_code,
        ResponseError::TransactionalIdNotFound.code()
    );
    let listed = match dispatch(
        &context,
        RequestKind::ListTransactions(ListTransactionsRequest::default().with_state_filters(vec![
            StrBytes::from_static_str("CompleteCommit"),
            StrBytes::from_static_str("Bogus"),
        ])),
        1,
        "test-client",
    )
    .await
    {
        Some(ResponseKind::ListTransactions(answer)) => answer,
        _ => panic!("no ListTransactions response"),
    };
    assert_eq!(listed.transaction_states.len(), 1);
    assert_eq!(
        listed.transaction_states[0].transactional_id.as_str(),
        "hostile"
    );
    assert_eq!(listed.unknown_state_filters.len(), 1);
}

/// A transactional id with nothing open and no use for
/// `transactional_id_expiration_ms` is forgotten on a tick, for good (a
/// restart does not bring it back), and its next InitProducerId gets a
/// new producer id; an id with a transaction open stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactional_ids_expire_and_open_ones_stay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = || BrokerOptions {
        transactional_id_expiration_ms: 300,
        ..BrokerOptions::new(dir.path())
    };
    let init = |context: &Context, name: &'static str| {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(name))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let context = context.clone();
        async move {
            match dispatch(
                &context,
                RequestKind::InitProducerId(request),
                4,
                "test-client",
            )
            .await
            {
                Some(ResponseKind::InitProducerId(answer)) => {
                    assert_eq!(answer.error_code, 0);
                    (answer.producer_id.0, answer.producer_epoch)
                }
                _ => panic!("no InitProducerId response"),
            }
        }
    };
    let context = context_with(options());
    context.broker.topic_or_create("t").expect("topic t");
    let (idle, _) = init(&context, "idle").await;
    let (open, epoch) = init(&context, "open").await;
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_static_str("open")))
        .with_v3_and_below_producer_id(ProducerId(open))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![
            kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(topic("t"))
                .with_partitions(vec![0]),
        ]);
    match dispatch(
        &context,
        RequestKind::AddPartitionsToTxn(request),
        3,
        "test-client",
    )
    .await
    {
        Some(ResponseKind::AddPartitionsToTxn(answer)) => assert_eq!(
            answer.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code,
            0
        ),
        _ => panic!("no AddPartitionsToTxn response"),
    }
    let transactions = context.broker.transactions();
    transactions.tick(&context.broker);
    assert!(
        transactions.describe("idle").is_some(),
        "not idle long enough yet"
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    transactions.tick(&context.broker);
    assert!(transactions.describe("idle").is_none(), "expired");
    let state = transactions.describe("open").map(|meta| meta.state);
    assert_eq!(state, Some(sluice_core::transactions::TxnState::Ongoing));
    drop(context);
    let context = context_with(options());
    let transactions = context.broker.transactions();
    assert!(
        transactions.describe("idle").is_none(),
        "forgotten across a restart"
    );
    assert!(transactions.describe("open").is_some());
    let (again, epoch) = init(&context, "idle").await;
    assert_ne!(again, idle, "a new producer id");
    assert_eq!(epoch, 0);
}

/// KIP-360 as Kafka answers it: InitProducerId naming the current epoch
/// bumps it; naming the epoch before the last bump is a retry of that
/// call (its answer lost) and gets the same answer again; an older one
/// is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_epoch_bump_gets_the_same_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let context = context_on(dir.path());
    let transactions = context.broker.transactions();
    let init = |current: Option<(i64, i16)>| {
        transactions.init_producer(&context.broker, "retried", 60_000, current)
    };
    let (producer, first) = init(None).expect("init");
    assert_eq!(
        init(Some((producer, first))).expect("bump"),
        (producer, first + 1)
    );
    assert_eq!(
        init(Some((producer, first))).expect("a retry"),
        (producer, first + 1),
        "answered again, not bumped"
    );
    assert_eq!(
        init(Some((producer, first + 1))).expect("bump"),
        (producer, first + 2)
    );
    assert!(matches!(
        init(Some((producer, first))),
        Err(sluice_core::transactions::TxnError::Fenced { .. })
    ));
}

/// The broker's own transactional ids (AMQP commits into streams) are
/// not for clients, and are forgotten with their connection when idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_own_transactional_ids_are_reserved_and_forgotten() {
    use kafka_protocol::ResponseError;
    let dir = tempfile::tempdir().expect("temp dir");
    let context = context_on(dir.path());
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(
            "__sluice_amqp_tx-7",
        ))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    match dispatch(
        &context,
        RequestKind::InitProducerId(request),
        4,
        "test-client",
    )
    .await
    {
        Some(ResponseKind::InitProducerId(answer)) => assert_eq!(
            answer.error_code,
            ResponseError::TransactionalIdAuthorizationFailed.code()
        ),
        _ => panic!("no InitProducerId response"),
    }
    // Nor may a client end, extend or write into one of their
    // transactions (an AMQP channel's, whose producer id it read).
    let owned = || TransactionalId(StrBytes::from_static_str("__sluice_amqp_tx-1-7"));
    let refused = ResponseError::TransactionalIdAuthorizationFailed.code();
    let end = EndTxnRequest::default()
        .with_transactional_id(owned())
        .with_producer_id(ProducerId(1))
        .with_committed(false);
    match dispatch(&context, RequestKind::EndTxn(end), 3, "test-client").await {
        Some(ResponseKind::EndTxn(answer)) => assert_eq!(answer.error_code, refused),
        _ => panic!("no EndTxn response"),
    }
    let add = AddOffsetsToTxnRequest::default()
        .with_transactional_id(owned())
        .with_producer_id(ProducerId(1))
        .with_group_id(GroupId(StrBytes::from_static_str("g")));
    match dispatch(
        &context,
        RequestKind::AddOffsetsToTxn(add),
        3,
        "test-client",
    )
    .await
    {
        Some(ResponseKind::AddOffsetsToTxn(answer)) => assert_eq!(answer.error_code, refused),
        _ => panic!("no AddOffsetsToTxn response"),
    }
    let add = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(owned())
        .with_v3_and_below_producer_id(ProducerId(1))
        .with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![0]),
        ]);
    match dispatch(
        &context,
        RequestKind::AddPartitionsToTxn(add),
        3,
        "test-client",
    )
    .await
    {
        Some(ResponseKind::AddPartitionsToTxn(answer)) => {
            let codes: Vec<i16> = answer
                .results_by_topic_v3_and_below
                .iter()
                .flat_map(|t| &t.results_by_partition)
                .map(|p| p.partition_error_code)
                .collect();
            assert_eq!(codes, vec![refused]);
        }
        _ => panic!("no AddPartitionsToTxn response"),
    }
    let produce = ProduceRequest::default()
        .with_transactional_id(Some(owned()))
        .with_acks(-1)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_data(vec![PartitionProduceData::default().with_index(0)]),
        ]);
    match dispatch(&context, RequestKind::Produce(produce), 7, "test-client").await {
        Some(ResponseKind::Produce(answer)) => {
            let codes: Vec<i16> = answer
                .responses
                .iter()
                .flat_map(|t| &t.partition_responses)
                .map(|p| p.error_code)
                .collect();
            assert_eq!(codes, vec![refused]);
        }
        _ => panic!("no Produce response"),
    }
    let transactions = context.broker.transactions();
    context.broker.topic_or_create("t").expect("topic t");
    let (idle, _) = transactions
        .init_producer(&context.broker, "idle", 60_000, None)
        .expect("init");
    let (open, epoch) = transactions
        .init_producer(&context.broker, "open", 60_000, None)
        .expect("init");
    transactions
        .add("open", open, epoch, &[("t".to_owned(), 0)], None)
        .expect("add");
    transactions.forget(&["idle".to_owned(), "open".to_owned(), "unknown".to_owned()]);
    assert!(transactions.describe("idle").is_none(), "forgotten");
    assert!(transactions.describe("open").is_some(), "kept while open");
    let (again, _) = transactions
        .init_producer(&context.broker, "idle", 60_000, None)
        .expect("init");
    assert_ne!(again, idle);
}

/// AddPartitionsToTxn v4+ (the batched form brokers send, KIP-890):
/// `verify_only` answers whether the open transaction holds each
/// partition (TRANSACTION_ABORTABLE when not) and adds nothing; a
/// transaction that is not verify-only is added as from a client; each
/// transaction gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_add_partitions_verifies_and_adds_per_transaction() {
    use kafka_protocol::ResponseError;
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let context = context_on(dir.path());
    context.broker.topic_or_create("t").expect("topic t");
    let (producer, epoch) = context
        .broker
        .transactions()
        .init_producer(&context.broker, "batched", 60_000, None)
        .expect("init");
    let transaction = |id: &'static str, producer: i64, verify: bool, partitions: Vec<i32>| {
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str(id)))
            .with_producer_id(ProducerId(producer))
            .with_producer_epoch(epoch)
            .with_verify_only(verify)
            .with_topics(vec![
                AddPartitionsToTxnTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(partitions),
            ])
    };
    let send = |transactions: Vec<AddPartitionsToTxnTransaction>| {
        let request = AddPartitionsToTxnRequest::default().with_transactions(transactions);
        let context = &context;
        async move {
            match dispatch(
                context,
                RequestKind::AddPartitionsToTxn(request),
                4,
                "broker",
            )
            .await
            {
                Some(ResponseKind::AddPartitionsToTxn(answer)) => answer
                    .results_by_transaction
                    .into_iter()
                    .map(|result| {
                        result.topic_results[0]
                            .results_by_partition
                            .iter()
                            .map(|p| (p.partition_index, p.partition_error_code))
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>(),
                _ => panic!("no AddPartitionsToTxn response"),
            }
        }
    };
    // Nothing open: every partition is abortable; an unknown id is not
    // mapped to the producer; a transaction added in the same request.
    let answers = send(vec![
        transaction("batched", producer, true, vec![0]),
        transaction("unknown", producer, true, vec![0]),
        transaction("batched", producer, false, vec![0]),
    ])
    .await;
    assert_eq!(
        answers,
        vec![
            vec![(0, ResponseError::TransactionAbortable.code())],
            vec![(0, ResponseError::InvalidProducerIdMapping.code())],
            vec![(0, 0)],
        ]
    );
    // Partition 0 is held now, partition 1 is not, and verifying added
    // nothing.
    let answers = send(vec![transaction("batched", producer, true, vec![0, 1])]).await;
    assert_eq!(
        answers,
        vec![vec![
            (0, 0),
            (1, ResponseError::TransactionAbortable.code())
        ]]
    );
    let held = context
        .broker
        .transactions()
        .describe("batched")
        .map(|meta| meta.partitions);
    assert_eq!(held, Some([("t".to_owned(), 0)].into()));
    // A stale epoch is fenced.
    let stale = transaction("batched", producer, true, vec![0]).with_producer_epoch(epoch - 1);
    assert_eq!(
        send(vec![stale]).await,
        vec![vec![(0, ResponseError::ProducerFenced.code())]]
    );
}

/// Produces `records` to partition 0 of topic "t" (acks=all, with
/// `transactional_id`); the partition's error code.
async fn produce_one(
    context: &Context,
    records: BytesMut,
    transactional_id: Option<&'static str>,
) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_transactional_id(
            transactional_id.map(|id| TransactionalId(StrBytes::from_static_str(id))),
        )
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic("t"))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records.freeze())),
                ]),
        ]);
    let Some(ResponseKind::Produce(answer)) =
        dispatch(context, RequestKind::Produce(request), 9, "test-client").await
    else {
        panic!("no Produce response");
    };
    answer.responses[0].partition_responses[0].error_code
}

/// WriteTxnMarkers is for the other nodes of a cluster only: from a
/// client it is CLUSTER_AUTHORIZATION_FAILED and writes nothing; from a
/// node it writes the marker, and a marker from a coordinator older than
/// the last one the partition saw for the producer is
/// TRANSACTION_COORDINATOR_FENCED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_txn_markers_come_from_nodes_only_and_older_coordinators_are_fenced() {
    use kafka_protocol::ResponseError;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut context = context_on(dir.path());
    context.broker.topic_or_create("t").expect("topic t");
    let end = |context: &Context| {
        context
            .broker
            .topics()
            .get("t")
            .and_then(|t| t.local_partition(sluice_types::PartitionId::from(0)).ok())
            .map(|p| p.log_end().get())
    };
    let code = |response: Option<ResponseKind>| match response {
        Some(ResponseKind::WriteTxnMarkers(answer)) => {
            answer.markers[0].topics[0].partitions[0].error_code
        }
        _ => panic!("no WriteTxnMarkers response"),
    };
    async fn send(context: &Context, coordinator_epoch: i32) -> Option<ResponseKind> {
        dispatch(
            context,
            RequestKind::WriteTxnMarkers(markers_request(7, 0, true, coordinator_epoch)),
            1,
            "sluice-replica-2",
        )
        .await
    }
    let before = end(&context);
    assert_eq!(
        code(send(&context, 5).await),
        kafka_protocol::ResponseError::ClusterAuthorizationFailed.code()
    );
    assert_eq!(end(&context), before, "nothing written for a client");
    context.inter_node = true;
    assert_eq!(code(send(&context, 5).await), 0);
    assert_eq!(
        end(&context),
        before.map(|e| e + 1),
        "the marker is written"
    );
    assert_eq!(
        code(send(&context, 4).await),
        ResponseError::TransactionCoordinatorFenced.code()
    );
    assert_eq!(
        code(send(&context, 5).await),
        0,
        "the same coordinator again"
    );
}

/// Under an authorizer, DescribeTransactions leaves out the partitions of
/// topics the client may not describe, and TxnOffsetCommit refuses the
/// partitions of topics it may not read while committing the others, as
/// Kafka does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_hide_and_refuse_only_the_topics_a_principal_may_not_use() {
    use kafka_protocol::ResponseError;
    use sluice_core::acls::{AclBinding, Operation, PatternType, Permission, ResourceType};
    let dir = tempfile::tempdir().expect("temp dir");
    let plain = context_on(dir.path());
    for name in ["seen", "hidden"] {
        plain.broker.topic_or_create(name).expect("topic");
    }
    let id = || TransactionalId(StrBytes::from_static_str("guarded-txn"));
    let Some(ResponseKind::InitProducerId(init)) = dispatch(
        &plain,
        RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transactional_id(Some(id()))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        4,
        "c",
    )
    .await
    else {
        panic!("an InitProducerId response");
    };
    let (producer, epoch) = (init.producer_id, init.producer_epoch);
    let topics = ["seen", "hidden"].map(|name| {
        kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
            .with_name(topic(name))
            .with_partitions(vec![0])
    });
    let added = dispatch(
        &plain,
        RequestKind::AddPartitionsToTxn(
            AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(id())
                .with_v3_and_below_producer_id(producer)
                .with_v3_and_below_producer_epoch(epoch)
                .with_v3_and_below_topics(topics.to_vec()),
        ),
        3,
        "c",
    )
    .await;
    assert!(matches!(added, Some(ResponseKind::AddPartitionsToTxn(_))));
    let group = GroupId(StrBytes::from_static_str("guarded-group"));
    let Some(ResponseKind::AddOffsetsToTxn(offsets)) = dispatch(
        &plain,
        RequestKind::AddOffsetsToTxn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(id())
                .with_producer_id(producer)
                .with_producer_epoch(epoch)
                .with_group_id(group.clone()),
        ),
        3,
        "c",
    )
    .await
    else {
        panic!("an AddOffsetsToTxn response");
    };
    assert_eq!(offsets.error_code, 0);

    // ANONYMOUS may use the transactional id and the group, and read and
    // describe "seen" only.
    let allow = |resource_type, name: &str, operation| AclBinding {
        resource_type,
        resource_name: name.to_owned(),
        pattern_type: PatternType::Literal,
        principal: "User:ANONYMOUS".to_owned(),
        host: "*".to_owned(),
        operation,
        permission: Permission::Allow,
    };
    plain
        .broker
        .create_acls(vec![
            allow(
                ResourceType::TransactionalId,
                "guarded-txn",
                Operation::Write,
            ),
            allow(ResourceType::Group, "guarded-group", Operation::Read),
            allow(ResourceType::Topic, "seen", Operation::Read),
        ])
        .expect("ACLs");
    let guarded = guarded_context(&plain, crate::AuthorizerOptions::default());
    let Some(ResponseKind::DescribeTransactions(described)) = dispatch(
        &guarded,
        RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default().with_transactional_ids(vec![id()]),
        ),
        0,
        "c",
    )
    .await
    else {
        panic!("a DescribeTransactions response");
    };
    let state = &described.transaction_states[0];
    assert_eq!(state.error_code, 0);
    let shown: Vec<&str> = state.topics.iter().map(|t| t.topic.as_str()).collect();
    assert_eq!(
        shown,
        ["seen"],
        "the hidden topic's partitions are left out"
    );

    let partition = || {
        kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
            .with_partition_index(0)
            .with_committed_offset(0)
    };
    let Some(ResponseKind::TxnOffsetCommit(committed)) = dispatch(
        &guarded,
        RequestKind::TxnOffsetCommit(
            TxnOffsetCommitRequest::default()
                .with_transactional_id(id())
                .with_group_id(group)
                .with_producer_id(producer)
                .with_producer_epoch(epoch)
                .with_generation_id(-1)
                .with_topics(["seen", "hidden"].map(|name| {
                    kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                        .with_name(topic(name))
                        .with_partitions(vec![partition()])
                }).to_vec()),
        ),
        3,
        "c",
    )
    .await
    else {
        panic!("a TxnOffsetCommit response");
    };
    let codes: Vec<(&str, i16)> = committed
        .topics
        .iter()
        .map(|t| (t.name.as_str(), t.partitions[0].error_code))
        .collect();
    assert_eq!(
        codes,
        [
            ("seen", 0),
            ("hidden", ResponseError::TopicAuthorizationFailed.code())
        ]
    );
}
