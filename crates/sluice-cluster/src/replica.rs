//! Followers fetch from their leaders the way Kafka's replica fetchers
//! do: one task per leader node, holding one connection to the leader
//! (over its inter-node listener, which hands the connection to its Kafka
//! request handling), sending Fetch requests (v12) with this node's replica id
//! for every partition it follows there, each from its own log end. The
//! leader learns from that offset how far the follower is; the answer
//! carries records written on the leader (not only those below the high
//! watermark) and the leader's high watermark. Records are appended
//! unchanged (offsets and leader epochs kept) and synced as the log's
//! durability asks before the next fetch reports them.
//!
//! Before a partition's first fetch from a leader, and after the leader
//! answers OFFSET_OUT_OF_RANGE, the follower asks the leader where its own
//! newest epoch ends (OffsetForLeaderEpoch, KIP-101/279) and cuts its log
//! there, so a follower never keeps records the leader does not have.
//!
//! Every request names the leader epoch the follower follows in
//! (KIP-320's `current_leader_epoch`), and every answer is applied under
//! the partition's leadership lock only while the partition still follows
//! that leader in that epoch ([`Partition::following`]): an answer from a
//! former leader that lands after a promotion or a newer leader's choice
//! is dropped, as Kafka removes a partition from its fetcher before the
//! leadership changes.
//!
//! Requests and responses are `kafka-protocol`'s; only the length-prefixed
//! framing is written here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, OffsetForLeaderEpochRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use sluice_core::{Broker, CoreError, Following, Partition};

use crate::MetadataNode;
use crate::network::PREFACE_KAFKA;
use sluice_tls::LinkStream;
use sluice_types::{LeaderEpoch, Offset};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const FETCH_VERSION: i16 = 12;
const EPOCH_VERSION: i16 = 4;
/// How long a fetch waits on the leader for new records.
const FETCH_WAIT_MS: i32 = 500;
const FETCH_MAX_BYTES: i32 = 16 << 20;
const PARTITION_MAX_BYTES: i32 = 4 << 20;
/// Largest response accepted.
const MAX_RESPONSE: usize = 64 << 20;
/// How often the set of followed partitions is looked at again.
const RESCAN: Duration = Duration::from_millis(200);
/// Pause after a failed exchange with a leader.
const BACKOFF: Duration = Duration::from_millis(300);
/// Longest a connect or a request may take before the link is dropped
/// and dialled again (Kafka's `replica.socket.timeout.ms` is 30 s; a fetch
/// here waits at most `FETCH_WAIT_MS` on the leader).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the replica fetchers of this node until `stopping`: one task per
/// leader node it follows partitions of, started and ended as the
/// metadata changes.
pub async fn run_fetchers(
    broker: Arc<Broker>,
    node: Arc<MetadataNode>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut running: BTreeMap<i32, tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        running.retain(|_, task| !task.is_finished());
        let leaders: BTreeSet<i32> = broker
            .topics()
            .followed()
            .into_iter()
            .map(|(leader, _)| leader)
            .collect();
        for leader in leaders {
            running.entry(leader).or_insert_with(|| {
                tokio::spawn(fetch_from(
                    Arc::clone(&broker),
                    Arc::clone(&node),
                    leader,
                    stopping.clone(),
                ))
            });
        }
        tokio::select! {
            () = tokio::time::sleep(RESCAN) => {}
            _ = stopping.wait_for(|stop| *stop) => break,
        }
    }
    for (_, task) in running {
        let _ = task.await;
    }
}

