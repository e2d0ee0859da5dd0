//! Virtual hosts: each a namespace of exchanges, queues and bindings, with
//! the operations AMQP's `exchange.*`, `queue.*` and `basic.publish` reach.
//!
//! - `declare.rs`: exchanges, queues and bindings declared and deleted.
//! - `publish.rs`: routing and publishing.
//! - `dead_letter.rs`: what dies in a queue, republished to its DLX.
//! - `cluster.rs`: on a cluster, the definitions other nodes commit, and
//!   classic queues living on other nodes.
//!
//! Lock order (see docs/locks.md): the vhost's `exchanges` map, then its
//! `queues` map, then one exchange's bindings or one queue's state. Routing
//! takes exchange binding locks one at a time and never a queue lock while
//! holding one.

mod cluster;
mod dead_letter;
mod declare;
mod members;
mod publish;
mod quorum;
pub use members::{GrowSelector, LeaderMove, MemberChange};
pub use quorum::QuorumPlacement;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use amq_protocol::types::FieldTable;
use sluice_log::LogManager;
use sluice_types::{Clock, SystemClock};

use super::MessagingError;
use super::alarms::ResourceMonitor;
use super::definitions::{
    BindingDefinition, Definition, DefinitionWriter, Definitions, DurableDefinitions,
    ExchangeDefinition, QueueDefinition,
};
use super::exchange::{Binding, Destination, Exchange, ExchangeKind};
use super::message::Message;
use super::queue::{Queue, QueueArgs, QueueHome, QueueOptions, QueueType, Store};
use super::queue_store::QueueStore;
use crate::{Acks, CoreError, Topics};

/// How an exchange is declared.
#[derive(Debug, Clone, Default)]
pub struct ExchangeOptions {
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not published to directly.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
}

/// What a publish did.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Number of queues the message reached.
    pub queues: usize,
    /// What a confirm must wait for (one per durable queue log written).
    pub acks: Acks,
    /// A queue refused it (`x-overflow` reject-publish): nack, don't ack.
    pub rejected: bool,
}

/// Quorum queue instances a node stopped running, by queue name.
type DroppedInstances = HashMap<String, Vec<std::sync::Weak<Queue>>>;

/// Every virtual host of the broker.
#[derive(Debug)]
pub struct VirtualHosts {
    hosts: RwLock<HashMap<String, Arc<VirtualHost>>>,
    memory: Arc<ResourceMonitor>,
    /// The committed definitions the virtual hosts reflect (see
    /// [`VirtualHosts::reconcile`]).
    applied: Mutex<Definitions>,
    /// What carries messages to queues living on other nodes.
    carrier: Carrier,
}

/// What carries messages to queues living on other nodes, once a
/// cluster's links are up.
pub(crate) type Carrier = Arc<std::sync::OnceLock<Arc<dyn RemoteQueues>>>;

/// Sends messages to the queues of other nodes of a cluster.
pub trait RemoteQueues: Send + Sync + std::fmt::Debug {
    /// Sends `message` to queue `queue` of virtual host `vhost` on node
    /// `home`, in the order of the calls for one node; the
    /// acknowledgement settles when that node has it with the queue's
    /// guarantee (or refused it).
    fn enqueue(&self, home: i32, vhost: &str, queue: &str, message: &Message) -> crate::PendingAck;

    /// Registers `consumer` of `queue` (a stand-in for a queue of node
    /// `home`) there: deliveries come back to its sink, with `queue` to
    /// settle through; a refusal there comes back as a cancellation.
    ///
    /// # Errors
    /// A refusal known at once (no link to `home`).
    fn consume(
        &self,
        home: i32,
        vhost: &str,
        queue: &Arc<Queue>,
        consumer: super::ConsumerSpec,
    ) -> Result<(), MessagingError>;

    /// `basic.get` of `queue` (a stand-in for a queue of node `home`);
    /// the message's handle is this node's, to settle through `queue`.
    /// Blocking.
    ///
    /// # Errors
    /// The home's refusal, or no answer.
    fn get(
        &self,
        home: i32,
        vhost: &str,
        queue: &Arc<Queue>,
        no_ack: bool,
    ) -> Result<Option<super::GetResult>, MessagingError>;

