"""Share groups (KIP-932: ShareGroupHeartbeat, ShareFetch, ShareAcknowledge)
with librdkafka's share consumer through confluent-kafka 2.16.1
(`ShareConsumer`, `AcknowledgeType`).

Contract: the members of a share group share a partition record by record:
each record is acquired by one member at a time, and in implicit mode
(accept on the next poll or commit) every record produced is accepted
exactly once, whichever members got it; in explicit mode RELEASE makes a
record available again and its next delivery counts one more, REJECT
archives it, and a record released at `kafka.group_share_delivery_count_limit`
deliveries is archived instead, so it is delivered exactly `limit` times
with counts 1..limit; a record nobody acknowledges comes back to another
member once its lock (`kafka.group_share_record_lock_duration`) has run out,
with its count one higher, and the member that let the lock run out can no
longer acknowledge it (INVALID_RECORD_STATE); a member that closes, or is
killed, loses nothing: what it had not accepted goes to the others; with
`share.auto.offset.reset` latest (the default) a group starts at the log end
when it first fetches; the admin APIs list a share group, and a share group
reads a topic beside a classic consumer group, each seeing every record;
DescribeShareGroupOffsets shows a partition's start offset,
AlterShareGroupOffsets moves it for an empty group (members then get exactly
the records from there), DeleteShareGroupOffsets and DeleteGroups make the
group start anew, even after kill -9.

This module's broker runs with `share_auto_offset_reset = "earliest"` (so a
test may produce before its members fetch), 2 s record locks and a delivery
limit of 3 (`BROKER_SETTINGS`); the test of `latest` has a broker of its own
with the default reset. Share heartbeats come every 5 s (the default
`kafka.group_share_heartbeat_interval`); nothing here waits for one. Members are polled by the test thread
in bounded loops; librdkafka fetches only inside poll() (one ShareFetch in
flight per member), and in implicit mode sends the previous poll's ACCEPTs
with the next ShareFetch or commit. What a member acknowledged is taken
from the acknowledgement commit callback, which reports the offsets the
broker answered for.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter, defaultdict

import pika
import pytest
from confluent_kafka import AcknowledgeType, ConsumerGroupType, KafkaError, KafkaException, ShareConsumer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, ResourceType

from common.broker import api_get, module_broker, per_test_broker
from common.wire import Reader, recv_frame, request_frame, uvarint
from common.share_admin import (
    GROUP_ID_NOT_FOUND,
    NON_EMPTY_GROUP,
    NONE,
    UNKNOWN_TOPIC_OR_PARTITION,
    alter_share_offsets,
    delete_share_offsets,
    describe_share_offsets,
    until_empty,
)
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
)

LOCK_S = 2.0
DELIVERY_LIMIT = 3
BROKER_SETTINGS = {
    "kafka.share_auto_offset_reset": "earliest",
    "kafka.group_share_record_lock_duration": f"{LOCK_S:.0f}s",
    "kafka.group_share_delivery_count_limit": str(DELIVERY_LIMIT),
}
# How long members may take to join and read what a test expects.
SETTLE_TIMEOUT_S = 20.0
# How long to keep polling after the expected records arrived, to catch
# extra deliveries: longer than a lock, so an unaccepted record would return.
QUIET_S = LOCK_S + 1.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    """This module's broker: earliest reset, 2 s locks, delivery limit 3."""
    with module_broker(tmp_path_factory, request, BROKER_SETTINGS) as instance:
        yield instance


@pytest.fixture
def latest_broker(tmp_path, request):
    """A broker of the test's own with the default `share_auto_offset_reset`
    (latest) and 2 s locks."""
    with per_test_broker(tmp_path, request, {"kafka.group_share_record_lock_duration": f"{LOCK_S:.0f}s"}) as instance:
        yield instance


# --- members ------------------------------------------------------------------------------


class Delivery:
    """One record as a member got it."""

    def __init__(self, member: str, msg, polled_at: float, at: float):
        self.member = member
        self.polled_at = polled_at  # when the poll that returned it began
        self.partition = msg.partition()
        self.offset = msg.offset()
        self.value = msg.value()
        self.count = msg.delivery_count()
        self.at = at

    def __repr__(self) -> str:
        return f"{self.value.decode()}@{self.partition}/{self.offset} #{self.count} to {self.member}"


