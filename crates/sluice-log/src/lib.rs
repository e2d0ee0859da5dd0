//! Sluice's storage engine: segmented, append-only logs of Kafka record batches.
//!
//! One engine stores everything durable: Kafka partitions, durable AMQP
//! queues and internal topics. It knows record batches, offsets and files,
//! never a protocol's requests, and has no network code.
//!
//! - A [`Log`] is a directory of segments (`segment.rs`): a data file named
//!   by its base offset, with a sparse offset index and a time index beside
//!   it (`index.rs`). Batches are stored as Kafka RecordBatch v2 bytes exactly
//!   as received (`batch.rs`); on append the log writes the base offset and
//!   leader epoch into the header, after checking length and CRC-32C.
//! - Durability per log ([`Durability`]): `Always` acknowledges an append
//!   after `fdatasync`, concurrent appends sharing one sync (group commit,
//!   [`Log::sync_to`]); `Interval` and `Never` leave syncing to the
//!   [`LogManager`]'s maintenance thread or the operating system.
//! - Recovery (`Log::open`): after a crash the active segment is checked
//!   batch by batch, a torn tail cut, indexes rebuilt; damaged sealed data is
//!   found on read by the same checks and reported with the file's name,
//!   never served.
//! - Lock order: `Log::state` before `Log::sync`; see `docs/locks.md`.
//!
//! Start reading at [`Log::open`] and [`Log::append`].

#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

pub mod batch;
mod checkpoint;
mod compaction;
mod config;
mod epoch;
mod error;
mod index;
mod log;
mod manager;
mod metrics;
mod segment;

pub use checkpoint::write_file_atomically;
pub use compaction::CompactionOutcome;
pub use config::{Durability, LogConfig};
pub use error::{BatchFault, LogError};
pub use log::{AppendInfo, Log, ReadBound, ReadResult, RetentionOutcome};
pub use manager::{LogManager, MaintenanceSettings};
pub use metrics::{StorageMetrics, metrics};
