//! The replicated store of a quorum queue on a cluster: one partition of an
//! internal topic ([`quorum_topic`]) holding the queue's enqueues and
//! settlements, replicated as every partition is (leader epochs, in-sync
//! replicas, high watermark, truncation to the leader's history).
//!
//! The node leading the partition runs the queue. An enqueue is a record
//! (key `m`, the message as a queue log holds it) at the offset that is the
//! message's id, acknowledged (confirmed) once the in-sync replicas have it
//! and at least a majority of the replicas is in sync. A settlement
//! (acknowledged, dead, dropped) is a record (key `s`, `[count:4][id:8]*`)
//! written unacknowledged: a settlement lost in a failover only redelivers
//! its message, as AMQP allows for anything a client saw unsettled.
//!
//! A new leader rebuilds the queue from the partition: every message with
//! no settlement after it is ready again, flagged redelivered (the former
//! leader may have delivered it). Records below the oldest unsettled
//! message are no longer needed (a settlement always follows the message it
//! settles) and the partition's log start moves there; followers follow.
//!
//! A message that comes back unsettled (rejected or nacked with requeue,
//! its consumer gone) is counted for `x-delivery-count` and
//! `x-delivery-limit`; the count is a record too (key `r`,
//! `[count:4]([id:8][returns:4])*`), written as settlements are, so a new
//! leader goes on counting from it (a return lost in a failover counts
//! one less).
//!
//! A queue dead-lettering at least once keeps a message that died until
//! its dead-letter target confirmed it: a held record (key `d`,
//! `[count:4]([id:8][reason:1])*`) says so, and a new leader
//! dead-letters such messages again instead of delivering them.
//!
//! A settlement lost in a failover would bring back a message its
//! consumer acknowledged. Each node therefore remembers the settlements
//! its consumers made for a while ([`RecentSettlements`], a message named
//! by its id and the leader epoch of its enqueue record, which no other
//! record shares) and hands them to each new leader of the queue: applied
//! when it rebuilds the queue, or at once when it already runs it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_types::{Offset, PartitionId};

use super::message::Message;
use super::queue::DeathReason;
use super::queue_store::{
    PagedIn, RecoveredMessage, put_held, put_returns, read_held, read_returns,
};
use crate::ack::PendingAck;
use crate::{CoreError, Partition, Topic};

/// Key of an enqueue record.
const MESSAGE: &[u8] = b"m";
/// Key of a settlement record.
const SETTLEMENT: &[u8] = b"s";
/// Key of a delivery count record.
const RETURNS: &[u8] = b"r";
/// Key of a held dead letters record.
const HELD: &[u8] = b"d";
/// Records the log start lags behind the oldest unsettled message before
/// it is moved (each move may delete segment files).
const RECLAIM_EVERY: i64 = 1024;

/// How long a node remembers a settlement for the queue's next leader: a
/// settlement is replicated within milliseconds unless the leader fails,
/// and a failure is noticed within a link's 20 s of silence.
const SETTLED_KEPT: Duration = Duration::from_secs(60);
/// Most settlements remembered per queue (the oldest go first).
const SETTLED_MAX: usize = 1 << 18;

/// A quorum queue's message as every leader knows it: its offset in the
/// partition and the leader epoch its enqueue record was written in (a
/// record written again at that offset by a later leader has another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageRef {
    pub id: u64,
    pub epoch: i32,
}

/// Settlements of quorum queue messages made on this node lately, by
/// queue name, for each new leader of the queue: a settlement the former
/// leader had not replicated would otherwise bring its message back.
#[derive(Debug, Default)]
pub struct RecentSettlements {
    queues: Mutex<HashMap<String, QueueSettlements>>,
    /// The virtual host, which sends stale settlements on.
    host: std::sync::Weak<super::VirtualHost>,
}

