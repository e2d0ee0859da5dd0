"""N `sluice` processes on 127.0.0.1 forming one cluster: each node has its
own data dir, its own Kafka, AMQP, HTTP and inter-node (cluster.listen)
ports, and the same `cluster.voters`. Nodes are started and stopped by PID;
every wait has a deadline.

With `proxied=True` every inter-node link goes through a fault-injecting
proxy (`common.proxy.FaultProxy`), one per direction of each pair: node i
dials node j at proxy (i, j) (its `cluster.routes`), and all traffic
between nodes (the quorum's, heartbeats, followers' replica fetches) takes
that link. Clients still reach every node directly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from common.broker import Broker, free_port, wait_until
from common.proxy import FaultProxy


class Cluster:
    """`size` nodes with ids 1..size (node `i` is `nodes[i - 1]`)."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        name: str = "cluster",
        settings: dict[str, str] | None = None,
        proxied: bool = False,
        env: dict[str, str] | None = None,
        node_env: dict[int, dict[str, str]] | None = None,
    ):
        """`env` goes to every node's environment, `node_env[n]` to node
        n's too."""
        links = {node: free_port() for node in range(1, size + 1)}
        voters = ",".join(f"{node}@127.0.0.1:{port}" for node, port in links.items())
        self.root = Path(root)
        self.name = name
        self.voters = voters
        self.settings = settings or {}
        self.env = env or {}
        # (from, to) -> the proxy node `from` dials node `to` through.
        self.proxies: dict[tuple[int, int], FaultProxy] = {}
        if proxied:
            for source in links:
                for target, port in links.items():
                    if source != target:
                        self.proxies[(source, target)] = FaultProxy(
                            ("127.0.0.1", port), name=f"{name}[link {source}->{target}]"
                        )

        def routes(node: int) -> dict[str, str]:
            if not proxied:
                return {}
            listed = ",".join(
                f"{target}@{proxy.address}" for (source, target), proxy in self.proxies.items() if source == node
            )
            return {"cluster.routes": listed}

        self.nodes = [
            Broker(
                Path(root) / f"node-{node}" / "data",
                name=f"{name}[node {node}]",
                settings={
                    "node.id": str(node),
                    "cluster.listen": f"127.0.0.1:{port}",
                    "cluster.voters": voters,
                    **routes(node),
                    **(settings or {}),
                },
                env={**(env or {}), **(node_env or {}).get(node, {})},
            )
            for node, port in links.items()
        ]

    def add_node(self) -> Broker:
        """A node with the next id, not a voter: once started it joins the
        cluster through the voters (not with `proxied=True`)."""
        assert not self.proxies, "a joining node has no proxied links"
        node = len(self.nodes) + 1
        broker = Broker(
            self.root / f"node-{node}" / "data",
            name=f"{self.name}[node {node}]",
            settings={
                "node.id": str(node),
                "cluster.listen": f"127.0.0.1:{free_port()}",
                "cluster.voters": self.voters,
                **self.settings,
            },
            env=self.env,
        )
        self.nodes.append(broker)
        return broker

    def isolate(self, node_id: int) -> None:
        """A full partition of one node from the others: nothing crosses
        its links either way (connections stay open, bytes are held)."""
        assert self.proxies, "the cluster was not started with proxied=True"
        for (source, target), proxy in self.proxies.items():
            if node_id in (source, target):
                proxy.blackhole()

    def mute(self, node_id: int) -> None:
        """A one-way partition: nothing node `node_id` sends reaches the
        others; what they send reaches it."""
        assert self.proxies, "the cluster was not started with proxied=True"
        for (source, target), proxy in self.proxies.items():
            if source == node_id:
                proxy.stall("up")
            elif target == node_id:
                proxy.stall("down")

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def node(self, node_id: int) -> Broker:
        return self.nodes[node_id - 1]

    @property
    def bootstrap(self) -> str:
        """Every running node's Kafka address, comma separated."""
        return ",".join(n.bootstrap for n in self.nodes if n.alive())

    def start(self) -> None:
        for node in self.nodes:
            if not node.alive():
                node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close_proxies(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()

    def wait_registered(self, admin_factory, timeout: float = 30.0) -> dict:
        """Waits until every running node's Metadata lists every node and
        names one controller; returns {node id: (host, port)} as seen."""

        def agreed():
            views = []
            for node in self.nodes:
                if not node.alive():
                    continue
                metadata = admin_factory(node.bootstrap).list_topics(timeout=5)
                views.append(
                    (
                        metadata.controller_id,
                        {b.id: (b.host, b.port) for b in metadata.brokers.values()},
                    )
                )
            controllers = {controller for controller, _ in views}
            brokers = [b for _, b in views]
            full = all(len(b) == len(self.nodes) for b in brokers)
            if full and len(controllers) == 1 and -1 not in controllers:
                return brokers[0]
            return None

        return wait_until(agreed, timeout, interval=0.3, what="every node to list every node and one controller")


@contextlib.contextmanager
def running_cluster(
    root: Path,
    size: int = 3,
    name: str = "cluster",
    settings: dict[str, str] | None = None,
    proxied: bool = False,
    env: dict[str, str] | None = None,
    node_env: dict[int, dict[str, str]] | None = None,
):
    cluster = Cluster(root, size, name, settings, proxied, env, node_env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        cluster.close_proxies()
