//! The queue state machine: what a queue holds (ready messages, deliveries
//! not yet settled, consumers) and every decision about it (who gets the
//! next message, what expires, what overflows, what is dead-lettered),
//! taking the time as an argument and doing no I/O. What it decides that
//! touches the world comes back as [`Effects`] (settle or mark a stored
//! message, dead-letter a message) for the runtime in `mod.rs` to perform;
//! a delivery goes through the `deliver` callback the runtime passes, which
//! says whether the consumer's channel took it.
//!
//! Reading messages back from disk is the one thing it asks of the world,
//! through [`Pager`]: a read, not a change.

use std::collections::HashMap;
use std::sync::Arc;

use super::ConsumerSpec;
use super::args::{Overflow, QueueArgs, QueueType};
use super::ready::{Entry, Paged, PagedRun, Ready};
use crate::CoreError;
use crate::messaging::alarms::{MemoryCharge, ResourceMonitor};
use crate::messaging::message::Message;
use crate::messaging::queue_store::{PagedIn, QueueStore, RecoveredMessage, RecoveredRun};

/// Bytes a queue reads back from disk at a time when its head runs dry.
pub(super) const PAGE_IN_BYTES: usize = 1 << 20;

/// Unacknowledged deliveries above which a queue reads nothing back from
/// disk while the memory alarm is raised.
const PAGE_IN_UNACKED_CAP: usize = 256;

/// Pages an expiry pass may read back (the rest waits for the next tick).
const EXPIRE_PAGE_INS: usize = 16;

/// Why a message left a queue other than by acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
    /// Returned more often than a quorum queue's `x-delivery-limit`.
    DeliveryLimit,
}

impl DeathReason {
    /// The reason as one byte (a quorum queue's held dead letters).
    pub(crate) fn code(self) -> u8 {
        match self {
            DeathReason::Rejected => 0,
            DeathReason::Expired => 1,
            DeathReason::MaxLen => 2,
            DeathReason::DeliveryLimit => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> DeathReason {
        match code {
            1 => DeathReason::Expired,
            2 => DeathReason::MaxLen,
            3 => DeathReason::DeliveryLimit,
            _ => DeathReason::Rejected,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message that died in a queue, for its dead-letter exchange.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) message: Arc<Message>,
    pub(crate) reason: DeathReason,
    /// Its id, when the queue keeps it until its dead-letter target has
    /// it (a quorum queue's `at-least-once` strategy).
    pub(crate) held: Option<u64>,
}

/// Milliseconds a held dead letter waits before it is dead-lettered again
/// once its last attempt failed (no route, refused, or unconfirmed).
pub(crate) const HELD_RETRY_MS: i64 = 2_000;

/// A dead letter a quorum queue keeps until its target confirmed it. It
/// counts against the queue's length limits and memory, as RabbitMQ
/// counts its discarded-but-unconfirmed messages.
#[derive(Debug)]
struct Held {
    message: Arc<Message>,
    reason: DeathReason,
    /// When it was last dead-lettered (`None`: just now, not yet seen by
    /// a maintenance pass).
    sent_at: Option<i64>,
    /// Its targets' confirms are awaited: not sent again meanwhile.
    in_flight: bool,
    _charge: MemoryCharge,
}

/// A change to a queue's store the machine decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    /// The stored message is settled (acknowledged, expired, dropped).
    Settle(u64),
    /// The stored message was delivered (redelivered after a crash).
    Delivered(u64),
    /// The stored message came back unsettled, this many times in all (a
    /// quorum queue's delivery count).
    Returned(u64, u32),
    /// The stored message died and is kept until its dead-letter target
    /// confirmed it (`at-least-once`).
    Held(u64, DeathReason),
}

/// What an operation decided that the runtime performs, in order.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Messages for the dead-letter exchange.
    pub(crate) dead: Vec<DeadLetter>,
    /// Changes to the store.
    pub(crate) store: Vec<StoreOp>,
}

impl Effects {
    fn dead(&mut self, message: Arc<Message>, reason: DeathReason) {
        self.dead.push(DeadLetter {
            message,
            reason,
            held: None,
        });
    }

    fn settle(&mut self, entry: &Entry) {
        if let Some(id) = entry.stored {
            self.store.push(StoreOp::Settle(id));
        }
    }

    fn delivered(&mut self, entry: &Entry) {
        if let Some(id) = entry.stored {
            self.store.push(StoreOp::Delivered(id));
        }
    }

    fn returned(&mut self, entry: &Entry) {
        if let Some(id) = entry.stored {
            self.store.push(StoreOp::Returned(id, entry.returns));
        }
    }
}

/// A quorum queue's message as it is handed out: with `x-delivery-count`,
/// the times it came back unsettled (a long, as RabbitMQ writes it). The
/// stored message keeps its headers as published.
pub(super) fn with_delivery_count(message: &Arc<Message>, returns: u32) -> Arc<Message> {
    let mut headers = message.headers().cloned().unwrap_or_default();
    headers.insert(
        "x-delivery-count".into(),
        amq_protocol::types::AMQPValue::LongLongInt(i64::from(returns)),
    );
    Arc::new(Message {
        exchange: message.exchange.clone(),
        routing_key: message.routing_key.clone(),
        properties: message.properties.clone().with_headers(headers),
        body: message.body.clone(),
    })
}

/// Reads messages back from where a durable queue keeps them.
pub(crate) trait Pager {
    /// Up to `count` messages from id `first_id`, about `max_bytes` of them.
    ///
    /// # Errors
    /// Storage failures (the messages stay where they are).
    fn read(&self, first_id: u64, count: u64, max_bytes: usize) -> Result<Vec<PagedIn>, CoreError>;
}

impl Pager for QueueStore {
    fn read(&self, first_id: u64, count: u64, max_bytes: usize) -> Result<Vec<PagedIn>, CoreError> {
        QueueStore::read(self, first_id, count, max_bytes)
    }
}

/// Whether a message may join the queue, decided before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// It joins, expiring at the time given.
    Accept { expires_at: Option<i64> },
    /// It does not (expired on arrival, or over a limit); `rejected` when
    /// the publisher is to be told (`reject-publish`).
    Refuse { rejected: bool },
}

