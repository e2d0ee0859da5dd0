//! Log compaction (Kafka's `cleanup.policy=compact`): keep the latest
//! record per key in sealed segments, drop tombstones once
//! `delete_retention` has passed.
//!
//! Every batch is kept, with only its surviving records (possibly none):
//! base offset, last offset delta, timestamps and producer fields stay, so
//! offsets are never renumbered and the log's offsets stay contiguous from
//! batch to batch, which reads and recovery check. A compressed batch is
//! kept whole (its keys are not read), which keeps more than needed, never
//! less. So is every transactional batch, transaction markers included:
//! a marker's key is the same for every marker, and a record of an
//! aborted or undecided transaction must not stand for its key's latest
//! value. A cleaned segment is written beside the original as
//! `<base>.log.cleaned` and renamed over it; its indexes are rebuilt.
//! `cleaner-offset-checkpoint` records where the last pass ended, to
//! compute the dirty ratio.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sluice_types::Offset;

use crate::batch::{self, BatchHeader, HEADER_SIZE};
use crate::checkpoint;
use crate::error::{BatchFault, LogError};
use crate::log::Log;
use crate::segment::{self, Segment};

const CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
const CLEANED_SUFFIX: &str = "cleaned";

/// What a compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    pub segments_cleaned: usize,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Offsets below this have been compacted.
    pub cleaned_to: Offset,
}

struct Planned {
    base: Offset,
    path: PathBuf,
    size: u64,
}

impl Log {
    /// Compacts the sealed segments whose records are all older than
    /// `min_compaction_lag`, if compaction is on and enough of them is new
    /// since the last pass. Appends go on meanwhile; the log's lock is held
    /// only to plan and to swap each cleaned segment in.
    ///
    /// # Errors
    /// [`LogError::Io`] or [`LogError::Corrupt`]; the log is unchanged by a
    /// pass that fails.
    pub fn compact(&self) -> Result<CompactionOutcome, LogError> {
        let now = self.clock.now_ms();
        let (planned, config, clean_end) = {
            let state = self.state();
            if !state.config.cleanup_compact || state.closed || state.poisoned {
                return Ok(CompactionOutcome::default());
            }
            let lag =
                i64::try_from(state.config.min_compaction_lag.as_millis()).unwrap_or(i64::MAX);
            let eligible: Vec<&Segment> = state
                .segments
                .values()
                .take_while(|s| {
                    !s.is_active()
                        && s.max_timestamp
                            .is_none_or(|max| max <= now.saturating_sub(lag))
                })
                .collect();
            let Some(last) = eligible.last() else {
                return Ok(CompactionOutcome::default());
            };
            let clean_end = last.next_offset;
            let checkpoint = checkpoint::read_number(&self.dir.join(CHECKPOINT_FILE))?
                .map_or(state.log_start, Offset::from);
            let total: u64 = eligible.iter().map(|s| s.size).sum();
            let dirty: u64 = eligible
                .iter()
                .filter(|s| s.next_offset > checkpoint)
                .map(|s| s.size)
                .sum();
            let ratio = u64::from(state.config.min_cleanable_dirty_percent);
            // A dirty segment older than max.compaction.lag.ms is due
            // whatever the ratio.
            let overdue = state.config.max_compaction_lag.is_some_and(|max| {
                let max = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
                eligible.iter().any(|s| {
                    s.next_offset > checkpoint
                        && s.first_timestamp
                            .is_some_and(|first| first <= now.saturating_sub(max))
                })
            });
            if dirty == 0 || (!overdue && dirty * 100 < ratio * total) {
                return Ok(CompactionOutcome::default());
            }
            let planned: Vec<Planned> = eligible
                .iter()
                .map(|s| Planned {
                    base: s.base_offset,
                    path: s.data_path().to_path_buf(),
                    size: s.size,
                })
                .collect();
            (planned, state.config.clone(), clean_end)
        };

        // Latest offset of every key in the cleanable range.
        let mut latest: HashMap<Vec<u8>, Offset> = HashMap::new();
        for segment in &planned {
            for_each_batch(&segment.path, segment.size, |_, bytes| {
                if transactional(bytes) {
                    return Ok(());
                }
                if let Some(records) = batch::records(bytes) {
                    for record in records {
                        if let Some(key) = record.key {
                            latest.insert(key.to_vec(), record.offset);
                        }
                    }
                }
                Ok(())
            })?;
        }

        let horizon = now
            .saturating_sub(i64::try_from(config.delete_retention.as_millis()).unwrap_or(i64::MAX));
        let mut outcome = CompactionOutcome {
            cleaned_to: clean_end,
            ..CompactionOutcome::default()
        };
        for segment in &planned {
            let cleaned_path = segment
                .path
                .with_extension(format!("{}.{CLEANED_SUFFIX}", segment::DATA_SUFFIX));
            let mut cleaned = File::create(&cleaned_path).map_err(LogError::io(&cleaned_path))?;
            let mut removed = 0u64;
            let mut written = 0u64;
            for_each_batch(&segment.path, segment.size, |_, bytes| {
                let cleanable = if transactional(bytes) {
                    None
                } else {
                    batch::records(bytes)
                };
                let out = match cleanable {
                    Some(records) => {
                        let kept: Vec<_> = records
                            .iter()
                            .copied()
                            .filter(|r| match r.key {
                                Some(key) => {
                                    latest.get(key) == Some(&r.offset)
                                        && !(r.tombstone && r.timestamp < horizon)
                                }
                                None => true,
                            })
                            .collect();
                        removed += (records.len() - kept.len()) as u64;
                        if kept.len() == records.len() {
                            bytes.to_vec()
                        } else {
                            batch::with_records(bytes, &kept).ok_or_else(|| LogError::Corrupt {
                                path: segment.path.clone(),
                                position: 0,
                                reason: BatchFault::Empty,
                            })?
                        }
                    }
                    None => bytes.to_vec(),
                };
                written += out.len() as u64;
                cleaned.write_all(&out).map_err(LogError::io(&cleaned_path))
            })?;
            cleaned.sync_all().map_err(LogError::io(&cleaned_path))?;
            drop(cleaned);
            if removed == 0 {
                fs::remove_file(&cleaned_path).map_err(LogError::io(&cleaned_path))?;
                continue;
            }
            if self.swap_in(segment, &cleaned_path, written)? {
                outcome.segments_cleaned += 1;
                outcome.records_removed += removed;
                outcome.bytes_before += segment.size;
                outcome.bytes_after += written;
            }
        }
        checkpoint::write_number(&self.dir.join(CHECKPOINT_FILE), clean_end.get())?;
        if outcome.segments_cleaned > 0 {
            tracing::debug!(
                dir = %self.dir.display(),
                segments = outcome.segments_cleaned,
                removed = outcome.records_removed,
                "compacted"
            );
        }
        Ok(outcome)
    }

