"""STOMP on a three-node cluster (stomp.py): a message sent through one
node reaches queue and topic subscribers on the others, client acks
settle it wherever the queue lives, and a topic subscription's queue
gets what any node routes. Queue-argument headers equal to what an AMQP
client declared are accepted on every node, unlike ones refused."""

from __future__ import annotations

import time

import importlib.util
from pathlib import Path

from common.broker import unique_name, wait_until
from test_amqp_definitions import channel, queues_on
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


def test_queue_argument_headers_match_an_amqp_declaration_on_every_node(cluster):
    cluster.wait_registered(admin)
    queue = unique_name("capped")
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True, arguments={"x-max-length": 5, "x-message-ttl": 60000})
    wait_until(lambda: all(queue in queues_on(cluster.node(n)) for n in (1, 2, 3)), 20,
               what="the queue on every node")
    for node_id in (1, 2, 3):
        client = Client(cluster.node(node_id)).connect()
        client.connection.send(f"/queue/{queue}", f"from-{node_id}", receipt=f"r{node_id}",
                               headers={"x-max-length": "5", "x-message-ttl": " 60000 "})
        client.receipt(f"r{node_id}")
        client.close()
    refused = Client(cluster.node(2)).connect()
    refused.connection.send(f"/queue/{queue}", "refused", headers={"x-max-length": "6", "x-message-ttl": "60000"})
    error = refused.recorder.errors.get(timeout=10)
    assert "x-max-length" in error.headers.get("message", "") + error.body, error
    reader = Client(cluster.node(3)).connect()
    reader.connection.subscribe(f"/queue/{queue}", id="r")
    assert sorted(m.body for m in reader.take(3)) == ["from-1", "from-2", "from-3"]
    reader.nothing_within(0.5)
    reader.close()
