//! A cluster's transactions between nodes, over a connection to each
//! node's inter-node listener (announced as carrying Kafka requests, as
//! replica fetches are), kept per node and dialled again after a failure:
//! - a coordinator's WriteTxnMarkers (v1, Kafka's inter-broker request)
//!   to each partition's leader, one request per node;
//! - the broker's own transactions (an AMQP `tx.commit` into streams) as
//!   a Kafka producer: InitProducerId (v1), AddPartitionsToTxn (v3) and
//!   EndTxn (v1) to the id's coordinator, Produce (v7, acks=all) to the
//!   partitions' leaders;
//! - a leader's check of a transactional batch with the id's coordinator
//!   (KIP-890: AddPartitionsToTxn v4 with `verify_only`).
//!
//! Two connections per peer (`Lane`) keep requests whose handling sends
//! requests of its own apart from those, so two nodes never wait on each
//! other.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, DeleteGroupsRequest, EndTxnRequest, GroupId, InitProducerIdRequest,
    OffsetCommitRequest, OffsetFetchRequest, ProduceRequest, ProducerId, TopicName,
    TransactionalId, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::{Encodable, HeaderVersion, Request, StrBytes};
use sluice_core::transactions::{Outcome, RemoteBatches, RemoteMarker, TxnError, TxnPeers};
use sluice_core::{CommittedOffset, CoreError};
use tokio::runtime::Handle;

use crate::MetadataNode;
use crate::replica::{Link, connect};

const MARKERS_VERSION: i16 = 1;
const INIT_PRODUCER_VERSION: i16 = 1;
const ADD_PARTITIONS_VERSION: i16 = 3;
const END_TXN_VERSION: i16 = 1;
/// OffsetCommit and OffsetFetch of the broker's own groups (share state).
const OFFSET_COMMIT_VERSION: i16 = 8;
const OFFSET_FETCH_VERSION: i16 = 7;
const DELETE_GROUPS_VERSION: i16 = 2;
/// KIP-890's batched form, which brokers send (`verify_only`).
const VERIFY_VERSION: i16 = 4;
const PRODUCE_VERSION: i16 = 7;
/// Longest a request may take, connecting included (markers and
/// produces wait for their partitions' in-sync replicas on the leader).
const TXN_TIMEOUT: Duration = Duration::from_secs(15);

type Slot = Arc<tokio::sync::Mutex<Option<Link>>>;

/// Which of a peer's two connections a request takes. A request held on
/// a connection until answered must never wait for one whose handling
/// needs the same kind of connection back (two nodes each waiting on the
/// other): requests whose handling sends none of its own (markers, KIP-890
/// verifications) go on the `Leaf` one; the broker's own producer, whose
/// EndTxn, InitProducerId and Produce may make the peer send those, goes
/// on the `Producer` one. A share group's deletion or altered offsets
/// (DeleteGroups of the broker's own groups) go on the `Share` one: their
/// handling waits for the peer's share-state store in progress, which may
/// itself be waiting on a `Leaf` connection back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lane {
    Leaf,
    Producer,
    Share,
}
/// A marker's producer id, epoch, outcome (commit) and coordinator epoch.
type MarkerKey = (i64, i16, bool, i32);

/// A node's way to the other nodes' coordinators and partitions.
#[derive(Debug)]
pub struct TxnLinks {
    node: Arc<MetadataNode>,
    runtime: Handle,
    /// This node's id (named in the requests' client id).
    own: i32,
    links: Mutex<HashMap<(i32, Lane), Slot>>,
}

