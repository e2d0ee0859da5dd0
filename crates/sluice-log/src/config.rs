//! Per-log settings. Every field has a default, so `LogConfig::default()` is a
//! working log; the broker fills these from `[log]` in its configuration.

use std::time::Duration;

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// An append returns only after `fdatasync`; concurrent appends share one
    /// sync (group commit). The high watermark follows the synced end.
    Always,
    /// Appends return once written; the log is synced at this interval.
    Interval(Duration),
    /// Appends return once written; the operating system decides when to sync.
    Never,
}

/// Settings of one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment rolls once its data file would grow past this many bytes.
    pub segment_bytes: u64,
    /// A segment rolls once its first batch is this old.
    pub segment_time: Duration,
    /// Up to this much is taken off `segment_time`, differently for each
    /// segment, so that partitions created together do not all roll at
    /// once (Kafka's `segment.jitter.ms`).
    pub segment_jitter: Duration,
    /// Bytes of data between two entries of the sparse offset and time indexes.
    pub index_interval_bytes: u32,
    /// Oldest segments are deleted while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Segments whose newest record is older than this are deleted.
    pub retention_time: Option<Duration>,
    /// When an append is acknowledged.
    pub durability: Durability,
    /// An append that leaves this many records unsynced syncs before it is
    /// acknowledged, whatever `durability` says (Kafka's `flush.messages`).
    pub flush_messages: Option<u64>,
    /// Largest batch (whole RecordBatch, header included) an append accepts.
    pub max_batch_bytes: u32,
    /// Retention deletes old segments (Kafka's `cleanup.policy` has `delete`).
    pub cleanup_delete: bool,
    /// Compaction keeps the latest record per key (`cleanup.policy` has `compact`).
    pub cleanup_compact: bool,
    /// How long a tombstone stays after compaction reached it (`delete.retention.ms`).
    pub delete_retention: Duration,
    /// Records younger than this are never compacted (`min.compaction.lag.ms`).
    pub min_compaction_lag: Duration,
    /// A segment holding records this old is compacted even while the
    /// dirty ratio is below `min_cleanable_dirty_percent`, and the active
    /// segment rolls once its first record is this old, so that it can be
    /// (`max.compaction.lag.ms`).
    pub max_compaction_lag: Option<Duration>,
    /// Compaction runs once this percentage of the cleanable bytes is new
    /// since the last run (`min.cleanable.dirty.ratio` × 100).
    pub min_cleanable_dirty_percent: u8,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_time: Duration::from_secs(7 * 24 * 3600),
            segment_jitter: Duration::ZERO,
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention_time: Some(Duration::from_secs(7 * 24 * 3600)),
            durability: Durability::Always,
            flush_messages: None,
            max_batch_bytes: 1024 * 1024 + 12,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention: Duration::from_secs(24 * 3600),
            min_compaction_lag: Duration::ZERO,
            max_compaction_lag: None,
            min_cleanable_dirty_percent: 50,
        }
    }
}
