//! The transaction coordinator (Kafka's `TransactionCoordinator`):
//! transactional ids, their producer ids and epochs, what each open
//! transaction wrote to, and its end, markers included.
//!
//! Every change of a transactional id is one record, durable before it is
//! answered; the latest record per id is its state.
//! - On a cluster of one the records go to the internal log
//!   `__transaction_state-0`, read back on open.
//! - On a cluster they go to the replicated topic `__transaction_state`
//!   (`kafka.transaction_state_partitions` partitions, the offsets topic's
//!   replicas), acknowledged by every in-sync replica: as in Kafka an id
//!   belongs to partition `abs(java_hash(id)) % partitions`, its
//!   coordinator is that partition's leader, which loads the partition's
//!   ids before it answers for them (in each new leader epoch, its
//!   coordinator epoch) and forgets them when it stops leading; markers
//!   reach partitions other nodes lead through [`TxnPeers`]
//!   (docs/transactions.md, "On a cluster").
//!
//! A transaction decided (`PrepareCommit`, `PrepareAbort`) but not
//! completed when the broker stopped gets its markers on the next tick, as
//! a new Kafka coordinator completes what it loads. An id with no transaction open and no change
//! for `transactional_id_expiration_ms` (Kafka's
//! `transactional.id.expiration.ms`, 7 days) is forgotten on a tick: a
//! tombstone (the key with no value) in the log, so that a restart and
//! compaction forget it too; the next InitProducerId for it gets a new
//! producer id.
//!
//! Record key `[version:2=0][id]`; value `[version:2=0][producer id:8]
//! [epoch:2][timeout ms:4][state:1][started ms:8][updated ms:8]
//! [partitions:4]([topic][partition:4])*[groups:4]([group])*
//! [offsets:4]([group][topic][partition:4][offset:8][leader epoch:4]
//! [metadata length:4 (-1 = null)][metadata])*`, strings as `[len:2][utf-8]`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_log::{Log, LogManager};
use sluice_types::{Clock, PartitionId, SystemClock};

use super::{Marker, Outcome, RemoteBatches, RemoteMarker, TxnPeers};
use crate::coordinated::{CoordinatedTopic, Lead, Unwritten};
use crate::fields::{get_str, put_str};
use crate::topics::Topics;
use crate::{Broker, CommittedOffset, CoreError};

/// The timeout of the broker's own transactions ([`TxnCoordinator::write_atomically`]):
/// one left open by a crash is aborted after it.
const INTERNAL_TIMEOUT_MS: i32 = 60_000;
/// An idle id of the broker's own is forgotten after this (on a cluster
/// no connection's close forgets it; each commit is a new epoch, so
/// nothing is fenced by keeping it, but one used again within it keeps its
/// producer id).
const BROKER_ID_EXPIRATION_MS: i64 = 3_600_000;
/// How long the broker's own transaction waits for its id's coordinator
/// while the id is busy (its last transaction completing) or moving.
const OWN_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The internal log of the transactions' states on a cluster of one.
pub const TXN_STATE_LOG: &str = "__transaction_state-0";
/// The replicated topic of the transactions' states on a cluster.
pub const TXN_STATE_TOPIC: &str = "__transaction_state";
/// The coordinator epoch markers carry on a cluster of one (Kafka's is
/// the leader epoch of the id's `__transaction_state` partition).
const COORDINATOR_EPOCH: i32 = 0;

/// Where a transactional id stands (Kafka's `TransactionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// The outcome a Prepare state decided (`None` for the others).
    fn decided(self) -> Option<Outcome> {
        match self {
            TxnState::PrepareCommit => Some(Outcome::Commit),
            TxnState::PrepareAbort => Some(Outcome::Abort),
            _ => None,
        }
    }

    /// Kafka's name of the state (DescribeTransactions, ListTransactions).
    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    fn code(self) -> u8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    fn from_code(code: u8) -> Option<TxnState> {
        Some(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }
}

/// Offsets a transaction commits for one group: made visible when it
/// commits, dropped when it aborts.
type PendingOffsets = BTreeMap<(String, i32), CommittedOffset>;

/// One transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// The partitions the open transaction wrote to.
    pub partitions: BTreeSet<(String, i32)>,
    /// The groups whose offsets it commits (AddOffsetsToTxn).
    pub groups: BTreeSet<String>,
    offsets: BTreeMap<String, PendingOffsets>,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// The epoch before the last bump (-1: none), which a retried
    /// InitProducerId may still name (Kafka's `lastProducerEpoch`); kept
    /// in memory only.
    pub last_epoch: i16,
}

/// Why the coordinator refused.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error(
        "producer {producer_id} at epoch {epoch} is fenced: transactional id {id:?} is at epoch {current}"
    )]
    Fenced {
        id: String,
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error("producer id {found} does not hold transactional id {id:?}")]
    UnknownProducer { id: String, found: i64 },
    #[error("transactional id {id:?} is {state}: cannot {what}")]
    InvalidState {
        id: String,
        state: &'static str,
        what: &'static str,
    },
    #[error("transactional id {id:?} is ending its transaction; try again")]
    Concurrent { id: String },
    #[error("transaction timeout {timeout_ms} ms is not within 1..={max_ms} ms")]
    InvalidTimeout { timeout_ms: i32, max_ms: i32 },
    /// Another node coordinates the id (the leader of its
    /// `__transaction_state` partition), or none does yet.
    #[error(
        "this node does not coordinate transactional id {id:?} (its coordinator is {coordinator:?})"
    )]
    NotCoordinator {
        id: String,
        coordinator: Option<i32>,
    },
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Where the broker's own transaction is coordinated
/// ([`TxnCoordinator::write_atomically`]): here, or on another node
/// through its peers.
#[derive(Clone, Copy)]
enum Via<'a> {
    Here,
    Node(&'a dyn TxnPeers, i32),
}

impl Via<'_> {
    fn add(
        self,
        coordinator: &TxnCoordinator,
        id: &str,
        producer: (i64, i16),
        partitions: &[(String, i32)],
    ) -> Result<(), TxnError> {
        match self {
            Via::Here => coordinator.add(id, producer.0, producer.1, partitions, None),
            Via::Node(peers, node) => peers.add_partitions(node, id, producer, partitions),
        }
    }

    fn end(
        self,
        coordinator: &TxnCoordinator,
        broker: &Broker,
        id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> Result<(), TxnError> {
        match self {
            Via::Here => coordinator.end(broker, id, producer.0, producer.1, commit),
            Via::Node(peers, node) => peers.end(node, id, producer, commit),
        }
    }
}