    /// Replaces a sealed segment's data with its cleaned copy, unless the
    /// segment changed (retention or truncation) since it was read.
    fn swap_in(&self, planned: &Planned, cleaned: &Path, new_size: u64) -> Result<bool, LogError> {
        let mut state = self.state();
        let next_base = state
            .segments
            .range(planned.base..)
            .nth(1)
            .map(|(base, _)| *base);
        let unchanged = state
            .segments
            .get(&planned.base)
            .is_some_and(|s| !s.is_active() && s.size == planned.size);
        let Some(next_base) = next_base.filter(|_| unchanged) else {
            fs::remove_file(cleaned).map_err(LogError::io(cleaned))?;
            return Ok(false);
        };
        fs::rename(cleaned, &planned.path).map_err(LogError::io(&planned.path))?;
        checkpoint::sync_parent(&planned.path)?;
        let interval = state.config.index_interval_bytes;
        if let Some(old) = state.segments.remove(&planned.base) {
            old.delete_indexes()?;
        }
        let segment =
            Segment::open_sealed_with(&self.dir, planned.base, next_base, interval, true)?;
        state.size_bytes = state.size_bytes - planned.size + new_size;
        state.segments.insert(planned.base, segment);
        Ok(true)
    }
}

/// Calls `visit(position, batch)` for every whole batch of a data file.
/// Whether `bytes` is a transactional batch (a transaction's records or
/// its marker), kept whole by compaction.
fn transactional(bytes: &[u8]) -> bool {
    batch::BatchHeader::parse(bytes).is_ok_and(|header| header.is_transactional())
}

fn for_each_batch(
    path: &Path,
    size: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let file = File::open(path).map_err(LogError::io(path))?;
    let mut position = 0u64;
    let mut header = [0u8; HEADER_SIZE];
    while position + HEADER_SIZE as u64 <= size {
        file.read_exact_at(&mut header, position)
            .map_err(LogError::io(path))?;
        let parsed = BatchHeader::parse(&header).map_err(|reason| LogError::Corrupt {
            path: path.to_path_buf(),
            position,
            reason,
        })?;
        let mut bytes = vec![0u8; parsed.size];
        file.read_exact_at(&mut bytes, position)
            .map_err(LogError::io(path))?;
        batch::verify(&bytes).map_err(|reason| LogError::Corrupt {
            path: path.to_path_buf(),
            position,
            reason,
        })?;
        visit(position, &bytes)?;
        position += parsed.size as u64;
    }
    Ok(())
}
