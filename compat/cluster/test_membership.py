"""Changing a cluster's members and moving replicas: a node that is not a
voter joins a running three-node cluster (Kafka clients see four
brokers); a partition moves onto it with AlterPartitionReassignments
(kafka-python's protocol classes) while a producer writes, and
ListPartitionReassignments shows the move until the new replica is in
sync; then `sluice cluster decommission` moves every replica off a node
and takes it out of the cluster. Every acknowledged record is read back
once, in order, from the replicas the partition ends on (records
deleted with DeleteRecords before the move excepted: the new replica
starts where its leader's log starts), and the new layout survives a
restart of every node.
"""

from __future__ import annotations

import threading

from confluent_kafka import TopicPartition
from kafka import KafkaAdminClient
from kafka.protocol.admin import AlterPartitionReassignmentsRequest, ListPartitionReassignmentsRequest

from common.broker import wait_until
from test_kafka_cluster import admin, layout
from test_nemesis import Writer
from test_operating import cli
from test_replication import create_replicated, http_get, read_to_end


def kafka_python(node) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=node.bootstrap, request_timeout_ms=30000)


def alter_reassignment(node, topic: str, partition: int, replicas: list[int] | None) -> int:
    """AlterPartitionReassignments for one partition (None cancels its
    move); the partition's error code."""
    client = kafka_python(node)
    try:
        request = AlterPartitionReassignmentsRequest[0](
            timeout_ms=30000, topics=[(topic, [(partition, replicas, {})], {})], tags={}
        )
        response = client.send_request(request)
    finally:
        client.close()
    assert response.error_code == 0, response
    [(name, [(index, code, message, _)], _)] = response.responses
    assert (name, index) == (topic, partition)
    return code


def list_reassignments(node) -> dict[tuple[str, int], tuple[list[int], list[int], list[int]]]:
    """ListPartitionReassignments for every partition: {(topic, partition):
    (replicas, adding, removing)}."""
    client = kafka_python(node)
    try:
        response = client.send_request(ListPartitionReassignmentsRequest[0](timeout_ms=30000, topics=None, tags={}))
    finally:
        client.close()
    assert response.error_code == 0, response
    return {
        (topic, index): (list(replicas), list(adding), list(removing))
        for topic, partitions, _ in response.topics
        for index, replicas, adding, removing, _ in partitions
    }


def brokers_seen(node) -> list[int]:
    return sorted(admin(node.bootstrap).list_topics(timeout=10).brokers)