/// Where the states are written.
#[derive(Debug)]
enum Store {
    /// A cluster of one: the internal log, every id in memory.
    Local(Arc<Log>),
    /// A cluster: `__transaction_state`, the ids of the partitions this
    /// node leads in memory.
    Replicated(CoordinatedTopic),
}

/// The transaction coordinator.
#[derive(Debug)]
pub struct TxnCoordinator {
    store: Store,
    max_timeout_ms: i32,
    /// An id idle (no transaction open) this long is forgotten.
    expiration_ms: i64,
    /// Held through a whole operation, syncs included; EndTxn and the tick
    /// write markers without it (see `completing`).
    txns: Mutex<HashMap<String, TxnMeta>>,
    /// Ids whose markers are being written with `txns` released (each is
    /// in a Prepare state, which every other operation on it answers with
    /// CONCURRENT_TRANSACTIONS): the tick leaves them alone. Locked with
    /// `txns` held.
    completing: Mutex<HashSet<String>>,
    /// On a cluster: how markers reach partitions other nodes lead.
    remote: OnceLock<Arc<dyn TxnPeers>>,
    /// What Produce checks (its producer and the partitions of its open
    /// transaction), updated with `txns` and locked only briefly: a
    /// transactional produce never waits behind another transaction's
    /// markers.
    writable: Mutex<HashMap<String, Writable>>,
}

/// An id on the coordinator's `completing` list while its markers are
/// written without the lock: taken off by [`TxnCoordinator::finish`], with
/// the lock held, or when dropped otherwise (a panic on the way), so the
/// tick completes it later.
struct Completing<'a> {
    coordinator: &'a TxnCoordinator,
    id: String,
    listed: bool,
}

impl Completing<'_> {
    /// Takes the id off the list (called with `txns` held).
    fn done(mut self) {
        self.coordinator.completing().remove(&self.id);
        self.listed = false;
    }
}

impl Drop for Completing<'_> {
    fn drop(&mut self) {
        if self.listed {
            self.coordinator.completing().remove(&self.id);
        }
    }
}

/// An id's producer and epoch, and the partitions its open transaction
/// holds (`None` when none is open).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Writable {
    producer_id: i64,
    epoch: i16,
    partitions: Option<BTreeSet<(String, i32)>>,
}

impl Writable {
    fn of(meta: &TxnMeta) -> Writable {
        Writable {
            producer_id: meta.producer_id,
            epoch: meta.epoch,
            partitions: (meta.state == TxnState::Ongoing).then(|| meta.partitions.clone()),
        }
    }
}

impl TxnCoordinator {
    /// Opens the coordinator of a cluster of one on its internal log,
    /// reading back every transactional id.
    ///
    /// # Errors
    /// The log's open and read errors.
    pub(crate) fn open(
        logs: &LogManager,
        max_timeout_ms: i32,
        expiration_ms: i64,
    ) -> Result<TxnCoordinator, CoreError> {
        let config = sluice_log::LogConfig {
            cleanup_compact: true,
            cleanup_delete: false,
            ..logs.defaults().clone()
        };
        let log = logs.get_or_create(TXN_STATE_LOG, Some(config.clone()))?;
        log.set_config(config);
        let txns = read_states(&log, |_| true)?;
        let writable = txns
            .iter()
            .map(|(id, meta)| (id.clone(), Writable::of(meta)))
            .collect();
        Ok(TxnCoordinator {
            store: Store::Local(log),
            max_timeout_ms,
            expiration_ms,
            txns: Mutex::new(txns),
            completing: Mutex::default(),
            remote: OnceLock::new(),
            writable: Mutex::new(writable),
        })
    }

    /// The coordinator of a node of a cluster: the topic
    /// `__transaction_state` with `partitions` partitions of `replication`
    /// replicas, created on first need.
    pub(crate) fn replicated(
        topics: Arc<Topics>,
        (partitions, replication): (u32, u16),
        segment_bytes: u64,
        max_timeout_ms: i32,
        expiration_ms: i64,
    ) -> TxnCoordinator {
        TxnCoordinator {
            store: Store::Replicated(CoordinatedTopic::new(
                topics,
                TXN_STATE_TOPIC,
                (partitions, replication),
                segment_bytes,
            )),
            max_timeout_ms,
            expiration_ms,
            txns: Mutex::default(),
            completing: Mutex::default(),
            remote: OnceLock::new(),
            writable: Mutex::default(),
        }
    }

    /// The way to other nodes, on a cluster.
    pub fn peers(&self) -> Option<&Arc<dyn TxnPeers>> {
        self.remote.get()
    }

    /// Gives the coordinator of a cluster its way to other nodes (once;
    /// later calls change nothing).
    pub fn attach_peers(&self, remote: Arc<dyn TxnPeers>) {
        let _ = self.remote.set(remote);
    }

