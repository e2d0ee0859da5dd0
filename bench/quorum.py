#!/usr/bin/env python3
"""Sluice's quorum queues on a three-node cluster beside RabbitMQ's quorum
queue on one node (Debian's RabbitMQ 3.10), in one sitting on this machine
(the three Sluice nodes share its cores with each other and the clients, so
read the ratios, not the absolute figures).

1. Throughput: 1 KiB persistent messages with publisher confirms into one
   quorum queue (three replicas on Sluice, a confirm once a majority has a
   message; one member on RabbitMQ), one publisher and one consumer
   (sluice-bench amqp, lapin). On Sluice the clients connect to the
   queue's leader ("clients on the leader") or to the two other nodes, the
   publisher to one and the consumer to the other ("clients on followers").
2. Latency at a fixed 5,000 msg/s, same settings, end to end (publish to
   delivery).
3. Consumer failover on Sluice: `cycles` times, a consumer and a
   publisher (a message every 10 ms) on a node that does not lead the
   queue; kill -9 of the queue's leader; the time until the consumer gets
   the first message published after the kill (which only the new leader
   can deliver). The node comes back and leads again (preferred leader)
   before the next cycle.

Every run starts on fresh data directories (RabbitMQ on a fresh Mnesia
directory). Usage (from the repository root, with the venv scripts/test
makes):
    target/venv/bin/python bench/quorum.py [runs] [failover cycles]
Defaults: 3 runs, 10 cycles. Raw reports go to target/bench/quorum-*.jsonl.
Every process started here is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# bench/cluster.py sets up the paths, the release broker and the tool.
from cluster import ROOT, TOOL, admin, failover_line, summary  # noqa: E402 (this directory is on the path)

import pika  # noqa: E402

from common.broker import free_port, wait_until  # noqa: E402
from common.cluster import Cluster  # noqa: E402

RABBIT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
QUEUE = "bench-quorum"
QUORUM = {"x-queue-type": "quorum"}

WORKLOADS = [
    (
        "quorum queue, 1 KiB, persistent + confirms",
        ["--size", "1024", "--count", "100000", "--persistent", "--confirms"],
    ),
    (
        "quorum queue, 1 KiB at 5,000 msg/s, persistent + confirms",
        ["--size", "1024", "--count", "25000", "--rate", "5000", "--persistent", "--confirms"],
    ),
]


def url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/%2f"


def bench(publish_port: int, consume_port: int, pid: int, args: list[str]) -> dict | None:
    run = subprocess.run(
        [str(TOOL), "amqp", "--url", url(publish_port), "--consumer-url", url(consume_port),
         "--queue", QUEUE, "--queue-type", "quorum", "--broker-pid", str(pid), "--json", *args],
        capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if not lines:
        print(run.stderr[-2000:], file=sys.stderr)
    return json.loads(lines[-1]) if lines else None


def channel_on(port: int):
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(host="127.0.0.1", port=port,
                                  credentials=pika.PlainCredentials("guest", "guest"))
    )
    return connection, connection.channel()


def declare(port: int) -> None:
    connection, ch = channel_on(port)
    try:
        ch.queue_declare(QUEUE, durable=True, arguments=QUORUM)
    finally:
        connection.close()


def placement(node) -> dict:
    """The bench queue as a node's API shows it."""
    import urllib.request
    import base64

    request = urllib.request.Request(f"http://127.0.0.1:{node.http_port}/api/queues/%2F/{QUEUE}")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def settled(cluster) -> int:
    """Waits until the queue has a leader that runs it (not only named in
    the metadata), three members in sync, and every node sending to that
    leader; its leader."""
    seen = {}

    def ready():
        seen.clear()
        seen.update(placement(cluster.node(1)))
        leader = seen.get("node", -1)
        if leader not in (1, 2, 3) or len(seen.get("online") or []) != 3:
            return False
        return placement(cluster.node(leader)).get("state") == "running" and all(
            placement(cluster.node(n)).get("node") == leader for n in (1, 2, 3)
        )

    wait_until(ready, 60, interval=0.2, what="the quorum queue led, three members in sync")
    return seen["node"]


class Rabbit:
    """RabbitMQ on one node, on a fresh Mnesia directory."""

    def __init__(self, root: Path):
        self.dir = root / f"rabbit-{time.monotonic_ns()}"
        self.port = free_port()
        self.proc = None
        self.beam = None

    def start(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.dir / sub).mkdir(parents=True)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        env = {
            **os.environ,
            "HOME": str(self.dir / "home"),
            "RABBITMQ_NODENAME": f"sluicebench{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
        }
        log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen([str(RABBIT)], env=env, stdout=log, stderr=log, start_new_session=True)

        def listening():
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, 60, interval=0.1, what="RabbitMQ listening")
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", "beam.smp"],
                                  capture_output=True, text=True).stdout.split()
        self.beam = int(children[0]) if children else self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