class ShareMember:
    """A ShareConsumer polled by the test thread.

    In implicit mode (the default) a poll accepts what the previous poll
    returned. In explicit mode `policy(delivery)` names each record's
    AcknowledgeType (None: leave it unacknowledged, and stop polling this
    member), and the acknowledgements are committed (commit_sync) right away.
    The acknowledgement commit callback's answers are kept: `acked` the
    (partition, offset) the broker took, `ack_failures` the refused ones.
    Client errors are recorded; a fatal one fails the test at once."""

    def __init__(self, broker, group: str, topics, name: str, policy=None, **extra):
        self.name = name
        self.policy = policy
        self.closed = False
        self.holding = False  # explicit mode: unacknowledged records kept on purpose
        self.deliveries: list[Delivery] = []
        self.last_poll: list[Delivery] = []
        self.acked: list[tuple[int, int]] = []
        self.ack_failures: list[tuple[list[tuple[int, int]], str]] = []
        self.commit_failures: list[tuple[int, str]] = []
        self.errors: list[KafkaError] = []
        config = confluent_config(
            broker,
            **{
                "group.id": group,
                "client.id": name,
                "max.poll.records": 5,
                "share.acknowledgement.mode": "explicit" if policy else "implicit",
                "error_cb": self.errors.append,
                **extra,
            },
        )
        self.consumer = ShareConsumer(config)
        self.consumer.set_acknowledgement_commit_callback(self._acknowledged)
        self.consumer.subscribe(list(topics))

    def _acknowledged(self, offsets, exception):
        found = sorted((tp.partition, offset) for tp, done in offsets.items() for offset in done)
        if exception is None:
            self.acked.extend(found)
        else:
            self.ack_failures.append((found, str(exception)))

    def values(self) -> list[bytes]:
        return [d.value for d in self.deliveries]

    def step(self, timeout: float = 0.1) -> list[Delivery]:
        if self.closed or self.holding:
            return []
        started = time.monotonic()
        batch = self.consumer.poll(timeout)
        got = []
        for msg in batch:
            error = msg.error()
            if error is not None:
                if error.fatal() or error.code() == KafkaError._FATAL:
                    raise AssertionError(f"{self.name}: fatal consumer error {error}")
                self.errors.append(error)
                continue
            got.append(Delivery(self.name, msg, started, time.monotonic()))
            if self.policy is not None:
                kind = self.policy(got[-1])
                if kind is None:
                    self.holding = True
                else:
                    self.consumer.acknowledge(msg, kind)
        self.deliveries.extend(got)
        if got:
            self.last_poll = got
        if got and self.policy is not None and not self.holding:
            self.commit()
        return got

    def commit(self) -> None:
        """commit_sync, keeping per-partition failures (and serving the
        acknowledgement callback)."""
        for tp, error in self.consumer.commit_sync(CLIENT_TIMEOUT_S).items():
            if error is not None:
                self.commit_failures.append((tp.partition, str(error)))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.consumer.close()


@pytest.fixture
def share_members(request):
    """Makes ShareMembers of the test's broker (`latest_broker` if the test
    asked for it, else the module's); closes whatever is left open when the
    test ends."""
    broker = request.getfixturevalue("latest_broker" if "latest_broker" in request.fixturenames else "broker")

    def make(group, topics, name, policy=None, **extra) -> ShareMember:
        return ShareMember(broker, group, topics, name, policy, **extra)

    with closing_all(make) as factory:
        yield factory


def drive(active, until, timeout: float, what: str, extra=None) -> None:
    """Polls every member in turn (and calls `extra`) until `until()` holds;
    fails with what each member got after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for member in active:
            member.step()
        if extra is not None:
            extra()
        if until():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; {state(active)}")


def run_for(active, seconds: float, extra=None) -> None:
    """Polls every member in turn (and calls `extra`) for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for member in active:
            member.step()
        if extra is not None:
            extra()


def state(active) -> str:
    return "; ".join(
        f"{m.name}: {len(m.deliveries)} delivered (last {m.deliveries[-3:]}), {len(m.acked)} acked, "
        f"ack failures {m.ack_failures[:2]}, commit failures {m.commit_failures[:2]}, "
        f"errors {[str(e) for e in m.errors[-3:]]}"
        for m in active
    )


def seen(active) -> list[bytes]:
    return [v for m in active for v in m.values()]


def produce_values(broker, topic: str, prefix: str, count: int, partitions: int = 1) -> dict[bytes, tuple[int, int]]:
    """Produces `prefix-<n>` for n < count, spread over `partitions`
    (acks=all); returns {value: (partition, offset)}."""
    producer = confluent_producer(broker, **{"acks": "all", "linger.ms": 5})
    records = [
        {"topic": topic, "partition": i % partitions, "value": f"{prefix}-{i}".encode()} for i in range(count)
    ]
    reports = produce_all(producer, records)
    assert_all_delivered(reports)
    return {msg.value(): (msg.partition(), msg.offset()) for _, msg in reports}


def nothing_more(broker, group: str, topic: str, share_members, seconds: float = QUIET_S) -> list[Delivery]:
    """What a new member of `group` gets in `seconds` (longer than a lock):
    once every record was accepted, nothing."""
    late = share_members(group, [topic], "late-" + unique_name("member"))
    run_for([late], seconds)
    late.commit()
    return late.deliveries


# --- tests --------------------------------------------------------------------------------


def test_three_members_split_one_partition_and_every_record_is_accepted_exactly_once(
    broker, topic, group, share_members
):
    create_topic_confluent(broker, topic, partitions=1)
    trio = [share_members(group, [topic], f"member-{i}") for i in range(3)]
    # Every member joins and parks a ShareFetch before anything is produced,
    # so the appends wake all three.
    run_for(trio, 2.0)
    assert not seen(trio), f"records before any were produced: {state(trio)}"
    produced = produce_values(broker, topic, "v", 150)

    drive(trio, lambda: len(seen(trio)) >= 150, SETTLE_TIMEOUT_S, "the 150 records")
    run_for(trio, 0.5)
    for member in trio:
        member.commit()  # accepts the last poll (implicit mode)
        member.close()

    values = seen(trio)
    twice = {v: n for v, n in Counter(values).items() if n > 1}
    assert not twice, f"{len(twice)} records delivered more than once, e.g. {sorted(twice.items())[:5]}"
    assert sorted(values) == sorted(produced), (
        f"missing {sorted(set(produced) - set(values))[:5]}, unexpected {sorted(set(values) - set(produced))[:5]}"
    )
    counts = Counter(d.count for m in trio for d in m.deliveries)
    assert counts == {1: 150}, f"delivery counts {dict(counts)}; a record delivered once has count 1"
    per_member = {m.name: len(m.deliveries) for m in trio}
    assert sum(1 for n in per_member.values() if n) >= 2, f"one member got everything: {per_member}"
    for member in trio:
        got = {produced[d.value] for d in member.deliveries}
        assert Counter(member.acked) == Counter(got), (
            f"{member.name} got {len(got)} records but the broker took acknowledgements for {len(member.acked)}: "
            f"not acked {sorted(got - set(member.acked))[:5]}, acked unasked {sorted(set(member.acked) - got)[:5]}; "
            f"{state([member])}"
        )
    accepted = Counter(a for m in trio for a in m.acked)
    assert accepted == Counter(produced.values()), (
        f"accepted more than once: {[o for o, n in accepted.items() if n > 1][:5]}"
    )
    assert not any(m.ack_failures or m.commit_failures for m in trio), state(trio)
    leftover = nothing_more(broker, group, topic, share_members)
    assert not leftover, f"a new member got records after all were accepted: {leftover[:5]}"


