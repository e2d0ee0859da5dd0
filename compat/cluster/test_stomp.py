"""STOMP on a three-node cluster (stomp.py): a message sent through one
node reaches queue and topic subscribers on the others, client acks
settle it wherever the queue lives, and a topic subscription's queue
gets what any node routes."""

from __future__ import annotations

import time

import importlib.util
from pathlib import Path

from common.broker import unique_name, wait_until
from test_amqp_definitions import queues_on
from test_kafka_cluster import admin

# compat/stomp's helpers, loaded by path: the folder's name is also the
# stomp.py package's.
_spec = importlib.util.spec_from_file_location(
    "stomp_support", Path(__file__).resolve().parent.parent / "stomp" / "support.py")
_support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_support)
Client = _support.Client


def test_queues_and_topics_cross_nodes(cluster):
    cluster.wait_registered(admin)
    queue = unique_name("jobs")
    root = unique_name("alerts")
    producer = Client(cluster.node(1)).connect()
    producer.connection.send(f"/queue/{queue}", "warm-up", receipt="declared")
    producer.receipt("declared")
    wait_until(lambda: all(queue in queues_on(cluster.node(n)) for n in (2, 3)), 20,
               what="the queue on every node")
    worker = Client(cluster.node(2)).connect()
    worker.connection.subscribe(f"/queue/{queue}", id="w", ack="client-individual")
    watcher = Client(cluster.node(3)).connect()
    watcher.connection.subscribe(f"/topic/{root}.#", id="t")
    time.sleep(0.5)
    for n in range(10):
        producer.connection.send(f"/queue/{queue}", f"job-{n}", headers={"persistent": "true"})
        producer.connection.send(f"/topic/{root}.disk", f"alert-{n}")
    producer.connection.send(f"/topic/{root}.disk", "last", receipt="sent")
    producer.receipt("sent")
    jobs = worker.take(11)
    assert [m.body for m in jobs] == ["warm-up"] + [f"job-{n}" for n in range(10)]
    for message in jobs:
        worker.ack(message)
    alerts = watcher.take(11)
    assert [m.body for m in alerts] == [f"alert-{n}" for n in range(10)] + ["last"]
    worker.close()
    # Everything was acknowledged: nothing comes again.
    again = Client(cluster.node(3)).connect()
    again.connection.subscribe(f"/queue/{queue}", id="again")
    again.nothing_within(1.0)
    for client in (producer, watcher, again):
        client.close()