#[derive(Debug, Default)]
struct QueueSettlements {
    /// Made by this node's clients, with when.
    recent: VecDeque<(Instant, MessageRef)>,
    /// Made by another node's clients and handed here, with when: applied
    /// if this node rebuilds the queue, never handed on. Apart from
    /// `recent`, so that a peer's list never pushes out this node's own.
    relayed: VecDeque<(Instant, MessageRef)>,
    /// What `relayed` holds: each once, however often it is handed here.
    relayed_known: HashSet<MessageRef>,
    /// Made through an instance no longer running the queue (a leader
    /// that stopped leading, a stand-in for one): not yet sent to the
    /// queue's current leader.
    stale: Vec<MessageRef>,
    /// The leader the recent ones were last handed to, with the count of
    /// failures of this node's link to it then: a leader whose link failed
    /// since (it may have been killed and come back leading in the same
    /// epoch, without what it had not replicated) gets them again.
    handed_to: Option<(i32, u64)>,
}

impl RecentSettlements {
    /// For virtual host `host`.
    pub(crate) fn new(host: std::sync::Weak<super::VirtualHost>) -> RecentSettlements {
        RecentSettlements {
            queues: Mutex::default(),
            host,
        }
    }

    /// Sends the stale settlements of `queue` to its current leader.
    pub(crate) fn send_on(&self, queue: &str) {
        if let Some(host) = self.host.upgrade() {
            host.send_settlements_on(queue);
        }
    }

    /// Gives the messages of `refs` (a former leader's deliveries, settled
    /// negatively here) back to the queue's current leader, which may
    /// hold them for this node's clients.
    pub(crate) fn release_on(&self, queue: &str, requeue: bool, refs: Vec<MessageRef>) {
        if let Some(host) = self.host.upgrade() {
            host.release_quorum(queue, requeue, &refs);
        }
    }