impl TxnLinks {
    pub fn new(node: Arc<MetadataNode>, runtime: Handle, own: i32) -> TxnLinks {
        TxnLinks {
            node,
            runtime,
            own,
            links: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, node: i32, lane: Lane) -> Slot {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(links.entry((node, lane)).or_default())
    }

    /// Sends `request` on `node`'s link of `lane` and waits for its
    /// response (`Err` with why not: the link is dialled again next time).
    /// Each of waiting for the link and the exchange has `TXN_TIMEOUT`; a
    /// link that failed or timed out is dropped before it is let go of.
    fn call<R>(
        &self,
        node: i32,
        lane: Lane,
        request: R,
        version: i16,
    ) -> Result<R::Response, String>
    where
        R: Request + Encodable + HeaderVersion + Send + 'static,
        R::Response: Send + 'static,
    {
        let slot = self.slot(node, lane);
        let address = u64::try_from(node)
            .ok()
            .and_then(|id| self.node.address(id));
        let own = self.own;
        let late = move || format!("no answer from node {node} in time");
        let sending = async move {
            let Ok(mut link) = tokio::time::timeout(TXN_TIMEOUT, slot.lock()).await else {
                return Err(format!("the link to node {node} stayed busy"));
            };
            let sent = tokio::time::timeout(
                TXN_TIMEOUT,
                exchange(&mut link, address, own, node, request, version),
            )
            .await
            .unwrap_or_else(|_| Err(late()));
            if sent.is_err() {
                *link = None;
            }
            sent
        };
        crate::run_blocking(
            &self.runtime,
            TXN_TIMEOUT * 2 + Duration::from_secs(1),
            sending,
        )
        .unwrap_or_else(|| Err(late()))
    }

    /// As [`TxnLinks::call`], for the broker's own transaction `id`: a
    /// link's failure as [`CoreError::Internal`].
    fn call_for<R>(
        &self,
        (node, lane): (i32, Lane),
        id: &str,
        request: R,
        version: i16,
    ) -> Result<R::Response, TxnError>
    where
        R: Request + Encodable + HeaderVersion + Send + 'static,
        R::Response: Send + 'static,
    {
        self.call(node, lane, request, version).map_err(|reason| {
            TxnError::Core(CoreError::Internal {
                reason: format!("transaction {id:?} on node {node}: {reason}"),
            })
        })
    }
}

impl TxnPeers for TxnLinks {
    fn write_markers(&self, node: i32, markers: Vec<RemoteMarker>) -> Result<(), CoreError> {
        let asked = markers.len();
        self.call(node, Lane::Leaf, markers_request(&markers), MARKERS_VERSION)
            .and_then(|response| markers_answered(&response, asked))
            .map_err(|reason| CoreError::Internal {
                reason: format!("transaction markers on node {node}: {reason}"),
            })
    }