/// One queue's state and the rules it follows.
#[derive(Debug)]
pub(crate) struct QueueMachine {
    args: QueueArgs,
    memory: Arc<ResourceMonitor>,
    pub(super) ready: Ready,
    pub(super) unacked: HashMap<u64, Entry>,
    pub(super) consumers: Vec<ConsumerSpec>,
    next_consumer: usize,
    next_seq: u64,
    /// Wall-clock milliseconds of the last use, for `x-expires`.
    last_used: i64,
    pub(super) deleted: bool,
    /// Dead letters kept until their target confirmed them, by id.
    held: std::collections::BTreeMap<u64, Held>,
    /// Body bytes of the held dead letters.
    held_bytes: u64,
    /// Wall-clock milliseconds before which nothing is dispatched (a
    /// quorum queue's new leader waits for settlements made through the
    /// former one).
    dispatch_after: i64,
    /// Deliveries taken by [`QueueMachine::hold_stored`] (a former
    /// leader's, held by clients): sequence number to who holds them.
    held_for_clients: HashMap<u64, u64>,
}

/// Hands each queue instance its own range of delivery sequence numbers:
/// a settlement meant for an instance that is gone (a quorum queue led
/// again on this node, its deliveries settled late over another node's
/// link) never names a delivery of the next one.
static SEQ_RANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Delivery sequence numbers per instance.
const SEQ_RANGE: u64 = 1 << 32;

impl QueueMachine {
    pub(crate) fn new(args: QueueArgs, memory: Arc<ResourceMonitor>, now: i64) -> QueueMachine {
        QueueMachine {
            args,
            memory,
            ready: Ready::default(),
            unacked: HashMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            next_seq: SEQ_RANGES
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_mul(SEQ_RANGE),
            last_used: now,
            deleted: false,
            held: std::collections::BTreeMap::new(),
            held_bytes: 0,
            dispatch_after: 0,
            held_for_clients: HashMap::new(),
        }
    }

    /// Dispatches nothing before wall-clock millisecond `at`.
    pub(crate) fn dispatch_after(&mut self, at: i64) {
        self.dispatch_after = at;
    }

    /// Keeps a dead letter until its target confirmed it.
    fn hold(
        &mut self,
        id: u64,
        message: Arc<Message>,
        reason: DeathReason,
        sent_at: Option<i64>,
        charge: MemoryCharge,
    ) {
        self.held_bytes += message.body_size() as u64;
        if let Some(before) = self.held.insert(
            id,
            Held {
                message,
                reason,
                sent_at,
                in_flight: false,
                _charge: charge,
            },
        ) {
            self.held_bytes = self
                .held_bytes
                .saturating_sub(before.message.body_size() as u64);
        }
    }

    fn unhold(&mut self, id: u64) -> bool {
        match self.held.remove(&id) {
            Some(held) => {
                self.held_bytes = self
                    .held_bytes
                    .saturating_sub(held.message.body_size() as u64);
                true
            }
            None => false,
        }
    }

    /// Whether dead letters are kept until their target confirmed them:
    /// a quorum queue with `x-dead-letter-strategy` at-least-once, a
    /// dead-letter exchange and `x-overflow` reject-publish (RabbitMQ
    /// falls back to at-most-once otherwise).
    fn holds_dead(&self) -> bool {
        self.args.queue_type == QueueType::Quorum
            && self.args.dead_letter_strategy == super::args::DeadLetterStrategy::AtLeastOnce
            && self.args.dead_letter_exchange.is_some()
            && self.args.overflow == Overflow::RejectPublish
    }

    /// A message dies: settled and dead-lettered, or (a stored one, at
    /// least once) kept until its dead-letter target confirmed it.
    fn kill(&mut self, entry: Entry, reason: DeathReason, effects: &mut Effects) {
        match entry.stored {
            Some(id) if self.holds_dead() => {
                effects.store.push(StoreOp::Held(id, reason));
                effects.dead.push(DeadLetter {
                    message: Arc::clone(&entry.message),
                    reason,
                    held: Some(id),
                });
                self.hold(id, entry.message, reason, None, entry._charge);
            }
            _ => {
                effects.settle(&entry);
                effects.dead(entry.message, reason);
            }
        }
    }

    /// Held dead letters whose target confirmed them: settled.
    pub(crate) fn settle_held(&mut self, ids: &[u64], effects: &mut Effects) {
        for id in ids {
            if self.unhold(*id) {
                effects.store.push(StoreOp::Settle(*id));
            }
        }
    }

