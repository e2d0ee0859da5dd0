"""Network faults on a three-node cluster whose inter-node links each go
through a fault-injecting proxy (clients reach every node directly):

- a partition's leader cut off from the others: the majority moves the
  partition to an in-sync replica and acks=all goes on there; the cut-off
  leader acknowledges nothing with acks=all (its followers cannot fetch
  and the controller cannot hear it); after healing it follows the new
  leader, cuts what only it had, and the replicas are byte-identical;
- a follower whose outgoing traffic is held (a one-way partition) leaves
  the in-sync replicas and acks=all goes on without it; healed, it
  catches up and returns.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer

from common.broker import wait_until
from test_kafka_cluster import admin, layout, produce
from test_replication import check_replicas_identical, create_replicated, read_to_end


def majority_bootstrap(cluster, excluded: int) -> str:
    return ",".join(n.bootstrap for i, n in enumerate(cluster.nodes, start=1) if i != excluded)


def test_a_leader_cut_off_from_the_others_loses_its_partition_and_acknowledges_nothing(proxied_cluster, name):
    cluster = proxied_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 1, 3)
    before = produce(cluster.bootstrap, name, 100, "before")[0]
    leader, replicas, _ = layout(cluster.node(1).bootstrap, name)[0]
    others = [n for n in (1, 2, 3) if n != leader]

    cluster.isolate(leader)
    try:
        # The majority moves the partition to an in-sync replica.
        wait_until(
            lambda: layout(cluster.node(others[0]).bootstrap, name)[0][0] in others,
            30,
            interval=0.3,
            what="a new leader on the majority side",
        )
        during = produce(majority_bootstrap(cluster, leader), name, 100, "during")[0]

        # The cut-off leader takes the record but cannot have it
        # replicated: acks=all is never answered.
        cut_off = Producer(
            {
                "bootstrap.servers": cluster.node(leader).bootstrap,
                "acks": "all",
                "message.timeout.ms": 4000,
                "retries": 0,
            }
        )
        outcome = []
        cut_off.produce(name, value=b"unacknowledged", partition=0, on_delivery=lambda e, m: outcome.append(e))
        cut_off.flush(10)
        assert len(outcome) == 1 and outcome[0] is not None, f"acknowledged while cut off: {outcome}"
    finally:
        cluster.heal()

    # Healed: every replica back in sync, the old leader follows (and may
    # lead again as the preferred replica).
    wait_until(
        lambda: sorted(layout(cluster.node(others[0]).bootstrap, name)[0][2]) == sorted(replicas),
        60,
        interval=0.3,
        what="every replica back in sync after healing",
    )
    after = produce(cluster.bootstrap, name, 100, "after")[0]
    acked = before + during + after
    # The preferred leader may take the partition back meanwhile; a new
    # leader's high watermark catches up once its followers fetch from it
    # (as Kafka's), so the read is asked again until it covers what was
    # acknowledged (or the time is up and the checks below say what is
    # missing).
    deadline = time.monotonic() + 30
    while True:
        current = layout(cluster.node(others[0]).bootstrap, name)[0][0]
        stored = read_to_end(cluster.node(current).bootstrap, name, 0)
        if set(acked) <= set(stored) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for record in acked:
        assert stored.count(record) == 1, f"{record!r} is there {stored.count(record)} times"
    order = [stored.index(r) for r in acked]
    assert order == sorted(order), "acknowledged records in order"
    assert b"unacknowledged" not in stored, "the cut-off leader's record was kept: logs diverged"
    cluster.stop()
    check_replicas_identical(cluster, name, 1)


def test_a_follower_that_cannot_send_leaves_the_in_sync_replicas_and_returns(proxied_cluster, name):
    cluster = proxied_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, 1, 3)
    produce(cluster.bootstrap, name, 50, "before")
    leader, replicas, _ = layout(cluster.node(1).bootstrap, name)[0]
    follower = next(r for r in replicas if r != leader)

    cluster.mute(follower)
    try:
        wait_until(
            lambda: follower not in layout(cluster.node(leader).bootstrap, name)[0][2],
            30,
            interval=0.3,
            what="the muted follower out of the in-sync replicas",
        )
        assert layout(cluster.node(leader).bootstrap, name)[0][0] == leader
        during = produce(majority_bootstrap(cluster, follower), name, 100, "during")[0]
        assert len(during) == 100
    finally:
        cluster.heal()

    wait_until(
        lambda: sorted(layout(cluster.node(leader).bootstrap, name)[0][2]) == sorted(replicas),
        60,
        interval=0.3,
        what="the follower back in the in-sync replicas",
    )
    produce(cluster.bootstrap, name, 50, "after")
    cluster.stop()
    check_replicas_identical(cluster, name, 1)
