//! The leader-epoch checkpoint: for each leader epoch, the first offset
//! appended under it (KIP-101). Replication uses it to find where a follower's
//! log diverged from the leader's (OffsetForLeaderEpoch).
//!
//! File format, as Kafka's `leader-epoch-checkpoint`: a version line (`0`), a
//! count line, then one `epoch start_offset` line per entry, ascending.

use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_types::{LeaderEpoch, Offset};

use crate::checkpoint;
use crate::error::LogError;

pub(crate) const FILE_NAME: &str = "leader-epoch-checkpoint";

#[derive(Debug)]
pub(crate) struct EpochCache {
    path: PathBuf,
    /// Ascending in both epoch and start offset.
    entries: Vec<(LeaderEpoch, Offset)>,
}

impl EpochCache {
    pub(crate) fn load(dir: &Path) -> Result<EpochCache, LogError> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(EpochCache {
                    path,
                    entries: Vec::new(),
                });
            }
            Err(err) => return Err(LogError::io(&path)(err)),
        };
        let damaged = |reason: &str| LogError::Unrecoverable {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some("0") {
            return Err(damaged("unknown version line"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| damaged("missing entry count"))?;
        let mut entries = Vec::with_capacity(count.min(1024));
        for line in lines.take(count) {
            let mut fields = line.split_whitespace();
            let epoch = fields.next().and_then(|f| f.parse::<LeaderEpoch>().ok());
            let start = fields.next().and_then(|f| f.parse::<Offset>().ok());
            match (epoch, start) {
                (Some(epoch), Some(start)) => entries.push((epoch, start)),
                _ => return Err(damaged("malformed entry line")),
            }
        }
        if entries.len() != count {
            return Err(damaged("fewer entries than its count"));
        }
        let ascending = entries
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.0 < b.0 && a.1 <= b.1));
        if !ascending {
            return Err(damaged("entries are not ascending"));
        }
        Ok(EpochCache { path, entries })
    }

    /// Records that `epoch` starts at `start`, if it is newer than the latest.
    pub(crate) fn assign(&mut self, epoch: LeaderEpoch, start: Offset) -> Result<(), LogError> {
        if epoch.get() < 0 || self.entries.last().is_some_and(|(last, _)| *last >= epoch) {
            return Ok(());
        }
        self.entries.push((epoch, start));
        self.persist()
    }

    /// Drops entries starting at or after `end` (the log was truncated there).
    pub(crate) fn truncate_from_end(&mut self, end: Offset) -> Result<(), LogError> {
        let before = self.entries.len();
        self.entries.retain(|(_, start)| *start < end);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// Forgets offsets before `start` (the log start moved); the epoch that
    /// covered `start` now begins there.
    pub(crate) fn truncate_from_start(&mut self, start: Offset) -> Result<(), LogError> {
        let covering = self.entries.partition_point(|(_, s)| *s <= start);
        if covering == 0 {
            return Ok(());
        }
        let keep_from = covering - 1;
        let changed = keep_from > 0 || self.entries.first().is_some_and(|(_, s)| *s != start);
        if changed {
            self.entries.drain(..keep_from);
            if let Some(first) = self.entries.first_mut() {
                first.1 = start;
            }
            self.persist()?;
        }
        Ok(())
    }

    /// OffsetForLeaderEpoch: the largest epoch at most `requested` and the
    /// offset where it ended (the next epoch's start, or `log_end` for the
    /// latest). `None` when `requested` is older than every known epoch.
    pub(crate) fn end_offset_for(
        &self,
        requested: LeaderEpoch,
        log_end: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        let after = self
            .entries
            .partition_point(|(epoch, _)| *epoch <= requested);
        let (epoch, _) = *self.entries.get(after.checked_sub(1)?)?;
        let end = self.entries.get(after).map_or(log_end, |(_, start)| *start);
        Some((epoch, end))
    }

    pub(crate) fn latest(&self) -> Option<LeaderEpoch> {
        self.entries.last().map(|(epoch, _)| *epoch)
    }

    fn persist(&self) -> Result<(), LogError> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        checkpoint::write_atomically(&self.path, |file| file.write_all(text.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(n: i32) -> LeaderEpoch {
        LeaderEpoch::from(n)
    }
    fn o(n: i64) -> Offset {
        Offset::from(n)
    }

    #[test]
    fn end_offsets_follow_kafka_semantics() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cache = EpochCache::load(dir.path())?;
        cache.assign(e(1), o(0))?;
        cache.assign(e(3), o(100))?;
        cache.assign(e(2), o(150))?; // older epoch: ignored
        assert_eq!(cache.end_offset_for(e(0), o(200)), None);
        assert_eq!(cache.end_offset_for(e(1), o(200)), Some((e(1), o(100))));
        assert_eq!(cache.end_offset_for(e(2), o(200)), Some((e(1), o(100))));
        assert_eq!(cache.end_offset_for(e(3), o(200)), Some((e(3), o(200))));
        assert_eq!(cache.end_offset_for(e(9), o(200)), Some((e(3), o(200))));

        let reopened = EpochCache::load(dir.path())?;
        assert_eq!(reopened.entries, cache.entries);
        Ok(())
    }

    #[test]
    fn truncation_from_both_ends() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cache = EpochCache::load(dir.path())?;
        for (epoch, start) in [(1, 0), (2, 10), (3, 20)] {
            cache.assign(e(epoch), o(start))?;
        }
        cache.truncate_from_end(o(20))?;
        assert_eq!(cache.latest(), Some(e(2)));
        cache.truncate_from_start(o(15))?;
        assert_eq!(cache.entries, vec![(e(2), o(15))]);
        assert_eq!(EpochCache::load(dir.path())?.entries, cache.entries);
        Ok(())
    }

    #[test]
    fn damaged_checkpoint_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(FILE_NAME), "0\n2\n1 0\n").expect("write");
        let err = EpochCache::load(dir.path()).expect_err("short file");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }
}