/// One leader's fetcher: runs while this node follows partitions there.
async fn fetch_from(
    broker: Arc<Broker>,
    node: Arc<MetadataNode>,
    leader: i32,
    mut stopping: watch::Receiver<bool>,
) {
    let mut link: Option<Link> = None;
    // Partitions whose log was checked against the leader's history on
    // this link; a new link checks again.
    let mut checked: BTreeSet<Key> = BTreeSet::new();
    loop {
        if *stopping.borrow() {
            return;
        }
        // Each with the leader and epoch it follows in now: what the
        // leader answers is applied only while they still hold.
        let partitions: Vec<(Arc<Partition>, Following)> = broker
            .topics()
            .followed()
            .into_iter()
            .filter_map(|(_, p)| {
                let from = p.following().filter(|f| f.leader == leader)?;
                Some((p, from))
            })
            .collect();
        if partitions.is_empty() {
            return;
        }
        if link.is_none() {
            let Some(addr) = u64::try_from(leader).ok().and_then(|id| node.address(id)) else {
                pause(&mut stopping).await;
                continue;
            };
            match connect(&addr).await {
                Ok(stream) => {
                    link = Some(Link::new(stream, broker.node_id()));
                    checked.clear();
                }
                Err(error) => {
                    tracing::debug!(leader, %addr, %error, "cannot reach the leader");
                    pause(&mut stopping).await;
                    continue;
                }
            }
        }
        let Some(connection) = link.as_mut() else {
            continue;
        };
        let round = tokio::select! {
            round = exchange(connection, &partitions, &mut checked) => round,
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        if let Err(reason) = round {
            tracing::debug!(leader, %reason, "replica fetch failed; reconnecting");
            link = None;
            pause(&mut stopping).await;
        }
    }
}

/// A connection to a leader's inter-node listener, announced as one
/// carrying Kafka requests.
pub(crate) async fn connect(addr: &str) -> std::io::Result<LinkStream> {
    let connecting = async {
        let mut stream = crate::link::dial(addr).await?;
        stream.write_all(&[PREFACE_KAFKA]).await?;
        Ok(stream)
    };
    tokio::time::timeout(CALL_TIMEOUT, connecting)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

async fn pause(stopping: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(BACKOFF) => {}
        _ = stopping.wait_for(|stop| *stop) => {}
    }
}

/// A partition followed from one leader in one epoch: checked against the
/// leader's history once per epoch and link.
type Key = (String, i32, Following);

fn key((partition, from): &(Arc<Partition>, Following)) -> Key {
    (partition.topic().to_owned(), partition.id().get(), *from)
}

/// A partition this fetcher follows, with the leader and epoch it was
/// listed under.
type Followed = (Arc<Partition>, Following);

/// Logs a follower's refusal to apply a leader's answer: at debug when
/// the partition's leadership moved on meanwhile (expected), as a warning
/// otherwise.
fn refused(partition: &Partition, what: &str, error: &CoreError) {
    if matches!(error, CoreError::FencedFollower { .. }) {
        tracing::debug!(topic = partition.topic(), partition = %partition.id(), %error, "{what}: the leadership moved on");
    } else {
        tracing::warn!(topic = partition.topic(), partition = %partition.id(), %error, "{what}");
    }
}

/// One round with the leader: the truncation check for partitions not
/// checked yet, then one fetch for all of them.
async fn exchange(
    link: &mut Link,
    partitions: &[Followed],
    checked: &mut BTreeSet<Key>,
) -> Result<(), String> {
    let unchecked: Vec<&Followed> = partitions
        .iter()
        .filter(|p| !checked.contains(&key(p)))
        .collect();
    if !unchecked.is_empty() {
        checked.extend(truncate_to_leader(link, &unchecked).await?);
    }
    // Only partitions checked against this leader fetch from it.
    let partitions: Vec<&Followed> = partitions
        .iter()
        .filter(|p| checked.contains(&key(p)))
        .collect();
    if partitions.is_empty() {
        tokio::time::sleep(BACKOFF).await;
        return Ok(());
    }
    let mut by_topic: BTreeMap<&str, Vec<&Followed>> = BTreeMap::new();
    for followed in partitions.iter().copied() {
        by_topic
            .entry(followed.0.topic())
            .or_default()
            .push(followed);
    }
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(link.node))
        .with_max_wait_ms(FETCH_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_session_epoch(-1)
        .with_topics(
            by_topic
                .iter()
                .map(|(topic, partitions)| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string((*topic).to_owned())))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|(p, from)| {
                                    // KIP-320: a leader in another epoch
                                    // refuses (FENCED_LEADER_EPOCH or
                                    // UNKNOWN_LEADER_EPOCH).
                                    FetchPartition::default()
                                        .with_partition(p.id().get())
                                        .with_fetch_offset(p.log_end().get())
                                        .with_current_leader_epoch(from.epoch.get())
                                        .with_last_fetched_epoch(-1)
                                        .with_log_start_offset(-1)
                                        .with_partition_max_bytes(PARTITION_MAX_BYTES)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let response = link.call(request, FETCH_VERSION).await?;
    let mut appends = Vec::new();
    let mut restarts = Vec::new();
    let mut refusals = 0;
    for topic in response.responses {
        for data in topic.partitions {
            let Some((partition, from)) = by_topic.get(topic.topic.as_str()).and_then(|ps| {
                ps.iter()
                    .find(|(p, _)| p.id().get() == data.partition_index)
                    .map(|(p, from)| (Arc::clone(p), *from))
            }) else {
                continue;
            };
            match ResponseError::try_from_code(data.error_code) {
                None => appends.push((
                    partition,
                    from,
                    data.records.unwrap_or_default(),
                    Offset::from(data.high_watermark),
                    Offset::from(data.log_start_offset),
                )),
                // The leader's log starts past this node's end (a new
                // replica, or one back after retention ran): start there.
                Some(ResponseError::OffsetOutOfRange)
                    if data.log_start_offset > partition.log_end().get() =>
                {
                    restarts.push((partition, from, Offset::from(data.log_start_offset)));
                }
                Some(ResponseError::OffsetOutOfRange) => {
                    checked.remove(&key(&(partition, from)));
                }
                Some(error) => {
                    refusals += 1;
                    tracing::debug!(topic = %topic.topic.as_str(), partition = data.partition_index, ?error, epoch = from.epoch.get(), "the leader refused a replica fetch");
                }
            }
        }
    }
    if appends.is_empty() && restarts.is_empty() {
        if refusals > 0 {
            // Refused at once (another epoch, not the leader yet): ask
            // again after the metadata had time to move.
            tokio::time::sleep(BACKOFF).await;
        }
        return Ok(());
    }
    // Appending syncs (durability `always`): off the async workers.
    tokio::task::spawn_blocking(move || {
        for (partition, from, start) in restarts {
            if let Err(error) = partition.restart_at(from, start) {
                refused(
                    &partition,
                    "cannot restart the log at the leader's start",
                    &error,
                );
            }
        }
        for (partition, from, records, high_watermark, log_start) in appends {
            let mut records = BytesMut::from(&records[..]);
            if let Err(error) =
                partition.append_from_leader(from, &mut records, high_watermark, log_start)
            {
                refused(&partition, "cannot append what the leader sent", &error);
            }
        }
    })
    .await
    .map_err(|e| format!("append task failed: {e}"))
}

/// Asks the leader where each partition's newest local epoch ends and cuts
/// the local log there when it goes further (KIP-101/279). Returns the
/// partitions the leader answered for (an empty log needs no answer).
async fn truncate_to_leader(link: &mut Link, partitions: &[&Followed]) -> Result<Vec<Key>, String> {
    let mut done: Vec<Key> = partitions
        .iter()
        .filter(|(p, _)| p.latest_epoch().is_none())
        .map(|followed| key(followed))
        .collect();
    let with_epochs: Vec<(&Followed, i32)> = partitions
        .iter()
        .filter_map(|followed| followed.0.latest_epoch().map(|e| (*followed, e.get())))
        .collect();
    if with_epochs.is_empty() {
        return Ok(done);
    }
    let mut by_topic: BTreeMap<&str, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
    for ((partition, from), epoch) in &with_epochs {
        by_topic.entry(partition.topic()).or_default().push(
            OffsetForLeaderPartition::default()
                .with_partition(partition.id().get())
                .with_current_leader_epoch(from.epoch.get())
                .with_leader_epoch(*epoch),
        );
    }
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(link.node))
        .with_topics(
            by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetForLeaderTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let response = link.call(request, EPOCH_VERSION).await?;
    let mut cuts = Vec::new();
    for topic in response.topics {
        for result in topic.partitions {
            if result.error_code != 0 {
                continue;
            }
            let Some((followed, _)) = with_epochs.iter().find(|((p, _), _)| {
                p.topic() == topic.topic.as_str() && p.id().get() == result.partition
            }) else {
                continue;
            };
            done.push(key(followed));
            // No epoch at or below ours on the leader: nothing of ours is
            // its history.
            let (partition, from) = followed;
            let end = Offset::from(result.end_offset.max(0));
            // KIP-279: the answer names the epoch it ends (the leader's
            // largest at or below ours); where that epoch ends in this log
            // may come first (a later epoch of ours starts there, with
            // records the leader wrote again in its own): cut there.
            let end = match partition.end_offset_for_epoch(LeaderEpoch::from(result.leader_epoch)) {
                Some((_, own)) if result.leader_epoch >= 0 => end.min(own),
                _ => end,
            };
            if end < partition.log_end() {
                cuts.push((Arc::clone(partition), *from, end));
            }
        }
    }
    if cuts.is_empty() {
        return Ok(done);
    }
    tokio::task::spawn_blocking(move || {
        for (partition, from, end) in cuts {
            match partition.truncate_to(from, end) {
                Ok(_) => tracing::info!(topic = partition.topic(), partition = %partition.id(), to = %end, leader = from.leader, epoch = from.epoch.get(), "truncated to the leader's history"),
                Err(error) => refused(&partition, "cannot truncate", &error),
            }
        }
    })
    .await
    .map_err(|e| format!("truncate task failed: {e}"))?;
    Ok(done)
}

/// One connection carrying Kafka requests to another node (a leader).
#[derive(Debug)]
pub(crate) struct Link {
    stream: LinkStream,
    node: i32,
    correlation: i32,
}

impl Link {
    pub(crate) fn new(stream: LinkStream, node: i32) -> Link {
        Link {
            stream,
            node,
            correlation: 0,
        }
    }

    /// Sends one request and reads its response, within [`CALL_TIMEOUT`].
    pub(crate) async fn call<R>(&mut self, request: R, version: i16) -> Result<R::Response, String>
    where
        R: Request + Encodable + HeaderVersion,
    {
        tokio::time::timeout(CALL_TIMEOUT, self.exchange_one(request, version))
            .await
            .map_err(|_| format!("no answer within {} s", CALL_TIMEOUT.as_secs()))?
    }

    async fn exchange_one<R>(&mut self, request: R, version: i16) -> Result<R::Response, String>
    where
        R: Request + Encodable + HeaderVersion,
    {
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_string(format!(
                "sluice-replica-{}",
                self.node
            ))));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .map_err(|e| e.to_string())?;
        request
            .encode(&mut body, version)
            .map_err(|e| e.to_string())?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_u32(u32::try_from(body.len()).map_err(|e| e.to_string())?);
        frame.extend_from_slice(&body);
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| e.to_string())?;
        // TLS keeps what the socket did not take until flushed.
        self.stream.flush().await.map_err(|e| e.to_string())?;
        let len = self.stream.read_u32().await.map_err(|e| e.to_string())? as usize;
        if len > MAX_RESPONSE {
            return Err(format!("a {len}-byte response is over the limit"));
        }
        let mut buf = vec![0; len];
        self.stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
            .map_err(|e| e.to_string())?;
        if header.correlation_id != self.correlation {
            return Err(format!(
                "correlation id {} where {} was expected",
                header.correlation_id, self.correlation
            ));
        }
        let response = R::Response::decode(&mut buf, version).map_err(|e| e.to_string())?;
        if buf.has_remaining() {
            tracing::debug!(left = buf.remaining(), "bytes left after a response");
        }
        Ok(response)
    }
}

/// On the leaders this node has: every second, proposes the in-sync
/// replicas each partition should have (a follower that has not caught up
/// for `max_lag` leaves; one that caught up returns), as Kafka's leader
/// asks the controller with AlterPartition.
pub async fn run_in_sync_checks(
    broker: Arc<Broker>,
    max_lag: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let checking = Arc::clone(&broker);
        let done = tokio::task::spawn_blocking(move || {
            for (partition, change) in checking.topics().in_sync_changes(max_lag) {
                if let Err(error) = checking.topics().set_in_sync(&partition, change) {
                    tracing::warn!(topic = partition.topic(), partition = %partition.id(), %error, "cannot change the in-sync replicas");
                }
            }
        })
        .await;
        if done.is_err() {
            return;
        }
    }
}
