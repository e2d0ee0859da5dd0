"""Kafka transactions on a three-node cluster, driven by librdkafka
(confluent-kafka): the coordinator of a transactional id is the leader of
its `__transaction_state` partition (created on the first
FindCoordinator), and a transaction over partitions led by every node
reaches read_committed consumers all together when it commits and never
when it aborts; its markers reach the partitions other nodes lead over
the inter-node links (WriteTxnMarkers). docs/transactions.md.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict

import pika
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from kafka import KafkaClient
from kafka.protocol.add_partitions_to_txn import AddPartitionsToTxnRequest
from kafka.protocol.end_txn import EndTxnRequest
from kafka.protocol.init_producer_id import InitProducerIdRequest
from kafka.protocol.produce import ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder

from common.broker import wait_until
from common.cluster import running_cluster
from common.eos import assert_each_once_in_order, read_progress, run_worker, transform_round
from common.log_files import markers
from test_groups import committed, java_partition
from test_kafka_cluster import admin, layout
from test_replication import create_replicated, http_get

CLIENT_TIMEOUT_S = 30
INVALID_TXN_STATE = 48


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
    create_replicated(cluster.node(1).bootstrap, name, 3, 3)
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
    create_replicated(cluster.node(2).bootstrap, name, 3, 3)
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
    create_replicated(cluster.node(1).bootstrap, name, 3, 3)
    first = transactional(cluster.node(1).bootstrap, f"{name}-txn")
    first.begin_transaction()
    send(first, name, 3, "first")
    # The second, through another node, finds the same coordinator; the
    # first's open transaction is aborted on every partition.
    second = transactional(cluster.node(2).bootstrap, f"{name}-txn")
    second.begin_transaction()
    send(second, name, 3, "second")
    second.commit_transaction(CLIENT_TIMEOUT_S)
    with pytest.raises(KafkaException) as raised:
        first.commit_transaction(CLIENT_TIMEOUT_S)
    assert raised.value.args[0].code() in (
        KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
    ), raised.value
    assert read(cluster.node(3).bootstrap, name, 3, "read_committed") == {
        p: [f"second-{p}-{i}".encode() for i in range(3)] for p in range(3)
    }


def leaders_of(bootstrap: str, topic: str) -> dict[int, int]:
    """{partition: leader} of `topic`, once it exists with every leader."""
    def found():
        metadata = admin(bootstrap).list_topics(timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return None
        leaders = {p.id: p.leader for p in metadata.partitions.values()}
        return leaders if leaders and all(leader >= 0 for leader in leaders.values()) else None

    return wait_until(found, 30, interval=0.3, what=f"{topic} with a leader for every partition")


def test_consume_transform_produce_commits_offsets_through_another_nodes_group_coordinator(cluster, name):
    """The group's coordinator (its __consumer_offsets partition's leader)
    is not the transaction's (its __transaction_state partition's): the
    offsets the transaction sends become the group's only when it
    commits, through the marker the transaction coordinator sends to the
    group's coordinator."""
    cluster.wait_registered(admin)
    source, sink = f"{name}-in", f"{name}-out"
    create_replicated(cluster.node(1).bootstrap, source, 2, 3)
    create_replicated(cluster.node(1).bootstrap, sink, 1, 3)
    plain = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for p in range(2):
        for i in range(10):
            plain.produce(source, f"{p}-{i}".encode(), partition=p)
    assert plain.flush(CLIENT_TIMEOUT_S) == 0

    transactional_id = f"{name}-txn"
    producer = transactional(cluster.bootstrap, transactional_id)
    # A group whose coordinator is another node than the transaction's.
    probe = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": f"{name}-probe"})
    try:
        probe.committed([TopicPartition(source, 0)], CLIENT_TIMEOUT_S)
    finally:
        probe.close()
    offsets_leaders = leaders_of(cluster.node(1).bootstrap, "__consumer_offsets")
    state_leaders = leaders_of(cluster.node(1).bootstrap, "__transaction_state")
    txn_coordinator = state_leaders[java_partition(transactional_id, len(state_leaders))]
    group = next(
        g for g in (f"{name}-group-{i}" for i in range(200))
        if offsets_leaders[java_partition(g, len(offsets_leaders))] != txn_coordinator
    )

    def process(count: int, commit: bool, partition: int = 0) -> None:
        consumer = Consumer({
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        })
        try:
            consumer.assign([TopicPartition(source, partition)])
            read = []
            deadline = time.monotonic() + CLIENT_TIMEOUT_S
            while len(read) < count and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and not message.error():
                    read.append(message)
            assert len(read) == count
            transform_round(producer, consumer, read, sink, commit, CLIENT_TIMEOUT_S)
        finally:
            consumer.close()

    def offsets() -> list[int] | None:
        return committed(cluster.bootstrap, group, source, 2)

    process(4, commit=True)
    assert offsets()[0] == 4
    # An aborted round leaves neither its output nor its offsets, not even
    # once the next transaction (on the other partition) commits.
    process(3, commit=False)
    assert offsets()[0] == 4
    process(5, commit=True, partition=1)
    assert offsets() == [4, 5]
    process(6, commit=True)
    assert offsets() == [10, 5]
    outputs = read(cluster.bootstrap, sink, 1, "read_committed")[0]
    expected = [f"out-0-{i}".encode() for i in range(4)] + [f"out-1-{i}".encode() for i in range(5)]
    expected += [f"out-0-{i}".encode() for i in range(4, 10)]
    assert outputs == expected, "each input once"