def test_release_redelivers_with_a_higher_count_until_the_limit_and_reject_is_final(
    broker, topic, group, share_members
):
    create_topic_confluent(broker, topic, partitions=1)
    produced = {}
    for prefix in ("always-release", "release-once", "reject", "accept"):
        produced.update(produce_values(broker, topic, prefix, 2))

    def policy(delivery: Delivery):
        value = delivery.value.decode()
        if value.startswith("always-release"):
            return AcknowledgeType.RELEASE
        if value.startswith("release-once"):
            return AcknowledgeType.RELEASE if delivery.count == 1 else AcknowledgeType.ACCEPT
        if value.startswith("reject"):
            return AcknowledgeType.REJECT
        return AcknowledgeType.ACCEPT

    pair = [share_members(group, [topic], f"explicit-{i}", policy) for i in range(2)]
    history: dict[bytes, list[int]] = defaultdict(list)

    def counts():
        history.clear()
        for delivery in sorted((d for m in pair for d in m.deliveries), key=lambda d: d.at):
            history[delivery.value].append(delivery.count)
        return history

    always = [v for v in produced if v.startswith(b"always-release")]
    drive(pair, lambda: all(len(counts()[v]) >= DELIVERY_LIMIT for v in always)
          and len(counts()) == len(produced), SETTLE_TIMEOUT_S,
          f"the always-released records to be delivered {DELIVERY_LIMIT} times")
    # Longer than a lock: an archived or rejected record that came back
    # (released or expired) would show up here.
    run_for(pair, QUIET_S)
    counts()

    expected = {
        v: (list(range(1, DELIVERY_LIMIT + 1)) if v.startswith(b"always-release")
            else [1, 2] if v.startswith(b"release-once") else [1])
        for v in produced
    }
    assert dict(history) == expected, (
        f"delivery counts per record in order (expected {expected}), got {dict(history)}; "
        f"with limit {DELIVERY_LIMIT} a record released each time is delivered exactly {DELIVERY_LIMIT} times"
    )
    assert not any(m.commit_failures or m.ack_failures for m in pair), state(pair)
    acked = Counter(a for m in pair for a in m.acked)
    # Every delivery was acknowledged once (release, accept or reject).
    assert acked == Counter(produced[v] for v, c in history.items() for _ in c), f"acknowledged {acked}"
    leftover = nothing_more(broker, group, topic, share_members)
    assert not leftover, f"records came back after being archived, accepted or rejected: {leftover}"


def test_a_record_whose_lock_runs_out_goes_to_another_member_with_count_two(broker, topic, group, share_members):
    create_topic_confluent(broker, topic, partitions=1)
    first = produce_values(broker, topic, "held", 3)
    held_values: set[bytes] = set()

    def taker_policy(delivery: Delivery):
        # What the holder held is kept unacknowledged until the holder has
        # tried to acknowledge it.
        return None if delivery.value in held_values else AcknowledgeType.ACCEPT

    holder = share_members(group, [topic], "holder", lambda d: None)
    # Joins in the background (librdkafka's own thread); it fetches only
    # when polled.
    taker = share_members(group, [topic], "taker", taker_policy)
    drive([holder], lambda: holder.holding, SETTLE_TIMEOUT_S, "the holder to get records")
    held = holder.last_poll
    held_values.update(d.value for d in held)
    held_since = min(d.polled_at for d in held)  # the broker acquired them after this

    fresh = produce_values(broker, topic, "fresh", 1)
    drive([taker], lambda: held_values <= set(taker.values()) and set(fresh) <= set(taker.values()),
          LOCK_S + SETTLE_TIMEOUT_S, "the second member to get the fresh record, and the held ones after the lock")
    back = [d for d in taker.deliveries if d.value in held_values]
    fresh_delivery = next(d for d in taker.deliveries if d.value in fresh)

    assert sorted(d.value for d in back) == sorted(held_values), f"held {held}, came back {back}"
    assert all(d.count == 2 for d in back), f"came back with counts {back}, expected 2 (second delivery)"
    # A fetch acquires the lowest available offsets first: the fresh record
    # (produced last) alone in an earlier poll shows the second member was
    # fetching while the held records were still locked.
    assert fresh_delivery.at < min(d.polled_at for d in back), (
        f"the fresh record did not come before the held ones: {taker.deliveries}"
    )
    waited = min(d.at for d in back) - held_since
    assert waited >= LOCK_S - 0.1, f"a held record came back {waited:.2f} s after it was acquired, before its lock"
    assert waited < LOCK_S + 8, f"a held record came back only {waited:.1f} s after it was acquired"

    # The holder's lock is gone: its acknowledgement is refused and
    # changes nothing; the new holder's is taken.
    for delivery in held:
        holder.consumer.acknowledge_offset(topic, delivery.partition, delivery.offset, AcknowledgeType.ACCEPT)
    holder.commit()
    refused = KafkaError(KafkaError.INVALID_RECORD_STATE).str()
    assert holder.commit_failures and all(refused in text for _, text in holder.commit_failures), (
        f"the former holder's acknowledgement of records another member holds: commit failures "
        f"{holder.commit_failures}, callback failures {holder.ack_failures}, acked {holder.acked}; "
        f"expected INVALID_RECORD_STATE ({refused!r})"
    )
    assert not holder.acked, f"the broker took the former holder's acknowledgements: {holder.acked}"
    for delivery in back:
        taker.consumer.acknowledge_offset(topic, delivery.partition, delivery.offset, AcknowledgeType.ACCEPT)
    taker.commit()
    assert not taker.commit_failures and not taker.ack_failures, state([taker])
    assert sorted(taker.acked) == sorted([*first.values(), *fresh.values()]), f"taker acked {taker.acked}"
    taker.holding = False
    run_for([taker], QUIET_S)
    assert sorted(d.value for d in taker.deliveries) == sorted([*first, *fresh]), (
        f"records delivered again after they were accepted: {taker.deliveries}"
    )