    /// `queue.purge` of `queue` on node `home`; the count purged.
    /// Blocking.
    ///
    /// # Errors
    /// The home's refusal, or no answer.
    fn purge(&self, home: i32, vhost: &str, queue: &str) -> Result<usize, MessagingError>;

    /// Removes the consumer `tag` of channel `channel` from node `home`.
    fn cancel(&self, home: i32, channel: u64, tag: &str);

    /// Consumers of quorum queue `queue` of `vhost` whose leader went away
    /// (its link failed, or it stopped leading), taken to be registered
    /// again with the queue's next leader instead of being cancelled:
    /// those of the queue with store id `store_id` (a queue deleted and
    /// declared again under its name has another), or of any with `None`.
    fn take_orphans(
        &self,
        _vhost: &str,
        _queue: &str,
        _store_id: Option<&str>,
    ) -> Vec<super::ConsumerSpec> {
        Vec::new()
    }

    /// The quorum queues of `vhost` some consumer waits for the next
    /// leader of ([`RemoteQueues::take_orphans`]): name and store id.
    fn orphaned_queues(&self, _vhost: &str) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Takes back the consumers registered through `stand_in` (a quorum
    /// queue's stand-in replaced for another leader): cancelled at their
    /// former leader, they wait for the queue's next one.
    fn release_stand_in(&self, _stand_in: &Arc<Queue>) {}

    /// Removes the consumer `tag` of channel `channel` wherever it is
    /// registered (any link, or waiting for a quorum queue's next leader).
    fn forget_consumer(&self, _channel: u64, _tag: &str) {}

    /// Keeps `consumer` of quorum queue `queue` of `vhost` (store id
    /// `store_id`) for the queue's next leader (this node stopped leading
    /// it); cancels it by default.
    fn orphan(&self, _vhost: &str, _queue: &str, _store_id: &str, consumer: super::ConsumerSpec) {
        let _ = consumer.sink.send(super::ConsumerEvent::Cancelled {
            channel: consumer.channel,
            consumer_tag: consumer.tag,
        });
    }

    /// The client connections open on node `node` (Kafka, AMQP), asked
    /// over its link and answered within `timeout`; `None` without an
    /// answer.
    fn connections_on(&self, _node: i32, _timeout: std::time::Duration) -> Option<(u64, u64)> {
        None
    }

    /// What the AMQP limits count on node `node` for `vhost` and `user`
    /// ([`crate::Connections::amqp_counts`]), asked over its link within
    /// `timeout`; `None` without an answer.
    fn amqp_counts_on(
        &self,
        _node: i32,
        _vhost: &str,
        _user: &str,
        _timeout: std::time::Duration,
    ) -> Option<crate::AmqpCounts> {
        None
    }

    /// Tells node `node` that a client here took a client id (an MQTT
    /// session): its holder there ends
    /// ([`crate::Connections::take_over_here`]). True once the node
    /// answered within `timeout` that the holder let the session go.
    fn take_over_on(
        &self,
        _node: i32,
        _takeover: &crate::Takeover,
        _timeout: std::time::Duration,
    ) -> bool {
        false
    }

    /// Share groups' records on node `node` (the partitions it leads),
    /// each with the index of its group in `groups`, asked over its link
    /// and answered within `timeout`; `None` without an answer.
    fn share_counts_on(
        &self,
        _node: i32,
        _groups: &[String],
        _timeout: std::time::Duration,
    ) -> Option<Vec<crate::share_groups::CountedShares>> {
        None
    }

    /// Settles deliveries `seqs` of `queue` of `vhost` on node `home`;
    /// returns, for a quorum queue's, the messages settled as every
    /// leader knows them, and which of them were not sent to `home`
    /// (delivered over a link that failed since).
    fn settle(
        &self,
        home: i32,
        vhost: &str,
        queue: &str,
        seqs: &[u64],
        settlement: super::RemoteSettlement,
    ) -> super::RemoteSettled;

    /// How often this node's link to node `node` failed so far (a failed
    /// dial counts): settlements handed to a queue leader there before a
    /// failure are handed to it again.
    fn link_failures(&self, _node: i32) -> u64 {
        0
    }

    /// Hands node `home`, the new leader of quorum queue `queue` of
    /// `vhost`, settlements made here through a former leader (which may
    /// not have replicated them), ahead of anything sent after.
    fn resettle(&self, _home: i32, _vhost: &str, _queue: &str, _refs: &[super::MessageRef]) {}

    /// The messages of quorum queue `queue` of `vhost` this node's clients
    /// hold, delivered through other nodes and not settled yet, as every
    /// leader knows them.
    fn held_refs(&self, _vhost: &str, _queue: &str) -> Vec<super::MessageRef> {
        Vec::new()
    }

    /// Forgets the deliveries of quorum queue `queue` of `vhost` this
    /// node's clients hold (the queue was deleted: their settlements are
    /// for nothing, and must not name a later queue's messages).
    fn forget_deliveries(&self, _vhost: &str, _queue: &str) {}

    /// Asks node `home`, leading quorum queue `queue` of `vhost`, not to
    /// deliver again the messages of `refs` (this node's clients hold
    /// them, delivered by a former leader) until this node settles them
    /// or its link to `home` fails.
    fn hold(&self, _home: i32, _vhost: &str, _queue: &str, _refs: &[super::MessageRef]) {}

    /// Gives back to node `home`, leading quorum queue `queue` of `vhost`,
    /// messages it holds for this node's clients ([`RemoteQueues::hold`]):
    /// requeued, or dead.
    fn release(
        &self,
        _home: i32,
        _vhost: &str,
        _queue: &str,
        _requeue: bool,
        _refs: &[super::MessageRef],
    ) {
    }
}

impl VirtualHosts {
    /// Opens the virtual hosts named (creating the standard exchanges) and
    /// restores durable definitions and queued messages.
    ///
    /// # Errors
    /// Storage failures.
    pub(crate) fn open(
        shared: &VhostShared,
        durable: DurableDefinitions,
        names: &[String],
        restored: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<VirtualHosts, CoreError> {
        let DurableDefinitions { writer, stored } = durable;
        let total = stored.len();
        let applied = stored.clone();
        let definitions = Arc::new(writer);
        let carrier = Carrier::default();
        let mut hosts = HashMap::new();
        for name in names {
            hosts.insert(
                name.clone(),
                VirtualHost::new(
                    name.clone(),
                    shared.clone(),
                    Arc::clone(&definitions),
                    Arc::clone(&carrier),
                ),
            );
        }
        for (index, definition) in stored.into_values().enumerate() {
            restored(index, total);
            let Some(vhost) = hosts.get(definition.vhost()) else {
                tracing::warn!(vhost = %definition.vhost(), "definitions of an unconfigured virtual host are kept but not loaded");
                continue;
            };
            vhost.restore(definition)?;
        }
        Ok(VirtualHosts {
            hosts: RwLock::new(hosts),
            memory: Arc::clone(&shared.memory),
            applied: Mutex::new(applied),
            carrier,
        })
    }

    /// Counts of what the virtual hosts hold, for the recovery log line.
    pub(crate) fn recovered_summary(&self) -> RecoveredSummary {
        let mut summary = RecoveredSummary::default();
        for vhost in self.all() {
            summary.exchanges += vhost
                .exchange_list()
                .iter()
                .filter(|exchange| !exchange.name.is_empty() && !exchange.name.starts_with("amq."))
                .count();
            for queue in vhost.queues() {
                if queue.options().durable && queue.stream_topic().is_none() {
                    summary.durable_queues += 1;
                    summary.messages += queue.message_count() as u64;
                }
            }
            summary.bindings += vhost.bindings().len();
        }
        summary
    }

    /// Hands over what carries messages to queues on other nodes (once;
    /// a second call is ignored).
    pub fn attach_remote_queues(&self, carrier: Arc<dyn RemoteQueues>) {
        let _ = self.carrier.set(carrier);
    }

    /// The client connections open on another node of the cluster
    /// (Kafka, AMQP), asked over its message link within `timeout`.
    /// Blocking.
    pub fn connections_on(&self, node: i32, timeout: std::time::Duration) -> Option<(u64, u64)> {
        self.carrier.get()?.connections_on(node, timeout)
    }

    /// What the AMQP limits count on another node of the cluster, asked
    /// over its message link within `timeout`. Blocking.
    pub fn amqp_counts_on(
        &self,
        node: i32,
        vhost: &str,
        user: &str,
        timeout: std::time::Duration,
    ) -> Option<crate::AmqpCounts> {
        self.carrier
            .get()?
            .amqp_counts_on(node, vhost, user, timeout)
    }

    /// Ends another node's holder of a client id a client here took,
    /// asked over its message link within `timeout`; true once the node
    /// answered. Blocking.
    pub fn take_over_on(
        &self,
        node: i32,
        takeover: &crate::Takeover,
        timeout: std::time::Duration,
    ) -> bool {
        self.carrier
            .get()
            .is_some_and(|carrier| carrier.take_over_on(node, takeover, timeout))
    }

    /// Share groups' records on another node of the cluster, each with
    /// the index of its group in `groups`, asked over its message link
    /// within `timeout`. Blocking.
    pub fn share_counts_on(
        &self,
        node: i32,
        groups: &[String],
        timeout: std::time::Duration,
    ) -> Option<Vec<crate::share_groups::CountedShares>> {
        self.carrier.get()?.share_counts_on(node, groups, timeout)
    }

    /// The virtual host called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<VirtualHost>> {
        self.hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Memory held by queued messages, and its alarm.
    pub fn memory(&self) -> &Arc<ResourceMonitor> {
        &self.memory
    }

    /// Every virtual host, sorted by name.
    pub fn all(&self) -> Vec<Arc<VirtualHost>> {
        let mut all: Vec<Arc<VirtualHost>> = self
            .hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Periodic work: settlements written, expired messages and unused
    /// `x-expires` queues removed.
    pub fn maintain(&self) {
        for vhost in self.all() {
            vhost.maintain();
        }
    }

    /// Deletes the exclusive queues of a closed connection.
    pub fn connection_closed(&self, connection: u64) {
        for vhost in self.all() {
            vhost.connection_closed(connection);
        }
    }

    /// Writes pending settlements and marks durable queues closed cleanly
    /// (at shutdown).
    ///
    /// # Errors
    /// Storage failures.
    pub fn flush(&self) -> Result<(), CoreError> {
        for vhost in self.all() {
            for queue in vhost.queues() {
                queue.close_store()?;
            }
        }
        Ok(())
    }
}

/// What every virtual host of a broker shares.
#[derive(Debug, Clone)]
pub(crate) struct VhostShared {
    pub(crate) logs: Arc<LogManager>,
    /// The broker's topics, which stream queues are views of.
    pub(crate) topics: Arc<Topics>,
    /// Memory held by queued messages, and its alarm.
    pub(crate) memory: Arc<ResourceMonitor>,
    /// The broker's clock (TTLs, `x-expires`, `x-death` times).
    pub(crate) clock: Arc<dyn Clock>,
    /// Most queues a virtual host holds; declaring one more is refused.
    pub(crate) max_queues: Option<u32>,
}

/// One virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    name: String,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Classic queues whose home is another node, by name: their
    /// definitions and stand-ins.
    remote: RwLock<HashMap<String, (QueueDefinition, Arc<Queue>)>>,
    carrier: Carrier,
    logs: Arc<LogManager>,
    /// The broker's topics, which stream queues are views of.
    topics: Arc<Topics>,
    definitions: Arc<DefinitionWriter>,
    memory: Arc<ResourceMonitor>,
    /// Most queues; declaring one more is refused.
    max_queues: Option<u32>,
    clock: Arc<dyn Clock>,
    /// Held while a quorum queue is placed (run here, or a stand-in): the
    /// follower loop and a declaration never place one queue at once.
    placing: std::sync::Mutex<()>,
    /// Settlements of quorum queue messages made here lately, for each
    /// new leader of their queue.
    settled: Arc<super::quorum_store::RecentSettlements>,
    /// Quorum queue instances this node stopped running, by queue name,
    /// while its clients may still hold their deliveries.
    dropped: std::sync::Mutex<DroppedInstances>,
    /// What other nodes' clients hold of quorum queues' deliveries by a
    /// former leader, by queue name and holder (their link), as they last
    /// said: held by each instance this node runs of the queue.
    held_for_peers: std::sync::Mutex<HashMap<String, HashMap<u64, Vec<super::MessageRef>>>>,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A random-looking unique token (store ids, server-named queues).
fn unique_token() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(UNIQUE.fetch_add(1, Ordering::Relaxed));
    hasher.write_i64(SystemClock.now_ms());
    format!("{:016x}", hasher.finish())
}

/// What [`VirtualHosts::recovered_summary`] counts.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RecoveredSummary {
    /// Exchanges other than the default and `amq.*` ones.
    pub(crate) exchanges: usize,
    pub(crate) durable_queues: usize,
    /// Ready messages of durable queues (streams are counted as topics).
    pub(crate) messages: u64,
    pub(crate) bindings: usize,
}

const STANDARD_EXCHANGES: [(&str, ExchangeKind); 6] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

impl VirtualHost {
    fn new(
        name: String,
        shared: VhostShared,
        definitions: Arc<DefinitionWriter>,
        carrier: Carrier,
    ) -> Arc<VirtualHost> {
        let VhostShared {
            logs,
            topics,
            memory,
            clock,
            max_queues,
        } = shared;
        let mut exchanges = HashMap::new();
        for (exchange, kind) in STANDARD_EXCHANGES {
            exchanges.insert(
                exchange.to_owned(),
                Arc::new(Exchange::new(
                    exchange.to_owned(),
                    kind,
                    true,
                    false,
                    false,
                    FieldTable::default(),
                )),
            );
        }
        Arc::new_cyclic(|host| VirtualHost {
            settled: Arc::new(super::quorum_store::RecentSettlements::new(host.clone())),
            name,
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(HashMap::new()),
            remote: RwLock::new(HashMap::new()),
            carrier,
            logs,
            topics,
            definitions,
            memory,
            max_queues,
            clock,
            placing: std::sync::Mutex::new(()),
            dropped: std::sync::Mutex::default(),
            held_for_peers: std::sync::Mutex::default(),
        })
    }

