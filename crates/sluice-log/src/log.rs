//! One log: an ordered sequence of segments with offsets, durability and
//! retention. See the crate docs for the locking and group-commit scheme.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use sluice_types::{LeaderEpoch, Offset};

use crate::batch::{self, BatchHeader};
use crate::checkpoint;
use crate::config::{Durability, LogConfig};
use crate::epoch::EpochCache;
use crate::error::{BatchFault, LogError};
use crate::segment::{self, Segment};
use sluice_types::{Clock, SystemClock};

const LOG_START_FILE: &str = "log-start-offset";
const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";
/// Most yields a sync leader spends waiting for concurrent appenders.
const GATHER_YIELDS: usize = 16;
/// A segment never grows past this, so index positions fit in 32 bits.
const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: Offset,
    pub last_offset: Offset,
    /// The broker's clock at append (for LogAppendTime topics).
    pub append_time_ms: i64,
    pub log_start: Offset,
    /// Whether the appender must wait for a sync before acknowledging:
    /// durability `always`, or `flush_messages` records written since the
    /// last sync.
    pub sync_due: bool,
}

/// How far a read may see. The log does not decide what consumers see:
/// its owner passes the high watermark it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBound {
    /// Below this offset (a partition's high watermark), at most the log end.
    Upto(Offset),
    /// Up to the log end: what replication followers and the replay of
    /// internal logs see.
    LogEnd,
}

/// Whole record batches read from a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Concatenated, checked batches; empty when nothing is readable yet.
    pub records: Bytes,
    /// Base offset of the first batch returned (may be below the requested
    /// offset: the batch holding it is returned whole and the client skips).
    pub first_offset: Option<Offset>,
    /// Offset after the last batch returned.
    pub next_offset: Option<Offset>,
    pub log_start: Offset,
    pub log_end: Offset,
}

/// How an append numbers its batches.
#[derive(Debug, Clone, Copy)]
enum Numbering {
    /// The log assigns offsets from its end and stamps this leader epoch.
    Stamp(LeaderEpoch),
    /// The batches carry their offsets and epochs (replication).
    Keep,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start: Offset,
}

/// State behind the log's main lock: segments and offsets.
#[derive(Debug)]
pub(crate) struct LogState {
    pub(crate) config: LogConfig,
    /// By base offset; the last one is the active segment.
    pub(crate) segments: BTreeMap<Offset, Segment>,
    pub(crate) log_start: Offset,
    pub(crate) log_end: Offset,
    pub(crate) size_bytes: u64,
    pub(crate) epochs: EpochCache,
    pub(crate) poisoned: bool,
    pub(crate) closed: bool,
    /// Data files of segments sealed by a roll and not synced since: a roll
    /// leaves their sync to the next `sync_to`, which syncs them before the
    /// active segment, so the durable end never passes unsynced bytes.
    pub(crate) unsynced_sealed: Vec<Arc<File>>,
    /// Segment files a roll created since the directory was last synced
    /// (counted, so that a sync that raced a roll does not clear a newer one).
    pub(crate) dir_changes: u64,
    pub(crate) dir_synced: u64,
}

/// Group-commit state, behind its own lock (taken after `state`, never before).
#[derive(Debug)]
struct SyncState {
    /// Everything below this offset is on disk.
    durable: Offset,
    /// A thread is in `fdatasync` now; others wait for it.
    syncing: bool,
    /// Bumped by truncation, so a sync that raced it does not count.
    generation: u64,
    poisoned: bool,
}

/// A segmented, append-only log of Kafka record batches.
///
/// Safe to share between threads. Appends, reads and maintenance take the
/// log's lock briefly; data reads and fsyncs run outside it.
#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) clock: Arc<dyn Clock>,
    state: Mutex<LogState>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Mirrors of `SyncState::durable` and `LogState::log_end`, readable
    /// without a lock (a partition's high watermark is one of them).
    durable_end: AtomicI64,
    end: AtomicI64,
    /// Appends between entry and the end of their write; a sync leader
    /// waits for these to land so that its sync covers them.
    appending: AtomicUsize,
}

