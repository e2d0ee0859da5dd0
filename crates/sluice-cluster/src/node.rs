//! One node of the metadata quorum: its Raft instance on the stores in its
//! data directory, and the listener peers reach it on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, RaftMetrics, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::log_store::LogStore;
use crate::network::{self, Network};
use crate::state::StateStore;
use crate::{Machine, NodeId, Proposal, TypeConfig};

/// Sends this node's heartbeat to the controller every `interval`, and
/// keeps `controller_since` (when this node became the controller).
async fn heartbeats(
    raft: Raft<TypeConfig>,
    routes: network::Routes,
    id: NodeId,
    interval: Duration,
    controller_since: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    controller_changes: Arc<std::sync::atomic::AtomicU64>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut link: Option<(NodeId, network::Peer)> = None;
    let mut known: Option<NodeId> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let metrics = raft.metrics().borrow().clone();
        if let Some(current) = metrics.current_leader
            && known != Some(current)
        {
            known = Some(current);
            controller_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        {
            let mut since = controller_since.lock().unwrap_or_else(|e| e.into_inner());
            match (metrics.current_leader == Some(id), since.is_some()) {
                (true, false) => *since = Some(std::time::Instant::now()),
                (false, true) => *since = None,
                _ => {}
            }
        }
        let Some(leader) = metrics.current_leader.filter(|l| *l != id) else {
            continue;
        };
        let Some(addr) = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| network::route(&routes, leader, &n.addr))
        else {
            continue;
        };
        if link.as_ref().is_none_or(|(to, _)| *to != leader) {
            link = Some((leader, network::Peer::new(leader, &addr)));
        }
        if let Some((_, peer)) = link.as_mut()
            && let Err(reason) = peer.heartbeat(id, interval * 4).await
        {
            tracing::debug!(leader, %reason, "heartbeat to the controller failed");
        }
    }
}

/// Longest a starting node waits to apply what it had committed.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a proposal waits for a controller to write it.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Timing of the quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftSettings {
    /// How often the leader sends heartbeats; also each replication call's
    /// time limit in openraft, so it covers a follower's fsync.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in this range
    /// starts an election.
    pub election_min: Duration,
    pub election_max: Duration,
    /// Entries between snapshots; older entries are then purged.
    pub snapshot_every: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(1_000),
            election_max: Duration::from_millis(2_000),
            snapshot_every: 10_000,
        }
    }
}

/// What a quorum operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Writes go through the controller (the Raft leader); this node is not it.
    #[error("this node is not the controller (the controller is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("raft: {0}")]
    Raft(String),
    #[error("bad cluster settings: {0}")]
    Settings(String),
    #[error("cluster storage: {0}")]
    Io(#[from] std::io::Error),
}

/// How a node reaches its peers and hands over what its listener is not
/// the quorum's.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// Addresses to dial peers at instead of the membership's
    /// (`cluster.routes`).
    pub routes: BTreeMap<NodeId, String>,
    /// Where connections carrying Kafka requests (followers' replica
    /// fetches) go; without it they are closed.
    pub kafka: Option<network::KafkaStreams>,
    /// Where connections carrying messages for this node's queues go;
    /// without it they are closed.
    pub messages: Option<crate::messages::MessageStreams>,
    /// Where peers reach this node's listener: what a node that is not a
    /// voter announces when it joins.
    pub address: String,
}

