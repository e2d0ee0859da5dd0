"""Helpers for the Kafka compatibility tests: client wrappers and a minimal
raw Kafka framing. The broker process, unique names and bounded waits come
from compat/common/broker.py and are re-exported here.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import socket
import struct
import time

from common.broker import Broker, wait_until  # noqa: F401 (wait_until: for the tests)
from common.broker import unique_name as _unique_name

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


def kafka_string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def compact_string(value: str) -> bytes:
    data = value.encode()
    return uvarint(len(data) + 1) + data


def request_frame(api_key: int, version: int, correlation_id: int, body: bytes,
                  client_id: str = "sluice-compat-raw", flexible: bool = False) -> bytes:
    """One length-prefixed request: header v1 (v2 when `flexible`) + body."""
    header = struct.pack(">hhi", api_key, version, correlation_id) + kafka_string(client_id)
    if flexible:
        header += uvarint(0)  # no tagged fields
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError(f"connection closed with {size} bytes still expected")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    assert 0 <= size < 64 << 20, f"implausible response size {size}"
    return recv_exact(sock, size)


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes (EOF or reset) within `timeout`; data the
    broker sends first is read and dropped."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


class Reader:
    """Sequential big-endian reader over a response body."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        assert self.pos + size <= len(self.data), (
            f"response truncated: need {size} bytes at {self.pos}, have {len(self.data) - self.pos}"
        )
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def int8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def int64(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            assert shift < 64, "uvarint too long"

    def string(self) -> str | None:
        size = self.int16()
        return None if size < 0 else self.take(size).decode()

    def tagged_fields(self) -> list[tuple[int, bytes]]:
        fields = []
        for _ in range(self.uvarint()):
            tag = self.uvarint()
            fields.append((tag, self.take(self.uvarint())))
        return fields

    def remaining(self) -> int:
        return len(self.data) - self.pos
