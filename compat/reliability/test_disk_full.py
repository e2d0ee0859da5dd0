"""A full disk, for real: the broker's data directory sits on a tmpfs of a
few dozen MiB (mounted by the test; root only, which CI is) beside a filler
file the test grows and deletes.

With the free-space reserve (`amqp.disk_free_limit`), producers get
KAFKA_STORAGE_ERROR and AMQP publishers connection.blocked before the disk
is full; without it (limit 0) the file system itself runs out and the write
that does not fit fails the same way. Either way nothing acknowledged is
damaged, reads go on, writing resumes by itself once space is freed, and a
restart (clean, or after SIGKILL) recovers everything acknowledged."""

from __future__ import annotations

import contextlib
import os
import time

import pika
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common.broker import Broker, wait_until
from support import CLIENT_TIMEOUT_S, can_mount, confluent_config, fill, free_bytes, tmpfs

RECORD = 64 * 1024

pytestmark = pytest.mark.skipif(
    not can_mount() and os.environ.get("CI") != "true",
    reason="mounting a tmpfs needs root (CI runs as root and never skips this)",
)


def value(tag: str, index: int) -> bytes:
    head = f"{tag}:{index}:".encode()
    return head + bytes((index + i) % 251 for i in range(RECORD - len(head)))


def create_topic(broker, topic: str) -> None:
    admin = AdminClient(confluent_config(broker))
    admin.create_topics([NewTopic(topic, 1)])[topic].result(timeout=CLIENT_TIMEOUT_S)


def produce_until_refused(broker, topic: str, tag: str, acked: dict[int, bytes], limit: int = 2000):
    """Produces records one small batch at a time, with no retries, until
    the broker refuses one; returns the error codes of the refusals."""
    producer = Producer(confluent_config(broker, **{
        "acks": "all", "retries": 0, "enable.idempotence": False, "linger.ms": 5,
        "message.timeout.ms": 20000,
    }))
    errors = []
    index = 0
    while index < limit and not errors:
        for _ in range(8):
            record = value(tag, index)

            def report(err, msg, record=record):
                if err is None:
                    acked[msg.offset()] = record
                else:
                    errors.append(err.code())

            producer.produce(topic, record, on_delivery=report)
            index += 1
        producer.flush(30)
    assert errors, f"the broker took {index} records of 64 KiB without refusing one"
    return errors