/// How often a joining node asks the voters to let it in.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// A node not among the voters asks each voter in turn, until one (the
/// controller) adds it as a learner and the metadata log reaches it.
async fn join(
    raft: Raft<TypeConfig>,
    routes: network::Routes,
    id: NodeId,
    address: String,
    voters: BTreeMap<NodeId, String>,
    mut stopping: watch::Receiver<bool>,
) {
    let joined = |raft: &Raft<TypeConfig>| {
        raft.metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    };
    let mut attempts = 0u32;
    while !joined(&raft) {
        for (voter, addr) in &voters {
            let addr = network::route(&routes, *voter, addr);
            match network::join(*voter, &addr, id, &address, JOIN_RETRY * 5).await {
                Ok(()) => {
                    tracing::info!(
                        controller = voter,
                        "joined the cluster as a node that does not vote"
                    );
                    break;
                }
                Err(reason) => tracing::debug!(voter, %reason, "joining through this voter failed"),
            }
        }
        attempts += 1;
        if attempts.is_multiple_of(10) {
            tracing::warn!(attempts, "cannot join the cluster yet; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(JOIN_RETRY) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// A running node of the metadata quorum.
pub struct MetadataNode {
    id: NodeId,
    routes: network::Routes,
    raft: Raft<TypeConfig>,
    state: StateStore,
    stop: watch::Sender<bool>,
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// When each node last sent this node a heartbeat.
    liveness: network::Liveness,
    /// Since when this node has been the controller, as its heartbeat
    /// task last saw.
    controller_since: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// How many times this node saw another controller.
    controller_changes: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for MetadataNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataNode")
            .field("id", &self.id)
            .field("leader", &self.leader())
            .finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl MetadataNode {
    /// Starts node `id` on its stores in `dir`, serving peers on `listener`.
    /// A node whose stores are empty joins the initial quorum of `voters`
    /// (`id` → `host:port`), which every first start must name alike; a
    /// node that has state resumes it and ignores `voters`.
    ///
    /// # Errors
    /// Unreadable stores, settings openraft refuses, a failed start.
    pub async fn start(
        id: NodeId,
        listener: TcpListener,
        voters: &BTreeMap<NodeId, String>,
        dir: &Path,
        machine: Box<dyn Machine>,
        settings: RaftSettings,
    ) -> Result<MetadataNode, ClusterError> {
        MetadataNode::start_linked(
            id,
            listener,
            voters,
            dir,
            machine,
            settings,
            Links::default(),
        )
        .await
    }

    /// As [`MetadataNode::start`], reaching peers and handing over Kafka
    /// connections as `links` says.
    ///
    /// # Errors
    /// As [`MetadataNode::start`].
    pub async fn start_linked(
        id: NodeId,
        listener: TcpListener,
        voters: &BTreeMap<NodeId, String>,
        dir: &Path,
        machine: Box<dyn Machine>,
        settings: RaftSettings,
        links: Links,
    ) -> Result<MetadataNode, ClusterError> {
        let routes: network::Routes = Arc::new(links.routes);
        let mut log = LogStore::open(dir)?;
        let committed = openraft::storage::RaftLogStorage::read_committed(&mut log)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let state = StateStore::open(dir, machine)?;
        let config = Config {
            cluster_name: "sluice".to_owned(),
            heartbeat_interval: millis(settings.heartbeat),
            election_timeout_min: millis(settings.election_min),
            election_timeout_max: millis(settings.election_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_every.min(1_000),
            install_snapshot_timeout: 5_000,
            ..Config::default()
        }
        .validate()
        .map_err(|e| ClusterError::Settings(e.to_string()))?;
        let network = Network {
            routes: Arc::clone(&routes),
        };
        let raft = Raft::new(id, Arc::new(config), network, log, state.clone())
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let (stop, stopping) = watch::channel(false);
        let liveness = network::Liveness::default();
        let controller_since = std::sync::Arc::new(std::sync::Mutex::new(None));
        let controller_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let server = tokio::spawn(network::serve(
            listener,
            raft.clone(),
            id,
            liveness.clone(),
            network::Handoff {
                kafka: links.kafka,
                messages: links.messages,
            },
            stopping.clone(),
        ));
        let joining = stopping.clone();
        tokio::spawn(heartbeats(
            raft.clone(),
            Arc::clone(&routes),
            id,
            settings.heartbeat,
            controller_since.clone(),
            Arc::clone(&controller_changes),
            stopping,
        ));
        let node = MetadataNode {
            id,
            routes,
            raft,
            state,
            stop,
            server: std::sync::Mutex::new(Some(server)),
            liveness,
            controller_since,
            controller_changes,
        };
        // What this node committed before it stopped is applied before it
        // serves: its state is at least as new as when it stopped.
        if let Some(committed) = committed {
            node.raft
                .wait(Some(REPLAY_TIMEOUT))
                .applied_index_at_least(Some(committed.index), "replay at start")
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        let initialized = node
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if !initialized && !voters.contains_key(&id) {
            // Not a voter: the controller adds it as a learner, and the
            // metadata log comes to it.
            tokio::spawn(join(
                node.raft.clone(),
                Arc::clone(&node.routes),
                id,
                links.address,
                voters.clone(),
                joining,
            ));
        } else if !initialized {
            let members: BTreeMap<NodeId, BasicNode> = voters
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            match node.raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(error) => {
                    node.shutdown().await;
                    return Err(ClusterError::Raft(error.to_string()));
                }
            }
        }
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// How many times this node saw the controller change (its first
    /// controller included).
    pub fn controller_changes(&self) -> u64 {
        self.controller_changes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The address this node dials node `peer`'s inter-node listener at:
    /// its route, else its address in the membership.
    pub fn address(&self, peer: NodeId) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&peer)
            .map(|n| n.addr.clone());
        self.routes.get(&peer).cloned().or(addr)
    }

    /// Proposes `command`; answers the machine's reply once it is committed
    /// and applied here. A follower forwards it to the controller and
    /// waits until it has applied it too; while there is no controller
    /// (an election), it retries for up to [`PROPOSE_TIMEOUT`].
    ///
    /// # Errors
    /// [`ClusterError::NotLeader`] when no controller wrote it in time.
    pub async fn propose(&self, command: String) -> Result<String, ClusterError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        loop {
            let leader = match self.raft.client_write(Proposal(command.clone())).await {
                Ok(written) => return Ok(written.data),
                Err(error) => match error.forward_to_leader() {
                    Some(forward) => forward.leader_id.zip(forward.leader_node.clone()),
                    None => return Err(ClusterError::Raft(error.to_string())),
                },
            };
            if let Some((leader, node)) = leader {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let addr = network::route(&self.routes, leader, &node.addr);
                match network::forward(leader, &addr, command.clone(), left).await {
                    Ok((index, answer)) => {
                        self.raft
                            .wait(Some(left))
                            .applied_index_at_least(Some(index), "forwarded command")
                            .await
                            .map_err(|e| ClusterError::Raft(e.to_string()))?;
                        return Ok(answer);
                    }
                    Err(reason) => {
                        tracing::debug!(leader, %reason, "forwarding a command failed; retrying");
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::NotLeader {
                    leader: self.leader(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// On the controller: the nodes heard from within `session` (itself
    /// included); every voter during the first `session` after it became
    /// the controller, before it could hear them. `None` on other nodes.
    pub fn live_nodes(&self, session: Duration) -> Option<std::collections::BTreeSet<NodeId>> {
        let since = (*self
            .controller_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()))?;
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.id) {
            return None;
        }
        let now = std::time::Instant::now();
        // Voters and learners (nodes that joined) alike.
        let voters: Vec<NodeId> = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        if now.duration_since(since) < session {
            // A new controller has not heard every node yet: it decides
            // nothing (no fencing, no unfencing) for one session.
            return None;
        }
        let heard = self.liveness.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            voters
                .into_iter()
                .filter(|v| {
                    *v == self.id
                        || heard
                            .get(v)
                            .is_some_and(|at| now.duration_since(*at) < session)
                })
                .collect(),
        )
    }

    /// On the controller: takes node `node` out of the quorum, a voter or
    /// a learner (a decommissioned node); nothing to do when it is not in.
    ///
    /// # Errors
    /// [`ClusterError::Raft`]: this node is not the controller, or the
    /// change was not committed.
    pub async fn remove(&self, node: NodeId) -> Result<(), ClusterError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership.membership().voter_ids().any(|v| v == node);
        let is_member = membership.membership().get_node(&node).is_some();
        let set: std::collections::BTreeSet<NodeId> = [node].into_iter().collect();
        let change = if is_voter {
            openraft::ChangeMembers::RemoveVoters(set)
        } else if is_member {
            openraft::ChangeMembers::RemoveNodes(set)
        } else {
            return Ok(());
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        tracing::info!(node, voter = is_voter, "node taken out of the quorum");
        Ok(())
    }

    /// The controller as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// openraft's view of this node, updated as it changes.
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// Reads the state applied on this node (it may trail the controller).
    pub fn read<T>(&self, read: impl FnOnce(&dyn Machine) -> T) -> T {
        self.state.read(read)
    }

    /// Stops the node: Raft first, then the listener.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(node = self.id, %error, "raft did not stop cleanly");
        }
        let _ = self.stop.send(true);
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }
}
