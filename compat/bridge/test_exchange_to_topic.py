"""Exchanges that feed topics: AMQP publishers, Kafka consumers.

Contract (docs/bridging.md, "Exchanges that feed topics" and "The
mapping"): a stream queue bound to an exchange of any type (or reached
through the default exchange) appends every message routed to it, once
however many of its bindings match, in publish order; the record's key is
the routing key, its value the body, its headers `amqp.exchange`, one
`amqp.<property>` text header per property set, `amqp.headers` (the typed
table) and a plain copy of each string entry of the table. With
publisher confirms the confirm comes after the append is on disk (it
survives kill -9); without them the append is readable within about
100 ms.
"""

from __future__ import annotations

import time

import pika
from confluent_kafka import TopicPartition

from support import (
    close_quietly,
    connect,
    consumer,
    declare_stream,
    headers_of,
    poll_messages,
    read_topic,
    watermarks,
)

ROUTING_KEYS = [
    "orders.eu.new",       # orders.eu.*
    "orders.us.new",       # no binding
    "orders.eu.urgent",    # both bindings: appended once
    "audit.eu.new",        # no binding
    "orders.us.urgent",    # *.*.urgent
    "orders.eu",           # no binding (too short)
    "orders.eu.new.extra", # no binding (too long)
    "ORDERS.eu.new",       # no binding (case matters)
]
ROUTED = {"orders.eu.new", "orders.eu.urgent", "orders.us.urgent"}
TIMESTAMP = 1_763_800_000
# Appends published without confirms must be readable within this long
# (the broker promises its next 100 ms maintenance tick).
UNCONFIRMED_VISIBLE_S = 0.5


def properties_for(i: int) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        correlation_id=f"corr-{i}",
        message_id=f"msg-{i}",
        timestamp=TIMESTAMP + i,
        priority=i % 10,
        delivery_mode=2 if i % 2 == 0 else 1,
        headers={"tenant": "acme", "seq": i, "flag": i % 3 == 0, "nested": {"region": "eu"}},
    )


def expected_headers(exchange: str, i: int) -> dict:
    """The record headers the mapping makes of properties_for(i), except
    amqp.headers (binary; only its presence is checked)."""
    return {
        "amqp.exchange": exchange.encode(),
        "amqp.content-type": b"application/json",
        "amqp.delivery-mode": b"2" if i % 2 == 0 else b"1",
        "amqp.priority": str(i % 10).encode(),
        "amqp.correlation-id": f"corr-{i}".encode(),
        "amqp.message-id": f"msg-{i}".encode(),
        "amqp.timestamp": str(TIMESTAMP + i).encode(),
        # Only the string entry is copied as a plain header.
        "tenant": b"acme",
    }


def test_topic_exchange_feeds_a_kafka_consumer_group(broker, conn, name):
    exchange, stream = f"{name}-x", f"{name}-s"
    ch = conn.channel()
    ch.exchange_declare(exchange, "topic", durable=True)
    declare_stream(ch, stream)
    ch.queue_bind(stream, exchange, "orders.eu.*")
    ch.queue_bind(stream, exchange, "*.*.urgent")
    ch.confirm_delivery()
    published = []
    for round_ in range(3):
        for key in ROUTING_KEYS:
            i = len(published)
            ch.basic_publish(exchange, key, f"body-{i}".encode(), properties_for(i))
            published.append((i, key))
    expected = [(i, key) for i, key in published if key in ROUTED]

    reader = consumer(broker, group=f"{name}-group")
    try:
        reader.subscribe([stream])
        got = poll_messages(reader, len(expected), timeout=30, settle=1.0)
        reader.commit(asynchronous=False)
    finally:
        reader.close()

    assert [(m.key().decode(), m.value()) for m in got] == [
        (key, f"body-{i}".encode()) for i, key in expected
    ], "only the routed messages, once each, in publish order"
    for (i, _), msg in zip(expected, got):
        headers = headers_of(msg)
        assert headers.pop("amqp.headers", None), f"record {msg.offset()} lacks amqp.headers"
        assert headers == expected_headers(exchange, i), f"headers of record {msg.offset()}"

    # The group's committed offset is the end of the topic.
    assert watermarks(broker, stream) == {0: len(expected)}
    check = consumer(broker, group=f"{name}-group")
    try:
        [committed] = check.committed([TopicPartition(stream, 0)], timeout=10)
        assert committed.offset == len(expected)
    finally:
        check.close()


