"""Helpers for the bridge compatibility tests (Kafka topics as AMQP
streams, exchanges feeding topics, topics feeding exchanges): pika and
confluent-kafka wrappers, the record-to-message mapping the broker
documents (docs/bridging.md), and worker threads that survive a broker
crash. The broker process, unique names and bounded waits come from
compat/common/broker.py and are re-exported here.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import threading
import time

import pika
import pika.compat
import pika.exceptions
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from common.broker import Broker, wait_until  # noqa: F401 (wait_until: for the tests)
from common.broker import unique_name as _unique_name

# Default deadline for a client operation (a delivery, a flush, an admin call).
CLIENT_TIMEOUT_S = 20.0

# AMQP reply codes.
PRECONDITION_FAILED = 406
NOT_IMPLEMENTED = 540

STREAM = {"x-queue-type": "stream"}


def unique_name(hint: str) -> str:
    """A unique name, legal as a Kafka topic or group and as an AMQP queue
    or exchange (so a stream queue and its topic can share it)."""
    return _unique_name(hint, max_hint=60)


# --- pika --------------------------------------------------------------------------


def connection_parameters(broker: Broker, **extra) -> pika.ConnectionParameters:
    params = dict(
        host="127.0.0.1",
        port=broker.amqp_port,
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=10,
        blocked_connection_timeout=CLIENT_TIMEOUT_S,
    )
    params.update(extra)
    return pika.ConnectionParameters(**params)


def connect(broker: Broker, **extra) -> pika.BlockingConnection:
    """A pika blocking connection as guest to vhost "/"."""
    return pika.BlockingConnection(connection_parameters(broker, **extra))


def close_quietly(connection) -> None:
    with contextlib.suppress(Exception):
        if connection is not None and connection.is_open:
            connection.close()


@contextlib.contextmanager
def closed_with(code: int):
    """Expects the block to end with the broker closing the channel or the
    connection with `code`; yields a list that then holds the error.

    540 NOT_IMPLEMENTED is a connection exception in AMQP 0-9-1 (RabbitMQ
    closes the connection with it), 406 a channel exception; either form
    is accepted here and the code is what is checked."""
    caught = []
    try:
        yield caught
    except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as error:
        caught.append(error)
    assert caught, f"expected the broker to refuse with {code}; it did not"
    assert caught[0].reply_code == code, (
        f"expected reply code {code}, got {caught[0].reply_code} {caught[0].reply_text!r}"
    )


def declare_stream(channel, name: str, **arguments):
    return channel.queue_declare(name, durable=True, arguments={**STREAM, **arguments})


def consume_stream(connection, channel, queue: str, count: int, offset=None, prefetch: int = 100,
                   ack: bool = True, timeout: float = CLIENT_TIMEOUT_S, settle: float = 0.5):
    """Consumes `queue` (a stream) from `offset` (its x-stream-offset; None
    leaves it out) until `count` deliveries arrived, then `settle` seconds
    more to catch extra ones. Returns (method, properties, body) triples;
    every delivery is acked when `ack`. The consumer is cancelled."""
    got = []

    def on_message(ch, method, properties, body):
        got.append((method, properties, body))
        if ack:
            ch.basic_ack(method.delivery_tag)

    channel.basic_qos(prefetch_count=prefetch)
    arguments = {} if offset is None else {"x-stream-offset": offset}
    tag = channel.basic_consume(queue, on_message, arguments=arguments)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(time_limit=min(0.1, max(0.0, deadline - time.monotonic())))
    settle_deadline = time.monotonic() + settle
    while time.monotonic() < settle_deadline:
        connection.process_data_events(time_limit=0.05)
    channel.basic_cancel(tag)
    return got


def get_one(channel, queue: str, timeout: float = CLIENT_TIMEOUT_S):
    """basic.get (auto-ack) until a message comes or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, properties, body
        if time.monotonic() >= deadline:
            raise AssertionError(f"no message in {queue} within {timeout} s")
        channel.connection.sleep(0.05)


