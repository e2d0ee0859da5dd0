//! Committed consumer offsets, per group, topic and partition.
//!
//! Every commit is appended to the internal log `__consumer_offsets-0` as
//! one record batch (one record per partition) and acknowledged once durable;
//! the latest record per key wins, so the log is ready for compaction. On
//! open the log is replayed into memory.
//!
//! Record key layout: `[version:2=0][group_len:2][group][topic_len:2][topic][partition:4]`;
//! value layout: `[version:2=0][offset:8][leader_epoch:4][metadata_len:4 (-1 = null)][metadata]`,
//! big-endian.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sluice_log::{Log, LogManager};
use sluice_types::Offset;
use sluice_types::{Clock, SystemClock};

use crate::CoreError;
use crate::fields::{get_str, put_str};

/// The internal log holding committed offsets.
pub const OFFSETS_LOG: &str = "__consumer_offsets-0";

/// One committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

type GroupOffsets = BTreeMap<(String, i32), CommittedOffset>;

/// Committed offsets of every group.
#[derive(Debug)]
pub struct OffsetStore {
    log: Arc<Log>,
    groups: Mutex<HashMap<String, GroupOffsets>>,
    /// Per group, the time of its latest commit (record time), for expiry.
    last_commit: Mutex<HashMap<String, i64>>,
}

impl OffsetStore {
    pub(crate) fn open(logs: &LogManager, segment_bytes: u64) -> Result<OffsetStore, CoreError> {
        // Compacted, never deleted by age or size: the latest commit per
        // key is the state (Kafka's __consumer_offsets is the same).
        let config = sluice_log::LogConfig {
            cleanup_compact: true,
            cleanup_delete: false,
            segment_bytes,
            ..logs.defaults().clone()
        };
        let log = logs.get_or_create(OFFSETS_LOG, Some(config.clone()))?;
        log.set_config(config);
        let mut groups: HashMap<String, GroupOffsets> = HashMap::new();
        let mut last_commit: HashMap<String, i64> = HashMap::new();
        crate::replay::for_each_record(&log, log.log_start(), |record| {
            let Some((group, topic, partition)) = record.key.as_ref().and_then(decode_key) else {
                return;
            };
            let latest = last_commit.entry(group.clone()).or_insert(record.timestamp);
            *latest = (*latest).max(record.timestamp);
            let entry = groups.entry(group).or_default();
            match record.value.as_ref().and_then(decode_value) {
                Some(committed) => {
                    entry.insert((topic, partition), committed);
                }
                None => {
                    entry.remove(&(topic, partition));
                }
            }
        })?;
        groups.retain(|_, offsets| !offsets.is_empty());
        last_commit.retain(|group, _| groups.contains_key(group));
        Ok(OffsetStore {
            log,
            groups: Mutex::new(groups),
            last_commit: Mutex::new(last_commit),
        })
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, GroupOffsets>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `offsets` for `group` durably, all or nothing. Blocking.
    ///
    /// # Errors
    /// [`CoreError::Log`] when the append fails; nothing is stored then.
    pub fn commit(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), CoreError> {
        if offsets.is_empty() {
            return Ok(());
        }
        self.append(
            offsets
                .iter()
                .map(|(topic, partition, committed)| {
                    (
                        encode_key(group, topic, *partition),
                        Some(encode_value(committed)),
                    )
                })
                .collect(),
        )?;
        self.last_commit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group.to_owned(), SystemClock.now_ms());
        let mut groups = self.groups();
        let entry = groups.entry(group.to_owned()).or_default();
        for (topic, partition, committed) in offsets {
            entry.insert((topic.clone(), *partition), committed.clone());
        }
        Ok(())
    }

    /// Forgets every committed offset of `group` (tombstones in the log).
    /// Blocking.
    ///
    /// # Errors
    /// [`CoreError::Log`] when the append fails.
    pub fn delete_group(&self, group: &str) -> Result<(), CoreError> {
        let keys: Vec<(String, i32)> = self
            .group(group)
            .into_iter()
            .map(|(topic, partition, _)| (topic, partition))
            .collect();
        self.delete(group, &keys)
    }

    /// Forgets the offsets of every group that has not committed for
    /// `retention` and has no members now (Kafka's `offsets.retention.minutes`,
    /// KIP-211). Returns the groups forgotten. Blocking.
    ///
    /// # Errors
    /// [`CoreError::Log`] when the tombstones cannot be appended.
    pub fn expire(
        &self,
        retention: std::time::Duration,
        has_members: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, CoreError> {
        let cutoff = SystemClock
            .now_ms()
            .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let stale: Vec<String> = self
            .last_commit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(group, at)| **at < cutoff && !has_members(group))
            .map(|(group, _)| group.clone())
            .collect();
        for group in &stale {
            self.delete_group(group)?;
            self.last_commit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(group);
            tracing::info!(group = %group, "committed offsets expired");
        }
        Ok(stale)
    }