    fn init_producer(&self, node: i32, id: &str, timeout_ms: i32) -> Result<(i64, i16), TxnError> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(transactional_id(id)))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response = self.call_for((node, Lane::Producer), id, request, INIT_PRODUCER_VERSION)?;
        answered(node, id, response.error_code)?;
        Ok((response.producer_id.0, response.producer_epoch))
    }

    fn add_partitions(
        &self,
        node: i32,
        id: &str,
        (producer_id, epoch): (i64, i16),
        partitions: &[(String, i32)],
    ) -> Result<(), TxnError> {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            topics.entry(topic.as_str()).or_default().push(*partition);
        }
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(transactional_id(id))
            .with_v3_and_below_producer_id(ProducerId(producer_id))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        AddPartitionsToTxnTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let response =
            self.call_for((node, Lane::Producer), id, request, ADD_PARTITIONS_VERSION)?;
        let codes: Vec<i16> = response
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|topic| &topic.results_by_partition)
            .map(|partition| partition.partition_error_code)
            .collect();
        if codes.len() != partitions.len() {
            return Err(TxnError::Core(CoreError::Internal {
                reason: format!(
                    "transaction {id:?} on node {node}: {} partitions answered of the {} added",
                    codes.len(),
                    partitions.len()
                ),
            }));
        }
        codes
            .into_iter()
            .try_for_each(|code| answered(node, id, code))
    }

    fn produce(&self, node: i32, id: &str, batches: Vec<RemoteBatches>) -> Result<(), TxnError> {
        let asked = batches.len();
        let mut topics: BTreeMap<String, Vec<PartitionProduceData>> = BTreeMap::new();
        for batch in batches {
            topics.entry(batch.topic).or_default().push(
                PartitionProduceData::default()
                    .with_index(batch.partition)
                    .with_records(Some(batch.records)),
            );
        }
        let request = ProduceRequest::default()
            .with_transactional_id(Some(transactional_id(id)))
            .with_acks(-1)
            .with_timeout_ms(
                i32::try_from(crate::replica::CALL_TIMEOUT.as_millis()).unwrap_or(i32::MAX),
            )
            .with_topic_data(
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        TopicProduceData::default()
                            .with_name(topic_name(&topic))
                            .with_partition_data(partitions)
                    })
                    .collect(),
            );
        let response = self.call_for((node, Lane::Producer), id, request, PRODUCE_VERSION)?;
        let mut written = 0;
        for topic in &response.responses {
            for partition in &topic.partition_responses {
                if partition.error_code != 0 {
                    return Err(TxnError::Core(CoreError::Internal {
                        reason: format!(
                            "transaction {id:?}: {}-{} on node {node} answered {}",
                            topic.name.as_str(),
                            partition.index,
                            error_name(partition.error_code)
                        ),
                    }));
                }
                written += 1;
            }
        }
        if written != asked {
            return Err(TxnError::Core(CoreError::Internal {
                reason: format!(
                    "transaction {id:?} on node {node}: {written} partitions answered of the {asked} written"
                ),
            }));
        }
        Ok(())
    }

    fn verify(
        &self,
        node: i32,
        id: &str,
        (producer_id, epoch): (i64, i16),
        topic: &str,
        partition: i32,
    ) -> Result<(), TxnError> {
        let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
            AddPartitionsToTxnTransaction::default()
                .with_transactional_id(transactional_id(id))
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch)
                .with_verify_only(true)
                .with_topics(vec![
                    AddPartitionsToTxnTopic::default()
                        .with_name(topic_name(topic))
                        .with_partitions(vec![partition]),
                ]),
        ]);
        let response = self.call_for((node, Lane::Leaf), id, request, VERIFY_VERSION)?;
        answered(node, id, response.error_code)?;
        let code = response
            .results_by_transaction
            .iter()
            .flat_map(|result| &result.topic_results)
            .flat_map(|topic| &topic.results_by_partition)
            .map(|result| result.partition_error_code)
            .next()
            .ok_or_else(|| {
                TxnError::Core(CoreError::Internal {
                    reason: format!("transaction {id:?}: node {node} verified no partition"),
                })
            })?;
        answered(node, id, code)
    }

    fn end(
        &self,
        node: i32,
        id: &str,
        (producer_id, epoch): (i64, i16),
        commit: bool,
    ) -> Result<(), TxnError> {
        let request = EndTxnRequest::default()
            .with_transactional_id(transactional_id(id))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        let response = self.call_for((node, Lane::Producer), id, request, END_TXN_VERSION)?;
        answered(node, id, response.error_code)
    }

    fn commit_offsets(
        &self,
        node: i32,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), CoreError> {
        let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (topic, partition, committed) in offsets {
            topics.entry(topic.as_str()).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(committed.offset)
                    .with_committed_leader_epoch(committed.leader_epoch)
                    .with_committed_metadata(committed.metadata.clone().map(StrBytes::from_string)),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(topic_name(topic))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let failed = |reason: String| CoreError::Internal {
            reason: format!("offsets of {group:?} on node {node}: {reason}"),
        };
        let response = self
            .call(node, Lane::Leaf, request, OFFSET_COMMIT_VERSION)
            .map_err(failed)?;
        let code = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| p.error_code)
            .find(|code| *code != 0);
        match code {
            None => Ok(()),
            Some(code) => Err(failed(format!("error code {code}"))),
        }
    }

    fn committed_offsets(
        &self,
        node: i32,
        group: &str,
    ) -> Result<Vec<(String, i32, CommittedOffset)>, CoreError> {
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_topics(None);
        let failed = |reason: String| CoreError::Internal {
            reason: format!("offsets of {group:?} on node {node}: {reason}"),
        };
        let response = self
            .call(node, Lane::Leaf, request, OFFSET_FETCH_VERSION)
            .map_err(failed)?;
        if response.error_code != 0 {
            return Err(failed(format!("error code {}", response.error_code)));
        }
        Ok(response
            .topics
            .into_iter()
            .flat_map(|topic| {
                let name = topic.name.to_string();
                topic.partitions.into_iter().map(move |p| {
                    (
                        name.clone(),
                        p.partition_index,
                        CommittedOffset {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p.metadata.map(|m| m.to_string()),
                        },
                    )
                })
            })
            .collect())
    }

    fn delete_group(&self, node: i32, group: &str) -> Result<(), CoreError> {
        let request = DeleteGroupsRequest::default()
            .with_groups_names(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
        let failed = |reason: String| CoreError::Internal {
            reason: format!("deleting {group:?} on node {node}: {reason}"),
        };
        let response = self
            .call(node, Lane::Share, request, DELETE_GROUPS_VERSION)
            .map_err(failed)?;
        match response
            .results
            .iter()
            .map(|r| r.error_code)
            .find(|c| *c != 0)
        {
            None => Ok(()),
            Some(code) => Err(failed(format!("error code {code}"))),
        }
    }
}