def test_a_transaction_survives_kill_9_of_its_coordinator(fresh_cluster, name):
    """kill -9 of the transaction's coordinator while it is open: the
    next leader of its __transaction_state partition loads it, the
    producer finds it there and commits, and every partition has the
    records once under read_committed, the killed node too once back."""
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 3, 3)
    transactional_id = f"{name}-txn"
    producer = transactional(cluster.bootstrap, transactional_id)
    producer.begin_transaction()
    send(producer, name, 3, "before")
    producer.commit_transaction(CLIENT_TIMEOUT_S)

    state_leaders = leaders_of(cluster.node(1).bootstrap, "__transaction_state")
    coordinator = state_leaders[java_partition(transactional_id, len(state_leaders))]
    producer.begin_transaction()
    send(producer, name, 3, "across")
    cluster.node(coordinator).kill()
    survivor = next(n for n in cluster.nodes if n.alive())

    def moved():
        leaders = leaders_of(survivor.bootstrap, "__transaction_state")
        leader = leaders[java_partition(transactional_id, len(leaders))]
        return leader if leader != coordinator else None

    wait_until(moved, 30, interval=0.5, what="another coordinator for the transactional id")
    producer.commit_transaction(CLIENT_TIMEOUT_S)
    cluster.node(coordinator).start()
    expected = {p: [f"{prefix}-{p}-{i}".encode() for prefix in ("before", "across") for i in range(3)]
                for p in range(3)}
    for number, node in enumerate(cluster.nodes, 1):
        assert wait_until(
            lambda: read(node.bootstrap, name, 3, "read_committed") == expected or None,
            60,
            interval=1,
            what=f"the committed records through node {number}",
        )


