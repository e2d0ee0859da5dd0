//! Acknowledgements that wait: what a producer's acks=all, a publisher's
//! confirm or an HTTP produce waits for before it is answered.
//!
//! An append is written at once and acknowledged at an explicit
//! [`AckLevel`]: today once written (durability `interval`/`never`) or once
//! on this node's disk (`always`); replication adds a level for the
//! in-sync replicas. [`Acks`] gathers the acknowledgements of many appends,
//! one per log at its furthest offset, so that a burst shares one wait.

use std::sync::Arc;

use sluice_types::Offset;

use crate::CoreError;
use crate::messaging::PendingWrites;
use crate::partition::Partition;

/// How far an acknowledgement waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AckLevel {
    /// Written to the log (the page cache): nothing to wait for but the
    /// readers to be woken.
    Written,
    /// Synced to this node's disk.
    LocalDurable,
    /// On every in-sync replica of a replicated partition (the high
    /// watermark passed it): Kafka's acks=all.
    InSync,
}

/// Longest an acknowledgement waits for the in-sync replicas (Kafka's
/// producer `request.timeout.ms` default).
pub(crate) const IN_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An acknowledgement that may still have to wait: of a stream or topic
/// partition, or of a durable queue's message log.
#[derive(Debug, Clone)]
pub struct PendingAck {
    target: AckTarget,
    end: Offset,
    level: AckLevel,
    /// A partition's leader epoch when the records were written: the
    /// in-sync replicas acknowledge them only while this node still leads
    /// in it (a node that lost the lead may have cut them and taken other
    /// records at the same offsets, which its high watermark then covers).
    epoch: i32,
}

#[derive(Debug, Clone)]
enum AckTarget {
    Queue(Arc<PendingWrites>),
    Partition(Arc<Partition>),
    /// A message sent to a queue living on another node: settled when
    /// that node answers.
    Remote(Arc<RemoteOutcome>),
}

/// The answer another node gives for a message sent to one of its
/// queues: taken (with the queue's guarantee), or refused and why.
#[derive(Debug, Default)]
pub struct RemoteOutcome {
    answer: std::sync::Mutex<Option<Result<(), String>>>,
    answered: std::sync::Condvar,
    woken: tokio::sync::Notify,
}

impl RemoteOutcome {
    pub fn new() -> Arc<RemoteOutcome> {
        Arc::new(RemoteOutcome::default())
    }

    /// Records the answer (the first one counts) and wakes the waiters.
    pub fn settle(&self, answer: Result<(), String>) {
        let mut held = self.answer.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none() {
            *held = Some(answer);
        }
        drop(held);
        self.answered.notify_all();
        self.woken.notify_waiters();
    }

