//! N `sluice` nodes on 127.0.0.1 forming one cluster, each its own process,
//! data directory and ports, with a [`FaultProxy`] on every inter-node
//! link: one per direction of each pair, node `i` dialing node `j` through
//! proxy `(i, j)` (named in its `cluster.routes`), so that all traffic
//! between nodes (the quorum's, heartbeats, followers' replica fetches)
//! can be held, delayed or severed. Clients reach every node directly.
//! Nodes are killed by pid when the cluster is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::proxy::{Fault, FaultProxy};
use crate::{free_port, try_spawn_logged};

/// One node: its process while it runs, and what restarts it.
#[derive(Debug)]
struct Node {
    child: Option<Child>,
    data: PathBuf,
    ports: [u16; 3],
    args: Vec<String>,
}

/// A running cluster of nodes `1..=size`.
#[derive(Debug)]
pub struct ClusterProcess {
    nodes: Vec<Node>,
    /// (from, to): the proxy node `from` dials node `to` through.
    proxies: BTreeMap<(usize, usize), FaultProxy>,
    _dir: tempfile::TempDir,
}

impl ClusterProcess {
    /// Starts `size` nodes (ids 1 to `size`, every one a voter) with extra
    /// `settings` (`key=value`, as `--set` takes them), each waited for
    /// until its Kafka, AMQP and HTTP listeners accept connections.
    ///
    /// # Panics
    /// When the binary is missing, a proxy cannot listen, or a node does
    /// not start in time.
    pub fn start(size: usize, settings: &[&str]) -> ClusterProcess {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let links: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let voters = links
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut proxies = BTreeMap::new();
        for from in 1..=size {
            for to in (1..=size).filter(|to| *to != from) {
                let upstream = SocketAddr::from(([127, 0, 0, 1], links[to - 1]));
                let proxy = FaultProxy::start(upstream).expect("a proxy on 127.0.0.1");
                proxies.insert((from, to), proxy);
            }
        }
        let mut nodes = Vec::with_capacity(size);
        for id in 1..=size {
            let routes = proxies
                .iter()
                .filter(|((from, _), _)| *from == id)
                .map(|((_, to), proxy)| format!("{to}@{}", proxy.addr()))
                .collect::<Vec<_>>()
                .join(",");
            let mut args = vec![
                format!("node.id={id}"),
                format!("cluster.listen=127.0.0.1:{}", links[id - 1]),
                format!("cluster.voters={voters}"),
                format!("cluster.routes={routes}"),
            ];
            args.extend(settings.iter().map(|s| (*s).to_owned()));
            let args = args
                .into_iter()
                .flat_map(|a| ["--set".to_owned(), a])
                .collect();
            nodes.push(Node {
                child: None,
                data: dir.path().join(format!("node-{id}")),
                ports: [free_port(), free_port(), free_port()],
                args,
            });
        }
        let mut cluster = ClusterProcess {
            nodes,
            proxies,
            _dir: dir,
        };
        for id in 1..=size {
            cluster.start_node(id);
        }
        cluster
    }

    fn node(&self, id: usize) -> &Node {
        &self.nodes[id - 1]
    }

    /// Node `id`'s Kafka port.
    pub fn kafka_port(&self, id: usize) -> u16 {
        self.node(id).ports[0]
    }

    /// Node `id`'s AMQP URL (guest, vhost "/").
    pub fn amqp_url(&self, id: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.node(id).ports[1]
        )
    }

    /// Node `id`'s admin API, `http://127.0.0.1:PORT`.
    pub fn http_url(&self, id: usize) -> String {
        format!("http://127.0.0.1:{}", self.node(id).ports[2])
    }

    /// Every node's Kafka address, comma separated.
    pub fn bootstrap(&self) -> String {
        (1..=self.nodes.len())
            .map(|id| format!("127.0.0.1:{}", self.kafka_port(id)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `id` again (after [`ClusterProcess::kill`]) on its data
    /// directory and ports.
    ///
    /// # Panics
    /// When it does not listen in time.
    pub fn start_node(&mut self, id: usize) {
        let node = &mut self.nodes[id - 1];
        assert!(node.child.is_none(), "node {id} runs already");
        let log = node.data.with_extension("log");
        let child = try_spawn_logged(&node.data, node.ports, &node.args, Some(&log))
            .unwrap_or_else(|| panic!("node {id} did not listen on {:?}", node.ports));
        node.child = Some(child);
    }

    /// kill -9 of node `id`.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.nodes[id - 1].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Node `id` cut off from the others both ways: its links hold every
    /// byte (connections stay open) until [`ClusterProcess::heal`].
    pub fn isolate(&self, id: usize) {
        self.each_link(id, |_| Fault::Stall {
            forward: true,
            backward: true,
        });
    }

    /// A one-way partition: what node `id` sends is held, what the others
    /// send reaches it.
    pub fn mute(&self, id: usize) {
        self.each_link(id, |outgoing| Fault::Stall {
            forward: outgoing,
            backward: !outgoing,
        });
    }

    /// Node `id`'s links delay every byte by `delay`.
    pub fn delay(&self, id: usize, delay: Duration) {
        self.each_link(id, |_| Fault::Delay(delay));
    }

    /// Every link forwards again; held bytes go through.
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.set(Fault::Heal);
        }
    }

    /// Sets the fault `fault(outgoing)` on each link of node `id`.
    fn each_link(&self, id: usize, fault: impl Fn(bool) -> Fault) {
        for ((from, to), proxy) in &self.proxies {
            if *from == id {
                proxy.set(fault(true));
            } else if *to == id {
                proxy.set(fault(false));
            }
        }
    }
}

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        for id in 1..=self.nodes.len() {
            self.kill(id);
        }
        // A failing test shows the end of each node's log.
        if std::thread::panicking() {
            for (index, node) in self.nodes.iter().enumerate() {
                let log =
                    std::fs::read_to_string(node.data.with_extension("log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
                eprintln!(
                    "===== node {} (last {LOG_TAIL} lines) =====\n{tail}",
                    index + 1
                );
            }
        }
    }
}

/// Lines of each node's log a failing test shows.
const LOG_TAIL: usize = 40;