    fn completing(&self) -> MutexGuard<'_, HashSet<String>> {
        self.completing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `id` on the `completing` list (called with `txns` held).
    fn start_completing(&self, id: &str) -> Completing<'_> {
        self.completing().insert(id.to_owned());
        Completing {
            coordinator: self,
            id: id.to_owned(),
            listed: true,
        }
    }

    /// Whether the broker's own transactions
    /// ([`TxnCoordinator::write_atomically`]) are served: on a cluster of
    /// one, and on a cluster once the inter-node layer gave its
    /// [`TxnPeers`].
    pub fn writes_atomically(&self) -> bool {
        matches!(self.store, Store::Local(_)) || self.remote.get().is_some()
    }

    /// Which node coordinates `id`: this one on a cluster of one; on a
    /// cluster, the leader of its `__transaction_state` partition (loaded
    /// by the first request for it).
    pub fn coordinator(&self, id: &str) -> crate::Coordinator {
        match &self.store {
            Store::Local(_) => crate::Coordinator::Here,
            Store::Replicated(topic) => match topic.lead(id) {
                Lead::Here => crate::Coordinator::Here,
                Lead::Node(node) => crate::Coordinator::Node(node),
                Lead::Unavailable => crate::Coordinator::Unavailable,
            },
        }
    }

    /// The coordinator epoch of `id` when this node coordinates it (on a
    /// cluster the leader epoch of its partition, which it loads first
    /// in a new epoch: called with `txns` held).
    ///
    /// # Errors
    /// [`TxnError::NotCoordinator`] when another node coordinates it or
    /// none does yet; the log's errors while loading.
    fn led(&self, txns: &mut HashMap<String, TxnMeta>, id: &str) -> Result<i32, TxnError> {
        let Store::Replicated(topic) = &self.store else {
            return Ok(COORDINATOR_EPOCH);
        };
        let index = topic.index_of(id);
        match self.refresh(topic, txns, index)? {
            Some(epoch) => Ok(epoch),
            None => Err(TxnError::NotCoordinator {
                id: id.to_owned(),
                coordinator: topic.leader_of(index),
            }),
        }
    }

    /// Brings the ids of partition `index` in memory in line with its
    /// leadership (see [`CoordinatedTopic::refresh`]); the leader epoch
    /// when this node leads it.
    fn refresh(
        &self,
        topic: &CoordinatedTopic,
        txns: &mut HashMap<String, TxnMeta>,
        index: u32,
    ) -> Result<Option<i32>, CoreError> {
        let of_index = topic.holds_key(index);
        let mut forgotten = Vec::new();
        let mut loaded = HashMap::new();
        let led = topic.refresh(
            index,
            |log| {
                loaded = read_states(log, &of_index)?;
                Ok(())
            },
            || {
                forgotten.extend(txns.keys().filter(|id| of_index(id)).cloned());
            },
        )?;
        let mut writable = self.writable.lock().unwrap_or_else(|e| e.into_inner());
        for id in &forgotten {
            txns.remove(id);
            writable.remove(id);
        }
        if led.is_some() && !loaded.is_empty() {
            tracing::info!(
                partition = index,
                ids = loaded.len(),
                "loaded the transactional ids this node now coordinates"
            );
        }
        for (id, meta) in loaded {
            writable.insert(id.clone(), Writable::of(&meta));
            txns.insert(id, meta);
        }
        Ok(led.map(|(_, epoch)| epoch))
    }

    /// Refreshes every partition (see [`TxnCoordinator::refresh`]).
    fn refresh_all(&self, txns: &mut HashMap<String, TxnMeta>) {
        if let Store::Replicated(topic) = &self.store {
            for index in 0..topic.partition_count() {
                if let Err(error) = self.refresh(topic, txns, index) {
                    tracing::warn!(partition = index, %error, "cannot load transactional ids");
                }
            }
        }
    }

    /// The coordinator epoch of `id`, loaded (called with `txns` held,
    /// after [`TxnCoordinator::led`]).
    fn coordinator_epoch(&self, id: &str) -> Result<i32, TxnError> {
        match &self.store {
            Store::Local(_) => Ok(COORDINATOR_EPOCH),
            Store::Replicated(topic) => {
                let index = topic.index_of(id);
                topic
                    .loaded_epoch(index)
                    .ok_or_else(|| TxnError::NotCoordinator {
                        id: id.to_owned(),
                        coordinator: topic.leader_of(index),
                    })
            }
        }
    }

    /// Whether clients may ask for a coordinator of transactional ids and
    /// the topic `__transaction_state` does not exist yet (to be created
    /// with [`TxnCoordinator::prepare`], off the request path).
    pub fn needs_topic(&self) -> bool {
        match &self.store {
            Store::Replicated(topic) => topic.needs_topic(),
            Store::Local(_) => false,
        }
    }

    /// Creates `__transaction_state` on a cluster if it does not exist
    /// yet. Blocking.
    ///
    /// # Errors
    /// The creation's failure ([`CoreError::Quorum`], say).
    pub fn prepare(&self) -> Result<(), CoreError> {
        match &self.store {
            Store::Replicated(topic) => topic.prepare(),
            Store::Local(_) => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TxnMeta>> {
        self.txns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `meta` what Produce checks for `id` (called with `txns` held,
    /// after every change).
    fn publish(&self, id: &str, meta: &TxnMeta) {
        let writable = Writable::of(meta);
        let mut all = self.writable.lock().unwrap_or_else(|e| e.into_inner());
        if all.get(id) != Some(&writable) {
            all.insert(id.to_owned(), writable);
        }
    }

    /// Every transactional id with its state, sorted by id.
    pub fn list(&self) -> Vec<(String, TxnMeta)> {
        let mut all: Vec<(String, TxnMeta)> = self
            .lock()
            .iter()
            .map(|(id, meta)| (id.clone(), meta.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// One transactional id's state (on a cluster, its partition loaded
    /// first if this node just came to lead it).
    pub fn describe(&self, id: &str) -> Option<TxnMeta> {
        let mut txns = self.lock();
        if let Err(error) = self.led(&mut txns, id) {
            tracing::debug!(transactional_id = %id, %error, "not describing a transactional id here");
            return None;
        }
        txns.get(id).cloned()
    }

    /// Writes `id`'s state, durable before it returns.
    fn store(&self, id: &str, meta: &TxnMeta) -> Result<(), TxnError> {
        self.write(id, meta, true)
    }

    fn write(&self, id: &str, meta: &TxnMeta, durable: bool) -> Result<(), TxnError> {
        self.write_value(id, Some(&encode_value(meta)), durable)
    }

    /// Writes `id`'s record: its state, or a tombstone (`None`).
    fn write_value(&self, id: &str, value: Option<&[u8]>, durable: bool) -> Result<(), TxnError> {
        let key = encode_key(id);
        self.write_records(id, &[(Some(&key[..]), value)], durable)
    }

    /// Writes records of ids of one partition (`id` is one of them) in one
    /// batch: to the local log (synced when `durable`), or on a cluster to
    /// the partition, acknowledged by its in-sync replicas.
    fn write_records(
        &self,
        id: &str,
        entries: &[crate::replay::Entry<'_>],
        durable: bool,
    ) -> Result<(), TxnError> {
        let mut batch = crate::replay::batch_of(entries, "transaction state")?;
        match &self.store {
            Store::Local(log) => {
                if durable {
                    log.append(&mut batch, crate::LOCAL_EPOCH)
                } else {
                    log.append_unsynced(&mut batch, crate::LOCAL_EPOCH)
                }
                .map_err(CoreError::from)?;
            }
            Store::Replicated(topic) => {
                let moved = |coordinator| TxnError::NotCoordinator {
                    id: id.to_owned(),
                    coordinator,
                };
                let index = topic.index_of(id);
                let partition = topic
                    .loaded_partition(index)
                    .ok_or_else(|| moved(topic.leader_of(index)))?;
                match topic.append(&partition, &mut batch) {
                    Ok(()) => {}
                    Err(Unwritten::Moved(coordinator)) => return Err(moved(coordinator)),
                    Err(Unwritten::Failed(error)) => return Err(error.into()),
                }
            }
        }
        Ok(())
    }

    /// InitProducerId with a transactional id: a new id gets a producer id
    /// at epoch 0; a known one gets its epoch bumped (fencing the producer
    /// that had it), its open transaction aborted first. `current` is the
    /// producer id and epoch a client gives to have them bumped (KIP-360).
    /// Blocking.
    ///
    /// # Errors
    /// [`TxnError::InvalidTimeout`], [`TxnError::Fenced`] for a `current`
    /// that is not the id's, the log's and the markers' errors.
    pub fn init_producer(
        &self,
        broker: &Broker,
        id: &str,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16), TxnError> {
        if timeout_ms < 1 || timeout_ms > self.max_timeout_ms {
            return Err(TxnError::InvalidTimeout {
                timeout_ms,
                max_ms: self.max_timeout_ms,
            });
        }
        let now = SystemClock.now_ms();
        let mut txns = self.lock();
        let coordinator_epoch = self.led(&mut txns, id)?;
        let mut meta = match txns.get(id) {
            None => TxnMeta {
                producer_id: broker.producer_ids().allocate()?,
                epoch: 0,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                offsets: BTreeMap::new(),
                started_ms: -1,
                updated_ms: now,
                last_epoch: -1,
            },
            Some(known) => {
                let mut meta = known.clone();
                let (previous_id, previous_epoch) = (meta.producer_id, meta.epoch);
                // Markers of the last transaction still being written:
                // the client retries (Kafka's answer).
                if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
                    return Err(TxnError::Concurrent { id: id.to_owned() });
                }
                if let Some((producer_id, epoch)) = current
                    && (producer_id != meta.producer_id
                        || (epoch != meta.epoch && epoch != meta.last_epoch))
                {
                    return Err(TxnError::Fenced {
                        id: id.to_owned(),
                        producer_id,
                        epoch,
                        current: meta.epoch,
                    });
                }
                // The epoch before the last bump: a retry of a call that
                // bumped (its answer lost) gets that answer again.
                if let Some((_, epoch)) = current
                    && epoch != meta.epoch
                    && meta.state != TxnState::Ongoing
                {
                    return Ok((meta.producer_id, meta.epoch));
                }
                // A producer id runs out of epochs: the id moves to a new
                // one, as Kafka does.
                let (producer_id, epoch) = if meta.epoch >= i16::MAX - 1 {
                    (broker.producer_ids().allocate()?, 0)
                } else {
                    (meta.producer_id, meta.epoch + 1)
                };
                if meta.state == TxnState::Ongoing {
                    // The open transaction is aborted first. The markers
                    // carry the bumped epoch: the producer that had the id
                    // is fenced on every partition it wrote to. (A rotated
                    // id's old producer ends it under its last epoch.)
                    meta.state = TxnState::PrepareAbort;
                    if meta.producer_id == producer_id {
                        meta.epoch = epoch;
                        meta.last_epoch = previous_epoch;
                    }
                    self.store(id, &meta)?;
                    self.publish(id, &meta);
                    // Held in memory before the markers are written: if
                    // writing them fails, the id is prepared (as the log
                    // says), and the tick completes it. They are written
                    // without the lock, as EndTxn's.
                    txns.insert(id.to_owned(), meta.clone());
                    let completing = self.start_completing(id);
                    drop(txns);
                    let written =
                        self.write_markers(broker, &meta, coordinator_epoch, &mut BTreeSet::new());
                    self.finish(broker, completing, meta, coordinator_epoch, written)
                        .map_err(|_| TxnError::Concurrent { id: id.to_owned() })?;
                    // Aborted: asked again, the id gets its next epoch (a
                    // retry naming the epoch it had gets the one just
                    // bumped to).
                    return self.init_producer(broker, id, timeout_ms, current);
                }
                meta.last_epoch = if previous_id == producer_id {
                    previous_epoch
                } else {
                    -1
                };
                meta.producer_id = producer_id;
                meta.epoch = epoch;
                meta.timeout_ms = timeout_ms;
                meta.state = TxnState::Empty;
                meta.partitions.clear();
                meta.groups.clear();
                meta.offsets.clear();
                meta.started_ms = -1;
                meta.updated_ms = now;
                meta
            }
        };
        meta.updated_ms = now;
        self.store(id, &meta)?;
        let answer = (meta.producer_id, meta.epoch);
        self.publish(id, &meta);
        txns.insert(id.to_owned(), meta);
        Ok(answer)
    }

    /// Writes `writes` as one transaction of transactional id `id` (the
    /// broker's own producer: AMQP publishes of a `tx.commit` into
    /// streams): its epoch bumped (the last one's leftovers aborted), the
    /// batches written as its transactional batches (acknowledged by their
    /// partitions' in-sync replicas), then committed. On a cluster the
    /// broker is a Kafka producer of the id's coordinator and of the
    /// partitions' leaders where those are other nodes ([`TxnPeers`]). A
    /// failure aborts it; a crash before the commit leaves it to time out
    /// (`INTERNAL_TIMEOUT_MS`) and be aborted. Blocking.
    ///
    /// # Errors
    /// As [`TxnCoordinator::init_producer`], [`TxnCoordinator::add`] and
    /// [`TxnCoordinator::end`] or their [`TxnPeers`] calls, and the
    /// appends' errors.
    pub fn write_atomically(
        &self,
        broker: &Broker,
        id: &str,
        writes: super::TxnWrites,
    ) -> Result<(), TxnError> {
        if writes.is_empty() {
            return Ok(());
        }
        let (via, producer) = self.start_own(broker, id)?;
        let partitions: Vec<(String, i32)> = writes
            .entries
            .iter()
            .map(|(topic, partition, _)| (topic.name().to_owned(), partition.get()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut ending = false;
        let written = (|| {
            via.add(self, id, producer, &partitions)?;
            self.append_own(broker, id, producer, writes)?;
            ending = true;
            via.end(self, broker, id, producer, true)
        })();
        let Err(failed) = &written else {
            return written;
        };
        // An abort settles it wherever the id is coordinated: the
        // coordinator takes one only while the commit is not decided.
        match via.end(self, broker, id, producer, false) {
            Err(TxnError::InvalidState { .. }) if ending => {
                // Decided and durable (as Kafka answers EndTxn): the
                // coordinator completes its markers.
                tracing::warn!(transactional_id = %id, error = %failed, "a commit failed after its decision; the coordinator completes it");
                Ok(())
            }
            // Aborted now or already; or nothing was open to abort.
            Ok(()) | Err(TxnError::Concurrent { .. } | TxnError::InvalidState { .. }) => written,
            Err(error) => {
                tracing::warn!(transactional_id = %id, %error, "cannot abort a failed transaction; it times out if undecided");
                written
            }
        }
    }

    /// InitProducerId of the broker's own transactional id `id`, on the
    /// node that coordinates it, asked again for up to
    /// `OWN_RETRY` while it is busy or moving: where it went and the
    /// producer id and epoch.
    fn start_own(&self, broker: &Broker, id: &str) -> Result<(Via<'_>, (i64, i16)), TxnError> {
        let timeout_ms = INTERNAL_TIMEOUT_MS.min(self.max_timeout_ms);
        let deadline = std::time::Instant::now() + OWN_RETRY;
        loop {
            let via = match (self.coordinator(id), self.remote.get()) {
                (crate::Coordinator::Here, _) => Ok(Via::Here),
                (crate::Coordinator::Node(node), Some(peers)) => {
                    Ok(Via::Node(peers.as_ref(), node))
                }
                (coordinator, _) => Err(TxnError::NotCoordinator {
                    id: id.to_owned(),
                    coordinator: match coordinator {
                        crate::Coordinator::Node(node) => Some(node),
                        _ => None,
                    },
                }),
            };
            let started = via.and_then(|via| {
                let producer = match via {
                    Via::Here => self.init_producer(broker, id, timeout_ms, None)?,
                    Via::Node(peers, node) => peers.init_producer(node, id, timeout_ms)?,
                };
                Ok((via, producer))
            });
            match started {
                Err(TxnError::Concurrent { .. } | TxnError::NotCoordinator { .. })
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Writes the broker transaction's `writes` as `producer`'s
    /// transactional batches, numbered per partition: here where this node
    /// leads the partition, on the leader elsewhere (one Produce per
    /// node); every one acknowledged by its in-sync replicas.
    fn append_own(
        &self,
        broker: &Broker,
        id: &str,
        (producer_id, epoch): (i64, i16),
        writes: super::TxnWrites,
    ) -> Result<(), TxnError> {
        let batch_fault = |fault| CoreError::Internal {
            reason: format!("a transaction's batch: {fault}"),
        };
        let mut sequences: HashMap<(String, i32), i32> = HashMap::new();
        let mut appended = Vec::with_capacity(writes.entries.len());
        let mut elsewhere: BTreeMap<i32, BTreeMap<(String, i32), BytesMut>> = BTreeMap::new();
        for (topic, partition, mut batch) in writes.entries {
            let key = (topic.name().to_owned(), partition.get());
            let header = sluice_log::batch::BatchHeader::parse(&batch).map_err(batch_fault)?;
            let next = sequences.entry(key.clone()).or_insert(0);
            sluice_log::batch::set_producer(&mut batch, producer_id, epoch, *next, true)
                .map_err(batch_fault)?;
            *next = next.wrapping_add(header.records_count);
            match (self.remote.get(), topic.leader(partition)) {
                (Some(_), Some((node, _))) if node != broker.node_id() => {
                    elsewhere
                        .entry(node)
                        .or_default()
                        .entry(key)
                        .or_default()
                        .extend_from_slice(&batch);
                }
                _ => appended.push(topic.append_start(partition, &mut batch)?.in_sync()),
            }
        }
        if let Some(peers) = self.remote.get() {
            for (node, batches) in elsewhere {
                let batches = batches
                    .into_iter()
                    .map(|((topic, partition), records)| RemoteBatches {
                        topic,
                        partition,
                        records: records.freeze(),
                    })
                    .collect();
                peers.produce(node, id, batches)?;
            }
        }
        for append in appended {
            append.wait()?;
        }
        Ok(())
    }

    /// KIP-890's verification (AddPartitionsToTxn v4+ with `verify_only`):
    /// for each of `partitions`, whether the open transaction of `id`
    /// holds it. Changes nothing.
    ///
    /// # Errors
    /// [`TxnError::UnknownProducer`], [`TxnError::Fenced`], and
    /// [`TxnError::Concurrent`] while the transaction's markers are
    /// written.
    pub fn verify_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<Vec<bool>, TxnError> {
        let mut txns = self.lock();
        self.led(&mut txns, id)?;
        let meta = Self::held(&mut txns, id, producer_id, epoch)?;
        if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return Err(TxnError::Concurrent { id: id.to_owned() });
        }
        let open = meta.state == TxnState::Ongoing;
        Ok(partitions
            .iter()
            .map(|partition| open && meta.partitions.contains(partition))
            .collect())
    }

    /// The id's state for a request of `producer_id` at `epoch`.
    fn held<'a>(
        txns: &'a mut HashMap<String, TxnMeta>,
        id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<&'a mut TxnMeta, TxnError> {
        let meta = txns.get_mut(id).ok_or_else(|| TxnError::UnknownProducer {
            id: id.to_owned(),
            found: producer_id,
        })?;
        if meta.producer_id != producer_id {
            return Err(TxnError::UnknownProducer {
                id: id.to_owned(),
                found: producer_id,
            });
        }
        if meta.epoch != epoch {
            return Err(TxnError::Fenced {
                id: id.to_owned(),
                producer_id,
                epoch,
                current: meta.epoch,
            });
        }
        Ok(meta)
    }

    /// AddPartitionsToTxn (`partitions`) and AddOffsetsToTxn (`group`):
    /// the transaction is open from now on and writes there. Blocking.
    ///
    /// # Errors
    /// [`TxnError::UnknownProducer`], [`TxnError::Fenced`],
    /// [`TxnError::Concurrent`] while the last transaction's markers are
    /// written, the log's errors.
    pub fn add(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        group: Option<&str>,
    ) -> Result<(), TxnError> {
        let now = SystemClock.now_ms();
        let mut txns = self.lock();
        self.led(&mut txns, id)?;
        let meta = Self::held(&mut txns, id, producer_id, epoch)?;
        // Kafka's answer while the markers of the last transaction are
        // being written: retried by the client.
        if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return Err(TxnError::Concurrent { id: id.to_owned() });
        }
        let known = meta.state == TxnState::Ongoing
            && partitions.iter().all(|p| meta.partitions.contains(p))
            && group.is_none_or(|g| meta.groups.contains(g));
        if known {
            return Ok(());
        }
        let mut next = meta.clone();
        if next.state != TxnState::Ongoing {
            next.state = TxnState::Ongoing;
            next.partitions.clear();
            next.groups.clear();
            next.offsets.clear();
            next.started_ms = now;
        }
        next.partitions.extend(partitions.iter().cloned());
        if let Some(group) = group {
            next.groups.insert(group.to_owned());
        }
        next.updated_ms = now;
        self.store(id, &next)?;
        self.publish(id, &next);
        *meta = next;
        Ok(())
    }

    /// TxnOffsetCommit: offsets `group` commits in the open transaction,
    /// visible once it commits. Blocking.
    ///
    /// # Errors
    /// [`TxnError::UnknownProducer`], [`TxnError::Fenced`],
    /// [`TxnError::InvalidState`] when no transaction is open or the group
    /// was not added to it, the log's errors.
    pub fn commit_offsets(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), TxnError> {
        let mut txns = self.lock();
        self.led(&mut txns, id)?;
        let meta = Self::held(&mut txns, id, producer_id, epoch)?;
        if meta.state != TxnState::Ongoing || !meta.groups.contains(group) {
            return Err(TxnError::InvalidState {
                id: id.to_owned(),
                state: meta.state.as_str(),
                what: "commit offsets of a group not added to an open transaction",
            });
        }
        let mut next = meta.clone();
        let pending = next.offsets.entry(group.to_owned()).or_default();
        for (topic, partition, committed) in offsets {
            pending.insert((topic.clone(), *partition), committed.clone());
        }
        next.updated_ms = SystemClock.now_ms();
        self.store(id, &next)?;
        *meta = next;
        Ok(())
    }

    /// Whether `producer_id` at `epoch` may write a transactional batch to
    /// `topic`/`partition` for `id` (KIP-890's verification): its
    /// transaction is open and holds that partition. On a cluster, a
    /// leader that does not coordinate the id asks its coordinator
    /// ([`TxnPeers::verify`]) unless the producer's transaction is already
    /// open on the partition (`open_here`). Blocking.
    ///
    /// # Errors
    /// [`TxnError::UnknownProducer`], [`TxnError::Fenced`],
    /// [`TxnError::InvalidState`]; on a cluster
    /// [`TxnError::NotCoordinator`], [`TxnError::Concurrent`] and the
    /// link's errors too.
    pub fn verify(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
        open_here: bool,
    ) -> Result<(), TxnError> {
        if let Store::Replicated(state) = &self.store
            && state.loaded_partition(state.index_of(id)).is_none()
        {
            if open_here {
                // Verified with its first batch here (Kafka's leaders
                // verify a producer's first batch of a transaction).
                return Ok(());
            }
            match (self.coordinator(id), self.remote.get()) {
                // Led here since, not loaded yet (the tick loads it within a
                // second; not here, on a produce's async worker): the
                // producer asks again.
                (crate::Coordinator::Here, _) => {
                    return Err(TxnError::Concurrent { id: id.to_owned() });
                }
                (crate::Coordinator::Node(node), Some(peers)) => {
                    return peers.verify(node, id, (producer_id, epoch), topic, partition);
                }
                (coordinator, _) => {
                    return Err(TxnError::NotCoordinator {
                        id: id.to_owned(),
                        coordinator: match coordinator {
                            crate::Coordinator::Node(node) => Some(node),
                            _ => None,
                        },
                    });
                }
            }
        }
        let all = self.writable.lock().unwrap_or_else(|e| e.into_inner());
        let writable = all
            .get(id)
            .filter(|w| w.producer_id == producer_id)
            .ok_or_else(|| TxnError::UnknownProducer {
                id: id.to_owned(),
                found: producer_id,
            })?;
        if writable.epoch != epoch {
            return Err(TxnError::Fenced {
                id: id.to_owned(),
                producer_id,
                epoch,
                current: writable.epoch,
            });
        }
        let holds = writable
            .partitions
            .as_ref()
            .is_some_and(|p| p.contains(&(topic.to_owned(), partition)));
        if holds {
            Ok(())
        } else {
            Err(TxnError::InvalidState {
                id: id.to_owned(),
                state: if writable.partitions.is_some() {
                    "Ongoing"
                } else {
                    "not open"
                },
                what: "write to a partition not added to an open transaction",
            })
        }
    }

    /// EndTxn: commits or aborts the open transaction: the decision is
    /// durable, then every partition it wrote to gets its marker and its
    /// offsets become visible (or are dropped), then it is complete. A
    /// retry of an end already done succeeds. The markers are written
    /// without the coordinator's lock (the id answers
    /// CONCURRENT_TRANSACTIONS meanwhile): a slow partition leader stalls
    /// this transaction only. Blocking.
    ///
    /// # Errors
    /// [`TxnError::UnknownProducer`], [`TxnError::Fenced`],
    /// [`TxnError::InvalidState`] with no open transaction or for the
    /// other outcome than the one decided, the log's and the markers'
    /// errors (the transaction completes on a later tick then).
    pub fn end(
        &self,
        broker: &Broker,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), TxnError> {
        let (decided, coordinator_epoch, completing) = {
            let mut txns = self.lock();
            let coordinator_epoch = self.led(&mut txns, id)?;
            let meta = Self::held(&mut txns, id, producer_id, epoch)?;
            let (prepare, done) = if commit {
                (TxnState::PrepareCommit, TxnState::CompleteCommit)
            } else {
                (TxnState::PrepareAbort, TxnState::CompleteAbort)
            };
            match meta.state {
                TxnState::Ongoing => {}
                state if state == done => return Ok(()),
                // Decided so but not complete (a marker could not be
                // written): the tick completes it; the client asks again.
                state if state == prepare => {
                    return Err(TxnError::Concurrent { id: id.to_owned() });
                }
                state => {
                    return Err(TxnError::InvalidState {
                        id: id.to_owned(),
                        state: state.as_str(),
                        what: if commit { "commit" } else { "abort" },
                    });
                }
            }
            let mut next = meta.clone();
            next.state = prepare;
            next.updated_ms = SystemClock.now_ms();
            self.store(id, &next)?;
            self.publish(id, &next);
            *meta = next.clone();
            (next, coordinator_epoch, self.start_completing(id))
        };
        let written = self.write_markers(broker, &decided, coordinator_epoch, &mut BTreeSet::new());
        if let Err(error) = self.finish(broker, completing, decided, coordinator_epoch, written) {
            // Decided and durable, as Kafka answers EndTxn: the tick (or
            // the coordinator that loads it next) writes what is missing;
            // the id answers CONCURRENT_TRANSACTIONS until then.
            tracing::warn!(transactional_id = %id, %error, "transaction decided; its markers are completed later");
        }
        Ok(())
    }

    /// After the markers of `decided` were written (`written`) with the
    /// lock released: the id is completed if it is still as decided here
    /// (in the same coordinator epoch), else left to whoever holds it now.
    fn finish(
        &self,
        broker: &Broker,
        completing: Completing<'_>,
        decided: TxnMeta,
        coordinator_epoch: i32,
        written: Result<(), TxnError>,
    ) -> Result<(), TxnError> {
        let mut txns = self.lock();
        let id = completing.id.clone();
        let id = id.as_str();
        completing.done();
        written?;
        let same = txns.get(id) == Some(&decided)
            && self.coordinator_epoch(id).ok() == Some(coordinator_epoch);
        if !same {
            // Loaded again in a later epoch, or forgotten: the coordinator
            // that holds it completes it.
            return Err(TxnError::Concurrent { id: id.to_owned() });
        }
        let mut done = decided;
        self.complete_decided(broker, id, &mut done)?;
        self.publish(id, &done);
        txns.insert(id.to_owned(), done);
        Ok(())
    }

    /// The marker of a decided transaction on every partition it wrote to:
    /// written here where this node leads the partition, sent to the
    /// leader elsewhere (one request per node). Needs no lock.
    fn write_markers(
        &self,
        broker: &Broker,
        meta: &TxnMeta,
        coordinator_epoch: i32,
        unanswered: &mut BTreeSet<i32>,
    ) -> Result<(), TxnError> {
        let Some(outcome) = meta.state.decided() else {
            return Ok(());
        };
        let marker = Marker {
            outcome,
            coordinator_epoch,
        };
        let mut elsewhere: BTreeMap<i32, Vec<RemoteMarker>> = BTreeMap::new();
        for (topic, partition) in &meta.partitions {
            let Some(found) = broker.topics().get(topic) else {
                continue;
            };
            let id = PartitionId::from(*partition);
            if let (Some(_), Some((node, _))) = (self.remote.get(), found.leader(id))
                && node != broker.node_id()
            {
                elsewhere.entry(node).or_default().push(RemoteMarker {
                    topic: topic.clone(),
                    partition: *partition,
                    producer_id: meta.producer_id,
                    producer_epoch: meta.epoch,
                    marker,
                });
                continue;
            }
            match broker.write_marker(topic, *partition, meta.producer_id, meta.epoch, marker) {
                Ok(()) | Err(CoreError::UnknownPartition { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        if let Some(remote) = self.remote.get() {
            for (node, markers) in elsewhere {
                // A node that did not answer this round is not waited for
                // again in it (the tick's other transactions).
                if unanswered.contains(&node) {
                    return Err(TxnError::Core(CoreError::Internal {
                        reason: format!("node {node} did not take markers this round"),
                    }));
                }
                if let Err(error) = remote.write_markers(node, markers) {
                    unanswered.insert(node);
                    return Err(error.into());
                }
            }
        }
        Ok(())
    }

    /// Makes the offsets of a transaction whose markers are written
    /// visible on commit, and records it complete (`meta` is updated).
    fn complete_decided(
        &self,
        broker: &Broker,
        id: &str,
        meta: &mut TxnMeta,
    ) -> Result<(), TxnError> {
        let Some(outcome) = meta.state.decided() else {
            return Ok(());
        };
        if outcome == Outcome::Commit {
            for (group, offsets) in &meta.offsets {
                let offsets: Vec<(String, i32, CommittedOffset)> = offsets
                    .iter()
                    .map(|((topic, partition), committed)| {
                        (topic.clone(), *partition, committed.clone())
                    })
                    .collect();
                broker.offsets().commit(group, &offsets)?;
            }
        }
        let mut done = meta.clone();
        done.state = if outcome == Outcome::Commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        done.partitions.clear();
        done.groups.clear();
        done.offsets.clear();
        done.updated_ms = SystemClock.now_ms();
        // Not waited for on a cluster of one: lost in a crash, the
        // decision (durable) is read back and completed again, its markers
        // written again (a marker with nothing open changes nothing). The
        // next durable record of the log makes it durable.
        self.write(id, &done, false)?;
        *meta = done;
        Ok(())
    }

    /// Aborts the transactions open longer than their timeout under a
    /// bumped epoch (the producer that let it run is fenced), and
    /// completes those decided but not completed, their markers written
    /// with the lock released. Blocking.
    pub fn tick(&self, broker: &Broker) {
        let now = SystemClock.now_ms();
        let mut decided = Vec::new();
        {
            let mut txns = self.lock();
            self.refresh_all(&mut txns);
            let due: Vec<String> = txns
                .iter()
                .filter(|(_, meta)| match meta.state {
                    TxnState::Ongoing => now - meta.started_ms > i64::from(meta.timeout_ms),
                    TxnState::PrepareCommit | TxnState::PrepareAbort => true,
                    _ => false,
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in due {
                if self.completing().contains(&id) {
                    continue;
                }
                let Some(meta) = txns.get_mut(&id) else {
                    continue;
                };
                if meta.state == TxnState::Ongoing {
                    let mut next = meta.clone();
                    tracing::info!(
                        transactional_id = %id,
                        producer_id = next.producer_id,
                        timeout_ms = next.timeout_ms,
                        "transaction timed out: aborted, its producer fenced"
                    );
                    next.state = TxnState::PrepareAbort;
                    if next.epoch < i16::MAX - 1 {
                        next.epoch += 1;
                    }
                    next.updated_ms = now;
                    if let Err(error) = self.store(&id, &next) {
                        tracing::warn!(transactional_id = %id, %error, "cannot abort a timed-out transaction");
                        continue;
                    }
                    self.publish(&id, &next);
                    *meta = next;
                }
                let Ok(coordinator_epoch) = self.coordinator_epoch(&id) else {
                    continue;
                };
                let decision = meta.clone();
                decided.push((self.start_completing(&id), decision, coordinator_epoch));
            }
            self.expire(&mut txns, now);
        }
        // A node that does not answer holds up this round once, not once
        // per transaction that wrote there.
        let mut unanswered = BTreeSet::new();
        for (completing, meta, coordinator_epoch) in decided {
            let id = completing.id.clone();
            let written = self.write_markers(broker, &meta, coordinator_epoch, &mut unanswered);
            if let Err(error) = self.finish(broker, completing, meta, coordinator_epoch, written) {
                tracing::warn!(transactional_id = %id, %error, "cannot complete a transaction; trying again");
            }
        }
    }

    /// Forgets the ids with no transaction open and no change for
    /// `expiration_ms` (called with `txns` held).
    fn expire(&self, txns: &mut HashMap<String, TxnMeta>, now: i64) {
        let expired: Vec<String> = txns
            .iter()
            .filter(|(id, meta)| {
                // The broker's own ids start a new epoch on every
                // transaction: nothing is fenced by keeping them idle
                // (on a cluster no connection's close forgets them).
                let expiration_ms = if id.starts_with(super::BROKER_TXN_PREFIX) {
                    self.expiration_ms.min(BROKER_ID_EXPIRATION_MS)
                } else {
                    self.expiration_ms
                };
                Self::idle(meta) && now.saturating_sub(meta.updated_ms) > expiration_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        if self.drop_ids(txns, &expired, true) {
            tracing::info!(
                count = expired.len(),
                expiration_ms = self.expiration_ms,
                "transactional ids expired"
            );
        }
    }

    /// No transaction open or being ended.
    fn idle(meta: &TxnMeta) -> bool {
        matches!(
            meta.state,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }

    /// Forgets `ids` (tombstones in one batch, synced when `durable`);
    /// whether they were written.
    fn drop_ids(&self, txns: &mut HashMap<String, TxnMeta>, ids: &[String], durable: bool) -> bool {
        if ids.is_empty() {
            return false;
        }
        // One batch per partition (on a cluster of one, all in one).
        let mut by_partition: BTreeMap<u32, Vec<&String>> = BTreeMap::new();
        for id in ids {
            let index = match &self.store {
                Store::Local(_) => 0,
                Store::Replicated(topic) => topic.index_of(id),
            };
            by_partition.entry(index).or_default().push(id);
        }
        let mut dropped = false;
        for some in by_partition.into_values() {
            let keys: Vec<Bytes> = some.iter().map(|id| encode_key(id)).collect();
            let entries: Vec<crate::replay::Entry<'_>> =
                keys.iter().map(|key| (Some(&key[..]), None)).collect();
            if let Err(error) = self.write_records(some[0], &entries, durable) {
                tracing::warn!(count = some.len(), %error, "cannot forget transactional ids; trying again later");
                continue;
            }
            let mut writable = self.writable.lock().unwrap_or_else(|e| e.into_inner());
            for id in some {
                txns.remove(id);
                writable.remove(id);
            }
            dropped = true;
        }
        dropped
    }

    /// Forgets `ids` that have no transaction open (the broker's own ids
    /// of a closed AMQP connection). Blocking.
    pub fn forget(&self, ids: &[String]) {
        let mut txns = self.lock();
        let idle: Vec<String> = ids
            .iter()
            .filter(|id| txns.get(id.as_str()).is_some_and(Self::idle))
            .cloned()
            .collect();
        self.drop_ids(&mut txns, &idle, false);
    }
}

/// Every id's latest state in `log`, of the ids `keep` accepts.
fn read_states(
    log: &Log,
    keep: impl Fn(&str) -> bool,
) -> Result<HashMap<String, TxnMeta>, CoreError> {
    let mut txns = HashMap::new();
    crate::replay::for_each_record(log, log.log_start(), |record| {
        let Some(id) = record.key.and_then(decode_key).filter(|id| keep(id)) else {
            return;
        };
        match record.value.and_then(decode_value) {
            Some(meta) => {
                txns.insert(id, meta);
            }
            None => {
                txns.remove(&id);
            }
        }
    })?;
    Ok(txns)
}

fn encode_key(id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + id.len());
    out.put_u16(0);
    put_str(&mut out, id);
    out.freeze()
}

fn decode_key(mut key: Bytes) -> Option<String> {
    if key.remaining() < 2 || key.get_u16() != 0 {
        return None;
    }
    get_str(&mut key)
}

fn encode_value(meta: &TxnMeta) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u16(0);
    out.put_i64(meta.producer_id);
    out.put_i16(meta.epoch);
    out.put_i32(meta.timeout_ms);
    out.put_u8(meta.state.code());
    out.put_i64(meta.started_ms);
    out.put_i64(meta.updated_ms);
    out.put_u32(meta.partitions.len() as u32);
    for (topic, partition) in &meta.partitions {
        put_str(&mut out, topic);
        out.put_i32(*partition);
    }
    out.put_u32(meta.groups.len() as u32);
    for group in &meta.groups {
        put_str(&mut out, group);
    }
    let count: usize = meta.offsets.values().map(BTreeMap::len).sum();
    out.put_u32(count as u32);
    for (group, offsets) in &meta.offsets {
        for ((topic, partition), committed) in offsets {
            put_str(&mut out, group);
            put_str(&mut out, topic);
            out.put_i32(*partition);
            out.put_i64(committed.offset);
            out.put_i32(committed.leader_epoch);
            match &committed.metadata {
                Some(text) => {
                    out.put_i32(text.len() as i32);
                    out.put_slice(text.as_bytes());
                }
                None => out.put_i32(-1),
            }
        }
    }
    out.freeze()
}

fn decode_value(mut value: Bytes) -> Option<TxnMeta> {
    if value.remaining() < 2 + 8 + 2 + 4 + 1 + 8 + 8 + 4 || value.get_u16() != 0 {
        return None;
    }
    let producer_id = value.get_i64();
    let epoch = value.get_i16();
    let timeout_ms = value.get_i32();
    let state = TxnState::from_code(value.get_u8())?;
    let started_ms = value.get_i64();
    let updated_ms = value.get_i64();
    let mut partitions = BTreeSet::new();
    for _ in 0..value.get_u32() {
        let topic = get_str(&mut value)?;
        if value.remaining() < 4 {
            return None;
        }
        partitions.insert((topic, value.get_i32()));
    }
    if value.remaining() < 4 {
        return None;
    }
    let mut groups = BTreeSet::new();
    for _ in 0..value.get_u32() {
        groups.insert(get_str(&mut value)?);
    }
    if value.remaining() < 4 {
        return None;
    }
    let mut offsets: BTreeMap<String, PendingOffsets> = BTreeMap::new();
    for _ in 0..value.get_u32() {
        let group = get_str(&mut value)?;
        let topic = get_str(&mut value)?;
        if value.remaining() < 4 + 8 + 4 + 4 {
            return None;
        }
        let partition = value.get_i32();
        let offset = value.get_i64();
        let leader_epoch = value.get_i32();
        let length = value.get_i32();
        let metadata = match usize::try_from(length) {
            Ok(length) if value.remaining() >= length => {
                Some(String::from_utf8(value.split_to(length).to_vec()).ok()?)
            }
            Ok(_) => return None,
            Err(_) => None,
        };
        offsets.entry(group).or_default().insert(
            (topic, partition),
            CommittedOffset {
                offset,
                leader_epoch,
                metadata,
            },
        );
    }
    Some(TxnMeta {
        producer_id,
        epoch,
        timeout_ms,
        state,
        partitions,
        groups,
        offsets,
        started_ms,
        updated_ms,
        last_epoch: -1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_record_round_trips() {
        let mut offsets = BTreeMap::new();
        offsets.insert(
            ("in".to_owned(), 2),
            CommittedOffset {
                offset: 41,
                leader_epoch: 3,
                metadata: Some("m".to_owned()),
            },
        );
        let meta = TxnMeta {
            producer_id: 9,
            epoch: 4,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: [("out".to_owned(), 0), ("out".to_owned(), 1)].into(),
            groups: ["g".to_owned()].into(),
            offsets: [("g".to_owned(), offsets)].into(),
            started_ms: 1_000,
            updated_ms: 2_000,
            last_epoch: -1,
        };
        assert_eq!(decode_value(encode_value(&meta)), Some(meta));
        assert_eq!(decode_key(encode_key("tx-1")).as_deref(), Some("tx-1"));
        assert_eq!(decode_value(Bytes::from_static(b"\0\0short")), None);
    }
}
