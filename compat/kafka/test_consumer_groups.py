"""Consumer groups (classic protocol) with real clients that subscribe().

Contract: members of one group split a topic's partitions so that each is
owned by exactly one live member; a member that leaves (close) or dies
(SIGKILL, then its session times out) has its partitions moved to the
others; with commit-after-processing nothing is lost, and a clean rebalance
delivers nothing twice; groups are independent; librdkafka and kafka-python
members share one group through a common assignor; cooperative-sticky
rebalances incrementally; a static member (group.instance.id) that comes
back within its session timeout gets its partitions back without disturbing
the others; the admin API lists, describes and deletes groups and their
offsets; OffsetCommit is checked against member and generation the way
Kafka's coordinator checks it.

Every member here uses session.timeout.ms 6000 and heartbeat.interval.ms
500, and is polled by the test thread in bounded loops (librdkafka and
kafka-python heartbeat from their own threads).
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from support import (
    CLIENT_TIMEOUT_S,
    closing_all,
    confluent_admin,
    confluent_config,
    confluent_producer,
    create_topic_confluent,
    recv_frame,
    request_frame,
    unique_name,
    wait_until,
)

SESSION_TIMEOUT_MS = 6000
GROUP_SETTINGS = {
    "session.timeout.ms": SESSION_TIMEOUT_MS,
    "heartbeat.interval.ms": 500,
    # Also the rebalance timeout librdkafka sends in JoinGroup. Generous: the
    # test thread polls every member in turn, and a stalled CI machine once
    # kept it away from one member for 10 s (the member then left the group).
    "max.poll.interval.ms": 30000,
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
}
# How long a group may take to settle after a membership change.
SETTLE_TIMEOUT_S = 30.0


# --- members and producers ------------------------------------------------------------


class Member:
    """A confluent-kafka consumer in a group, polled by the test thread: it
    processes one message at a time and commits it (synchronously) before it
    polls again. Commit errors are recorded, not raised."""

    def __init__(self, broker, group, topic, name, **extra):
        self.name = name
        self.closed = False
        self.seen: list[tuple[int, int, bytes]] = []  # (partition, offset, value)
        self.commit_errors: list[KafkaError] = []
        self.assigned: list[list[int]] = []
        self.revoked: list[list[int]] = []
        self.lost: list[list[int]] = []
        # The assignment after each poll, to see whether it was ever empty.
        self.history: list[frozenset[int]] = []
        # The longest time between two polls, for the failure message.
        self.last_poll: float | None = None
        self.longest_gap = 0.0
        config = confluent_config(broker, **{**GROUP_SETTINGS, "group.id": group, "client.id": name, **extra})
        self.consumer = Consumer(config)
        self.consumer.subscribe(
            [topic],
            on_assign=lambda _c, ps: self.assigned.append(sorted(p.partition for p in ps)),
            on_revoke=lambda _c, ps: self.revoked.append(sorted(p.partition for p in ps)),
            on_lost=lambda _c, ps: self.lost.append(sorted(p.partition for p in ps)),
        )

    def partitions(self) -> frozenset[int]:
        if self.closed:
            return frozenset()
        return frozenset(tp.partition for tp in self.consumer.assignment())

    def values(self) -> list[bytes]:
        return [value for _, _, value in self.seen]

    def step(self, timeout: float = 0.05) -> None:
        if self.closed:
            return
        now = time.monotonic()
        if self.last_poll is not None:
            self.longest_gap = max(self.longest_gap, now - self.last_poll)
        self.last_poll = now
        msg = self.consumer.poll(timeout)
        self.history.append(self.partitions())
        if msg is None:
            return
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                return
            raise AssertionError(
                f"{self.name}: consumer error {msg.error()} (longest gap between polls {self.longest_gap:.1f} s)"
            )
        self.seen.append((msg.partition(), msg.offset(), msg.value()))
        try:
            self.consumer.commit(message=msg, asynchronous=False)
        except KafkaException as err:
            self.commit_errors.append(err.args[0])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.consumer.close()


@pytest.fixture
def members(broker):
    """Makes Members; closes whatever is left open when the test ends."""
    with closing_all(lambda group, topic, name, **extra: Member(broker, group, topic, name, **extra)) as make:
        yield make


class Feeder:
    """Produces unique values `v-<n>` with keys at a steady rate while the
    test polls its consumers; remembers every delivered value."""

    def __init__(self, broker, topic, rate: float = 50.0):
        self.topic = topic
        self.rate = rate
        self.producer = confluent_producer(broker, **{"acks": "all", "linger.ms": 2})
        self.sent = 0
        self.delivered: set[bytes] = set()
        self.failed: list[tuple[KafkaError, bytes]] = []
        self.started = time.monotonic()

    def _report(self, err, msg):
        if err is None:
            self.delivered.add(msg.value())
        else:
            self.failed.append((err, msg.value()))

    def produce(self, count: int) -> None:
        for _ in range(count):
            value = f"v-{self.sent}".encode()
            self.producer.produce(self.topic, key=f"k-{self.sent % 97}".encode(), value=value, on_delivery=self._report)
            self.sent += 1
        self.producer.poll(0)

    def tick(self) -> None:
        """Produces what the rate allows since the feeder started."""
        due = int((time.monotonic() - self.started) * self.rate) - self.sent
        if due > 0:
            self.produce(due)
        else:
            self.producer.poll(0)

    def finish(self) -> set[bytes]:
        remaining = self.producer.flush(CLIENT_TIMEOUT_S)
        assert remaining == 0, f"{remaining} records undelivered"
        assert not self.failed, f"{len(self.failed)} deliveries failed, first: {self.failed[:3]}"
        assert len(self.delivered) == self.sent
        return set(self.delivered)


def owners(parts: list[frozenset[int]], partitions: int) -> dict[int, int]:
    """How many of the given assignments hold each partition."""
    count = Counter(p for assigned in parts for p in assigned)
    return {p: count.get(p, 0) for p in range(partitions)}


def split_exactly(parts: list[frozenset[int]], partitions: int) -> bool:
    """Every partition is held by exactly one assignment, each assignment holds
    something."""
    return all(parts) and set(owners(parts, partitions).values()) == {1} and sum(map(len, parts)) == partitions


def run_until(active, predicate, timeout: float, what: str, feeder: Feeder | None = None, extra=None):
    """Polls every member (and ticks `feeder`, and calls `extra`) until
    `predicate()` holds; fails with the members' state after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for member in active:
            member.step()
        if feeder is not None:
            feeder.tick()
        if extra is not None:
            extra()
        if predicate():
            return
        if time.monotonic() >= deadline:
            state = {m.name: sorted(m.partitions()) for m in active}
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; assignments {state}")