    /// Keeps stale settlements that found no leader to go to, for the
    /// next try.
    pub(crate) fn keep_stale(&self, queue: &str, refs: Vec<MessageRef>) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let settled = queues.entry(queue.to_owned()).or_default();
        settled.stale.extend(refs);
        let excess = settled.stale.len().saturating_sub(SETTLED_MAX);
        settled.stale.drain(..excess);
    }

    /// Remembers settlements of `queue` this node's clients made; `stale`
    /// when the instance they were made through no longer runs the queue
    /// (to be sent on).
    pub fn record(&self, queue: &str, refs: &[MessageRef], stale: bool) {
        if refs.is_empty() {
            return;
        }
        self.with_queue(queue, |settled, now| {
            settled.recent.extend(refs.iter().map(|r| (now, *r)));
            if stale {
                settled.stale.extend_from_slice(refs);
            }
            let excess = settled.recent.len().saturating_sub(SETTLED_MAX);
            settled.recent.drain(..excess);
            let excess = settled.stale.len().saturating_sub(SETTLED_MAX);
            settled.stale.drain(..excess);
        });
    }

    /// Remembers settlements of `queue` another node's clients made (that
    /// node handed them to this one, leading or about to): applied if
    /// this node rebuilds the queue, never handed on (their node hands
    /// them to each leader itself). Handed on, every node's list went
    /// round the cluster at each leader change, each hop remembering it
    /// anew, and filled to `SETTLED_MAX`, where a burst from a peer pushed
    /// out this node's own settlements of a moment before.
    pub fn record_relayed(&self, queue: &str, refs: &[MessageRef]) {
        if refs.is_empty() {
            return;
        }
        self.with_queue(queue, |settled, now| {
            for r in refs {
                if settled.relayed_known.insert(*r) {
                    settled.relayed.push_back((now, *r));
                }
            }
            while settled.relayed.len() > SETTLED_MAX {
                settled.pop_relayed();
            }
        });
    }

    /// Runs `change` on `queue`'s settlements, those older than 60 s
    /// forgotten first, with the time now.
    fn with_queue(&self, queue: &str, change: impl FnOnce(&mut QueueSettlements, Instant)) {
        let now = Instant::now();
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up before an entry is made: no name copied per flush.
        if !queues.contains_key(queue) {
            queues.insert(queue.to_owned(), QueueSettlements::default());
        }
        if let Some(settled) = queues.get_mut(queue) {
            settled.forget_older_than(now);
            change(settled, now);
        }
    }

    /// The settlements of `queue` made in the last 60 s (`SETTLED_KEPT`),
    /// none of them to be sent on any more.
    pub fn recent(&self, queue: &str) -> Vec<MessageRef> {
        self.recent_of(queue, true)
    }

    /// The settlements of `queue` made in the last 60 s, this node's
    /// clients' then those relayed here; `sent_on`: the stale ones among
    /// them need not be sent on any more.
    pub(crate) fn recent_of(&self, queue: &str, sent_on: bool) -> Vec<MessageRef> {
        self.recent_where(queue, sent_on, true)
    }

    /// The settlements of `queue` made in the last 60 s by this node's
    /// clients (and, `relayed`, by others'); `sent_on` as in
    /// [`RecentSettlements::recent_of`].
    fn recent_where(&self, queue: &str, sent_on: bool, relayed: bool) -> Vec<MessageRef> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let Some(settled) = queues.get_mut(queue) else {
            return Vec::new();
        };
        settled.forget_older_than(Instant::now());
        if sent_on {
            settled.stale.clear();
        }
        settled
            .recent
            .iter()
            .chain(settled.relayed.iter().filter(|_| relayed))
            .map(|(_, r)| *r)
            .collect()
    }

    /// The settlements of `queue` to hand to its leader `leader` on
    /// another node, `link_failures` the failures of this node's link to
    /// it so far: every recent one, once per leader and link (`None` once
    /// handed).
    pub(crate) fn handover(
        &self,
        queue: &str,
        leader: i32,
        link_failures: u64,
    ) -> Option<Vec<MessageRef>> {
        {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let settled = queues.entry(queue.to_owned()).or_default();
            if settled.handed_to == Some((leader, link_failures)) {
                return None;
            }
            settled.handed_to = Some((leader, link_failures));
        }
        Some(self.recent_where(queue, true, false))
    }

    /// This node leads `queue` now: whatever leads it next gets the
    /// recent settlements again.
    fn led_here(&self, queue: &str) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(settled) = queues.get_mut(queue) {
            settled.handed_to = None;
        }
    }

    /// The stale settlements of `queue` not yet sent on, taken.
    pub fn take_stale(&self, queue: &str) -> Vec<MessageRef> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .get_mut(queue)
            .map(|settled| std::mem::take(&mut settled.stale))
            .unwrap_or_default()
    }

    /// Forgets `queue` (deleted).
    pub fn forget(&self, queue: &str) {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
    }
}

impl QueueSettlements {
    fn forget_older_than(&mut self, now: Instant) {
        let old = |(at, _): &(Instant, MessageRef)| now.duration_since(*at) > SETTLED_KEPT;
        while self.recent.front().is_some_and(old) {
            self.recent.pop_front();
        }
        while self.relayed.front().is_some_and(old) {
            self.pop_relayed();
        }
    }

    fn pop_relayed(&mut self) {
        if let Some((_, r)) = self.relayed.pop_front() {
            self.relayed_known.remove(&r);
        }
    }
}

/// Prefix of the internal topics of quorum queues; Kafka clients may read
/// them but not write them.
pub const QUORUM_TOPIC_PREFIX: &str = "__amqp_quorum.";

/// The internal topic of the quorum queue with store id `store_id`.
pub(crate) fn quorum_topic(store_id: &str) -> String {
    format!("{QUORUM_TOPIC_PREFIX}{store_id}")
}

/// A quorum queue's partition, as its leader uses it. Owned by the queue,
/// behind its lock.
#[derive(Debug)]
pub(crate) struct QuorumStore {
    topic: Arc<Topic>,
    partition: Arc<Partition>,
    /// Enqueued and not yet settled, with the leader epoch of each
    /// enqueue record.
    outstanding: BTreeMap<u64, i32>,
    pending_settle: Vec<MessageRef>,
    /// Delivery counts to write: (id, returns in all).
    pending_returns: Vec<(u64, u32)>,
    /// Held dead letters to write: (id, reason).
    pending_held: Vec<(u64, DeathReason)>,
    /// The leader epoch the queue was rebuilt in: a node that leads again
    /// in a later epoch rebuilds it (another leader may have changed the
    /// partition meanwhile).
    epoch: i32,
    /// Where this node remembers the queue's settlements, and its name.
    settled: Arc<RecentSettlements>,
    queue: String,
}

