"""A KIP-848 consumer group (`group.protocol=consumer`) on a three-node
cluster, its coordinator killed with SIGKILL while it consumes.

Contract: the group's coordinator is the leader of the group's partition of
`__consumer_offsets`, as for classic groups; members that bootstrap through
different nodes find that one coordinator and split a replicated topic's
partitions; when the coordinator dies, another in-sync replica coordinates
the group from its stored membership and the same members go on at their
epochs, owning the same partitions, with no rebalance event at all; with commit-after-processing every record acknowledged with
acks=all is consumed at least once, the group's commits reach the end of
every partition, and no committed offset ever goes backwards, the moment of
the kill included.

The nodes run with a consumer heartbeat interval of 500 ms and a consumer
session timeout of 6 s (the settings the single-node suite uses, see
compat/kafka/test_consumer_protocol.py) and followers leave the in-sync
replicas after 2 s behind, so acks=all goes on without the dead node.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from common.broker import wait_until
from common.cluster import running_cluster
from test_groups import coordinator, offsets_leader
from test_kafka_cluster import admin
from test_replication import create_replicated

PARTITIONS = 4
SETTINGS = {
    "cluster.replica_lag_max": "2s",
    "kafka.group_consumer_heartbeat_interval": "500ms",
    "kafka.group_consumer_session_timeout": "6s",
}
# The first FindCoordinator creates the 50-partition offsets topic.
FIRST_JOIN_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 45.0


@pytest.fixture
def consumer_cluster(tmp_path, request):
    with running_cluster(tmp_path, name=f"cluster[{request.node.name}]", settings=SETTINGS) as instance:
        yield instance


class Member:
    """A consumer-protocol member polled by the test thread, committing each
    record (synchronously) before it polls again; what it owns comes from the
    rebalance callbacks' deltas. Client and commit errors are recorded (a
    dead node causes some), a fatal error fails the test."""

    def __init__(self, bootstrap: str, group: str, topic: str, name: str):
        self.name = name
        self.closed = False
        self.owned: set[int] = set()
        self.events: list[tuple[str, list[int]]] = []
        self.seen: list[tuple[int, int, bytes]] = []
        self.commit_errors: list[KafkaError] = []
        self.errors: list[KafkaError] = []
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "broker.address.family": "v4",
                "group.id": group,
                "client.id": name,
                "group.protocol": "consumer",
                "max.poll.interval.ms": 30000,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "error_cb": self.errors.append,
            }
        )
        self.consumer.subscribe(
            [topic],
            on_assign=lambda _c, ps: self._changed("assign", ps),
            on_revoke=lambda _c, ps: self._changed("revoke", ps),
            on_lost=lambda _c, ps: self._changed("lost", ps),
        )

    def _changed(self, kind, partitions):
        delta = sorted(tp.partition for tp in partitions)
        self.events.append((kind, delta))
        if kind == "assign":
            self.owned.update(delta)
        else:
            self.owned.difference_update(delta)

    def values(self) -> list[bytes]:
        return [value for _, _, value in self.seen]

    def step(self) -> None:
        if self.closed:
            return
        msg = self.consumer.poll(0.05)
        if msg is None:
            return
        if msg.error():
            error = msg.error()
            if error.code() == KafkaError._FATAL or error.fatal():
                raise AssertionError(f"{self.name}: fatal consumer error {error}")
            if error.code() != KafkaError._PARTITION_EOF:
                self.errors.append(error)
            return
        self.seen.append((msg.partition(), msg.offset(), msg.value()))
        try:
            self.consumer.commit(message=msg, asynchronous=False)
        except KafkaException as err:
            self.commit_errors.append(err.args[0])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.consumer.close()


class Feeder:
    """Produces unique values `v-<n>` (acks=all, idempotent) at a steady
    rate while the test polls the members; keeps what was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, rate: float = 40.0):
        self.topic = topic
        self.rate = rate
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "broker.address.family": "v4",
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.timeout.ms": 60000,
            }
        )
        self.sent = 0
        self.acked: set[bytes] = set()
        self.failed: list[tuple[KafkaError, bytes]] = []
        self.started = time.monotonic()

    def _report(self, err, msg):
        if err is None:
            self.acked.add(msg.value())
        else:
            self.failed.append((err, msg.value()))

    def tick(self) -> None:
        due = int((time.monotonic() - self.started) * self.rate) - self.sent
        for _ in range(max(due, 0)):
            key, value = f"k-{self.sent % 31}".encode(), f"v-{self.sent}".encode()
            self.producer.produce(self.topic, key=key, value=value, on_delivery=self._report)
            self.sent += 1
        self.producer.poll(0)

    def finish(self) -> set[bytes]:
        remaining = self.producer.flush(90)
        assert remaining == 0, f"{remaining} records neither acknowledged nor failed after 90 s"
        assert len(self.acked) + len(self.failed) == self.sent
        return set(self.acked)