def run_for(active, seconds: float, feeder: Feeder | None = None, extra=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for member in active:
            member.step()
        if feeder is not None:
            feeder.tick()
        if extra is not None:
            extra()


def duplicates(values) -> dict[bytes, int]:
    return {value: n for value, n in Counter(values).items() if n > 1}


def commit_error_summary(active) -> dict[str, dict[str, int]]:
    """Failed commits per member, counted by error name."""
    return {m.name: dict(Counter(e.name() for e in m.commit_errors)) for m in active if m.commit_errors}


# --- a member in another process ------------------------------------------------------

CHILD_MEMBER = r"""
import json, sys, time
from confluent_kafka import Consumer, KafkaError, KafkaException

config, topic = json.loads(sys.argv[1]), sys.argv[2]

def say(**fields):
    print(json.dumps(fields), flush=True)

consumer = Consumer(config)
consumer.subscribe(
    [topic],
    on_assign=lambda c, ps: say(assigned=[p.partition for p in ps]),
    on_revoke=lambda c, ps: say(revoked=[p.partition for p in ps]),
    on_lost=lambda c, ps: say(revoked=[p.partition for p in ps]),
)
deadline = time.monotonic() + 120  # killed long before; never outlives the test
while time.monotonic() < deadline:
    msg = consumer.poll(0.05)
    if msg is None:
        continue
    if msg.error():
        if msg.error().code() != KafkaError._PARTITION_EOF:
            say(error=str(msg.error()))
        continue
    value = msg.value().decode()
    say(seen=value)
    try:
        consumer.commit(message=msg, asynchronous=False)
        say(committed=value)
    except KafkaException as err:
        say(commit_error=str(err.args[0]))
"""


class ChildMember:
    """A confluent-kafka group member in a subprocess (the venv's Python),
    of a classic group (`settings` GROUP_SETTINGS) or of the new protocol,
    reporting its assignment changes, what it sees and what it commits as
    JSON lines on stdout; killed by its PID."""

    def __init__(self, broker, group, topic, name, settings=None):
        self.name = name
        config = confluent_config(
            broker, **{**(GROUP_SETTINGS if settings is None else settings), "group.id": group, "client.id": name}
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_MEMBER, json.dumps(config), topic],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.events.append(event)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    def partitions(self) -> frozenset[int]:
        if self.proc.poll() is not None:
            return frozenset()
        owned: set[int] = set()
        for event in self.snapshot():
            owned |= set(event.get("assigned", []))
            owned -= set(event.get("revoked", []))
        return frozenset(owned)

    def seen(self) -> list[bytes]:
        return [e["seen"].encode() for e in self.snapshot() if "seen" in e]

    def committed(self) -> set[bytes]:
        return {e["committed"].encode() for e in self.snapshot() if "committed" in e}

    def errors(self) -> list[str]:
        return [e["error"] for e in self.snapshot() if "error" in e]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


# --- tests ------------------------------------------------------------------------------


def test_three_members_split_six_partitions_and_consume_each_message_once(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=6)
    active = [members(group, topic, f"member-{i}") for i in range(3)]
    run_until(active, lambda: split_exactly([m.partitions() for m in active], 6), SETTLE_TIMEOUT_S,
              "3 members to split 6 partitions")
    split = {m.name: m.partitions() for m in active}
    assert all(len(p) == 2 for p in split.values()), f"unbalanced: {split}"

    feeder = Feeder(broker, topic)
    feeder.produce(600)
    produced = feeder.finish()
    run_until(active, lambda: sum(len(m.seen) for m in active) >= len(produced), CLIENT_TIMEOUT_S,
              "all records consumed")
    run_for(active, 1.0)

    # No rebalance while consuming: the split stayed as it was.
    assert {m.name: m.partitions() for m in active} == split
    everything = [v for m in active for v in m.values()]
    assert not duplicates(everything), f"consumed twice: {sorted(duplicates(everything))[:10]}"
    assert set(everything) == produced
    for m in active:
        assert {p for p, _, _ in m.seen} <= split[m.name], f"{m.name} consumed outside its partitions"
    assert not commit_error_summary(active), commit_error_summary(active)


def test_a_member_that_leaves_hands_over_its_partitions_without_duplicates(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=6)
    active = [members(group, topic, f"member-{i}") for i in range(3)]
    run_until(active, lambda: split_exactly([m.partitions() for m in active], 6), SETTLE_TIMEOUT_S,
              "3 members to split 6 partitions")
    # Records flow from here on, so only the rebalance below can duplicate any.
    feeder = Feeder(broker, topic)
    run_for(active, 1.5, feeder=feeder)

    leaving, staying = active[0], active[1:]
    handed_over = leaving.partitions()
    leaving.close()
    run_until(staying, lambda: split_exactly([m.partitions() for m in staying], 6), SETTLE_TIMEOUT_S,
              "2 remaining members to take over all 6 partitions", feeder=feeder)
    assert handed_over <= staying[0].partitions() | staying[1].partitions()
    run_for(staying, 1.0, feeder=feeder)

    produced = feeder.finish()
    everything = lambda: [v for m in active for v in m.values()]  # noqa: E731
    run_until(staying, lambda: produced <= set(everything()), CLIENT_TIMEOUT_S, "every record consumed")
    run_for(staying, 1.0)

    missing = produced - set(everything())
    assert not missing, f"{len(missing)} records never consumed, e.g. {sorted(missing)[:5]}"
    twice = duplicates(everything())
    assert not twice, (
        f"{len(twice)} records consumed twice after a clean rebalance, e.g. {sorted(twice)[:5]}; "
        f"commit errors: {commit_error_summary(active)}"
    )


def test_a_killed_member_loses_its_partitions_after_the_session_timeout(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=6)
    local = [members(group, topic, f"member-{i}") for i in range(2)]
    child = ChildMember(broker, group, topic, "member-child")
    try:
        run_until(local, lambda: split_exactly([m.partitions() for m in local] + [child.partitions()], 6),
                  SETTLE_TIMEOUT_S, "3 members (one in a subprocess) to split 6 partitions")
        # Records flow from here on, so only the kill below can duplicate any.
        feeder = Feeder(broker, topic)
        run_until(local, lambda: len(child.seen()) >= 5, SETTLE_TIMEOUT_S, "the child to consume", feeder=feeder)
        child_partitions = child.partitions()
        child.kill()
        killed_at = time.monotonic()
        run_until(local, lambda: split_exactly([m.partitions() for m in local], 6),
                  SESSION_TIMEOUT_MS / 1000 + SETTLE_TIMEOUT_S, "2 remaining members to take over all 6 partitions",
                  feeder=feeder)
        moved_after = time.monotonic() - killed_at
        assert child_partitions <= local[0].partitions() | local[1].partitions()
        run_for(local, 1.0, feeder=feeder)
    finally:
        child.kill()

    produced = feeder.finish()
    everything = lambda: [v for m in local for v in m.values()] + child.seen()  # noqa: E731
    run_until(local, lambda: produced <= set(everything()), CLIENT_TIMEOUT_S, "every record consumed")
    run_for(local, 1.0)

    missing = produced - set(everything())
    assert not missing, f"{len(missing)} records never consumed, e.g. {sorted(missing)[:5]}"
    # Only what the killed member processed without committing may come again.
    uncommitted = set(child.seen()) - child.committed()
    unexpected = set(duplicates(everything())) - uncommitted
    assert not unexpected, (
        f"{len(unexpected)} records consumed twice that no killed member left uncommitted, "
        f"e.g. {sorted(unexpected)[:5]}; commit errors: {commit_error_summary(local)}"
    )
    assert moved_after >= SESSION_TIMEOUT_MS / 1000 - 1.5, f"partitions moved {moved_after:.1f} s after the kill"


def test_two_groups_each_see_everything(broker, topic, members):
    create_topic_confluent(broker, topic, partitions=2)
    feeder = Feeder(broker, topic)
    feeder.produce(300)
    produced = feeder.finish()
    first = members(unique_name("group-first"), topic, "first")
    second = members(unique_name("group-second"), topic, "second")
    run_until([first, second], lambda: len(first.seen) >= 300 and len(second.seen) >= 300, SETTLE_TIMEOUT_S,
              "both groups to consume everything")
    run_for([first, second], 1.0)
    for member in (first, second):
        assert sorted(member.values()) == sorted(produced), member.name
        assert member.partitions() == {0, 1}


def test_kafka_python_and_librdkafka_members_share_a_group(broker, topic, group, members):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.structs import OffsetAndMetadata

    create_topic_confluent(broker, topic, partitions=4)
    rdkafka = members(group, topic, "librdkafka", **{"partition.assignment.strategy": "roundrobin"})
    kp = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        client_id="kafka-python",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=500,
        max_poll_interval_ms=10000,
        partition_assignment_strategy=[RoundRobinPartitionAssignor],
        request_timeout_ms=30000,
    )
    kp_seen: list[tuple[int, int, bytes]] = []

    def poll_kafka_python():
        for tp, records in kp.poll(timeout_ms=50).items():
            for record in records:
                kp_seen.append((tp.partition, record.offset, record.value))
                kp.commit({KpTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(record.offset + 1, "", -1)})

    def kp_partitions():
        return frozenset(tp.partition for tp in kp.assignment())

    try:
        kp.subscribe([topic])
        run_until([rdkafka], lambda: split_exactly([rdkafka.partitions(), kp_partitions()], 4), SETTLE_TIMEOUT_S,
                  "librdkafka and kafka-python to split 4 partitions", extra=poll_kafka_python)
        split = {"librdkafka": rdkafka.partitions(), "kafka-python": kp_partitions()}

        feeder = Feeder(broker, topic)
        feeder.produce(200)
        produced = feeder.finish()
        everything = lambda: rdkafka.values() + [v for _, _, v in kp_seen]  # noqa: E731
        run_until([rdkafka], lambda: len(everything()) >= len(produced), CLIENT_TIMEOUT_S, "every record consumed",
                  extra=poll_kafka_python)
        run_for([rdkafka], 1.0, extra=poll_kafka_python)

        assert {"librdkafka": rdkafka.partitions(), "kafka-python": kp_partitions()} == split
        assert sorted(everything()) == sorted(produced)
        assert {p for p, _, _ in rdkafka.seen} <= split["librdkafka"]
        assert {p for p, _, _ in kp_seen} <= split["kafka-python"]
        assert not rdkafka.commit_errors, rdkafka.commit_errors

        # Both members' commits landed: the group's offsets are the end offsets.
        admin = confluent_admin(broker)
        request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(4)])]
        [future] = admin.list_consumer_group_offsets(request, request_timeout=CLIENT_TIMEOUT_S).values()
        committed = {tp.partition: tp.offset for tp in future.result(timeout=CLIENT_TIMEOUT_S).topic_partitions}
        ends = {}
        for p in range(4):
            _, high = rdkafka.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
        assert committed == ends
    finally:
        kp.close(autocommit=False)


