//! The stores against openraft's own storage conformance suite
//! (`openraft::testing::Suite`: vote, log, truncation, purge, membership,
//! snapshots), and what they hold after a reopen, a torn tail included.

use std::io::Write;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use sluice_cluster::log_store::LogStore;
use sluice_cluster::state::StateStore;
use sluice_cluster::{Machine, NodeId, Proposal, TypeConfig};
use tempfile::TempDir;

#[derive(Debug, Default)]
struct Journal(Vec<String>);

impl Machine for Journal {
    fn apply(&mut self, command: &str) -> String {
        self.0.push(command.to_owned());
        self.0.len().to_string()
    }

    fn snapshot(&self) -> String {
        serde_json::to_string(&self.0).expect("snapshot")
    }

    fn restore(&mut self, snapshot: &str) -> Result<(), String> {
        self.0 = serde_json::from_str(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let failed = |e: std::io::Error| -> StorageError<NodeId> {
            StorageIOError::write(AnyError::new(&e)).into()
        };
        let log = LogStore::open(dir.path()).map_err(failed)?;
        let state = StateStore::open(dir.path(), Box::new(Journal::default())).map_err(failed)?;
        Ok((dir, log, state))
    }
}

#[test]
fn the_stores_pass_openraft_s_storage_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}

fn entry(term: u64, index: u64, command: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal(command.to_owned())),
    }
}

#[tokio::test]
async fn the_log_and_vote_come_back_after_a_reopen_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut log = LogStore::open(dir.path()).expect("open");
        log.save_vote(&Vote::new(3, 2)).await.expect("vote");
        let entries: Vec<_> = (1..=6).map(|i| entry(1, i, &format!("c{i}"))).collect();
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries)
            .await
            .expect("append");
        // A new leader replaced the tail from index 5, then the log was
        // purged up to 2 after a snapshot.
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 5))
            .await
            .expect("truncate");
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, [entry(2, 5, "c5'")])
            .await
            .expect("append");
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .await
            .expect("purge");
    }
    // A crash in the middle of the next append leaves half a record.
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("raft-log"))
        .expect("log file")
        .write_all(&[200, 0, 0, 0, 1, 2, 3])
        .expect("torn write");

    let mut log = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 2)));
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
    assert_eq!(
        state.last_log_id.map(|l| (l.leader_id.term, l.index)),
        Some((2, 5))
    );
    let commands: Vec<String> = log
        .try_get_log_entries(0..100)
        .await
        .expect("entries")
        .into_iter()
        .map(|e| match e.payload {
            EntryPayload::Normal(Proposal(command)) => command,
            other => panic!("unexpected entry {other:?}"),
        })
        .collect();
    assert_eq!(commands, ["c3", "c4", "c5'"]);
    openraft::storage::RaftLogStorageExt::blocking_append(&mut log, [entry(2, 6, "c6")])
        .await
        .expect("the log takes appends after the cut");
    drop(log);
    let mut log = LogStore::open(dir.path()).expect("reopen again");
    let last = log.get_log_state().await.expect("state").last_log_id;
    assert_eq!(
        last.map(|l| l.index),
        Some(6),
        "the append after the cut is readable: the torn bytes were removed, not written past"
    );
    let mut state = StateStore::open(dir.path(), Box::new(Journal::default())).expect("state");
    assert_eq!(
        state.applied_state().await.expect("applied").0,
        None,
        "no snapshot yet"
    );
}