class CommittedOffsets:
    """Reads the group's committed offsets about three times a second from
    a thread of its own and keeps every answer; an unanswered read is
    skipped. It reads through a consumer that never subscribes (OffsetFetch
    with no member, as the admin API sends it), not through an AdminClient:
    librdkafka 2.16.0's admin client, reading offsets this way across the
    coordinator's kill, aborted the whole test process twice in a row (the
    assertion `eonce->refcnt > 0` of rdkafka_queue.h, on its
    coordinator-request path)."""

    def __init__(self, bootstrap: str, group: str, topic: str):
        self.reader = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "broker.address.family": "v4",
                "group.id": group,
                "enable.auto.commit": False,
            }
        )
        self.partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.unanswered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=20)

    def _run(self) -> None:
        deadline = time.monotonic() + 300  # stopped long before
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                found = {tp.partition: tp.offset for tp in self.reader.committed(self.partitions, timeout=5)}
                with self._lock:
                    self.samples.append((time.monotonic(), found))
            except KafkaException:  # no coordinator for a moment: skip this read
                self.unanswered += 1
            self._stop.wait(0.3)
        self.reader.close()

    def samples_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for at, _ in self.samples if at >= moment)

    def backwards(self) -> list[tuple[int, int, int]]:
        """(partition, highest earlier offset, later offset) for every read
        below an earlier one; once a partition has a commit, reading none
        (a negative offset) is going backwards too."""
        highest: dict[int, int] = {}
        found = []
        with self._lock:
            samples = list(self.samples)
        for _, offsets in samples:
            for partition, offset in offsets.items():
                best = highest.get(partition)
                if best is not None and offset < best:
                    found.append((partition, best, offset))
                if offset >= 0 and (best is None or offset > best):
                    highest[partition] = offset
        return found