def test_cooperative_sticky_rebalances_incrementally(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=6)
    cooperative = {"partition.assignment.strategy": "cooperative-sticky"}
    feeder = Feeder(broker, topic)
    first = members(group, topic, "first", **cooperative)
    run_until([first], lambda: first.partitions() == set(range(6)), SETTLE_TIMEOUT_S, "the first member to own all 6",
              feeder=feeder)
    history_start = len(first.history)
    second = members(group, topic, "second", **cooperative)
    both = [first, second]
    run_until(both, lambda: split_exactly([first.partitions(), second.partitions()], 6), SETTLE_TIMEOUT_S,
              "2 cooperative members to split 6 partitions", feeder=feeder)
    run_for(both, 1.0, feeder=feeder)

    assert split_exactly([first.partitions(), second.partitions()], 6)
    assert len(first.partitions()) == 3 and len(second.partitions()) == 3
    # Incremental: the first member only gave up what the second took, and
    # never stood with nothing assigned.
    given_up = {p for revoked in first.revoked for p in revoked}
    assert given_up == set(second.partitions()), f"first revoked {first.revoked}, second owns {second.partitions()}"
    assert all(first.history[history_start:]), "the first member's assignment went empty during the rebalance"
    assert not first.lost and not second.lost

    produced = feeder.finish()
    run_until(both, lambda: produced <= set(first.values() + second.values()), CLIENT_TIMEOUT_S,
              "every record consumed")


