//! Process-wide figures of the storage engine, for `/metrics`: how long
//! each `fdatasync` takes and how many records one sync makes durable (the
//! group-commit batch). Process-wide because every log shares the disk.

use std::sync::LazyLock;

use sluice_types::{COUNT_BOUNDS, Histogram};

/// The storage engine's histograms.
#[derive(Debug)]
pub struct StorageMetrics {
    /// `fdatasync` of a log's active segment, in microseconds.
    pub fsync_latency: Histogram,
    /// Records made durable by one sync of a log (group-commit batch size).
    pub sync_batch_records: Histogram,
}

static METRICS: LazyLock<StorageMetrics> = LazyLock::new(|| StorageMetrics {
    fsync_latency: Histogram::latency(),
    sync_batch_records: Histogram::new(COUNT_BOUNDS),
});

/// The storage engine's figures since the process started.
pub fn metrics() -> &'static StorageMetrics {
    &METRICS
}
