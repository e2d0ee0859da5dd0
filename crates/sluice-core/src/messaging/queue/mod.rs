//! A queue: the runtime around one [`QueueMachine`]. The machine decides
//! (who gets a message, what expires, overflows or dies); the runtime reads
//! the clock, holds the lock, writes the store, sends deliveries down each
//! consumer's unbounded sender (bounded in practice by its [`Credit`]) and
//! hands back what died as [`DeadLetters`] for the virtual host to route.
//!
//! - `args.rs`: the declaration's arguments, checked with RabbitMQ's errors.
//! - `credit.rs`: delivery credit of consumers and channels.
//! - `ready.rs`: the ready list, in memory and paged to disk.
//! - `machine.rs`: the deterministic state machine.
//!
//! A queue's [`QueueKind`] says what keeps its messages: the machine
//! (classic; quorum, which behaves as classic until queues replicate in a
//! cluster) or a topic (stream, `stream.rs`).
//!
//! All state sits behind one mutex held only for in-memory work and short
//! page-cache writes.

mod args;
mod credit;
mod machine;
mod ready;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_types::Clock;
use tokio::sync::mpsc::UnboundedSender;

pub use args::{
    ArgumentProblem, DeadLetterStrategy, InvalidArgument, Overflow, QueueArgs, QueueOptions,
    QueueType,
};
pub use credit::Credit;
use machine::{Admission, Effects, Pager, QueueMachine, StoreOp};
pub(crate) use machine::{DeadLetter, DeathReason};

use super::MessagingError;
use super::alarms::ResourceMonitor;
use super::message::Message;
use super::queue_store::{PagedIn, QueueStore, RecoveredMessage, RecoveredRun, Source};
use super::quorum_store::{MessageRef, QuorumStore, RecentSettlements};
use super::stream::{Stream, StreamStart};
use crate::CoreError;
use crate::PendingAck;

/// One delivery to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The consuming channel ([`ConsumerSpec::channel`]).
    pub channel: u64,
    /// The queue it came from; settle through it.
    pub queue: Arc<Queue>,
    /// Queue-local handle of the message.
    pub seq: u64,
    /// The consumer's tag.
    pub consumer_tag: Arc<str>,
    /// The message.
    pub message: Arc<Message>,
    /// Delivered before and not settled.
    pub redelivered: bool,
    /// For a quorum queue on a cluster: the message as every leader knows
    /// it (the consumer's node remembers its settlement for the next).
    pub quorum: Option<MessageRef>,
}

/// What a queue tells a consumer's channel.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// A message for the consumer.
    Deliver(Delivery),
    /// The queue went away; the consumer is gone (`basic.cancel` from the server).
    Cancelled {
        /// The consuming channel ([`ConsumerSpec::channel`]).
        channel: u64,
        /// The consumer's tag.
        consumer_tag: Arc<str>,
    },
}

/// A consumer as the front-end registers it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Consumer tag, unique per channel.
    pub tag: Arc<str>,
    /// Identifies the channel (unique in the broker).
    pub channel: u64,
    /// The connection of the channel (for exclusive queues);
    /// [`PEER_CONSUMER`] for a consumer another node registered.
    pub connection: u64,
    /// Settled on delivery.
    pub no_ack: bool,
    /// No other consumer may share the queue.
    pub exclusive: bool,
    /// `x-priority`: higher goes first while it has credit.
    pub priority: i32,
    /// Outstanding deliveries allowed.
    pub credit: Arc<Credit>,
    /// Where deliveries go.
    pub sink: UnboundedSender<ConsumerEvent>,
    /// For a stream queue: where the consumer starts (`x-stream-offset`).
    pub stream_start: Option<StreamStart>,
}

/// The connection of a consumer another node of a cluster registered
/// (its queue is never exclusive to a connection here).
pub const PEER_CONSUMER: u64 = u64::MAX;

/// What `enqueue` did with a message.
#[derive(Debug, Default)]
pub struct EnqueueOutcome {
    /// For a persistent message in a durable queue: what a confirm waits for.
    pub sync: Option<PendingAck>,
    /// Refused by `x-overflow` reject-publish (nack a confirming publisher).
    pub rejected: bool,
    /// The queue was deleted meanwhile: the message went nowhere (a
    /// publisher is confirmed as for an unroutable message; a held dead
    /// letter is not settled by it).
    pub gone: bool,
    /// Messages that died making room, or this one.
    pub dead: DeadLetters,
}

/// Messages that died in a queue (expired, over a limit, rejected without
/// requeue), for its dead-letter exchange: hand them to
/// [`VirtualHost::dead_letter`](super::VirtualHost::dead_letter). Empty
/// when the queue has no dead-letter exchange (they are dropped).
#[must_use = "dead letters go to VirtualHost::dead_letter"]
#[derive(Debug, Default)]
pub struct DeadLetters {
    pub(crate) queue: String,
    /// The store id of the queue the letters died in: a held letter is
    /// settled in that queue only, not in one declared again by its name.
    pub(crate) store_id: Option<String>,
    pub(crate) exchange: String,
    pub(crate) routing_key: Option<String>,
    pub(crate) letters: Vec<DeadLetter>,
}

impl DeadLetters {
    /// Nothing to route.
    pub fn is_empty(&self) -> bool {
        self.letters.is_empty()
    }

    /// Adds the letters of a later operation on the same queue.
    pub fn extend(&mut self, more: DeadLetters) {
        if self.letters.is_empty() {
            *self = more;
        } else {
            self.letters.extend(more.letters);
        }
    }
}

/// What keeps a queue's messages.
#[derive(Debug)]
pub(crate) enum QueueKind {
    /// The queue's own state machine (and store, when durable).
    Classic,
    /// As classic on one node; replicated once queues replicate.
    Quorum,
    /// A topic the queue is a view of.
    Stream(Stream),
    /// A classic queue living on another node: consumers and settlements
    /// go to its home over the inter-node link.
    Remote(RemoteHome),
}

/// Where a remote queue lives, and what reaches it.
#[derive(Debug)]
pub(crate) struct RemoteHome {
    pub(crate) node: i32,
    pub(crate) carrier: crate::messaging::vhost::Carrier,
    /// The store id of the queue it stands in for (its definition's).
    pub(crate) store_id: String,
}