def drive(members, until, timeout: float, what: str, feeder: Feeder | None = None) -> None:
    """Polls every member and ticks `feeder` until `until()` holds; fails
    with the members' state after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        run_for(members, 0, feeder)
        if until():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; owned {[sorted(m.owned) for m in members]}, "
                f"consumed {[len(m.seen) for m in members]}, "
                f"recent client errors {[[str(e) for e in m.errors[-3:]] for m in members]}"
            )


def run_for(members, seconds: float, feeder: Feeder | None = None) -> None:
    """Polls every member (at least once) and ticks `feeder` for `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        for member in members:
            member.step()
        if feeder is not None:
            feeder.tick()
        if time.monotonic() >= deadline:
            return


def split_evenly(members) -> bool:
    owned = [m.owned for m in members]
    return all(len(o) == PARTITIONS // len(members) for o in owned) and set().union(*owned) == set(range(PARTITIONS))


def describe(bootstrap: str, group: str):
    client = AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})
    return client.describe_consumer_groups([group], request_timeout=30)[group].result(timeout=40)


def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    client = AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(PARTITIONS)])]
    [future] = client.list_consumer_group_offsets(request, request_timeout=10).values()
    return {tp.partition: tp.offset for tp in future.result(timeout=15).topic_partitions}


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{time.monotonic_ns()}"})
    try:
        return {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    finally:
        reader.close()


def test_a_consumer_group_rides_out_kill_9_of_its_coordinator(consumer_cluster, name):
    cluster = consumer_cluster
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, PARTITIONS, 3)
    group = topic = name
    feeder = Feeder(cluster.bootstrap, topic)
    members = [Member(cluster.node(n).bootstrap, group, topic, f"via-node-{n}") for n in (1, 2)]
    committed = CommittedOffsets(cluster.bootstrap, group, topic)
    try:
        drive(members, lambda: split_evenly(members) and all(m.seen for m in members), FIRST_JOIN_TIMEOUT_S,
              "2 members, bootstrapped through nodes 1 and 2, to own 2 partitions each and consume", feeder)
        committed.start()
        member_ids = {m.consumer.memberid() for m in members}
        assert len(member_ids) == 2 and None not in member_ids, member_ids

        # The offsets partition fully replicated, so its next leader has
        # every commit; that leader coordinates the group.
        leader, _, _ = wait_until(
            lambda: (lambda found: found if len(found[2]) == 3 else None)(offsets_leader(cluster.bootstrap, group)),
            30,
            what="the group's offsets partition with three in-sync replicas",
        )
        assert coordinator(cluster.bootstrap, group) == leader
        run_for(members, 2.0, feeder)

        events_at_kill = {m.name: len(m.events) for m in members}
        owned_at_kill = {m.name: set(m.owned) for m in members}
        cluster.node(leader).kill()
        killed_at, sent_at_kill = time.monotonic(), feeder.sent
        survivor = next(n for n in cluster.nodes if n.alive())
        produced_after = lambda: {f"v-{i}".encode() for i in range(sent_at_kill, sent_at_kill + 40)}  # noqa: E731
        drive(members, lambda: produced_after() <= {v for m in members for v in m.values()} and split_evenly(members),
              SETTLE_TIMEOUT_S, "the members to own 2 partitions each again and consume 40 records produced after "
              f"node {leader}, their coordinator, was killed", feeder)
        found = {}

        def rejoined():
            for member in members:
                member.step()
            feeder.tick()
            try:
                found["description"] = describe(survivor.bootstrap, group)
            except KafkaException as err:
                found["error"] = err.args[0]
                return False
            described = found["description"]
            return (
                described.coordinator.id != leader
                and described.state == ConsumerGroupState.STABLE
                and {m.member_id for m in described.members} == member_ids
            )

        try:
            wait_until(rejoined, SETTLE_TIMEOUT_S, interval=0.2, what="the group stable on a new coordinator")
        except AssertionError as err:
            last = found.get("description")
            raise AssertionError(
                f"{err}; last seen: coordinator {last and last.coordinator.id}, state {last and last.state}, "
                f"members {last and sorted(m.member_id for m in last.members)} (ours {sorted(member_ids)}), "
                f"last error {found.get('error')}"
            ) from None
        described = found["description"]
        assert coordinator(survivor.bootstrap, group) == described.coordinator.id
        assignments = {m.member_id: sorted(tp.partition for tp in m.assignment.topic_partitions)
                       for m in described.members}
        assert {m.consumer.memberid(): sorted(m.owned) for m in members} == assignments, assignments
        # The new coordinator loaded the group's stored membership: the
        # members went on at their epochs, none lost or gave up a partition.
        since_kill = {m.name: m.events[events_at_kill[m.name]:] for m in members}
        assert not any(since_kill.values()), f"rebalance events after the coordinator's kill: {since_kill}"
        assert {m.name: set(m.owned) for m in members} == owned_at_kill
        run_for(members, 2.0, feeder)

        produced = feeder.finish()
        consumed = lambda: {v for m in members for v in m.values()}  # noqa: E731
        drive(members, lambda: produced <= consumed(), SETTLE_TIMEOUT_S, "every acknowledged record consumed")
        run_for(members, 1.0)
    finally:
        committed.stop()
        for member in members:
            try:
                member.close()
            except Exception:  # noqa: BLE001 - teardown must close the other
                pass

    missing = produced - consumed()
    assert not missing, f"{len(missing)} acknowledged records never consumed, e.g. {sorted(missing)[:5]}"
    ends = end_offsets(survivor.bootstrap, topic)
    final = group_offsets(survivor.bootstrap, group, topic)
    assert final == ends, (
        f"the group's commits {final} are not the end offsets {ends}; commit errors "
        f"{[dict(Counter(e.name() for e in m.commit_errors)) for m in members]}"
    )
    assert committed.samples_since(killed_at) >= 3, f"{committed.samples_since(killed_at)} reads after the kill"
    backwards = committed.backwards()
    assert not backwards, f"committed offsets went backwards (partition, before, after): {backwards[:10]}"