def _static_pair(group, topic, members):
    """Two static members; `a` joins first and alone, so it leads the group."""
    instance_a, instance_b = unique_name("static-a"), unique_name("static-b")
    static = {"partition.assignment.strategy": "range"}
    a = members(group, topic, "a", **static, **{"group.instance.id": instance_a})
    run_until([a], lambda: a.partitions() == set(range(6)), SETTLE_TIMEOUT_S, "the first static member to own all 6")
    b = members(group, topic, "b", **static, **{"group.instance.id": instance_b})
    run_until([a, b], lambda: split_exactly([a.partitions(), b.partitions()], 6), SETTLE_TIMEOUT_S,
              "2 static members to split 6 partitions")
    run_for([a, b], 1.0)
    return a, b, {"a": instance_a, "b": instance_b}, static


@pytest.mark.parametrize("restarted", ["follower", "leader"])
def test_a_static_member_back_within_its_session_gets_its_partitions_without_a_rebalance(
    broker, topic, group, members, restarted
):
    create_topic_confluent(broker, topic, partitions=6)
    a, b, instances, static = _static_pair(group, topic, members)
    gone, other = (b, a) if restarted == "follower" else (a, b)
    name = "b" if restarted == "follower" else "a"
    before = {"gone": gone.partitions(), "other": other.partitions()}
    other_events = (len(other.assigned), len(other.revoked), len(other.lost))

    gone.close()  # a static member does not leave the group on close
    back = members(group, topic, name + "-again", **static, **{"group.instance.id": instances[name]})
    run_until([other, back], lambda: back.partitions() and split_exactly([back.partitions(), other.partitions()], 6),
              SETTLE_TIMEOUT_S, "the static member to get its partitions back")
    run_for([other, back], 1.0)

    assert back.partitions() == before["gone"]
    assert other.partitions() == before["other"]
    assert (len(other.assigned), len(other.revoked), len(other.lost)) == other_events, (
        f"the static {restarted}'s return rebalanced the other member: assigned {other.assigned}, "
        f"revoked {other.revoked}, lost {other.lost}"
    )


