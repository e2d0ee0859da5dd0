"""Consumer groups on the KIP-848 consumer protocol (`group.protocol=consumer`,
ConsumerGroupHeartbeat v1) with librdkafka through confluent-kafka.

Contract: a member joins with its own member id and the broker's assignor
gives it partitions (`uniform` unless the member names another with
`group.remote.assignor`; an unknown name is UNSUPPORTED_ASSIGNOR, fatal for
the client); members of one group split a topic's partitions evenly, and a
partition goes to a new member only after its old owner has revoked it, so
no partition ever has two owners; with commit-after-processing
(OffsetCommit v9, checked against the member epoch) nothing is lost across
joins, leaves, a killed member (its partitions move once its session times
out) and a broker restart, and a member that joins later resumes at the
group's commits; a static member (group.instance.id) that closes and comes
back gets its own partitions back without disturbing the others; a regex
subscription is resolved by the broker, also for a topic created later;
classic and consumer groups share a topic, and the admin API lists them with
their types (ListGroups v5) and describes a consumer group with its members
and their assignments (ConsumerGroupDescribe); a member beyond
`kafka.group_consumer_max_size` is refused with GROUP_MAX_SIZE_REACHED.

The broker runs with a consumer heartbeat interval of 500 ms and a consumer
session timeout of 6 s (`BROKER_SETTINGS`, Kafka's
group.consumer.heartbeat.interval.ms and group.consumer.session.timeout.ms):
with the consumer protocol these are the broker's to choose, and librdkafka
refuses a client config that sets session.timeout.ms, heartbeat.interval.ms,
partition.assignment.strategy or group.protocol.type. Members are polled by
the test thread in bounded loops; librdkafka heartbeats from its own thread.
With the consumer protocol librdkafka rebalances incrementally: on_assign
gets only the partitions added, on_revoke and on_lost only those taken away.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from common.broker import module_broker, per_test_broker
from support import (
    CLIENT_TIMEOUT_S,
    ClassicPoller,
    assert_all_delivered,
    closing_all,
    confluent_admin,
    confluent_config,
    confluent_producer,
    create_topic_confluent,
    produce_all,
    unique_name,
    wait_until,
)
from test_consumer_groups import ChildMember, Feeder, duplicates, split_exactly
from test_restart import restart

SESSION_TIMEOUT_S = 6.0
# The broker's consumer-group timing, passed as `--set`: without it a
# killed member would hold its partitions for Kafka's default 45 s.
BROKER_SETTINGS = {
    "kafka.group_consumer_heartbeat_interval": "500ms",
    "kafka.group_consumer_session_timeout": f"{SESSION_TIMEOUT_S:.0f}s",
}
MEMBER_SETTINGS = {
    "group.protocol": "consumer",
    # Sent as the member's rebalance timeout. Generous: the test thread
    # polls every member in turn.
    "max.poll.interval.ms": 30000,
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
}
# How long a group may take to settle after a membership change.
SETTLE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    """This module's broker, with the consumer-group timing above."""
    with module_broker(tmp_path_factory, request, BROKER_SETTINGS) as instance:
        yield instance


@pytest.fixture
def fresh_broker(tmp_path, request):
    """A broker of the test's own, for tests that restart it."""
    with per_test_broker(tmp_path, request, BROKER_SETTINGS) as instance:
        yield instance


# --- members ------------------------------------------------------------------------------


class Member:
    """A consumer-protocol group member polled by the test thread: it
    processes one message at a time and commits it (synchronously) before it
    polls again. What it owns is kept from the rebalance callbacks' deltas;
    commit errors and non-fatal client errors are recorded, a fatal error
    fails the test at once."""

    def __init__(self, broker, group, topics, name, **extra):
        self.name = name
        self.closed = False
        self.owned: set[tuple[str, int]] = set()
        # ("assign" | "revoke" | "lost", [(topic, partition)]) in order.
        self.events: list[tuple[str, list[tuple[str, int]]]] = []
        self.seen: list[tuple[str, int, int, bytes]] = []  # (topic, partition, offset, value)
        self.commit_errors: list[KafkaError] = []
        self.errors: list[KafkaError] = []
        # The owned partitions after each poll, to see whether they ever went empty.
        self.history: list[frozenset[int]] = []
        # Polls after which the callbacks' view and assignment() differed.
        self.mismatches: list[tuple[list, list]] = []
        config = confluent_config(
            broker,
            **{**MEMBER_SETTINGS, "group.id": group, "client.id": name, "error_cb": self.errors.append, **extra},
        )
        self.consumer = Consumer(config)
        self.consumer.subscribe(
            list(topics),
            on_assign=lambda _c, ps: self._changed("assign", ps),
            on_revoke=lambda _c, ps: self._changed("revoke", ps),
            on_lost=lambda _c, ps: self._changed("lost", ps),
        )

    def _changed(self, kind, partitions):
        delta = sorted((tp.topic, tp.partition) for tp in partitions)
        self.events.append((kind, delta))
        if kind == "assign":
            self.owned.update(delta)
        else:
            self.owned.difference_update(delta)

    def partitions(self) -> frozenset[int]:
        return frozenset() if self.closed else frozenset(p for _, p in self.owned)

    def values(self) -> list[bytes]:
        return [value for _, _, _, value in self.seen]

    def by_topic(self) -> dict[str, list[bytes]]:
        found: dict[str, list[bytes]] = defaultdict(list)
        for topic, _, _, value in self.seen:
            found[topic].append(value)
        return dict(found)

    def step(self, timeout: float = 0.05) -> None:
        if self.closed:
            return
        msg = self.consumer.poll(timeout)
        actual = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        if actual != self.owned and len(self.mismatches) < 20:
            self.mismatches.append((sorted(self.owned), sorted(actual)))
        self.history.append(self.partitions())
        if msg is None:
            return
        if msg.error():
            error = msg.error()
            if error.code() == KafkaError._PARTITION_EOF:
                return
            if error.code() == KafkaError._FATAL or error.fatal():
                raise AssertionError(f"{self.name}: fatal consumer error {error}")
            self.errors.append(error)
            return
        self.seen.append((msg.topic(), msg.partition(), msg.offset(), msg.value()))
        try:
            self.consumer.commit(message=msg, asynchronous=False)
        except KafkaException as err:
            self.commit_errors.append(err.args[0])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.consumer.close()
            self.owned.clear()