impl QuorumStore {
    /// Opens queue `queue` on `topic`'s partition, which this node leads,
    /// and reads back every unsettled message in id order, each flagged as
    /// delivered before. The settlements `settled` remembers for it (made
    /// through a former leader, perhaps lost with it) are applied first.
    ///
    /// # Errors
    /// [`CoreError::UnknownPartition`] when the topic has no partition
    /// here; the log's read errors.
    pub(crate) fn open(
        topic: Arc<Topic>,
        queue: &str,
        settled: Arc<RecentSettlements>,
    ) -> Result<(QuorumStore, Vec<RecoveredMessage>), CoreError> {
        let partition =
            topic
                .partition(PartitionId::from(0))
                .ok_or_else(|| CoreError::UnknownPartition {
                    topic: topic.name().to_owned(),
                    partition: PartitionId::from(0),
                })?;
        let mut messages = Vec::new();
        let mut epochs = HashMap::new();
        let mut done = HashSet::new();
        let mut returns = HashMap::new();
        let mut held = HashMap::new();
        crate::replay::for_each_record(partition.log(), partition.log_start(), |record| {
            let Ok(id) = u64::try_from(record.offset) else {
                return;
            };
            match record.key.as_deref() {
                Some(SETTLEMENT) => done.extend(ids(record.value.unwrap_or_default())),
                Some(RETURNS) => {
                    returns.extend(read_returns(&mut record.value.unwrap_or_default()))
                }
                Some(HELD) => held.extend(read_held(&mut record.value.unwrap_or_default())),
                Some(MESSAGE) => match record.value.and_then(Message::decode) {
                    Some(message) => {
                        epochs.insert(id, record.partition_leader_epoch);
                        messages.push(RecoveredMessage {
                            id,
                            message,
                            timestamp: record.timestamp,
                            delivered: true,
                            returns: 0,
                            held: None,
                        });
                    }
                    None => tracing::warn!(id, "skipping an undecodable quorum queue message"),
                },
                _ => {}
            }
        })?;
        messages.retain(|m| !done.contains(&m.id));
        // Settled through a former leader that may not have replicated it:
        // settled again here (the same message: same id, same epoch).
        let remembered: HashSet<MessageRef> = settled.recent(queue).into_iter().collect();
        settled.led_here(queue);
        let mut pending_settle = Vec::new();
        messages.retain(|m| {
            let message = MessageRef {
                id: m.id,
                epoch: epochs.get(&m.id).copied().unwrap_or(-1),
            };
            let keep = !remembered.contains(&message);
            if !keep {
                pending_settle.push(message);
            }
            keep
        });
        if !pending_settle.is_empty() {
            tracing::info!(
                queue,
                settled = pending_settle.len(),
                "settlements made through a former leader applied"
            );
        }
        for message in &mut messages {
            message.returns = returns.get(&message.id).copied().unwrap_or(0);
            message.held = held.get(&message.id).copied();
        }
        let epoch = partition.leader_epoch().get();
        let store = QuorumStore {
            epoch,
            outstanding: messages
                .iter()
                .map(|m| (m.id, epochs.get(&m.id).copied().unwrap_or(-1)))
                .collect(),
            topic,
            partition,
            pending_settle,
            settled,
            queue: queue.to_owned(),
            pending_returns: Vec::new(),
            pending_held: Vec::new(),
        };
        Ok((store, messages))
    }