def read_back(broker, topic: str, expected: dict[int, bytes]) -> None:
    """Reads the partition from its start and checks every expected record
    is there at its offset, byte for byte."""
    consumer = Consumer(confluent_config(broker, **{"group.id": "disk-full-reader", "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    found: dict[int, bytes] = {}
    last = max(expected)
    deadline = time.monotonic() + 60
    while last not in found and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        found[message.offset()] = message.value()
    consumer.close()
    missing = [offset for offset, record in expected.items() if found.get(offset) != record]
    assert not missing, f"{len(missing)} acknowledged records missing or changed, first at {missing[:5]}"


@contextlib.contextmanager
def broker_on_tmpfs(tmp_path, request, size: str, disk_free_limit: str, topic: str):
    """A broker whose data directory is on a fresh tmpfs of `size`, with
    `topic` created; yields (broker, the tmpfs path)."""
    with tmpfs(tmp_path / "disk", size) as disk:
        broker = Broker(disk / "data", name=f"broker[{request.node.name}]", settings={
            "amqp.disk_free_limit": disk_free_limit, "log.segment_bytes": "1MiB",
        })
        broker.start()
        try:
            create_topic(broker, topic)
            yield broker, disk
        finally:
            broker.stop()


def test_the_free_space_reserve_refuses_producers_blocks_publishers_and_resumes(tmp_path, request, name):
    with broker_on_tmpfs(tmp_path, request, "96m", "16MiB", name) as (broker, disk):
        publisher = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", broker.amqp_port, blocked_connection_timeout=60))
        events = []
        publisher.add_on_connection_blocked_callback(lambda _c, frame: events.append(frame.method.reason))
        publisher.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
        channel = publisher.channel()
        channel.confirm_delivery()
        channel.queue_declare(name, durable=True)
        for i in range(50):
            channel.basic_publish("", name, f"before-{i}".encode(), pika.BasicProperties(delivery_mode=2))

        filler = disk / "filler"
        fill(filler, leave_bytes=40 << 20)
        acked: dict[int, bytes] = {}
        errors = produce_until_refused(broker, name, "full", acked)
        assert set(errors) == {KafkaError.KAFKA_STORAGE_ERROR}, errors
        assert acked, "nothing was acknowledged before the reserve was reached"
        assert free_bytes(disk) > 4 << 20, "the reserve did not keep space free"

        # AMQP publishers are blocked; consumers and Kafka readers go on.
        wait_until(lambda: (publisher.process_data_events(0.1), events)[1], CLIENT_TIMEOUT_S,
                   what="connection.blocked", pause=lambda _: None)
        assert events[0] == "low on disk"
        reader = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
        method, _, body = reader.channel().basic_get(name, auto_ack=True)
        assert body == b"before-0"
        read_back(broker, name, acked)

        # A producer with retries keeps its records until space is back.
        patient = Producer(confluent_config(broker, **{"enable.idempotence": True, "acks": "all",
                                                       "message.timeout.ms": 60000}))
        resumed: list = []
        for i in range(10):
            patient.produce(name, value("resumed", i),
                            on_delivery=lambda err, msg: resumed.append((err, msg.offset())))
        patient.flush(2)
        assert not [r for r in resumed if r[0] is None], "a record was taken while the disk was full"
        filler.unlink()
        assert patient.flush(60) == 0, "records were still pending 60 s after space was freed"
        assert [err for err, _ in resumed] == [None] * 10, resumed
        for i, (_, offset) in enumerate(resumed):
            acked[offset] = value("resumed", i)
        wait_until(lambda: (publisher.process_data_events(0.1), "unblocked" in events)[1], CLIENT_TIMEOUT_S,
                   what="connection.unblocked", pause=lambda _: None)
        channel.basic_publish("", name, b"after", pika.BasicProperties(delivery_mode=2))
        reader.close()
        publisher.close()
        log = broker.log_text(tail_lines=None)
        assert "disk alarm raised" in log and "disk alarm cleared" in log

        # A clean restart recovers every acknowledged record and message.
        broker.stop()
        assert broker.last_returncode == 0
        broker.start()
        read_back(broker, name, acked)
        check = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
        assert check.channel().queue_declare(name, passive=True).method.message_count == 50
        check.close()


def test_a_write_that_does_not_fit_fails_and_writing_resumes_once_space_is_freed(tmp_path, request, name):
    with broker_on_tmpfs(tmp_path, request, "48m", "0", name) as (broker, disk):
        filler = disk / "filler"
        fill(filler, leave_bytes=12 << 20)
        acked: dict[int, bytes] = {}
        errors = produce_until_refused(broker, name, "full", acked)
        assert set(errors) == {KafkaError.KAFKA_STORAGE_ERROR}, errors
        assert free_bytes(disk) < 1 << 20, "the file system was not full"
        # Still full: refused again, and the broker keeps serving reads.
        again = produce_until_refused(broker, name, "again", acked, limit=8)
        assert set(again) == {KafkaError.KAFKA_STORAGE_ERROR}
        assert broker.alive()
        read_back(broker, name, acked)
        assert "append failed; nothing was written" in broker.log_text(tail_lines=None)

        # Space back: the same log takes records again (it was not poisoned).
        filler.unlink()
        producer = Producer(confluent_config(broker, **{"acks": "all", "retries": 0}))
        reports = []
        for i in range(10):
            producer.produce(name, value("after", i), on_delivery=lambda err, msg: reports.append((err, msg)))
        producer.flush(30)
        assert [err for err, _ in reports] == [None] * 10, reports
        for i, (_, msg) in enumerate(reports):
            acked[msg.offset()] = value("after", i)
        offsets = sorted(acked)
        assert offsets == list(range(offsets[0], offsets[-1] + 1)), "acknowledged offsets have gaps"

        # A crash afterwards loses nothing acknowledged.
        broker.kill()
        broker.start()
        read_back(broker, name, acked)
