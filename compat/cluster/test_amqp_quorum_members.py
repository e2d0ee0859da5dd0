"""Quorum queue membership on a three-node cluster, as RabbitMQ's
`rabbitmq-queues add_member / delete_member / grow / shrink` and
`rebalance`, driven through `sluice queues …` (the admin API): a member
added fetches the queue's partition and counts once in sync, so the queue
keeps its messages when its original member is removed; `grow` and
`shrink` change every quorum queue; `rebalance` spreads leaders that all
sit on one node; refusals are clear errors.
"""

from __future__ import annotations

import json
import subprocess

from common.broker import broker_binary, child_env, unique_name, wait_until
from test_amqp_definitions import channel, queues_on, wait_everywhere
from test_amqp_quorum import QUORUM, publish_confirmed, take
from test_kafka_cluster import admin
from test_replication import http_get


def sluice(node, *args: str) -> subprocess.CompletedProcess:
    """`sluice ARGS` against `node`'s admin API."""
    return subprocess.run(
        [str(broker_binary()), *args, "--http", f"127.0.0.1:{node.http_port}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )


def ok(node, *args: str) -> dict:
    """`sluice ARGS --output json` that succeeds; its answer."""
    done = sluice(node, *args, "--output", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def refused(node, *args: str) -> str:
    """`sluice ARGS` that fails; its error."""
    done = sluice(node, *args)
    assert done.returncode != 0, done.stdout
    return done.stderr


def settled(cluster, queue: str, members: list[int]) -> None:
    """Every node sees `queue` with exactly `members`, all in sync, led by
    one of them."""

    def on(node, _):
        seen = queues_on(node)[queue]
        return (
            sorted(seen["members"]) == sorted(members)
            and sorted(seen["online"]) == sorted(members)
            and seen["node"] in members
        )

    wait_everywhere(cluster, on, f"{queue} on members {members}", timeout=40)


def leaders(node, queues: list[str]) -> dict[str, int]:
    seen = queues_on(node)
    return {queue: seen[queue]["node"] for queue in queues}


def test_members_added_removed_grown_shrunk_and_leaders_rebalanced(fresh_cluster):
    cluster = fresh_cluster
    cluster.wait_registered(admin)
    node1 = cluster.node(1)
    names = [unique_name(f"qq-members-{i}") for i in range(3)]
    with channel(node1) as ch:
        for queue in names:
            ch.queue_declare(queue, durable=True, arguments={**QUORUM, "x-quorum-initial-group-size": 1})
        ch.queue_declare("classic-" + names[0], durable=True)
    wait_everywhere(cluster, lambda node, _: all(q in queues_on(node) for q in names), "the queues")
    first = names[0]
    [original] = queues_on(node1)[first]["members"]
    sent = [f"m-{i}".encode() for i in range(200)]
    publish_confirmed(cluster.node(2), first, sent)

    # Added one at a time: each new member catches up and counts.
    others = [n for n in (1, 2, 3) if n != original]
    members = [original]
    for node_id in others:
        answer = ok(node1, "queues", "add-member", first, str(node_id))
        members.append(node_id)
        assert answer["members"] == members, answer
        settled(cluster, first, members)
    # The original member removed: the queue lives on the new ones, with
    # every confirmed message.
    answer = ok(cluster.node(2), "queues", "delete-member", first, str(original))
    assert sorted(answer["members"]) == sorted(others), answer
    settled(cluster, first, others)
    assert sorted(take(cluster.node(original), first, len(sent))) == sorted(sent)

    # Refusals.
    assert "already a member" in refused(node1, "queues", "add-member", first, str(others[0]))
    assert "not a member" in refused(node1, "queues", "delete-member", first, str(original))
    [alone] = queues_on(node1)[names[1]]["members"]
    assert "last member" in refused(node1, "queues", "delete-member", names[1], str(alone))
    assert "not a quorum queue" in refused(node1, "queues", "add-member", "classic-" + first, "2")
    assert "no queue" in refused(node1, "queues", "add-member", unique_name("missing"), "2")
    assert "not registered" in refused(node1, "queues", "add-member", names[1], "9")
    assert "no node 9" in refused(node1, "queues", "grow", "9")

    # grow: every quorum queue gets every node.
    for node_id in (1, 2, 3):
        ok(node1, "queues", "grow", str(node_id))
    for queue in names:
        settled(cluster, queue, [1, 2, 3])

    # Every leader moved to node 1 (node 1 first in each partition's
    # replicas: the controller elects the preferred replica), then
    # rebalanced: each node leads one of the three.
    partitions = [
        p
        for p in http_get(node1, "/api/cluster")["partitions"]
        if any(p["topic"].startswith(f"__amqp_quorum.{queue}") for queue in names)
    ]
    assert len(partitions) == 3, partitions
    for p in partitions:
        ok(node1, "cluster", "reassign", p["topic"], "0", "1,2,3")
    wait_until(
        lambda: set(leaders(node1, names).values()) == {1},
        40,
        interval=0.3,
        what="every quorum queue led by node 1",
    )
    moved = ok(cluster.node(3), "queues", "rebalance")["moved"]
    assert len(moved) == 2 and all(m["from"] == 1 for m in moved), moved
    wait_everywhere(
        cluster,
        lambda node, _: sorted(leaders(node, names).values()) == [1, 2, 3],
        "the leaders spread over the three nodes",
        timeout=40,
    )
    assert ok(node1, "queues", "rebalance")["moved"] == []
    # /api/cluster on any node counts the quorum queues each node leads,
    # and each live node's client connections (asked over its link).
    with channel(cluster.node(3)):
        nodes = {n["id"]: n for n in http_get(cluster.node(2), "/api/cluster")["nodes"]}
        assert {i: n["quorum_leaders"] for i, n in nodes.items()} == {1: 1, 2: 1, 3: 1}, nodes
        assert nodes[3]["connections"]["amqp"] >= 1, nodes[3]
        assert all(n["connections"] is not None for n in nodes.values()), nodes

    # shrink: node 3 leaves every queue (leaders on it move away); grow
    # `even` brings it back to the queues with two members.
    shrunk = ok(node1, "queues", "shrink", "3")["queues"]
    assert sorted(q["queue"] for q in shrunk) == sorted(names), shrunk
    for queue in names:
        settled(cluster, queue, [1, 2])
    grown = ok(node1, "queues", "grow", "3", "even")["queues"]
    assert sorted(q["queue"] for q in grown) == sorted(names), grown
    for queue in names:
        settled(cluster, queue, [1, 2, 3])
    # The queue that moved around still has nothing but what it was given.
    publish_confirmed(cluster.node(3), first, [b"last"])
    assert take(cluster.node(1), first, 1) == [b"last"]