    /// Appends one message; returns its id and what its confirm waits for
    /// (the in-sync replicas).
    ///
    /// # Errors
    /// [`CoreError::NotLeader`] when this node no longer leads the
    /// partition; [`CoreError::NotEnoughReplicas`] while fewer than a
    /// majority of the replicas is in sync (a confirm would promise less
    /// than a quorum); the log's refusal.
    pub(crate) fn append(&mut self, message: &Message) -> Result<(u64, PendingAck), CoreError> {
        let needed = self.topic.min_insync_replicas() as usize;
        let in_sync = self.partition.in_sync_count().unwrap_or(1);
        if in_sync < needed {
            return Err(CoreError::NotEnoughReplicas {
                topic: self.topic.name().to_owned(),
                in_sync,
                needed,
            });
        }
        let value = message
            .encode()
            .map_err(|reason| CoreError::Internal { reason })?;
        let mut batch = crate::replay::batch_of(&[(Some(MESSAGE), Some(&value))], "quorum queue")?;
        let appended = self
            .topic
            .append_start(self.partition.id(), &mut batch)?
            .in_sync();
        let id = u64::try_from(appended.info.first_offset.get()).unwrap_or(0);
        // The epoch its record carries (the partition's may have moved
        // on since): the one every later leader reads back.
        self.outstanding.insert(id, appended.ack.epoch());
        Ok((id, appended.ack))
    }

    /// Records that `id` is settled; written by the next flush.
    pub(crate) fn settle(&mut self, id: u64) {
        if let Some(epoch) = self.outstanding.remove(&id) {
            self.pending_settle.push(MessageRef { id, epoch });
        }
    }

    /// The leader epoch of message `id`'s enqueue record, while unsettled.
    pub(crate) fn epoch_of(&self, id: u64) -> Option<i32> {
        self.outstanding.get(&id).copied()
    }

    /// Of `refs` (settlements made through a former leader), the ids of
    /// the messages this queue still holds: the same id in the same epoch.
    pub(crate) fn still_held(&self, refs: &[MessageRef]) -> HashSet<u64> {
        refs.iter()
            .filter(|r| self.outstanding.get(&r.id) == Some(&r.epoch))
            .map(|r| r.id)
            .collect()
    }

    /// Records that `id` came back unsettled, `returns` times in all;
    /// written by the next flush.
    pub(crate) fn returned(&mut self, id: u64, returns: u32) {
        if self.outstanding.contains_key(&id) {
            self.pending_returns.push((id, returns));
        }
    }

    /// Records that `id` died and is held until its dead-letter target
    /// confirmed it; written by the next flush.
    pub(crate) fn held(&mut self, id: u64, reason: DeathReason) {
        if self.outstanding.contains_key(&id) {
            self.pending_held.push((id, reason));
        }
    }

    /// Whether settlements, delivery counts or held dead letters wait to
    /// be written.
    pub(crate) fn has_pending_settlements(&self) -> bool {
        !self.pending_settle.is_empty()
            || !self.pending_returns.is_empty()
            || !self.pending_held.is_empty()
    }

    /// Writes pending settlements (one record, not waited for) and moves
    /// the log start up to the oldest unsettled message.
    ///
    /// # Errors
    /// The log's refusal (settlements made once the partition leads
    /// elsewhere are dropped: the new leader redelivers their messages).
    pub(crate) fn flush(&mut self) -> Result<(), CoreError> {
        if !self.has_pending_settlements() {
            return Ok(());
        }
        let returned = std::mem::take(&mut self.pending_returns);
        let held = std::mem::take(&mut self.pending_held);
        let settled = std::mem::take(&mut self.pending_settle);
        let mut records: Vec<(&[u8], BytesMut)> = Vec::with_capacity(2);
        if !returned.is_empty() {
            let mut value = BytesMut::with_capacity(4 + 12 * returned.len());
            put_returns(&mut value, returned.iter().copied());
            records.push((RETURNS, value));
        }
        if !held.is_empty() {
            let mut value = BytesMut::with_capacity(4 + 9 * held.len());
            put_held(&mut value, held.iter().copied());
            records.push((HELD, value));
        }
        if !settled.is_empty() {
            let mut value = BytesMut::with_capacity(4 + 8 * settled.len());
            value.put_u32(u32::try_from(settled.len()).unwrap_or(u32::MAX));
            for settled in &settled {
                value.put_u64(settled.id);
            }
            records.push((SETTLEMENT, value));
        }
        let records: Vec<crate::replay::Entry<'_>> = records
            .iter()
            .map(|(key, value)| (Some(*key), Some(&value[..])))
            .collect();
        let mut batch = crate::replay::batch_of(&records, "quorum queue")?;
        // Not waited for (synced and replicated soon after): a settlement
        // lost in a failover redelivers, a delivery count lost counts one
        // less.
        match self.topic.append_start(self.partition.id(), &mut batch) {
            Ok(appended) => {
                self.partition.sync_soon(appended.info.last_offset.plus(1));
                // Kept for the next leader until surely replicated.
                self.settled.record(&self.queue, &settled, false);
            }
            // No longer the leader: the settlements go to the next one.
            Err(CoreError::NotLeader { .. }) => {
                tracing::debug!(topic = %self.topic.name(), settled = settled.len(), returned = returned.len(), "settlements for the next leader: no longer the leader");
                self.settled.record(&self.queue, &settled, true);
                return Ok(());
            }
            Err(error) => return Err(error),
        }
        self.reclaim();
        Ok(())
    }