def test_a_commit_reaches_a_partition_whose_leader_was_killed(fresh_cluster, name):
    """kill -9 of a data partition's leader (not the coordinator) before
    the commit: the decision stands, and its marker reaches the
    partition's next leader, so the partition has the records under
    read_committed like the others."""
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 3, 3)
    transactional_id = f"{name}-txn"
    producer = transactional(cluster.bootstrap, transactional_id)
    state_leaders = leaders_of(cluster.node(1).bootstrap, "__transaction_state")
    coordinator = state_leaders[java_partition(transactional_id, len(state_leaders))]
    data_leaders = layout(cluster.node(1).bootstrap, name)
    victim = next(leader for leader, _, _ in data_leaders.values() if leader != coordinator)
    producer.begin_transaction()
    send(producer, name, 3, "txn")
    cluster.node(victim).kill()
    producer.commit_transaction(CLIENT_TIMEOUT_S)
    expected = {p: [f"txn-{p}-{i}".encode() for i in range(3)] for p in range(3)}
    survivor = cluster.node(coordinator)
    assert wait_until(
        lambda: read(survivor.bootstrap, name, 3, "read_committed") == expected or None,
        60,
        interval=1,
        what="every partition's records under read_committed, the moved one too",
    )


EOS_RECORDS = int(os.environ.get("TXN_CLUSTER_RECORDS", "600"))
EOS_KILLS = int(os.environ.get("TXN_CLUSTER_KILLS", "3"))


def test_exactly_once_across_kill_9_on_three_nodes(fresh_cluster, tmp_path, name):
    """compat/kafka's consume-transform-produce worker (every 7th
    transaction aborted on purpose) against three nodes while each node in
    turn is killed with SIGKILL and started again: every input is in the
    output exactly once, in order, under read_committed. A longer run:
    TXN_CLUSTER_RECORDS=3000 TXN_CLUSTER_KILLS=20 compat/cluster/run.sh -k
    exactly_once."""
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    source, sink = f"{name}-in", f"{name}-out"
    create_replicated(cluster.node(1).bootstrap, source, 1, 3)
    create_replicated(cluster.node(1).bootstrap, sink, 1, 3)
    plain = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(EOS_RECORDS):
        plain.produce(source, str(i).encode(), partition=0)
    assert plain.flush(CLIENT_TIMEOUT_S) == 0

    progress = tmp_path / "progress"
    kills = 0

    def kill_on_the_way(progress_now) -> None:
        # Each kill at its share of the way, whatever the pace.
        nonlocal kills
        if kills < EOS_KILLS and progress_now[0] >= (kills + 1) * EOS_RECORDS // (EOS_KILLS + 1):
            victim = cluster.node(kills % 3 + 1)
            victim.kill()
            victim.start()
            kills += 1

    returncode, worker_kills = run_worker(
        [cluster.bootstrap, source, sink, f"{name}-group", f"{name}-txn", str(EOS_RECORDS)],
        progress,
        timeout_s=120 + 30 * EOS_KILLS,
        stuck_s=20,
        between=kill_on_the_way,
    )
    assert returncode == 0, f"the worker did not finish: {read_progress(progress)}"
    assert kills == EOS_KILLS, f"{kills} of {EOS_KILLS} kills while the loop ran"

    outputs = read(cluster.bootstrap, sink, 1, "read_committed")[0]
    assert_each_once_in_order(
        outputs, EOS_RECORDS, f"{kills} node kills, {worker_kills} worker restarts")
    everything = read(cluster.bootstrap, sink, 1, "read_uncommitted")[0]
    assert len(everything) > EOS_RECORDS, "aborted transactions' records were there to skip"
    print(f"exactly-once across kill -9 on three nodes: {EOS_RECORDS} records, {kills} node kills, "
          f"{worker_kills} worker restarts, {len(everything) - EOS_RECORDS} records of aborted "
          f"transactions skipped")


def amqp_connection(node, connection_name: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=node.amqp_port,
            credentials=pika.PlainCredentials("guest", "guest"),
            client_properties={"connection_name": connection_name},
            blocked_connection_timeout=30,
            socket_timeout=30,
        )
    )


