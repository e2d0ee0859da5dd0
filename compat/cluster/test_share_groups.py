"""A share group (KIP-932) on a three-node cluster, with librdkafka's share
consumer through confluent-kafka 2.16.1.

Contract: a share group's membership (ShareGroupHeartbeat) lives on its
coordinator, the leader of the group's partition of `__consumer_offsets`,
while its share state lives on the leader of each partition it reads, where
members send ShareFetch and ShareAcknowledge; the two may be different
nodes. Two members, bootstrapped through different nodes, share one
replicated partition (replication 3) in implicit mode: every record
acknowledged with acks=all is delivered and accepted exactly once, and
afterwards nothing is left for a new member. Its start offset altered through the
coordinator (AlterShareGroupOffsets), a member gets exactly the records from
there; deleted (DeleteGroups), the group's state is gone from every node: a
group of the same id reads everything anew.

The test picks a group name whose coordinator is not the partition's leader
(it computes each candidate's offsets partition, as Kafka does, and reads
that partition's leader from Metadata) and checks with FindCoordinator that
it is so; if no candidate fits it still runs and prints that they coincide.
The nodes run with `share_auto_offset_reset = "earliest"` and 2 s record
locks.
"""

from __future__ import annotations

import time
from collections import Counter

import pika
import pytest
from confluent_kafka import AcknowledgeType, KafkaError, KafkaException, Producer, ShareConsumer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, ResourceType

from common.broker import api_get, unique_name, wait_until
from common.cluster import running_cluster
from common.share_admin import NONE, alter_share_offsets, describe_share_offsets, until_empty
from test_groups import OFFSETS_TOPIC, coordinator, offsets_partition
from test_kafka_cluster import admin, layout
from test_replication import create_replicated

LOCK_S = 2.0
SETTINGS = {
    "kafka.share_auto_offset_reset": "earliest",
    "kafka.group_share_record_lock_duration": f"{LOCK_S:.0f}s",
}
# The first FindCoordinator creates the 50-partition offsets topic.
FIRST_COORDINATOR_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0


@pytest.fixture
def share_cluster(tmp_path, request):
    with running_cluster(tmp_path, name=f"cluster[{request.node.name}]", settings=SETTINGS) as instance:
        yield instance


class ShareMember:
    """A ShareConsumer in implicit mode polled by the test thread; keeps
    what it got (value, offset, delivery count) and what the broker
    answered for its acknowledgements (the acknowledgement commit
    callback). A fatal client error fails the test at once."""

    def __init__(self, bootstrap: str, group: str, topic: str, name: str):
        self.name = name
        self.closed = False
        self.deliveries: list[tuple[bytes, int, int]] = []
        self.acked: list[int] = []
        self.ack_failures: list[tuple[list[int], str]] = []
        self.commit_failures: list[str] = []
        self.errors: list[KafkaError] = []
        self.consumer = ShareConsumer(
            {
                "bootstrap.servers": bootstrap,
                "broker.address.family": "v4",
                "group.id": group,
                "client.id": name,
                "max.poll.records": 10,
                "socket.timeout.ms": 20000,
                "error_cb": self.errors.append,
            }
        )
        self.consumer.set_acknowledgement_commit_callback(self._acknowledged)
        self.consumer.subscribe([topic])

    def _acknowledged(self, offsets, exception):
        found = sorted(offset for done in offsets.values() for offset in done)
        if exception is None:
            self.acked.extend(found)
        else:
            self.ack_failures.append((found, str(exception)))

    def values(self) -> list[bytes]:
        return [value for value, _, _ in self.deliveries]

    def step(self) -> None:
        if self.closed:
            return
        for msg in self.consumer.poll(0.1):
            error = msg.error()
            if error is None:
                self.deliveries.append((msg.value(), msg.offset(), msg.delivery_count()))
            elif error.fatal() or error.code() == KafkaError._FATAL:
                raise AssertionError(f"{self.name}: fatal consumer error {error}")
            else:
                self.errors.append(error)

    def commit(self) -> None:
        for _, error in self.consumer.commit_sync(30).items():
            if error is not None:
                self.commit_failures.append(str(error))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.consumer.close()

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.deliveries)} delivered (last {self.deliveries[-3:]}), {len(self.acked)} acked, "
            f"ack failures {self.ack_failures[:2]}, commit failures {self.commit_failures[:2]}, "
            f"errors {[str(e) for e in self.errors[-3:]]}"
        )