    /// Moves the log start up to the oldest unsettled message, as far as
    /// the high watermark, once it lags by [`RECLAIM_EVERY`] records.
    fn reclaim(&self) {
        let oldest = self
            .outstanding
            .first_key_value()
            .map_or(self.partition.log_end(), |(id, _)| {
                Offset::from(i64::try_from(*id).unwrap_or(i64::MAX))
            });
        let to = oldest.min(self.partition.high_watermark());
        if to.get() - self.partition.log_start().get() >= RECLAIM_EVERY
            && let Err(error) = self.partition.delete_records(to)
        {
            tracing::warn!(topic = %self.topic.name(), %error, "cannot move a quorum queue's log start");
        }
    }

    /// Reads back messages of ids `first_id..first_id + count` (a queue
    /// whose head ran dry), about `max_bytes` of them.
    ///
    /// # Errors
    /// The log's read errors.
    pub(crate) fn read(
        &self,
        first_id: u64,
        count: u64,
        max_bytes: usize,
    ) -> Result<Vec<PagedIn>, CoreError> {
        let end = first_id.saturating_add(count);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let from = Offset::from(i64::try_from(first_id).unwrap_or(i64::MAX));
        let mut next = from;
        while next < self.partition.log_end() && (out.is_empty() || bytes < max_bytes) {
            let Some(chunk) = crate::partition::read_chunk(
                self.partition.log(),
                next,
                max_bytes.max(1),
                sluice_log::ReadBound::LogEnd,
                crate::partition::Undecodable::SkipRest,
            )?
            else {
                break;
            };
            for record in chunk.records {
                let Ok(id) = u64::try_from(record.offset) else {
                    continue;
                };
                if id < first_id || id >= end || record.key.as_deref() != Some(MESSAGE) {
                    continue;
                }
                let value = record.value.unwrap_or_default();
                bytes += value.len();
                out.push(PagedIn {
                    id,
                    message: Message::decode(value),
                    timestamp: record.timestamp,
                    delivered: false,
                    // Paged out while ready, so never returned since
                    // this leader rebuilt the queue.
                    returns: 0,
                });
            }
            if chunk.next <= next || u64::try_from(chunk.next.get()).unwrap_or(u64::MAX) >= end {
                break;
            }
            next = chunk.next;
        }
        Ok(out)
    }

    /// The leader epoch the queue was rebuilt in.
    pub(crate) fn epoch(&self) -> i32 {
        self.epoch
    }

    /// Bytes the partition takes on this node's disk.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.partition.size_bytes()
    }
}

