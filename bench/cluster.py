#!/usr/bin/env python3
"""Sluice as a three-node cluster beside Sluice as one node, in one sitting
on this machine (the three nodes share its cores with the clients, so the
ratios are what to read, not the absolute figures).

1. Throughput: 1 KiB records, acks=all, `log.durability = always` on every
   node (the default), one partition; the cluster's topic has three
   replicas. Every run starts on fresh data directories.
2. Latency at a fixed 10,000 msg/s, same settings, linger.ms=0.
3. Failover: on one cluster, `cycles` times: an acks=all idempotent
   producer, kill -9 of the partition's leader, the time until the first
   record is acknowledged after the kill; then the node comes back and is
   in sync and leading again before the next cycle.

Usage (from the repository root, with the venv scripts/test makes):
    target/venv/bin/python bench/cluster.py [runs] [failover cycles]
Defaults: 3 runs, 10 cycles. Raw reports go to target/bench/cluster-*.jsonl.
Every process started here is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compat"))
os.environ.setdefault("BROKER_BIN", str(ROOT / "target" / "release" / "sluice"))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from common.broker import Broker, wait_until  # noqa: E402
from common.cluster import Cluster  # noqa: E402

TOOL = ROOT / "target" / "release" / "sluice-bench"

WORKLOADS = [
    ("1 KiB, acks=all, 1 partition", ["--size", "1024", "--count", "100000", "--partitions", "1", "--acks", "all"]),
    (
        "1 KiB at 10,000 msg/s, acks=all",
        ["--size", "1024", "--count", "50000", "--rate", "10000", "--partitions", "1", "--acks", "all", "--linger-ms", "0"],
    ),
]


def summary(reports: list[dict]) -> tuple[float, str, float, float, bool]:
    """Of one setup's runs (`reports`, all answered): the median consumed
    msg/s, its spread as text, median p50 and p99 in ms, and whether every
    run passed sluice-bench's check."""
    consumed = [r["consumed_msgs_per_s"] for r in reports]
    p50 = statistics.median(r["latency"]["p50_us"] for r in reports) / 1000
    p99 = statistics.median(r["latency"]["p99_us"] for r in reports) / 1000
    spread = f"{min(consumed):,.0f}-{max(consumed):,.0f}"
    return statistics.median(consumed), spread, p50, p99, all(r["passed"] for r in reports)


def failover_line(what: str, times: list[float]) -> str:
    """The failover figure: median, count, min and max of `times`."""
    return (f"\n{what}: median {statistics.median(times):.2f} s over {len(times)} "
            f"(min {min(times):.2f}, max {max(times):.2f})")


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def bench(bootstrap: str, pid: int, args: list[str], replication: int) -> dict | None:
    run = subprocess.run(
        [str(TOOL), "kafka", "--bootstrap", bootstrap, "--broker-pid", str(pid), "--json",
         "--replication", str(replication), *args],
        capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def leader_of(bootstrap: str, topic: str) -> tuple[int, list[int], list[int]]:
    partition = admin(bootstrap).list_topics(topic, timeout=10).topics[topic].partitions[0]
    return partition.leader, list(partition.replicas), list(partition.isrs)


def failover(root: Path, cycles: int) -> list[float]:
    cluster = Cluster(root / "failover", name="failover")
    cluster.start()
    times = []
    try:
        cluster.wait_registered(admin)
        topic = "failover"
        client = admin(cluster.node(1).bootstrap)
        client.create_topics([NewTopic(topic, 1, 3)])[topic].result(timeout=30)
        for cycle in range(cycles):
            leader, replicas, _ = leader_of(cluster.node(1).bootstrap, topic)
            producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all",
                                 "enable.idempotence": True, "linger.ms": 0})
            warm = []
            producer.produce(topic, b"warm", on_delivery=lambda e, m: warm.append(e))
            producer.flush(10)
            cluster.node(leader).kill()
            killed = time.monotonic()
            acked = []
            while not acked and time.monotonic() - killed < 60:
                producer.produce(topic, b"probe", on_delivery=lambda e, m: acked.append(e) if e is None else None)
                producer.flush(0.05)
            times.append(time.monotonic() - killed if acked else float("inf"))
            producer.flush(10)
            print(f"failover {cycle + 1}: {times[-1]:.2f} s", file=sys.stderr)
            cluster.node(leader).start()
            survivor = cluster.node(leader).bootstrap
            wait_until(
                lambda: (lambda l: l[0] == replicas[0] and sorted(l[2]) == sorted(replicas))(leader_of(survivor, topic)),
                60, what="the preferred leader back and in sync",
            )
    finally:
        cluster.stop()
    return times


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    cycles = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    subprocess.run(["cargo", "build", "--release", "-p", "sluice", "-p", "sluice-bench"], cwd=ROOT, check=True)
    out = ROOT / "target" / "bench" / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as scratch, open(out, "w") as raw:
        root = Path(scratch)
        for name, args in WORKLOADS:
            for run in range(runs):
                single = Broker(root / f"single-{run}-{len(results)}" / "data", name="single")
                single.start()
                try:
                    report = bench(single.bootstrap, single.proc.pid, args, 1)
                finally:
                    single.stop()
                results.setdefault(name, {}).setdefault("one node", []).append(report)
                raw.write(json.dumps({"name": name, "setup": "one node", "run": run, "report": report}) + "\n")
                cluster = Cluster(root / f"cluster-{run}-{len(results)}", name="cluster")
                cluster.start()
                try:
                    cluster.wait_registered(admin)
                    report = bench(cluster.node(1).bootstrap, cluster.node(1).proc.pid, args, 3)
                finally:
                    cluster.stop()
                results[name].setdefault("3 nodes, 3 replicas", []).append(report)
                raw.write(json.dumps({"name": name, "setup": "3 nodes, 3 replicas", "run": run, "report": report}) + "\n")
                print(f"done: {name}, run {run + 1}", file=sys.stderr)
        times = failover(root, cycles) if cycles else []
        raw.write(json.dumps({"failover_s": times}) + "\n")

    print("| workload | setup | consumed msg/s, median (spread) | produced msg/s | p50 ms | p99 ms | checked | cluster/one node |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    for name, setups in results.items():
        medians = {}
        for setup, reports in setups.items():
            ok = [r for r in reports if r]
            if not ok:
                print(f"| {name} | {setup} | failed | | | | no | |")
                continue
            medians[setup], spread, p50, p99, passed = summary(ok)
            passed = passed and len(ok) == len(reports)
            produced = statistics.median(r["produced_msgs_per_s"] for r in ok)
            ratio = ""
            if setup != "one node" and medians.get("one node"):
                ratio = f"{medians[setup] / medians['one node']:.0%}"
            print(f"| {name} | {setup} | {medians[setup]:,.0f} ({spread}) | "
                  f"{produced:,.0f} | {p50:.2f} | {p99:.2f} | {'yes' if passed else 'NO'} | {ratio} |")
    if times:
        print(failover_line("failover, first acknowledged produce after kill -9 of the leader", times))
    print(f"\nraw reports: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