impl Log {
    /// Opens the log in `dir`, creating it if needed, and recovers it: a torn
    /// tail of the active segment is cut, missing or damaged indexes rebuilt.
    ///
    /// # Errors
    /// [`LogError::Io`] on file errors, [`LogError::Unrecoverable`] when a
    /// checkpoint file is damaged beyond use (naming the file).
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log, LogError> {
        Self::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    /// [`Log::open`] with a given clock.
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open_with_clock(
        dir: &Path,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Log, LogError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(LogError::io(dir))?;
            checkpoint::sync_parent(dir)?;
        }
        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = marker.exists();
        if clean {
            fs::remove_file(&marker).map_err(LogError::io(&marker))?;
            checkpoint::sync_dir(dir)?;
        }
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(LogError::io(dir))? {
            let entry = entry.map_err(LogError::io(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(checkpoint::TEMP_SUFFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(LogError::io(&path))?;
            } else if let Some(stem) = name.strip_suffix(&format!(".{}", segment::DATA_SUFFIX))
                && let Ok(base) = stem.parse::<i64>()
            {
                bases.push(Offset::from(base));
            }
        }
        bases.sort();

        let saved_start = checkpoint::read_number(&dir.join(LOG_START_FILE))?.map(Offset::from);
        // Segments wholly below the log start were due for deletion when the
        // process stopped.
        while let [first, second, ..] = bases.as_slice()
            && saved_start.is_some_and(|start| *second <= start)
        {
            let first = *first;
            for suffix in [segment::DATA_SUFFIX, "index", "timeindex"] {
                let path = dir.join(segment::file_name(first, suffix));
                if path.exists() {
                    fs::remove_file(&path).map_err(LogError::io(&path))?;
                }
            }
            bases.remove(0);
        }

        let interval = config.index_interval_bytes;
        let mut segments = BTreeMap::new();
        for (i, base) in bases.iter().enumerate() {
            let segment = match bases.get(i + 1) {
                Some(next) => Segment::open_sealed(dir, *base, *next, interval)?,
                None => Segment::open_active(dir, *base, clean, interval)?,
            };
            segments.insert(*base, segment);
        }
        if segments.is_empty() {
            let base = saved_start.unwrap_or_default();
            segments.insert(base, Segment::create(dir, base)?);
        }
        let first_base = segments.keys().next().copied().unwrap_or_default();
        let log_end = segments
            .values()
            .next_back()
            .map_or(first_base, |s| s.next_offset);
        let log_start = saved_start
            .unwrap_or(first_base)
            .max(first_base)
            .min(log_end);
        let mut epochs = EpochCache::load(dir)?;
        epochs.truncate_from_end(log_end)?;
        epochs.truncate_from_start(log_start)?;
        let size_bytes = segments.values().map(|s| s.size).sum();
        tracing::debug!(dir = %dir.display(), clean, %log_start, %log_end, segments = segments.len(), "log opened");
        Ok(Log {
            dir: dir.to_path_buf(),
            clock,
            state: Mutex::new(LogState {
                config,
                segments,
                log_start,
                log_end,
                size_bytes,
                epochs,
                poisoned: false,
                closed: false,
                unsynced_sealed: Vec::new(),
                dir_changes: 0,
                dir_synced: 0,
            }),
            sync: Mutex::new(SyncState {
                durable: log_end,
                syncing: false,
                generation: 0,
                poisoned: false,
            }),
            synced: Condvar::new(),
            durable_end: AtomicI64::new(log_end.get()),
            end: AtomicI64::new(log_end.get()),
            appending: AtomicUsize::new(0),
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock leaves nothing half-written that the
        // next holder could misread: every mutation is followed by its
        // bookkeeping, and a failed write poisons the log explicitly.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sync_state(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one or more record batches and returns once they are as
    /// durable as the log's [`Durability`] asks. Offsets and the leader epoch
    /// are written into `batches` in place.
    ///
    /// # Errors
    /// [`LogError::InvalidBatch`] or [`LogError::BatchTooLarge`] for bad input
    /// (nothing is written); [`LogError::Poisoned`] after an earlier write
    /// failure; [`LogError::Io`] when the write or sync fails (the log is
    /// then poisoned); [`LogError::Closed`].
    pub fn append(
        &self,
        batches: &mut [u8],
        leader_epoch: LeaderEpoch,
    ) -> Result<AppendInfo, LogError> {
        let info = self.append_unsynced(batches, leader_epoch)?;
        if info.sync_due {
            self.sync_to(info.last_offset.plus(1))?;
        }
        Ok(info)
    }

    /// Writes batches without waiting for durability; pair with
    /// [`Log::sync_to`] to wait later, for instance from another thread.
    ///
    /// # Errors
    /// As [`Log::append`], sync errors aside.
    pub fn append_unsynced(
        &self,
        batches: &mut [u8],
        leader_epoch: LeaderEpoch,
    ) -> Result<AppendInfo, LogError> {
        self.appending.fetch_add(1, Ordering::AcqRel);
        let result = self.write_batches(batches, Numbering::Stamp(leader_epoch));
        self.appending.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// Writes batches that already carry their offsets and leader epochs
    /// (a follower copying its leader's log), without waiting for
    /// durability: the first must start at the log end and each the next
    /// offset after the one before; the epoch cache learns every new epoch
    /// at its batch's base offset.
    ///
    /// # Errors
    /// [`LogError::InvalidBatch`] with [`crate::BatchFault::UnexpectedOffset`]
    /// for a gap or overlap (nothing is written); otherwise as
    /// [`Log::append_unsynced`].
    pub fn append_replicated(&self, batches: &mut [u8]) -> Result<AppendInfo, LogError> {
        self.appending.fetch_add(1, Ordering::AcqRel);
        let result = self.write_batches(batches, Numbering::Keep);
        self.appending.fetch_sub(1, Ordering::AcqRel);
        result
    }

    fn write_batches(
        &self,
        batches: &mut [u8],
        numbering: Numbering,
    ) -> Result<AppendInfo, LogError> {
        let mut headers =
            batch::split_verified(batches).map_err(|reason| LogError::InvalidBatch { reason })?;
        let mut state = self.state();
        if let Some(too_large) = headers
            .iter()
            .find(|(_, h)| h.size > state.config.max_batch_bytes as usize)
        {
            return Err(LogError::BatchTooLarge {
                size: too_large.1.size,
                limit: state.config.max_batch_bytes,
            });
        }
        if state.closed {
            return Err(LogError::Closed);
        }
        if state.poisoned {
            return Err(LogError::Poisoned);
        }
        let now = self.clock.now_ms();
        let first_offset = state.log_end;
        let mut next = first_offset;
        // Epochs new to the cache, with the offset each starts at.
        let mut new_epochs: Vec<(LeaderEpoch, Offset)> = Vec::new();
        for (at, header) in &mut headers {
            match numbering {
                Numbering::Stamp(leader_epoch) => {
                    if let Some(bytes) = batches.get_mut(*at..) {
                        batch::stamp(bytes, next, leader_epoch);
                    }
                    header.base_offset = next;
                    header.leader_epoch = leader_epoch;
                }
                Numbering::Keep if header.base_offset != next => {
                    return Err(LogError::InvalidBatch {
                        reason: BatchFault::UnexpectedOffset {
                            expected: next,
                            found: header.base_offset,
                        },
                    });
                }
                Numbering::Keep => {}
            }
            let known = new_epochs
                .last()
                .map(|(epoch, _)| *epoch)
                .or(state.epochs.latest());
            if header.leader_epoch.get() >= 0 && known < Some(header.leader_epoch) {
                new_epochs.push((header.leader_epoch, header.base_offset));
            }
            next = header.next_offset();
        }
        let incoming_max_timestamp = headers
            .iter()
            .map(|(_, h)| h.max_timestamp)
            .max()
            .unwrap_or(now);
        self.maybe_roll(
            &mut state,
            batches.len() as u64,
            next,
            incoming_max_timestamp,
        )?;
        for (epoch, start) in new_epochs {
            state.epochs.assign(epoch, start)?;
        }
        let interval = state.config.index_interval_bytes;
        let result = active(&mut state)?.append(batches, &headers, interval);
        if let Err(err) = result {
            // A write that failed part-way (a full disk) is cut off again and
            // the log stays usable; only a cut that fails too poisons it.
            if let Err(cut) = active(&mut state)?.discard_failed_append() {
                tracing::error!(dir = %self.dir.display(), error = %err, %cut, "append failed and could not be undone; log poisoned");
                state.poisoned = true;
            } else {
                tracing::warn!(dir = %self.dir.display(), error = %err, "append failed; nothing was written");
            }
            return Err(err);
        }
        state.log_end = next;
        state.size_bytes += batches.len() as u64;
        self.end.store(next.get(), Ordering::Release);
        // Offsets written since the last sync: records, as appends number
        // every record.
        let unflushed = u64::try_from(next.get() - self.sync_state().durable.get()).unwrap_or(0);
        let sync_due = state.config.durability == Durability::Always
            || state
                .config
                .flush_messages
                .is_some_and(|every| unflushed >= every);
        Ok(AppendInfo {
            first_offset,
            last_offset: next.plus(-1),
            append_time_ms: now,
            log_start: state.log_start,
            sync_due,
        })
    }

    /// Rolls when the incoming bytes would overflow the segment, or when the
    /// incoming batch is `segment_time` newer than the segment's first batch
    /// (record time, as Kafka's `segment.ms` measures it, so replayed old data
    /// does not roll on every append).
    fn maybe_roll(
        &self,
        state: &mut LogState,
        incoming: u64,
        next: Offset,
        incoming_timestamp: i64,
    ) -> Result<(), LogError> {
        if self.roll_due(state, incoming, next, incoming_timestamp)? {
            self.roll_locked(state)?;
        }
        Ok(())
    }

    /// Whether an append of `incoming` bytes ending before `next`, whose
    /// newest record is `incoming_timestamp`, rolls the active segment.
    fn roll_due(
        &self,
        state: &mut LogState,
        incoming: u64,
        next: Offset,
        incoming_timestamp: i64,
    ) -> Result<bool, LogError> {
        let segment_bytes = state.config.segment_bytes.min(MAX_SEGMENT_BYTES);
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let mut segment_ms = millis(state.config.segment_time);
        if state.config.cleanup_compact
            && let Some(lag) = state.config.max_compaction_lag
        {
            segment_ms = segment_ms.min(millis(lag));
        }
        let jitter_ms = millis(state.config.segment_jitter).min(segment_ms);
        let active = active(state)?;
        if jitter_ms > 0 {
            segment_ms -= self.roll_jitter(active.base_offset, jitter_ms);
        }
        let full = active.size + incoming > segment_bytes;
        let old = active
            .first_timestamp
            .is_some_and(|first| incoming_timestamp.saturating_sub(first) >= segment_ms);
        let offsets_overflow = next.get() - active.base_offset.get() > i64::from(u32::MAX);
        Ok(active.size > 0 && (full || old || offsets_overflow))
    }

    /// This segment's share of `segment.jitter.ms`: in `[0, jitter_ms)`,
    /// fixed per log directory and base offset, spread across partitions.
    fn roll_jitter(&self, base: Offset, jitter_ms: i64) -> i64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        self.dir.hash(&mut hasher);
        base.get().hash(&mut hasher);
        let spread = hasher.finish() % jitter_ms.unsigned_abs();
        i64::try_from(spread).unwrap_or(0)
    }

    /// Seals the active segment and starts a new one at the log end. No
    /// fsync runs here, under the log's lock: as Kafka does after a roll, the
    /// sealed segment's data and the directory entry of the new one are
    /// synced by the next `sync_to` (group commit), before it counts
    /// anything in the new segment as durable. A file that cannot be created
    /// or written (a full disk) leaves the active segment as it was.
    fn roll_locked(&self, state: &mut LogState) -> Result<(), LogError> {
        let base = state.log_end;
        let sealed_file = active(state)?.sync_handle()?;
        let segment = Segment::create_unsynced(&self.dir, base)?;
        if let Err(err) = active(state)?.seal() {
            if let Err(cleanup) = segment.delete() {
                tracing::warn!(dir = %self.dir.display(), error = %cleanup, "cannot remove the segment of a failed roll");
            }
            return Err(err);
        }
        state.segments.insert(base, segment);
        state.unsynced_sealed.push(sealed_file);
        state.dir_changes += 1;
        Ok(())
    }

    /// Starts a new segment now if the active one holds any data.
    ///
    /// # Errors
    /// [`LogError::Io`] when the sync or file creation fails.
    pub fn roll(&self) -> Result<(), LogError> {
        let mut state = self.state();
        if state.closed {
            return Err(LogError::Closed);
        }
        if active(&mut state)?.size > 0 {
            self.roll_locked(&mut state)?;
        }
        Ok(())
    }

    /// Waits until every offset below `end` is on disk. Concurrent callers
    /// share one `fdatasync` (group commit): while one thread syncs, the
    /// others wait; the next sync covers everything written meanwhile.
    ///
    /// # Errors
    /// [`LogError::Poisoned`] once a sync has failed; [`LogError::Io`] for
    /// the failing sync itself; [`LogError::Truncated`] if the log was cut
    /// below `end` while waiting.
    pub fn sync_to(&self, end: Offset) -> Result<(), LogError> {
        let mut sync = self.sync_state();
        let started_generation = sync.generation;
        loop {
            if sync.poisoned {
                return Err(LogError::Poisoned);
            }
            if sync.generation != started_generation {
                return Err(LogError::Truncated {
                    offset: sync.durable,
                });
            }
            if sync.durable >= end {
                return Ok(());
            }
            if sync.syncing {
                sync = self.synced.wait(sync).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            sync.syncing = true;
            let generation = sync.generation;
            drop(sync);
            self.gather_followers();
            let target = {
                let mut state = self.state();
                let log_end = state.log_end;
                let sealed = state.unsynced_sealed.clone();
                let dir_changes =
                    (state.dir_changes > state.dir_synced).then_some(state.dir_changes);
                active(&mut state)
                    .and_then(Segment::sync_handle)
                    .map(|file| (file, sealed, dir_changes, log_end))
            };
            let result = target.and_then(|(file, sealed, dir_changes, log_end)| {
                let started = std::time::Instant::now();
                // Rolled segments first, then the new files' directory
                // entries, then the active segment.
                let synced = sealed
                    .iter()
                    .try_for_each(|sealed| sealed.sync_data())
                    .map_err(LogError::io(self.dir.clone()))
                    .and_then(|()| match dir_changes {
                        Some(_) => crate::checkpoint::sync_dir(&self.dir),
                        None => Ok(()),
                    })
                    .and_then(|()| file.sync_data().map_err(LogError::io(self.dir.clone())));
                crate::metrics()
                    .fsync_latency
                    .observe_duration(started.elapsed());
                if synced.is_ok() && (!sealed.is_empty() || dir_changes.is_some()) {
                    let mut state = self.state();
                    state
                        .unsynced_sealed
                        .retain(|kept| !sealed.iter().any(|done| Arc::ptr_eq(kept, done)));
                    if let Some(changes) = dir_changes {
                        state.dir_synced = state.dir_synced.max(changes);
                    }
                }
                synced.map(|()| log_end)
            });
            sync = self.sync_state();
            sync.syncing = false;
            match result {
                Ok(log_end) if sync.generation == generation => {
                    if log_end > sync.durable {
                        let records = log_end.get() - sync.durable.get();
                        crate::metrics()
                            .sync_batch_records
                            .observe(u64::try_from(records).unwrap_or(0));
                        self.set_durable(&mut sync, log_end);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    sync.poisoned = true;
                    self.synced.notify_all();
                    drop(sync);
                    tracing::error!(dir = %self.dir.display(), error = %err, "fsync failed; log poisoned");
                    self.state().poisoned = true;
                    return Err(err);
                }
            }
            self.synced.notify_all();
        }
    }

    /// Lets appenders that are about to write join the sync this thread is
    /// leading: while the log end keeps moving between yields or appends are
    /// in the middle of their write, keep yielding (a few times at most). Without it, the first appender back after a
    /// sync starts the next one alone while the others are still writing.
    fn gather_followers(&self) {
        let mut seen = self.state().log_end;
        for _ in 0..GATHER_YIELDS {
            std::thread::yield_now();
            let now = self.state().log_end;
            if now == seen && self.appending.load(Ordering::Acquire) == 0 {
                return;
            }
            seen = now;
        }
    }

    /// Syncs everything written so far.
    ///
    /// # Errors
    /// As [`Log::sync_to`].
    pub fn flush(&self) -> Result<(), LogError> {
        let end = self.state().log_end;
        self.sync_to(end)
    }

    /// Whether data was written since the last sync.
    pub fn is_dirty(&self) -> bool {
        let end = self.state().log_end;
        self.sync_state().durable < end
    }

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// about `max_bytes` (at least one batch), never past `bound`. Every batch
    /// is checked (length, magic, CRC-32C, offsets) before it is returned.
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] outside `[log_start, log_end]`;
    /// [`LogError::Corrupt`] naming the file when a batch fails its check.
    pub fn read(
        &self,
        offset: Offset,
        max_bytes: usize,
        bound: ReadBound,
    ) -> Result<ReadResult, LogError> {
        let mut state = self.state();
        let (log_start, log_end) = (state.log_start, state.log_end);
        if offset < log_start || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        let upper = match bound {
            ReadBound::Upto(upper) => upper.min(log_end),
            ReadBound::LogEnd => log_end,
        };
        let empty = ReadResult {
            records: Bytes::new(),
            first_offset: None,
            next_offset: None,
            log_start,
            log_end,
        };
        if offset >= upper {
            return Ok(empty);
        }
        let bases = segments_from(&state, offset);
        let mut target = offset;
        for base in bases {
            let Some(segment) = state.segments.get_mut(&base) else {
                continue;
            };
            let file = segment.read_handle()?;
            let Some((position, _)) = segment.find_batch(&file, target)? else {
                target = target.max(segment.next_offset);
                continue;
            };
            let view = segment.view();
            drop(state);
            let (records, first_offset, next_offset) =
                view.read(&file, position, max_bytes, upper)?;
            return Ok(ReadResult {
                records,
                first_offset,
                next_offset,
                ..empty
            });
        }
        Ok(empty)
    }

    /// Calls `visit` with the header of every batch from the one holding
    /// `from` to the log end, in order; headers only, no record bytes.
    /// Used to rebuild state kept beside a log, such as producer sequences.
    ///
    /// # Errors
    /// [`LogError::Io`] or [`LogError::Corrupt`] from reading.
    pub fn scan_headers(
        &self,
        from: Offset,
        mut visit: impl FnMut(&BatchHeader),
    ) -> Result<(), LogError> {
        let mut state = self.state();
        let from = from.max(state.log_start);
        let bases = segments_from(&state, from);
        for base in bases {
            let Some(segment) = state.segments.get_mut(&base) else {
                continue;
            };
            let file = segment.read_handle()?;
            let start = segment.find_batch(&file, from.max(base))?;
            let Some((mut position, _)) = start else {
                continue;
            };
            let view = segment.view();
            while let Some(header) = view.header_within(&file, position)? {
                visit(&header);
                position += header.size as u64;
            }
        }
        Ok(())
    }

    /// The first offset below `upper` whose record timestamp is at or after
    /// `timestamp_ms`, with that timestamp; `None` if every such record is
    /// older.
    ///
    /// # Errors
    /// [`LogError::Io`] or [`LogError::Corrupt`] from reading.
    pub fn offset_for_timestamp(
        &self,
        timestamp_ms: i64,
        upper: Offset,
    ) -> Result<Option<(Offset, i64)>, LogError> {
        let mut state = self.state();
        let log_start = state.log_start;
        for segment in state.segments.values_mut() {
            if segment.max_timestamp.is_none_or(|max| max < timestamp_ms) {
                continue;
            }
            let file = segment.read_handle()?;
            if let Some(found) = segment.find_timestamp(&file, timestamp_ms, log_start, upper)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp below `upper` (the first such
    /// if several share it), for ListOffsets `MAX_TIMESTAMP`.
    ///
    /// # Errors
    /// As [`Log::offset_for_timestamp`].
    pub fn max_timestamp(&self, upper: Offset) -> Result<Option<(Offset, i64)>, LogError> {
        let max = {
            let state = self.state();
            state
                .segments
                .values()
                .filter(|s| s.base_offset < upper)
                .filter_map(|s| s.max_timestamp)
                .max()
        };
        match max {
            Some(max) => self.offset_for_timestamp(max, upper),
            None => Ok(None),
        }
    }

    /// Deletes the oldest segments that retention by age or size allows,
    /// never the data in the active segment unless it is expired as a whole.
    ///
    /// # Errors
    /// [`LogError::Io`] when a file cannot be removed or the log start saved.
    pub fn enforce_retention(&self) -> Result<RetentionOutcome, LogError> {
        let mut state = self.state();
        if state.closed {
            return Err(LogError::Closed);
        }
        let now = self.clock.now_ms();
        let mut doomed = Vec::new();
        if !state.config.cleanup_delete {
            return Ok(RetentionOutcome {
                log_start: state.log_start,
                ..RetentionOutcome::default()
            });
        }
        if let Some(retention) = state.config.retention_time {
            let cutoff =
                now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            let expired = |s: &Segment| s.max_timestamp.is_some_and(|max| max < cutoff);
            let all_sealed_expired = state
                .segments
                .values()
                .filter(|s| !s.is_active())
                .all(expired);
            if all_sealed_expired && state.segments.values().next_back().is_some_and(expired) {
                // Kafka rolls an expired active segment so it can go too.
                self.roll_locked(&mut state)?;
            }
            doomed.extend(
                state
                    .segments
                    .values()
                    .take_while(|s| !s.is_active() && expired(s))
                    .map(|s| s.base_offset),
            );
        }
        if let Some(limit) = state.config.retention_bytes {
            let mut remaining = state.size_bytes
                - state
                    .segments
                    .values()
                    .filter(|s| doomed.contains(&s.base_offset))
                    .map(|s| s.size)
                    .sum::<u64>();
            for segment in state.segments.values().filter(|s| !s.is_active()) {
                if doomed.contains(&segment.base_offset) {
                    continue;
                }
                if remaining.saturating_sub(segment.size) < limit {
                    break;
                }
                remaining -= segment.size;
                doomed.push(segment.base_offset);
            }
        }
        let mut outcome = RetentionOutcome {
            log_start: state.log_start,
            ..RetentionOutcome::default()
        };
        if doomed.is_empty() {
            return Ok(outcome);
        }
        let new_start = state
            .segments
            .keys()
            .find(|base| !doomed.contains(base))
            .copied()
            .unwrap_or(state.log_end)
            .max(state.log_start);
        self.set_log_start(&mut state, new_start)?;
        for base in doomed {
            if let Some(segment) = state.segments.remove(&base) {
                outcome.segments_deleted += 1;
                outcome.bytes_deleted += segment.size;
                state.size_bytes -= segment.size;
                tracing::debug!(segment = %segment.data_path().display(), "retention deletes segment");
                segment.delete()?;
            }
        }
        outcome.log_start = state.log_start;
        Ok(outcome)
    }

    /// Moves the log start to `offset` (Kafka's DeleteRecords), deleting the
    /// segments wholly below it. The offset may not pass the log end (its
    /// owner checks its high watermark first).
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] past the log end; [`LogError::Io`].
    pub fn advance_log_start(&self, offset: Offset) -> Result<Offset, LogError> {
        let mut state = self.state();
        if offset > state.log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: state.log_start,
                log_end: state.log_end,
            });
        }
        if offset <= state.log_start {
            return Ok(state.log_start);
        }
        self.set_log_start(&mut state, offset)?;
        let doomed: Vec<Offset> = state
            .segments
            .iter()
            .zip(state.segments.keys().skip(1))
            .filter(|(_, next_base)| **next_base <= offset)
            .map(|((base, _), _)| *base)
            .collect();
        for base in doomed {
            if let Some(segment) = state.segments.remove(&base) {
                state.size_bytes -= segment.size;
                segment.delete()?;
            }
        }
        Ok(offset)
    }

    fn set_log_start(&self, state: &mut LogState, offset: Offset) -> Result<(), LogError> {
        // Saved before any file is deleted, so a crash between the two
        // finishes the deletion on reopen instead of resurrecting offsets.
        checkpoint::write_number(&self.dir.join(LOG_START_FILE), offset.get())?;
        state.log_start = offset;
        state.epochs.truncate_from_start(offset)
    }

    /// Removes every batch at or after `offset`; a batch that straddles it
    /// goes whole, so the new log end may be below `offset`. Replication and
    /// queue recovery use it. At or below the log start, the log is emptied
    /// and restarts at `offset`.
    ///
    /// # Errors
    /// [`LogError::Io`] on file errors; the log is poisoned if the cut fails
    /// half way.
    pub fn truncate_to(&self, offset: Offset) -> Result<Offset, LogError> {
        let mut state = self.state();
        if state.closed {
            return Err(LogError::Closed);
        }
        if offset >= state.log_end {
            return Ok(state.log_end);
        }
        let result = self.truncate_locked(&mut state, offset, false);
        if result.is_err() {
            state.poisoned = true;
        }
        result
    }

    /// Empties the log and starts it again at `offset`, past its end or
    /// not: a follower whose leader no longer has what it lacks (the
    /// leader's log starts past the follower's end) starts where the
    /// leader's log does (Kafka's truncateFullyAndStartAt).
    ///
    /// # Errors
    /// As [`Log::truncate_to`].
    pub fn restart_at(&self, offset: Offset) -> Result<Offset, LogError> {
        let mut state = self.state();
        if state.closed {
            return Err(LogError::Closed);
        }
        let result = self.truncate_locked(&mut state, offset, true);
        if result.is_err() {
            state.poisoned = true;
        }
        result
    }

    fn truncate_locked(
        &self,
        state: &mut LogState,
        offset: Offset,
        empty: bool,
    ) -> Result<Offset, LogError> {
        let interval = state.config.index_interval_bytes;
        let restart = empty || offset <= state.log_start;
        let doomed: Vec<Offset> = if restart {
            state.segments.keys().copied().collect()
        } else {
            state
                .segments
                .range(offset..)
                .map(|(base, _)| *base)
                .collect()
        };
        for base in doomed {
            if let Some(segment) = state.segments.remove(&base) {
                segment.delete()?;
            }
        }
        let new_end = match state.segments.pop_last() {
            Some((base, segment)) => {
                let segment = segment.truncate_and_activate(&self.dir, offset, interval)?;
                let end = segment.next_offset;
                state.segments.insert(base, segment);
                end
            }
            None => {
                state
                    .segments
                    .insert(offset, Segment::create(&self.dir, offset)?);
                offset
            }
        };
        if restart {
            self.set_log_start(state, offset)?;
        } else if new_end < state.log_start {
            // The batch holding the log start straddled `offset` and went
            // whole: the start follows the end down, as a reopen would put it.
            self.set_log_start(state, new_end)?;
        }
        state.log_end = new_end;
        state.size_bytes = state.segments.values().map(|s| s.size).sum();
        state.epochs.truncate_from_end(new_end)?;
        let mut sync = self.sync_state();
        sync.generation += 1;
        let durable = if restart {
            new_end
        } else {
            sync.durable.min(new_end)
        };
        self.set_durable(&mut sync, durable);
        self.end.store(new_end.get(), Ordering::Release);
        self.synced.notify_all();
        Ok(new_end)
    }

    /// OffsetForLeaderEpoch: the largest epoch at most `epoch` and the offset
    /// where it ended.
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        let state = self.state();
        state.epochs.end_offset_for(epoch, state.log_end)
    }

    /// Closes the active segment's file if unused for `idle`. Safe with
    /// unsynced data: a later sync opens the file again, and `fdatasync`
    /// flushes the file, not the descriptor.
    pub fn release_idle_handles(&self, idle: Duration) -> bool {
        let mut state = self.state();
        state
            .segments
            .values_mut()
            .next_back()
            .is_some_and(|s| s.release_if_idle(idle))
    }

    /// Whether the active segment's file is open now.
    pub fn has_open_handle(&self) -> bool {
        self.state()
            .segments
            .values()
            .next_back()
            .is_some_and(Segment::has_open_handle)
    }

    /// Syncs, saves the active segment's indexes and marks the shutdown as
    /// clean, so the next open skips the full recovery scan. Later calls fail
    /// with [`LogError::Closed`]; closing twice is harmless.
    ///
    /// # Errors
    /// [`LogError::Io`] or [`LogError::Poisoned`]; the log then reopens
    /// through full recovery.
    pub fn close(&self) -> Result<(), LogError> {
        let mut state = self.state();
        if state.closed {
            return Ok(());
        }
        state.closed = true;
        if state.poisoned {
            return Err(LogError::Poisoned);
        }
        let log_end = state.log_end;
        for sealed in std::mem::take(&mut state.unsynced_sealed) {
            sealed.sync_data().map_err(LogError::io(self.dir.clone()))?;
        }
        let active = active(&mut state)?;
        let file = active.sync_handle()?;
        file.sync_data().map_err(LogError::io(active.data_path()))?;
        active.save_indexes()?;
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        fs::File::create(&marker).map_err(LogError::io(&marker))?;
        // One directory sync makes the index files and the marker durable.
        checkpoint::sync_dir(&self.dir)?;
        let mut sync = self.sync_state();
        let durable = sync.durable.max(log_end);
        self.set_durable(&mut sync, durable);
        self.synced.notify_all();
        Ok(())
    }

    /// Changes the log's settings; they apply from the next append or pass.
    pub fn set_config(&self, config: LogConfig) {
        self.state().config = config;
    }

    pub fn config(&self) -> LogConfig {
        self.state().config.clone()
    }

    pub fn durability(&self) -> Durability {
        self.state().config.durability
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest leader epoch any record was written with, if any.
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.state().epochs.latest()
    }

    pub fn log_start(&self) -> Offset {
        self.state().log_start
    }

    /// The offset the next append gets. Lock-free.
    pub fn log_end(&self) -> Offset {
        Offset::from(self.end.load(Ordering::Acquire))
    }

    /// Every offset below this is on disk (synced). Lock-free.
    pub fn durable_end(&self) -> Offset {
        Offset::from(self.durable_end.load(Ordering::Acquire))
    }

    /// Records `end` as the synced end, in the sync state and its mirror.
    fn set_durable(&self, sync: &mut SyncState, end: Offset) {
        sync.durable = end;
        self.durable_end.store(end.get(), Ordering::Release);
    }

    /// Bytes of data in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.state().size_bytes
    }

    pub fn segment_count(&self) -> usize {
        self.state().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.state().segments.keys().copied().collect()
    }

    /// Base offset and size in bytes of every segment, oldest first.
    pub fn segment_sizes(&self) -> Vec<(Offset, u64)> {
        self.state()
            .segments
            .iter()
            .map(|(base, segment)| (*base, segment.size))
            .collect()
    }
}

/// Base offsets of the segment holding `offset` and of every later one.
fn segments_from(state: &LogState, offset: Offset) -> Vec<Offset> {
    let holding = state
        .segments
        .range(..=offset)
        .next_back()
        .map(|(base, _)| *base);
    holding
        .into_iter()
        .chain(
            state
                .segments
                .range(offset..)
                .map(|(base, _)| *base)
                .filter(|b| *b > offset),
        )
        .collect()
}

fn active(state: &mut LogState) -> Result<&mut Segment, LogError> {
    // Every open log has at least one segment: open and truncation create one.
    state
        .segments
        .values_mut()
        .next_back()
        .ok_or(LogError::Closed)
}

impl Drop for Log {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if !state.closed {
            tracing::debug!(dir = %self.dir.display(), "log dropped without close; next open recovers");
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Log>();
    check::<BatchHeader>();
}