    fn exchanges(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Exchange>>> {
        self.exchanges.read().unwrap_or_else(|e| e.into_inner())
    }

    fn exchanges_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Exchange>>> {
        self.exchanges.write().unwrap_or_else(|e| e.into_inner())
    }

    fn queues_map(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Queue>>> {
        self.queues.read().unwrap_or_else(|e| e.into_inner())
    }

    fn queues_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Queue>>> {
        self.queues.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The virtual host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exchange called `name`.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges().get(name).cloned()
    }

    /// Every exchange, sorted by name.
    pub fn exchange_list(&self) -> Vec<Arc<Exchange>> {
        let mut all: Vec<Arc<Exchange>> = self.exchanges().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Whether the broker has a topic called `name` (a stream queue's).
    pub fn topic_exists(&self, name: &str) -> bool {
        self.topics.get(name).is_some()
    }

    /// The queue called `name`.
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues_map().get(name).cloned()
    }

    /// Every queue, sorted by name.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<Arc<Queue>> = self.queues_map().values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    fn no_exchange(&self, name: &str) -> MessagingError {
        MessagingError::NotFound(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn no_queue(&self, name: &str) -> MessagingError {
        MessagingError::NotFound(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    /// The queue called `name`, if `connection` may use it.
    ///
    /// # Errors
    /// [`MessagingError::NotFound`]; [`MessagingError::ResourceLocked`] for
    /// another connection's exclusive queue.
    pub fn usable_queue(&self, name: &str, connection: u64) -> Result<Arc<Queue>, MessagingError> {
        if let Some(stand_in) = self.remote_stand_in(name) {
            return Ok(stand_in);
        }
        let queue = self.queue(name).ok_or_else(|| self.no_queue(name))?;
        if !queue.usable_by(connection) {
            return Err(self.locked(name));
        }
        Ok(queue)
    }

    fn queue_home(&self) -> QueueHome {
        QueueHome {
            vhost: self.name.clone(),
            memory: Arc::clone(&self.memory),
            clock: Arc::clone(&self.clock),
            settled: Arc::clone(&self.settled),
        }
    }

    fn locked(&self, name: &str) -> MessagingError {
        MessagingError::ResourceLocked(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            self.name
        ))
    }

    fn restore(&self, definition: Definition) -> Result<(), CoreError> {
        match definition {
            Definition::Exchange(ExchangeDefinition {
                name,
                kind,
                auto_delete,
                internal,
                arguments,
                ..
            }) => {
                let Ok(kind) = kind.parse::<ExchangeKind>() else {
                    tracing::warn!(exchange = %name, %kind, "skipping a stored exchange of unknown type");
                    return Ok(());
                };
                self.exchanges_mut().insert(
                    name.clone(),
                    Arc::new(Exchange::new(
                        name,
                        kind,
                        true,
                        auto_delete,
                        internal,
                        arguments,
                    )),
                );
            }
            Definition::Queue(queue) if self.lives_elsewhere(&queue) => {
                self.remember_remote(queue);
            }
            // Its messages are its partition's, and it runs where that
            // leads: the node's quorum follower (lifecycle) places it once
            // the node runs (the metadata is not to be asked while it
            // opens the virtual hosts).
            Definition::Queue(queue) if self.is_replicated_quorum(&queue) => {}
            Definition::Queue(QueueDefinition {
                name,
                store_id,
                auto_delete,
                arguments,
                ..
            }) => {
                let args = QueueArgs::parse(&name, &self.name, &arguments).unwrap_or_default();
                // A stream's messages are its topic's records; a classic
                // queue reads back its own store.
                let (store, topic, messages, paged) = if args.queue_type == QueueType::Stream {
                    (
                        None,
                        Some(self.stream_topic(&name, &args)?),
                        Vec::new(),
                        Vec::new(),
                    )
                } else {
                    let budget = Queue::memory_budget(&args, &self.memory);
                    let recovered = QueueStore::open(&self.logs, &store_id, budget)?;
                    (
                        Some((store_id, Store::Local(recovered.store))),
                        None,
                        recovered.messages,
                        recovered.paged,
                    )
                };
                let queue = Queue::new(
                    name.clone(),
                    QueueOptions {
                        durable: true,
                        exclusive_owner: None,
                        auto_delete,
                        arguments,
                    },
                    args,
                    store,
                    self.queue_home(),
                    topic,
                );
                queue.restore(messages, paged);
                self.queues_mut().insert(name, queue);
            }
            Definition::Binding(BindingDefinition {
                source,
                destination,
                routing_key,
                arguments,
                ..
            }) => {
                let present = match &destination {
                    Destination::Queue(name) => {
                        self.queue(name).is_some() || self.remote_queue(name).is_some()
                    }
                    Destination::Exchange(name) => self.exchange(name).is_some(),
                };
                if let (Some(exchange), true) = (self.exchange(&source), present) {
                    exchange.bind(destination, &routing_key, &arguments);
                }
            }
        }
        Ok(())
    }

    /// Every binding in the virtual host, default-exchange bindings excluded.
    pub fn bindings(&self) -> Vec<Binding> {
        self.exchange_list()
            .iter()
            .flat_map(|e| e.bindings())
            .collect()
    }

    fn maintain(&self) {
        for queue in self.queues() {
            let (unused, dead) = queue.maintain();
            self.dead_letter(dead);
            if unused {
                tracing::debug!(queue = queue.name(), "queue expired (x-expires)");
                if let Err(error) = self.remove_queue(&queue) {
                    tracing::warn!(queue = queue.name(), %error, "cannot delete an expired queue");
                }
            }
        }
    }

    fn connection_closed(&self, connection: u64) {
        let owned: Vec<Arc<Queue>> = self
            .queues()
            .into_iter()
            .filter(|q| q.options().exclusive_owner == Some(connection))
            .collect();
        for queue in owned {
            if let Err(error) = self.remove_queue(&queue) {
                tracing::warn!(queue = queue.name(), %error, "cannot delete an exclusive queue");
            }
        }
    }

    /// Deletes an auto-delete queue whose last consumer went.
    ///
    /// # Errors
    /// Storage failures.
    pub fn auto_delete_queue(&self, queue: &Arc<Queue>) -> Result<(), MessagingError> {
        if queue.consumer_count() == 0 && !queue.is_deleted() {
            self.remove_queue(queue)?;
        }
        Ok(())
    }
}
