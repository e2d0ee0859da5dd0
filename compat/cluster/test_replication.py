"""Replicated partitions on a three-node cluster, checked the way the
issue asks: what acks=all acknowledged is present once, in order, on every
in-sync replica, and the replicas' logs are byte-identical up to the high
watermark. Followers fetch from the leader as Kafka replicas do; a follower
that stops leaves the in-sync replicas after `cluster.replica_lag_max`
(acks=all goes on without it) and returns to them once it has caught up.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)
from kafka import KafkaProducer
from kafka.errors import NotEnoughReplicasError

from common.broker import wait_until
from common.cluster import running_cluster
from test_kafka_cluster import admin, consume_all, layout, produce

def create_replicated(bootstrap: str, topic: str, partitions: int, replicas: int, config=None,
                      client_config=None) -> None:
    client = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
    futures = client.create_topics(
        [NewTopic(topic, partitions, replicas, config=config or {})], operation_timeout=15
    )
    futures[topic].result(timeout=30)


def read_to_end(bootstrap: str, topic: str, partition: int) -> list[bytes]:
    """Every record of one partition below its high watermark, in order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        values: list[bytes] = []
        # Long nemesis runs leave hundreds of thousands of records.
        deadline = time.monotonic() + 30 + high / 10_000
        position = 0
        while position < high and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            values.append(message.value())
            position = message.offset() + 1
        assert position >= high, f"read to {position} of {high}"
        return values
    finally:
        consumer.close()


def http_get(node, path: str, raw: bool = False):
    """GET on a node's admin API as guest (a loopback user)."""
    request = urllib.request.Request(f"http://127.0.0.1:{node.http_port}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = answer.read().decode()
    return body if raw else json.loads(body)


def segment_bytes(node, topic: str, partition: int) -> bytes:
    """A stopped node's log of one partition: its segment files, in order."""
    directory = Path(node.data_dir) / "logs" / f"{topic}-{partition}"
    return b"".join(p.read_bytes() for p in sorted(directory.glob("*.log")))


def check_replicas_identical(cluster, topic: str, partitions: int) -> None:
    for partition in range(partitions):
        logs = {n: segment_bytes(cluster.node(n), topic, partition) for n in (1, 2, 3)}
        assert logs[1], f"partition {partition} is empty"
        assert logs[1] == logs[2] == logs[3], (
            f"partition {partition}: replicas differ in size {[len(v) for v in logs.values()]}"
        )


def test_acks_all_records_are_on_every_replica_byte_for_byte(fresh_cluster, name):
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 3, 3)
    views = [layout(node.bootstrap, name) for node in cluster.nodes]
    assert views[0] == views[1] == views[2]
    for leader, replicas, in_sync in views[0].values():
        assert sorted(replicas) == [1, 2, 3] and replicas[0] == leader
        assert sorted(in_sync) == [1, 2, 3]
    assert {leader for leader, _, _ in views[0].values()} == {1, 2, 3}

    acked = produce(cluster.node(2).bootstrap, name, 3000, "r")
    assert sum(len(v) for v in acked.values()) == 3000
    seen = consume_all(cluster.node(3).bootstrap, name, 3, 3000)
    assert seen == acked, "every acknowledged record once, in order"

    cluster.stop()
    check_replicas_identical(cluster, name, 3)


def test_more_replicas_than_nodes_is_refused(cluster, name):
    cluster.wait_registered(admin)
    client = AdminClient({"bootstrap.servers": cluster.node(1).bootstrap})
    futures = client.create_topics([NewTopic(name, 1, 4)])
    with pytest.raises(Exception) as refused:
        futures[name].result(timeout=30)
    assert refused.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR


def test_a_stopped_follower_leaves_the_in_sync_replicas_and_returns(lagging_cluster, name):
    cluster = lagging_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 1, 3)
    leader, replicas, _ = layout(cluster.node(1).bootstrap, name)[0]
    follower = next(r for r in replicas if r != leader)
    acked = produce(cluster.node(leader).bootstrap, name, 200, "before")

    cluster.node(follower).kill()
    # acks=all goes on once the leader drops the stopped follower.
    started = time.monotonic()
    more = produce(cluster.node(leader).bootstrap, name, 200, "during")
    waited = time.monotonic() - started
    in_sync = layout(cluster.node(leader).bootstrap, name)[0][2]
    assert follower not in in_sync and leader in in_sync, in_sync
    assert waited < 30, f"acks=all waited {waited:.1f} s for a stopped follower"
    # The admin API, the metrics and `sluice status` say so.
    overview = http_get(cluster.node(leader), "/api/overview")["cluster"]
    assert overview["clustered"] is True and overview["under_replicated_partitions"] >= 1, overview
    assert sorted(n["id"] for n in overview["nodes"]) == [1, 2, 3]
    metrics = http_get(cluster.node(leader), "/metrics", raw=True)
    assert "sluice_cluster_under_replicated_partitions 1" in metrics, metrics[:2000]
    described = http_get(cluster.node(leader), f"/api/topics/{name}")["partitions"][0]
    assert described["leader"] == leader and follower not in described["in_sync_replicas"], described
    status = subprocess.run(
        [os.environ["BROKER_BIN"], "status", "--http", f"http://127.0.0.1:{cluster.node(leader).http_port}"],
        capture_output=True, text=True, timeout=30,
    )
    assert f"node {leader} of 3" in status.stdout and "1 partition under-replicated" in status.stdout, status

    # min.insync.replicas above the in-sync count refuses acks=all
    # (kafka-python without retries sees the error itself).
    client = AdminClient({"bootstrap.servers": cluster.node(leader).bootstrap})
    def min_insync(value: str) -> None:
        entry = ConfigEntry("min.insync.replicas", value, incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource("topic", name, incremental_configs=[entry])
        client.incremental_alter_configs([resource])[resource].result(timeout=30)

    min_insync("3")
    strict = KafkaProducer(bootstrap_servers=cluster.node(leader).bootstrap, acks="all", retries=0)
    try:
        with pytest.raises(NotEnoughReplicasError):
            strict.send(name, b"refused").get(timeout=30)
    finally:
        strict.close(10)
    min_insync("1")

    cluster.node(follower).start()
    wait_until(
        lambda: sorted(layout(cluster.node(leader).bootstrap, name)[0][2]) == sorted(replicas),
        30,
        what="the returning follower to be back in sync",
    )
    seen = consume_all(cluster.node(leader).bootstrap, name, 1, 400)
    assert seen[0] == acked[0] + more[0]
    cluster.stop()
    check_replicas_identical(cluster, name, 1)


def test_kill_9_of_a_leader_moves_its_partition_to_an_in_sync_replica(fresh_cluster, name):
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 1, 3)
    leader, replicas, _ = layout(cluster.node(1).bootstrap, name)[0]
    acked = produce(cluster.node(leader).bootstrap, name, 300, "before")

    producer = Producer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 0,
        }
    )
    cluster.node(leader).kill()
    killed = time.monotonic()
    # The first acknowledged record after the kill: how long the partition
    # was unavailable to an acks=all producer.
    first = []
    while not first and time.monotonic() - killed < 30:
        producer.produce(name, value=b"probe", on_delivery=lambda e, m: first.append(e) if e is None else None)
        producer.flush(1)
    assert first, "no acknowledged produce within 30 s of the leader's kill"
    took = time.monotonic() - killed
    survivor = next(n for n in cluster.nodes if n.alive())
    new_leader, _, in_sync = layout(survivor.bootstrap, name)[0]
    assert new_leader != leader and leader not in in_sync, (new_leader, in_sync)
    assert took < 10, f"the first acknowledged produce came {took:.1f} s after the kill"
    producer.flush(10)
    after = produce(survivor.bootstrap, name, 300, "after")

    # The old leader returns as a follower, catches up, and the preferred
    # leader (the first replica) leads again.
    cluster.node(leader).start()
    wait_until(
        lambda: layout(survivor.bootstrap, name)[0][0] == replicas[0]
        and sorted(layout(survivor.bootstrap, name)[0][2]) == sorted(replicas),
        30,
        what="the first replica back in sync and leading",
    )
    seen = read_to_end(cluster.node(leader).bootstrap, name, 0)
    for record in acked[0] + after[0]:
        assert seen.count(record) == 1, f"{record!r} is there {seen.count(record)} times"
    order = [seen.index(r) for r in acked[0] + after[0]]
    assert order == sorted(order), "acknowledged records in order"
    cluster.stop()
    check_replicas_identical(cluster, name, 1)


def log_start_on(node, topic: str, partition: int) -> int | None:
    """The partition's log start on one node (its /metrics), `None` when
    the node has no replica of it."""
    wanted = f'sluice_kafka_partition_log_start_offset{{topic="{topic}",partition="{partition}"}}'
    for line in http_get(node, "/metrics", raw=True).splitlines():
        if line.startswith(wanted + " "):
            return int(float(line.split()[-1]))
    return None