impl RemoteHome {
    fn carrier(&self) -> Option<&Arc<dyn crate::messaging::RemoteQueues>> {
        self.carrier.get()
    }
}

/// How a consumer on another node settled deliveries of a remote queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteSettlement {
    Ack,
    Reject { requeue: bool },
}

/// A quorum queue's settlements relayed to its leader's node, as every
/// leader knows the messages: `sent` went to that node, `unsent` did not
/// (their deliveries came over a link that failed since) and go on to the
/// queue's current leader (acks as settlements, rejects as messages given
/// back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteSettled {
    pub sent: Vec<MessageRef>,
    pub unsent: Vec<MessageRef>,
}

/// What a queue shares with its virtual host.
#[derive(Debug, Clone)]
pub(crate) struct QueueHome {
    /// The virtual host's name (for errors).
    pub(crate) vhost: String,
    /// Memory held by queued messages, and its alarm.
    pub(crate) memory: Arc<ResourceMonitor>,
    /// The broker's clock.
    pub(crate) clock: Arc<dyn Clock>,
    /// Settlements of quorum queue messages made here lately, for each
    /// new leader of their queue.
    pub(crate) settled: Arc<RecentSettlements>,
}

/// Where a durable queue keeps its messages: its own logs on this node,
/// or (a quorum queue on a cluster) a replicated partition.
#[derive(Debug)]
pub(crate) enum Store {
    Local(QueueStore),
    Replicated(QuorumStore),
}

impl Store {
    fn append(
        &mut self,
        message: &Message,
        source: Option<&Source>,
    ) -> Result<(u64, Option<PendingAck>), CoreError> {
        match self {
            Store::Local(store) => store.append(message, source),
            Store::Replicated(store) => store.append(message).map(|(id, ack)| (id, Some(ack))),
        }
    }

    fn has_source(&self, source: &Source) -> bool {
        match self {
            Store::Local(store) => store.has_source(source),
            Store::Replicated(_) => false,
        }
    }

    fn settle(&mut self, id: u64) {
        match self {
            Store::Local(store) => store.settle(id),
            Store::Replicated(store) => store.settle(id),
        }
    }

    fn mark_delivered(&mut self, id: u64) {
        match self {
            Store::Local(store) => store.mark_delivered(id),
            // A new leader flags every message it takes over.
            Store::Replicated(_) => {}
        }
    }

    /// A message came back unsettled, `returns` times in all: a quorum
    /// queue keeps the count across restarts (a replicated one for its
    /// next leader too).
    fn mark_returned(&mut self, id: u64, returns: u32) {
        match self {
            Store::Local(store) => store.returned(id, returns),
            Store::Replicated(store) => store.returned(id, returns),
        }
    }

    /// A message died and is held until its dead-letter target confirmed
    /// it: kept across restarts (and for a replicated queue's next
    /// leader), which dead-letter it again.
    fn mark_held(&mut self, id: u64, reason: DeathReason) {
        match self {
            Store::Local(store) => store.held(id, reason),
            Store::Replicated(store) => store.held(id, reason),
        }
    }

    fn flush(&mut self) -> Result<(), CoreError> {
        match self {
            Store::Local(store) => store.flush(),
            Store::Replicated(store) => store.flush(),
        }
    }

    fn has_pending_settlements(&self) -> bool {
        match self {
            Store::Local(store) => store.has_pending_settlements(),
            Store::Replicated(store) => store.has_pending_settlements(),
        }
    }

    fn close(&mut self) -> Result<(), CoreError> {
        match self {
            Store::Local(store) => store.close(),
            Store::Replicated(store) => store.flush(),
        }
    }

    fn size_bytes(&self) -> u64 {
        match self {
            Store::Local(store) => store.size_bytes(),
            Store::Replicated(store) => store.size_bytes(),
        }
    }
}

impl Pager for Store {
    fn read(&self, first_id: u64, count: u64, max_bytes: usize) -> Result<Vec<PagedIn>, CoreError> {
        match self {
            Store::Local(store) => store.read(first_id, count, max_bytes),
            Store::Replicated(store) => store.read(first_id, count, max_bytes),
        }
    }
}

#[derive(Debug)]
struct Inner {
    machine: QueueMachine,
    store: Option<Store>,
}

impl Inner {
    /// A quorum queue instance this node ran and no longer runs.
    fn is_dropped_quorum(&self) -> bool {
        self.machine.deleted && matches!(self.store, Some(Store::Replicated(_)))
    }

    /// Performs the store changes the machine decided on.
    fn write(&mut self, ops: &[StoreOp]) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        for op in ops {
            match *op {
                StoreOp::Settle(id) => store.settle(id),
                StoreOp::Delivered(id) => store.mark_delivered(id),
                StoreOp::Returned(id, returns) => store.mark_returned(id, returns),
                StoreOp::Held(id, reason) => store.mark_held(id, reason),
            }
        }
    }

    /// Writes what the operation settled or delivered (unsynced).
    fn flush(&mut self) -> Result<(), CoreError> {
        match self.store.as_mut() {
            Some(store) => store.flush(),
            None => Ok(()),
        }
    }
}

/// A queue. Shared by the virtual host, the channels consuming from it and
/// the deliveries in flight.
#[derive(Debug)]
pub struct Queue {
    name: String,
    options: QueueOptions,
    args: QueueArgs,
    store_id: Option<String>,
    home: QueueHome,
    inner: Mutex<Inner>,
    traffic: QueueTraffic,
    kind: QueueKind,
}

/// Messages a queue took and handed out since the broker started, for
/// metrics and the admin API's rates.
#[derive(Debug, Default)]
pub struct QueueTraffic {
    /// Messages enqueued.
    pub published: AtomicU64,
    /// Deliveries to consumers and `basic.get`.
    pub delivered: AtomicU64,
    /// Of those, deliveries of messages delivered before.
    pub redelivered: AtomicU64,
    /// Positive acknowledgements.
    pub acked: AtomicU64,
}

