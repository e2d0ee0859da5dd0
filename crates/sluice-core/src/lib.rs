//! The protocol-agnostic broker core.
//!
//! It owns what both protocols share: the data directory, the logs behind
//! Kafka partitions and durable AMQP queues, and (in later issues) topics,
//! queues, exchanges, bindings, groups and offsets. It never sees a socket;
//! front-ends translate wire types at their edge and call in here.
//!
//! ```text
//!   sluice (binary) ──open/shutdown──▶ Broker ──▶ LogManager (sluice-log)
//!                                        │            │
//!                                   DataDirLock   logs/<name>/<segments>
//! ```
//!
//! Start reading at [`Broker::open`].

mod data_dir;
mod error;

use std::path::{Path, PathBuf};

use sluice_log::{LogConfig, LogManager};

pub use data_dir::DataDirLock;
pub use error::CoreError;

/// What a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Directory holding everything the broker stores.
    pub data_dir: PathBuf,
    /// Settings every log starts from.
    pub log: LogConfig,
}

/// One running broker node.
///
/// Owned by the binary; front-ends hold it behind an `Arc` in later issues.
#[derive(Debug)]
pub struct Broker {
    data_dir: PathBuf,
    logs: LogManager,
    // Dropped last: the lock is held until every log is closed.
    _lock: DataDirLock,
}

impl Broker {
    /// Creates the data directory if needed, locks it, and opens the logs in it.
    ///
    /// # Errors
    /// [`CoreError::DataDirLocked`] when another process holds the directory;
    /// [`CoreError::DataDir`] when it cannot be created or locked;
    /// [`CoreError::Log`] when a log fails to open.
    pub fn open(options: BrokerOptions) -> Result<Broker, CoreError> {
        let lock = DataDirLock::acquire(&options.data_dir)?;
        let logs = LogManager::open(&options.data_dir.join("logs"), options.log)?;
        Ok(Broker {
            data_dir: options.data_dir,
            logs,
            _lock: lock,
        })
    }

    /// The data directory this broker holds.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The logs this broker stores.
    pub fn logs(&self) -> &LogManager {
        &self.logs
    }

    /// Syncs and closes every log, then releases the data directory.
    ///
    /// # Errors
    /// [`CoreError::Log`] when a log fails to sync or close; the lock is
    /// released either way.
    pub fn shutdown(self) -> Result<(), CoreError> {
        self.logs.shutdown()?;
        Ok(())
    }
}