def get_all(channel, queue: str, limit: int = 100_000):
    """basic.get (auto-ack) until get-empty; (method, properties, body) triples."""
    out = []
    for _ in range(limit):
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, properties, body))
    raise AssertionError(f"{queue} still not empty after {limit} gets")


def message_count(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def wait_for_count(channel, queue: str, count: int, timeout: float = CLIENT_TIMEOUT_S) -> int:
    """Waits until `queue` holds at least `count` ready messages; returns
    the number it holds then."""
    deadline = time.monotonic() + timeout
    while True:
        held = message_count(channel, queue)
        if held >= count or time.monotonic() >= deadline:
            return held
        channel.connection.sleep(0.05)


def typed(value):
    """`value` with its Python type kept at every level, so that comparing
    two decoded tables tells a bool from an int (True == 1 in Python)."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        # pika writes an int as 'I' (32 bits) when it fits, else 'l', and
        # reads 'l' back as its `long` subclass of int: the names keep the
        # wire type apart.
        wide = isinstance(value, pika.compat.long) or not -(2**31) <= value < 2**31
        return ("long" if wide else "int", int(value))
    if isinstance(value, (str, bytes, float, decimal.Decimal, datetime.datetime)) or value is None:
        return (type(value).__name__, value)
    raise TypeError(f"unexpected table value {value!r}")


# --- confluent-kafka ---------------------------------------------------------------


def kafka_config(broker: Broker, **extra) -> dict:
    config = {
        "bootstrap.servers": broker.bootstrap,
        "broker.address.family": "v4",
        "socket.timeout.ms": 20000,
    }
    config.update(extra)
    return config


def producer(broker: Broker, **extra) -> Producer:
    return Producer(kafka_config(broker, **{"message.timeout.ms": 20000, "linger.ms": 5, **extra}))


def produce_all(instance: Producer, topic: str, records, timeout: float = CLIENT_TIMEOUT_S):
    """Produces `records` (dicts of Producer.produce kwargs) to `topic`,
    flushes, and returns the delivered messages in produce order. Fails
    unless every record was delivered in time."""
    reports = {}

    def on_delivery(err, msg, index):
        reports[index] = (err, msg)

    for index, record in enumerate(records):
        while True:
            try:
                instance.produce(topic, on_delivery=lambda err, msg, i=index: on_delivery(err, msg, i), **record)
                break
            except BufferError:
                instance.poll(0.1)
        instance.poll(0)
    remaining = instance.flush(timeout)
    assert remaining == 0, f"{remaining} of {len(records)} records still undelivered after {timeout} s"
    failed = [err for err, _ in reports.values() if err is not None]
    assert not failed, f"{len(failed)} of {len(records)} deliveries failed, first: {failed[0]}"
    return [reports[i][1] for i in range(len(records))]


def consumer(broker: Broker, group: str | None = None, **extra) -> Consumer:
    return Consumer(kafka_config(
        broker,
        **{
            "group.id": group or unique_name("bridge-reader"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
            **extra,
        },
    ))


def poll_messages(instance: Consumer, count: int, timeout: float = CLIENT_TIMEOUT_S, settle: float = 0.0):
    """Polls until `count` messages arrived or `timeout` passed, then
    `settle` seconds more to catch extra ones; raises on a consumer error."""
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        msg = instance.poll(min(0.2, max(0.0, deadline - time.monotonic())))
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        messages.append(msg)
    settle_deadline = time.monotonic() + settle
    while time.monotonic() < settle_deadline:
        msg = instance.poll(0.1)
        if msg is not None and not msg.error():
            messages.append(msg)
    return messages


def read_topic(broker: Broker, topic: str, partitions: int = 1, timeout: float = CLIENT_TIMEOUT_S):
    """Every record of `topic` from its start to its high watermark (taken
    when this is called), read by a manually assigned consumer; the
    messages in (partition, offset) order."""
    instance = consumer(broker)
    try:
        ends = {}
        for partition in range(partitions):
            low, high = instance.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            ends[partition] = high
        expected = sum(ends.values())
        instance.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        messages = []
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            msg = instance.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            if msg.offset() < ends[msg.partition()]:
                messages.append(msg)
        assert len(messages) == expected, f"read {len(messages)} of {expected} records of {topic}"
        return sorted(messages, key=lambda m: (m.partition(), m.offset()))
    finally:
        instance.close()


def watermarks(broker: Broker, topic: str, partitions: int = 1) -> dict[int, int]:
    """High watermark per partition."""
    instance = consumer(broker)
    try:
        return {
            p: instance.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        instance.close()


def admin(broker: Broker) -> AdminClient:
    return AdminClient(kafka_config(broker))


def create_topic(broker: Broker, name: str, partitions: int = 1, config: dict | None = None) -> None:
    client = admin(broker)  # kept alive until the future resolves
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
        request_timeout=CLIENT_TIMEOUT_S,
    )
    futures[name].result(timeout=CLIENT_TIMEOUT_S)


def set_topic_config(broker: Broker, topic: str, config: dict[str, str]) -> None:
    """IncrementalAlterConfigs SET of each key."""
    entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()]
    client = admin(broker)
    resource = ConfigResource("topic", topic, incremental_configs=entries)
    [future] = client.incremental_alter_configs([resource]).values()
    future.result(timeout=CLIENT_TIMEOUT_S)


def topic_config(broker: Broker, topic: str) -> dict[str, str]:
    client = admin(broker)
    [future] = client.describe_configs([ConfigResource("topic", topic)]).values()
    return {name: entry.value for name, entry in future.result(timeout=CLIENT_TIMEOUT_S).items()}


def topic_partitions(broker: Broker, topic: str) -> int | None:
    """The partition count of `topic` in fresh metadata, None if it does
    not exist."""
    client = admin(broker)
    metadata = client.list_topics(timeout=10)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


def headers_of(msg) -> dict[str, bytes | None]:
    """A Kafka message's headers as a dict; fails on a repeated name."""
    pairs = msg.headers() or []
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"repeated header names in {pairs}"
    return dict(pairs)


# --- workers that survive a broker crash ----------------------------------------------


class Worker(threading.Thread):
    """A pika consumer on `queue` with `prefetch`, in a thread of its own
    (pika is not thread-safe: one connection per thread). Each delivery is
    recorded as (body, redelivered, time.monotonic()) before it is acked.
    When the connection drops (the broker was killed) it reconnects until
    `stop` is set."""

    def __init__(self, broker: Broker, queue: str, prefetch: int, stop: threading.Event, name: str):
        super().__init__(name=name, daemon=True)
        self.broker = broker
        self.queue = queue
        self.prefetch = prefetch
        self.stop_event = stop
        self.lock = threading.Lock()
        self.deliveries: list[tuple[bytes, bool, float]] = []
        self.connections = 0
        self.errors: list[str] = []

    def snapshot(self) -> list[tuple[bytes, bool, float]]:
        with self.lock:
            return list(self.deliveries)

    def run(self) -> None:
        while not self.stop_event.is_set():
            connection = None
            try:
                connection = connect(self.broker, socket_timeout=2, stack_timeout=4)
                self.connections += 1
                channel = connection.channel()
                channel.basic_qos(prefetch_count=self.prefetch)

                def on_message(ch, method, _properties, body):
                    with self.lock:
                        self.deliveries.append((body, bool(method.redelivered), time.monotonic()))
                    ch.basic_ack(method.delivery_tag)

                channel.basic_consume(self.queue, on_message)
                while not self.stop_event.is_set():
                    connection.process_data_events(time_limit=0.1)
            except Exception as error:  # the broker died or refused: reconnect
                self.errors.append(f"{type(error).__name__}: {error}")
                self.stop_event.wait(0.1)
            finally:
                close_quietly(connection)
