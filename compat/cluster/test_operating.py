"""Operating a three-node cluster: a node the controller stops hearing from
is fenced (Kafka clients no longer see it, its replicas are offline, a
partition only it held has no leader), the admin API, `/metrics` and
`sluice cluster status` say so, and all of it clears when the node
returns; ElectLeaders (confluent-kafka) and `sluice cluster
elect-leaders` answer as Kafka's do.
"""

from __future__ import annotations

import subprocess

from confluent_kafka import ElectionType, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common.broker import broker_binary, child_env, wait_until
from test_kafka_cluster import admin, layout
from test_replication import create_replicated, http_get


def cli(node, *args: str) -> str:
    """`sluice ARGS` against a node's admin API; its output."""
    done = subprocess.run(
        [str(broker_binary()), *args, "--http", f"127.0.0.1:{node.http_port}"],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def brokers_seen(bootstrap: str) -> set[int]:
    return set(admin(bootstrap).list_topics(timeout=10).brokers)


def test_a_silent_node_is_fenced_its_partitions_offline_until_it_returns(fresh_cluster, name):
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    replicated, single = f"{name}-r", f"{name}-s"
    create_replicated(cluster.node(1).bootstrap, replicated, 3, 3)
    creator = AdminClient({"bootstrap.servers": cluster.node(1).bootstrap})  # alive until resolved
    creator.create_topics([NewTopic(single, 3, 1)], operation_timeout=15)[single].result(timeout=30)
    on_node_3 = next(p for p, (leader, _, _) in layout(cluster.node(1).bootstrap, single).items() if leader == 3)

    cluster.node(3).kill()
    wait_until(lambda: brokers_seen(cluster.node(1).bootstrap) == {1, 2}, 30, interval=0.3, what="node 3 fenced")
    # The partition only node 3 held has no leader; the replicated ones
    # moved to live replicas (each a command of its own after the fencing:
    # waited for, as a loaded machine applies them later).
    wait_until(
        lambda: all(leader in (1, 2) for leader, _, _ in layout(cluster.node(2).bootstrap, replicated).values())
        and http_get(cluster.node(1), "/api/cluster")["under_replicated_partitions"] == 3,
        30,
        interval=0.3,
        what="the replicated partitions led by live nodes",
    )
    metadata = admin(cluster.node(2).bootstrap).list_topics(single, timeout=10).topics[single]
    offline = metadata.partitions[on_node_3]
    assert offline.leader == -1, offline
    assert offline.error is not None and offline.error.code() == KafkaError.LEADER_NOT_AVAILABLE, offline.error
    assert all(leader in (1, 2) for leader, _, _ in layout(cluster.node(2).bootstrap, replicated).values())

    view = http_get(cluster.node(1), "/api/cluster")
    fenced = {n["id"]: n["fenced"] for n in view["nodes"]}
    assert fenced == {1: False, 2: False, 3: True}, view["nodes"]
    assert view["offline_partitions"] == 1, view
    lost = next(p for p in view["partitions"] if p["topic"] == single and p["partition"] == on_node_3)
    assert lost["leader"] == -1 and lost["offline"] and lost["offline_replicas"] == [3], lost
    assert view["under_replicated_partitions"] == 3, view
    metrics = http_get(cluster.node(1), "/metrics", raw=True)
    assert "sluice_cluster_offline_partitions 1" in metrics
    assert "sluice_cluster_fenced_nodes 1" in metrics
    status = cli(cluster.node(1), "cluster", "status")
    assert "fenced" in status and "1 offline" in status, status
    assert single in status, status

    # Unclean election cannot help a partition whose only replica is gone;
    # a preferred election for it has nobody to elect either.
    client = AdminClient({"bootstrap.servers": cluster.node(1).bootstrap})
    for kind, expected in ((ElectionType.UNCLEAN, "ELIGIBLE_LEADERS_NOT_AVAILABLE"),
                           (ElectionType.PREFERRED, "PREFERRED_LEADER_NOT_AVAILABLE")):
        result = client.elect_leaders(kind, [TopicPartition(single, on_node_3)]).result(timeout=30)
        error = result[TopicPartition(single, on_node_3)]
        assert error is not None and error.name() == expected, (kind, error)

    cluster.node(3).start()
    wait_until(lambda: brokers_seen(cluster.node(1).bootstrap) == {1, 2, 3}, 30, interval=0.3, what="node 3 unfenced")
    wait_until(
        lambda: http_get(cluster.node(1), "/api/cluster")["under_replicated_partitions"] == 0,
        60,
        interval=0.5,
        what="every replica back in sync",
    )
    view = http_get(cluster.node(2), "/api/cluster")
    assert view["offline_partitions"] == 0 and not any(n["fenced"] for n in view["nodes"]), view
    assert layout(cluster.node(2).bootstrap, single)[on_node_3][0] == 3
    # Preferred leaders are back (the controller moves them), so a
    # preferred election has nothing to do, through Kafka and the CLI.
    wait_until(
        lambda: all(leader == replicas[0] for leader, replicas, _ in layout(cluster.node(1).bootstrap, replicated).values()),
        30,
        interval=0.3,
        what="preferred leaders back",
    )
    result = client.elect_leaders(
        ElectionType.PREFERRED, [TopicPartition(replicated, p) for p in range(3)]
    ).result(timeout=30)
    assert all(error is not None and error.name() == "ELECTION_NOT_NEEDED" for error in result.values()), result
    elected = cli(cluster.node(3), "cluster", "elect-leaders", "--topic", replicated)
    assert elected.count("not needed") == 3, elected
    assert "6 partitions, 0 under-replicated, 0 offline" in cli(cluster.node(3), "cluster", "status")
