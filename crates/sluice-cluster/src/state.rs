//! The applied state of the metadata quorum: a [`Machine`] fed committed
//! entries in order, and its snapshot in `raft-snapshot.json` (replaced
//! atomically). openraft never loads a snapshot at start, so opening the
//! store does: the machine starts from the saved snapshot and openraft
//! re-applies the committed entries after it.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::{Machine, NodeId, TypeConfig};

const SNAPSHOT_FILE: &str = "raft-snapshot.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: String,
}

struct Inner {
    dir: PathBuf,
    machine: Box<dyn Machine>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<SavedSnapshot>,
    built: u64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", &self.dir)
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

/// The state machine storage; clones share it (the snapshot builder is one).
#[derive(Debug, Clone)]
pub struct StateStore {
    inner: Arc<Mutex<Inner>>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn save(dir: &Path, snapshot: &SavedSnapshot) -> io::Result<()> {
    let json = serde_json::to_vec(snapshot).map_err(io::Error::other)?;
    sluice_log::write_file_atomically(&dir.join(SNAPSHOT_FILE), &json).map_err(io::Error::other)
}

fn snapshot_error(error: &io::Error) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(error)).into()
}

impl StateStore {
    /// Opens the state in `dir`: `machine` restored from the saved snapshot
    /// when there is one.
    ///
    /// # Errors
    /// A snapshot that cannot be read or that the machine refuses.
    pub fn open(dir: &Path, mut machine: Box<dyn Machine>) -> io::Result<StateStore> {
        std::fs::create_dir_all(dir)?;
        let snapshot = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                Some(serde_json::from_slice::<SavedSnapshot>(&bytes).map_err(io::Error::other)?)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        let (last_applied, membership) = match &snapshot {
            Some(saved) => {
                machine.restore(&saved.data).map_err(io::Error::other)?;
                (saved.meta.last_log_id, saved.meta.last_membership.clone())
            }
            None => (None, StoredMembership::default()),
        };
        Ok(StateStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                machine,
                last_applied,
                membership,
                snapshot,
                built: 0,
            })),
        })
    }

    /// Reads the applied state (local: it may trail the leader's).
    pub fn read<T>(&self, read: impl FnOnce(&dyn Machine) -> T) -> T {
        read(lock(&self.inner).machine.as_ref())
    }

    /// The last entry applied here.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        lock(&self.inner).last_applied
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let saved = {
            let mut inner = lock(&self.inner);
            inner.built += 1;
            let last = inner.last_applied;
            SavedSnapshot {
                meta: SnapshotMeta {
                    last_log_id: last,
                    last_membership: inner.membership.clone(),
                    snapshot_id: format!(
                        "{}-{}-{}",
                        last.map_or(0, |l| l.leader_id.term),
                        last.map_or(0, |l| l.index),
                        inner.built
                    ),
                },
                data: inner.machine.snapshot(),
            }
        };
        let inner = Arc::clone(&self.inner);
        let kept = saved.clone();
        tokio::task::spawn_blocking(move || {
            let dir = lock(&inner).dir.clone();
            save(&dir, &kept)?;
            lock(&inner).snapshot = Some(kept);
            Ok::<(), io::Error>(())
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|e| snapshot_error(&e))?;
        Ok(Snapshot {
            meta: saved.meta,
            snapshot: Box::new(Cursor::new(saved.data.into_bytes())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = StateStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let inner = lock(&self.inner);
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<String>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = lock(&self.inner);
        let mut answers = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let answer = match entry.payload {
                EntryPayload::Blank => String::new(),
                EntryPayload::Normal(proposal) => inner.machine.apply(&proposal.0),
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                    String::new()
                }
            };
            answers.push(answer);
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = String::from_utf8(snapshot.into_inner())
            .map_err(|e| snapshot_error(&io::Error::other(e)))?;
        let saved = SavedSnapshot {
            meta: meta.clone(),
            data,
        };
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut inner = lock(&inner);
            inner
                .machine
                .restore(&saved.data)
                .map_err(io::Error::other)?;
            save(&inner.dir, &saved)?;
            inner.last_applied = saved.meta.last_log_id;
            inner.membership = saved.meta.last_membership.clone();
            inner.snapshot = Some(saved);
            Ok::<(), io::Error>(())
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|e| snapshot_error(&e))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = lock(&self.inner);
        Ok(inner.snapshot.as_ref().map(|saved| Snapshot {
            meta: saved.meta.clone(),
            snapshot: Box::new(Cursor::new(saved.data.clone().into_bytes())),
        }))
    }
}
