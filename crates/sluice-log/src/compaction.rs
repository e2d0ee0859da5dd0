//! Log compaction (Kafka's `cleanup.policy=compact`): keep the latest
//! record per key in sealed segments, drop tombstones once
//! `delete_retention` has passed.
//!
//! Every batch is kept, with only its surviving records (possibly none):
//! base offset, last offset delta, timestamps and producer fields stay, so
//! offsets are never renumbered and the log's offsets stay contiguous from
//! batch to batch, which reads and recovery check. A compressed batch is
//! kept whole (its keys are not read), which keeps more than needed, never
//! less.
//!
//! Transactions (Kafka's cleaner does the same): a pass first reads which
//! transaction each transactional batch belongs to, from its producer's
//! batches and markers in log order.
//! - A committed transaction's records are compacted like any others.
//! - An aborted transaction's records are all removed.
//! - An undecided one (no marker in the cleanable range yet) is kept whole
//!   and none of its records stands for its key's latest value.
//! - A commit marker is removed (its batch emptied) once safe: every
//!   record of its transaction was removed by an earlier pass, and the
//!   marker is older than `delete_retention`. When read back an emptied
//!   data batch opens nothing, and an emptied marker closes its
//!   producer's transaction as committed (a replica that lagged behind
//!   the leader's compaction may still hold its records).
//! - An abort marker stays: the partition lists its transaction as
//!   aborted for as long as it lives (read_committed Fetches name it), and
//!   a reader drops the producer's records from the transaction's first
//!   offset until it reads that marker.
//!
//! A cleaned segment is written beside the original as
//! `<base>.log.cleaned` and renamed over it; its indexes are rebuilt.
//! `cleaner-offset-checkpoint` records where the last pass ended, to
//! compute the dirty ratio.

use std::collections::{HashMap, HashSet};
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

        let horizon = now
            .saturating_sub(i64::try_from(config.delete_retention.as_millis()).unwrap_or(i64::MAX));
        let txns = Transactions::read(&planned, horizon)?;
        // Latest offset of every key in the cleanable range.
        let mut latest: HashMap<Vec<u8>, Offset> = HashMap::new();
        for segment in &planned {
            for_each_batch(&segment.path, segment.size, |_, bytes| {
                if txns.fate(bytes) != Fate::Clean {
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
                let cleanable = match txns.fate(bytes) {
                    Fate::Clean => batch::records(bytes),
                    Fate::Keep => None,
                    Fate::Remove => {
                        let out = batch::emptied(bytes).ok_or_else(|| LogError::Corrupt {
                            path: segment.path.clone(),
                            position: 0,
                            reason: BatchFault::Empty,
                        })?;
                        removed += batch_records(bytes);
                        written += out.len() as u64;
                        return cleaned.write_all(&out).map_err(LogError::io(&cleaned_path));
                    }
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

/// What a pass does with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its records compete for their keys' latest values (a plain batch,
    /// or a committed transaction's).
    Clean,
    /// Kept whole (an undecided transaction's, a marker still needed).
    Keep,
    /// Emptied (an aborted transaction's, a marker no longer needed).
    Remove,
}

/// The transactional batches of the cleanable range, by base offset.
#[derive(Debug, Default)]
struct Transactions {
    committed: HashSet<Offset>,
    removed: HashSet<Offset>,
}

impl Transactions {
    /// Reads the producers' batches and markers of `planned` in log
    /// order: each data batch's transaction is decided by its producer's
    /// next marker; a commit marker whose transaction has no record left
    /// and whose time is before `horizon` may go.
    fn read(planned: &[Planned], horizon: i64) -> Result<Transactions, LogError> {
        let mut out = Transactions::default();
        // Each producer's open transaction: its data batches with records.
        let mut open: HashMap<i64, Vec<Offset>> = HashMap::new();
        for segment in planned {
            for_each_batch(&segment.path, segment.size, |_, bytes| {
                let Ok(header) = BatchHeader::parse(bytes) else {
                    return Ok(());
                };
                if !header.is_transactional() || header.producer_id < 0 {
                    return Ok(());
                }
                if !header.is_control() {
                    if header.records_count > 0 {
                        open.entry(header.producer_id)
                            .or_default()
                            .push(header.base_offset);
                    }
                    return Ok(());
                }
                let commit = if header.records_count == 0 {
                    // An emptied marker: a commit's (only those go),
                    // which a lagging replica may read after records it
                    // still holds.
                    true
                } else {
                    match marker_commits(bytes) {
                        Some(commit) => commit,
                        // Another control record.
                        None => return Ok(()),
                    }
                };
                let batches = open.remove(&header.producer_id).unwrap_or_default();
                if commit
                    && header.records_count > 0
                    && batches.is_empty()
                    && header.max_timestamp < horizon
                {
                    out.removed.insert(header.base_offset);
                }
                if commit {
                    out.committed.extend(batches);
                } else {
                    out.removed.extend(batches);
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn fate(&self, bytes: &[u8]) -> Fate {
        let Ok(header) = BatchHeader::parse(bytes) else {
            return Fate::Keep;
        };
        if !header.is_transactional() {
            Fate::Clean
        } else if self.removed.contains(&header.base_offset) {
            Fate::Remove
        } else if self.committed.contains(&header.base_offset) {
            Fate::Clean
        } else {
            Fate::Keep
        }
    }
}

/// Whether the marker a control batch holds is a commit (`None` for an
/// emptied batch or a control record other than a marker): its key is
/// `[version:2 = 0][type:2]`, 0 abort and 1 commit.
fn marker_commits(bytes: &[u8]) -> Option<bool> {
    let records = batch::records(bytes)?;
    let key = records.first()?.key?;
    match key {
        [0, 0, 0, 0] => Some(false),
        [0, 0, 0, 1] => Some(true),
        _ => None,
    }
}

/// How many records a batch's header counts.
fn batch_records(bytes: &[u8]) -> u64 {
    BatchHeader::parse(bytes).map_or(0, |header| u64::try_from(header.records_count).unwrap_or(0))
}

/// Calls `visit(position, batch)` for every whole batch of a data file.
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
