//! The Raft log and vote of one node, in its data directory.
//!
//! - `raft-log`: an append-only file of framed records (`u32` length, `u32`
//!   CRC-32C, then JSON): an entry, or "truncate from index" when a new
//!   leader's log replaced this node's tail. Every append is synced before
//!   openraft is told it is durable. On open the records are replayed; a
//!   torn or damaged tail (a crash mid-write) is cut off.
//! - `raft-state.json`: the vote, the committed log id and the last purged
//!   log id, replaced atomically (written, synced, renamed).
//!
//! Purging (after a snapshot) rewrites `raft-log` with the entries that
//! remain. The whole log is also held in memory: metadata commands are
//! few and small, and snapshots keep the log short.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};

use crate::{NodeId, TypeConfig};

const LOG_FILE: &str = "raft-log";
const STATE_FILE: &str = "raft-state.json";
/// Largest record accepted when reading the log back.
const MAX_RECORD: usize = 64 << 20;

/// What `raft-state.json` holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Persisted {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

/// One record of `raft-log`, as read back.
#[derive(Debug, Deserialize)]
enum Record {
    Entry(Entry<TypeConfig>),
    TruncateFrom(u64),
}

/// One record of `raft-log`, as written (same encoding as [`Record`]).
#[derive(Debug, Serialize)]
enum RecordRef<'a> {
    Entry(&'a Entry<TypeConfig>),
    TruncateFrom(u64),
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    persisted: Persisted,
}

/// The node's Raft log storage; clones share it (openraft reads through a
/// clone while it writes).
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn frame(out: &mut Vec<u8>, record: &RecordRef<'_>) -> io::Result<()> {
    let json = serde_json::to_vec(record).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(io::Error::other)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(())
}

/// The records of `bytes` up to the first torn or damaged one, and the
/// length of the valid prefix.
fn records(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(body) = bytes
            .get(at + 8..at + 8 + len)
            .filter(|_| len <= MAX_RECORD)
        else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(record) = serde_json::from_slice::<Record>(body) else {
            break;
        };
        out.push(record);
        at += 8 + len;
    }
    (out, at)
}

fn write_state(dir: &Path, persisted: &Persisted) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(persisted).map_err(io::Error::other)?;
    sluice_log::write_file_atomically(&dir.join(STATE_FILE), &json).map_err(io::Error::other)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying what is there.
    ///
    /// # Errors
    /// The directory or its files cannot be read or written.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let persisted = match std::fs::read(dir.join(STATE_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Persisted::default(),
            Err(error) => return Err(error),
        };
        let path = dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes)?;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let (found, valid) = records(&bytes);
        if valid < bytes.len() {
            tracing::warn!(log = %path.display(), valid_bytes = valid, cut_bytes = bytes.len() - valid, "cutting a torn raft log tail");
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let mut entries = BTreeMap::new();
        for record in found {
            match record {
                Record::Entry(entry) => {
                    entries.insert(entry.log_id.index, entry);
                }
                Record::TruncateFrom(index) => {
                    entries.split_off(&index);
                }
            }
        }
        if let Some(purged) = persisted.last_purged {
            entries = entries.split_off(&(purged.index + 1));
        }
        let file = open_append(&path)?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                file,
                entries,
                persisted,
            })),
        })
    }

    /// Runs `write` on the blocking pool with the store locked.
    async fn blocking<T, F>(&self, write: F) -> io::Result<T>
    where
        F: FnOnce(&mut Inner) -> io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || write(&mut lock(&inner)))
            .await
            .map_err(io::Error::other)?
    }

    /// Saves the persisted pointers with `change` applied.
    async fn save_state(
        &self,
        change: impl FnOnce(&mut Persisted) + Send + 'static,
    ) -> io::Result<()> {
        self.blocking(move |inner| {
            let mut next = inner.persisted.clone();
            change(&mut next);
            write_state(&inner.dir, &next)?;
            inner.persisted = next;
            Ok(())
        })
        .await
    }
}

fn write_error(error: &io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(error)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = lock(&self.inner);
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = lock(&self.inner);
        let last_purged_log_id = inner.persisted.last_purged;
        let last_log_id = inner
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.save_state(move |p| p.vote = Some(vote))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.inner).persisted.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.save_state(move |p| p.committed = committed)
            .await
            .map_err(|e| write_error(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.inner).persisted.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let written = self
            .blocking(move |inner| {
                let mut bytes = Vec::new();
                for entry in &entries {
                    frame(&mut bytes, &RecordRef::Entry(entry))?;
                }
                inner.file.write_all(&bytes)?;
                inner.file.sync_data()?;
                for entry in entries {
                    inner.entries.insert(entry.log_id.index, entry);
                }
                Ok(())
            })
            .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                let failure = write_error(&error);
                callback.log_io_completed(Err(error));
                Err(failure)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |inner| {
            let mut bytes = Vec::new();
            frame(&mut bytes, &RecordRef::TruncateFrom(log_id.index))?;
            inner.file.write_all(&bytes)?;
            inner.file.sync_data()?;
            inner.entries.split_off(&log_id.index);
            Ok(())
        })
        .await
        .map_err(|e| write_error(&e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |inner| {
            let mut next = inner.persisted.clone();
            next.last_purged = Some(log_id);
            write_state(&inner.dir, &next)?;
            inner.persisted = next;
            inner.entries = inner.entries.split_off(&(log_id.index + 1));
            // Rewrite the file with what remains, atomically.
            let mut bytes = Vec::new();
            for entry in inner.entries.values() {
                frame(&mut bytes, &RecordRef::Entry(entry))?;
            }
            let path = inner.dir.join(LOG_FILE);
            sluice_log::write_file_atomically(&path, &bytes).map_err(io::Error::other)?;
            inner.file = open_append(&path)?;
            Ok(())
        })
        .await
        .map_err(|e| write_error(&e))
    }
}
