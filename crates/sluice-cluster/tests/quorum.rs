//! Three metadata nodes on loopback, each with its own data directory and
//! listener: they elect a controller, replicate commands in one order to
//! every node, refuse writes on followers, survive the loss of the
//! controller, and bring a returning node up to date, through a snapshot
//! when the log it missed was purged, and from its own disk on restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_cluster::{Machine, MetadataNode, NodeId, RaftSettings};
use tokio::net::TcpListener;

/// Keeps every command it is given, in order.
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

fn journal(node: &MetadataNode) -> Vec<String> {
    node.read(|machine| serde_json::from_str(&machine.snapshot()).expect("journal"))
}

fn settings() -> RaftSettings {
    RaftSettings {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(400),
        election_max: Duration::from_millis(800),
        snapshot_every: 5,
    }
}

async fn start(
    id: NodeId,
    addr: SocketAddr,
    voters: &BTreeMap<NodeId, String>,
    dir: &Path,
) -> MetadataNode {
    let listener = TcpListener::bind(addr).await.expect("bind");
    MetadataNode::start(
        id,
        listener,
        voters,
        dir,
        Box::new(Journal::default()),
        settings(),
    )
    .await
    .expect("start")
}

/// Waits until every node names the same controller; returns its index.
async fn agreed_leader(nodes: &[&MetadataNode]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaders: Vec<Option<NodeId>> = nodes.iter().map(|n| n.leader()).collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*leader))
            && let Some(at) = nodes.iter().position(|n| n.id() == *leader)
        {
            return at;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed controller: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_journal(node: &MetadataNode, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while journal(node) != want {
        assert!(
            Instant::now() < deadline,
            "node {} has {:?}, not {want:?}",
            node.id(),
            journal(node)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_fail_over_and_catch_up() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut addrs = Vec::new();
    for _ in 0..3 {
        // A free port for each node, released for the node to bind.
        let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(probe.local_addr().expect("addr"));
    }
    let voters: BTreeMap<NodeId, String> = (1..=3u64)
        .zip(&addrs)
        .map(|(id, addr)| (id, addr.to_string()))
        .collect();
    let dirs: Vec<PathBuf> = (1..=3)
        .map(|id| root.path().join(format!("node-{id}")))
        .collect();
    let mut nodes = Vec::new();
    for (i, id) in (1..=3u64).enumerate() {
        nodes.push(start(id, addrs[i], &voters, &dirs[i]).await);
    }

    let leader = agreed_leader(&nodes.iter().collect::<Vec<_>>()).await;
    let mut want = Vec::new();
    for command in ["a", "b", "c"] {
        let answer = nodes[leader]
            .propose(command.to_owned())
            .await
            .expect("propose");
        want.push(command.to_owned());
        assert_eq!(
            answer,
            want.len().to_string(),
            "the answer is the applied reply"
        );
    }
    for node in &nodes {
        wait_for_journal(node, &want).await;
    }
    // A follower forwards its proposal to the controller and answers once
    // it has applied the command itself.
    let follower = (leader + 1) % 3;
    let answer = nodes[follower]
        .propose("forwarded".to_owned())
        .await
        .expect("a follower's proposal is forwarded");
    want.push("forwarded".to_owned());
    assert_eq!(answer, want.len().to_string());
    assert_eq!(
        nodes[follower].read(|m| m.snapshot()),
        serde_json::to_string(&want).expect("json"),
        "applied on the follower before it answers"
    );
    for node in &nodes {
        wait_for_journal(node, &want).await;
    }

    // The controller goes away; the other two elect one and go on, past a
    // snapshot (every 5 entries) that purges what the lost node missed.
    let lost = nodes.remove(leader);
    let lost_id = lost.id();
    let lost_last = lost.metrics().borrow().last_log_index.expect("a log");
    lost.shutdown().await;
    let next = agreed_leader(&nodes.iter().collect::<Vec<_>>()).await;
    assert_ne!(nodes[next].id(), lost_id);
    for i in 0..12 {
        let command = format!("after-{i}");
        nodes[next]
            .propose(command.clone())
            .await
            .expect("propose after failover");
        want.push(command);
    }
    for node in &nodes {
        wait_for_journal(node, &want).await;
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let purged = loop {
        let purged = nodes[next].metrics().borrow().purged.map(|p| p.index);
        if purged.is_some_and(|p| p > lost_last) || Instant::now() > deadline {
            break purged;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        purged.is_some_and(|p| p > lost_last),
        "the controller purged past what the lost node has ({purged:?} vs {lost_last}), so only a snapshot brings it back"
    );

    // It comes back on its data directory and catches up.
    let index = usize::try_from(lost_id - 1).expect("index");
    let back = start(lost_id, addrs[index], &voters, &dirs[index]).await;
    wait_for_journal(&back, &want).await;
    nodes.push(back);

    // Everyone restarts from disk alone and still holds the same journal.
    let mut ids = Vec::new();
    for node in nodes {
        ids.push(node.id());
        node.shutdown().await;
    }
    let mut restarted = Vec::new();
    for id in ids {
        let index = usize::try_from(id - 1).expect("index");
        restarted.push(start(id, addrs[index], &voters, &dirs[index]).await);
    }
    let leader = agreed_leader(&restarted.iter().collect::<Vec<_>>()).await;
    restarted[leader]
        .propose("last".to_owned())
        .await
        .expect("propose after restart");
    want.push("last".to_owned());
    for node in &restarted {
        wait_for_journal(node, &want).await;
    }
    for node in restarted {
        node.shutdown().await;
    }
}