def amqp_transactional_id(node, number: int, connection_name: str, channel_number: int) -> str:
    """The transactional id node `number` gives a channel's commits into
    streams (crates/sluice-amqp/src/connection/tx.rs):
    `__sluice_amqp_tx-<node>-<connection id << 16 | channel>`, the
    connection's id as the HTTP API lists it."""
    connections = http_get(node, "/api/connections?page_size=500")["items"]
    (connection,) = [c for c in connections if c["client_name"] == connection_name]
    return f"__sluice_amqp_tx-{number}-{(connection['id'] << 16) | channel_number}"


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"marks-{time.monotonic_ns()}"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


class AmqpStream:
    """A fanout exchange bound to a stream of three partitions, one led by
    each node, declared on node 1, and a pika connection on node 2 whose
    channels' transactional ids (and so their coordinators) the test
    knows."""

    CHANNELS = range(1, 200)

    def __init__(self, cluster, name: str):
        self.cluster = cluster
        cluster.wait_registered(admin)
        create_replicated(cluster.node(1).bootstrap, name, 3, 3)
        leaders = {leader for leader, _, _ in layout(cluster.node(1).bootstrap, name).values()}
        assert leaders == {1, 2, 3}, "one partition led by each node"
        # __transaction_state exists (created on a first FindCoordinator).
        transactional(cluster.bootstrap, f"{name}-probe")
        self.state_leaders = leaders_of(cluster.node(1).bootstrap, "__transaction_state")
        self.exchange = f"{name}-x"
        declaring = amqp_connection(cluster.node(1), f"{name}-declare")
        try:
            ch = declaring.channel()
            ch.exchange_declare(self.exchange, "fanout", durable=True)
            ch.queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})
            ch.queue_bind(name, self.exchange)
        finally:
            declaring.close()
        self.node, self.connection_name = cluster.node(2), f"{name}-publisher"
        self.connection = amqp_connection(self.node, self.connection_name)

        # The binding is known on node 2 once the definitions are.
        def known() -> bool:
            probe = self.connection.channel(channel_number=max(self.CHANNELS) + 1)
            try:
                probe.exchange_declare(self.exchange, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                return False
            probe.close()
            return True

        wait_until(known, 30, interval=0.5, what="the exchange on node 2")

    def channel_coordinated_by(self, wanted, number: int = 2, connection_name: str | None = None) -> int:
        """A channel number of the connection `connection_name` (the
        publisher's by default) on node `number` whose transactional id's
        coordinator passes `wanted`."""
        node = self.cluster.node(number)

        def coordinator_of(channel_number: int) -> int:
            transactional_id = amqp_transactional_id(
                node, number, connection_name or self.connection_name, channel_number)
            return self.state_leaders[java_partition(transactional_id, len(self.state_leaders))]

        return next(n for n in self.CHANNELS if wanted(coordinator_of(n)))

    def publish(self, ch, label: str) -> list[bytes]:
        """Twelve messages whose routing keys reach every partition."""
        values = [f"{label}-{i}".encode() for i in range(12)]
        for i, value in enumerate(values):
            ch.basic_publish(self.exchange, f"key-{i}", value)
        return values

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def test_an_amqp_transaction_into_a_stream_on_a_cluster_is_one_kafka_transaction(cluster, name):
    """pika's tx.commit on node 2 into a stream whose three partitions
    each node leads: written as one Kafka transaction of the channel's own
    transactional id, with the partitions led elsewhere written through
    their leaders, once with the id coordinated by node 2 and once by
    another node (the broker a Kafka producer of that coordinator). Every
    node's read_committed consumers see each commit's records, in order;
    each partition touched holds a commit marker per transaction (which
    takes an offset); a rollback writes nothing."""
    stream = AmqpStream(cluster, name)
    here = stream.channel_coordinated_by(lambda node: node == 2)
    elsewhere = stream.channel_coordinated_by(lambda node: node != 2)
    committed = []
    try:
        for label, number in (("here", here), ("elsewhere", elsewhere)):
            ch = stream.connection.channel(channel_number=number)
            ch.tx_select()
            ch.basic_publish(stream.exchange, "rolled", f"{label}-rolled-back".encode())
            ch.tx_rollback()
            committed.append(stream.publish(ch, label))
            ch.tx_commit()
    finally:
        stream.close()

    every = [value for values in committed for value in values]
    for node in cluster.nodes:
        seen = read(node.bootstrap, name, 3, "read_committed")
        assert sorted(v for values in seen.values() for v in values) == sorted(every)
        for values in seen.values():
            # Each partition holds its share in publish order.
            assert values == [v for v in every if v in values]
    by_partition = read(cluster.node(1).bootstrap, name, 3, "read_uncommitted")
    touched = {
        (value.split(b"-")[0], partition)
        for partition, values in by_partition.items() for value in values
    }
    assert {partition for _, partition in touched} == {0, 1, 2}, "the keys reach every partition"
    # Records, plus one commit marker per transaction and partition.
    assert sum(high_watermarks(cluster.bootstrap, name, 3).values()) == len(every) + len(touched)


class RawKafka:
    """kafka-python's protocol client, for the requests librdkafka never
    sends out of order (a transactional batch before its
    AddPartitionsToTxn), each to the node asked for."""

    def __init__(self, bootstrap: str):
        self.client = KafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)

    def call(self, node_id: int, request):
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while not self.client.ready(node_id):
            assert time.monotonic() < deadline, f"no connection to node {node_id}"
            self.client.poll(timeout_ms=100)
        future = self.client.send(node_id, request)
        self.client.poll(future=future, timeout_ms=CLIENT_TIMEOUT_S * 1000)
        assert future.succeeded(), future.exception
        return future.value

    def close(self) -> None:
        self.client.close()


