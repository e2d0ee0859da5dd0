use std::io;
use std::path::PathBuf;

use sluice_types::Offset;

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("i/o error on {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid record batch: {reason}")]
    InvalidBatch { reason: BatchFault },
    #[error("record batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge { size: usize, limit: u32 },
    #[error("record batch at byte {position} of {} fails its check: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: BatchFault,
    },
    #[error("{} is damaged and cannot be recovered: {reason}", .path.display())]
    Unrecoverable { path: PathBuf, reason: String },
    #[error("offset {offset} is outside the log [{log_start}, {log_end})")]
    OffsetOutOfRange {
        offset: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    #[error("log refuses writes after an earlier write or fsync failure")]
    Poisoned,
    #[error("log was truncated to {offset} while waiting for a sync")]
    Truncated { offset: Offset },
    #[error("log name {name:?} is not allowed: use letters, digits, '.', '_' and '-'")]
    InvalidName { name: String },
    #[error("log is closed")]
    Closed,
}

/// What is wrong with a record batch, as found by [`crate::batch`] checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchFault {
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("batch length field {length} is out of range")]
    BadLength { length: i32 },
    #[error("magic byte {magic} is not 2")]
    BadMagic { magic: i8 },
    #[error("crc-32c {actual:#010x} does not match the stored {stored:#010x}")]
    BadCrc { stored: u32, actual: u32 },
    #[error("last offset delta {delta} is negative")]
    BadOffsetDelta { delta: i32 },
    #[error("base offset {found} where {expected} was expected")]
    UnexpectedOffset { expected: Offset, found: Offset },
    #[error("empty input")]
    Empty,
    #[error("records cannot be decoded: {reason}")]
    Undecodable { reason: String },
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { path, source }
    }
}
