"""Kafka clients against a three-node Sluice cluster: every node lists every
node and the controller; a topic created through any node is on every node,
its partitions spread over the nodes; clients produce through any bootstrap
to each partition's leader and consume back; the metadata quorum survives
the loss of its controller, and the cluster survives a full restart.

Partitions have one replica each for now (replication is the next step of
issue 17), so a stopped node's partitions are unavailable until it returns.
"""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
from kafka import KafkaConsumer, KafkaProducer

from common.broker import wait_until


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create(bootstrap: str, topic: str, partitions: int) -> None:
    client = admin(bootstrap)  # kept alive until its future resolves
    futures = client.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=15)
    futures[topic].result(timeout=30)


def layout(bootstrap: str, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """{partition: (leader, replicas, in-sync)} as node `bootstrap` tells it."""
    metadata = admin(bootstrap).list_topics(topic, timeout=10)
    found = metadata.topics[topic]
    assert found.error is None, found.error
    return {p.id: (p.leader, list(p.replicas), list(p.isrs)) for p in found.partitions.values()}


def produce(bootstrap: str, topic: str, count: int, prefix: str) -> dict[int, list[bytes]]:
    """acks=all, idempotent; returns the acknowledged values per partition,
    in offset order."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    acked: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    failed = []

    def report(error, message):
        if error is None:
            acked[message.partition()].append((message.offset(), message.value()))
        else:
            failed.append(error)

    for i in range(count):
        producer.produce(topic, key=f"k{i}".encode(), value=f"{prefix}-{i}".encode(), on_delivery=report)
        producer.poll(0)
    left = producer.flush(30)
    assert left == 0 and not failed, f"{left} unacknowledged, failures: {failed[:3]}"
    return {p: [v for _, v in sorted(values)] for p, values in acked.items()}


def consume_all(bootstrap: str, topic: str, partitions: int, expected: int) -> dict[int, list[bytes]]:
    """Reads every partition from the start (assigned, no group)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: dict[int, list[bytes]] = defaultdict(list)
    total = 0
    deadline = time.monotonic() + 30
    try:
        while total < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                continue
            seen[message.partition()].append(message.value())
            total += 1
    finally:
        consumer.close()
    return dict(seen)


def controller_of(bootstrap: str) -> int:
    return admin(bootstrap).list_topics(timeout=10).controller_id


def test_every_node_lists_every_node_and_the_controller(cluster):
    brokers = cluster.wait_registered(admin)
    assert sorted(brokers) == [1, 2, 3]
    for node_id, (host, port) in brokers.items():
        assert (host, port) == ("127.0.0.1", cluster.node(node_id).kafka_port)
    # DescribeCluster (KIP-700) says the same.
    client = admin(cluster.node(2).bootstrap)
    described = client.describe_cluster(request_timeout=10).result(timeout=15)
    assert sorted(n.id for n in described.nodes) == [1, 2, 3]
    assert described.controller.id == controller_of(cluster.node(1).bootstrap)
    # kcat -L, an older librdkafka, sees three brokers too.
    listing = subprocess.run(
        ["kcat", "-b", cluster.node(3).bootstrap, "-L", "-m", "10"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert " 3 brokers:" in listing, listing
    for node in cluster.nodes:
        assert f"at {node.bootstrap}" in listing, listing


def test_a_topic_created_through_a_follower_is_on_every_node_spread_over_the_nodes(cluster, name):
    cluster.wait_registered(admin)
    controller = controller_of(cluster.node(1).bootstrap)
    follower = next(n for n in cluster.nodes if n is not cluster.node(controller))
    create(follower.bootstrap, name, 6)
    views = [layout(node.bootstrap, name) for node in cluster.nodes]
    assert views[0] == views[1] == views[2], views
    leaders = {leader for leader, _, _ in views[0].values()}
    assert leaders == {1, 2, 3}, f"six partitions on three nodes: {views[0]}"
    for leader, replicas, in_sync in views[0].values():
        assert replicas == [leader] and in_sync == [leader]
    # A second creation of the same name is refused through any node.
    client = admin(cluster.node(controller).bootstrap)
    again = client.create_topics([NewTopic(name, 1, 1)])
    try:
        again[name].result(timeout=30)
        raise AssertionError("the topic was created twice")
    except Exception as error:  # confluent_kafka.KafkaException
        assert error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, error
    # Partitions added through another node are placed and seen everywhere.
    grown = client.create_partitions([NewPartitions(name, 9)])
    grown[name].result(timeout=30)
    wait_until(
        lambda: all(len(layout(n.bootstrap, name)) == 9 for n in cluster.nodes),
        15,
        what="every node to see nine partitions",
    )


def test_librdkafka_and_kafka_python_produce_to_the_leaders_and_read_back(cluster, name):
    cluster.wait_registered(admin)
    create(cluster.node(1).bootstrap, name, 6)
    # Bootstrapped through one node only: the client finds the others.
    acked = produce(cluster.node(2).bootstrap, name, 600, "rd")
    assert sum(len(v) for v in acked.values()) == 600
    assert len(acked) == 6, "every partition got records"

    python_producer = KafkaProducer(bootstrap_servers=cluster.node(3).bootstrap, acks="all", linger_ms=5)
    futures = [python_producer.send(name, key=f"p{i}".encode(), value=f"py-{i}".encode()) for i in range(300)]
    python_producer.flush(30)
    for future in futures:
        record = future.get(timeout=30)
        acked.setdefault(record.partition, []).append(f"py-{record.offset}".encode())
    python_producer.close(10)

    seen = consume_all(cluster.node(1).bootstrap, name, 6, 900)
    assert sum(len(v) for v in seen.values()) == 900
    for partition, values in acked.items():
        rd = [v for v in values if v.startswith(b"rd-")]
        assert [v for v in seen[partition] if v.startswith(b"rd-")] == rd, f"partition {partition} in order"
    every = [v for values in seen.values() for v in values]
    assert len(set(every)) == 900, "each record once"

    # A consumer group through kafka-python reads everything too.
    consumer = KafkaConsumer(
        name,
        bootstrap_servers=cluster.node(2).bootstrap,
        group_id=name,
        auto_offset_reset="earliest",
        consumer_timeout_ms=20000,
    )
    got = 0
    for _ in consumer:
        got += 1
        if got == 900:
            break
    consumer.close()
    assert got == 900


def test_the_quorum_outlives_its_controller_and_a_full_restart(fresh_cluster, name):
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    create(cluster.node(1).bootstrap, name, 3)
    acked = produce(cluster.bootstrap, name, 300, "before")

    # kill -9 the controller: the other two elect one, and metadata changes
    # go on through them.
    old = controller_of(cluster.node(1).bootstrap)
    cluster.node(old).kill()
    others = [n for n in cluster.nodes if n.alive()]
    wait_until(
        lambda: controller_of(others[0].bootstrap) not in (-1, old),
        20,
        what="a new controller",
    )
    later = f"{name}-later"
    create(others[1].bootstrap, later, 2)
    assert all(len(layout(n.bootstrap, later)) == 2 for n in others)

    # The old controller comes back on its data directory and catches up.
    cluster.node(old).start()
    wait_until(
        lambda: later in admin(cluster.node(old).bootstrap).list_topics(timeout=5).topics,
        20,
        what="the returning node to learn the topic it missed",
    )

    # Everyone stops (SIGTERM) and starts again: topics, placements and
    # records are all still there.
    before = layout(cluster.node(2).bootstrap, name)
    cluster.stop()
    cluster.start()
    cluster.wait_registered(admin)
    assert layout(cluster.node(3).bootstrap, name) == before
    seen = consume_all(cluster.node(1).bootstrap, name, 3, 300)
    assert seen == acked
    more = produce(cluster.bootstrap, name, 30, "after")
    assert sum(len(v) for v in more.values()) == 30


def test_a_group_has_one_coordinator_whichever_node_its_members_bootstrap_through(cluster, name):
    cluster.wait_registered(admin)
    create(cluster.node(1).bootstrap, name, 6)
    produce(cluster.node(1).bootstrap, name, 60, "g")

    def member(node_id: int) -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": cluster.node(node_id).bootstrap,
                "group.id": name,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 10000,
            }
        )
        consumer.subscribe([name])
        return consumer

    first, second = member(1), member(3)
    consumed = []

    def split():
        for consumer in (first, second):
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                consumed.append((message.partition(), message.offset()))
        a = {tp.partition for tp in first.assignment()}
        b = {tp.partition for tp in second.assignment()}
        return (a, b) if a and b and not (a & b) and (a | b) == set(range(6)) else None

    try:
        a, b = wait_until(split, 60, interval=0, what="one group sharing six partitions between its two members")
        assert len(a) == 3 and len(b) == 3, (a, b)
        first.commit(offsets=[TopicPartition(name, p, 5) for p in sorted(a)], asynchronous=False)
    finally:
        first.close()
        second.close()

    # Committed through the coordinator; read back through another node.
    checker = Consumer({"bootstrap.servers": cluster.node(2).bootstrap, "group.id": name})
    try:
        committed = checker.committed([TopicPartition(name, p) for p in sorted(a)], timeout=15)
    finally:
        checker.close()
    assert [tp.offset for tp in committed] == [5] * len(a)


def test_topics_created_without_a_replication_factor_get_three_replicas(cluster, name):
    """kafka.default_replication_factor (3, at most the voters) for
    CreateTopics with -1 and for a topic a producer creates."""
    cluster.wait_registered(admin)
    client = admin(cluster.node(2).bootstrap)  # alive until its future resolves
    asked = f"{name}-asked"
    client.create_topics([NewTopic(asked, 2, -1)], operation_timeout=15)[asked].result(timeout=30)
    automatic = f"{name}-auto"
    producer = Producer({"bootstrap.servers": cluster.node(3).bootstrap, "acks": "all"})
    delivered = []
    producer.produce(automatic, value=b"x", on_delivery=lambda e, m: delivered.append(e))
    producer.flush(30)
    assert delivered == [None], delivered
    for topic in (asked, automatic):
        for leader, replicas, in_sync in wait_until(
            lambda: (lambda view: view if all(len(isr) == 3 for _, _, isr in view.values()) else None)(
                layout(cluster.node(1).bootstrap, topic)
            ),
            30,
            what=f"{topic} with three in-sync replicas",
        ).values():
            assert len(replicas) == 3 and leader in replicas, (topic, replicas)
