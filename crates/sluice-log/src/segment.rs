//! One segment: a data file of record batches named by its base offset, with
//! a sparse offset index and a time index beside it.
//!
//! Files: `<base:020>.log`, `<base:020>.index`, `<base:020>.timeindex`.
//! The last segment of a log is active (open for appends, indexes in memory);
//! the others are sealed (synced, indexes on disk, opened on demand).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_types::Offset;

use crate::batch::{self, BatchHeader, HEADER_SIZE};
use crate::error::{BatchFault, LogError};
use crate::index::{self, OffsetEntry, TimeEntry};

pub(crate) const DATA_SUFFIX: &str = "log";
const INDEX_SUFFIX: &str = "index";
const TIME_INDEX_SUFFIX: &str = "timeindex";
/// Bytes read at a time when scanning a data file.
const SCAN_CHUNK: usize = 256 * 1024;

pub(crate) fn file_name(base: Offset, suffix: &str) -> String {
    format!("{:020}.{suffix}", base.get())
}

#[derive(Debug)]
struct ActiveState {
    /// `None` while released for being idle; reopened on next use.
    file: Option<Arc<File>>,
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    bytes_since_index: u64,
    last_used: Instant,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: Offset,
    data_path: PathBuf,
    index_path: PathBuf,
    time_index_path: PathBuf,
    /// Bytes of whole, checked batches in the data file.
    pub(crate) size: u64,
    /// Offset after the last batch; the base offset while empty.
    pub(crate) next_offset: Offset,
    pub(crate) max_timestamp: Option<i64>,
    /// Max timestamp of the first batch: what `segment_time` is measured from.
    pub(crate) first_timestamp: Option<i64>,
    active: Option<ActiveState>,
}

/// What a scan of a data file found.
struct ScanEnd {
    /// End of the last whole, valid batch.
    valid_end: u64,
    fault: Option<BatchFault>,
}

