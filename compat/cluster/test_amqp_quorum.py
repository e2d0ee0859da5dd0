"""Quorum queues on a three-node cluster (pika): a quorum queue is a
replicated partition of its own, run by the node leading it (the API's
`node`); the other nodes reach it as a remote queue. A confirmed message
is on a majority of the replicas, so it survives kill -9 of the leader: a
new leader (a live in-sync replica) rebuilds the queue from the partition,
and what was delivered and not acknowledged comes back flagged
redelivered.
"""

from __future__ import annotations

import time

import pika

from common.broker import unique_name, wait_until
from test_amqp_definitions import channel, drain, queues_on, wait_everywhere
from test_kafka_cluster import admin

QUORUM = {"x-queue-type": "quorum"}


def leader_of(node, queue: str) -> int:
    """The node running `queue`, as `node`'s API shows it."""
    return queues_on(node)[queue]["node"]


def publish_confirmed(node, queue: str, bodies: list[bytes]) -> None:
    with channel(node) as ch:
        ch.confirm_delivery()
        for body in bodies:
            ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))


def take(node, queue: str, count: int, timeout: float = 20.0) -> list[bytes]:
    """`count` messages got (and acknowledged) from `queue` through `node`."""
    bodies: list[bytes] = []
    with channel(node) as ch:

        def got_them():
            while len(bodies) < count:
                method, _, body = ch.basic_get(queue)
                if method is None:
                    return False
                ch.basic_ack(method.delivery_tag)
                bodies.append(body)
            return True

        wait_until(got_them, timeout, interval=0.1, what=f"{count} messages from {queue}")
    return bodies


def declared(cluster, prefix: str) -> tuple[str, int]:
    """A quorum queue declared on node 1 once every node registered (so
    it has three members), known on every node; its name and leader."""
    cluster.wait_registered(admin)
    queue = unique_name(prefix)
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True, arguments=QUORUM)
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")
    return queue, leader_of(cluster.node(1), queue)


def test_a_quorum_queue_replicates_and_runs_on_its_partitions_leader(cluster):
    cluster.wait_registered(admin)
    queue = unique_name("qq")
    with channel(cluster.node(2)) as ch:
        ch.queue_declare(queue, durable=True, arguments=QUORUM)
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the queue")
    leader = leader_of(cluster.node(1), queue)
    assert leader in (1, 2, 3)
    for node_id in (1, 2, 3):
        seen = queues_on(cluster.node(node_id))[queue]
        assert seen["type"] == "quorum" and seen["node"] == leader, (node_id, seen)
        assert sorted(seen["members"]) == [1, 2, 3], seen
    # Published on every node, confirmed, got from every node.
    sent = [f"{n}-{i}".encode() for n in (1, 2, 3) for i in range(50)]
    for node_id in (1, 2, 3):
        publish_confirmed(cluster.node(node_id), queue, [b for b in sent if b.startswith(f"{node_id}-".encode())])
    got = []
    for node_id in (1, 2, 3):
        got += take(cluster.node(node_id), queue, 50)
    assert sorted(got) == sorted(sent)
    # Its partition is internal: three replicas, a majority needed in sync.
    with channel(cluster.node(3)) as ch:
        ch.queue_delete(queue)
    wait_everywhere(cluster, lambda node, _: queue not in queues_on(node), "the queue gone")


def test_confirmed_messages_survive_kill_9_of_the_leader_and_unacked_ones_come_back_redelivered(fresh_cluster):
    cluster = fresh_cluster
    queue, leader = declared(cluster, "qq-failover")
    others = [n for n in (1, 2, 3) if n != leader]
    publisher, consumer_node = cluster.node(others[0]), cluster.node(others[1])
    sent = [f"m-{i}".encode() for i in range(300)]
    publish_confirmed(publisher, queue, sent)

    # Ten delivered and not acknowledged when the leader dies.
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=consumer_node.amqp_port,
            credentials=pika.PlainCredentials("guest", "guest"),
        )
    )
    unacked = []
    try:
        ch = connection.channel()
        for _ in range(10):
            method, _, body = ch.basic_get(queue)
            assert method is not None and not method.redelivered
            unacked.append(body)
        cluster.node(leader).kill()
        killed = time.monotonic()
        wait_until(
            lambda: all(leader_of(node, queue) not in (leader, -1) for node in (publisher, consumer_node)),
            30,
            interval=0.2,
            what="a new leader of the quorum queue, known on both live nodes",
        )
        took = time.monotonic() - killed
    finally:
        if connection.is_open:
            connection.close()
    assert took < 15, f"the new leader took {took:.1f} s"

    # Every confirmed message is there; the ten come back flagged.
    got: dict[bytes, bool] = {}
    with channel(consumer_node) as ch:

        def drained():
            while True:
                method, _, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    return len(got) >= len(sent)
                assert body not in got, f"{body!r} delivered twice"
                got[body] = method.redelivered

        wait_until(drained, 30, interval=0.2, what=f"{len(sent)} messages from the new leader")
    assert sorted(got) == sorted(sent)
    assert all(got[body] for body in unacked), "unacknowledged messages come back redelivered"

    # The old leader returns as a follower; confirms go on through it.
    new_leader = leader_of(publisher, queue)
    cluster.node(leader).start()
    wait_until(
        lambda: leader_of(cluster.node(leader), queue) == new_leader,
        30,
        interval=0.2,
        what="the returning node following the new leader",
    )
    publish_confirmed(cluster.node(leader), queue, [b"after"])
    assert drain(cluster.node(leader), queue, 1) == [b"after"]


def test_a_consumer_on_another_node_goes_on_through_a_failover(fresh_cluster):
    """A consumer on a node that survives keeps its subscription when the
    leader is killed: no basic.cancel, and what is published afterwards
    reaches it from the new leader."""
    cluster = fresh_cluster
    queue, leader = declared(cluster, "qq-consumer")
    publisher, consumer_node = [cluster.node(n) for n in (1, 2, 3) if n != leader]

    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=consumer_node.amqp_port,
            credentials=pika.PlainCredentials("guest", "guest"),
        )
    )
    try:
        ch = connection.channel()
        ch.basic_qos(prefetch_count=10)
        got: list[bytes] = []
        cancelled = []
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame))

        def on_message(channel_, method, _properties, body):
            got.append(body)
            channel_.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_message)

        def received(count: int, timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while len(set(got)) < count and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.2)
            assert len(set(got)) >= count, f"{len(set(got))} of {count} {what}"

        before = [f"before-{i}".encode() for i in range(100)]
        publish_confirmed(publisher, queue, before)
        received(100, 20, "before the kill")

        cluster.node(leader).kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and leader_of(publisher, queue) in (leader, -1):
            connection.process_data_events(time_limit=0.2)
        assert leader_of(publisher, queue) not in (leader, -1), "no new leader"
        after = [f"after-{i}".encode() for i in range(100)]
        publish_confirmed(publisher, queue, after)
        received(200, 30, "in all, through the failover")
    finally:
        if connection.is_open:
            connection.close()
    assert not cancelled, "the consumer was cancelled"
    assert set(before + after) <= set(got)