/// The ids of a settlement record, `[count:4][id:8]*count`.
fn ids(mut value: Bytes) -> Vec<u64> {
    if value.remaining() < 4 {
        return Vec::new();
    }
    let count = value.get_u32() as usize;
    let mut out = Vec::with_capacity(count.min(value.remaining() / 8));
    while out.len() < count && value.remaining() >= 8 {
        out.push(value.get_u64());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: u64, epoch: i32) -> MessageRef {
        MessageRef { id, epoch }
    }

    /// A node remembers its settlements per queue for the next leader;
    /// stale ones (made through a leader that stopped leading) wait to be
    /// sent on, once, and a full handover covers them.
    #[test]
    fn recent_settlements_are_kept_per_queue_and_stale_ones_sent_once() {
        let settled = RecentSettlements::default();
        settled.record("q", &[at(1, 3), at(2, 3)], false);
        settled.record("q", &[at(5, 4)], true);
        settled.record("other", &[at(9, 1)], false);
        assert_eq!(settled.take_stale("q"), vec![at(5, 4)]);
        assert!(settled.take_stale("q").is_empty(), "taken once");
        settled.keep_stale("q", vec![at(5, 4)]);
        assert_eq!(settled.recent("q"), vec![at(1, 3), at(2, 3), at(5, 4)]);
        assert!(
            settled.take_stale("q").is_empty(),
            "a full handover covers the stale ones"
        );
        assert_eq!(settled.recent("other"), vec![at(9, 1)]);
        settled.forget("q");
        assert!(settled.recent("q").is_empty());
    }

    /// The recent settlements go to each new leader once; a node that led
    /// the queue meanwhile hands them over again, and so does a node whose
    /// link to the leader failed since (the leader may have restarted,
    /// leading in the same epoch without what it had not replicated).
    #[test]
    fn recent_settlements_are_handed_to_each_leader_once() {
        let settled = RecentSettlements::default();
        settled.record("q", &[at(1, 3)], false);
        assert_eq!(settled.handover("q", 2, 0), Some(vec![at(1, 3)]));
        assert_eq!(settled.handover("q", 2, 0), None);
        settled.record("q", &[at(2, 3)], false);
        assert_eq!(settled.handover("q", 3, 0), Some(vec![at(1, 3), at(2, 3)]));
        settled.led_here("q");
        assert_eq!(settled.handover("q", 3, 0), Some(vec![at(1, 3), at(2, 3)]));
        assert_eq!(settled.handover("q", 3, 0), None);
        assert_eq!(
            settled.handover("q", 3, 1),
            Some(vec![at(1, 3), at(2, 3)]),
            "the link to the leader failed since"
        );
        assert_eq!(settled.handover("q", 3, 1), None);
    }

    /// Settlements another node relayed here are applied here but never
    /// handed on, and are remembered once however often they come: a
    /// peer's whole list, sent at every leader change, neither goes round
    /// the cluster nor pushes this node's own settlements out.
    #[test]
    fn relayed_settlements_are_kept_once_and_not_handed_on() {
        let settled = RecentSettlements::default();
        settled.record("q", &[at(1, 3)], false);
        let peers: Vec<MessageRef> = (100..(100 + SETTLED_MAX as u64 / 2))
            .map(|id| at(id, 3))
            .collect();
        for _ in 0..4 {
            settled.record_relayed("q", &peers);
        }
        let recent = settled.recent_of("q", false);
        assert_eq!(recent.len(), 1 + peers.len(), "each once");
        assert_eq!(recent.first(), Some(&at(1, 3)), "its own kept");
        assert_eq!(settled.handover("q", 2, 0), Some(vec![at(1, 3)]));
        // Made here too (a second delivery of it, say): its own now.
        settled.record("q", &[at(100, 3)], false);
        assert_eq!(
            settled.handover("q", 3, 0),
            Some(vec![at(1, 3), at(100, 3)])
        );
    }

    #[test]
    fn recent_settlements_are_bounded_in_count() {
        let settled = RecentSettlements::default();
        let many: Vec<MessageRef> = (0..(SETTLED_MAX as u64 + 10)).map(|id| at(id, 1)).collect();
        settled.record("q", &many, false);
        let recent = settled.recent("q");
        assert_eq!(recent.len(), SETTLED_MAX);
        assert_eq!(recent.first(), Some(&at(10, 1)), "the oldest go first");
    }
}
