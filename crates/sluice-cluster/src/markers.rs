//! Transaction markers for partitions other nodes lead: a coordinator's
//! WriteTxnMarkers (v1, Kafka's inter-broker request) to each partition's
//! leader, one request per node, over a connection to that node's
//! inter-node listener (announced as carrying Kafka requests, as replica
//! fetches are), kept per node and dialled again after a failure.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest};
use kafka_protocol::protocol::StrBytes;
use sluice_core::CoreError;
use sluice_core::transactions::{Outcome, RemoteMarker, RemoteMarkers};
use tokio::runtime::Handle;

use crate::MetadataNode;
use crate::replica::{Link, connect};

const MARKERS_VERSION: i16 = 1;
/// Longest a marker request may take, connecting included (each marker
/// waits for its partition's in-sync replicas on the leader).
const MARKERS_TIMEOUT: Duration = Duration::from_secs(15);

type Slot = Arc<tokio::sync::Mutex<Option<Link>>>;
/// A marker's producer id, epoch, outcome (commit) and coordinator epoch.
type MarkerKey = (i64, i16, bool, i32);

/// A coordinator's way to other nodes' partitions.
#[derive(Debug)]
pub struct MarkerLinks {
    node: Arc<MetadataNode>,
    runtime: Handle,
    /// This node's id (named in the requests' client id).
    own: i32,
    links: Mutex<HashMap<i32, Slot>>,
}

impl MarkerLinks {
    pub fn new(node: Arc<MetadataNode>, runtime: Handle, own: i32) -> MarkerLinks {
        MarkerLinks {
            node,
            runtime,
            own,
            links: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, node: i32) -> Slot {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(links.entry(node).or_default())
    }
}

impl RemoteMarkers for MarkerLinks {
    fn write(&self, node: i32, markers: Vec<RemoteMarker>) -> Result<(), CoreError> {
        let slot = self.slot(node);
        let address = u64::try_from(node)
            .ok()
            .and_then(|id| self.node.address(id));
        let own = self.own;
        let sending = async move {
            let sent =
                tokio::time::timeout(MARKERS_TIMEOUT, send(&slot, address, own, node, &markers))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer from node {node} in time")));
            if sent.is_err() {
                // The next call dials again.
                *slot.lock().await = None;
            }
            sent
        };
        let received = crate::run_blocking(
            &self.runtime,
            MARKERS_TIMEOUT + Duration::from_secs(1),
            sending,
        );
        match received {
            Some(Ok(())) => Ok(()),
            Some(Err(reason)) => Err(CoreError::Internal {
                reason: format!("transaction markers on node {node}: {reason}"),
            }),
            None => Err(CoreError::Internal {
                reason: format!("transaction markers on node {node}: no answer in time"),
            }),
        }
    }
}

/// One WriteTxnMarkers request on `node`'s link; the first partition's
/// error, if any.
async fn send(
    slot: &tokio::sync::Mutex<Option<Link>>,
    address: Option<String>,
    own: i32,
    node: i32,
    markers: &[RemoteMarker],
) -> Result<(), String> {
    let mut link = slot.lock().await;
    if link.is_none() {
        let address = address.ok_or_else(|| format!("no address known for node {node}"))?;
        let stream = connect(&address).await.map_err(|e| e.to_string())?;
        *link = Some(Link::new(stream, own));
    }
    let Some(connection) = link.as_mut() else {
        return Err("no link".to_owned());
    };
    let response = connection.call(request(markers), MARKERS_VERSION).await?;
    // Every partition asked for must be answered, and with no error.
    let answered: usize = response
        .markers
        .iter()
        .flat_map(|result| &result.topics)
        .map(|topic| topic.partitions.len())
        .sum();
    if answered != markers.len() {
        return Err(format!(
            "{answered} partitions answered of the {} asked for",
            markers.len()
        ));
    }
    for result in &response.markers {
        for topic in &result.topics {
            for partition in &topic.partitions {
                if partition.error_code != 0 {
                    let error = ResponseError::try_from_code(partition.error_code)
                        .map_or_else(|| partition.error_code.to_string(), |e| format!("{e:?}"));
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
fn request(markers: &[RemoteMarker]) -> WriteTxnMarkersRequest {
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