def transactional_batch(producer_id: int, epoch: int, sequence: int, value: bytes) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=1, producer_id=producer_id,
        producer_epoch=epoch, base_sequence=sequence, batch_size=1 << 20,
    )
    builder.append(offset=0, timestamp=None, key=None, value=value, headers=[])
    return bytes(builder.build())


def test_a_leader_verifies_a_transactional_batch_with_the_ids_coordinator(cluster, name):
    """KIP-890 on a cluster: a partition leader that does not coordinate
    the transactional id asks its coordinator (AddPartitionsToTxn v4,
    verify_only) before it takes the producer's first batch of a
    transaction: a batch for a partition the transaction never added is
    INVALID_TXN_STATE, the same batch once added is taken, and after the
    commit the next transaction's batch is verified again."""
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 3, 3)
    transactional(cluster.bootstrap, f"{name}-probe")
    state_leaders = leaders_of(cluster.node(1).bootstrap, "__transaction_state")
    transactional_id = f"{name}-txn"
    coordinator = state_leaders[java_partition(transactional_id, len(state_leaders))]
    partition, (leader, _, _) = next(
        (p, entry) for p, entry in layout(cluster.node(1).bootstrap, name).items() if entry[0] != coordinator
    )
    raw = RawKafka(cluster.bootstrap)
    try:
        init = raw.call(coordinator, InitProducerIdRequest[1](
            transactional_id=transactional_id, transaction_timeout_ms=60000))
        assert init.error_code == 0
        producer_id, epoch = init.producer_id, init.producer_epoch

        def produce(sequence: int, value: bytes) -> int:
            response = raw.call(leader, ProduceRequest[3](
                transactional_id=transactional_id, required_acks=-1, timeout=10000,
                topics=[(name, [(partition, transactional_batch(producer_id, epoch, sequence, value))])],
            ))
            ((_, ((_, error_code, *_),)),) = response.topics
            return error_code

        def add() -> None:
            response = raw.call(coordinator, AddPartitionsToTxnRequest[1](
                transactional_id=transactional_id, producer_id=producer_id,
                producer_epoch=epoch, topics=[(name, [partition])],
            ))
            assert response.results == [(name, [(partition, 0)])]

        def end(commit: bool) -> None:
            response = raw.call(coordinator, EndTxnRequest[1](
                transactional_id=transactional_id, producer_id=producer_id,
                producer_epoch=epoch, committed=commit,
            ))
            assert response.error_code == 0

        assert produce(0, b"never-added") == INVALID_TXN_STATE
        add()
        assert produce(0, b"first") == 0
        assert produce(1, b"second") == 0
        end(commit=True)
        # A new transaction: verified again, as nothing is open here now.
        assert produce(2, b"not-added-again") == INVALID_TXN_STATE
        add()
        assert produce(2, b"third") == 0
        end(commit=True)
    finally:
        raw.close()
    assert read(cluster.node(leader).bootstrap, name, 3, "read_committed")[partition] == [
        b"first", b"second", b"third",
    ]