def drive(members, until, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for member in members:
            member.step()
        if until():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; " + "; ".join(m.summary() for m in members)
            )


def run_for(members, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for member in members:
            member.step()


def produce_acked(bootstrap: str, topic: str, count: int) -> dict[bytes, int]:
    """acks=all, idempotent, to partition 0; returns {value: offset}."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    acked: dict[bytes, int] = {}
    failed = []

    def report(error, message):
        if error is None:
            acked[message.value()] = message.offset()
        else:
            failed.append(error)

    for i in range(count):
        producer.produce(topic, value=f"v-{i}".encode(), partition=0, on_delivery=report)
        producer.poll(0)
    left = producer.flush(30)
    assert left == 0 and not failed and len(acked) == count, f"{left} unacknowledged, failures {failed[:3]}"
    return acked


def offsets_leaders(bootstrap: str) -> dict[int, int]:
    """{offsets partition: leader} once every partition has a leader."""
    def known():
        topic = admin(bootstrap).list_topics(OFFSETS_TOPIC, timeout=10).topics.get(OFFSETS_TOPIC)
        if topic is None or topic.error is not None or not topic.partitions:
            return None
        leaders = {p.id: p.leader for p in topic.partitions.values()}
        return leaders if all(leader >= 0 for leader in leaders.values()) else None

    return wait_until(known, 30, interval=0.3, what=f"a leader for every partition of {OFFSETS_TOPIC}")


def amqp_parameters(node) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(host="127.0.0.1", port=node.amqp_port, virtual_host="/",
                                     blocked_connection_timeout=30, socket_timeout=30)


def first_coordinator(bootstrap: str, group: str) -> int:
    """FindCoordinator for `group`, retried while the offsets topic is
    created (clients are told to retry until its leaders are known)."""
    def found():
        try:
            return coordinator(bootstrap, group)
        except KafkaException:
            return None

    return wait_until(found, FIRST_COORDINATOR_TIMEOUT_S, interval=0.5, what=f"a coordinator for {group}")


def test_two_members_share_a_replicated_partition_led_away_from_the_coordinator_and_accept_each_record_once(
    share_cluster, name
):
    cluster = share_cluster
    cluster.wait_registered(admin)
    topic = name
    create_replicated(cluster.node(1).bootstrap, topic, 1, 3)
    leader, replicas, _ = wait_until(
        lambda: (lambda view: view[0] if view[0][0] >= 0 else None)(layout(cluster.node(2).bootstrap, topic)),
        30,
        what=f"a leader for {topic}",
    )
    assert sorted(replicas) == [1, 2, 3], f"replicas {replicas}"

    first_coordinator(cluster.bootstrap, unique_name("warm-up"))
    leaders = offsets_leaders(cluster.bootstrap)
    candidates = [unique_name(f"share-{i}") for i in range(40)]
    group = next((g for g in candidates if leaders[offsets_partition(g)] != leader), candidates[0])
    found = first_coordinator(cluster.bootstrap, group)
    assert found == leaders[offsets_partition(group)], (
        f"FindCoordinator names node {found} for {group}, the leader of its offsets partition "
        f"{offsets_partition(group)} is {leaders[offsets_partition(group)]}"
    )
    if found == leader:
        print(f"no candidate group is coordinated away from node {leader}, the partition leader; running anyway")
    print(f"group {group}: coordinator node {found}, partition leader node {leader}")

    members = [ShareMember(cluster.node(n).bootstrap, group, topic, f"via-node-{n}") for n in (1, 2)]
    try:
        # Both members join and park a ShareFetch at the leader first.
        run_for(members, 2.0)
        produced = produce_acked(cluster.bootstrap, topic, 200)
        everything = lambda: [v for m in members for v in m.values()]  # noqa: E731
        drive(members, lambda: len(everything()) >= 200, SETTLE_TIMEOUT_S, "the 200 records")
        run_for(members, 0.5)
        for member in members:
            member.commit()  # accepts the last poll (implicit mode)
    finally:
        for member in members:
            try:
                member.close()
            except Exception:  # noqa: BLE001 - teardown must close the other
                pass

    values = everything()
    twice = {v: n for v, n in Counter(values).items() if n > 1}
    assert not twice, f"{len(twice)} records delivered more than once, e.g. {sorted(twice.items())[:5]}"
    assert sorted(values) == sorted(produced), f"missing {sorted(set(produced) - set(values))[:5]}"
    counts = Counter(count for m in members for _, _, count in m.deliveries)
    assert counts == {1: 200}, f"delivery counts {dict(counts)}"
    assert all(m.deliveries for m in members), "; ".join(m.summary() for m in members)
    accepted = Counter(offset for m in members for offset in m.acked)
    assert accepted == Counter(produced.values()), (
        f"accepted more than once {[o for o, n in accepted.items() if n > 1][:5]}, never "
        f"{sorted(set(produced.values()) - set(accepted))[:5]}; " + "; ".join(m.summary() for m in members)
    )
    assert not any(m.ack_failures or m.commit_failures for m in members), "; ".join(m.summary() for m in members)

    late = ShareMember(cluster.node(3).bootstrap, group, topic, "late")
    try:
        run_for([late], LOCK_S + 1.0)
        late.commit()
    finally:
        late.close()
    assert not late.deliveries, f"a new member got records after all were accepted: {late.deliveries[:5]}"

    # AlterShareGroupOffsets through the coordinator: the partition's leader
    # (maybe another node) forgets what it held and loads the new start.
    coordinator_node = cluster.node(found).bootstrap
    assert until_empty(lambda: alter_share_offsets(coordinator_node, group, topic, {0: 150})) == (NONE, {0: NONE})
    assert describe_share_offsets(coordinator_node, group) == (NONE, {topic: {0: (150, NONE)}})
    moved = ShareMember(cluster.node(1).bootstrap, group, topic, "moved")
    try:
        drive([moved], lambda: len(moved.deliveries) >= 50, SETTLE_TIMEOUT_S, "the 50 records from offset 150")
        run_for([moved], 0.5)
        moved.commit()
    finally:
        moved.close()
    assert sorted(o for _, o, _ in moved.deliveries) == list(range(150, 200)), moved.summary()
    assert Counter(c for _, _, c in moved.deliveries) == {1: 50}, moved.summary()

    # Deleting the group deletes its state wherever it is kept (the
    # partition's leader, the state's coordinator): a group of the same id
    # starts anew and reads every record again, each a first delivery.
    client = admin(cluster.node(found).bootstrap)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        try:
            client.delete_consumer_groups([group], request_timeout=30)[group].result(timeout=30)
            break
        except KafkaException as error:
            if error.args[0].code() != KafkaError.NON_EMPTY_GROUP or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    anew = ShareMember(cluster.node(3).bootstrap, group, topic, "anew")
    try:
        drive([anew], lambda: len(anew.deliveries) >= 200, SETTLE_TIMEOUT_S, "the 200 records once more")
        anew.commit()
    finally:
        anew.close()
    assert sorted(anew.values()) == sorted(produced), anew.summary()
    assert Counter(c for _, _, c in anew.deliveries) == {1: 200}, anew.summary()


def test_a_share_group_rides_out_kill_9_of_its_partition_leader_and_nothing_accepted_comes_back(share_cluster, name):
    """The share state is stored through the group's coordinator before each
    answer, so the new leader loads it: records accepted before the kill
    are never delivered again, records acquired but not yet accepted come
    back, and every record acknowledged to the producer is delivered."""
    cluster = share_cluster
    cluster.wait_registered(admin)
    topic = name
    create_replicated(cluster.node(1).bootstrap, topic, 1, 3)

    def in_sync_leader():
        leader, _, isr = layout(cluster.node(1).bootstrap, topic)[0]
        return leader if leader >= 0 and len(isr) == 3 else None

    leader = wait_until(in_sync_leader, 30, what=f"a leader of {topic} with 3 in-sync replicas")
    first_coordinator(cluster.bootstrap, unique_name("warm-up"))
    leaders = offsets_leaders(cluster.bootstrap)
    candidates = [unique_name(f"share-{i}") for i in range(40)]
    group = next((g for g in candidates if leaders[offsets_partition(g)] != leader), None)
    assert group is not None, f"every candidate group is coordinated by node {leader}, the partition leader"
    first_coordinator(cluster.bootstrap, group)
    others = [n for n in (1, 2, 3) if n != leader]
    survivors = ",".join(cluster.node(n).bootstrap for n in others)

    member = ShareMember(survivors, group, topic, "member")
    try:
        run_for([member], 2.0)
        before = produce_acked(survivors, topic, 100)
        drive([member], lambda: len(member.values()) >= 40, SETTLE_TIMEOUT_S, "40 records before the kill")
        member.commit()
        accepted_before = set(member.acked)
        assert accepted_before, member.summary()
        seen_before = len(member.deliveries)

        cluster.node(leader).kill()
        after = produce_acked(survivors, topic, 100)
        produced = {**before, **{v: o for v, o in after.items()}}
        drive(
            [member],
            lambda: set(produced) <= set(member.values()),
            SETTLE_TIMEOUT_S * 2,
            "every record, from the new leader",
        )
        member.commit()
    finally:
        member.close()

    redelivered = [(v, o, c) for v, o, c in member.deliveries[seen_before:] if o in accepted_before]
    assert not redelivered, f"records accepted before the kill were delivered again: {redelivered[:5]}"
    assert set(produced) <= set(member.values()), f"missing {sorted(set(produced) - set(member.values()))[:5]}"
    counts = Counter(c for _, _, c in member.deliveries)
    assert set(counts) <= {1, 2}, f"delivery counts {dict(counts)}"
    print(f"group {group}, leader {leader} killed; {len(accepted_before)} accepted before, "
          f"delivery counts {dict(counts)}")


def test_group_configs_reach_every_node_and_the_leader_dead_letters_by_them(cluster, name):
    """Group configs set through one node are cluster metadata: every node
    describes them, and the partition's leader applies them. On this
    module's cluster (broker defaults: latest reset, delivery limit 5), the
    group's own `share.auto.offset.reset` earliest makes a member read
    records produced before it came, and its `share.delivery.count.limit`
    2 and dead-letter exchange and routing key send each record, released
    every time, to an AMQP queue after exactly two deliveries."""
    cluster.wait_registered(admin)
    topic = name
    exchange, queue = f"{name}-dlx", f"{name}-dead"
    create_replicated(cluster.node(1).bootstrap, topic, 1, 3)
    leader = wait_until(
        lambda: (lambda view: view[0][0] if view[0][0] >= 0 else None)(layout(cluster.node(2).bootstrap, topic)),
        30,
        what=f"a leader for {topic}",
    )
    # A group coordinated away from the partition's leader, so that its
    # records are counted on another node than the one the API asks.
    first_coordinator(cluster.bootstrap, unique_name("warm-up"))
    leaders = offsets_leaders(cluster.bootstrap)
    candidates = [unique_name(f"configured-share-{i}") for i in range(40)]
    group = next((g for g in candidates if leaders[offsets_partition(g)] != leader), candidates[0])
    produced = produce_acked(cluster.bootstrap, topic, 3)
    connection = pika.BlockingConnection(amqp_parameters(cluster.node(3)))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, "dead")
    finally:
        connection.close()

    configs = {
        "share.auto.offset.reset": "earliest",
        "share.delivery.count.limit": "2",
        "sluice.share.dead.letter.exchange": exchange,
        "sluice.share.dead.letter.routing.key": "dead",
    }
    client = admin(cluster.node(1).bootstrap)
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET) for key, value in configs.items()
    ])
    for future in client.incremental_alter_configs([resource]).values():
        future.result(timeout=30)

    def described(node: int) -> dict[str, str] | None:
        node_admin = admin(cluster.node(node).bootstrap)
        (future,) = node_admin.describe_configs([ConfigResource(ResourceType.GROUP, group)]).values()
        entries = future.result(timeout=30)
        shown = {key: entries[key].value for key in configs}
        sources = {ConfigSource(entries[key].source) for key in configs}
        return shown if shown == configs and sources == {ConfigSource.GROUP_CONFIG} else None

    for node in (1, 2, 3):
        wait_until(lambda node=node: described(node), 30, interval=0.3, what=f"node {node} to describe {configs}")

    consumer = ShareConsumer({
        "bootstrap.servers": cluster.node(2).bootstrap,
        "broker.address.family": "v4",
        "group.id": group,
        "client.id": "releasing",
        "share.acknowledgement.mode": "explicit",
        "socket.timeout.ms": 20000,
    })
    counts: dict[bytes, list[int]] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline and not all(len(counts.get(v, [])) >= 2 for v in produced):
            batch = [m for m in consumer.poll(0.2) if m.error() is None]
            for msg in batch:
                counts.setdefault(msg.value(), []).append(msg.delivery_count())
                consumer.acknowledge(msg, AcknowledgeType.RELEASE)
            if batch:
                consumer.commit_sync(30)
        # A released record is available again at once: a third delivery
        # would show up here.
        quiet = time.monotonic() + 2.0
        while time.monotonic() < quiet:
            for msg in consumer.poll(0.2):
                if msg.error() is None:
                    counts.setdefault(msg.value(), []).append(msg.delivery_count())
                    consumer.acknowledge(msg, AcknowledgeType.RELEASE)
    finally:
        consumer.close()
    assert counts == {v: [1, 2] for v in produced}, f"deliveries per record: {counts}"

    connection = pika.BlockingConnection(amqp_parameters(cluster.node(1)))
    try:
        channel = connection.channel()
        letters = []
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while len(letters) < len(produced) and time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                connection.sleep(0.2)
                continue
            reason = (properties.headers or {}).get("x-death-reason")
            letters.append((method.routing_key, reason.decode() if isinstance(reason, bytes) else reason, body))
    finally:
        connection.close()
    assert sorted(letters) == sorted(("dead", "delivery_limit", v) for v in produced), letters

    # The admin API of the group's coordinator shows its records, which the
    # partition's leader holds: counted there when it is another node.
    found = first_coordinator(cluster.bootstrap, group)
    leader = layout(cluster.node(1).bootstrap, topic)[0][0]
    print(f"group {group}: coordinator node {found}, partition leader node {leader}")
    assert found != leader, "no group coordinated away from the partition's leader: the API would count locally"

    shown = api_get(cluster.node(found), f"/api/groups/{group}")
    partitions = [(p["topic"], p["partition"], p["archived"]) for p in shown["share_partitions"]]
    assert partitions == [(topic, 0, len(produced))], f"node {found}: {shown['share_partitions']}"
    assert shown["records"]["archived"] == len(produced), f"node {found}: {shown['records']}"