def test_with_latest_reset_a_group_reads_only_what_is_produced_after_its_first_fetch(
    latest_broker, topic, group, share_members
):
    broker = latest_broker
    create_topic_confluent(broker, topic, partitions=1)
    before = produce_values(broker, topic, "before", 20)
    member = share_members(group, [topic], "member")
    # When the member's first ShareFetch fixes the start is not visible to
    # the test: probes go out one by one until one arrives.
    probes: list[bytes] = []

    def probe():
        probes.extend(produce_values(broker, topic, f"probe{len(probes)}", 1))
        time.sleep(0.2)

    drive([member], lambda: any(v.startswith(b"probe") for v in member.values()), SETTLE_TIMEOUT_S,
          "a probe produced after the member's first fetch", extra=probe)
    after = produce_values(broker, topic, "after", 20)
    drive([member], lambda: set(after) <= set(member.values()), SETTLE_TIMEOUT_S, "the records produced after")
    run_for([member], 1.0)

    values = member.values()
    old = set(values) & set(before)
    assert not old, f"with share.auto.offset.reset latest the group got {len(old)} earlier records: {sorted(old)[:5]}"
    got_probes = [v for v in values if v.startswith(b"probe")]
    first = probes.index(got_probes[0])
    assert got_probes == probes[first:], (
        f"probes produced {probes}, delivered {got_probes}: once the start is fixed every later record comes"
    )
    assert sorted(v for v in values if v.startswith(b"after")) == sorted(after), f"got {values}"


def test_records_a_closing_member_had_not_accepted_go_to_the_others(broker, topic, group, share_members):
    create_topic_confluent(broker, topic, partitions=1)
    trio = [share_members(group, [topic], f"member-{i}", **{"max.poll.records": 3}) for i in range(3)]
    run_for(trio, 1.5)
    produced = produce_values(broker, topic, "v", 60)
    closer, others = trio[0], trio[1:]
    drive(trio, lambda: len(closer.deliveries) >= 6, SETTLE_TIMEOUT_S, "the first member to get 6 records")
    # librdkafka accepts the last poll on the next poll or commit, not on
    # close; the broker releases it when the share session closes.
    last_poll_started = min(d.polled_at for d in closer.last_poll)
    unaccepted = {d.value for d in closer.last_poll}
    closer.close()
    closed_at = time.monotonic()
    unaccepted -= {v for v, at in produced.items() if at in closer.acked}
    drive(others, lambda: set(produced) <= set(seen(trio)) and unaccepted <= set(seen(others)),
          SETTLE_TIMEOUT_S, "the others to get every record, also those the closed member had not accepted")
    for member in others:
        member.commit()
        member.close()

    missing = set(produced) - set(seen(trio))
    assert not missing, f"{len(missing)} records never delivered, e.g. {sorted(missing)[:5]}"
    accepted = {a for m in trio for a in m.acked}
    not_accepted = sorted(v for v, at in produced.items() if at not in accepted)
    assert not not_accepted, f"{len(not_accepted)} records never accepted, e.g. {not_accepted[:5]}; {state(trio)}"
    # librdkafka 2.16 leaves the last poll unaccepted on close (checked in
    # its source, kip932-notes.md §5); should a later one accept it, there
    # is nothing to come back and only the checks above apply.
    if unaccepted:
        again = [d for m in others for d in m.deliveries if d.value in unaccepted]
        assert {d.value for d in again} == unaccepted, (
            f"the closed member's unaccepted {sorted(unaccepted)} came to the others as {again}: {state(trio)}"
        )
        assert all(d.count in (1, 2) for d in again), f"redelivered with counts {again}"
        first_again = min(d.at for d in again)
        # Before the closed member's locks could have run out: the close
        # released them (ShareAcknowledge with epoch -1, or the leave heartbeat).
        assert first_again < last_poll_started + LOCK_S, (
            f"unaccepted records came back {first_again - closed_at:.2f} s after the close, "
            f"{first_again - last_poll_started:.2f} s after they were acquired: only when the lock ran out"
        )
    assert not any(m.commit_failures for m in trio), state(trio)
    leftover = nothing_more(broker, group, topic, share_members)
    assert not leftover, f"a new member got records after all were accepted: {leftover[:5]}"