def test_every_replica_compacts_transactions_and_a_new_leader_serves_them(tmp_path, request, name):
    """A compacted topic with three replicas written by a transactional
    producer: each replica's compaction keeps the latest committed value
    per key, removes the aborted transaction's records and empties the
    commit marker whose records are all superseded (the other markers
    stay). kill -9 of the leader: read_committed through the next one
    reads every committed record and a new transaction of the same id."""
    # Compaction checked every second rather than every 15 s.
    with running_cluster(
        tmp_path, name=f"cluster[{request.node.name}]",
        settings={"log.compaction_check_interval": "1s"},
    ) as cluster:
        compacted_transactions(cluster, name)


def compacted_transactions(cluster, name: str) -> None:
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 1, 3, config={
        "cleanup.policy": "compact",
        "segment.bytes": "2048",
        "segment.ms": "1000",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100",
    })
    transactional_id = f"{name}-txn"

    def transaction(producer: Producer, prefix: str, keys: range, commit: bool) -> None:
        producer.begin_transaction()
        for k in keys:
            producer.produce(name, key=f"k{k}".encode(), value=f"{prefix}-k{k}".encode(), partition=0)
        assert producer.flush(CLIENT_TIMEOUT_S) == 0
        if commit:
            producer.commit_transaction(CLIENT_TIMEOUT_S)
        else:
            producer.abort_transaction(CLIENT_TIMEOUT_S)

    producer = transactional(cluster.bootstrap, transactional_id)
    transaction(producer, "first", range(5), commit=True)
    transaction(producer, "aborted", range(5), commit=False)
    transaction(producer, "second", range(5), commit=True)
    filler = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "linger.ms": 0})
    expected = {f"second-k{k}".encode() for k in range(5)}

    def compacted():
        # New sealed segments for each pass to find dirty (segment.ms rolls).
        for _ in range(5):
            filler.produce(name, key=b"filler", value=b"x" * 200, partition=0)
        assert filler.flush(CLIENT_TIMEOUT_S) == 0
        kept = {v for v in read(cluster.bootstrap, name, 1, "read_uncommitted")[0] if not v.startswith(b"x")}
        counts = [markers(node.data_dir, name) for node in cluster.nodes]
        return counts if kept == expected and all(c == (2, 1) for c in counts) else None

    wait_until(compacted, 150, interval=1, what="every replica's compaction of the transactions")
    leader, _, _ = layout(cluster.node(1).bootstrap, name)[0]
    cluster.node(leader).kill()
    survivor = next(node for node in cluster.nodes if node.alive())
    wait_until(
        lambda: leaders_of(survivor.bootstrap, name)[0] != leader or None,
        30, interval=0.5, what="a new leader",
    )
    again = transactional(survivor.bootstrap, transactional_id)
    transaction(again, "after", range(1), commit=True)
    committed = {v for v in read(survivor.bootstrap, name, 1, "read_committed")[0] if not v.startswith(b"x")}
    # (second-k0 goes at the next pass.)
    assert expected - {b"second-k0"} | {b"after-k0"} <= committed <= expected | {b"after-k0"}