class Consumer(threading.Thread):
    """A pika consumer that acknowledges what it gets and notes when each
    message arrives, by its body."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.arrivals: dict[bytes, float] = {}
        self.stopping = threading.Event()

    def on_message(self, ch, method, _properties, body) -> None:
        self.arrivals.setdefault(body, time.monotonic())
        ch.basic_ack(method.delivery_tag)

    def run(self) -> None:
        connection, ch = channel_on(self.port)
        try:
            ch.basic_qos(prefetch_count=10)
            ch.basic_consume(QUEUE, self.on_message)
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=0.02)
        finally:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 (a connection the kill broke)
                pass


class Publisher(threading.Thread):
    """Publishes a numbered persistent message every 10 ms through one
    node, noting when each was sent; a broken channel is opened again."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.sent: dict[bytes, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.stopping.is_set():
            try:
                connection, ch = channel_on(self.port)
                try:
                    while not self.stopping.is_set():
                        number += 1
                        body = f"m-{number}".encode()
                        self.sent[body] = time.monotonic()
                        ch.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2))
                        connection.process_data_events(time_limit=0.01)
                finally:
                    if connection.is_open:
                        connection.close()
            except pika.exceptions.AMQPError:
                time.sleep(0.05)


def failover(root: Path, cycles: int) -> list[float]:
    cluster = Cluster(root / "failover", name="failover")
    cluster.start()
    times = []
    try:
        cluster.wait_registered(admin)
        declare(cluster.node(1).amqp_port)
        preferred = settled(cluster)
        for cycle in range(cycles):
            leader = settled(cluster)
            other = next(n for n in (1, 2, 3) if n != leader)
            consumer = Consumer(cluster.node(other).amqp_port)
            publisher = Publisher(cluster.node(other).amqp_port)
            consumer.start()
            publisher.start()
            try:
                wait_until(lambda: len(consumer.arrivals) > 20, 30, interval=0.05, what="deliveries before the kill")
                cluster.node(leader).kill()
                killed = time.monotonic()

                def after_kill() -> list[float]:
                    return [at for body, at in list(consumer.arrivals.items())
                            if publisher.sent.get(body, 0) > killed]

                wait_until(after_kill, 60, interval=0.01, what="a message published after the kill delivered")
                times.append(min(after_kill()) - killed)
            finally:
                publisher.stopping.set()
                consumer.stopping.set()
                publisher.join(30)
                consumer.join(30)
            print(f"failover {cycle + 1}: {times[-1]:.2f} s", file=sys.stderr)
            cluster.node(leader).start()
            wait_until(lambda: settled(cluster) == preferred, 90, interval=0.5,
                       what="the preferred leader back, every member in sync")
    finally:
        cluster.stop()
    return times


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    cycles = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    if not RABBIT.exists():
        sys.exit("RabbitMQ is not installed (apt-get install rabbitmq-server; bench/compare does it)")
    subprocess.run(["cargo", "build", "--release", "-p", "sluice", "-p", "sluice-bench"], cwd=ROOT, check=True)
    out = ROOT / "target" / "bench" / f"quorum-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict | None]]] = {}
    with tempfile.TemporaryDirectory() as scratch, open(out, "w") as raw:
        root = Path(scratch)

        def record(name: str, setup: str, run: int, report: dict | None) -> None:
            results.setdefault(name, {}).setdefault(setup, []).append(report)
            raw.write(json.dumps({"name": name, "setup": setup, "run": run, "report": report}) + "\n")
            raw.flush()

        for name, args in WORKLOADS:
            for run in range(runs):
                rabbit = Rabbit(root)
                rabbit.start()
                try:
                    declare(rabbit.port)
                    record(name, "RabbitMQ 3.10, one node", run, bench(rabbit.port, rabbit.port, rabbit.beam, args))
                finally:
                    rabbit.stop()
                    shutil.rmtree(rabbit.dir, ignore_errors=True)
                for setup in ("Sluice, 3 nodes, clients on the leader", "Sluice, 3 nodes, clients on followers"):
                    cluster = Cluster(root / f"cluster-{run}-{len(results)}-{len(setup)}", name="cluster")
                    cluster.start()
                    try:
                        cluster.wait_registered(admin)
                        declare(cluster.node(1).amqp_port)
                        leader = settled(cluster)
                        followers = [n for n in (1, 2, 3) if n != leader]
                        publisher, consumer = (leader, leader) if "leader" in setup else followers
                        report = bench(cluster.node(publisher).amqp_port, cluster.node(consumer).amqp_port,
                                       cluster.node(leader).proc.pid, args)
                    finally:
                        cluster.stop()
                    record(name, setup, run, report)
                print(f"done: {name}, run {run + 1}", file=sys.stderr)
        times = failover(root, cycles) if cycles else []
        raw.write(json.dumps({"failover_s": times}) + "\n")

    print("| workload | setup | consumed msg/s, median (spread) | p50 ms | p99 ms | checked | Sluice/RabbitMQ |")
    print("|---|---|---:|---:|---:|---|---:|")
    for name, setups in results.items():
        peer = None
        for setup, reports in setups.items():
            ok = [r for r in reports if r]
            if not ok:
                print(f"| {name} | {setup} | failed | | | no | |")
                continue
            median, spread, p50, p99, passed = summary(ok)
            passed = passed and len(ok) == len(reports)
            ratio = f"{median / peer:.2f}x" if peer and setup.startswith("Sluice") else ""
            if setup.startswith("RabbitMQ"):
                peer = median
            print(f"| {name} | {setup} | {median:,.0f} ({spread}) | "
                  f"{p50:.2f} | {p99:.2f} | {'yes' if passed else 'NO'} | {ratio} |")
    if times:
        print(failover_line("consumer failover, first delivery from the new leader after kill -9 of the leader", times))
    print(f"\nraw reports: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