def test_every_exchange_type_and_the_default_exchange_feed_a_stream(broker, conn, name):
    stream = f"{name}-s"
    direct, fanout, headers_x = f"{name}-direct", f"{name}-fanout", f"{name}-headers"
    ch = conn.channel()
    declare_stream(ch, stream)
    ch.exchange_declare(direct, "direct", durable=True)
    ch.exchange_declare(fanout, "fanout", durable=True)
    ch.exchange_declare(headers_x, "headers", durable=True)
    ch.queue_bind(stream, direct, "d")
    ch.queue_bind(stream, fanout, "")
    ch.queue_bind(stream, headers_x, "", arguments={"x-match": "all", "kind": "a", "size": 1})
    ch.confirm_delivery()

    def publish(exchange, key, body, headers=None):
        ch.basic_publish(exchange, key, body, pika.BasicProperties(headers=headers))

    publish(direct, "d", b"direct-routed")
    publish(direct, "other", b"direct-dropped")
    publish(fanout, "anything", b"fanout-routed")
    publish(headers_x, "h", b"headers-routed", {"kind": "a", "size": 1})
    publish(headers_x, "h", b"headers-dropped", {"kind": "a", "size": 2})
    publish(headers_x, "h", b"headers-dropped-2", {"kind": "b", "size": 1})
    publish("", stream, b"default-routed")
    publish("", f"{name}-nowhere", b"default-dropped")

    records = read_topic(broker, stream)
    got = [(m.value(), m.key(), headers_of(m).get("amqp.exchange")) for m in records]
    assert got == [
        (b"direct-routed", b"d", direct.encode()),
        (b"fanout-routed", b"anything", fanout.encode()),
        (b"headers-routed", b"h", headers_x.encode()),
        # The default exchange's name is empty: no amqp.exchange header.
        (b"default-routed", stream.encode(), None),
    ]
    # The headers exchange's message carries its string entry as a plain header.
    assert headers_of(records[2])["kind"] == b"a"
    assert "size" not in headers_of(records[2]), "only string entries are copied as plain headers"


def test_unconfirmed_publishes_become_visible_to_kafka_quickly(broker, conn, name):
    stream = f"{name}-s"
    ch = conn.channel()
    declare_stream(ch, stream)
    assert watermarks(broker, stream) == {0: 0}
    ch.basic_publish("", stream, b"unconfirmed")
    # A round trip on the same channel: the broker has handled the publish.
    ch.queue_declare(stream, passive=True)
    handled = time.monotonic()
    seen_after = None
    while time.monotonic() - handled < UNCONFIRMED_VISIBLE_S:
        if watermarks(broker, stream)[0] == 1:
            seen_after = time.monotonic() - handled
            break
        time.sleep(0.02)
    assert seen_after is not None, f"an unconfirmed append was not readable within {UNCONFIRMED_VISIBLE_S} s"
    print(f"an unconfirmed append was readable after {seen_after * 1000:.0f} ms")
    assert [m.value() for m in read_topic(broker, stream)] == [b"unconfirmed"]


def test_confirmed_appends_survive_kill_9(fresh_broker, name):
    broker = fresh_broker
    exchange, stream = f"{name}-x", f"{name}-s"
    count = 300
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, "direct", durable=True)
        declare_stream(ch, stream)
        ch.queue_bind(stream, exchange, "k")
        ch.confirm_delivery()
        for i in range(count):
            ch.basic_publish(exchange, "k", f"m-{i}".encode(), pika.BasicProperties(delivery_mode=2))
    finally:
        # Right after the last confirm: nothing more is flushed.
        broker.kill()
        close_quietly(conn)

    broker.start()
    assert [m.value() for m in read_topic(broker, stream)] == [f"m-{i}".encode() for i in range(count)], (
        "every confirmed append must survive kill -9, once, in order"
    )
    # The stream is still declared (its binding is checked in the next test).
    conn = connect(broker)
    try:
        conn.channel().queue_declare(stream, passive=True)
    finally:
        close_quietly(conn)


def test_a_stream_binding_survives_a_restart(fresh_broker, name):
    """A durable exchange's binding to a stream (durable by definition) is
    durable, as any binding between durable ends."""
    broker = fresh_broker
    exchange, stream = f"{name}-x", f"{name}-s"
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, "direct", durable=True)
        declare_stream(ch, stream)
        ch.queue_bind(stream, exchange, "k")
        ch.confirm_delivery()
        ch.basic_publish(exchange, "k", b"before restart", mandatory=True)
    finally:
        close_quietly(conn)
    assert broker.stop() == 0, "SIGTERM must stop the broker cleanly"

    broker.start()
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        # mandatory: an unroutable publish comes back (pika raises UnroutableError).
        ch.basic_publish(exchange, "k", b"after restart", mandatory=True)
    finally:
        close_quietly(conn)
    assert [m.value() for m in read_topic(broker, stream)] == [b"before restart", b"after restart"]
