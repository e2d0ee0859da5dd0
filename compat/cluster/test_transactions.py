"""Kafka transactions on a three-node cluster, driven by librdkafka
(confluent-kafka): the coordinator of a transactional id is the leader of
its `__transaction_state` partition (created on the first
FindCoordinator), and a transaction over partitions led by every node
reaches read_committed consumers all together when it commits and never
when it aborts; its markers reach the partitions other nodes lead over
the inter-node links (WriteTxnMarkers). docs/transactions.md.
"""

from __future__ import annotations

import time
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from test_kafka_cluster import admin, layout

CLIENT_TIMEOUT_S = 30


def create_replicated(bootstrap: str, topic: str, partitions: int) -> None:
    client = admin(bootstrap)  # kept alive until its future resolves
    futures = client.create_topics([NewTopic(topic, partitions, 3)], operation_timeout=15)
    futures[topic].result(timeout=30)


def transactional(bootstrap: str, transactional_id: str) -> Producer:
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": transactional_id,
        "message.timeout.ms": 20000,
        "transaction.timeout.ms": 30000,
    })
    producer.init_transactions(CLIENT_TIMEOUT_S)
    return producer


def read(bootstrap: str, topic: str, partitions: int, isolation: str) -> dict[int, list[bytes]]:
    """Every value of every partition, from the start to its end as the
    consumer sees it under `isolation` (the last stable offset under
    read_committed)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"reader-{time.monotonic_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": isolation,
        "enable.partition.eof": True,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: dict[int, list[bytes]] = defaultdict(list)
    ended: set[int] = set()
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    try:
        while len(ended) < partitions and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                ended.add(message.partition())
                continue
            seen[message.partition()].append(message.value())
    finally:
        consumer.close()
    assert len(ended) == partitions, f"only partitions {sorted(ended)} read to their end"
    return {p: seen.get(p, []) for p in range(partitions)}


def send(producer: Producer, topic: str, partitions: int, prefix: str) -> None:
    failed = []

    def report(error, _message):
        if error is not None:
            failed.append(error)

    for p in range(partitions):
        for i in range(3):
            producer.produce(topic, value=f"{prefix}-{p}-{i}".encode(), partition=p, on_delivery=report)
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    assert not failed, failed


def test_a_transaction_over_partitions_every_node_leads_is_all_or_nothing(cluster, name):
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 3)
    leaders = {leader for leader, _, _ in layout(cluster.node(1).bootstrap, name).values()}
    assert leaders == {1, 2, 3}, "one partition led by each node"

    producer = transactional(cluster.bootstrap, f"{name}-txn")
    producer.begin_transaction()
    send(producer, name, 3, "committed")
    producer.commit_transaction(CLIENT_TIMEOUT_S)
    producer.begin_transaction()
    send(producer, name, 3, "aborted")
    producer.abort_transaction(CLIENT_TIMEOUT_S)
    producer.begin_transaction()
    send(producer, name, 3, "again")
    producer.commit_transaction(CLIENT_TIMEOUT_S)

    def expected(*prefixes: str) -> dict[int, list[bytes]]:
        return {
            p: [f"{prefix}-{p}-{i}".encode() for prefix in prefixes for i in range(3)]
            for p in range(3)
        }

    # Through every node: the same committed records, in order, on each
    # partition; the aborted ones only under read_uncommitted.
    for node in cluster.nodes:
        assert read(node.bootstrap, name, 3, "read_committed") == expected("committed", "again")
    assert read(cluster.bootstrap, name, 3, "read_uncommitted") == expected("committed", "aborted", "again")


def test_a_transaction_left_open_on_a_cluster_stays_invisible_until_it_commits(cluster, name):
    """Records of an open transaction on partitions other nodes lead are
    not read_committed until the commit's markers reach those nodes."""
    cluster.wait_registered(admin)
    create_replicated(cluster.node(2).bootstrap, name, 3)
    producer = transactional(cluster.node(3).bootstrap, f"{name}-txn")
    producer.begin_transaction()
    send(producer, name, 3, "open")
    assert read(cluster.node(1).bootstrap, name, 3, "read_committed") == {0: [], 1: [], 2: []}
    assert sum(len(v) for v in read(cluster.node(1).bootstrap, name, 3, "read_uncommitted").values()) == 9
    producer.commit_transaction(CLIENT_TIMEOUT_S)
    committed = read(cluster.node(1).bootstrap, name, 3, "read_committed")
    assert committed == {p: [f"open-{p}-{i}".encode() for i in range(3)] for p in range(3)}


def test_a_second_producer_with_the_same_id_fences_the_first_on_a_cluster(cluster, name):
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 3)
    first = transactional(cluster.node(1).bootstrap, f"{name}-txn")
    first.begin_transaction()
    send(first, name, 3, "first")
    # The second, through another node, finds the same coordinator; the
    # first's open transaction is aborted on every partition.
    second = transactional(cluster.node(2).bootstrap, f"{name}-txn")
    second.begin_transaction()
    send(second, name, 3, "second")
    second.commit_transaction(CLIENT_TIMEOUT_S)
    try:
        first.commit_transaction(CLIENT_TIMEOUT_S)
        fenced = False
    except Exception as error:  # KafkaException with a fatal error
        fenced = "fenced" in str(error).lower() or getattr(error.args[0], "fatal", lambda: False)()
    assert fenced, "the first producer was fenced"
    assert read(cluster.node(3).bootstrap, name, 3, "read_committed") == {
        p: [f"second-{p}-{i}".encode() for i in range(3)] for p in range(3)
    }