def _describe(admin, group):
    [future] = admin.describe_consumer_groups([group], request_timeout=CLIENT_TIMEOUT_S).values()
    return future.result(timeout=CLIENT_TIMEOUT_S)


def _listed(admin, **kwargs):
    result = admin.list_consumer_groups(request_timeout=CLIENT_TIMEOUT_S, **kwargs).result(timeout=CLIENT_TIMEOUT_S)
    assert not result.errors, result.errors
    return {listing.group_id: listing for listing in result.valid}


def _group_offsets(admin, group, topic, partitions):
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
    [future] = admin.list_consumer_group_offsets(request, request_timeout=CLIENT_TIMEOUT_S).values()
    return {tp.partition: tp.offset for tp in future.result(timeout=CLIENT_TIMEOUT_S).topic_partitions}


def _delete_error(admin, group):
    [future] = admin.delete_consumer_groups([group], request_timeout=CLIENT_TIMEOUT_S).values()
    try:
        future.result(timeout=CLIENT_TIMEOUT_S)
    except KafkaException as err:
        return err.args[0].code()
    return None


def test_admin_lists_describes_and_deletes_groups(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=2)
    feeder = Feeder(broker, topic)
    feeder.produce(40)
    produced = feeder.finish()
    active = [members(group, topic, f"member-{i}") for i in range(2)]
    consumed_all = lambda: sum(len(m.seen) for m in active) >= len(produced)  # noqa: E731
    run_until(active, lambda: split_exactly([m.partitions() for m in active], 2) and consumed_all(),
              SETTLE_TIMEOUT_S, "2 members to split 2 partitions and consume everything")
    run_for(active, 0.5)
    admin = confluent_admin(broker)

    listed = _listed(admin)
    assert group in listed, f"{group} not in {sorted(listed)}"
    assert listed[group].state == ConsumerGroupState.STABLE
    assert not listed[group].is_simple_consumer_group
    assert group in _listed(admin, states={ConsumerGroupState.STABLE})
    assert group not in _listed(admin, states={ConsumerGroupState.EMPTY})

    described = _describe(admin, group)
    assert described.state == ConsumerGroupState.STABLE
    assert not described.is_simple_consumer_group
    assert described.partition_assignor == "range"  # librdkafka's first choice
    assert sorted(m.client_id for m in described.members) == ["member-0", "member-1"]
    assert sorted(m.member_id for m in described.members) == sorted(m.consumer.memberid() for m in active)
    by_client = {m.client_id: {tp.partition for tp in m.assignment.topic_partitions} for m in described.members}
    assert by_client == {m.name: set(m.partitions()) for m in active}

    ends = {p: active[0].consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(2)}
    assert _group_offsets(admin, group, topic, 2) == ends

    assert _delete_error(admin, group) == KafkaError.NON_EMPTY_GROUP
    assert _describe(admin, group).state == ConsumerGroupState.STABLE

    for member in active:
        member.close()
    wait_until(lambda: _describe(admin, group).state == ConsumerGroupState.EMPTY, timeout=10, what="group to be Empty")
    emptied = _listed(admin, states={ConsumerGroupState.EMPTY})
    assert group in emptied
    assert _group_offsets(admin, group, topic, 2) == ends, "offsets outlive the members"

    assert _delete_error(admin, group) is None
    assert _group_offsets(admin, group, topic, 2) == {0: OFFSET_INVALID, 1: OFFSET_INVALID}
    assert group not in _listed(admin)
    assert _delete_error(admin, group) == KafkaError.GROUP_ID_NOT_FOUND
    assert _delete_error(admin, unique_name("never-a-group")) == KafkaError.GROUP_ID_NOT_FOUND
    # Checked last so it hides nothing above: Kafka keeps an emptied group's
    # protocol type ("consumer"), so it is still no simple consumer group.
    assert not emptied[group].is_simple_consumer_group, "an emptied consumer group is listed with no protocol type"


