#!/usr/bin/env python3
"""A Kafka share group (KIP-932) beside AMQP queues, on one Sluice node, in
one sitting on this machine (clients and broker share its two cores, so
read the ratios, not the absolute figures).

Workload, the same for each: 1 KiB messages published at a fixed 10,000
msg/s (50,000 of them), four consumers on one queue, every message
acknowledged on its own; the aggregate consume rate and the end-to-end
latency (publish to delivery) percentiles.

- Share group: one topic of one partition, acks=all producer
  (confluent-kafka), four `ShareConsumer`s (each its own process) in
  explicit mode accepting each record.
- AMQP quorum queue and classic queue: sluice-bench amqp (lapin),
  persistent messages with confirms, four consumers, prefetch 500,
  `--ack-every 1`.

Every run starts on a fresh data directory. Usage (from the repository
root, with the venv scripts/test makes):
    target/venv/bin/python bench/share.py [runs]
Default: 3 runs. Raw reports go to target/bench/share-*.jsonl. Every
process started here is stopped by its pid.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/cluster.py sets up the paths, the release broker and the tool.
from cluster import ROOT, TOOL  # noqa: E402 (this directory is on the path)

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from common.broker import Broker, stop_process, wait_until  # noqa: E402

RATE = 10_000
COUNT = 50_000
SIZE = 1024
CONSUMERS = 4
# A consumer gives up once nothing came for this long after the last
# record was produced, or after the whole run's bound.
IDLE_S = 5.0
RUN_BOUND_S = 120.0

# One share consumer, run as its own process: accepts every record,
# prints its count and latencies (ms) as one JSON line.
WORKER = r"""
import json, sys, time
from confluent_kafka import ShareConsumer, AcknowledgeType
bootstrap, group, topic, idle, bound = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
consumer = ShareConsumer({"bootstrap.servers": bootstrap, "group.id": group,
                          "share.acknowledgement.mode": "explicit", "log_level": 3})
consumer.subscribe([topic])
latencies, first, last = [], None, None
started = time.time()
print("ready", flush=True)
while time.time() - started < bound:
    batch = consumer.poll(0.5) or []
    now = time.time()
    for message in batch:
        if message.error():
            continue
        sent = int.from_bytes(message.value()[:8], "big") / 1e9
        latencies.append((now - sent) * 1000)
        consumer.acknowledge(message, AcknowledgeType.ACCEPT)
        first = first or now
        last = now
    if latencies and now - last > idle:
        break
consumer.commit_sync()
consumer.close()
print(json.dumps({"count": len(latencies), "first": first, "last": last, "latencies": latencies}), flush=True)
"""


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def share_run(broker: Broker, run: int) -> dict:
    topic, group = f"share-bench-{run}", f"share-bench-{run}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(30)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, broker.bootstrap, group, topic, str(IDLE_S), str(RUN_BOUND_S)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(CONSUMERS)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        # Let every member join and open its share session (latest: only
        # records produced from here on).
        time.sleep(3)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})
        filler = b"x" * (SIZE - 8)
        started = time.time()
        for n in range(COUNT):
            due = started + n / RATE
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            producer.produce(topic, value=time.time_ns().to_bytes(8, "big") + filler)
            producer.poll(0)
        producer.flush(30)
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=RUN_BOUND_S + 30)
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                stop_process(worker)
    latencies = [lat for r in results for lat in r["latencies"]]
    firsts = [r["first"] for r in results if r["first"]]
    lasts = [r["last"] for r in results if r["last"]]
    span = (max(lasts) - min(firsts)) if firsts else float("nan")
    return {
        "setup": "share group",
        "consumed": len(latencies),
        "per_consumer": [r["count"] for r in results],
        "msgs_per_s": len(latencies) / span if span else float("nan"),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "passed": len(latencies) >= COUNT,
    }


def amqp_run(broker: Broker, queue_type: str) -> dict:
    out = subprocess.run(
        [
            str(TOOL), "amqp", "--url", broker.amqp_url, "--queue-type", queue_type,
            "--persistent", "--confirms", "--consumers", str(CONSUMERS), "--size", str(SIZE),
            "--count", str(COUNT), "--rate", str(RATE), "--prefetch", "500", "--ack-every", "1",
            "--json", "--progress-s", "0",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "setup": f"AMQP {queue_type} queue",
        "consumed": report.get("consumed"),
        "msgs_per_s": report["consumed_msgs_per_s"],
        "p50_ms": report["latency"]["p50_us"] / 1000,
        "p99_ms": report["latency"]["p99_us"] / 1000,
        "passed": report["passed"],
    }


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    subprocess.run(["cargo", "build", "--release", "-p", "sluice", "-p", "sluice-bench"], cwd=ROOT, check=True)
    out_dir = ROOT / "target" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"share-{int(time.time())}.jsonl"
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-share-bench-") as tmp:
        for run in range(runs):
            broker = Broker(Path(tmp) / f"run-{run}" / "data", name=f"share-{run}")
            broker.start()
            try:
                wait_until(lambda: broker.alive(), 10, what="broker up")
                for report in (share_run(broker, run), amqp_run(broker, "quorum"), amqp_run(broker, "classic")):
                    results.setdefault(report["setup"], []).append(report)
                    with raw.open("a") as f:
                        f.write(json.dumps(report) + "\n")
                    print(f"run {run + 1}: {report['setup']}: {report['msgs_per_s']:,.0f} msg/s, "
                          f"p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms, passed {report['passed']}",
                          flush=True)
            finally:
                broker.stop()
    print(f"\n{COUNT:,} x {SIZE} B at {RATE:,} msg/s, {CONSUMERS} consumers, each message acknowledged; medians of {runs} runs")
    print("| setup | consumed msg/s | p50 ms | p99 ms | all passed |")
    print("| --- | --- | --- | --- | --- |")
    for setup, reports in results.items():
        rate = statistics.median(r["msgs_per_s"] for r in reports)
        p50 = statistics.median(r["p50_ms"] for r in reports)
        p99 = statistics.median(r["p99_ms"] for r in reports)
        print(f"| {setup} | {rate:,.0f} | {p50:.1f} | {p99:.1f} | {all(r['passed'] for r in reports)} |")
    print(f"raw reports: {raw.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