/// A coordinator's error code as the [`TxnError`] it was made from
/// (busy or moved are asked again; the link's failures and the rest are
/// [`CoreError::Internal`]).
fn answered(node: i32, id: &str, code: i16) -> Result<(), TxnError> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(ResponseError::ConcurrentTransactions) => {
            Err(TxnError::Concurrent { id: id.to_owned() })
        }
        Some(ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch) => {
            Err(TxnError::Fenced {
                id: id.to_owned(),
                producer_id: -1,
                epoch: -1,
                current: -1,
            })
        }
        Some(ResponseError::InvalidProducerIdMapping) => Err(TxnError::UnknownProducer {
            id: id.to_owned(),
            found: -1,
        }),
        Some(ResponseError::InvalidTxnState | ResponseError::TransactionAbortable) => {
            Err(TxnError::InvalidState {
                id: id.to_owned(),
                state: "not holding the partition",
                what: "take a batch",
            })
        }
        Some(
            ResponseError::NotCoordinator
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::CoordinatorLoadInProgress,
        ) => Err(TxnError::NotCoordinator {
            id: id.to_owned(),
            coordinator: None,
        }),
        Some(error) => Err(TxnError::Core(CoreError::Internal {
            reason: format!("transaction {id:?}: node {node} answered {error:?}"),
        })),
    }
}

fn error_name(code: i16) -> String {
    ResponseError::try_from_code(code).map_or_else(|| code.to_string(), |e| format!("{e:?}"))
}

fn transactional_id(id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(id.to_owned()))
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

/// One request on `node`'s link, dialled first if needed.
async fn exchange<R>(
    link: &mut Option<Link>,
    address: Option<String>,
    own: i32,
    node: i32,
    request: R,
    version: i16,
) -> Result<R::Response, String>
where
    R: Request + Encodable + HeaderVersion,
{
    if link.is_none() {
        let address = address.ok_or_else(|| format!("no address known for node {node}"))?;
        let stream = connect(&address).await.map_err(|e| e.to_string())?;
        *link = Some(Link::new(stream, own));
    }
    let Some(connection) = link.as_mut() else {
        return Err("no link".to_owned());
    };
    connection.call(request, version).await
}

/// Whether WriteTxnMarkers' `response` answers each of the `asked`
/// partitions, and with no error (else the first failure).
fn markers_answered(
    response: &kafka_protocol::messages::WriteTxnMarkersResponse,
    asked: usize,
) -> Result<(), String> {
    // Every partition asked for must be answered, and with no error.
    let answered: usize = response
        .markers
        .iter()
        .flat_map(|result| &result.topics)
        .map(|topic| topic.partitions.len())
        .sum();
    if answered != asked {
        return Err(format!(
            "{answered} partitions answered of the {} asked for",
            asked
        ));
    }
    for result in &response.markers {
        for topic in &result.topics {
            for partition in &topic.partitions {
                if partition.error_code != 0 {
                    let error = error_name(partition.error_code);
                    return Err(format!(
                        "{}-{} answered {error} for producer {}",
                        topic.name.as_str(),
                        partition.partition_index,
                        result.producer_id.0
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The request for `markers`: one entry per producer, epoch, outcome and
/// coordinator epoch, with its partitions by topic.
fn markers_request(markers: &[RemoteMarker]) -> WriteTxnMarkersRequest {
    let mut grouped: BTreeMap<MarkerKey, BTreeMap<&str, Vec<i32>>> = BTreeMap::new();
    for marker in markers {
        let key = (
            marker.producer_id,
            marker.producer_epoch,
            marker.marker.outcome == Outcome::Commit,
            marker.marker.coordinator_epoch,
        );
        grouped
            .entry(key)
            .or_default()
            .entry(marker.topic.as_str())
            .or_default()
            .push(marker.partition);
    }
    let markers = grouped
        .into_iter()
        .map(
            |((producer_id, epoch, commit, coordinator_epoch), topics)| {
                WritableTxnMarker::default()
                    .with_producer_id(ProducerId(producer_id))
                    .with_producer_epoch(epoch)
                    .with_transaction_result(commit)
                    .with_coordinator_epoch(coordinator_epoch)
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(topic, partitions)| {
                                WritableTxnMarkerTopic::default()
                                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                                    .with_partition_indexes(partitions)
                            })
                            .collect(),
                    )
            },
        )
        .collect();
    WriteTxnMarkersRequest::default().with_markers(markers)
}