# --- commits checked against member and generation (hand-driven members) ----------------


class RawMember:
    """One connection speaking JoinGroup/SyncGroup/OffsetCommit through
    kafka-python's request classes, so the test chooses every field."""

    def __init__(self, broker, group):
        self.group = group
        self.sock = socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=CLIENT_TIMEOUT_S)
        self.correlation = 0
        self.member_id = ""
        self.generation = -1

    def call(self, request):
        self.correlation += 1
        self.sock.sendall(request_frame(request.API_KEY, request.API_VERSION, self.correlation, request.encode()))
        frame = recv_frame(self.sock)
        (correlation,) = struct.unpack(">i", frame[:4])
        assert correlation == self.correlation
        return request.RESPONSE_TYPE.decode(frame[4:])

    def join(self):
        from kafka.protocol.group import JoinGroupRequest

        request = JoinGroupRequest[2](self.group, 10000, 10000, self.member_id, "consumer", [("range", b"")])
        response = self.call(request)
        assert response.error_code == 0, response
        self.member_id, self.generation = response.member_id, response.generation_id
        return response

    def sync(self, assignments=()):
        from kafka.protocol.group import SyncGroupRequest

        response = self.call(SyncGroupRequest[1](self.group, self.generation, self.member_id, list(assignments)))
        assert response.error_code == 0, response
        return response

    def commit(self, topic, offset, generation=None, member_id=None) -> int:
        from kafka.protocol.commit import OffsetCommitRequest

        request = OffsetCommitRequest[2](
            self.group,
            self.generation if generation is None else generation,
            self.member_id if member_id is None else member_id,
            -1,
            [(topic, [(0, offset, "")])],
        )
        [(_, [(_, code)])] = self.call(request).topics
        return code

    def close(self):
        self.sock.close()