@pytest.fixture
def members(request):
    """Makes Members of the test's broker (`fresh_broker` if the test asked
    for one, else the module's); closes whatever is left open when the test
    ends."""
    broker = request.getfixturevalue("fresh_broker" if "fresh_broker" in request.fixturenames else "broker")
    with closing_all(lambda group, topics, name, **extra: Member(broker, group, topics, name, **extra)) as make:
        yield make


class Ownership:
    """Checks after every poll of every member that no partition is owned
    (by the callbacks' account) by two members at once."""

    def __init__(self, members: list[Member]):
        self.members = list(members)
        self.started = time.monotonic()
        self.samples = 0
        self.violations: list[tuple[float, dict]] = []

    def check(self) -> None:
        self.samples += 1
        holders: dict[tuple[str, int], list[str]] = defaultdict(list)
        for member in self.members:
            for partition in member.owned:
                holders[partition].append(member.name)
        doubled = {p: names for p, names in holders.items() if len(names) > 1}
        if doubled and len(self.violations) < 20:
            self.violations.append((round(time.monotonic() - self.started, 2), doubled))


def drive(active, until, timeout: float, what: str, feeder=None, extra=None, check=None) -> None:
    """Polls every member (calling `check` after each poll), ticks `feeder`
    and calls `extra` until `until()` holds; fails with the members' state
    after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        _round(active, feeder, extra, check)
        if until():
            return
        if time.monotonic() >= deadline:
            state = {m.name: sorted(m.partitions()) for m in active}
            errors = {m.name: [str(e) for e in m.errors[-3:]] for m in active if m.errors}
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; owned partitions {state}; "
                f"consumed {[len(m.seen) for m in active]}; recent client errors {errors}"
            )


def run_for(active, seconds: float, feeder=None, extra=None, check=None) -> None:
    """Polls every member for `seconds`, as `drive` does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _round(active, feeder, extra, check)


def _round(active, feeder, extra, check) -> None:
    for member in active:
        member.step()
        if check is not None:
            check()
    if feeder is not None:
        feeder.tick()
    if extra is not None:
        extra()


def balanced(active, partitions: int) -> bool:
    """Every partition owned by exactly one member, sizes differing by at most one."""
    sizes = [len(m.partitions()) for m in active]
    return split_exactly([m.partitions() for m in active], partitions) and max(sizes) - min(sizes) <= 1


def commit_error_summary(active) -> dict[str, dict[str, int]]:
    return {m.name: dict(Counter(e.name() for e in m.commit_errors)) for m in active if m.commit_errors}


# --- records, offsets and the admin API -----------------------------------------------------


def produce_values(broker, topic: str, prefix: str, count: int) -> list[bytes]:
    """Produces `prefix-<n>` for n < count with keys over every partition
    (acks=all); returns the values."""
    producer = confluent_producer(broker, **{"acks": "all", "linger.ms": 5})
    records = [{"topic": topic, "key": f"k-{i % 13}".encode(), "value": f"{prefix}-{i}".encode()} for i in range(count)]
    assert_all_delivered(produce_all(producer, records))
    return [record["value"] for record in records]