CHILD_SHARE_MEMBER = r"""
import json, sys, time
from confluent_kafka import ShareConsumer

config, topic = json.loads(sys.argv[1]), sys.argv[2]
consumer = ShareConsumer(config)
consumer.subscribe([topic])
deadline = time.monotonic() + 60  # killed long before; never outlives the test
while time.monotonic() < deadline:
    batch = consumer.poll(0.2)
    got = [[m.offset(), m.value().decode(), m.delivery_count()] for m in batch if m.error() is None]
    if got:
        print(json.dumps({"got": got}), flush=True)
        break
# Holds what it got (explicit mode, never acknowledged) until killed.
while time.monotonic() < deadline:
    time.sleep(0.1)
"""


def test_records_held_by_a_killed_member_go_to_the_others(broker, topic, group, share_members):
    create_topic_confluent(broker, topic, partitions=1)
    produced = produce_values(broker, topic, "v", 4)
    config = confluent_config(broker, **{"group.id": group, "client.id": "child", "max.poll.records": 5,
                                         "share.acknowledgement.mode": "explicit"})
    child = subprocess.Popen([sys.executable, "-c", CHILD_SHARE_MEMBER, json.dumps(config), topic],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not lines and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines, f"the child member got nothing within {SETTLE_TIMEOUT_S} s (exit code {child.poll()})"
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        reader.join(timeout=5)
    killed_at = time.monotonic()
    held = {value.encode(): count for _, value, count in json.loads(lines[0])["got"]}
    assert held and set(held.values()) == {1}, f"the child got {held}"

    survivor = share_members(group, [topic], "survivor")
    drive([survivor], lambda: set(produced) <= set(survivor.values()), LOCK_S + SETTLE_TIMEOUT_S,
          "the survivor to get every record, also those the killed member held")
    back_after = time.monotonic() - killed_at
    survivor.commit()

    again = [d for d in survivor.deliveries if d.value in held]
    # Released when the connection dropped (Kafka's session release, which
    # does not count the interrupted delivery): count 1. A release by the
    # lock running out would count it (2).
    assert sorted(d.value for d in again) == sorted(held), f"held {held}, the survivor got {again}"
    assert all(d.count == 1 for d in again), (
        f"the killed member's records came back with counts {again}: not released when its connection closed"
    )
    assert sorted(survivor.values()) == sorted(produced), f"{survivor.deliveries}"
    assert sorted(survivor.acked) == sorted(produced.values()), state([survivor])
    print(f"the killed member's records came back {back_after:.2f} s after the kill, counts "
          f"{sorted(d.count for d in again)}")


def test_admin_clients_list_a_share_group(broker, topic, group, share_members):
    from kafka.admin import KafkaAdminClient

    create_topic_confluent(broker, topic, partitions=1)
    produced = produce_values(broker, topic, "v", 5)
    member = share_members(group, [topic], "member")
    drive([member], lambda: len(member.deliveries) >= 5, SETTLE_TIMEOUT_S, "the 5 records")
    assert sorted(member.values()) == sorted(produced)
    admin = confluent_admin(broker)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        listed = {g.id: g for g in admin.list_groups(timeout=CLIENT_TIMEOUT_S)}
    assert group in listed, f"ListGroups through confluent-kafka list_groups() lists {sorted(listed)}"

    consumer_groups = admin.list_consumer_groups(request_timeout=CLIENT_TIMEOUT_S).result(timeout=CLIENT_TIMEOUT_S)
    assert not consumer_groups.errors, consumer_groups.errors
    as_consumer_groups = {g.group_id: g for g in consumer_groups.valid}
    if hasattr(ConsumerGroupType, "SHARE"):
        assert group in as_consumer_groups and as_consumer_groups[group].type == ConsumerGroupType.SHARE, (
            f"list_consumer_groups: {as_consumer_groups.get(group)}"
        )
    else:
        # confluent-kafka 2.16.1 has no SHARE group type, and librdkafka's
        # list_consumer_groups keeps only groups of protocol type "" or
        # "consumer": a share group (protocol type "share", as Kafka lists it)
        # must not be among them.
        assert group not in as_consumer_groups, (
            f"list_consumer_groups lists the share group as a consumer group: {as_consumer_groups[group].__dict__}"
        )

    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        protocols = dict(client.list_consumer_groups())
    finally:
        client.close()
    assert protocols.get(group) == "share", (
        f"kafka-python (ListGroups) lists the share group with protocol type {protocols.get(group)!r}, "
        f"expected 'share'"
    )


def test_a_share_group_and_a_classic_group_each_see_every_record(broker, topic, group, share_members):
    create_topic_confluent(broker, topic, partitions=2)
    produced = produce_values(broker, topic, "first", 60, partitions=2)
    classic = ClassicPoller(broker, topic, unique_name("group-classic"))
    try:
        pair = [share_members(group, [topic], f"share-{i}") for i in range(2)]
        drive(pair, lambda: len(seen(pair)) >= 60 and len(classic.seen) >= 60, SETTLE_TIMEOUT_S,
              "both groups to read the first 60 records", extra=classic.poll)
        produced.update(produce_values(broker, topic, "second", 40, partitions=2))
        drive(pair, lambda: len(seen(pair)) >= 100 and len(classic.seen) >= 100, SETTLE_TIMEOUT_S,
              "both groups to read the 40 records produced while they run", extra=classic.poll)
        run_for(pair, 1.0, extra=classic.poll)
        for member in pair:
            member.commit()
    finally:
        classic.close()

    assert sorted(classic.seen) == sorted(produced), (
        f"the classic group read {len(classic.seen)}: missing {sorted(set(produced) - set(classic.seen))[:5]}"
    )
    shared = seen(pair)
    assert sorted(shared) == sorted(produced), (
        f"the share group read {len(shared)}: missing {sorted(set(produced) - set(shared))[:5]}, "
        f"twice {[v for v, n in Counter(shared).items() if n > 1][:5]}"
    )
    assert {p for p, _ in (a for m in pair for a in m.acked)} == {0, 1}, "acknowledged on both partitions"
    assert Counter(a for m in pair for a in m.acked) == Counter(produced.values()), state(pair)


@pytest.fixture
def restartable_broker(tmp_path, request):
    """A broker of the test's own, with 30 s locks: a record held across
    the restart comes back because of the restart, not its lock."""
    settings = {**BROKER_SETTINGS, "kafka.group_share_record_lock_duration": "30s"}
    with per_test_broker(tmp_path, request, settings) as instance:
        yield instance


def test_the_share_state_survives_kill_9_of_the_broker(restartable_broker, topic, group):
    broker = restartable_broker
    create_topic_confluent(broker, topic, partitions=1)
    produced = produce_values(broker, topic, "v", 20)
    index = lambda d: int(d.value.decode().split("-")[1])  # noqa: E731

    def policy(delivery):
        n = index(delivery)
        if n < 10:
            return AcknowledgeType.ACCEPT
        if n < 13:
            return AcknowledgeType.REJECT
        return None  # held, unacknowledged, across the kill

    first = ShareMember(broker, group, [topic], "before", policy, **{"socket.timeout.ms": 5000})
    try:
        drive([first], lambda: first.holding, SETTLE_TIMEOUT_S, "the first member to hold a record")
        first.commit()  # the rejects of the poll that also held a record
        done = sorted(offset for _, offset in first.acked)
        assert done == list(range(13)), f"accepted or rejected before the kill: {done}; {state([first])}"
        held = [d for d in first.deliveries if index(d) >= 13]

        broker.kill()
        broker.start()

        after = ShareMember(broker, group, [topic], "after")
        try:
            rest = {v for v in produced if int(v.decode().split("-")[1]) >= 13}
            drive([after], lambda: rest <= set(after.values()), SETTLE_TIMEOUT_S, "the records not yet accepted")
            run_for([after], 1.0)
            after.commit()
        finally:
            after.close()
    finally:
        try:
            first.close()
        except Exception:  # noqa: BLE001 - its broker was killed under it
            pass

    again = [d for d in after.deliveries if index(d) < 13]
    assert not again, f"records accepted or rejected before the kill came back: {again}"
    assert sorted(after.values()) == sorted(rest), f"after the restart: {after.deliveries}"
    counts = {index(d): d.count for d in after.deliveries}
    for delivery in held:
        # Acquired before the kill: available again, that delivery counted.
        assert counts[index(delivery)] == 2, f"held {held}, after the restart {after.deliveries}"
    assert all(c in (1, 2) for c in counts.values()), f"after the restart {after.deliveries}"


def test_deleting_a_share_group_forgets_its_state_and_clients_cannot_write_it(restartable_broker, topic, group):
    """DeleteGroups of a share group deletes its stored state, as Kafka's
    does: a group of that id starts anew (here at earliest) even after a
    kill -9; the broker's own `__sluice_share-` groups that hold the state
    refuse clients' commits and deletes (GROUP_AUTHORIZATION_FAILED)."""
    from confluent_kafka import Consumer, TopicPartition

    broker = restartable_broker
    create_topic_confluent(broker, topic, partitions=1)
    produced = produce_values(broker, topic, "v", 10)
    first = ShareMember(broker, group, [topic], "first", lambda _: AcknowledgeType.ACCEPT)
    try:
        drive([first], lambda: len(first.acked) >= 10, SETTLE_TIMEOUT_S, "the 10 records accepted")
        assert sorted(first.acked) == sorted(produced.values()), state([first])
    finally:
        first.close()

    admin = confluent_admin(broker)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        try:
            admin.delete_consumer_groups([group], request_timeout=CLIENT_TIMEOUT_S)[group].result(
                timeout=CLIENT_TIMEOUT_S
            )
            break
        except KafkaException as error:
            # The closing member's leave may not have reached the coordinator.
            if error.args[0].code() != KafkaError.NON_EMPTY_GROUP or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)

    internal = f"__sluice_share-{group}"
    failures = admin.delete_consumer_groups([internal], request_timeout=CLIENT_TIMEOUT_S)
    with pytest.raises(KafkaException) as refused:
        failures[internal].result(timeout=CLIENT_TIMEOUT_S)
    assert refused.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED, refused.value
    writer = Consumer(confluent_config(broker, **{"group.id": internal, "enable.auto.commit": False}))
    try:
        with pytest.raises(KafkaException) as refused:
            writer.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
        assert refused.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED, refused.value
    finally:
        writer.close()

    broker.kill()
    broker.start()

    again = ShareMember(broker, group, [topic], "again")
    try:
        drive([again], lambda: len(again.deliveries) >= 10, SETTLE_TIMEOUT_S, "the 10 records once more")
        run_for([again], 0.5)
        again.commit()
    finally:
        again.close()
    assert sorted(again.values()) == sorted(produced), f"the deleted group's id read {again.deliveries}"
    assert {d.count for d in again.deliveries} == {1}, f"a group of the id starts anew: {again.deliveries}"