impl Segment {
    fn paths(dir: &Path, base: Offset) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join(file_name(base, DATA_SUFFIX)),
            dir.join(file_name(base, INDEX_SUFFIX)),
            dir.join(file_name(base, TIME_INDEX_SUFFIX)),
        )
    }

    /// A new, empty active segment, its directory entry synced. Leftover
    /// files with the same base are replaced.
    pub(crate) fn create(dir: &Path, base: Offset) -> Result<Segment, LogError> {
        let segment = Self::create_unsynced(dir, base)?;
        crate::checkpoint::sync_dir(dir)?;
        Ok(segment)
    }

    /// As [`Segment::create`], leaving the directory sync to the caller (a
    /// roll, whose next log sync covers it).
    pub(crate) fn create_unsynced(dir: &Path, base: Offset) -> Result<Segment, LogError> {
        let (data_path, index_path, time_index_path) = Self::paths(dir, base);
        for stale in [&index_path, &time_index_path] {
            remove_if_present(stale)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(LogError::io(&data_path))?;
        Ok(Segment {
            base_offset: base,
            data_path,
            index_path,
            time_index_path,
            size: 0,
            next_offset: base,
            max_timestamp: None,
            first_timestamp: None,
            active: Some(ActiveState {
                file: Some(Arc::new(file)),
                offsets: Vec::new(),
                times: Vec::new(),
                bytes_since_index: u64::MAX,
                last_used: Instant::now(),
            }),
        })
    }

    /// Opens a sealed segment whose successor starts at `next_base`. Index
    /// files that are missing, partial or inconsistent are rebuilt from the data.
    pub(crate) fn open_sealed(
        dir: &Path,
        base: Offset,
        next_base: Offset,
        index_interval: u32,
    ) -> Result<Segment, LogError> {
        Self::open_sealed_with(dir, base, next_base, index_interval, false)
    }

    /// [`Segment::open_sealed`]; `quiet` when the indexes are known to be
    /// missing on purpose (a segment just rewritten by compaction).
    pub(crate) fn open_sealed_with(
        dir: &Path,
        base: Offset,
        next_base: Offset,
        index_interval: u32,
        quiet: bool,
    ) -> Result<Segment, LogError> {
        let (data_path, index_path, time_index_path) = Self::paths(dir, base);
        let size = fs::metadata(&data_path)
            .map_err(LogError::io(&data_path))?
            .len();
        let span = u64::try_from(next_base.get() - base.get()).unwrap_or(0);
        let offsets = index::read_all::<OffsetEntry>(&index_path)?;
        let times = index::read_all::<TimeEntry>(&time_index_path)?;
        let mut segment = Segment {
            base_offset: base,
            data_path,
            index_path,
            time_index_path,
            size,
            next_offset: next_base,
            max_timestamp: None,
            first_timestamp: None,
            active: None,
        };
        match (offsets, times) {
            (Some(offsets), Some(times))
                if index::offsets_are_valid(&offsets, size, span)
                    && index::times_are_valid(&times, span)
                    && (size == 0
                        || (!offsets.is_empty()
                            && times
                                .last()
                                .is_some_and(|t| u64::from(t.relative_offset) + 1 == span))) =>
            {
                segment.max_timestamp = times.last().map(|t| t.timestamp);
            }
            _ => {
                if quiet {
                    tracing::debug!(segment = %segment.data_path.display(), "building indexes");
                } else {
                    tracing::warn!(segment = %segment.data_path.display(), "rebuilding missing or damaged indexes");
                }
                let file =
                    File::open(&segment.data_path).map_err(LogError::io(&segment.data_path))?;
                let mut state = ActiveState {
                    file: None,
                    offsets: Vec::new(),
                    times: Vec::new(),
                    bytes_since_index: u64::MAX,
                    last_used: Instant::now(),
                };
                segment.next_offset = base;
                let end = segment.scan_into(&file, 0, &mut state, index_interval)?;
                // Keep the whole file in view, so reads reach the damage and
                // fail rather than skip to the next segment.
                segment.size = size;
                if let Some(fault) = end.fault {
                    // Reads stop with a corruption error at this point; the
                    // offsets after it are never served from this segment.
                    tracing::error!(
                        segment = %segment.data_path.display(),
                        position = end.valid_end,
                        %fault,
                        "sealed segment is damaged; reads past this point will fail"
                    );
                }
                push_final_time_entry(
                    &mut state,
                    segment.max_timestamp,
                    segment.last_indexed_relative(),
                );
                index::write_all(&segment.index_path, &state.offsets, true)?;
                index::write_all(&segment.time_index_path, &state.times, true)?;
                segment.next_offset = next_base;
            }
        }
        Ok(segment)
    }

    /// Opens the active segment. After a clean shutdown the saved indexes are
    /// trusted and only the data after the last index entry is checked;
    /// otherwise every batch is checked and the indexes are rebuilt. Data
    /// after the last valid batch (a torn or zero-filled tail) is cut off.
    pub(crate) fn open_active(
        dir: &Path,
        base: Offset,
        clean: bool,
        index_interval: u32,
    ) -> Result<Segment, LogError> {
        let (data_path, index_path, time_index_path) = Self::paths(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(LogError::io(&data_path))?;
        let file_len = file.metadata().map_err(LogError::io(&data_path))?.len();
        let mut segment = Segment {
            base_offset: base,
            data_path,
            index_path,
            time_index_path,
            size: 0,
            next_offset: base,
            max_timestamp: None,
            first_timestamp: None,
            active: None,
        };
        let mut state = ActiveState {
            file: None,
            offsets: Vec::new(),
            times: Vec::new(),
            bytes_since_index: u64::MAX,
            last_used: Instant::now(),
        };
        let mut scan_from = 0;
        let mut resumed = false;
        if clean {
            let offsets = index::read_all::<OffsetEntry>(&segment.index_path)?;
            let times = index::read_all::<TimeEntry>(&segment.time_index_path)?;
            if let (Some(offsets), Some(times)) = (offsets, times)
                && index::offsets_are_valid(&offsets, file_len, u64::from(u32::MAX))
                && index::times_are_valid(&times, u64::from(u32::MAX))
                && let Some(last) = offsets.last().copied()
            {
                // Resume the scan at the last indexed batch; the entry for it
                // is re-added by the scan.
                scan_from = u64::from(last.position);
                segment.next_offset = base.plus(i64::from(last.relative_offset));
                segment.max_timestamp = times.last().map(|t| t.timestamp);
                state.times = times
                    .into_iter()
                    .filter(|t| t.relative_offset < last.relative_offset)
                    .collect();
                state.offsets = offsets;
                state.offsets.pop();
                resumed = true;
            }
        }
        let mut end = segment.scan_into(&file, scan_from, &mut state, index_interval)?;
        if resumed && end.valid_end == scan_from && end.fault.is_some() {
            // No valid batch where the saved index says one starts: the
            // index is damaged, not the data. Check every batch instead.
            tracing::warn!(segment = %segment.data_path.display(), "saved index does not match the data; rebuilding it");
            segment.next_offset = base;
            segment.max_timestamp = None;
            state.offsets.clear();
            state.times.clear();
            state.bytes_since_index = u64::MAX;
            end = segment.scan_into(&file, 0, &mut state, index_interval)?;
        }
        if end.valid_end < file_len {
            tracing::warn!(
                segment = %segment.data_path.display(),
                valid_bytes = end.valid_end,
                cut_bytes = file_len - end.valid_end,
                fault = %end.fault.map_or_else(|| "none".to_owned(), |f| f.to_string()),
                "cutting torn tail"
            );
            file.set_len(end.valid_end)
                .map_err(LogError::io(&segment.data_path))?;
        }
        file.sync_data().map_err(LogError::io(&segment.data_path))?;
        segment.first_timestamp = segment.read_first_timestamp(&file)?;
        state.file = Some(Arc::new(file));
        segment.active = Some(state);
        Ok(segment)
    }

    /// Walks batches from `from`, checking each, adding index entries and
    /// advancing `size`, `next_offset` and `max_timestamp`.
    fn scan_into(
        &mut self,
        file: &File,
        from: u64,
        state: &mut ActiveState,
        index_interval: u32,
    ) -> Result<ScanEnd, LogError> {
        let file_len = file
            .metadata()
            .map_err(LogError::io(&self.data_path))?
            .len();
        let mut reader = ChunkReader::new(file, file_len);
        let mut position = from;
        let fault = loop {
            if position >= file_len {
                break None;
            }
            let header_bytes = match reader.get(position, HEADER_SIZE) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    break Some(BatchFault::Truncated {
                        needed: HEADER_SIZE,
                        available: (file_len - position) as usize,
                    });
                }
                Err(err) => return Err(LogError::io(&self.data_path)(err)),
            };
            let header = match BatchHeader::parse(header_bytes) {
                Ok(header) => header,
                Err(fault) => break Some(fault),
            };
            if header.base_offset != self.next_offset
                || header.last_offset().get() - self.base_offset.get() > i64::from(u32::MAX)
            {
                break Some(BatchFault::UnexpectedOffset {
                    expected: self.next_offset,
                    found: header.base_offset,
                });
            }
            let whole = match reader.get(position, header.size) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    break Some(BatchFault::Truncated {
                        needed: header.size,
                        available: (file_len - position) as usize,
                    });
                }
                Err(err) => return Err(LogError::io(&self.data_path)(err)),
            };
            if let Err(fault) = batch::verify(whole) {
                break Some(fault);
            }
            self.record_batch(state, position, &header, index_interval);
            position += header.size as u64;
        };
        self.size = position;
        Ok(ScanEnd {
            valid_end: position,
            fault,
        })
    }

    /// Updates indexes and bounds for a batch now at `position`.
    fn record_batch(
        &mut self,
        state: &mut ActiveState,
        position: u64,
        header: &BatchHeader,
        index_interval: u32,
    ) {
        let max = self
            .max_timestamp
            .map_or(header.max_timestamp, |m| m.max(header.max_timestamp));
        self.max_timestamp = Some(max);
        let relative = relative(self.base_offset, header.base_offset);
        if state.bytes_since_index >= u64::from(index_interval) {
            state.offsets.push(OffsetEntry {
                relative_offset: relative,
                position: position as u32,
            });
            if state.times.last().is_none_or(|t| t.timestamp < max) {
                state.times.push(TimeEntry {
                    timestamp: max,
                    relative_offset: relative,
                });
            }
            state.bytes_since_index = 0;
        }
        state.bytes_since_index = state.bytes_since_index.saturating_add(header.size as u64);
        if self.first_timestamp.is_none() {
            self.first_timestamp = Some(header.max_timestamp);
        }
        self.next_offset = header.next_offset();
    }

    fn last_indexed_relative(&self) -> u32 {
        relative(
            self.base_offset,
            self.next_offset.plus(-1).max(self.base_offset),
        )
    }

    fn read_first_timestamp(&self, file: &File) -> Result<Option<i64>, LogError> {
        if self.size < HEADER_SIZE as u64 {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0)
            .map_err(LogError::io(&self.data_path))?;
        Ok(BatchHeader::parse(&header).ok().map(|h| h.max_timestamp))
    }

    /// What a read needs, so it can run without the log's lock.
    pub(crate) fn view(&self) -> SegmentView {
        SegmentView {
            data_path: self.data_path.clone(),
            size: self.size,
            next_offset: self.next_offset,
        }
    }

    fn header_at(&self, file: &File, position: u64) -> Result<BatchHeader, LogError> {
        header_at(&self.data_path, file, position)
    }

    fn corrupt(&self, position: u64, reason: BatchFault) -> LogError {
        corrupt(&self.data_path, position, reason)
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub(crate) fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// The open data file of the active segment, reopened if it was released.
    fn active_file(&mut self) -> Result<Arc<File>, LogError> {
        let path = &self.data_path;
        let state = self.active.as_mut().ok_or(LogError::Closed)?;
        state.last_used = Instant::now();
        if let Some(file) = &state.file {
            return Ok(Arc::clone(file));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(LogError::io(path))?;
        let file = Arc::new(file);
        state.file = Some(Arc::clone(&file));
        Ok(file)
    }

    /// A handle for reading: the shared one of the active segment, a fresh
    /// one for a sealed segment (closed when the read is done).
    pub(crate) fn read_handle(&mut self) -> Result<Arc<File>, LogError> {
        if self.active.is_some() {
            return self.active_file();
        }
        File::open(&self.data_path)
            .map(Arc::new)
            .map_err(LogError::io(&self.data_path))
    }

    /// The handle syncs go to.
    pub(crate) fn sync_handle(&mut self) -> Result<Arc<File>, LogError> {
        self.active_file()
    }

    /// Writes checked, stamped batches at the end of the active segment.
    pub(crate) fn append(
        &mut self,
        bytes: &[u8],
        batches: &[(usize, BatchHeader)],
        index_interval: u32,
    ) -> Result<(), LogError> {
        let file = self.active_file()?;
        file.write_all_at(bytes, self.size)
            .map_err(LogError::io(&self.data_path))?;
        let start = self.size;
        let mut state = self.active.take().ok_or(LogError::Closed)?;
        for (at, header) in batches {
            self.record_batch(&mut state, start + *at as u64, header, index_interval);
        }
        self.active = Some(state);
        self.size = start + bytes.len() as u64;
        Ok(())
    }

    /// Writes the indexes out (unsynced: a lost index is rebuilt from the
    /// data on open); the segment becomes sealed. If an index cannot be written (a full disk), the segment stays
    /// active and nothing is lost: sealing can be tried again.
    pub(crate) fn seal(&mut self) -> Result<(), LogError> {
        let (max_timestamp, last_relative) = (self.max_timestamp, self.last_indexed_relative());
        if let Some(state) = &mut self.active {
            push_final_time_entry(state, max_timestamp, last_relative);
            index::write_all(&self.index_path, &state.offsets, false)?;
            index::write_all(&self.time_index_path, &state.times, false)?;
        }
        self.active = None;
        Ok(())
    }

    /// After a failed append, cuts the data file back to its last complete
    /// append, so that no partial batch stays behind it.
    ///
    /// # Errors
    /// [`LogError::Io`] when the file cannot be cut: the caller must then
    /// stop writing to this segment.
    pub(crate) fn discard_failed_append(&mut self) -> Result<(), LogError> {
        let file = self.active_file()?;
        file.set_len(self.size)
            .map_err(LogError::io(&self.data_path))
    }

    /// Writes the active segment's indexes out for a clean shutdown.
    pub(crate) fn save_indexes(&self) -> Result<(), LogError> {
        if let Some(state) = &self.active {
            index::write_all(&self.index_path, &state.offsets, true)?;
            index::write_all(&self.time_index_path, &state.times, true)?;
        }
        Ok(())
    }

    /// Drops the active segment's file handle if unused for `idle`.
    pub(crate) fn release_if_idle(&mut self, idle: std::time::Duration) -> bool {
        match &mut self.active {
            Some(state) if state.file.is_some() && state.last_used.elapsed() >= idle => {
                state.file = None;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn has_open_handle(&self) -> bool {
        self.active.as_ref().is_some_and(|s| s.file.is_some())
    }

    /// Byte position of the batch holding `offset`, with its header, or
    /// `None` if the segment ends before it.
    pub(crate) fn find_batch(
        &self,
        file: &File,
        offset: Offset,
    ) -> Result<Option<(u64, BatchHeader)>, LogError> {
        let target = relative(self.base_offset, offset.max(self.base_offset));
        let floor = match &self.active {
            Some(state) => index::floor_in_memory(&state.offsets, |e| e.relative_offset <= target),
            None => index::floor_in_file::<OffsetEntry>(&self.index_path, |e| {
                e.relative_offset <= target
            })?,
        };
        let mut position = floor.map_or(0, |e| u64::from(e.position));
        let mut expected = self
            .base_offset
            .plus(floor.map_or(0, |e| i64::from(e.relative_offset)));
        while position < self.size {
            let header = self.header_at(file, position)?;
            // An indexed batch starts exactly at its entry's offset; every
            // other batch right after its predecessor (the log writes offsets
            // without gaps). The base offset is outside the CRC, so this is
            // what catches a damaged one.
            if header.base_offset != expected || header.base_offset >= self.next_offset {
                return Err(self.corrupt(
                    position,
                    BatchFault::UnexpectedOffset {
                        expected,
                        found: header.base_offset,
                    },
                ));
            }
            expected = header.next_offset();
            if header.last_offset() >= offset {
                return Ok(Some((position, header)));
            }
            position += header.size as u64;
        }
        Ok(None)
    }

    /// The first record at or after `target` in this segment, at or above
    /// `min_offset` and below `upper`.
    pub(crate) fn find_timestamp(
        &self,
        file: &File,
        target: i64,
        min_offset: Offset,
        upper: Offset,
    ) -> Result<Option<(Offset, i64)>, LogError> {
        let hint = match &self.active {
            Some(state) => index::floor_in_memory(&state.times, |t| t.timestamp < target),
            None => {
                index::floor_in_file::<TimeEntry>(&self.time_index_path, |t| t.timestamp < target)?
            }
        };
        let (mut position, mut expected) = match hint {
            Some(entry) => {
                let offset = self.base_offset.plus(i64::from(entry.relative_offset));
                match self.find_batch(file, offset)? {
                    Some((position, header)) => (position, header.base_offset),
                    None => return Ok(None),
                }
            }
            None => (0, self.base_offset),
        };
        while position < self.size {
            let header = self.header_at(file, position)?;
            if header.base_offset >= upper {
                return Ok(None);
            }
            if header.base_offset != expected {
                return Err(self.corrupt(
                    position,
                    BatchFault::UnexpectedOffset {
                        expected,
                        found: header.base_offset,
                    },
                ));
            }
            expected = header.next_offset();
            if header.max_timestamp >= target && header.last_offset() >= min_offset {
                let mut bytes = vec![0u8; header.size];
                file.read_exact_at(&mut bytes, position)
                    .map_err(LogError::io(&self.data_path))?;
                batch::verify(&bytes).map_err(|reason| self.corrupt(position, reason))?;
                let found = match batch::first_record_at_or_after(&bytes, target, min_offset) {
                    Some(found) => Some(found),
                    // Compressed: the batch is the finest grain available.
                    None if header.is_compressed() => {
                        Some((header.base_offset.max(min_offset), header.max_timestamp))
                    }
                    // Every qualifying record is below `min_offset`.
                    None => None,
                };
                if found.is_some() {
                    return Ok(found);
                }
            }
            position += header.size as u64;
        }
        Ok(None)
    }

    /// Cuts the segment at the batch holding `offset` (that batch goes too)
    /// and reopens it as the active segment.
    pub(crate) fn truncate_and_activate(
        mut self,
        dir: &Path,
        offset: Offset,
        index_interval: u32,
    ) -> Result<Segment, LogError> {
        let file = self.read_handle()?;
        if let Some((position, _)) = self.find_batch(&file, offset)? {
            let writable = OpenOptions::new()
                .write(true)
                .open(&self.data_path)
                .map_err(LogError::io(&self.data_path))?;
            writable
                .set_len(position)
                .map_err(LogError::io(&self.data_path))?;
            writable.sync_all().map_err(LogError::io(&self.data_path))?;
        }
        drop(file);
        self.active = None;
        Segment::open_active(dir, self.base_offset, false, index_interval)
    }

    /// Removes the segment's index files (the data file stays).
    pub(crate) fn delete_indexes(self) -> Result<(), LogError> {
        for path in [&self.index_path, &self.time_index_path] {
            remove_if_present(path)?;
        }
        Ok(())
    }

    /// Removes the segment's files.
    pub(crate) fn delete(self) -> Result<(), LogError> {
        for path in [&self.data_path, &self.index_path, &self.time_index_path] {
            remove_if_present(path)?;
        }
        Ok(())
    }
}

/// A snapshot of a segment's bounds for reading outside the log's lock.
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    data_path: PathBuf,
    size: u64,
    next_offset: Offset,
}

impl SegmentView {
    /// The header of the batch at `position`, or `None` at the segment's end.
    pub(crate) fn header_within(
        &self,
        file: &File,
        position: u64,
    ) -> Result<Option<BatchHeader>, LogError> {
        if position >= self.size {
            return Ok(None);
        }
        self.header_at(file, position).map(Some)
    }

    fn header_at(&self, file: &File, position: u64) -> Result<BatchHeader, LogError> {
        header_at(&self.data_path, file, position)
    }

    fn corrupt(&self, position: u64, reason: BatchFault) -> LogError {
        corrupt(&self.data_path, position, reason)
    }

    pub(crate) fn read(
        &self,
        file: &File,
        position: u64,
        max_bytes: usize,
        upper: Offset,
    ) -> Result<(Bytes, Option<Offset>, Option<Offset>), LogError> {
        let available = self.size.saturating_sub(position) as usize;
        if available == 0 {
            return Ok((Bytes::new(), None, None));
        }
        let first = self.header_at(file, position)?;
        if first.base_offset >= upper {
            return Ok((Bytes::new(), None, None));
        }
        if first.size > available {
            return Err(self.corrupt(
                position,
                BatchFault::Truncated {
                    needed: first.size,
                    available,
                },
            ));
        }
        let mut buf = vec![0u8; max_bytes.max(first.size).min(available)];
        file.read_exact_at(&mut buf, position)
            .map_err(LogError::io(&self.data_path))?;
        let mut end = 0usize;
        let mut next = None;
        let mut expected = first.base_offset;
        while let Some(rest) = buf.get(end..).filter(|r| r.len() >= HEADER_SIZE) {
            let at = position + end as u64;
            let header = BatchHeader::parse(rest).map_err(|reason| self.corrupt(at, reason))?;
            if header.base_offset >= upper || rest.len() < header.size {
                break;
            }
            if header.base_offset != expected || header.base_offset >= self.next_offset {
                return Err(self.corrupt(
                    at,
                    BatchFault::UnexpectedOffset {
                        expected,
                        found: header.base_offset,
                    },
                ));
            }
            let whole = rest.get(..header.size).unwrap_or_default();
            batch::verify(whole).map_err(|reason| self.corrupt(at, reason))?;
            next = Some(header.next_offset());
            expected = header.next_offset();
            end += header.size;
        }
        buf.truncate(end);
        Ok((Bytes::from(buf), Some(first.base_offset), next))
    }
}

fn header_at(path: &Path, file: &File, position: u64) -> Result<BatchHeader, LogError> {
    let mut bytes = [0u8; HEADER_SIZE];
    file.read_exact_at(&mut bytes, position)
        .map_err(LogError::io(path))?;
    BatchHeader::parse(&bytes).map_err(|reason| corrupt(path, position, reason))
}

fn corrupt(path: &Path, position: u64, reason: BatchFault) -> LogError {
    tracing::error!(segment = %path.display(), position, %reason, "damaged batch");
    LogError::Corrupt {
        path: path.to_path_buf(),
        position,
        reason,
    }
}

fn relative(base: Offset, offset: Offset) -> u32 {
    u32::try_from(offset.get() - base.get()).unwrap_or(u32::MAX)
}

/// Closes a segment's time index with an entry at its last offset, so that
/// an index cut short (whole entries lost) is recognised on open.
fn push_final_time_entry(state: &mut ActiveState, max: Option<i64>, last_relative: u32) {
    if let Some(max) = max
        && state
            .times
            .last()
            .is_none_or(|t| t.relative_offset < last_relative)
    {
        state.times.push(TimeEntry {
            timestamp: max,
            relative_offset: last_relative,
        });
    }
}

fn remove_if_present(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(LogError::io(path)(err)),
    }
}

/// Sequential reads of a data file in large chunks.
struct ChunkReader<'a> {
    file: &'a File,
    file_len: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a File, file_len: u64) -> Self {
        ChunkReader {
            file,
            file_len,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    /// `len` bytes at `position`, or `None` if the file ends first.
    fn get(&mut self, position: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        if position + len as u64 > self.file_len {
            return Ok(None);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if position < self.buf_start || position + len as u64 > buf_end {
            let read_len = (len.max(SCAN_CHUNK) as u64).min(self.file_len - position) as usize;
            self.buf.resize(read_len, 0);
            self.file.read_exact_at(&mut self.buf, position)?;
            self.buf_start = position;
        }
        let from = (position - self.buf_start) as usize;
        Ok(self.buf.get(from..from + len))
    }
}
