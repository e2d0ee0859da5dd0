"""The order-flow example, run as a user runs it (run.sh) against a fresh
broker on free ports, then checked from outside through the admin API and
/metrics.

Contract: with N orders every count in the example's summary is exact
(both consumer groups read N, N payments, N - N/10 notifications sent and
N/10 dead-lettered, the audit queue and the AMQP stream reader see N), and
the broker agrees: the topic `orders` has 3 partitions holding the records
each partition got, both groups have committed everything (lag 0), the
queues were fed and drained exactly, and the dead letters wait in their
queue. A second run on the same broker skips the first run's leftovers and
counts exactly again.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from common.broker import wait_until

HERE = Path(__file__).resolve().parent
RUN_SH = HERE / "run.sh"
# The example bounds itself (--timeout); this bounds its process.
RUN_TIMEOUT_S = 180
API_TIMEOUT_S = 10
VHOST = "/"


def api(broker, path: str):
    request = urllib.request.Request(f"http://127.0.0.1:{broker.http_port}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as response:
        return json.load(response)


def metrics(broker) -> dict[tuple[str, frozenset], float]:
    """/metrics as {(name, frozenset of label pairs): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/metrics", timeout=API_TIMEOUT_S) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        if match is None or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def queue_metric(samples, name: str, queue: str) -> float:
    return samples.get((name, frozenset({("vhost", VHOST), ("queue", queue)})), 0.0)


def run_example(broker, tmp_path, orders: int) -> dict:
    """Runs run.sh against the broker; returns its JSON summary. The example's
    output is printed, so pytest shows it when a check fails."""
    summary_path = tmp_path / f"summary-{orders}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.setdefault("PYTHON", sys.executable)
    completed = subprocess.run(
        [str(RUN_SH), "--kafka", broker.bootstrap,
         "--amqp", f"amqp://guest:guest@{broker.amqp_address}/%2f",
         "--orders", str(orders), "--rate", "0", "--work-ms", "2", "--timeout", "120",
         "--summary-json", str(summary_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=RUN_TIMEOUT_S)
    print(completed.stdout)
    assert completed.returncode == 0, f"run.sh exited with {completed.returncode}:\n{completed.stdout}"
    return json.loads(summary_path.read_text())


def assert_exact_counts(summary: dict, orders: int) -> None:
    rejected = orders // 10
    assert summary["ok"] is True, summary["problems"]
    assert summary["problems"] == []
    assert summary["orders"] == orders
    assert summary["produced"] == orders
    assert summary["payment_group"] == orders
    assert summary["notification_group"] == orders
    assert summary["payments"] == orders
    assert summary["notified"] == orders - rejected
    assert summary["rejected"] == rejected
    assert summary["dead_lettered"] == rejected
    assert summary["notified"] + summary["dead_lettered"] == orders
    assert summary["audit"] == orders
    assert summary["stream"] == orders
    # Keyed by order id over 3 partitions: every partition gets some, and
    # the stream reader finds each record in the partition it was written to.
    assert sorted(summary["produced_by_partition"]) == ["0", "1", "2"]
    assert summary["stream_by_partition"] == summary["produced_by_partition"]
    # Both payment members and both notification workers did some work.
    assert len(summary["payment_members"]) == 2 and all(summary["payment_members"].values())
    assert sum(summary["payment_members"].values()) == orders
    assert len(summary["notified_by_worker"]) == 2 and all(summary["notified_by_worker"].values())
    assert sum(summary["payments_by_region"].values()) == orders


def topic_records(broker) -> dict[int, int]:
    topic = api(broker, "/api/topics/orders")
    return {p["partition"]: p["high_watermark"] - p["log_start_offset"] for p in topic["partitions"]}


def assert_groups_caught_up(broker, end_offsets: dict[int, int]) -> None:
    for group in ("payment-service", "notification-service"):
        described = api(broker, f"/api/groups/{group}")
        committed = {o["partition"]: o["committed_offset"] for o in described["offsets"] if o["topic"] == "orders"}
        assert committed == end_offsets, f"{group} committed {committed}, log ends {end_offsets}"
        assert all(o["lag"] == 0 for o in described["offsets"]), described["offsets"]
    listed = {g["group_id"]: g for g in api(broker, "/api/groups?page_size=1000")["items"]}
    assert listed["payment-service"]["lag"] == 0
    assert listed["notification-service"]["lag"] == 0


def test_order_flow_counts_are_exact_and_the_broker_agrees(broker, tmp_path):
    orders = 200
    summary = run_example(broker, tmp_path, orders)
    assert_exact_counts(summary, orders)
    assert summary["stale"] == {}

    # The topic: 3 partitions holding exactly what each got, readable as a stream.
    topic = api(broker, "/api/topics/orders")
    assert len(topic["partitions"]) == 3
    records = topic_records(broker)
    assert {str(p): n for p, n in records.items()} == summary["produced_by_partition"]
    assert {"vhost": VHOST, "name": "orders"} in topic["stream_queues"]
    assert_groups_caught_up(broker, {p["partition"]: p["high_watermark"] for p in topic["partitions"]})

    # The AMQP side: a topic exchange, three bindings, and the DLX on the queue.
    assert api(broker, "/api/exchanges/%2F/payments")["type"] == "topic"
    bindings = {(b["source"], b["destination"], b["routing_key"])
                for b in api(broker, "/api/bindings?vhost=%2F&page_size=1000")["items"]}
    assert {("payments", "notifications", "payment.completed.*"), ("payments", "audit", "payment.#"),
            ("notifications-dlx", "notifications-dead", "")} <= bindings
    notifications = api(broker, "/api/queues/%2F/notifications")
    assert notifications["arguments"].get("x-dead-letter-exchange") == "notifications-dlx"
    assert api(broker, "/api/queues/%2F/orders")["type"] == "stream"

    # Queues drained but for the dead letters, and fed exactly (the counters
    # count since the broker started, and this broker is fresh).
    wait_until(lambda: api(broker, "/api/queues/%2F/notifications-dead")["messages_ready"] == orders // 10,
               timeout=10, what="the dead letters back in notifications-dead")
    for queue, left in (("notifications", 0), ("audit", 0), ("notifications-dead", orders // 10)):
        described = api(broker, f"/api/queues/%2F/{queue}")
        assert described["messages"] == left, (queue, described)
        assert described["messages_unacknowledged"] == 0, (queue, described)
    samples = metrics(broker)
    assert queue_metric(samples, "sluice_amqp_queue_published_total", "notifications") == orders
    assert queue_metric(samples, "sluice_amqp_queue_acked_total", "notifications") == orders - orders // 10
    assert queue_metric(samples, "sluice_amqp_queue_published_total", "audit") == orders
    assert queue_metric(samples, "sluice_amqp_queue_acked_total", "audit") == orders
    assert queue_metric(samples, "sluice_amqp_queue_published_total", "notifications-dead") == orders // 10


def test_a_second_run_on_the_same_broker_counts_only_its_own_orders(broker, tmp_path):
    before = topic_records(broker)
    orders = 50
    summary = run_example(broker, tmp_path, orders)
    assert_exact_counts(summary, orders)
    after = topic_records(broker)
    assert sum(after.values()) - sum(before.values()) == orders
    # The stream reader replayed the earlier run's records too, and skipped them.
    assert summary["stale"].get("stream-reader") == sum(before.values())
    topic = api(broker, "/api/topics/orders")
    assert_groups_caught_up(broker, {p["partition"]: p["high_watermark"] for p in topic["partitions"]})
    assert api(broker, "/api/queues/%2F/notifications-dead")["messages_ready"] == orders // 10
