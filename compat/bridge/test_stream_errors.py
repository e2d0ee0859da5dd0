"""What a stream queue refuses, with RabbitMQ's reply codes.

Contract (docs/bridging.md, "Stream queues"): a stream must be durable,
not exclusive and not auto-delete, and its name must be a legal Kafka
topic name (406 PRECONDITION_FAILED otherwise, and no topic is created);
a consumer needs basic.qos with a prefetch count and manual acks (406);
an x-stream-offset that is none of the documented forms is refused (406);
basic.get and queue.purge are refused with 540 NOT_IMPLEMENTED.
"""

from __future__ import annotations

import pytest

from support import (
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    STREAM,
    close_quietly,
    closed_with,
    connect,
    declare_stream,
    producer,
    produce_all,
    read_topic,
    topic_partitions,
)


@pytest.mark.parametrize(
    "flags",
    [
        dict(durable=False),
        dict(durable=True, exclusive=True),
        dict(durable=True, auto_delete=True),
    ],
    ids=["non-durable", "exclusive", "auto-delete"],
)
def test_a_stream_must_be_durable_shared_and_kept(broker, conn, name, flags):
    ch = conn.channel()
    with closed_with(PRECONDITION_FAILED):
        ch.queue_declare(name, arguments=dict(STREAM), **flags)
    assert topic_partitions(broker, name) is None, "a refused stream declare created a topic"


@pytest.mark.parametrize("bad", ["has space", "slash/inside", "x" * 250], ids=["space", "slash", "too-long"])
def test_a_stream_name_must_be_a_legal_topic_name(broker, conn, name, bad):
    queue = f"{name}-{bad}"[:255]
    ch = conn.channel()
    with closed_with(PRECONDITION_FAILED):
        declare_stream(ch, queue)
    assert topic_partitions(broker, queue) is None


def test_consuming_without_a_prefetch_count_is_refused(conn, name):
    ch = conn.channel()
    declare_stream(ch, name)
    with closed_with(PRECONDITION_FAILED):
        ch.basic_consume(name, lambda *_: None, arguments={"x-stream-offset": "first"})


def test_consuming_with_auto_ack_is_refused(conn, name):
    ch = conn.channel()
    declare_stream(ch, name)
    ch.basic_qos(prefetch_count=10)
    with closed_with(PRECONDITION_FAILED):
        ch.basic_consume(name, lambda *_: None, auto_ack=True, arguments={"x-stream-offset": "first"})


@pytest.mark.parametrize("offset", ["yesterday", "10x", -1], ids=["word", "unit", "negative"])
def test_an_unknown_stream_offset_is_refused(conn, name, offset):
    ch = conn.channel()
    declare_stream(ch, name)
    ch.basic_qos(prefetch_count=10)
    with closed_with(PRECONDITION_FAILED):
        ch.basic_consume(name, lambda *_: None, arguments={"x-stream-offset": offset})


def test_basic_get_on_a_stream_is_not_implemented(broker, name):
    conn = connect(broker)
    try:
        ch = conn.channel()
        declare_stream(ch, name)
        with closed_with(NOT_IMPLEMENTED):
            ch.basic_get(name, auto_ack=False)
    finally:
        close_quietly(conn)


def test_purging_a_stream_is_not_implemented_and_removes_nothing(broker, name):
    conn = connect(broker)
    try:
        ch = conn.channel()
        declare_stream(ch, name)
        produce_all(producer(broker), name, [dict(key=b"k", value=b"kept")])
        with closed_with(NOT_IMPLEMENTED):
            ch.queue_purge(name)
    finally:
        close_quietly(conn)
    assert [m.value() for m in read_topic(broker, name)] == [b"kept"]