def test_share_group_offsets_are_described_altered_and_deleted(broker, topic, group, share_members):
    """The admin side of a share group, as `kafka-share-groups.sh` drives
    it: Describe shows each partition's start offset; Alter (only while the
    group is empty) moves it, and members then get exactly the records from
    there, as first deliveries; Delete makes the partition start anew at
    share.auto.offset.reset (earliest here)."""
    create_topic_confluent(broker, topic, partitions=1)
    produced = produce_values(broker, topic, "v", 10)
    index = lambda d: int(d.value.decode().split("-")[1])  # noqa: E731
    first = share_members(group, [topic], "first", lambda d: AcknowledgeType.ACCEPT if index(d) < 4 else None)
    drive([first], lambda: first.holding, SETTLE_TIMEOUT_S, "the first member to hold a record")
    first.commit()
    assert sorted(o for _, o in first.acked) == [0, 1, 2, 3], state([first])
    assert describe_share_offsets(broker.bootstrap, group) == (NONE, {topic: {0: (4, NONE)}})
    assert alter_share_offsets(broker.bootstrap, group, topic, {0: 7})[0] == NON_EMPTY_GROUP, "the group has a member"
    first.close()

    assert until_empty(lambda: alter_share_offsets(broker.bootstrap, group, topic, {0: 7})) == (NONE, {0: NONE})
    assert describe_share_offsets(broker.bootstrap, group) == (NONE, {topic: {0: (7, NONE)}})
    assert alter_share_offsets(broker.bootstrap, group, "no-such-topic", {0: 1})[1] == {0: UNKNOWN_TOPIC_OR_PARTITION}
    second = share_members(group, [topic], "second")
    drive([second], lambda: len(second.deliveries) >= 3, SETTLE_TIMEOUT_S, "the records from offset 7")
    run_for([second], QUIET_S)
    second.commit()
    second.close()
    assert sorted(second.values()) == [b"v-7", b"v-8", b"v-9"], second.deliveries
    assert {d.count for d in second.deliveries} == {1}, second.deliveries

    assert until_empty(lambda: delete_share_offsets(broker.bootstrap, group, topic)) == (NONE, NONE)
    assert describe_share_offsets(broker.bootstrap, group) == (NONE, {})
    third = share_members(group, [topic], "third")
    drive([third], lambda: len(third.deliveries) >= 10, SETTLE_TIMEOUT_S, "every record once more")
    assert sorted(third.values()) == sorted(produced), third.deliveries
    assert {d.count for d in third.deliveries} == {1}, third.deliveries

    assert describe_share_offsets(broker.bootstrap, unique_name("no-such-group"))[0] == GROUP_ID_NOT_FOUND