def test_a_node_joins_a_partition_moves_onto_it_and_another_node_is_decommissioned(fresh_cluster, name):
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 2, 3)
    before = layout(cluster.node(1).bootstrap, name)
    assert all(sorted(replicas) == [1, 2, 3] for _, replicas, _ in before.values())

    # A fourth node, not among the voters, joins.
    joined = cluster.add_node()
    joined.start()
    wait_until(lambda: brokers_seen(cluster.node(1)) == [1, 2, 3, 4], 30, what="node 4 in Metadata")
    assert brokers_seen(joined) == [1, 2, 3, 4]
    view = http_get(joined, "/api/cluster")
    assert view["node_id"] == 4 and {n["id"] for n in view["nodes"]} == {1, 2, 3, 4}
    # It follows the quorum without voting.
    assert {n["id"] for n in view["nodes"] if n["voter"]} == {1, 2, 3}
    assert [n["role"] for n in view["nodes"] if n["id"] == 4] == ["broker"]

    writer = Writer(cluster.node(1).bootstrap, name, partitions=2)
    writer.thread.start()
    try:
        wait_until(lambda: writer.count() > 300, 30, what="the writer to get going")
        # The leader's log no longer starts at 0: the new replica must
        # start where it does.
        cut = sorted(writer.acked[0])[50][0]
        client = admin(cluster.node(1).bootstrap)  # kept: its futures need it
        deleted = client.delete_records([TopicPartition(name, 0, cut)])
        [low] = [future.result(timeout=30) for future in deleted.values()]
        assert low.low_watermark == cut
        # Partition 0 moves from its three replicas to node 4 and two of them.
        _, replicas, _ = before[0]
        leaving = replicas[0]
        target = [4] + [r for r in replicas if r != leaving]
        assert alter_reassignment(cluster.node(2), name, 0, target) == 0
        moving = list_reassignments(cluster.node(3))
        if (name, 0) in moving:
            assert moving[(name, 0)] == (target + [leaving], [4], [leaving])
        wait_until(
            lambda: layout(cluster.node(1).bootstrap, name)[0][1] == target and not list_reassignments(cluster.node(1)),
            60,
            interval=0.3,
            what="the move of partition 0 onto node 4 to finish",
        )
        leader, replicas, in_sync = layout(cluster.node(1).bootstrap, name)[0]
        assert replicas == target and sorted(in_sync) == sorted(target)
        # Node 4, the first replica, leads it now.
        assert leader == 4
        # A cancel with no move under way is refused as Kafka does.
        assert alter_reassignment(cluster.node(1), name, 0, None) == 85  # NO_REASSIGNMENT_IN_PROGRESS
        assert alter_reassignment(cluster.node(1), name, 1, [1, 2, 9]) == 39  # INVALID_REPLICA_ASSIGNMENT

        # Node 2 is decommissioned: its replicas move away, then it leaves.
        decommissioned = cli(cluster.node(1), "cluster", "decommission", "2")
        assert "decommissioning" in decommissioned
        wait_until(
            lambda: brokers_seen(cluster.node(1)) == [1, 3, 4],
            90,
            interval=0.5,
            what="node 2 to leave the cluster",
        )
        for partition, (leader, replicas, in_sync) in layout(cluster.node(1).bootstrap, name).items():
            assert 2 not in replicas, (partition, replicas)
            assert len(replicas) == 3 and sorted(in_sync) == sorted(replicas), (partition, replicas, in_sync)
        status = cli(cluster.node(3), "cluster", "status")
        assert "0 moving" in status, status
        # Out of the quorum too: two voters are left.
        wait_until(
            lambda: {n["id"] for n in http_get(cluster.node(4), "/api/cluster")["nodes"] if n["voter"]} == {1, 3},
            30,
            what="node 2 out of the quorum",
        )
        wait_until(lambda: writer.count() > 1000, 60, what="writes after the moves")
    finally:
        writer.stopping.set()
        writer.thread.join(180)
    assert not writer.thread.is_alive(), "the writer did not finish"
    cluster.node(2).stop()

    # Every acknowledged record once, in order, from the partitions' new
    # leaders; the layout and data survive a restart of every node.
    def check():
        final = layout(cluster.node(1).bootstrap, name)
        for partition in range(2):
            leader = final[partition][0]
            stored = read_to_end(cluster.node(leader).bootstrap, name, partition)
            acked = [
                value for offset, value in sorted(writer.acked[partition]) if partition != 0 or offset >= cut
            ]
            assert len(stored) == len(set(stored)), f"partition {partition}: a record stored twice"
            positions = {value: index for index, value in enumerate(stored)}
            missing = [v for v in acked if v not in positions]
            assert not missing, f"partition {partition}: {len(missing)} acknowledged records lost"
            order = [positions[v] for v in acked]
            assert order == sorted(order), f"partition {partition}: out of order"
        return final

    final = check()
    assert sum(len(v) for v in writer.acked.values()) == writer.count() > 1000
    for node in (1, 3, 4):
        cluster.node(node).stop()
    for node in (1, 3, 4):
        cluster.node(node).start()
    wait_until(lambda: brokers_seen(cluster.node(4)) == [1, 3, 4], 30, what="the cluster back without node 2")
    wait_until(
        lambda: all(sorted(isr) == sorted(r) for _, r, isr in layout(cluster.node(1).bootstrap, name).values()),
        60,
        interval=0.3,
        what="every replica in sync after the restart",
    )
    assert {p: sorted(r) for p, (_, r, _) in layout(cluster.node(3).bootstrap, name).items()} == {
        p: sorted(r) for p, (_, r, _) in final.items()
    }
    check()