    /// Held dead letters whose targets' confirms are awaited: not sent
    /// again until [`QueueMachine::release_held`].
    pub(crate) fn held_in_flight(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(held) = self.held.get_mut(id) {
                held.in_flight = true;
            }
        }
    }

    /// Held dead letters a target did not confirm: sent again
    /// [`HELD_RETRY_MS`] from `now`.
    pub(crate) fn release_held(&mut self, ids: &[u64], now: i64) {
        for id in ids {
            if let Some(held) = self.held.get_mut(id) {
                held.in_flight = false;
                held.sent_at = Some(now);
            }
        }
    }

    /// Held dead letters whose last attempt failed [`HELD_RETRY_MS`] ago
    /// (or before a restart) are dead-lettered again.
    pub(crate) fn retry_held(&mut self, now: i64, effects: &mut Effects) {
        for (id, held) in &mut self.held {
            if held.in_flight {
                continue;
            }
            match held.sent_at {
                None => held.sent_at = Some(now),
                Some(at) if now.saturating_sub(at) >= HELD_RETRY_MS => {
                    held.sent_at = Some(now);
                    effects.dead.push(DeadLetter {
                        message: Arc::clone(&held.message),
                        reason: held.reason,
                        held: Some(*id),
                    });
                }
                Some(_) => {}
            }
        }
    }

    /// Dead letters held (waiting for their target's confirm).
    pub(crate) fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Body bytes of ready messages a queue keeps in memory before newer
    /// persistent ones wait on disk only (unbounded for priority queues,
    /// which are never paged).
    pub(crate) fn memory_budget(args: &QueueArgs, memory: &ResourceMonitor) -> u64 {
        if args.max_priority.is_some() {
            u64::MAX
        } else {
            memory.queue_budget()
        }
    }

    fn effective_priority(&self, message: &Message) -> u8 {
        self.args
            .max_priority
            .map_or(0, |max| message.priority().min(max))
    }

    fn expiry_for(&self, message: &Message, now: i64) -> Option<i64> {
        let per_message = message.expiration_ms().ok().flatten();
        let ttl = match (self.args.message_ttl, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)))
    }

    /// Puts recovered messages back (on open), in id order: those read into
    /// memory, then those left on disk. Their TTLs count from when they
    /// were first stored.
    pub(crate) fn restore(&mut self, messages: Vec<RecoveredMessage>, paged: Vec<RecoveredRun>) {
        for recovered in messages {
            if let Some(reason) = recovered.held {
                // Died before, its target unconfirmed: dead-lettered again
                // by the next maintenance pass.
                let charge = self.memory.charge(recovered.message.body_size() as u64);
                self.hold(
                    recovered.id,
                    Arc::new(recovered.message),
                    reason,
                    Some(i64::MIN),
                    charge,
                );
                continue;
            }
            let expires_at = self.expiry_for(&recovered.message, recovered.timestamp);
            let priority = self.effective_priority(&recovered.message);
            let seq = self.take_seq(1);
            let entry = Entry {
                returns: recovered.returns,
                seq,
                stored: Some(recovered.id),
                _charge: self.memory.charge(recovered.message.body_size() as u64),
                message: Arc::new(recovered.message),
                redelivered: recovered.delivered,
                expires_at,
                local_client: false,
            };
            self.ready.push_back(priority, entry);
        }
        for run in paged {
            let first_seq = self.take_seq(run.count);
            self.ready.push_run(PagedRun {
                first_seq,
                first_id: run.first_id,
                count: run.count,
                bytes: run.bytes,
                redelivered: run.redelivered,
            });
        }
    }

    fn take_seq(&mut self, count: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += count;
        seq
    }

    /// Brings messages waiting on disk into the head once it has run dry,
    /// about [`PAGE_IN_BYTES`] at a time; true when it moved any. A
    /// message that cannot be read back is settled with a warning, as on
    /// open; a failed read leaves them waiting for the next try. Without a
    /// pager (the store is gone) waiting runs are forgotten.
    pub(super) fn page_in(
        &mut self,
        pager: Option<&dyn Pager>,
        queue: &str,
        effects: &mut Effects,
    ) -> bool {
        if !self.ready.head_is_empty() || self.ready.paged.is_empty() {
            return false;
        }
        // Over the memory watermark, a consumer already holding many
        // deliveries (no prefetch limit, slower than the disk) gets no more
        // from disk until it acknowledges some.
        if self.memory.memory_alarm() && self.unacked.len() >= PAGE_IN_UNACKED_CAP {
            return false;
        }
        let want = (PAGE_IN_BYTES as u64)
            .min(self.memory.queue_budget())
            .max(1);
        let mut loaded = 0u64;
        let mut skipped = Vec::new();
        while loaded < want {
            let Some(front) = self.ready.paged.pop_front() else {
                break;
            };
            let mut run = match front {
                Paged::Entry(entry) => {
                    let size = entry.message.body_size() as u64;
                    self.ready.unpage(1, size);
                    loaded += size.max(1);
                    self.ready.buckets.entry(0).or_default().push_back(entry);
                    continue;
                }
                Paged::Run(run) => run,
            };
            let Some(pager) = pager else {
                self.ready.forget(run.count as usize, run.bytes);
                continue;
            };
            let max_bytes = usize::try_from(want - loaded).unwrap_or(PAGE_IN_BYTES);
            let read = match pager.read(run.first_id, run.count, max_bytes) {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%queue, %error, "cannot read queued messages back from disk");
                    self.ready.paged.push_front(Paged::Run(run));
                    break;
                }
            };
            let end = run.first_id + run.count;
            let mut next = run.first_id;
            for paged in read {
                if paged.id < next || paged.id >= end {
                    continue;
                }
                skipped.extend(next..paged.id);
                next = paged.id + 1;
                let Some(message) = paged.message else {
                    skipped.push(paged.id);
                    continue;
                };
                let size = message.body_size() as u64;
                loaded += size.max(1);
                run.bytes = run.bytes.saturating_sub(size);
                self.ready.unpage(1, size);
                let entry = Entry {
                    returns: paged.returns,
                    seq: run.first_seq + (paged.id - run.first_id),
                    stored: Some(paged.id),
                    expires_at: self.expiry_for(&message, paged.timestamp),
                    redelivered: run.redelivered || paged.delivered,
                    _charge: self.memory.charge(size),
                    message: Arc::new(message),
                    local_client: false,
                };
                self.ready.buckets.entry(0).or_default().push_back(entry);
            }
            if next == run.first_id {
                // Nothing came back: the log no longer holds them.
                skipped.extend(run.first_id..end);
                next = end;
            }
            let taken = next - run.first_id;
            run.first_id = next;
            run.first_seq += taken;
            run.count -= taken;
            if run.count > 0 {
                self.ready.paged.push_front(Paged::Run(run));
            } else {
                // Whatever was skipped leaves the byte count with its run.
                self.ready.forget(0, run.bytes);
            }
        }
        let any_skipped = !skipped.is_empty();
        if any_skipped {
            tracing::warn!(%queue, count = skipped.len(), first = skipped.first().copied().unwrap_or_default(), "skipping queued messages that cannot be read back");
            self.ready.forget(skipped.len(), 0);
            effects
                .store
                .extend(skipped.into_iter().map(StoreOp::Settle));
        }
        loaded > 0 || any_skipped
    }

    /// Decides whether `message` joins the queue, making room for it under
    /// `x-overflow` drop-head (the oldest messages die).
    pub(crate) fn admit(
        &mut self,
        message: &Arc<Message>,
        now: i64,
        pager: Option<&dyn Pager>,
        queue: &str,
        effects: &mut Effects,
    ) -> Admission {
        let expires_at = self.expiry_for(message, now);
        if expires_at.is_some_and(|at| at <= now) && self.consumers.is_empty() {
            // RabbitMQ drops (or dead-letters) a message whose TTL is 0
            // when no consumer can take it at once.
            effects.dead(Arc::clone(message), DeathReason::Expired);
            return Admission::Refuse { rejected: false };
        }
        let size = message.body_size() as u64;
        let (max_length, max_length_bytes) = (self.args.max_length, self.args.max_length_bytes);
        // Held dead letters count too: an unreachable dead-letter target
        // pushes back on publishers (at-least-once needs reject-publish).
        let (held, held_bytes) = (self.held.len(), self.held_bytes);
        let over = |ready: &Ready| {
            max_length.is_some_and(|max| (ready.len + held + 1) as u64 > max)
                || max_length_bytes.is_some_and(|max| ready.bytes + held_bytes + size > max)
        };
        if !over(&self.ready) {
            return Admission::Accept { expires_at };
        }
        match self.args.overflow {
            Overflow::DropHead => {
                while over(&self.ready) {
                    self.page_in(pager, queue, effects);
                    let Some(entry) = self.ready.pop_oldest() else {
                        break;
                    };
                    self.kill(entry, DeathReason::MaxLen, effects);
                }
                if over(&self.ready) {
                    // Even alone it does not fit (a body over the byte limit).
                    effects.dead(Arc::clone(message), DeathReason::MaxLen);
                    return Admission::Refuse { rejected: false };
                }
                Admission::Accept { expires_at }
            }
            Overflow::RejectPublish => Admission::Refuse { rejected: true },
            Overflow::RejectPublishDlx => {
                effects.dead(Arc::clone(message), DeathReason::MaxLen);
                Admission::Refuse { rejected: true }
            }
        }
    }

    /// Adds an admitted message; `stored` is its id in the store when it
    /// was written there. A persistent message behind a full head (or
    /// behind others already waiting) waits on disk only.
    pub(crate) fn push(
        &mut self,
        message: Arc<Message>,
        stored: Option<u64>,
        expires_at: Option<i64>,
    ) {
        let size = message.body_size() as u64;
        let seq = self.take_seq(1);
        match stored {
            Some(id)
                if !self.ready.paged.is_empty()
                    || self.ready.head_bytes().saturating_add(size)
                        > QueueMachine::memory_budget(&self.args, &self.memory) =>
            {
                self.ready.push_paged(seq, id, size);
            }
            _ => {
                let priority = self.effective_priority(&message);
                let entry = Entry {
                    returns: 0,
                    seq,
                    stored,
                    _charge: self.memory.charge(size),
                    message,
                    redelivered: false,
                    expires_at,
                    local_client: false,
                };
                self.ready.push_back(priority, entry);
            }
        }
    }

    /// Hands ready messages to consumers with credit, round robin among
    /// the highest-priority consumers that can take one, after dropping
    /// what expired. `deliver` gives one to the consumer's channel and
    /// says whether it took it; a consumer whose channel is gone is removed
    /// and its message goes back.
    pub(crate) fn dispatch(
        &mut self,
        now: i64,
        pager: Option<&dyn Pager>,
        queue: &str,
        effects: &mut Effects,
        deliver: &mut dyn FnMut(&ConsumerSpec, &Entry) -> bool,
    ) {
        self.drop_expired(now, pager, queue, effects);
        if now < self.dispatch_after {
            return;
        }
        loop {
            if self.ready.len == 0 || self.consumers.is_empty() {
                break;
            }
            self.page_in(pager, queue, effects);
            if self.ready.head_is_empty() {
                break;
            }
            let Some(index) = self.pick_consumer() else {
                break;
            };
            let Some(entry) = self.ready.pop_front() else {
                break;
            };
            let Some(consumer) = self.consumers.get(index) else {
                break;
            };
            if entry.expires_at.is_some_and(|at| at <= now) {
                consumer.credit.release(1);
                self.kill(entry, DeathReason::Expired, effects);
                continue;
            }
            if !deliver(consumer, &entry) {
                // The channel is gone; its close would remove the consumer.
                consumer.credit.release(1);
                let priority = self.effective_priority(&entry.message);
                self.ready.requeue(priority, entry);
                self.consumers.remove(index);
                continue;
            }
            let mut entry = entry;
            entry.local_client = consumer.connection != super::PEER_CONSUMER;
            if consumer.no_ack {
                effects.settle(&entry);
            } else {
                effects.delivered(&entry);
                self.unacked.insert(entry.seq, entry);
            }
        }
    }

    /// `basic.get`: takes the next ready message, after dropping what
    /// expired; `no_ack` settles it at once.
    pub(crate) fn get(
        &mut self,
        no_ack: bool,
        now: i64,
        pager: Option<&dyn Pager>,
        queue: &str,
        effects: &mut Effects,
    ) -> Option<(u64, Arc<Message>, bool)> {
        self.last_used = now;
        self.drop_expired(now, pager, queue, effects);
        if now < self.dispatch_after {
            // A new leader's wait for settlements made through the former
            // one: empty, as for a consumer.
            return None;
        }
        self.page_in(pager, queue, effects);
        let entry = self.ready.pop_front()?;
        let message = if self.args.queue_type == QueueType::Quorum {
            // RabbitMQ's quorum queues count on every basic.get, 0 first.
            with_delivery_count(&entry.message, entry.returns)
        } else {
            Arc::clone(&entry.message)
        };
        let taken = (entry.seq, message, entry.redelivered);
        if no_ack {
            effects.settle(&entry);
        } else {
            effects.delivered(&entry);
            self.unacked.insert(entry.seq, entry);
        }
        Some(taken)
    }

    /// Settles deliveries positively; returns how many were outstanding.
    pub(crate) fn ack(&mut self, seqs: &[u64], effects: &mut Effects) -> u64 {
        let mut acked = 0;
        for seq in seqs {
            if let Some(entry) = self.unacked.remove(seq) {
                effects.settle(&entry);
                acked += 1;
            }
        }
        acked
    }

    /// Settles the messages stored under `ids` that are delivered or ready
    /// in memory (a quorum queue's, settled through a former leader);
    /// returns how many. Those paged out stay (delivered again, flagged).
    pub(crate) fn settle_stored(
        &mut self,
        ids: &std::collections::HashSet<u64>,
        effects: &mut Effects,
    ) -> usize {
        let delivered: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, entry)| entry.stored.is_some_and(|id| ids.contains(&id)))
            .map(|(seq, _)| *seq)
            .collect();
        let mut settled = 0;
        for seq in delivered {
            self.held_for_clients.remove(&seq);
            if let Some(entry) = self.unacked.remove(&seq) {
                effects.settle(&entry);
                settled += 1;
            }
        }
        for entry in self.ready.take_stored(ids) {
            effects.settle(&entry);
            settled += 1;
        }
        settled
    }

    /// Takes the ready messages stored under `ids` (in memory) off the
    /// ready list, as delivered to no consumer of this instance: a former
    /// leader's delivery another node's client still holds. Returns their
    /// sequence numbers, to settle as any delivery's; `holder` names who
    /// holds them, for [`QueueMachine::take_held`].
    pub(crate) fn hold_stored(
        &mut self,
        ids: &std::collections::HashSet<u64>,
        holder: u64,
        effects: &mut Effects,
    ) -> Vec<u64> {
        let mut held = Vec::new();
        let unacked = &self.unacked;
        self.held_for_clients
            .retain(|seq, _| unacked.contains_key(seq));
        for mut entry in self.ready.take_stored(ids) {
            entry.redelivered = true;
            entry.local_client = false;
            effects.delivered(&entry);
            held.push(entry.seq);
            self.held_for_clients.insert(entry.seq, holder);
            self.unacked.insert(entry.seq, entry);
        }
        held
    }

    /// Of the deliveries [`QueueMachine::hold_stored`] took, those of the
    /// messages stored under `ids`, taken (to be settled by the caller).
    pub(crate) fn take_held(&mut self, ids: &std::collections::HashSet<u64>) -> Vec<u64> {
        let seqs: Vec<u64> = self
            .held_for_clients
            .keys()
            .filter(|seq| {
                self.unacked
                    .get(seq)
                    .and_then(|entry| entry.stored)
                    .is_some_and(|id| ids.contains(&id))
            })
            .copied()
            .collect();
        for seq in &seqs {
            self.held_for_clients.remove(seq);
        }
        seqs
    }

    /// The deliveries held for `holder` whose messages are not stored
    /// under `keep`, taken (to be given back by the caller): `holder`'s
    /// clients no longer hold them (`keep` is all they hold), or it is
    /// gone (`keep` empty).
    pub(crate) fn take_held_by(
        &mut self,
        holder: u64,
        keep: &std::collections::HashSet<u64>,
    ) -> Vec<u64> {
        let seqs: Vec<u64> = self
            .held_for_clients
            .iter()
            .filter(|(seq, by)| {
                **by == holder
                    && self
                        .unacked
                        .get(seq)
                        .and_then(|entry| entry.stored)
                        .is_some_and(|id| !keep.contains(&id))
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &seqs {
            self.held_for_clients.remove(seq);
        }
        seqs
    }

    /// The stored ids of the deliveries to this node's own consumers.
    pub(crate) fn delivered_to_local_clients(&self) -> Vec<u64> {
        self.unacked
            .values()
            .filter(|entry| entry.local_client)
            .filter_map(|entry| entry.stored)
            .collect()
    }

    /// Takes deliveries `seqs` off this instance without settling them
    /// (a quorum queue instance that no longer runs the queue: its next
    /// leader has them).
    pub(crate) fn forget_delivered(&mut self, seqs: &[u64]) {
        for seq in seqs {
            self.unacked.remove(seq);
        }
    }

    /// Settles deliveries negatively: back to the ready list (marked
    /// redelivered) or, without requeue or once deleted, dead. A quorum
    /// queue counts each return and dead-letters a message returned more
    /// than `x-delivery-limit` times, as RabbitMQ's do.
    pub(crate) fn reject(&mut self, seqs: &[u64], requeue: bool, effects: &mut Effects) {
        for seq in seqs {
            let Some(mut entry) = self.unacked.remove(seq) else {
                continue;
            };
            if requeue && self.args.queue_type == QueueType::Quorum {
                entry.returns = entry.returns.saturating_add(1);
                if self
                    .args
                    .delivery_limit
                    .is_some_and(|limit| u64::from(entry.returns) > limit)
                {
                    self.kill(entry, DeathReason::DeliveryLimit, effects);
                    continue;
                }
                if !self.deleted {
                    effects.returned(&entry);
                }
            }
            if requeue && !self.deleted {
                entry.redelivered = true;
                let priority = self.effective_priority(&entry.message);
                self.ready.requeue(priority, entry);
            } else {
                self.kill(entry, DeathReason::Rejected, effects);
            }
        }
    }

    /// Registers a consumer, highest priority first (equal priorities keep
    /// arrival order); `false` when an exclusive consumer holds the queue
    /// or an exclusive one is asked for while others consume.
    pub(crate) fn add_consumer(&mut self, consumer: ConsumerSpec, now: i64) -> bool {
        if self.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !self.consumers.is_empty())
        {
            return false;
        }
        let at = self
            .consumers
            .partition_point(|c| c.priority >= consumer.priority);
        self.consumers.insert(at, consumer);
        self.last_used = now;
        true
    }

    /// Removes a consumer; true when it was the last one.
    pub(crate) fn remove_consumer(&mut self, channel: u64, tag: &str, now: i64) -> bool {
        let before = self.consumers.len();
        self.consumers
            .retain(|c| !(c.channel == channel && &*c.tag == tag));
        self.last_used = now;
        before != self.consumers.len() && self.consumers.is_empty()
    }

    /// `queue.purge`: drops every ready message, and the dead letters
    /// held for their target (as RabbitMQ's purge does); returns how many
    /// ready ones.
    pub(crate) fn purge(&mut self, effects: &mut Effects) -> usize {
        let (entries, paged) = self.ready.drain();
        for entry in &entries {
            effects.settle(entry);
        }
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        effects.store.extend(held.into_keys().map(StoreOp::Settle));
        effects
            .store
            .extend(paged.iter().copied().map(StoreOp::Settle));
        entries.len() + paged.len()
    }

    /// Marks the queue deleted, forgetting what it held; returns its
    /// consumers (to be told) and the number of ready messages.
    /// Stops a quorum queue instance this node no longer runs: nothing
    /// more is delivered or taken in, and its ready messages go (the next
    /// leader rebuilds them), but its deliveries stay known, for their
    /// settlements to reach the queue as it runs now.
    pub(crate) fn retire(&mut self) -> Vec<ConsumerSpec> {
        self.deleted = true;
        self.ready.drain();
        self.held_for_clients.clear();
        std::mem::take(&mut self.consumers)
    }

    pub(crate) fn delete(&mut self) -> (Vec<ConsumerSpec>, usize) {
        self.deleted = true;
        let consumers = std::mem::take(&mut self.consumers);
        let count = self.ready.len;
        self.ready.drain();
        self.unacked.clear();
        (consumers, count)
    }

    /// Marks the queue used (redeclared), for `x-expires`.
    pub(crate) fn touch(&mut self, now: i64) {
        self.last_used = now;
    }

    /// Whether an `x-expires` queue has gone unused (no consumers, no
    /// `basic.get`, no redeclaration) long enough to be deleted.
    pub(crate) fn unused_too_long(&self, now: i64) -> bool {
        self.args.expires.is_some_and(|ms| {
            self.consumers.is_empty()
                && !self.deleted
                && now.saturating_sub(self.last_used) >= i64::try_from(ms).unwrap_or(i64::MAX)
        })
    }

    /// Dead messages at the head of each bucket leave (RabbitMQ expires only
    /// from the head, so a long-lived message can shield one behind it).
    /// Reads at most [`EXPIRE_PAGE_INS`] pages back from disk per call; the
    /// maintenance tick carries on with the rest.
    fn drop_expired(
        &mut self,
        now: i64,
        pager: Option<&dyn Pager>,
        queue: &str,
        effects: &mut Effects,
    ) {
        let mut page_ins = 0;
        loop {
            if page_ins < EXPIRE_PAGE_INS && self.page_in(pager, queue, effects) {
                page_ins += 1;
            }
            let expired = self
                .ready
                .front()
                .is_some_and(|e| e.expires_at.is_some_and(|at| at <= now));
            if !expired {
                break;
            }
            let Some(entry) = self.ready.pop_front() else {
                break;
            };
            self.kill(entry, DeathReason::Expired, effects);
        }
    }

    /// Index of the consumer to deliver to next, having taken one unit of
    /// its credit; `None` when no consumer can take a message.
    fn pick_consumer(&mut self) -> Option<usize> {
        if self.args.single_active_consumer {
            let consumer = self.consumers.first()?;
            return consumer.credit.try_acquire().then_some(0);
        }
        let count = self.consumers.len();
        // Consumers are sorted by priority; try each priority level in
        // turn, round robin within it.
        let mut level_start = 0;
        while level_start < count {
            let priority = self.consumers.get(level_start)?.priority;
            let level_end = self
                .consumers
                .iter()
                .skip(level_start)
                .position(|c| c.priority != priority)
                .map_or(count, |p| level_start + p);
            let width = level_end - level_start;
            let offset = self.next_consumer % width;
            for i in 0..width {
                let index = level_start + (offset + i) % width;
                if self.consumers.get(index)?.credit.try_acquire() {
                    self.next_consumer = (offset + i + 1) % width;
                    return Some(index);
                }
            }
            level_start = level_end;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    //! The machine on simulated time: every call says what time it is.

    use super::*;
    use crate::messaging::queue::Credit;
    use amq_protocol::protocol::BasicProperties;
    use tokio::sync::mpsc::unbounded_channel;

    fn message(body: &str) -> Arc<Message> {
        Arc::new(Message {
            exchange: "".into(),
            routing_key: "q".into(),
            properties: BasicProperties::default(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        })
    }

    fn expiring(body: &str, ttl_ms: u64) -> Arc<Message> {
        let mut m = (*message(body)).clone();
        m.properties = m.properties.with_expiration(ttl_ms.to_string().into());
        Arc::new(m)
    }

    fn machine(args: QueueArgs) -> QueueMachine {
        QueueMachine::new(args, ResourceMonitor::new(u64::MAX), 0)
    }

    fn consumer(tag: &str, credit: u32, priority: i32) -> ConsumerSpec {
        let (sink, _) = unbounded_channel();
        ConsumerSpec {
            tag: Arc::from(tag),
            channel: 1,
            connection: 1,
            no_ack: false,
            exclusive: false,
            priority,
            credit: Credit::new(credit, None),
            sink,
            stream_start: None,
        }
    }

    /// Admits and pushes a transient message at `now`.
    fn publish(machine: &mut QueueMachine, m: Arc<Message>, now: i64) -> (Admission, Effects) {
        let mut effects = Effects::default();
        let admission = machine.admit(&m, now, None, "q", &mut effects);
        if let Admission::Accept { expires_at } = admission {
            machine.push(m, None, expires_at);
        }
        (admission, effects)
    }

    /// Dispatches at `now`; returns (consumer tag, body, redelivered) of
    /// each delivery, and the effects.
    fn dispatch(machine: &mut QueueMachine, now: i64) -> (Vec<(String, String, bool)>, Effects) {
        let mut effects = Effects::default();
        let mut delivered = Vec::new();
        machine.dispatch(now, None, "q", &mut effects, &mut |consumer, entry| {
            delivered.push((
                consumer.tag.to_string(),
                String::from_utf8_lossy(&entry.message.body).into_owned(),
                entry.redelivered,
            ));
            true
        });
        (delivered, effects)
    }

    fn reasons(effects: &Effects) -> Vec<(String, DeathReason)> {
        effects
            .dead
            .iter()
            .map(|d| {
                (
                    String::from_utf8_lossy(&d.message.body).into_owned(),
                    d.reason,
                )
            })
            .collect()
    }

    #[test]
    fn messages_expire_at_their_ttl_and_are_dead_lettered_from_the_head() {
        let mut queue = machine(QueueArgs {
            message_ttl: Some(1_000),
            ..QueueArgs::default()
        });
        publish(&mut queue, message("a"), 0);
        publish(&mut queue, expiring("b", 100), 500);
        publish(&mut queue, message("c"), 900);
        let (_, effects) = dispatch(&mut queue, 999);
        assert!(effects.dead.is_empty(), "nothing is due before 1000 ms");
        assert_eq!(queue.ready.len, 3);
        // At 1000 the head expires; "b" (due at 600) went with it, since
        // it is next at the head; "c" lives until 1900.
        let (_, effects) = dispatch(&mut queue, 1_000);
        assert_eq!(
            reasons(&effects),
            vec![
                ("a".to_owned(), DeathReason::Expired),
                ("b".to_owned(), DeathReason::Expired)
            ]
        );
        let mut effects = Effects::default();
        let taken = queue.get(true, 1_899, None, "q", &mut effects);
        assert_eq!(taken.map(|(_, m, _)| m.body.clone()), Some("c".into()));
    }

    /// A quorum queue counts returns (`x-delivery-count` on every
    /// basic.get) and dead-letters past `x-delivery-limit`; a classic
    /// queue neither counts nor limits.
    #[test]
    fn a_quorum_queue_counts_returns_and_dead_letters_past_the_limit() {
        let count = |message: &Message| {
            message
                .headers()
                .and_then(|h| h.inner().get("x-delivery-count").cloned())
        };
        let mut queue = machine(QueueArgs {
            queue_type: QueueType::Quorum,
            delivery_limit: Some(1),
            ..QueueArgs::default()
        });
        publish(&mut queue, message("poison"), 0);
        let mut effects = Effects::default();
        for expected in [0, 1] {
            let (seq, taken, _) = queue.get(false, 0, None, "q", &mut effects).expect("ready");
            assert_eq!(
                count(&taken),
                Some(amq_protocol::types::AMQPValue::LongLongInt(expected))
            );
            queue.reject(&[seq], true, &mut effects);
        }
        assert_eq!(
            reasons(&effects),
            vec![("poison".to_owned(), DeathReason::DeliveryLimit)]
        );
        assert_eq!(queue.ready.len, 0);

        let mut classic = machine(QueueArgs {
            delivery_limit: Some(1),
            ..QueueArgs::default()
        });
        publish(&mut classic, message("m"), 0);
        let mut effects = Effects::default();
        for _ in 0..3 {
            let (seq, taken, _) = classic
                .get(false, 0, None, "q", &mut effects)
                .expect("ready");
            assert_eq!(count(&taken), None);
            classic.reject(&[seq], true, &mut effects);
        }
        assert!(effects.dead.is_empty());
        assert_eq!(classic.ready.len, 1);
    }

    #[test]
    fn a_zero_ttl_message_dies_unless_a_consumer_can_take_it_now() {
        let mut queue = machine(QueueArgs::default());
        let (admission, effects) = publish(&mut queue, expiring("late", 0), 10);
        assert_eq!(admission, Admission::Refuse { rejected: false });
        assert_eq!(
            reasons(&effects),
            vec![("late".to_owned(), DeathReason::Expired)]
        );
        assert!(queue.add_consumer(consumer("c1", 10, 0), 10));
        let (admission, _) = publish(&mut queue, expiring("now", 0), 10);
        assert!(matches!(admission, Admission::Accept { .. }));
    }

    #[test]
    fn credit_bounds_deliveries_and_rejects_requeue_or_dead_letter() {
        let mut queue = machine(QueueArgs::default());
        let c1 = consumer("c1", 2, 0);
        let credit = Arc::clone(&c1.credit);
        assert!(queue.add_consumer(c1, 0));
        for body in ["m1", "m2", "m3"] {
            publish(&mut queue, message(body), 0);
        }
        let (delivered, _) = dispatch(&mut queue, 0);
        assert_eq!(delivered.len(), 2, "two units of credit");
        assert_eq!(queue.unacked.len(), 2);
        // Requeued: back at the head, flagged redelivered, once credit returns.
        let mut effects = Effects::default();
        queue.reject(&[0], true, &mut effects);
        credit.release(1);
        let (delivered, _) = dispatch(&mut queue, 1);
        assert_eq!(delivered, vec![("c1".to_owned(), "m1".to_owned(), true)]);
        // Rejected without requeue: dead-lettered.
        let mut effects = Effects::default();
        queue.reject(&[1], false, &mut effects);
        assert_eq!(
            reasons(&effects),
            vec![("m2".to_owned(), DeathReason::Rejected)]
        );
        assert_eq!(queue.ack(&[0, 1, 99], &mut Effects::default()), 1);
        credit.release(2);
        let (delivered, _) = dispatch(&mut queue, 2);
        assert_eq!(delivered, vec![("c1".to_owned(), "m3".to_owned(), false)]);
    }

    #[test]
    fn consumers_take_turns_within_the_highest_priority_with_credit() {
        let mut queue = machine(QueueArgs::default());
        assert!(queue.add_consumer(consumer("low", 10, 0), 0));
        assert!(queue.add_consumer(consumer("a", 2, 5), 0));
        assert!(queue.add_consumer(consumer("b", 1, 5), 0));
        for n in 0..5 {
            publish(&mut queue, message(&n.to_string()), 0);
        }
        let (delivered, _) = dispatch(&mut queue, 0);
        let tags: Vec<&str> = delivered.iter().map(|(tag, _, _)| tag.as_str()).collect();
        assert_eq!(tags, vec!["a", "b", "a", "low", "low"]);
    }

    #[test]
    fn a_closed_channel_loses_its_consumer_and_the_message_goes_to_the_next() {
        let mut queue = machine(QueueArgs::default());
        assert!(queue.add_consumer(consumer("gone", 10, 1), 0));
        assert!(queue.add_consumer(consumer("live", 10, 0), 0));
        publish(&mut queue, message("m"), 0);
        let mut effects = Effects::default();
        let mut delivered = Vec::new();
        queue.dispatch(0, None, "q", &mut effects, &mut |consumer, entry| {
            let taken = &*consumer.tag != "gone";
            if taken {
                delivered.push((consumer.tag.to_string(), entry.redelivered));
            }
            taken
        });
        assert_eq!(delivered, vec![("live".to_owned(), false)]);
        assert_eq!(queue.consumers.len(), 1);
    }

    #[test]
    fn overflow_drops_the_head_or_refuses_the_publish() {
        let limited = |overflow| QueueArgs {
            max_length: Some(2),
            overflow,
            ..QueueArgs::default()
        };
        let mut queue = machine(limited(Overflow::DropHead));
        for body in ["1", "2"] {
            publish(&mut queue, message(body), 0);
        }
        let (admission, effects) = publish(&mut queue, message("3"), 0);
        assert!(matches!(admission, Admission::Accept { .. }));
        assert_eq!(
            reasons(&effects),
            vec![("1".to_owned(), DeathReason::MaxLen)]
        );
        assert_eq!(queue.ready.len, 2);

        let mut queue = machine(limited(Overflow::RejectPublish));
        for body in ["1", "2"] {
            publish(&mut queue, message(body), 0);
        }
        let (admission, effects) = publish(&mut queue, message("3"), 0);
        assert_eq!(admission, Admission::Refuse { rejected: true });
        assert!(effects.dead.is_empty());

        let mut queue = machine(limited(Overflow::RejectPublishDlx));
        for body in ["1", "2"] {
            publish(&mut queue, message(body), 0);
        }
        let (admission, effects) = publish(&mut queue, message("3"), 0);
        assert_eq!(admission, Admission::Refuse { rejected: true });
        assert_eq!(
            reasons(&effects),
            vec![("3".to_owned(), DeathReason::MaxLen)]
        );
    }

    #[test]
    fn an_unused_queue_expires_after_x_expires_and_use_resets_the_timer() {
        let mut queue = machine(QueueArgs {
            expires: Some(5_000),
            ..QueueArgs::default()
        });
        assert!(!queue.unused_too_long(4_999));
        assert!(queue.unused_too_long(5_000));
        queue.touch(4_000);
        assert!(!queue.unused_too_long(8_999));
        assert!(queue.add_consumer(consumer("c", 1, 0), 9_000));
        assert!(!queue.unused_too_long(60_000), "a consumer keeps it");
        assert!(
            queue.remove_consumer(1, "c", 10_000),
            "the last consumer left"
        );
        assert!(!queue.unused_too_long(14_999));
        assert!(queue.unused_too_long(15_000));
        let mut effects = Effects::default();
        queue.get(false, 16_000, None, "q", &mut effects);
        assert!(!queue.unused_too_long(20_999), "basic.get is use");
    }

    #[test]
    fn settlements_of_stored_messages_are_effects_for_the_store() {
        let mut queue = machine(QueueArgs::default());
        queue.push(message("kept"), Some(7), None);
        let mut effects = Effects::default();
        let taken = queue.get(false, 0, None, "q", &mut effects);
        assert_eq!(effects.store, vec![StoreOp::Delivered(7)]);
        let (seq, _, _) = taken.expect("a message");
        let mut effects = Effects::default();
        queue.ack(&[seq], &mut effects);
        assert_eq!(effects.store, vec![StoreOp::Settle(7)]);
    }

    /// Settlements made through a former leader take their messages out
    /// of the queue, delivered or ready, and are written; others stay.
    #[test]
    fn messages_settled_elsewhere_leave_the_queue_delivered_or_ready() {
        let mut queue = machine(QueueArgs::default());
        for (body, id) in [("a", 10), ("b", 11), ("c", 12), ("d", 13)] {
            queue.push(message(body), Some(id), None);
        }
        let mut effects = Effects::default();
        let (delivered_a, _, _) = queue.get(false, 0, None, "q", &mut effects).expect("a");
        let (delivered_b, _, _) = queue.get(false, 0, None, "q", &mut effects).expect("b");
        let mut effects = Effects::default();
        let ids: std::collections::HashSet<u64> = [10, 12, 99].into_iter().collect();
        assert_eq!(queue.settle_stored(&ids, &mut effects), 2);
        let mut settled = effects.store.clone();
        settled.sort_by_key(|op| match op {
            StoreOp::Settle(id) => *id,
            _ => u64::MAX,
        });
        assert_eq!(settled, vec![StoreOp::Settle(10), StoreOp::Settle(12)]);
        assert_eq!(queue.ready.len, 1, "only d is ready");
        assert_eq!(queue.ready.bytes, 1);
        // a is gone: its late ack settles nothing; b is still delivered.
        let mut effects = Effects::default();
        assert_eq!(queue.ack(&[delivered_a, delivered_b], &mut effects), 1);
        assert_eq!(effects.store, vec![StoreOp::Settle(11)]);
        let mut effects = Effects::default();
        let (_, last, _) = queue.get(false, 0, None, "q", &mut effects).expect("d");
        assert_eq!(&last.body[..], b"d");
    }
}