    /// Forgets the committed offsets of some partitions (OffsetDelete).
    /// Blocking.
    ///
    /// # Errors
    /// [`CoreError::Log`] when the append fails.
    pub fn delete(&self, group: &str, partitions: &[(String, i32)]) -> Result<(), CoreError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let records: Vec<(Bytes, Option<Bytes>)> = partitions
            .iter()
            .map(|(topic, partition)| (encode_key(group, topic, *partition), None))
            .collect();
        self.append(records)?;
        let mut groups = self.groups();
        if let Some(offsets) = groups.get_mut(group) {
            for key in partitions {
                offsets.remove(key);
            }
            if offsets.is_empty() {
                groups.remove(group);
            }
        }
        Ok(())
    }

    fn append(&self, entries: Vec<(Bytes, Option<Bytes>)>) -> Result<(), CoreError> {
        let entries: Vec<_> = entries
            .iter()
            .map(|(key, value)| (Some(key.as_ref()), value.as_deref()))
            .collect();
        let mut batch = crate::replay::batch_of(&entries, "offsets")?;
        self.log.append(&mut batch, crate::LOCAL_EPOCH)?;
        Ok(())
    }

    /// The committed offset of one partition for `group`.
    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.groups()
            .get(group)
            .and_then(|offsets| offsets.get(&(topic.to_owned(), partition)).cloned())
    }

    /// Every committed offset of `group`, sorted by topic and partition.
    /// Every group with at least one committed offset.
    pub fn group_ids(&self) -> Vec<String> {
        self.groups()
            .iter()
            .filter(|(_, offsets)| !offsets.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn group(&self, group: &str) -> Vec<(String, i32, CommittedOffset)> {
        self.groups().get(group).map_or_else(Vec::new, |offsets| {
            offsets
                .iter()
                .map(|((topic, partition), c)| (topic.clone(), *partition, c.clone()))
                .collect()
        })
    }

    /// Offset of the log end, for tests that check commits were stored.
    pub fn log_end(&self) -> Offset {
        self.log.log_end()
    }
}

fn encode_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u16(0);
    put_str(&mut out, group);
    put_str(&mut out, topic);
    out.put_i32(partition);
    out.freeze()
}

fn encode_value(committed: &CommittedOffset) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u16(0);
    out.put_i64(committed.offset);
    out.put_i32(committed.leader_epoch);
    match &committed.metadata {
        Some(metadata) => {
            out.put_i32(metadata.len() as i32);
            out.put_slice(metadata.as_bytes());
        }
        None => out.put_i32(-1),
    }
    out.freeze()
}

fn decode_key(key: &Bytes) -> Option<(String, String, i32)> {
    let mut buf = key.clone();
    if buf.remaining() < 2 || buf.get_u16() != 0 {
        return None;
    }
    let group = get_str(&mut buf)?;
    let topic = get_str(&mut buf)?;
    (buf.remaining() >= 4).then(|| (group, topic, buf.get_i32()))
}

fn decode_value(value: &Bytes) -> Option<CommittedOffset> {
    let mut buf = value.clone();
    if buf.remaining() < 2 + 8 + 4 + 4 || buf.get_u16() != 0 {
        return None;
    }
    let offset = buf.get_i64();
    let leader_epoch = buf.get_i32();
    let len = buf.get_i32();
    let metadata = match usize::try_from(len) {
        Ok(len) if buf.remaining() >= len => {
            Some(String::from_utf8_lossy(&buf.split_to(len)).into_owned())
        }
        _ => None,
    };
    Some(CommittedOffset {
        offset,
        leader_epoch,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_log::LogConfig;

    #[test]
    fn commits_survive_reopen_and_latest_wins() -> Result<(), CoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let committed = |offset, metadata: Option<&str>| CommittedOffset {
            offset,
            leader_epoch: 0,
            metadata: metadata.map(str::to_owned),
        };
        {
            let logs = LogManager::open(dir.path(), LogConfig::default())?;
            let store = OffsetStore::open(&logs, 100 << 20)?;
            store.commit("g", &[("t".into(), 0, committed(5, Some("meta")))])?;
            store.commit(
                "g",
                &[
                    ("t".into(), 0, committed(7, None)),
                    ("t".into(), 1, committed(3, Some(""))),
                ],
            )?;
            store.commit("other", &[("t".into(), 0, committed(1, None))])?;
            logs.shutdown()?;
        }
        let logs = LogManager::open(dir.path(), LogConfig::default())?;
        let store = OffsetStore::open(&logs, 100 << 20)?;
        assert_eq!(store.fetch("g", "t", 0), Some(committed(7, None)));
        assert_eq!(store.fetch("g", "t", 1), Some(committed(3, Some(""))));
        assert_eq!(store.fetch("other", "t", 0), Some(committed(1, None)));
        assert_eq!(store.fetch("g", "t", 2), None);
        assert_eq!(store.group("g").len(), 2);

        // Nothing is recent enough to survive a zero retention, but a group
        // with members keeps its offsets.
        let expired = store.expire(std::time::Duration::ZERO, |group| group == "other")?;
        assert_eq!(expired, vec!["g".to_owned()]);
        assert_eq!(store.fetch("g", "t", 0), None);
        assert_eq!(store.fetch("other", "t", 0), Some(committed(1, None)));
        assert!(
            store
                .expire(std::time::Duration::from_secs(3600), |_| false)?
                .is_empty()
        );
        logs.shutdown()?;

        let logs = LogManager::open(dir.path(), LogConfig::default())?;
        let store = OffsetStore::open(&logs, 100 << 20)?;
        assert_eq!(store.fetch("g", "t", 0), None, "expiry survives a restart");
        assert_eq!(store.fetch("other", "t", 0), Some(committed(1, None)));
        logs.shutdown()?;
        Ok(())
    }
}
