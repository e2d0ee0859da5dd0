//! The broker's metadata on the quorum: core's [`MetadataMachine`] is the
//! replicated state, and [`ClusterQuorum`] is how core's writers propose
//! commands ([`MetadataQuorum`]).

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{CoreError, MetadataMachine, MetadataQuorum};
use tokio::runtime::Handle;

use crate::node::PROPOSE_TIMEOUT;
use crate::{Machine, MetadataNode};

/// Core's metadata as the quorum's replicated state.
#[derive(Debug)]
pub struct CoreMachine(pub MetadataMachine);

impl Machine for CoreMachine {
    fn apply(&mut self, command: &str) -> String {
        self.0.apply(command)
    }

    fn snapshot(&self) -> String {
        self.0.snapshot()
    }

    fn restore(&mut self, snapshot: &str) -> Result<(), String> {
        self.0.restore(snapshot)
    }
}

/// Core's writers' way into the quorum: a running node and the runtime
/// it runs on.
#[derive(Debug)]
pub struct ClusterQuorum {
    node: Arc<MetadataNode>,
    runtime: Handle,
}

impl ClusterQuorum {
    pub fn new(node: Arc<MetadataNode>, runtime: Handle) -> ClusterQuorum {
        ClusterQuorum { node, runtime }
    }
}

impl MetadataQuorum for ClusterQuorum {
    fn propose(&self, command: String) -> Result<String, CoreError> {
        let node = Arc::clone(&self.node);
        // A little past the node's own limit, so its answer wins.
        let received = crate::run_blocking(
            &self.runtime,
            PROPOSE_TIMEOUT + Duration::from_secs(5),
            async move { node.propose(command).await },
        );
        match received {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(error)) => Err(CoreError::Quorum {
                reason: error.to_string(),
            }),
            None => Err(CoreError::Quorum {
                reason: "no answer from the quorum in time".to_owned(),
            }),
        }
    }

    fn controller(&self) -> Option<i32> {
        self.node.leader().and_then(|id| i32::try_from(id).ok())
    }

    fn controller_changes(&self) -> u64 {
        self.node.controller_changes()
    }

    fn voters(&self) -> Vec<i32> {
        self.node
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .filter_map(|id| i32::try_from(id).ok())
            .collect()
    }
}

/// Registers this node's Kafka address with the cluster, retrying (while
/// there is no controller, say) until it is committed or `stopping`.
pub async fn register(
    broker: Arc<sluice_core::Broker>,
    host: String,
    port: u16,
    listeners: std::collections::BTreeMap<String, String>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut attempts = 0u32;
    loop {
        let registering = Arc::clone(&broker);
        let host = host.clone();
        let listeners = listeners.clone();
        let done =
            tokio::task::spawn_blocking(move || registering.register(&host, port, &listeners))
                .await;
        match done {
            Ok(Ok(())) => return,
            Ok(Err(error)) => {
                attempts += 1;
                if attempts % 10 == 1 {
                    tracing::warn!(%error, attempts, "cannot register with the cluster yet; retrying");
                }
            }
            Err(_) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// The controller's part, run on every node and acting only on the one
/// that leads the quorum: every `tick`, the nodes heard from within
/// `session` are the live ones, and the partitions' leaders and in-sync
/// replicas follow (a dead leader's partitions move to a live in-sync
/// replica in the next epoch, dead followers leave the in-sync replicas,
/// preferred leaders come back; see `Topics::leadership_changes`).
pub async fn run_controller(
    node: Arc<MetadataNode>,
    broker: Arc<sluice_core::Broker>,
    session: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let tick = (session / 6).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let Some(live) = node.live_nodes(session) else {
            continue;
        };
        let live: std::collections::BTreeSet<i32> = live
            .into_iter()
            .filter_map(|n| i32::try_from(n).ok())
            .collect();
        let deciding = Arc::clone(&broker);
        let Ok(changes) =
            tokio::task::spawn_blocking(move || deciding.topics().leadership_changes(&live)).await
        else {
            return;
        };
        for change in changes {
            // A decommissioned node leaves the quorum before the metadata
            // forgets it (done again, harmlessly, if the commit fails).
            if let sluice_core::MetadataCommand::UnregisterBroker { node: leaving } = &change
                && let Ok(leaving) = u64::try_from(*leaving)
                && let Err(error) = node.remove(leaving).await
            {
                tracing::warn!(node = leaving, %error, "cannot take a decommissioned node out of the quorum yet");
                break;
            }
            let deciding = Arc::clone(&broker);
            match tokio::task::spawn_blocking(move || deciding.topics().commit(change)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "a controller decision was not committed");
                    break;
                }
                Err(_) => return,
            }
        }
    }
}
