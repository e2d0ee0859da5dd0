//! The metadata quorum of a Sluice cluster: a replicated state machine on
//! [`openraft`]. Nothing here decides an election or matches logs: openraft
//! does; this crate gives it storage in the node's data directory
//! ([`log_store`], [`state`]), a transport between nodes on their own
//! listener ([`network`]), and one handle to run a node ([`node`]).
//!
//! Commands are opaque JSON text to this crate: the broker's
//! `MetadataCommand`s are what it replicates, and a [`Machine`] applies them
//! once committed, on every node, in log order.

pub mod log_store;
pub mod markers;
pub mod messages;
pub mod network;
pub mod node;
pub mod quorum;
pub mod replica;
pub mod state;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use node::{ClusterError, Links, MetadataNode, RaftSettings};
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
