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
}

#[derive(Debug, Clone)]
enum AckTarget {
    Queue(Arc<PendingWrites>),
    Partition(Arc<Partition>),
}

impl PendingAck {
    /// The acknowledgement of a partition append ending before `end`.
    pub(crate) fn partition(partition: Arc<Partition>, end: Offset, level: AckLevel) -> PendingAck {
        PendingAck {
            target: AckTarget::Partition(partition),
            end,
            level,
        }
    }

    /// The acknowledgement of a durable queue's message `end - 1`, whose
    /// write may still be buffered.
    pub(crate) fn queue(pending: Arc<PendingWrites>, end: Offset, level: AckLevel) -> PendingAck {
        PendingAck {
            target: AckTarget::Queue(pending),
            end,
            level,
        }
    }

    pub fn level(&self) -> AckLevel {
        self.level
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
                        replication.reached_blocking(self.end, IN_SYNC_TIMEOUT),
                    ),
                    _ => Ok(()),
                }
            }
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
                        replication.reached(self.end, IN_SYNC_TIMEOUT).await,
                    ),
                    _ => Ok(()),
                }
            }
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

/// The answer to a wait for the in-sync replicas.
fn outcome(partition: &Partition, reached: crate::replication::Reached) -> Result<(), CoreError> {
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
            PendingAck::partition(Arc::clone(p), Offset::from(end), level)
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
}
