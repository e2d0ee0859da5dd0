"""A message that crosses twice comes back the same.

Contract (docs/bridging.md, "The mapping"): pika publishes to an exchange
bound to a stream S (AMQP → record); topic S forwards to exchange Y
(record → AMQP), which routes into queue Q. The message pika gets from Q
has the published body, routing key, every property and the typed
headers table; its exchange is Y. Kafka consumers of S see the record in
between, with its `amqp.*` headers.
"""

from __future__ import annotations

import datetime
import decimal

import pika

from support import (
    declare_stream,
    get_one,
    headers_of,
    read_topic,
    set_topic_config,
    topic_config,
    typed,
)


def cross_twice(broker, ch, name, properties, body=b'{"order": 1}', routing_key="rt"):
    """Publishes through stream S forwarded to Y; returns (method,
    properties, body) from Q and the record S holds."""
    source, stream, target, queue = f"{name}-a", f"{name}-s", f"{name}-y", f"{name}-q"
    ch.exchange_declare(source, "direct", durable=True)
    declare_stream(ch, stream)
    ch.queue_bind(stream, source, routing_key)
    ch.exchange_declare(target, "topic", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, target, "#")
    # Forwarding switched on after creation, with IncrementalAlterConfigs.
    set_topic_config(broker, stream, {"sluice.forward.exchange": target})
    assert topic_config(broker, stream)["sluice.forward.exchange"] == target

    ch.confirm_delivery()
    ch.basic_publish(source, routing_key, body, properties, mandatory=True)
    got = get_one(ch, queue)
    [record] = read_topic(broker, stream)
    return got, record, target


def test_body_properties_and_headers_come_back_unchanged(broker, ch, name):
    headers = {
        "int": 42,
        "negative": -7,
        "bool-true": True,
        "bool-false": False,
        "string": "text",
        "nested": {"inner": "x", "number": 1, "deeper": {"flag": True}},
    }
    sent = pika.BasicProperties(
        content_type="application/json",
        content_encoding="identity",
        headers=headers,
        delivery_mode=2,
        priority=7,
        correlation_id="corr-rt",
        reply_to="replies",
        expiration="600000",
        message_id="msg-rt",
        timestamp=1_763_800_000,
        type="order.created",
        user_id="guest",
        app_id="compat-bridge",
        cluster_id="cluster-1",
    )
    (method, properties, body), record, target = cross_twice(broker, ch, name, sent)

    assert body == b'{"order": 1}'
    assert method.exchange == target
    assert method.routing_key == "rt"
    for field in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
                  "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id"):
        assert getattr(properties, field) == getattr(sent, field), field
    assert typed(properties.headers) == typed(headers)

    # In between, the record carries the mapping's headers.
    in_between = headers_of(record)
    assert record.key() == b"rt" and record.value() == body
    assert in_between["amqp.exchange"] == f"{name}-a".encode()
    assert in_between["amqp.reply-to"] == b"replies"
    assert in_between["amqp.expiration"] == b"600000"
    assert in_between["amqp.type"] == b"order.created"
    assert in_between["amqp.user-id"] == b"guest"
    assert in_between["amqp.app-id"] == b"compat-bridge"
    assert in_between["amqp.cluster-id"] == b"cluster-1"
    assert in_between["amqp.content-encoding"] == b"identity"
    assert in_between["string"] == b"text"


def test_every_field_type_of_the_headers_table_comes_back(broker, ch, name):
    """Beyond the common types: long, array, void, decimal, timestamp and
    byte array entries (the types pika can write)."""
    headers = {
        "long": 2**40,
        "array": [1, "two", False, {"three": 3}],
        "void": None,
        "decimal": decimal.Decimal("3.14"),
        "timestamp": datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.timezone.utc),
        "bytes": b"\x00\x01\xff",
        "empty-table": {},
        "empty-string": "",
    }
    sent = pika.BasicProperties(headers=headers)
    (_, properties, body), _, _ = cross_twice(broker, ch, name, sent)
    assert body == b'{"order": 1}'
    assert typed(properties.headers) == typed(headers)


def test_a_bare_message_comes_back_bare(broker, ch, name):
    """No properties but a transient delivery mode: nothing is invented
    (no headers table, no persistent flag)."""
    sent = pika.BasicProperties(delivery_mode=1)
    (method, properties, body), record, target = cross_twice(broker, ch, name, sent, body=b"", routing_key="")
    assert body == b""
    assert (method.exchange, method.routing_key) == (target, "")
    assert properties.delivery_mode == 1
    assert properties.headers is None
    for field in ("content_type", "content_encoding", "priority", "correlation_id", "reply_to", "expiration",
                  "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id"):
        assert getattr(properties, field) is None, field
    assert headers_of(record) == {"amqp.exchange": f"{name}-a".encode(), "amqp.delivery-mode": b"1"}
