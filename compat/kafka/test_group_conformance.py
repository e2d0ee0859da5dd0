"""Group and coordinator behaviour that must match Apache Kafka 3.9's.

Contract: JoinGroup refuses a session timeout outside
`kafka.group_min_session_timeout`..`kafka.group_max_session_timeout`
(Kafka's `group.min.session.timeout.ms` 6000 and
`group.max.session.timeout.ms` 1800000, both inclusive) with
INVALID_SESSION_TIMEOUT (26); the first members of an empty group that join
within `kafka.group_initial_rebalance_delay` (Kafka's
`group.initial.rebalance.delay.ms`) share one generation, while with the
delay 0 the first member gets a generation of its own.

The harness starts brokers with the initial delay 0 (so other suites do not
wait); the tests here that need it set it themselves.
"""

from __future__ import annotations

import socket
import struct

import pytest
from confluent_kafka import Consumer, KafkaError

from common.broker import per_test_broker
from support import (
    CLIENT_TIMEOUT_S,
    confluent_config,
    create_topic_confluent,
    recv_frame,
    request_frame,
    unique_name,
    wait_until,
)

INVALID_SESSION_TIMEOUT = 26
# How long a group may take to form (beyond the initial delay).
SETTLE_TIMEOUT_S = 30.0


def join_code(broker, group: str, session_timeout_ms: int) -> int:
    """The error code of one JoinGroup v2 with `session_timeout_ms`, sent
    through kafka-python's request classes."""
    from kafka.protocol.group import JoinGroupRequest

    request = JoinGroupRequest[2](group, session_timeout_ms, 10000, "", "consumer", [("range", b"")])
    with socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request_frame(request.API_KEY, request.API_VERSION, 1, request.encode()))
        frame = recv_frame(sock)
    (correlation,) = struct.unpack(">i", frame[:4])
    assert correlation == 1
    return request.RESPONSE_TYPE.decode(frame[4:]).error_code


@pytest.mark.parametrize(
    ("session_timeout_ms", "expected"),
    [(5999, INVALID_SESSION_TIMEOUT), (6000, 0), (1800000, 0), (1800001, INVALID_SESSION_TIMEOUT)],
)
def test_join_group_enforces_kafkas_session_timeout_range(broker, session_timeout_ms, expected):
    group = unique_name(f"session-{session_timeout_ms}")
    assert join_code(broker, group, session_timeout_ms) == expected


def test_a_consumer_with_a_too_short_session_timeout_gets_invalid_session_timeout(broker, topic, group):
    create_topic_confluent(broker, topic, partitions=1)
    consumer = Consumer(confluent_config(
        broker,
        **{"group.id": group, "session.timeout.ms": 1000, "heartbeat.interval.ms": 100},
    ))
    errors: list[KafkaError] = []
    try:
        consumer.subscribe([topic])

        def refused() -> bool:
            message = consumer.poll(0.2)
            if message is not None and message.error() is not None:
                errors.append(message.error())
            return any(e.code() == KafkaError.INVALID_SESSION_TIMEOUT for e in errors)

        wait_until(refused, timeout=CLIENT_TIMEOUT_S, what="INVALID_SESSION_TIMEOUT from JoinGroup")
        assert consumer.assignment() == []
    finally:
        consumer.close()


def test_session_timeout_range_is_configurable(tmp_path, request):
    settings = {"kafka.group_min_session_timeout": "100ms", "kafka.group_max_session_timeout": "10s"}
    with per_test_broker(tmp_path, request, settings) as broker:
        assert join_code(broker, unique_name("short"), 100) == 0
        assert join_code(broker, unique_name("too-short"), 99) == INVALID_SESSION_TIMEOUT
        assert join_code(broker, unique_name("too-long"), 10001) == INVALID_SESSION_TIMEOUT


# --- group.initial.rebalance.delay.ms ------------------------------------------------


class Member:
    """A confluent-kafka consumer polled by the test thread that records
    every assignment it is given."""

    def __init__(self, broker, group, topic):
        self.assignments: list[set[int]] = []
        self.consumer = Consumer(confluent_config(
            broker,
            **{
                "group.id": group,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
                # Also the rebalance timeout, which bounds the initial delay.
                "max.poll.interval.ms": 30000,
                "enable.auto.commit": False,
            },
        ))
        self.consumer.subscribe(
            [topic],
            on_assign=lambda _, partitions: self.assignments.append({p.partition for p in partitions}),
        )

    def poll(self) -> None:
        message = self.consumer.poll(0.1)
        assert message is None or message.error() is None, message.error()

    def close(self) -> None:
        self.consumer.close()


def poll_until(members, predicate, what):
    def step() -> bool:
        for member in members:
            member.poll()
        return predicate()

    wait_until(step, timeout=SETTLE_TIMEOUT_S, what=what)


def test_members_joining_within_the_initial_delay_share_one_generation(tmp_path, request):
    with per_test_broker(tmp_path, request, {"kafka.group_initial_rebalance_delay": "3s"}) as broker:
        topic, group = unique_name("delayed"), unique_name("group-delayed")
        create_topic_confluent(broker, topic, partitions=2)
        first = Member(broker, group, topic)
        second = None
        try:
            # The first member's JoinGroup is under way before the second exists.
            first.poll()
            second = Member(broker, group, topic)
            poll_until(
                [first, second],
                lambda: first.assignments and second.assignments,
                "both members assigned",
            )
            # One generation: each was assigned once, and they split the partitions.
            assert len(first.assignments) == 1, first.assignments
            assert len(second.assignments) == 1, second.assignments
            assert len(first.assignments[0]) == 1 and len(second.assignments[0]) == 1
            assert first.assignments[0] | second.assignments[0] == {0, 1}
        finally:
            first.close()
            if second is not None:
                second.close()


def test_without_the_initial_delay_the_first_member_gets_a_generation_of_its_own(broker, topic, group):
    # The module's broker runs with the harness's delay of 0s.
    create_topic_confluent(broker, topic, partitions=2)
    first = Member(broker, group, topic)
    second = None
    try:
        poll_until([first], lambda: first.assignments, "the first member assigned")
        assert first.assignments == [{0, 1}]
        second = Member(broker, group, topic)
        poll_until(
            [first, second],
            lambda: second.assignments and len(first.assignments) >= 2 and len(first.assignments[-1]) == 1,
            "the group rebalanced over both members",
        )
        assert first.assignments[-1] | second.assignments[-1] == {0, 1}
    finally:
        first.close()
        if second is not None:
            second.close()