impl QueueTraffic {
    pub(crate) fn record_delivery(&self, redelivered: bool) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if redelivered {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A message taken by `basic.get`: its handle, the message, whether it was
/// delivered before, and how many ready messages remain.
pub type GetResult = (u64, Arc<Message>, bool, usize);

impl Queue {
    pub(crate) fn new(
        name: String,
        options: QueueOptions,
        args: QueueArgs,
        store: Option<(String, Store)>,
        home: QueueHome,
        stream: Option<Arc<crate::Topic>>,
    ) -> Arc<Queue> {
        let (store_id, store) = match store {
            Some((id, store)) => (Some(id), Some(store)),
            None => (None, None),
        };
        let kind = match (stream, args.queue_type) {
            (Some(topic), _) => QueueKind::Stream(Stream::new(topic)),
            (None, QueueType::Quorum) => QueueKind::Quorum,
            (None, _) => QueueKind::Classic,
        };
        Queue::build(name, options, args, (store_id, store), home, kind)
    }

    fn build(
        name: String,
        options: QueueOptions,
        args: QueueArgs,
        (store_id, store): (Option<String>, Option<Store>),
        home: QueueHome,
        kind: QueueKind,
    ) -> Arc<Queue> {
        let machine =
            QueueMachine::new(args.clone(), Arc::clone(&home.memory), home.clock.now_ms());
        Arc::new(Queue {
            name,
            options,
            args,
            store_id,
            home,
            inner: Mutex::new(Inner { machine, store }),
            traffic: QueueTraffic::default(),
            kind,
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> i64 {
        self.home.clock.now_ms()
    }

    fn stream(&self) -> Option<&Stream> {
        match &self.kind {
            QueueKind::Stream(stream) => Some(stream),
            QueueKind::Classic | QueueKind::Quorum | QueueKind::Remote(_) => None,
        }
    }

    fn remote(&self) -> Option<&RemoteHome> {
        match &self.kind {
            QueueKind::Remote(home) => Some(home),
            _ => None,
        }
    }

    /// A stand-in for classic queue `name` living on node `home`: its
    /// consumers and settlements go there through `carrier`.
    pub(crate) fn remote_stand_in(
        name: String,
        options: QueueOptions,
        args: QueueArgs,
        home: QueueHome,
        (node, store_id): (i32, String),
        carrier: crate::messaging::vhost::Carrier,
    ) -> Arc<Queue> {
        Queue::build(
            name,
            options,
            args,
            (None, None),
            home,
            QueueKind::Remote(RemoteHome {
                node,
                carrier,
                store_id,
            }),
        )
    }

    /// For a quorum queue this node runs on a cluster: the leader epoch of
    /// its partition it was rebuilt in.
    pub(crate) fn quorum_epoch(&self) -> Option<i32> {
        match self.inner().store.as_ref() {
            Some(Store::Replicated(store)) => Some(store.epoch()),
            _ => None,
        }
    }

    /// Takes the queue's consumers away without cancelling them (a quorum
    /// queue this node stops running: they go on with its next leader).
    pub(crate) fn take_consumers(&self) -> Vec<ConsumerSpec> {
        std::mem::take(&mut self.inner().machine.consumers)
    }

    /// Whether the queue's messages live in a replicated partition (a
    /// quorum queue on a cluster) rather than in its own logs.
    pub(crate) fn is_replicated(&self) -> bool {
        self.quorum_epoch().is_some()
    }

    /// The node a remote queue lives on (`None` for a queue of this node).
    pub fn remote_node(&self) -> Option<i32> {
        self.remote().map(|home| home.node)
    }

    fn unlinked(&self) -> MessagingError {
        MessagingError::NotFound(format!(
            "queue '{}' in vhost '{}' lives on node {}, which this node has no link to yet",
            self.name,
            self.home.vhost,
            self.remote_node().unwrap_or(-1)
        ))
    }

    /// Relays a settlement of a remote queue's deliveries to its home.
    fn settle_remote(&self, home: &RemoteHome, seqs: &[u64], settlement: RemoteSettlement) {
        let Some(carrier) = home.carrier() else {
            return;
        };
        let RemoteSettled { sent, mut unsent } =
            carrier.settle(home.node, &self.home.vhost, &self.name, seqs, settlement);
        if sent.is_empty() && unsent.is_empty() {
            return;
        }
        if let RemoteSettlement::Reject { requeue } = settlement {
            // A former leader's deliveries the current one may hold for
            // this node's clients (`Queue::hold_refs`): it takes them back
            // (requeued) or lets them die. Those sent to a node that
            // still runs the queue are its own.
            if self.is_deleted() {
                unsent.extend(sent);
            }
            if !unsent.is_empty() {
                self.home.settled.release_on(&self.name, requeue, unsent);
            }
            return;
        }
        // A quorum queue's: remembered for its next leader. Not sent
        // (their link failed), or through a stand-in replaced by the time
        // they are remembered (the leader changed; this node may lead the
        // queue now, its new instance past its look at the recent ones),
        // they go on to the current one at once.
        self.home.settled.record(&self.name, &sent, false);
        self.home.settled.record(&self.name, &unsent, true);
        let replaced = self.is_deleted();
        if replaced {
            self.home.settled.keep_stale(&self.name, sent);
        }
        if replaced || !unsent.is_empty() {
            self.home.settled.send_on(&self.name);
        }
    }

    /// Deliveries `seqs` went to a peer whose link closed: back to the
    /// queue (redelivered); for an instance this node no longer runs,
    /// only forgotten (the queue as it runs now has them, or holds them
    /// for the peer's clients as the peer said).
    ///
    /// # Errors
    /// As [`Queue::reject`].
    pub fn requeue_for_closed_link(
        self: &Arc<Self>,
        seqs: &[u64],
    ) -> Result<DeadLetters, MessagingError> {
        if self.forget_if_dropped(seqs).is_some() {
            return Ok(DeadLetters::default());
        }
        self.reject(seqs, true)
    }

    /// For a quorum queue instance this node no longer runs: the messages
    /// this node's own clients still hold of its deliveries, as every
    /// leader knows them (for the queue's next leader to hold for them).
    pub(crate) fn local_client_refs(&self) -> Vec<MessageRef> {
        let inner = self.inner();
        if !inner.is_dropped_quorum() {
            return Vec::new();
        }
        let Some(Store::Replicated(store)) = inner.store.as_ref() else {
            return Vec::new();
        };
        inner
            .machine
            .delivered_to_local_clients()
            .into_iter()
            .filter_map(|id| {
                Some(MessageRef {
                    id,
                    epoch: store.epoch_of(id)?,
                })
            })
            .collect()
    }

    /// For a quorum queue instance this node no longer runs: deliveries
    /// `seqs` taken off it unsettled, as every leader knows their
    /// messages. `None` for any other queue.
    fn forget_if_dropped(&self, seqs: &[u64]) -> Option<Vec<MessageRef>> {
        if self.args.queue_type != QueueType::Quorum {
            return None;
        }
        let mut inner = self.inner();
        if !inner.is_dropped_quorum() {
            return None;
        }
        let epochs: Vec<(u64, Option<i32>)> = {
            let Some(Store::Replicated(store)) = inner.store.as_ref() else {
                return None;
            };
            seqs.iter()
                .filter_map(|seq| inner.machine.unacked.get(seq)?.stored)
                .map(|id| (id, store.epoch_of(id)))
                .collect()
        };
        inner.machine.forget_delivered(seqs);
        Some(
            epochs
                .into_iter()
                .filter_map(|(id, epoch)| Some(MessageRef { id, epoch: epoch? }))
                .collect(),
        )
    }

    /// After a settlement of an instance of a quorum queue this node no
    /// longer runs (`dropped`, read under the lock that settled): what it
    /// settled goes on to the queue's current leader.
    fn send_on_if_dropped(&self, dropped: bool) {
        if dropped {
            self.home.settled.send_on(&self.name);
        }
    }

    /// For a quorum queue this node runs on a cluster: delivery `seq`'s
    /// message as every leader knows it, while unsettled.
    pub fn quorum_ref(&self, seq: u64) -> Option<MessageRef> {
        let inner = self.inner();
        let id = inner.machine.unacked.get(&seq)?.stored?;
        match inner.store.as_ref() {
            Some(Store::Replicated(store)) => {
                store.epoch_of(id).map(|epoch| MessageRef { id, epoch })
            }
            _ => None,
        }
    }

    /// Takes the messages of `refs` this instance of a quorum queue
    /// holds ready off the ready list, as delivered: a former leader's
    /// deliveries this node's or another node's clients still hold, to be
    /// settled through it by their ids (`settle_refs`, `release_refs`)
    /// rather than delivered again. `holder` names who holds them (0: this
    /// node's clients; a peer's link otherwise), for
    /// [`Queue::release_refs`]. Returns the sequence numbers given them.
    pub fn hold_refs(&self, refs: &[MessageRef], holder: u64) -> Vec<u64> {
        let mut effects = Effects::default();
        let mut inner = self.inner();
        let ids = match inner.store.as_ref() {
            Some(Store::Replicated(store)) if !inner.machine.deleted => store.still_held(refs),
            _ => return Vec::new(),
        };
        if ids.is_empty() {
            return Vec::new();
        }
        let held = inner.machine.hold_stored(&ids, holder, &mut effects);
        inner.write(&effects.store);
        held
    }

    /// Gives back the messages of `refs` this instance holds for clients
    /// ([`Queue::hold_refs`]): requeued (flagged redelivered, counted as
    /// returned) or dead. Returns what died.
    ///
    /// # Errors
    /// As [`Queue::reject`].
    pub fn release_refs(
        self: &Arc<Self>,
        refs: &[MessageRef],
        requeue: bool,
    ) -> Result<DeadLetters, MessagingError> {
        let seqs = {
            let mut inner = self.inner();
            let ids = match inner.store.as_ref() {
                Some(Store::Replicated(store)) if !inner.machine.deleted => store.still_held(refs),
                _ => return Ok(DeadLetters::default()),
            };
            inner.machine.take_held(&ids)
        };
        if seqs.is_empty() {
            return Ok(DeadLetters::default());
        }
        self.reject(&seqs, requeue)
    }

    /// `holder`'s clients hold exactly the messages of `refs` of this
    /// instance's former leaders' deliveries: those held for it that are
    /// not among them are given back (requeued), those ready are held.
    /// Empty `refs`: the holder is gone (its link failed). Returns what
    /// died (a requeue over the delivery limit).
    ///
    /// # Errors
    /// As [`Queue::reject`].
    pub fn set_held(
        self: &Arc<Self>,
        holder: u64,
        refs: &[MessageRef],
    ) -> Result<DeadLetters, MessagingError> {
        // Held first: what is given back below is dispatched at once,
        // and must not be one of these.
        if !refs.is_empty() {
            self.hold_refs(refs, holder);
        }
        let released = {
            let mut inner = self.inner();
            let keep = match inner.store.as_ref() {
                Some(Store::Replicated(store)) if !inner.machine.deleted => store.still_held(refs),
                _ => return Ok(DeadLetters::default()),
            };
            inner.machine.take_held_by(holder, &keep)
        };
        if released.is_empty() {
            return Ok(DeadLetters::default());
        }
        self.reject(&released, true)
    }

    /// Stops this instance of a quorum queue (this node no longer runs
    /// it): its consumers are taken (returned), its ready messages go, and
    /// the deliveries its clients hold stay known for their settlements
    /// to reach the queue as it runs now.
    pub(crate) fn retire(&self) -> Vec<ConsumerSpec> {
        self.inner().machine.retire()
    }

    /// Dispatches nothing to consumers for `wait` (the maintenance pass
    /// dispatches after it).
    pub(crate) fn hold_deliveries(&self, wait: std::time::Duration) {
        let until = self
            .now()
            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        self.inner().machine.dispatch_after(until);
    }

    /// Settles the messages of `refs` this instance of a quorum queue
    /// still holds (settled through a former leader, which may not have
    /// replicated it): ready or delivered, they go. Returns how many.
    pub fn settle_refs(&self, refs: &[MessageRef]) -> usize {
        let mut effects = Effects::default();
        let mut inner = self.inner();
        let ids = match inner.store.as_ref() {
            Some(Store::Replicated(store)) => store.still_held(refs),
            _ => return 0,
        };
        let settled = if ids.is_empty() {
            0
        } else {
            inner.machine.settle_stored(&ids, &mut effects)
        };
        inner.write(&effects.store);
        if let Err(error) = inner.flush() {
            tracing::warn!(queue = %self.name, %error, "cannot write settlements made through a former leader");
        }
        settled
    }

    /// What the dead-letter exchange gets of `letters` (nothing without one).
    fn dead_letters(&self, letters: Vec<DeadLetter>) -> DeadLetters {
        match &self.args.dead_letter_exchange {
            Some(exchange) if !letters.is_empty() => DeadLetters {
                queue: self.name.clone(),
                store_id: self.store_id.clone(),
                exchange: exchange.clone(),
                routing_key: self.args.dead_letter_routing_key.clone(),
                letters,
            },
            _ => DeadLetters::default(),
        }
    }

    /// What went in and out of this queue.
    pub fn traffic(&self) -> &QueueTraffic {
        &self.traffic
    }

    /// Up to `count` ready messages in delivery order, with their redelivered
    /// flags, without taking them. For a stream: the oldest records its
    /// topic keeps, as a consumer starting at `first` would get them.
    /// Blocking when it reads from disk.
    pub fn peek(&self, count: usize) -> Vec<(Arc<Message>, bool)> {
        if let Some(stream) = self.stream() {
            return stream
                .peek(count)
                .into_iter()
                .map(|message| (Arc::new(message), false))
                .collect();
        }
        let mut inner = self.inner();
        let mut effects = Effects::default();
        let Inner { machine, store } = &mut *inner;
        machine.page_in(
            store.as_ref().map(|s| s as &dyn Pager),
            &self.name,
            &mut effects,
        );
        inner.write(&effects.store);
        let mut out: Vec<(Arc<Message>, bool)> = inner
            .machine
            .ready
            .peek(count)
            .into_iter()
            .map(|entry| (Arc::clone(&entry.message), entry.redelivered))
            .collect();
        // Behind the head, read what waits on disk without moving it.
        for paged in &inner.machine.ready.paged {
            if out.len() >= count {
                break;
            }
            match paged {
                ready::Paged::Entry(entry) => {
                    out.push((Arc::clone(&entry.message), entry.redelivered));
                }
                ready::Paged::Run(run) => {
                    let Some(store) = inner.store.as_ref() else {
                        break;
                    };
                    let want = run.count.min((count - out.len()) as u64);
                    match store.read(run.first_id, want, machine::PAGE_IN_BYTES) {
                        Ok(read) => out.extend(read.into_iter().filter_map(|paged| {
                            let redelivered = run.redelivered || paged.delivered;
                            paged.message.map(|m| (Arc::new(m), redelivered))
                        })),
                        Err(error) => {
                            tracing::warn!(queue = %self.name, %error, "cannot read queued messages back from disk");
                            break;
                        }
                    }
                }
            }
        }
        out.truncate(count);
        out
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The virtual host it belongs to.
    pub fn vhost(&self) -> &str {
        &self.home.vhost
    }

    /// How it was declared.
    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    /// Its arguments as Sluice reads them.
    pub fn args(&self) -> &QueueArgs {
        &self.args
    }

    /// Durable queues' storage id (their logs are named after it).
    pub(crate) fn store_id(&self) -> Option<&str> {
        self.store_id.as_deref()
    }

    /// Which queue of its name this is (a queue deleted and declared again
    /// under the name is another): its store id, or, for a stand-in, the
    /// store id of the queue it stands in for. Empty for a transient one.
    pub fn instance_id(&self) -> &str {
        match &self.kind {
            QueueKind::Remote(remote) => &remote.store_id,
            _ => self.store_id.as_deref().unwrap_or_default(),
        }
    }

    /// What keeps its messages.
    pub fn queue_type(&self) -> QueueType {
        match self.kind {
            QueueKind::Classic => QueueType::Classic,
            QueueKind::Quorum => QueueType::Quorum,
            QueueKind::Stream(_) => QueueType::Stream,
            QueueKind::Remote(_) => self.args.queue_type,
        }
    }

    /// For a stream queue, the topic it is a view of.
    pub fn stream_topic(&self) -> Option<&Arc<crate::Topic>> {
        self.stream().map(Stream::topic)
    }

    /// Ready messages (for a stream: the records its topic keeps).
    pub fn message_count(&self) -> usize {
        match self.stream() {
            Some(stream) => stream.message_count(),
            None => self.inner().machine.ready.len,
        }
    }

    /// Ready messages kept on disk only, read back as consumers reach them.
    pub fn paged_out_count(&self) -> u64 {
        self.inner()
            .machine
            .ready
            .paged
            .iter()
            .map(|paged| match paged {
                ready::Paged::Run(run) => run.count,
                ready::Paged::Entry(_) => 0,
            })
            .sum()
    }

    /// Delivered and not yet settled.
    pub fn unacked_count(&self) -> usize {
        self.inner().machine.unacked.len()
    }

    /// Consumers attached.
    pub fn consumer_count(&self) -> usize {
        match self.stream() {
            Some(stream) => stream.consumer_count(),
            None => self.inner().machine.consumers.len(),
        }
    }

    fn not_for_streams(&self, operation: &str) -> MessagingError {
        MessagingError::NotImplemented(format!(
            "{operation} is not supported by stream queue '{}' in vhost '{}'",
            self.name, self.home.vhost
        ))
    }

    fn not_found(&self) -> MessagingError {
        MessagingError::NotFound(format!(
            "no queue '{}' in vhost '{}'",
            self.name, self.home.vhost
        ))
    }

    /// Bytes the queue's logs take on disk (0 for transient queues).
    pub fn disk_bytes(&self) -> u64 {
        self.inner().store.as_ref().map_or(0, Store::size_bytes)
    }

    /// Whether the queue has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.inner().machine.deleted
    }

    /// Body bytes of ready messages this queue keeps in memory before
    /// newer persistent ones wait on disk only.
    pub(crate) fn memory_budget(args: &QueueArgs, memory: &ResourceMonitor) -> u64 {
        QueueMachine::memory_budget(args, memory)
    }

    /// Puts recovered messages back (on open), in id order: those read into
    /// memory, then those left on disk.
    pub(crate) fn restore(&self, messages: Vec<RecoveredMessage>, paged: Vec<RecoveredRun>) {
        self.inner().machine.restore(messages, paged);
    }

    /// Adds a message routed here.
    ///
    /// # Errors
    /// Storage failures of a durable queue.
    pub fn enqueue(
        self: &Arc<Self>,
        message: Arc<Message>,
    ) -> Result<EnqueueOutcome, MessagingError> {
        self.enqueue_from(message, None)
    }

    /// A stream's: adds `message` to `writes` (a transaction's) instead of
    /// writing it; `false` for any other queue.
    ///
    /// # Errors
    /// The batch encoder's refusal.
    pub(crate) fn add_to_transaction(
        &self,
        message: &Message,
        writes: &mut crate::transactions::TxnWrites,
    ) -> Result<bool, MessagingError> {
        let Some(stream) = self.stream().filter(|_| !self.is_deleted()) else {
            return Ok(false);
        };
        let (partition, batch) = stream.batch_of(message)?;
        writes.add(Arc::clone(stream.topic()), partition, batch);
        self.traffic.published.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// The node leading the stream partition `message` goes to (`None`
    /// for other queues).
    pub(crate) fn stream_leader(&self, message: &Message) -> Option<i32> {
        self.stream().and_then(|stream| stream.leader_of(message))
    }

    /// As [`Queue::enqueue`], for a message forwarded from a topic: a
    /// durable queue that already stored `source` (before a crash the
    /// forwarder's position did not survive) keeps the one copy.
    ///
    /// # Errors
    /// As [`Queue::enqueue`].
    pub fn enqueue_from(
        self: &Arc<Self>,
        message: Arc<Message>,
        source: Option<&Source>,
    ) -> Result<EnqueueOutcome, MessagingError> {
        if let Some(stream) = self.stream() {
            if self.is_deleted() {
                return Ok(EnqueueOutcome {
                    gone: true,
                    ..EnqueueOutcome::default()
                });
            }
            let sync = stream.append(&message)?;
            self.traffic.published.fetch_add(1, Ordering::Relaxed);
            return Ok(EnqueueOutcome {
                sync,
                ..EnqueueOutcome::default()
            });
        }
        let now = self.now();
        let quorum = self.queue_type() == QueueType::Quorum;
        let mut effects = Effects::default();
        let mut outcome = EnqueueOutcome::default();
        let accepted = {
            let mut inner = self.inner();
            if inner.machine.deleted {
                // A quorum queue dropped as its leadership moved (or
                // deleted): the publisher is nacked and sends again,
                // reaching the queue as it is now, never acked for a
                // message nobody stored.
                if quorum {
                    outcome.rejected = true;
                } else {
                    outcome.gone = true;
                }
                return Ok(outcome);
            }
            if let (Some(source), Some(store), true) =
                (source, inner.store.as_ref(), message.persistent())
                && store.has_source(source)
            {
                return Ok(outcome);
            }
            let Inner { machine, store } = &mut *inner;
            let admission = machine.admit(
                &message,
                now,
                store.as_ref().map(|s| s as &dyn Pager),
                &self.name,
                &mut effects,
            );
            inner.write(&effects.store);
            match admission {
                Admission::Refuse { rejected } => {
                    outcome.rejected = rejected;
                    false
                }
                Admission::Accept { expires_at } => {
                    // A quorum queue stores (on a cluster: replicates)
                    // every message, as RabbitMQ's keep transient ones too.
                    let stored = match (inner.store.as_mut(), message.persistent()) {
                        (Some(store), persistent) if persistent || quorum => {
                            match store.append(&message, source) {
                                Ok((id, sync)) => {
                                    outcome.sync = sync;
                                    Some(Ok(id))
                                }
                                // A quorum queue that lost its lead or its
                                // quorum: the publisher is nacked.
                                Err(
                                    error @ (CoreError::NotLeader { .. }
                                    | CoreError::NotEnoughReplicas { .. }),
                                ) if matches!(store, Store::Replicated(_)) => {
                                    tracing::debug!(queue = %self.name, %error, "a quorum queue refused a message");
                                    Some(Err(()))
                                }
                                Err(error) => return Err(error.into()),
                            }
                        }
                        _ => None,
                    };
                    match stored {
                        Some(Err(())) => {
                            outcome.rejected = true;
                            false
                        }
                        stored => {
                            inner
                                .machine
                                .push(message, stored.and_then(Result::ok), expires_at);
                            self.traffic.published.fetch_add(1, Ordering::Relaxed);
                            true
                        }
                    }
                }
            }
        };
        outcome.dead = self.dead_letters(effects.dead);
        if accepted {
            outcome.dead.extend(self.dispatch());
        }
        Ok(outcome)
    }

    /// Pushes ready messages to consumers with credit, round robin among
    /// the highest-priority consumers that can take one.
    pub fn dispatch(self: &Arc<Self>) -> DeadLetters {
        if self.remote().is_some() {
            // Its home dispatches.
            return DeadLetters::default();
        }
        let now = self.now();
        let mut effects = Effects::default();
        let quorum = self.queue_type() == QueueType::Quorum;
        {
            let mut inner = self.inner();
            let Inner { machine, store } = &mut *inner;
            let replicated = match store.as_ref() {
                Some(Store::Replicated(replicated)) => Some(replicated),
                _ => None,
            };
            machine.dispatch(
                now,
                store.as_ref().map(|s| s as &dyn Pager),
                &self.name,
                &mut effects,
                &mut |consumer, entry| {
                    let delivery = Delivery {
                        quorum: replicated.zip(entry.stored).and_then(|(store, id)| {
                            store.epoch_of(id).map(|epoch| MessageRef { id, epoch })
                        }),
                        channel: consumer.channel,
                        queue: Arc::clone(self),
                        seq: entry.seq,
                        consumer_tag: Arc::clone(&consumer.tag),
                        // RabbitMQ's quorum queues count a consumer's
                        // deliveries once the message came back.
                        message: if quorum && entry.returns > 0 {
                            machine::with_delivery_count(&entry.message, entry.returns)
                        } else {
                            Arc::clone(&entry.message)
                        },
                        redelivered: entry.redelivered,
                    };
                    let sent = consumer.sink.send(ConsumerEvent::Deliver(delivery)).is_ok();
                    if sent {
                        self.traffic.record_delivery(entry.redelivered);
                    }
                    sent
                },
            );
            inner.write(&effects.store);
            // Delivery marks alone wait for the next settlement or the
            // maintenance tick: writing them per delivery doubled the
            // writes of a busy queue.
            if inner
                .store
                .as_ref()
                .is_some_and(Store::has_pending_settlements)
                && let Err(error) = inner.flush()
            {
                tracing::warn!(queue = %self.name, %error, "cannot write settlements");
            }
        }
        self.dead_letters(effects.dead)
    }

    /// `basic.get`: takes the next ready message, if any, with the number of
    /// messages left.
    ///
    /// # Errors
    /// Storage failures when `no_ack` settles a persistent message.
    pub fn get(
        self: &Arc<Self>,
        no_ack: bool,
    ) -> Result<(Option<GetResult>, DeadLetters), MessagingError> {
        if self.stream().is_some() {
            return Err(self.not_for_streams("basic.get"));
        }
        if let Some(home) = self.remote() {
            let carrier = home.carrier().ok_or_else(|| self.unlinked())?;
            let taken = carrier
                .get(home.node, &self.home.vhost, self, no_ack)
                .map_err(|error| match (self.queue_type(), error) {
                    // A quorum queue whose leader is changing (the node
                    // asked does not run it yet, or no longer): the
                    // channel's NOT_FOUND, which a client retries, rather
                    // than the connection's INTERNAL_ERROR.
                    (QueueType::Quorum, MessagingError::Core(CoreError::Internal { reason })) => {
                        MessagingError::NotFound(format!(
                            "quorum queue '{}' in vhost '{}' is changing leader ({reason})",
                            self.name, self.home.vhost
                        ))
                    }
                    (_, error) => error,
                })?;
            return Ok((taken, DeadLetters::default()));
        }
        let now = self.now();
        let mut effects = Effects::default();
        let result = {
            let mut inner = self.inner();
            let Inner { machine, store } = &mut *inner;
            let taken = machine.get(
                no_ack,
                now,
                store.as_ref().map(|s| s as &dyn Pager),
                &self.name,
                &mut effects,
            );
            inner.write(&effects.store);
            inner.flush()?;
            taken.map(|(seq, message, redelivered)| {
                self.traffic.record_delivery(redelivered);
                (seq, message, redelivered, inner.machine.ready.len)
            })
        };
        Ok((result, self.dead_letters(effects.dead)))
    }

    /// Settles deliveries positively; what is written survives a crash of
    /// the broker process once this returns.
    ///
    /// # Errors
    /// Storage failures.
    pub fn ack(&self, seqs: &[u64]) -> Result<(), MessagingError> {
        if let Some(home) = self.remote() {
            self.settle_remote(home, seqs, RemoteSettlement::Ack);
            return Ok(());
        }
        if self.stream().is_some() {
            // Acknowledging a stream delivery only returns its credit.
            return Ok(());
        }
        if let Some(refs) = self.forget_if_dropped(seqs) {
            // Settled through the queue as it runs now (here again, or
            // on its leader's node), which rebuilt them or holds them.
            self.traffic
                .acked
                .fetch_add(refs.len() as u64, Ordering::Relaxed);
            self.home.settled.record(&self.name, &refs, true);
            self.home.settled.send_on(&self.name);
            return Ok(());
        }
        let mut effects = Effects::default();
        let mut inner = self.inner();
        let acked = inner.machine.ack(seqs, &mut effects);
        self.traffic.acked.fetch_add(acked, Ordering::Relaxed);
        inner.write(&effects.store);
        inner.flush()?;
        let dropped = inner.is_dropped_quorum();
        drop(inner);
        self.send_on_if_dropped(dropped);
        Ok(())
    }

    /// Settles deliveries negatively: back to the queue (marked redelivered)
    /// or, without requeue, dead-lettered or dropped.
    ///
    /// # Errors
    /// Storage failures.
    pub fn reject(
        self: &Arc<Self>,
        seqs: &[u64],
        requeue: bool,
    ) -> Result<DeadLetters, MessagingError> {
        if self.stream().is_some() {
            return Ok(DeadLetters::default());
        }
        if let Some(home) = self.remote() {
            // The home dead-letters what dies.
            self.settle_remote(home, seqs, RemoteSettlement::Reject { requeue });
            return Ok(DeadLetters::default());
        }
        let mut effects = Effects::default();
        if let Some(refs) = self.forget_if_dropped(seqs) {
            // The queue as it runs now (here again, or on its leader's
            // node) rebuilt these as ready or holds them for this node's
            // clients: it takes them back, or lets them die.
            self.home.settled.release_on(&self.name, requeue, refs);
            return Ok(DeadLetters::default());
        }
        let dropped = {
            let mut inner = self.inner();
            inner.machine.reject(seqs, requeue, &mut effects);
            inner.write(&effects.store);
            inner.flush()?;
            inner.is_dropped_quorum()
        };
        if !requeue {
            self.send_on_if_dropped(dropped);
        }
        let mut dead = self.dead_letters(effects.dead);
        if requeue {
            dead.extend(self.dispatch());
        }
        Ok(dead)
    }

    /// Registers a consumer.
    ///
    /// # Errors
    /// [`MessagingError::AccessRefused`] when an exclusive consumer holds the
    /// queue, or an exclusive one is asked for while others consume.
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: ConsumerSpec,
    ) -> Result<DeadLetters, MessagingError> {
        if let Some(home) = self.remote() {
            let carrier = home.carrier().ok_or_else(|| self.unlinked())?;
            carrier.consume(home.node, &self.home.vhost, self, consumer)?;
            return Ok(DeadLetters::default());
        }
        if let Some(stream) = self.stream() {
            if self.is_deleted() {
                return Err(self.not_found());
            }
            let start = consumer.stream_start.unwrap_or(StreamStart::Next);
            stream.add_consumer(self, consumer, start)?;
            return Ok(DeadLetters::default());
        }
        {
            let now = self.now();
            let mut inner = self.inner();
            if inner.machine.deleted {
                return Err(self.not_found());
            }
            if !inner.machine.add_consumer(consumer, now) {
                return Err(MessagingError::AccessRefused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.home.vhost
                )));
            }
        }
        Ok(self.dispatch())
    }

    /// Removes a consumer; true when the queue is auto-delete and this was
    /// its last consumer (the caller deletes it).
    pub fn remove_consumer(self: &Arc<Self>, channel: u64, tag: &str) -> (bool, DeadLetters) {
        if let Some(home) = self.remote() {
            // Its home deletes an auto-delete queue left without consumers.
            if let Some(carrier) = home.carrier() {
                carrier.cancel(home.node, channel, tag);
            }
            return (false, DeadLetters::default());
        }
        if let Some(stream) = self.stream() {
            stream.remove_consumer(channel, tag);
            return (false, DeadLetters::default());
        }
        let now = self.now();
        let last = self.inner().machine.remove_consumer(channel, tag, now);
        // With a single active consumer, the next one takes over.
        let dead = self.dispatch();
        (last && self.options.auto_delete, dead)
    }

    /// Requeues deliveries of a closed channel (or `basic.recover`).
    ///
    /// # Errors
    /// Storage failures.
    pub fn requeue(self: &Arc<Self>, seqs: &[u64]) -> Result<DeadLetters, MessagingError> {
        self.reject(seqs, true)
    }

    /// `queue.purge`: drops every ready message; returns how many.
    ///
    /// # Errors
    /// Storage failures.
    pub fn purge(&self) -> Result<usize, MessagingError> {
        if self.stream().is_some() {
            return Err(self.not_for_streams("queue.purge"));
        }
        if let Some(home) = self.remote() {
            let carrier = home.carrier().ok_or_else(|| self.unlinked())?;
            return carrier.purge(home.node, &self.home.vhost, &self.name);
        }
        let mut effects = Effects::default();
        let mut inner = self.inner();
        let purged = inner.machine.purge(&mut effects);
        inner.write(&effects.store);
        inner.flush()?;
        Ok(purged)
    }

    /// Marks the queue deleted and tells its consumers; returns the number
    /// of ready messages it held.
    pub(crate) fn mark_deleted(&self) -> usize {
        if let Some(stream) = self.stream() {
            stream.stop();
        }
        let mut inner = self.inner();
        let (consumers, count) = inner.machine.delete();
        for consumer in consumers {
            let _ = consumer.sink.send(ConsumerEvent::Cancelled {
                channel: consumer.channel,
                consumer_tag: consumer.tag,
            });
        }
        inner.store = None;
        count
    }

    /// Writes pending settlements, expires heads, and tells whether an
    /// `x-expires` queue has been unused long enough to be deleted.
    pub(crate) fn maintain(self: &Arc<Self>) -> (bool, DeadLetters) {
        if let Some(stream) = self.stream() {
            stream.flush();
            return (false, DeadLetters::default());
        }
        if let Err(error) = self.inner().flush() {
            tracing::warn!(queue = %self.name, %error, "cannot write settlements");
        }
        let mut dead = self.dispatch();
        let mut effects = Effects::default();
        self.inner().machine.retry_held(self.now(), &mut effects);
        dead.extend(self.dead_letters(effects.dead));
        let unused = self.inner().machine.unused_too_long(self.now());
        (unused, dead)
    }

    /// Dead letters held for their target (`at-least-once`) that it
    /// confirmed: settled.
    pub fn settle_held(&self, ids: &[u64]) {
        let mut effects = Effects::default();
        let mut inner = self.inner();
        inner.machine.settle_held(ids, &mut effects);
        inner.write(&effects.store);
        if let Err(error) = inner.flush() {
            tracing::warn!(queue = %self.name, %error, "cannot write settlements");
        }
    }

    /// Held dead letters whose targets' confirms are awaited: not sent
    /// again meanwhile.
    pub(crate) fn held_in_flight(&self, ids: &[u64]) {
        self.inner().machine.held_in_flight(ids);
    }

    /// Held dead letters their targets did not confirm: sent again later.
    pub(crate) fn release_held(&self, ids: &[u64]) {
        let now = self.now();
        self.inner().machine.release_held(ids, now);
    }

    /// Dead letters held until their target confirms them.
    pub fn held_dead_count(&self) -> usize {
        self.inner().machine.held_count()
    }

    /// Marks the queue as used (redeclared), for `x-expires`.
    pub(crate) fn touch(&self) {
        let now = self.now();
        self.inner().machine.touch(now);
    }

    /// Whether an exclusive queue may be used by `connection`.
    pub fn usable_by(&self, connection: u64) -> bool {
        self.options
            .exclusive_owner
            .is_none_or(|owner| owner == connection)
    }

    /// Writes what is pending and marks the store closed cleanly (at
    /// shutdown, once no connection can reach the queue).
    pub(crate) fn close_store(&self) -> Result<(), CoreError> {
        if let Some(store) = self.inner().store.as_mut() {
            store.close()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::alarms::ResourceMonitor;

    fn queue(queue_type: QueueType) -> Arc<Queue> {
        Queue::new(
            "q".into(),
            QueueOptions {
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: amq_protocol::types::FieldTable::default(),
            },
            QueueArgs {
                queue_type,
                ..QueueArgs::default()
            },
            None,
            QueueHome {
                vhost: "/".into(),
                memory: ResourceMonitor::new(u64::MAX),
                clock: Arc::new(sluice_types::SystemClock),
                settled: Arc::default(),
            },
            None,
        )
    }

    fn message() -> Arc<Message> {
        Arc::new(Message {
            exchange: "".into(),
            routing_key: "q".into(),
            properties: amq_protocol::protocol::BasicProperties::default(),
            body: bytes::Bytes::from_static(b"m"),
        })
    }

    /// A quorum queue instance dropped (its leadership moved) refuses
    /// what still reaches it, so the publisher is nacked and sends again;
    /// a deleted classic queue takes it as unroutable, as RabbitMQ does.
    #[test]
    fn a_dropped_quorum_instance_nacks_what_reaches_it() {
        let quorum = queue(QueueType::Quorum);
        quorum.mark_deleted();
        let outcome = quorum.enqueue(message()).expect("enqueue");
        assert!(outcome.rejected && !outcome.gone);

        let classic = queue(QueueType::Classic);
        classic.mark_deleted();
        let outcome = classic.enqueue(message()).expect("enqueue");
        assert!(!outcome.rejected && outcome.gone);
    }
}