def test_records_deleted_on_the_leader_stay_deleted_after_a_failover(fresh_cluster, name):
    """Followers move their log start with the leader's, as Kafka's do:
    DeleteRecords on the leader reaches every replica, and a new leader
    does not serve the deleted records again."""
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 1, 3)
    leader, replicas, _ = layout(cluster.node(1).bootstrap, name)[0]
    acked = produce(cluster.node(leader).bootstrap, name, 200, "before")[0]
    cut = 120
    client = admin(cluster.node(leader).bootstrap)
    [low] = [f.result(timeout=30) for f in client.delete_records([TopicPartition(name, 0, cut)]).values()]
    assert low.low_watermark == cut
    wait_until(
        lambda: all(log_start_on(cluster.node(r), name, 0) == cut for r in replicas),
        30,
        interval=0.3,
        what=f"every replica's log starting at {cut}",
    )
    cluster.node(leader).kill()
    survivor = next(n for n in cluster.nodes if n.alive())
    wait_until(
        lambda: layout(survivor.bootstrap, name)[0][0] not in (leader, -1),
        30,
        interval=0.3,
        what="a new leader",
    )
    new_leader = layout(survivor.bootstrap, name)[0][0]
    consumer = Consumer({"bootstrap.servers": cluster.node(new_leader).bootstrap, "group.id": name})
    try:
        assert consumer.get_watermark_offsets(TopicPartition(name, 0), timeout=10) == (cut, len(acked))
    finally:
        consumer.close()
    assert read_to_end(cluster.node(new_leader).bootstrap, name, 0) == acked[cut:]


def test_a_restarted_leader_serves_what_was_committed_before_its_followers_return(fresh_cluster, name):
    """The high watermark is checkpointed and read back at start, as
    Kafka's replication-offset-checkpoint: a leader started alone (no
    follower to fetch, no quorum) still serves every committed record."""
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 1, 3)
    acked = produce(cluster.bootstrap, name, 100, "committed")[0]
    leader = layout(cluster.node(1).bootstrap, name)[0][0]
    cluster.stop()
    cluster.node(leader).start()
    stored = read_to_end(cluster.node(leader).bootstrap, name, 0)
    assert stored == acked, f"{len(stored)} of {len(acked)} committed records served"


def test_a_write_racing_a_leader_change_never_lands_in_a_follower_log(tmp_path, request):
    """A write node 1 checked its leadership for just before losing it
    (held there 8 s by SLUICE_TEST_APPEND_PAUSE) while the others elect
    another leader, take writes, and node 1 follows again: it is written
    before the change (then cut with the rest of the former leader's
    tail) or refused, never appended to node 1's log as a follower, where
    it would stand in place of the new leader's record at that offset.
    The replicas end byte-identical, with every acknowledged record."""
    topic = "append-race"
    with running_cluster(
        tmp_path,
        name=f"cluster[{request.node.name}]",
        settings={"cluster.replica_lag_max": "2s"},
        proxied=True,
        node_env={1: {"SLUICE_TEST_APPEND_PAUSE": f"{topic}:8000"}},
    ) as cluster:
        cluster.wait_registered(admin)
        create_replicated(cluster.node(2).bootstrap, topic, 3, 3)
        wait_until(
            lambda: all(sorted(isr) == [1, 2, 3] for _, _, isr in layout(cluster.node(2).bootstrap, topic).values()),
            20,
            what="every replica in sync",
        )
        partition = next(p for p, (leader, _, _) in layout(cluster.node(2).bootstrap, topic).items() if leader == 1)
        acked, failed = [], []

        def report(error, message):
            (failed if error is not None else acked).append(error or message.value())

        def producer(node):
            return Producer({
                "bootstrap.servers": cluster.node(node).bootstrap,
                "acks": "all",
                "message.timeout.ms": 60000,
            })

        racing = producer(1)
        racing.produce(topic, partition=partition, value=b"racing", on_delivery=report)
        racing.poll(0)
        time.sleep(1.0)
        cluster.isolate(1)
        wait_until(
            lambda: layout(cluster.node(2).bootstrap, topic)[partition][0] not in (1, -1),
            20,
            interval=0.2,
            what="another leader",
        )
        others = producer(2)
        others.produce(topic, partition=partition, value=b"while cut off", on_delivery=report)
        assert others.flush(20) == 0
        cluster.heal()
        assert racing.flush(60) == 0
        others.produce(topic, partition=partition, value=b"after", on_delivery=report)
        assert others.flush(20) == 0
        assert not failed, failed
        assert sorted(acked) == [b"after", b"racing", b"while cut off"], acked
        wait_until(
            lambda: sorted(layout(cluster.node(2).bootstrap, topic)[partition][2]) == [1, 2, 3],
            30,
            what="node 1 back in sync",
        )
        # The leadership may move back to node 1 (its preferred leader)
        # meanwhile: read once the clients' metadata caught up.
        seen: list[bytes] = []

        def read() -> bool:
            try:
                seen[:] = read_to_end(cluster.node(2).bootstrap, topic, partition)
                return True
            except KafkaException:
                return False

        wait_until(read, 30, interval=0.5, what="the partition read")
        assert sorted(seen) == sorted(acked), seen
        cluster.stop()
        logs = {n: segment_bytes(cluster.node(n), topic, partition) for n in (1, 2, 3)}
        assert logs[1] == logs[2] == logs[3], (
            f"the replicas of partition {partition} differ: sizes {[len(v) for v in logs.values()]}"
        )
