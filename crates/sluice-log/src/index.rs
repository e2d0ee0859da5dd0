//! Sparse offset and time indexes of one segment.
//!
//! The active segment keeps its entries in memory and writes them out when it
//! is sealed or the log closes cleanly; after a crash they are rebuilt from
//! the data file, which is scanned anyway to find the torn tail. Sealed
//! segments are looked up on disk by binary search with positioned reads, so
//! an idle log costs no index memory.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::LogError;

/// One fixed-size entry of an index file.
pub(crate) trait IndexEntry: Copy + std::fmt::Debug {
    const SIZE: usize;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// Offset index entry: the batch starting at `relative_offset` (from the
/// segment's base offset) begins at byte `position` of the data file.
///
/// Layout: `[relative_offset:4][position:4]`, big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
}

/// Time index entry: every record up to and including the batch holding
/// `relative_offset` has a timestamp at most `timestamp`.
///
/// Layout: `[timestamp:8][relative_offset:4]`, big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) timestamp: i64,
    pub(crate) relative_offset: u32,
}

impl IndexEntry for OffsetEntry {
    const SIZE: usize = 8;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(OffsetEntry {
            relative_offset: u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?),
            position: u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?),
        })
    }
}

impl IndexEntry for TimeEntry {
    const SIZE: usize = 12;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(TimeEntry {
            timestamp: i64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?),
            relative_offset: u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?),
        })
    }
}

/// Reads a whole index file. `Ok(None)` when it is missing or its length is
/// not a whole number of entries: the caller rebuilds it.
pub(crate) fn read_all<E: IndexEntry>(path: &Path) -> Result<Option<Vec<E>>, LogError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(LogError::io(path)(err)),
    };
    if bytes.len() % E::SIZE != 0 {
        return Ok(None);
    }
    Ok(bytes.chunks_exact(E::SIZE).map(E::decode).collect())
}

/// Whether offset entries are strictly increasing and point inside the data.
pub(crate) fn offsets_are_valid(entries: &[OffsetEntry], data_len: u64, offset_span: u64) -> bool {
    entries.windows(2).all(|pair| match pair {
        [a, b] => a.relative_offset < b.relative_offset && a.position < b.position,
        _ => true,
    }) && entries.iter().all(|e| {
        u64::from(e.position) < data_len && u64::from(e.relative_offset) < offset_span.max(1)
    })
}

/// Whether time entries never decrease in either field and lie inside the segment.
pub(crate) fn times_are_valid(entries: &[TimeEntry], offset_span: u64) -> bool {
    entries.windows(2).all(|pair| match pair {
        [a, b] => a.timestamp <= b.timestamp && a.relative_offset <= b.relative_offset,
        _ => true,
    }) && entries
        .iter()
        .all(|e| u64::from(e.relative_offset) < offset_span.max(1))
}

/// Writes entries to `path`, and syncs the file when `sync` says so (a
/// roll does not: it runs under the log's lock). Not atomic, and the caller
/// syncs the directory: a torn or lost index is harmless, because an index
/// is validated on open and rebuilt from the data when it does not fit.
pub(crate) fn write_all<E: IndexEntry>(
    path: &Path,
    entries: &[E],
    sync: bool,
) -> Result<(), LogError> {
    let mut bytes = Vec::with_capacity(entries.len() * E::SIZE);
    for entry in entries {
        entry.encode(&mut bytes);
    }
    let mut file = File::create(path).map_err(LogError::io(path))?;
    file.write_all(&bytes).map_err(LogError::io(path))?;
    if sync {
        file.sync_data().map_err(LogError::io(path))?;
    }
    Ok(())
}

/// The last entry for which `at_or_before` holds, in a file of sorted entries
/// where it holds for a prefix. Binary search with one positioned read a step.
pub(crate) fn floor_in_file<E: IndexEntry>(
    path: &Path,
    at_or_before: impl Fn(&E) -> bool,
) -> Result<Option<E>, LogError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(LogError::io(path)(err)),
    };
    let len = file.metadata().map_err(LogError::io(path))?.len();
    let count = len / E::SIZE as u64;
    let read_entry = |i: u64| -> Result<Option<E>, LogError> {
        let mut buf = vec![0u8; E::SIZE];
        file.read_exact_at(&mut buf, i * E::SIZE as u64)
            .map_err(LogError::io(path))?;
        Ok(E::decode(&buf))
    };
    let (mut low, mut high) = (0u64, count);
    let mut best = None;
    while low < high {
        let middle = low + (high - low) / 2;
        match read_entry(middle)? {
            Some(entry) if at_or_before(&entry) => {
                best = Some(entry);
                low = middle + 1;
            }
            _ => high = middle,
        }
    }
    Ok(best)
}

/// The last entry for which `at_or_before` holds, in memory.
pub(crate) fn floor_in_memory<E: IndexEntry>(
    entries: &[E],
    at_or_before: impl Fn(&E) -> bool,
) -> Option<E> {
    let count = entries.partition_point(at_or_before);
    count.checked_sub(1).and_then(|i| entries.get(i)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<OffsetEntry> {
        (0..100)
            .map(|i| OffsetEntry {
                relative_offset: i * 10,
                position: i * 1000,
            })
            .collect()
    }

    #[test]
    fn file_and_memory_lookups_agree() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("0.index");
        let entries = entries();
        write_all(&path, &entries, true)?;
        for target in [0u32, 5, 10, 11, 555, 990, 5000] {
            let in_file = floor_in_file::<OffsetEntry>(&path, |e| e.relative_offset <= target)?;
            let in_memory = floor_in_memory(&entries, |e| e.relative_offset <= target);
            assert_eq!(in_file, in_memory, "target {target}");
        }
        assert_eq!(read_all::<OffsetEntry>(&path)?, Some(entries));
        Ok(())
    }

    #[test]
    fn partial_entry_means_rebuild() -> Result<(), LogError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("0.index");
        std::fs::write(&path, [0u8; 13]).expect("write");
        assert_eq!(read_all::<OffsetEntry>(&path)?, None);
        assert_eq!(read_all::<OffsetEntry>(&dir.path().join("missing"))?, None);
        Ok(())
    }

    #[test]
    fn validation_rejects_entries_out_of_order_or_past_the_data() {
        let good = entries();
        assert!(offsets_are_valid(&good, 100_000, 1000));
        assert!(!offsets_are_valid(&good, 50_000, 1000));
        let mut swapped = good.clone();
        swapped.swap(3, 4);
        assert!(!offsets_are_valid(&swapped, 100_000, 1000));
    }
}