def test_an_amqp_commit_whose_stream_leader_is_paused_is_all_or_nothing(fresh_cluster, name):
    """pika's tx.commit on node 2 while node 3, the leader of one of the
    stream's partitions (neither the connection's node nor the id's
    coordinator), is paused (SIGSTOP): the commit fails (the connection
    is closed with the reason) and the transaction is aborted, so no
    read_committed consumer on any node ever sees any of its records,
    once node 3 is back (SIGCONT) too; a retry on a new connection
    commits everything."""
    cluster = fresh_cluster
    stream = AmqpStream(cluster, name)
    number = stream.channel_coordinated_by(lambda node: node != 3)
    victim = cluster.node(3)
    try:
        ch = stream.connection.channel(channel_number=number)
        ch.tx_select()
        failed = stream.publish(ch, "failed")
        os.kill(victim.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(pika.exceptions.AMQPConnectionError) as closed:
                ch.tx_commit()
        finally:
            os.kill(victim.proc.pid, signal.SIGCONT)
        assert "commit failed" in str(closed.value), closed.value
    finally:
        stream.close()

    # A client retries on a new connection (a first retry may still meet
    # the partition's leadership moving).
    retried = None
    for attempt in range(5):
        retry = amqp_connection(cluster.node(2), f"{name}-retry-{attempt}")
        try:
            ch = retry.channel()
            ch.tx_select()
            values = stream.publish(ch, f"retried{attempt}")
            ch.tx_commit()
            retried = values
            break
        except pika.exceptions.AMQPConnectionError:
            time.sleep(2)
        finally:
            if retry.is_open:
                retry.close()
    assert retried is not None, "no retry committed"

    def committed_through(node) -> list[bytes]:
        seen = read(node.bootstrap, name, 3, "read_committed")
        return [v for values in seen.values() for v in values]

    for node in cluster.nodes:
        got = wait_until(
            lambda: (lambda got: got if set(retried) <= set(got) else None)(committed_through(node)),
            60, interval=1, what="the retried commit through every node",
        )
        assert sorted(got) == sorted(retried), f"{sorted(set(got) - set(retried))} visible besides the retry"


def test_amqp_commits_on_two_nodes_at_once_each_coordinated_by_its_own_node(cluster, name):
    """Two pika connections, on nodes 1 and 2, commit at the same time
    into a stream each node leads a partition of, each channel's id
    coordinated by its own node: each node's Produce to the other waits
    on a leader that checks the batch with the other node's coordinator
    (and each EndTxn on markers sent back), so the two nodes' requests
    cross. Every commit succeeds and read_committed has them all."""
    stream = AmqpStream(cluster, name)
    rounds = 15
    failures: list[BaseException] = []
    committed: dict[int, list[bytes]] = {1: [], 2: []}

    def commit_from(number: int) -> None:
        connection_name = f"{name}-crossing-{number}"
        connection = amqp_connection(cluster.node(number), connection_name)
        try:
            channel_number = stream.channel_coordinated_by(
                lambda node: node == number, number, connection_name)
            ch = connection.channel(channel_number=channel_number)
            ch.tx_select()
            for round_ in range(rounds):
                committed[number] += stream.publish(ch, f"node{number}.{round_}")
                ch.tx_commit()
        except BaseException as error:  # reported by the main thread
            failures.append(error)
        finally:
            if connection.is_open:
                connection.close()

    threads = [threading.Thread(target=commit_from, args=(number,)) for number in (1, 2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stream.close()
    assert not any(thread.is_alive() for thread in threads), "commits still running after 120 s"
    assert not failures, failures
    elapsed = time.monotonic() - started
    every = committed[1] + committed[2]
    seen = read(cluster.node(3).bootstrap, name, 3, "read_committed")
    assert sorted(v for values in seen.values() for v in values) == sorted(every), f"after {elapsed:.1f} s"
