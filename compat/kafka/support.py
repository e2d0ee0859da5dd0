"""Helpers for the Kafka compatibility tests: client wrappers and a minimal
raw Kafka framing. The broker process, unique names and bounded waits come
from compat/common/broker.py and are re-exported here.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from common.broker import Broker, wait_until  # noqa: F401 (wait_until: for the tests)
from common.broker import unique_name as _unique_name
from common.wire import (  # noqa: F401 (re-exported for the tests)
    Reader,
    compact_string,
    kafka_string,
    recv_exact,
    recv_frame,
    request_frame,
    uvarint,
    wait_closed,
)

# Default deadline for a client operation (flush, consume, admin future).
CLIENT_TIMEOUT_S = 30.0


def unique_name(hint: str) -> str:
    """A legal, unique Kafka topic or group name derived from `hint`."""
    return _unique_name(hint, max_hint=150)


# --- confluent-kafka ---------------------------------------------------------------


def confluent_config(broker: Broker, **extra) -> dict:
    config = {
        "bootstrap.servers": broker.bootstrap,
        "broker.address.family": "v4",
        # Failures surface in the test instead of as endless retries.
        "socket.timeout.ms": 20000,
    }
    config.update(extra)
    return config


def confluent_producer(broker: Broker, **extra):
    from confluent_kafka import Producer

    return Producer(confluent_config(broker, **{"message.timeout.ms": 20000, **extra}))


def confluent_consumer(broker: Broker, group: str | None = None, **extra):
    """A consumer for manual assignment (no group membership in this
    increment): group.id is set because confluent-kafka requires one, and
    auto-commit is off."""
    from confluent_kafka import Consumer

    return Consumer(confluent_config(
        broker,
        **{
            "group.id": group or unique_name("compat-consumer"),
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
            **extra,
        },
    ))


def produce_all(producer, records, timeout: float = CLIENT_TIMEOUT_S):
    """Produces `records` (dicts of Producer.produce kwargs), flushes and
    returns the delivery reports as (error, message) in delivery order.
    Fails unless every record got a report in time."""
    reports = []

    def on_delivery(err, msg):
        reports.append((err, msg))

    for record in records:
        # Serve delivery callbacks so a full local queue drains.
        while True:
            try:
                producer.produce(on_delivery=on_delivery, **record)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} of {len(records)} records still undelivered after {timeout} s"
    assert len(reports) == len(records), f"{len(reports)} delivery reports for {len(records)} records"
    return reports


def assert_all_delivered(reports):
    failed = [(err, msg.topic(), msg.partition()) for err, msg in reports if err is not None]
    assert not failed, f"{len(failed)} deliveries failed, first: {failed[:3]}"


def consume_confluent(consumer, count: int, timeout: float = CLIENT_TIMEOUT_S, settle: float = 0.0):
    """Polls until `count` messages arrived or `timeout` passed; raises on a
    consumer error. With `settle`, keeps polling that long after the count is
    reached to catch unexpected extra messages."""
    from confluent_kafka import KafkaError

    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        msg = consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        messages.append(msg)
    settle_deadline = time.monotonic() + settle
    while settle and time.monotonic() < settle_deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            messages.append(msg)
    return messages


def confluent_admin(broker: Broker):
    from confluent_kafka.admin import AdminClient

    return AdminClient(confluent_config(broker))


def create_topic_confluent(broker: Broker, name: str, partitions: int = 1, config: dict | None = None):
    from confluent_kafka.admin import NewTopic

    admin = confluent_admin(broker)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
        request_timeout=CLIENT_TIMEOUT_S,
    )
    assert set(futures) == {name}
    futures[name].result(timeout=CLIENT_TIMEOUT_S)
    return admin


# --- raw Kafka framing ---------------------------------------------------------------


@contextmanager
def closing_all(make):
    """Yields a factory that calls `make(*args, **kwargs)` and remembers
    what it made; at exit every one of them is closed (errors of one close
    do not keep the rest open). For fixtures that hand a test its members."""
    made = []

    def factory(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    try:
        yield factory
    finally:
        for thing in made:
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - teardown must close the rest
                pass


class ClassicPoller:
    """A kafka-python consumer of a classic group on `topic`, from the
    earliest offset, polled by the test thread beside other members
    (`poll` as a drive loop's `extra`): keeps what it read, commits after
    every batch."""

    def __init__(self, broker: Broker, topic: str, group: str):
        from kafka import KafkaConsumer

        self.seen: list[bytes] = []
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            client_id="kafka-python",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            max_poll_interval_ms=30000,
            request_timeout_ms=30000,
        )

    def poll(self) -> None:
        batch = self.consumer.poll(timeout_ms=50)
        for records in batch.values():
            self.seen.extend(record.value for record in records)
        if batch:
            self.consumer.commit()

    def close(self) -> None:
        self.consumer.close(autocommit=False)