@pytest.fixture
def raw_members(broker):
    with closing_all(lambda group: RawMember(broker, group)) as make:
        yield make


def test_commits_are_checked_against_member_and_generation(broker, topic, group, raw_members):
    create_topic_confluent(broker, topic, partitions=1)
    first = raw_members(group)
    first.join()
    first.sync([(first.member_id, b"")])
    assert first.commit(topic, 1) == 0
    assert first.commit(topic, 2, member_id="no-such-member") == KafkaError.UNKNOWN_MEMBER_ID
    assert first.commit(topic, 2, generation=first.generation + 1) == KafkaError.ILLEGAL_GENERATION
    stale = first.generation

    # The leader rejoins: a new generation; the old one can no longer commit.
    first.join()
    assert first.generation > stale
    first.sync([(first.member_id, b"")])
    assert first.commit(topic, 3, generation=stale) == KafkaError.ILLEGAL_GENERATION
    assert first.commit(topic, 4) == 0


def test_commits_during_a_rebalance_follow_kafka(broker, topic, group, raw_members):
    """Kafka accepts a commit from a current member while the group is
    PreparingRebalance (members commit what they processed before they
    rejoin; that is what keeps a clean rebalance free of duplicates) and
    answers REBALANCE_IN_PROGRESS during CompletingRebalance."""
    create_topic_confluent(broker, topic, partitions=1)
    first, second = raw_members(group), raw_members(group)
    first.join()
    first.sync([(first.member_id, b"")])

    joined = {}
    joiner = threading.Thread(target=lambda: joined.setdefault("second", second.join()), daemon=True)
    joiner.start()  # blocks until `first` rejoins: the group is PreparingRebalance
    time.sleep(0.5)
    assert joiner.is_alive(), "the second join should wait for the first member to rejoin"
    preparing = first.commit(topic, 5)

    first.join()
    joiner.join(timeout=CLIENT_TIMEOUT_S)
    assert "second" in joined
    completing = first.commit(topic, 6)  # no SyncGroup yet: CompletingRebalance
    assert (preparing, completing) == (0, KafkaError.REBALANCE_IN_PROGRESS), (
        f"commit while PreparingRebalance got {preparing} (Kafka: 0), "
        f"while CompletingRebalance got {completing} (Kafka: {KafkaError.REBALANCE_IN_PROGRESS})"
    )


def test_a_commit_without_generation_into_an_active_group_is_refused(broker, topic, group, raw_members):
    """Kafka answers UNKNOWN_MEMBER_ID to a generation -1, member-less commit
    (a consumer with manual assignment) into a group that has members."""
    create_topic_confluent(broker, topic, partitions=1)
    member = raw_members(group)
    member.join()
    member.sync([(member.member_id, b"")])
    outsider = raw_members(group)
    assert outsider.commit(topic, 1, generation=-1, member_id="") == KafkaError.UNKNOWN_MEMBER_ID