    fn answer(&self) -> Option<Result<(), String>> {
        self.answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn into_result(answer: Option<Result<(), String>>) -> Result<(), CoreError> {
        match answer {
            Some(Ok(())) => Ok(()),
            Some(Err(reason)) => Err(CoreError::Internal { reason }),
            None => Err(CoreError::Internal {
                reason: format!(
                    "the queue's node did not answer within {} s",
                    IN_SYNC_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    /// Waits for the answer, at most [`IN_SYNC_TIMEOUT`]. Blocking.
    fn wait(&self) -> Result<(), CoreError> {
        let held = self.answer.lock().unwrap_or_else(|e| e.into_inner());
        let (held, _) = self
            .answered
            .wait_timeout_while(held, IN_SYNC_TIMEOUT, |answer| answer.is_none())
            .unwrap_or_else(|e| e.into_inner());
        RemoteOutcome::into_result(held.clone())
    }

    async fn wait_async(&self) -> Result<(), CoreError> {
        let waited = tokio::time::timeout(IN_SYNC_TIMEOUT, async {
            loop {
                let woken = self.woken.notified();
                if let Some(answer) = self.answer() {
                    return answer;
                }
                woken.await;
            }
        })
        .await;
        RemoteOutcome::into_result(waited.ok())
    }
}

impl PendingAck {
    /// The acknowledgement of a partition append ending before `end`,
    /// written in leader epoch `epoch`.
    pub(crate) fn partition(
        partition: Arc<Partition>,
        end: Offset,
        level: AckLevel,
        epoch: i32,
    ) -> PendingAck {
        PendingAck {
            target: AckTarget::Partition(partition),
            end,
            level,
            epoch,
        }
    }

    /// The acknowledgement of a durable queue's message `end - 1`, whose
    /// write may still be buffered.
    pub(crate) fn queue(pending: Arc<PendingWrites>, end: Offset, level: AckLevel) -> PendingAck {
        PendingAck {
            target: AckTarget::Queue(pending),
            end,
            level,
            epoch: 0,
        }
    }

    /// The acknowledgement of a message sent to a queue on another node.
    pub fn remote(outcome: Arc<RemoteOutcome>) -> PendingAck {
        PendingAck {
            target: AckTarget::Remote(outcome),
            end: Offset::from(0),
            level: AckLevel::LocalDurable,
            epoch: 0,
        }
    }

    pub fn level(&self) -> AckLevel {
        self.level
    }

    /// The leader epoch the records were written (stamped) in.
    pub(crate) fn epoch(&self) -> i32 {
        self.epoch
    }

    /// Raised to wait for every in-sync replica when the target is a
    /// replicated partition (acks=all); unchanged otherwise.
    #[must_use]
    pub fn in_sync(mut self) -> PendingAck {
        if let AckTarget::Partition(partition) = &self.target
            && partition.replication().is_some()
        {
            self.level = AckLevel::InSync;
        }
        self
    }

    /// Whether the partition's own disk must have the records first: its
    /// level asks for it, or the in-sync level on a log synced on every
    /// write (the leader counts what it has synced).
    fn needs_local_sync(&self, partition: &Partition) -> bool {
        match self.level {
            AckLevel::Written => false,
            AckLevel::LocalDurable => true,
            AckLevel::InSync => partition.log().durability() == sluice_log::Durability::Always,
        }
    }

    /// Waits until the append reached its level, sharing the write and the
    /// sync with concurrent appenders; a partition's readers are woken
    /// afterwards, even when the sync failed. Blocking.
    ///
    /// # Errors
    /// The log's write or sync failure.
    pub fn wait(&self) -> Result<(), CoreError> {
        match &self.target {
            AckTarget::Queue(pending) => {
                if self.level >= AckLevel::LocalDurable {
                    pending.write()?;
                    pending.log().sync_to(self.end)?;
                }
                Ok(())
            }
            AckTarget::Partition(partition) => {
                let synced = if self.needs_local_sync(partition) {
                    partition.log().sync_to(self.end)
                } else {
                    Ok(())
                };
                partition.wake_readers();
                synced?;
                match partition.replication() {
                    Some(replication) if self.level == AckLevel::InSync => outcome(
                        partition,
                        self.epoch,
                        replication.reached_blocking(self.end, IN_SYNC_TIMEOUT),
                    ),
                    _ => Ok(()),
                }
            }
            AckTarget::Remote(outcome) => outcome.wait(),
        }
    }

    /// As [`PendingAck::wait`], awaited on the async runtime: a partition's
    /// sync is shared through its sync driver and holds no thread per
    /// waiter; a queue's wait runs on the blocking pool.
    ///
    /// # Errors
    /// The log's write or sync failure.
    pub async fn wait_async(&self) -> Result<(), CoreError> {
        match &self.target {
            AckTarget::Partition(partition) => {
                let synced = if self.needs_local_sync(partition) {
                    partition.synced_to(self.end).await
                } else {
                    Ok(())
                };
                partition.wake_readers();
                synced?;
                match partition.replication() {
                    Some(replication) if self.level == AckLevel::InSync => outcome(
                        partition,
                        self.epoch,
                        replication.reached(self.end, IN_SYNC_TIMEOUT).await,
                    ),
                    _ => Ok(()),
                }
            }
            AckTarget::Remote(outcome) => outcome.wait_async().await,
            AckTarget::Queue(_) => {
                let ack = self.clone();
                tokio::task::spawn_blocking(move || ack.wait())
                    .await
                    .map_err(|join| CoreError::Internal {
                        reason: format!("acknowledgement task failed: {join}"),
                    })?
            }
        }
    }

    /// Whether `other` waits on the same log (then the further covers both).
    fn same_log(&self, other: &PendingAck) -> bool {
        match (&self.target, &other.target) {
            (AckTarget::Queue(a), AckTarget::Queue(b)) => Arc::ptr_eq(a, b),
            (AckTarget::Partition(a), AckTarget::Partition(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The answer to a wait for the in-sync replicas of records written in
/// leader epoch `epoch`. The epoch is read after the high watermark: a
/// node that stopped leading changed its epoch before it could cut its log
/// or follow another leader's high watermark.
fn outcome(
    partition: &Partition,
    epoch: i32,
    reached: crate::replication::Reached,
) -> Result<(), CoreError> {
    let reached = match reached {
        crate::replication::Reached::Yes if partition.leader_epoch().get() != epoch => {
            crate::replication::Reached::NoLongerLeader(
                partition.replication().map_or(-1, |r| r.leader()),
            )
        }
        other => other,
    };
    match reached {
        crate::replication::Reached::Yes => Ok(()),
        crate::replication::Reached::TimedOut => Err(CoreError::ReplicationTimedOut {
            waited_ms: u64::try_from(IN_SYNC_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        }),
        crate::replication::Reached::NoLongerLeader(leader) => Err(CoreError::NotLeader {
            topic: partition.topic().to_owned(),
            partition: partition.id(),
            leader: Some(leader),
        }),
    }
}

/// The acknowledgements of several appends: one per log, at its furthest
/// offset and highest level.
#[derive(Debug, Clone, Default)]
pub struct Acks(Vec<PendingAck>);

impl Acks {
    /// Adds one; an acknowledgement on a log already held keeps the
    /// further end and the higher level.
    pub fn add(&mut self, ack: PendingAck) {
        match self.0.iter_mut().find(|held| held.same_log(&ack)) {
            Some(held) => {
                held.end = held.end.max(ack.end);
                held.level = held.level.max(ack.level);
                // Written in two epochs: the older one decides (a lead
                // lost between them fails the wait, and the writer retries).
                held.epoch = held.epoch.min(ack.epoch);
            }
            None => self.0.push(ack),
        }
    }

    /// Adds every acknowledgement of `other`.
    pub fn merge(&mut self, other: Acks) {
        for ack in other.0 {
            self.add(ack);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Waits for each in turn. Blocking.
    ///
    /// # Errors
    /// The first failure; the rest are not waited for.
    pub fn wait(&self) -> Result<(), CoreError> {
        self.0.iter().try_for_each(PendingAck::wait)
    }

    /// As [`Acks::wait`], awaited ([`PendingAck::wait_async`]).
    ///
    /// # Errors
    /// As [`Acks::wait`].
    pub async fn wait_async(&self) -> Result<(), CoreError> {
        for ack in &self.0 {
            ack.wait_async().await?;
        }
        Ok(())
    }
}

impl FromIterator<PendingAck> for Acks {
    fn from_iter<I: IntoIterator<Item = PendingAck>>(acks: I) -> Acks {
        let mut all = Acks::default();
        acks.into_iter().for_each(|ack| all.add(ack));
        all
    }
}

impl Extend<PendingAck> for Acks {
    fn extend<I: IntoIterator<Item = PendingAck>>(&mut self, acks: I) {
        acks.into_iter().for_each(|ack| self.add(ack));
    }
}

#[cfg(test)]
mod tests {
    use sluice_log::batch::{NewRecord, encode};

    use super::*;

    fn partition(dir: &std::path::Path) -> Arc<Partition> {
        Arc::new(crate::partition::test_partition(dir))
    }

    fn append(partition: &Partition, count: usize) {
        let records: Vec<NewRecord<'_>> = (0..count)
            .map(|_| NewRecord {
                key: None,
                value: Some(b"v"),
                timestamp: 0,
            })
            .collect();
        let mut batch = encode(&records).expect("encode");
        partition
            .log
            .append_unsynced(&mut batch, partition.leader_epoch())
            .expect("append");
    }

    #[test]
    fn acks_keep_one_wait_per_log_at_the_furthest_end_and_highest_level() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = partition(&dir.path().join("a"));
        let second = partition(&dir.path().join("b"));
        append(&first, 5);
        append(&second, 2);
        let at = |p: &Arc<Partition>, end: i64, level| {
            PendingAck::partition(Arc::clone(p), Offset::from(end), level, 0)
        };
        let mut acks: Acks = [
            at(&first, 3, AckLevel::Written),
            at(&second, 2, AckLevel::Written),
        ]
        .into_iter()
        .collect();
        acks.add(at(&first, 5, AckLevel::LocalDurable));
        acks.merge([at(&first, 1, AckLevel::Written)].into_iter().collect());
        assert_eq!(acks.0.len(), 2, "one per log");
        assert_eq!(acks.0[0].end, Offset::from(5));
        assert_eq!(acks.0[0].level(), AckLevel::LocalDurable);

        acks.wait().expect("wait");
        assert_eq!(
            first.log.durable_end(),
            Offset::from(5),
            "synced to its end"
        );
        assert_eq!(
            second.log.durable_end(),
            Offset::from(0),
            "a written-level ack does not sync"
        );
    }

    /// Node 1 leads a partition with node 2 in sync and has written three
    /// records in epoch 0, not yet acknowledged.
    fn led_with_three_written(dir: &std::path::Path) -> (Arc<Partition>, PendingAck) {
        let mut led = crate::partition::test_partition(dir);
        led.replication = Some(crate::replication::Replication::new(
            1,
            vec![1, 2],
            1,
            vec![1, 2],
            Offset::from(0),
        ));
        let led = Arc::new(led);
        append(&led, 3);
        let ack = PendingAck::partition(Arc::clone(&led), Offset::from(3), AckLevel::InSync, 0);
        (led, ack)
    }

    #[test]
    fn acks_all_is_answered_once_the_in_sync_follower_has_the_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (led, ack) = led_with_three_written(dir.path());
        let replication = led.replication().expect("replicated");
        replication.fetched(2, Offset::from(3), Offset::from(3), Offset::from(3));
        ack.wait().expect("in sync");
    }

    /// A leader that lost the lead may have cut the records and taken the
    /// new leader's at the same offsets; its high watermark, now the new
    /// leader's, passes them, yet they were never acknowledged by the
    /// in-sync replicas: the wait fails and the writer retries.
    #[test]
    fn acks_all_fails_when_the_lead_was_lost_even_if_the_high_watermark_passed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (led, ack) = led_with_three_written(dir.path());
        led.change_leader(2, 1, vec![2, 1]);
        let replication = led.replication().expect("replicated");
        replication.follow(Offset::from(3), Offset::from(3));
        assert!(replication.high_watermark() >= Offset::from(3));
        assert!(
            matches!(
                ack.wait(),
                Err(CoreError::NotLeader {
                    leader: Some(2),
                    ..
                })
            ),
            "answered"
        );
        // Leading again in a later epoch does not make them acknowledged.
        led.change_leader(1, 2, vec![1, 2]);
        replication.fetched(2, Offset::from(3), Offset::from(3), Offset::from(3));
        assert!(matches!(ack.wait(), Err(CoreError::NotLeader { .. })));
    }
}

/// Answers to writes (MQTT PUBACKs, STOMP RECEIPTs, …) that go out in the
/// order their writes came, each once what it waits for is durable. A
/// front-end pushes one batch per burst; batches are awaited on the
/// runtime (no thread held) and may finish out of order; the owner feeds
/// each finish back through [`OrderedAcks::finished`], which releases the
/// batches now at the front. Owned by one connection task.
#[derive(Debug)]
pub struct OrderedAcks<T> {
    waiting: std::collections::VecDeque<(u64, Vec<T>, Option<bool>)>,
    next: u64,
    done: tokio::sync::mpsc::UnboundedSender<(u64, bool)>,
}

impl<T> OrderedAcks<T> {
    /// The queue, and where finished batches are reported (`(batch, ok)`,
    /// to hand to [`OrderedAcks::finished`]).
    pub fn new() -> (
        OrderedAcks<T>,
        tokio::sync::mpsc::UnboundedReceiver<(u64, bool)>,
    ) {
        let (done, finished) = tokio::sync::mpsc::unbounded_channel();
        (
            OrderedAcks {
                waiting: std::collections::VecDeque::new(),
                next: 0,
                done,
            },
            finished,
        )
    }

    /// Queues `answers` behind the earlier ones, to go once `acks` are
    /// durable; returns them at once when nothing is waiting for them.
    pub fn push(&mut self, answers: Vec<T>, acks: Acks) -> Option<Vec<T>> {
        if answers.is_empty() {
            return None;
        }
        if acks.is_empty() && self.waiting.is_empty() {
            return Some(answers);
        }
        let id = self.next;
        self.next += 1;
        self.waiting.push_back((id, answers, None));
        let done = self.done.clone();
        tokio::spawn(async move {
            let ok = acks.wait_async().await.is_ok();
            let _ = done.send((id, ok));
        });
        None
    }

    /// Batch `batch` finished (`ok`: durable); the batches now free to go,
    /// in order, each with whether it was durable.
    pub fn finished(&mut self, batch: u64, ok: bool) -> Vec<(Vec<T>, bool)> {
        if let Some(waiting) = self.waiting.iter_mut().find(|(id, _, _)| *id == batch) {
            waiting.2 = Some(ok);
        }
        let mut released = Vec::new();
        while let Some((_, _, Some(ok))) = self.waiting.front() {
            let ok = *ok;
            if let Some((_, answers, _)) = self.waiting.pop_front() {
                released.push((answers, ok));
            }
        }
        released
    }

    /// Whether no batch is waiting.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod ordered_tests {
    use super::*;

    #[tokio::test]
    async fn batches_go_out_in_order_whatever_order_they_finish_in() {
        let (mut acks, _finished) = OrderedAcks::<u32>::new();
        assert_eq!(
            acks.push(vec![1], Acks::default()),
            Some(vec![1]),
            "nothing to wait for"
        );
        // Pretend two batches wait (their finishes are fed by hand).
        acks.waiting.push_back((7, vec![2], None));
        acks.waiting.push_back((8, vec![3, 4], None));
        assert_eq!(
            acks.push(vec![5], Acks::default()),
            None,
            "behind the waiting ones"
        );
        assert!(
            acks.finished(8, true).is_empty(),
            "the front is not done yet"
        );
        assert_eq!(
            acks.finished(7, false),
            vec![(vec![2], false), (vec![3, 4], true)]
        );
        assert!(
            !acks.is_empty(),
            "the third batch still waits for its report"
        );
    }
}
