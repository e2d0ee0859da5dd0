//! The metadata quorum of a Sluice cluster: a replicated state machine on
//! [`openraft`]. Nothing here decides an election or matches logs: openraft
//! does; this crate gives it storage in the node's data directory
//! ([`log_store`], [`state`]), a transport between nodes on their own
//! listener ([`network`]), and one handle to run a node ([`node`]).
//!
//! Commands are opaque JSON text to this crate: the broker's
//! `MetadataCommand`s are what it replicates, and a [`Machine`] applies them
//! once committed, on every node, in log order.

pub mod link;
pub mod log_store;
pub mod messages;
pub mod network;
pub mod node;
pub mod quorum;
pub mod replica;
pub mod state;
pub mod txn_links;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use node::{ClusterError, Links, MetadataNode, RaftSettings};

/// Waits up to `timeout` for `answer` from a blocking caller (core's
/// writers, which reach the network through this crate) without holding
/// up an async worker: in `block_in_place` on a multi-threaded runtime's
/// worker, plainly anywhere else (`block_in_place` panics on a
/// current-thread runtime).
pub(crate) fn wait_blocking<T>(
    answer: &std::sync::mpsc::Receiver<T>,
    timeout: std::time::Duration,
) -> Result<T, std::sync::mpsc::RecvTimeoutError> {
    let wait = || answer.recv_timeout(timeout);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// Runs `work` on `runtime` and waits up to `timeout` for its outcome from
/// a blocking caller ([`wait_blocking`]); `None` when none came in time.
pub(crate) fn run_blocking<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    timeout: std::time::Duration,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (answer, answered) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = answer.send(work.await);
    });
    wait_blocking(&answered, timeout).ok()
}
pub use quorum::{ClusterQuorum, CoreMachine};

/// A node's id in the quorum (`node.id`).
pub type NodeId = u64;

/// One command proposed to the quorum: JSON text a [`Machine`] understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(pub String);

openraft::declare_raft_types!(
    /// The openraft types of the metadata quorum.
    pub TypeConfig:
        D = Proposal,
        R = String,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The replicated state: applies committed commands in log order, the same
/// on every node, and saves and restores itself for snapshots.
pub trait Machine: Send + Sync + 'static {
    /// Applies one committed command; the answer goes back to the proposer.
    /// Must be deterministic: every node applies the same commands.
    fn apply(&mut self, command: &str) -> String;

    /// The whole state, for a snapshot.
    fn snapshot(&self) -> String;

    /// Replaces the state with a snapshot's.
    ///
    /// # Errors
    /// A snapshot this machine cannot read.
    fn restore(&mut self, snapshot: &str) -> Result<(), String>;
}