# --- group configs ------------------------------------------------------------------------


def set_group_configs(broker, group: str, configs: dict[str, str | None]) -> None:
    """IncrementalAlterConfigs of group `group` (resource type GROUP, 32 on
    the wire): SET each key with a value, DELETE each key with None."""
    entries = [
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET if value is not None
                    else AlterConfigOpType.DELETE)
        for key, value in configs.items()
    ]
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)
    admin = confluent_admin(broker)  # kept until the answer came
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=CLIENT_TIMEOUT_S)


def group_configs(broker, group: str) -> dict[str, tuple[str, ConfigSource]]:
    """DescribeConfigs of group `group`: {key: (value, source)}."""
    resource = ConfigResource(ResourceType.GROUP, group)
    admin = confluent_admin(broker)  # kept until the answer came
    (future,) = admin.describe_configs([resource]).values()
    entries = future.result(timeout=CLIENT_TIMEOUT_S)
    return {name: (entry.value, ConfigSource(entry.source)) for name, entry in entries.items()}


def listed_group_configs(broker) -> set[str]:
    """ListConfigResources v1 (API 74, what `kafka-configs --describe
    --entity-type groups` asks first) of resource type GROUP, on a raw
    socket: no Python client has the call."""
    body = uvarint(2) + bytes([32]) + uvarint(0)  # resource_types [32], no tagged fields
    with socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request_frame(74, 1, 9, body, flexible=True))
        reader = Reader(recv_frame(sock))
    assert reader.int32() == 9, "correlation id"
    reader.tagged_fields()
    reader.int32()  # throttle
    assert reader.int16() == 0, "error code"
    names = set()
    for _ in range(reader.uvarint() - 1):
        name = reader.take(reader.uvarint() - 1).decode()
        assert reader.int8() == 32, "resource type"
        reader.tagged_fields()
        names.add(name)
    return names


def amqp_parameters(broker) -> pika.ConnectionParameters:
    """pika to the broker's AMQP listener (guest, vhost "/")."""
    return pika.ConnectionParameters(host="127.0.0.1", port=broker.amqp_port, virtual_host="/",
                                     connection_attempts=3, retry_delay=0.5)


def dead_letters(broker, queue: str, count: int) -> list[tuple[str, dict, bytes]]:
    """Takes `count` messages from AMQP queue `queue` (bounded wait):
    [(routing key, headers, body)]."""
    connection = pika.BlockingConnection(amqp_parameters(broker))
    try:
        channel = connection.channel()
        got = []
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while len(got) < count and time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                connection.sleep(0.1)
                continue
            got.append((method.routing_key, dict(properties.headers or {}), body))
        assert len(got) == count, f"{len(got)} of {count} dead letters in {queue}: {got}"
        connection.sleep(0.5)
        extra = channel.basic_get(queue, auto_ack=True)[0]
        assert extra is None, f"more than {count} dead letters in {queue}"
        return got
    finally:
        connection.close()


