"""Consumer groups on a three-node cluster, as Kafka runs them: committed
offsets live in the replicated topic `__consumer_offsets`; a group's
coordinator is the leader of its partition (`abs(java_hash(group)) %
partitions`); when that leader dies, another in-sync replica leads it,
loads the group's offsets from its log and coordinates the group, and
nothing committed goes backwards, also when the first node returns and
leads again.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from common.broker import wait_until
from test_kafka_cluster import admin, produce
from test_replication import create_replicated

OFFSETS_TOPIC = "__consumer_offsets"
OFFSETS_PARTITIONS = 50  # kafka.offsets_partitions, the default


def java_partition(key: str, partitions: int) -> int:
    """Kafka's partition of a group or a transactional id:
    `Utils.abs(key.hashCode()) % partitions`."""
    h = 0
    for unit in key.encode("utf-16-be").hex(" ", 2).split():
        h = (h * 31 + int(unit, 16)) & 0xFFFFFFFF
    if h >= 2**31:
        h -= 2**32
    return (0 if h == -(2**31) else abs(h)) % partitions


def offsets_partition(group: str) -> int:
    return java_partition(group, OFFSETS_PARTITIONS)


def coordinator(bootstrap: str, group: str) -> int:
    """The coordinator a node names for `group` (FindCoordinator through
    DescribeConsumerGroups)."""
    client = AdminClient({"bootstrap.servers": bootstrap})
    described = client.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    return described.coordinator.id


def offsets_leader(bootstrap: str, group: str) -> tuple[int, list[int], list[int]]:
    """(leader, replicas, in-sync replicas) of the group's offsets partition."""
    topic = admin(bootstrap).list_topics(OFFSETS_TOPIC, timeout=10).topics[OFFSETS_TOPIC]
    partition = topic.partitions[offsets_partition(group)]
    return partition.leader, list(partition.replicas), list(partition.isrs)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int] | None:
    """The group's committed offsets as a client reads them, or None while
    no coordinator answers."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=5)
        return [tp.offset for tp in found]
    except KafkaException:
        return None
    finally:
        consumer.close()


def commit(bootstrap: str, group: str, topic: str, offsets: list[int]) -> bool:
    """Commits `offsets` for partitions 0.. as a simple (assigned) consumer;
    False when the coordinator refused."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in enumerate(offsets)],
            asynchronous=False,
        )
        return True
    except KafkaException:
        return False
    finally:
        consumer.close()


def test_the_coordinator_is_the_leader_of_the_groups_offsets_partition(cluster, name):
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 2, 3)
    # The offsets topic is created when a client first asks for a
    # coordinator; until its leaders are known clients are told to retry.
    assert wait_until(lambda: commit(cluster.bootstrap, name, name, [1, 2]), 60, interval=0.5, what="a first commit")
    metadata = admin(cluster.node(2).bootstrap).list_topics(OFFSETS_TOPIC, timeout=10)
    offsets = metadata.topics[OFFSETS_TOPIC]
    assert offsets.error is None and len(offsets.partitions) == OFFSETS_PARTITIONS
    assert all(len(p.replicas) == 3 for p in offsets.partitions.values())
    leader, _, _ = offsets_leader(cluster.node(2).bootstrap, name)
    for node in cluster.nodes:
        assert coordinator(node.bootstrap, name) == leader
    assert committed(cluster.node(3).bootstrap, name, name, 2) == [1, 2]
    # Every node holds the commit in its replica of the partition.
    for node in cluster.nodes:
        text = (node.data_dir / "logs" / f"{OFFSETS_TOPIC}-{offsets_partition(name)}").glob("*.log")
        assert any(name.encode() in path.read_bytes() for path in text), node.name


def test_committed_offsets_survive_their_coordinator_and_never_go_backwards(fresh_cluster, name):
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 3, 3)
    produce(cluster.node(1).bootstrap, name, 60, "g")

    # A subscribed group consumes and commits what it consumed.
    member = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    member.subscribe([name])
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while seen < 60 and time.monotonic() < deadline:
            message = member.poll(0.5)
            if message is None:
                continue
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                continue
            seen += 1
        assert seen == 60, f"consumed {seen} of 60"
        member.commit(asynchronous=False)
        first = [tp.offset for tp in member.committed([TopicPartition(name, p) for p in range(3)], timeout=10)]
    finally:
        member.close()
    assert sum(first) == 60, first

    leader, replicas, _ = wait_until(
        lambda: (lambda found: found if len(found[2]) == 3 else None)(offsets_leader(cluster.node(1).bootstrap, name)),
        30,
        what="the offsets partition with three in-sync replicas",
    )
    assert coordinator(cluster.bootstrap, name) == leader

    # kill -9 of the coordinator: another in-sync replica leads the offsets
    # partition, coordinates the group and has every commit.
    cluster.node(leader).kill()
    survivor = next(n for n in cluster.nodes if n.alive())
    after_kill = wait_until(
        lambda: committed(survivor.bootstrap, name, name, 3),
        30,
        interval=0.5,
        what="the group's committed offsets from a new coordinator",
    )
    assert after_kill == first, (after_kill, first)
    assert coordinator(survivor.bootstrap, name) != leader
    moved = [o + 5 for o in first]
    assert wait_until(lambda: commit(survivor.bootstrap, name, name, moved), 30, interval=0.5, what="a commit on the new coordinator")

    # The old coordinator returns, catches up and leads its offsets
    # partition again (the preferred leader): it reloads the group from
    # its log and has the newer commit, not the one it had.
    cluster.node(leader).start()
    wait_until(
        lambda: offsets_leader(survivor.bootstrap, name)[0] == replicas[0]
        and len(offsets_leader(survivor.bootstrap, name)[2]) == 3,
        60,
        what="the preferred replica back in sync and leading the offsets partition",
    )
    back = wait_until(
        lambda: committed(cluster.node(replicas[0]).bootstrap, name, name, 3),
        30,
        interval=0.5,
        what="the committed offsets from the returned coordinator",
    )
    assert back == moved, f"committed offsets went backwards: {back} after {moved}"