def end_offsets(broker, topic: str, partitions: int) -> dict[int, int]:
    reader = Consumer(confluent_config(broker, **{"group.id": unique_name("end-offsets")}))
    try:
        return {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        reader.close()


def group_offsets(admin, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets as the admin API reads them (OffsetFetch
    with no member id, as Kafka accepts from outside the group)."""
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
    [future] = admin.list_consumer_group_offsets(request, request_timeout=CLIENT_TIMEOUT_S).values()
    return {tp.partition: tp.offset for tp in future.result(timeout=CLIENT_TIMEOUT_S).topic_partitions}


def describe(admin, group: str):
    [future] = admin.describe_consumer_groups([group], request_timeout=CLIENT_TIMEOUT_S).values()
    return future.result(timeout=CLIENT_TIMEOUT_S)


def describe_when(admin, group: str, state, active=(), timeout: float = 15.0):
    """The group's description once it is in `state`, polling `active`
    members meanwhile."""
    found = {}

    def reached():
        for member in active:
            member.step()
        try:
            found["description"] = describe(admin, group)
        except KafkaException as err:  # e.g. no coordinator yet after a restart
            found["error"] = err.args[0]
            return False
        return found["description"].state == state

    try:
        wait_until(reached, timeout, interval=0.2, what=f"group {group} to be {state.name}")
    except AssertionError as err:
        last = found.get("description")
        raise AssertionError(
            f"{err}; last described state {last.state if last else None}, last error {found.get('error')}"
        ) from None
    return found["description"]


def listed(admin, **filters) -> dict:
    result = admin.list_consumer_groups(request_timeout=CLIENT_TIMEOUT_S, **filters).result(timeout=CLIENT_TIMEOUT_S)
    assert not result.errors, result.errors
    return {listing.group_id: listing for listing in result.valid}


# --- a member in another process ------------------------------------------------------------

# --- tests ------------------------------------------------------------------------------------


def test_a_member_reads_everything_and_a_later_member_resumes_at_its_commits(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=4)
    first_batch = produce_values(broker, topic, "first", 200)
    first = members(group, [topic], "first")
    drive([first], lambda: first.partitions() == set(range(4)) and len(first.seen) >= 200, SETTLE_TIMEOUT_S,
          "the only member to own all 4 partitions and read 200 records")
    run_for([first], 1.0)

    assert sorted(first.values()) == sorted(first_batch), (
        f"{len(first.seen)} read, duplicates {duplicates(first.values())}"
    )
    assert {kind for kind, _ in first.events} == {"assign"}, f"a lone member lost partitions: {first.events}"
    assert not first.commit_errors, commit_error_summary([first])
    member_id = first.consumer.memberid()
    assert member_id, "no member id after joining"
    ends = end_offsets(broker, topic, 4)
    assert sum(ends.values()) == 200
    assert group_offsets(confluent_admin(broker), group, topic, 4) == ends, "the member's commits did not all land"
    first.close()

    second_batch = produce_values(broker, topic, "second", 100)
    later = members(group, [topic], "later")
    drive([later], lambda: later.partitions() == set(range(4)) and len(later.seen) >= 100, SETTLE_TIMEOUT_S,
          "the later member to own all 4 partitions and read the 100 new records")
    run_for([later], 1.5)

    reread = set(later.values()) & set(first_batch)
    assert not reread, f"the later member re-read {len(reread)} committed records, e.g. {sorted(reread)[:5]}"
    assert sorted(later.values()) == sorted(second_batch), (
        f"expected the 100 new records once each; got {len(later.seen)}, "
        f"missing {sorted(set(second_batch) - set(later.values()))[:5]}, duplicates {duplicates(later.values())}"
    )
    assert later.consumer.memberid() not in (None, "", member_id)


def test_members_go_from_one_to_three_and_back_and_no_partition_ever_has_two_owners(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=6)
    feeder = Feeder(broker, topic)
    first = members(group, [topic], "first")
    ownership = Ownership([first])
    drive([first], lambda: first.partitions() == set(range(6)), SETTLE_TIMEOUT_S, "the first member to own all 6",
          feeder=feeder, check=ownership.check)
    history_start = len(first.history)

    second, third = members(group, [topic], "second"), members(group, [topic], "third")
    trio = [first, second, third]
    ownership.members = trio
    drive(trio, lambda: balanced(trio, 6), SETTLE_TIMEOUT_S, "3 members to own 2 of the 6 partitions each",
          feeder=feeder, check=ownership.check)
    run_for(trio, 1.0, feeder=feeder, check=ownership.check)
    split = {m.name: m.partitions() for m in trio}
    assert balanced(trio, 6) and all(len(p) == 2 for p in split.values()), f"not 2 each after settling: {split}"
    # Incremental: the first member gave up only what the others took and
    # kept consuming what it kept.
    given_up = {p for kind, delta in first.events if kind != "assign" for _, p in delta}
    assert given_up == split["second"] | split["third"], f"first gave up {given_up}, the others own {split}"
    assert all(first.history[history_start:]), "the first member's assignment went empty while the others joined"

    second.close()
    third.close()
    drive([first], lambda: first.partitions() == set(range(6)), SETTLE_TIMEOUT_S,
          "the first member to own all 6 again after the other two left", feeder=feeder, check=ownership.check)
    run_for([first], 1.0, feeder=feeder, check=ownership.check)

    produced = feeder.finish()
    everything = lambda: [v for m in trio for v in m.values()]  # noqa: E731
    drive([first], lambda: produced <= set(everything()), CLIENT_TIMEOUT_S, "every record consumed",
          check=ownership.check)
    run_for([first], 1.0)

    assert ownership.samples > 100
    assert not ownership.violations, (
        f"partitions owned by two members at once (s after start, owners): {ownership.violations}"
    )
    mismatched = {m.name: m.mismatches[:3] for m in trio if m.mismatches}
    assert not mismatched, f"rebalance callbacks and assignment() disagreed (callbacks, assignment()): {mismatched}"
    lost = {m.name: [e for e in m.events if e[0] == "lost"] for m in trio}
    assert not any(lost.values()), f"partitions lost (not revoked) in clean joins and leaves: {lost}"
    missing = produced - set(everything())
    assert not missing, f"{len(missing)} records never consumed, e.g. {sorted(missing)[:5]}"
    ends = end_offsets(broker, topic, 6)
    committed = group_offsets(confluent_admin(broker), group, topic, 6)
    assert committed == ends, (
        f"committed {committed} short of the end offsets {ends}; commit errors {commit_error_summary(trio)}"
    )
    twice = duplicates(everything())
    assert not twice or commit_error_summary(trio), (
        f"{len(twice)} records consumed twice although every commit succeeded, e.g. {sorted(twice)[:5]}"
    )


def test_a_regex_subscription_takes_matching_topics_and_one_created_later(broker, group, members):
    token = uuid.uuid4().hex[:8]
    matching = [f"cp-regex-{token}-a", f"cp-regex-{token}-b"]
    other = f"not-cp-regex-{token}-c"  # holds the pattern, but not at its start
    produced: dict[str, list[bytes]] = {}
    for name in [*matching, other]:
        create_topic_confluent(broker, name, partitions=2)
        produced[name] = produce_values(broker, name, name, 20)

    member = members(group, [f"^cp-regex-{token}-.*"], "regex", **{"topic.metadata.refresh.interval.ms": 1000})
    drive([member], lambda: len(member.seen) >= 40, SETTLE_TIMEOUT_S, "the records of both matching topics")
    run_for([member], 1.5)
    found = member.by_topic()
    assert set(found) == set(matching), f"records from {sorted(found)}, expected {matching}"
    for name in matching:
        assert sorted(found[name]) == sorted(produced[name]), name
    assert {t for t, _ in member.owned} == set(matching), f"owns {sorted(member.owned)}"

    late = f"cp-regex-{token}-late"
    create_topic_confluent(broker, late, partitions=1)
    produced[late] = produce_values(broker, late, late, 10)
    produced[other] += produce_values(broker, other, other + "-again", 5)
    drive([member], lambda: len(member.by_topic().get(late, [])) >= 10, SETTLE_TIMEOUT_S,
          "the records of a matching topic created after the subscription")
    run_for([member], 1.5)
    found = member.by_topic()
    assert set(found) == {*matching, late}, f"records from {sorted(found)}"
    assert sorted(found[late]) == sorted(produced[late])
    assert {t for t, _ in member.owned} == {*matching, late}, f"owns {sorted(member.owned)}"
    assert not member.commit_errors, commit_error_summary([member])


def test_a_static_member_that_closes_and_returns_gets_its_partitions_back_alone(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=6)
    instance_a, instance_b = unique_name("static-a"), unique_name("static-b")
    a = members(group, [topic], "a", **{"group.instance.id": instance_a})
    b = members(group, [topic], "b", **{"group.instance.id": instance_b})
    drive([a, b], lambda: balanced([a, b], 6), SETTLE_TIMEOUT_S, "2 static members to own 3 partitions each")
    run_for([a, b], 1.0)
    before = {"a": a.partitions(), "b": b.partitions()}
    a_events = len(a.events)

    # A static member's close leaves with epoch -2: the broker keeps its
    # partitions for its instance id until its session times out.
    b.close()
    back = members(group, [topic], "b-again", **{"group.instance.id": instance_b})
    returned_at = time.monotonic()
    drive([a, back], lambda: back.partitions() == before["b"], SESSION_TIMEOUT_S + SETTLE_TIMEOUT_S,
          "the returning static member to get its partitions back")
    took = time.monotonic() - returned_at
    run_for([a, back], 1.0)

    assert back.partitions() == before["b"], f"came back to {sorted(back.partitions())}, had {sorted(before['b'])}"
    assert a.partitions() == before["a"]
    assert a.events[a_events:] == [], (
        f"the static member's leave and return moved partitions of the other member: {a.events[a_events:]}"
    )
    assert took < SESSION_TIMEOUT_S, f"the returning static member waited {took:.1f} s for its partitions"


def test_a_killed_member_loses_its_partitions_after_the_session_timeout(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=4)
    local = members(group, [topic], "local")
    child = ChildMember(broker, group, topic, "child", MEMBER_SETTINGS)
    feeder = None
    try:
        drive([local], lambda: split_exactly([local.partitions(), child.partitions()], 4)
              and len(local.partitions()) == 2, SETTLE_TIMEOUT_S,
              "a local member and one in a subprocess to own 2 partitions each")
        # Records flow from here on, so only the kill below can duplicate any.
        feeder = Feeder(broker, topic)
        drive([local], lambda: len(child.seen()) >= 5, SETTLE_TIMEOUT_S, "the child to consume", feeder=feeder)
        child_partitions, kept = child.partitions(), local.partitions()
        local_events = len(local.events)
        child.kill()
        killed_at = time.monotonic()
        drive([local], lambda: local.partitions() == set(range(4)), SESSION_TIMEOUT_S + SETTLE_TIMEOUT_S,
              "the remaining member to take over all 4 partitions", feeder=feeder)
        moved_after = time.monotonic() - killed_at
        run_for([local], 1.0, feeder=feeder)
    finally:
        child.kill()

    produced = feeder.finish()
    everything = lambda: local.values() + child.seen()  # noqa: E731
    drive([local], lambda: produced <= set(everything()), CLIENT_TIMEOUT_S, "every record consumed")
    run_for([local], 1.0)

    assert child_partitions | kept == set(range(4))
    assert all(kind == "assign" for kind, _ in local.events[local_events:]), (
        f"the remaining member lost partitions of its own while the killed one timed out: {local.events[local_events:]}"
    )
    missing = produced - set(everything())
    assert not missing, f"{len(missing)} records never consumed, e.g. {sorted(missing)[:5]}"
    # Only what the killed member processed without committing may come again.
    uncommitted = set(child.seen()) - child.committed()
    unexpected = set(duplicates(everything())) - uncommitted
    assert not unexpected, (
        f"{len(unexpected)} records consumed twice that the killed member did not leave uncommitted, "
        f"e.g. {sorted(unexpected)[:5]}; commit errors {commit_error_summary([local])}"
    )
    assert moved_after >= SESSION_TIMEOUT_S - 1.5, f"partitions moved {moved_after:.1f} s after the kill"
    assert moved_after < SESSION_TIMEOUT_S + 10, (
        f"partitions moved {moved_after:.1f} s after the kill: is the broker's consumer session timeout "
        f"{SESSION_TIMEOUT_S:.0f} s ({BROKER_SETTINGS})?"
    )


def test_classic_and_consumer_groups_share_a_topic_and_are_listed_with_their_types(broker, topic, members):
    create_topic_confluent(broker, topic, partitions=2)
    produced = produce_values(broker, topic, "v", 100)
    classic_group, consumer_group = unique_name("group-classic"), unique_name("group-consumer")
    classic = ClassicPoller(broker, topic, classic_group)
    try:
        member = members(consumer_group, [topic], "librdkafka")
        drive([member], lambda: len(member.seen) >= 100 and len(classic.seen) >= 100, SETTLE_TIMEOUT_S,
              "both groups to read all 100 records", extra=classic.poll)
        run_for([member], 1.0, extra=classic.poll)
        assert sorted(member.values()) == sorted(produced), "the consumer-protocol group"
        assert sorted(classic.seen) == sorted(produced), "the classic group"

        admin = confluent_admin(broker)
        groups = listed(admin)
        assert {classic_group, consumer_group} <= set(groups), f"listed {sorted(groups)}"
        kinds = {g: (groups[g].type, groups[g].state) for g in (classic_group, consumer_group)}
        assert kinds == {
            classic_group: (ConsumerGroupType.CLASSIC, ConsumerGroupState.STABLE),
            consumer_group: (ConsumerGroupType.CONSUMER, ConsumerGroupState.STABLE),
        }, f"(type, state) listed: {kinds}"
        assert not groups[consumer_group].is_simple_consumer_group, "a consumer group listed with no protocol type"
        consumers_only = listed(admin, types={ConsumerGroupType.CONSUMER})
        assert consumer_group in consumers_only and classic_group not in consumers_only, sorted(consumers_only)
        classics_only = listed(admin, types={ConsumerGroupType.CLASSIC})
        assert classic_group in classics_only and consumer_group not in classics_only, sorted(classics_only)

        # librdkafka asks ConsumerGroupDescribe first; for a classic group the
        # answer must be GROUP_ID_NOT_FOUND so that it falls back to DescribeGroups.
        described = describe(admin, classic_group)
        assert described.type == ConsumerGroupType.CLASSIC, f"the classic group described as {described.type}"
        assert [m.client_id for m in described.members] == ["kafka-python"]
    finally:
        classic.close()


# A librdkafka member of the classic protocol in the same group: its own
# session and heartbeat, the cooperative assignor (incremental callbacks).
CLASSIC_MEMBER_SETTINGS = {
    "group.protocol": "classic",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "partition.assignment.strategy": "cooperative-sticky",
}


def group_type(admin, group: str):
    found = listed(admin).get(group)
    return found.type if found else None


def test_a_classic_group_is_upgraded_by_a_consumer_member_and_downgraded_when_it_leaves(broker, topic, group, members):
    """Kafka 4's online migration: a classic group with a member is
    upgraded when a member of the consumer protocol joins (no
    GROUP_ID_NOT_FOUND), the coordinator splits the partitions between the
    classic member (JoinGroup, SyncGroup, Heartbeat) and the new one without
    a partition ever having two owners, and when the new member leaves the
    group is classic again and its classic member gets everything back; no
    record is lost across the two migrations."""
    create_topic_confluent(broker, topic, partitions=4)
    feeder = Feeder(broker, topic)
    admin = confluent_admin(broker)
    classic = members(group, [topic], "classic", **CLASSIC_MEMBER_SETTINGS)
    ownership = Ownership([classic])
    drive([classic], lambda: classic.partitions() == set(range(4)), SETTLE_TIMEOUT_S,
          "the classic member to own all 4", feeder=feeder, check=ownership.check)
    assert group_type(admin, group) == ConsumerGroupType.CLASSIC

    modern = members(group, [topic], "consumer")
    pair = [classic, modern]
    ownership.members = pair
    drive(pair, lambda: balanced(pair, 4) and len(modern.seen) > 0, SETTLE_TIMEOUT_S,
          "the classic and the consumer member to own 2 partitions each", feeder=feeder, check=ownership.check)
    run_for(pair, 1.0, feeder=feeder, check=ownership.check)
    assert balanced(pair, 4), {m.name: sorted(m.partitions()) for m in pair}
    assert group_type(admin, group) == ConsumerGroupType.CONSUMER, "upgraded to a consumer group"
    described = describe(admin, group)
    assert sorted(m.client_id for m in described.members) == ["classic", "consumer"], described.members

    # The consumer member restarts: its leave downgrades the group and its
    # new self upgrades it again at once, while the classic member may not
    # have rejoined the classic group yet; what it owns must count.
    modern.close()
    again = members(group, [topic], "consumer-again")
    trio = [classic, modern, again]
    ownership.members = trio
    drive(trio, lambda: balanced([classic, again], 4) and len(again.seen) > 0, SETTLE_TIMEOUT_S,
          "the classic and the restarted consumer member to own 2 partitions each", feeder=feeder,
          check=ownership.check)

    again.close()
    drive([classic], lambda: classic.partitions() == set(range(4)) and group_type(admin, group)
          == ConsumerGroupType.CLASSIC, SETTLE_TIMEOUT_S,
          "the group to be classic again with its classic member owning all 4", feeder=feeder, check=ownership.check)

    produced = feeder.finish()
    pair = trio
    everything = lambda: [v for m in pair for v in m.values()]  # noqa: E731
    drive([classic], lambda: produced <= set(everything()), CLIENT_TIMEOUT_S, "every record consumed",
          check=ownership.check)
    run_for([classic], 1.0)
    assert not ownership.violations, (
        f"partitions owned by two members at once (s after start, owners): {ownership.violations}"
    )
    missing = produced - set(everything())
    assert not missing, f"{len(missing)} records never consumed, e.g. {sorted(missing)[:5]}"
    lost = {m.name: [e for e in m.events if e[0] == "lost"] for m in pair}
    assert not any(lost.values()), f"partitions lost (not revoked) in the migrations: {lost}"
    ends = end_offsets(broker, topic, 4)
    committed = group_offsets(admin, group, topic, 4)
    assert committed == ends, (
        f"committed {committed} short of the end offsets {ends}; commit errors {commit_error_summary(pair)}"
    )


def test_with_migration_disabled_a_classic_group_with_members_refuses_a_consumer_member(tmp_path, request, topic, group):
    """`kafka.group_migration_policy = "disabled"` (Kafka's
    group.consumer.migration.policy): a member of the new protocol joining
    a classic group with members gets GROUP_ID_NOT_FOUND (fatal for
    librdkafka) and the group stays classic."""
    settings = {**BROKER_SETTINGS, "kafka.group_migration_policy": "disabled"}
    with per_test_broker(tmp_path, request, settings) as broker:
        create_topic_confluent(broker, topic, partitions=2)
        admin = confluent_admin(broker)
        with closing_all(lambda name, **extra: Member(broker, group, [topic], name, **extra)) as make:
            classic = make("classic", **CLASSIC_MEMBER_SETTINGS)
            drive([classic], lambda: classic.partitions() == {0, 1}, SETTLE_TIMEOUT_S, "the classic member to own both")
            modern = make("consumer")
            with pytest.raises(AssertionError, match="fatal consumer error") as refused:
                drive([classic, modern], lambda: False, SETTLE_TIMEOUT_S, "the consumer member to be refused")
            assert "The group id does not exist" in str(refused.value), refused.value  # GROUP_ID_NOT_FOUND
            modern.closed = True  # a fatal client cannot leave
            run_for([classic], 1.0)
            assert classic.partitions() == {0, 1}, "the classic member keeps its partitions"
            assert group_type(admin, group) == ConsumerGroupType.CLASSIC


def test_an_eager_kafka_python_member_joins_a_consumer_group_and_keeps_it_after_the_last_consumer_member_leaves(
    broker, topic, group, members
):
    """A classic member with an eager assignor (kafka-python, `range`)
    joins a consumer group that has a member of the new protocol: the
    coordinator gives it a share of the partitions through JoinGroup and
    SyncGroup, ConsumerGroupDescribe lists it as a classic member, and
    when the consumer-protocol member leaves, the group goes back to the
    classic protocol with the kafka-python member reading every partition.
    Every record is read."""
    create_topic_confluent(broker, topic, partitions=4)
    feeder = Feeder(broker, topic)
    admin = confluent_admin(broker)
    modern = members(group, [topic], "consumer")
    drive([modern], lambda: modern.partitions() == set(range(4)), SETTLE_TIMEOUT_S,
          "the consumer member to own all 4", feeder=feeder)
    python = ClassicPoller(broker, topic, group)
    try:
        owned = lambda: {tp.partition for tp in python.consumer.assignment()}  # noqa: E731
        drive([modern], lambda: len(owned()) == 2 and len(modern.partitions()) == 2
              and not owned() & modern.partitions(), SETTLE_TIMEOUT_S,
              "kafka-python and the consumer member to own 2 partitions each", feeder=feeder, extra=python.poll)
        assert group_type(admin, group) == ConsumerGroupType.CONSUMER
        described = describe(admin, group)
        assert sorted(m.client_id for m in described.members) == ["consumer", "kafka-python"], described.members

        modern.close()
        drive([], lambda: owned() == set(range(4)) and group_type(admin, group) == ConsumerGroupType.CLASSIC,
              SETTLE_TIMEOUT_S, "the group to be classic again with kafka-python owning all 4",
              feeder=feeder, extra=python.poll)
        produced = feeder.finish()
        everything = lambda: set(modern.values()) | set(python.seen)  # noqa: E731
        drive([], lambda: produced <= everything(), CLIENT_TIMEOUT_S, "every record consumed", extra=python.poll)
    finally:
        python.close()
    missing = produced - everything()
    assert not missing, f"{len(missing)} records never consumed, e.g. {sorted(missing)[:5]}"


def test_describe_shows_a_consumer_groups_members_and_their_assignments(broker, topic, group, members):
    create_topic_confluent(broker, topic, partitions=4)
    produced = produce_values(broker, topic, "v", 40)
    active = [members(group, [topic], f"member-{i}") for i in range(2)]
    drive(active, lambda: balanced(active, 4) and sum(len(m.seen) for m in active) >= len(produced),
          SETTLE_TIMEOUT_S, "2 members to own 2 partitions each and read everything")
    run_for(active, 0.5)
    admin = confluent_admin(broker)

    described = describe_when(admin, group, ConsumerGroupState.STABLE, active)
    # DescribeGroups would report a consumer-protocol group as classic.
    assert described.type == ConsumerGroupType.CONSUMER, f"described as {described.type}"
    assert not described.is_simple_consumer_group
    assert described.partition_assignor == "uniform", (
        f"assignor {described.partition_assignor!r}, expected the broker's default 'uniform'"
    )
    assert sorted(m.client_id for m in described.members) == ["member-0", "member-1"]
    assert sorted(m.member_id for m in described.members) == sorted(m.consumer.memberid() for m in active)
    assert all("127.0.0.1" in m.host for m in described.members), [m.host for m in described.members]
    assert all(m.group_instance_id is None for m in described.members)
    current = {m.client_id: {(tp.topic, tp.partition) for tp in m.assignment.topic_partitions}
               for m in described.members}
    assert current == {m.name: m.owned for m in active}, f"described {current}"
    target = {m.client_id: {(tp.topic, tp.partition) for tp in m.target_assignment.topic_partitions}
              for m in described.members if m.target_assignment is not None}
    assert target == current, f"a stable group's target assignment {target} differs from its assignment {current}"

    for member in active:
        member.close()
    emptied = describe_when(admin, group, ConsumerGroupState.EMPTY)
    assert emptied.type == ConsumerGroupType.CONSUMER and not emptied.members, (emptied.type, emptied.members)


def refused_with(refused: Member, code: int, what: str) -> None:
    """Polls `refused` until the broker's refusal `code` reaches it as a
    fatal error (librdkafka hands a consumer's fatal error to poll() as
    _FATAL, not to error_cb, its text naming the broker's error) or as a
    client error; fails if it never does, or if the member consumed or was
    given anything meanwhile."""
    fatal: list[str] = []
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not fatal and time.monotonic() < deadline:
        try:
            msg = refused.consumer.poll(0.2)
        except KafkaException as err:
            fatal.append(str(err.args[0]))
            break
        if msg is not None and msg.error() and msg.error().code() == KafkaError._FATAL:
            fatal.append(msg.error().str())
        elif msg is not None and not msg.error():
            raise AssertionError(f"{refused.name} ({what}) consumed {msg.value()}")
        fatal += [e.str() for e in refused.errors if e.fatal() or e.code() == code]
    assert fatal, (
        f"no fatal error within {SETTLE_TIMEOUT_S} s for {what}; "
        f"client errors {[str(e) for e in refused.errors]}, events {refused.events}"
    )
    expected = KafkaError(code).str()
    assert expected in fatal[0], f"fatal error {fatal[0]!r}, expected {expected!r}"
    assert not refused.owned, f"the refused member was given {sorted(refused.owned)}"


def test_an_unknown_server_assignor_is_fatal_and_range_is_accepted(broker, topic, members):
    create_topic_confluent(broker, topic, partitions=2)
    produced = produce_values(broker, topic, "v", 20)

    refused = members(unique_name("group-nope"), [topic], "nope", **{"group.remote.assignor": "nope"})
    refused_with(refused, KafkaError.UNSUPPORTED_ASSIGNOR, "group.remote.assignor=nope")

    range_group = unique_name("group-range")
    ranged = members(range_group, [topic], "range", **{"group.remote.assignor": "range"})
    drive([ranged], lambda: ranged.partitions() == {0, 1} and len(ranged.seen) >= 20, SETTLE_TIMEOUT_S,
          "a member asking for the range assignor to own both partitions and read everything")
    assert sorted(ranged.values()) == sorted(produced)
    described = describe_when(confluent_admin(broker), range_group, ConsumerGroupState.STABLE, [ranged])
    assert described.partition_assignor == "range", f"assignor {described.partition_assignor!r}, asked for 'range'"


def test_committed_offsets_of_a_consumer_group_survive_a_broker_restart(fresh_broker, topic, group, members):
    broker = fresh_broker
    create_topic_confluent(broker, topic, partitions=2)
    first_batch = produce_values(broker, topic, "before", 100)
    before = members(group, [topic], "before-restart")
    drive([before], lambda: len(before.seen) >= 100, SETTLE_TIMEOUT_S, "100 records before the restart")
    assert not before.commit_errors, commit_error_summary([before])
    ends = end_offsets(broker, topic, 2)
    assert group_offsets(confluent_admin(broker), group, topic, 2) == ends
    before.close()

    restart(broker)
    assert group_offsets(confluent_admin(broker), group, topic, 2) == ends, "committed offsets after the restart"
    second_batch = produce_values(broker, topic, "after", 50)
    after = members(group, [topic], "after-restart")
    drive([after], lambda: len(after.seen) >= 50, SETTLE_TIMEOUT_S, "the 50 records produced after the restart")
    run_for([after], 1.5)
    reread = set(after.values()) & set(first_batch)
    assert not reread, f"{len(reread)} records committed before the restart read again, e.g. {sorted(reread)[:5]}"
    assert sorted(after.values()) == sorted(second_batch)


def test_a_member_open_across_a_broker_restart_rejoins_and_reads_on(fresh_broker, topic, group, members):
    # The restarted broker may remember the member (Kafka does) or answer its
    # next heartbeat UNKNOWN_MEMBER_ID, and then the client rejoins with
    # epoch 0 and the same member id: either way it owns its partitions
    # again and reads on from its commits.
    broker = fresh_broker
    create_topic_confluent(broker, topic, partitions=2)
    first_batch = produce_values(broker, topic, "before", 60)
    member = members(group, [topic], "across")
    drive([member], lambda: len(member.seen) >= 60, SETTLE_TIMEOUT_S, "60 records before the restart")
    assert not member.commit_errors, commit_error_summary([member])
    member_id = member.consumer.memberid()
    seen_before = len(member.seen)

    restart(broker)
    admin = confluent_admin(broker)
    described = describe_when(admin, group, ConsumerGroupState.STABLE, [member], timeout=SETTLE_TIMEOUT_S)
    assert [m.member_id for m in described.members] == [member_id], (
        f"after the restart the group has {[m.member_id for m in described.members]}, the member is {member_id}"
    )
    second_batch = produce_values(broker, topic, "after", 40)
    drive([member], lambda: len(member.seen) >= seen_before + 40 and member.partitions() == {0, 1},
          SETTLE_TIMEOUT_S, "the member to read the 40 records produced after the restart")
    run_for([member], 1.5)
    assert sorted(member.values()) == sorted(first_batch + second_batch), (
        f"read {len(member.seen)}; duplicates {sorted(duplicates(member.values()))[:5]}"
    )
    assert not member.commit_errors, commit_error_summary([member])
    assert group_offsets(admin, group, topic, 2) == end_offsets(broker, topic, 2)


def test_a_member_beyond_the_groups_maximum_size_is_refused(tmp_path, request, topic, group):
    """`kafka.group_consumer_max_size` (Kafka's group.consumer.max.size): a
    third member of a group capped at two gets GROUP_MAX_SIZE_REACHED and
    nothing of the topic; the two split it."""
    settings = {**BROKER_SETTINGS, "kafka.group_consumer_max_size": "2"}
    with per_test_broker(tmp_path, request, settings) as broker:
        create_topic_confluent(broker, topic, partitions=4)
        produce_values(broker, topic, "v", 20)
        with closing_all(lambda name: Member(broker, group, [topic], name)) as make:
            pair = [make(f"member-{i}") for i in range(2)]
            drive(pair, lambda: balanced(pair, 4), SETTLE_TIMEOUT_S, "two members to own two partitions each")
            third = make("third")
            refused_with(third, KafkaError.GROUP_MAX_SIZE_REACHED, "a third member of a group of at most two")
            run_for(pair, 1.0)
            assert balanced(pair, 4), [sorted(m.partitions()) for m in pair]