def test_group_configs_set_a_groups_delivery_limit_and_where_it_dead_letters(broker, topic, group, share_members):
    """KIP-932's group configs through the admin client (resource type
    GROUP): this group's `share.delivery.count.limit` of 2 wins over the
    broker's 3, and Sluice's `sluice.share.dead.letter.exchange` and
    `.routing.key` send what the group archives (rejected, or at its limit)
    to an AMQP exchange under that routing key, with the x-share-group,
    x-delivery-count and x-death-reason headers. Bad values are refused as
    INVALID_CONFIG; another group keeps the broker's settings."""
    create_topic_confluent(broker, topic, partitions=1)
    exchange, queue = f"{topic}-dlx", f"{topic}-dead"
    connection = pika.BlockingConnection(amqp_parameters(broker))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, "dead")
    finally:
        connection.close()
    set_group_configs(broker, group, {
        "share.delivery.count.limit": "2",
        "sluice.share.dead.letter.exchange": exchange,
        "sluice.share.dead.letter.routing.key": "dead",
    })
    described = group_configs(broker, group)
    assert described["share.delivery.count.limit"] == ("2", ConfigSource.GROUP_CONFIG), described
    assert described["sluice.share.dead.letter.routing.key"] == ("dead", ConfigSource.GROUP_CONFIG), described
    assert described["share.record.lock.duration.ms"] == ("2000", ConfigSource.DEFAULT_CONFIG), described
    other = group_configs(broker, unique_name("other-group"))
    assert other["share.delivery.count.limit"] == (str(DELIVERY_LIMIT), ConfigSource.DEFAULT_CONFIG), other
    for bad in ({"share.delivery.count.limit": "11"}, {"share.auto.offset.reset": "sometimes"},
                {"retention.ms": "1000"}, {"share.heartbeat.interval.ms": "60000"}):
        with pytest.raises(KafkaException) as refused:
            set_group_configs(broker, group, bad)
        assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG, (bad, refused.value)
    assert group_configs(broker, group) == described, "a refused change changed the group's configs"

    produced = {}
    for prefix in ("release", "reject", "accept"):
        produced.update(produce_values(broker, topic, prefix, 2))

    def policy(delivery: Delivery):
        kind = delivery.value.decode().split("-")[0]
        return {"release": AcknowledgeType.RELEASE, "reject": AcknowledgeType.REJECT}.get(kind, AcknowledgeType.ACCEPT)

    member = share_members(group, [topic], "explicit", policy)
    released = [v for v in produced if v.startswith(b"release")]
    drive([member], lambda: all(member.values().count(v) >= 2 for v in released)
          and set(member.values()) == set(produced), SETTLE_TIMEOUT_S, "the released records twice")
    run_for([member], QUIET_S)
    history = defaultdict(list)
    for delivery in member.deliveries:
        history[delivery.value].append(delivery.count)
    assert {v: history[v] for v in released} == {v: [1, 2] for v in released}, (
        f"with the group's limit of 2 a record released each time is delivered twice: {dict(history)}"
    )

    letters = dead_letters(broker, queue, 4)
    assert {key for key, _, _ in letters} == {"dead"}, letters
    by_body = {body: headers for _, headers, body in letters}
    assert sorted(by_body) == sorted(v for v in produced if not v.startswith(b"accept")), letters
    for body, headers in by_body.items():
        reason, count = ("rejected", 1) if body.startswith(b"reject") else ("delivery_limit", 2)
        assert headers.get("x-share-group") == group.encode() or headers.get("x-share-group") == group, headers
        assert headers.get("x-death-reason") in (reason, reason.encode()), (body, headers)
        assert headers.get("x-delivery-count") == count, (body, headers)

    assert group in listed_group_configs(broker)
    shown = api_get(broker, f"/api/groups/{group}")["configs"]
    assert shown == {"share.delivery.count.limit": "2", "sluice.share.dead.letter.exchange": exchange,
                     "sluice.share.dead.letter.routing.key": "dead"}, shown
    # DELETE takes a key back to the broker's setting; an unknown key is no change.
    set_group_configs(broker, group, {"share.delivery.count.limit": None, "no.such.key": None})
    assert group_configs(broker, group)["share.delivery.count.limit"] == (str(DELIVERY_LIMIT), ConfigSource.DEFAULT_CONFIG)
    set_group_configs(broker, group, {key: None for key in shown})
    assert group not in listed_group_configs(broker), "a group whose keys are all deleted has no configs left"


def test_group_configs_survive_kill_9_and_set_a_groups_own_offset_reset(restartable_broker, topic, group):
    """Group configs are metadata: after kill -9 they are still there, and
    this group's `share.auto.offset.reset` of latest wins over the broker's
    earliest (it reads only what comes after its first fetch)."""
    broker = restartable_broker
    create_topic_confluent(broker, topic, partitions=1)
    set_group_configs(broker, group, {"share.auto.offset.reset": "latest", "share.record.lock.duration.ms": "5000"})
    broker.kill()
    broker.start()
    described = group_configs(broker, group)
    assert described["share.auto.offset.reset"] == ("latest", ConfigSource.GROUP_CONFIG), described
    assert described["share.record.lock.duration.ms"] == ("5000", ConfigSource.GROUP_CONFIG), described

    before = produce_values(broker, topic, "before", 5)
    member = ShareMember(broker, group, [topic], "latest")
    probes: list[bytes] = []

    def probe():
        # When the member's first ShareFetch fixes the start is not visible
        # to the test: probes go out one by one until one arrives.
        probes.extend(produce_values(broker, topic, f"probe{len(probes)}", 1))
        time.sleep(0.2)

    try:
        drive([member], lambda: any(v.startswith(b"probe") for v in member.values()), SETTLE_TIMEOUT_S,
              "a probe produced after the member's first fetch", extra=probe)
        after = produce_values(broker, topic, "after", 5)
        drive([member], lambda: set(after) <= set(member.values()), SETTLE_TIMEOUT_S, "the records produced after")
        member.commit()
    finally:
        member.close()
    old = set(member.values()) & set(before)
    assert not old, f"with the group's latest reset it got records produced before its first fetch: {sorted(old)}"
    assert sorted(v for v in member.values() if v.startswith(b"after")) == sorted(after), member.deliveries
