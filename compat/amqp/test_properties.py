"""Message properties, headers and bodies survive the broker exactly:
every basic property, header tables with every field type pika encodes
(nested tables, arrays, ints of both widths, bools, byte arrays, decimals,
timestamps, void), user_id validated against the login as RabbitMQ does,
and bodies from 0 bytes to well past frame_max split over many frames.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import os

import pika
import pytest

from support import PRECONDITION_FAILED, channel_error, close_quietly, collect, connect

HEADERS = {
    "string": "héllo wörld",
    "empty-string": "",
    "int": 42,
    "negative": -7,
    "int32-max": 2**31 - 1,
    "int64": 2**40 + 3,
    "int64-min": -(2**63),
    "true": True,
    "false": False,
    "bytes": b"\x00\x01\xfe\xff",
    "decimal": decimal.Decimal("3.14"),
    "negative-decimal": decimal.Decimal("-0.005"),
    "timestamp": datetime.datetime(2024, 2, 29, 23, 59, 58, tzinfo=datetime.timezone.utc),
    "void": None,
    "array": [1, "two", True, [3, [4]], {"k": "v"}, b"\x07"],
    "empty-array": [],
    "table": {"nested": {"deeper": {"deepest": 1}}, "list": ["a", 2]},
    "empty-table": {},
}

ALL_PROPERTIES = dict(
    content_type="application/json",
    content_encoding="gzip",
    headers=HEADERS,
    delivery_mode=2,
    priority=7,
    correlation_id="corr-123",
    reply_to="reply-queue",
    message_id="msg-456",
    timestamp=1_700_000_000,
    type="order.created",
    user_id="guest",
    app_id="compat-tests",
)


def kind(value) -> str:
    """The field type class as pika decodes it (pika returns 64-bit ints
    as its `long`, an int subclass)."""
    for name, types in [("bool", bool), ("int", int), ("str", str), ("bytes", bytes),
                        ("decimal", decimal.Decimal), ("timestamp", datetime.datetime),
                        ("array", list), ("table", dict), ("void", type(None))]:
        if isinstance(value, types):
            return name
    return type(value).__name__


def round_trip(conn, ch, queue: str, body: bytes, properties: pika.BasicProperties):
    ch.basic_publish("", queue, body, properties)
    got = collect(conn, ch, queue, 1, auto_ack=True)
    assert len(got) == 1, "no delivery"
    return got[0]


@pytest.fixture
def queue(ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    ch.confirm_delivery()
    return queue


def test_every_basic_property_round_trips(conn, ch, queue):
    method, properties, body = round_trip(conn, ch, queue, b"{}", pika.BasicProperties(**ALL_PROPERTIES))
    assert body == b"{}"
    for field, value in ALL_PROPERTIES.items():
        assert getattr(properties, field) == value, field
    assert properties.expiration is None
    assert properties.cluster_id is None


def test_header_field_types_round_trip(conn, ch, queue):
    _, properties, _ = round_trip(conn, ch, queue, b"x", pika.BasicProperties(headers=HEADERS))
    got = properties.headers
    assert set(got) == set(HEADERS)
    for key, value in HEADERS.items():
        assert got[key] == value, f"{key}: sent {value!r}, got {got[key]!r}"
        assert kind(got[key]) == kind(value), f"{key}: sent a {kind(value)}, got a {kind(got[key])}"


def test_no_properties_stay_absent(conn, ch, queue):
    _, properties, body = round_trip(conn, ch, queue, b"plain", pika.BasicProperties())
    assert body == b"plain"
    for field in ("content_type", "content_encoding", "headers", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
                  "user_id", "app_id", "cluster_id"):
        assert getattr(properties, field) is None, field


def test_user_id_must_match_the_login_406(conn, queue):
    with channel_error(PRECONDITION_FAILED):
        ch = conn.channel()
        ch.basic_publish("", queue, b"spoofed", pika.BasicProperties(user_id="mallory"))
        ch.queue_declare(queue, passive=True)
    assert conn.channel().basic_get(queue, auto_ack=True) == (None, None, None)


# Around the negotiated frame_max (pika's default, 131072): a body frame
# carries at most frame_max - 8 bytes.
BODY_FRAME = 131072 - 8


@pytest.mark.parametrize(
    "size",
    [0, 1, 4096, BODY_FRAME - 1, BODY_FRAME, BODY_FRAME + 1, 2 * BODY_FRAME, 1 << 20, (4 << 20) + 3],
    ids=lambda size: f"{size}B",
)
def test_body_sizes_arrive_byte_identical(conn, ch, queue, size):
    body = os.urandom(size)
    _, properties, got = round_trip(conn, ch, queue, body, pika.BasicProperties(message_id=str(size)))
    assert properties.message_id == str(size)
    assert len(got) == size
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()


def test_large_bodies_through_basic_get(conn, ch, queue):
    sizes = [0, 1, 1 << 20, 3 * BODY_FRAME + 5]
    sent = [os.urandom(size) for size in sizes]
    for body in sent:
        ch.basic_publish("", queue, body)
    for body in sent:
        _, _, got = ch.basic_get(queue, auto_ack=True)
        assert got == body


def test_small_frame_max_splits_bodies(broker, name):
    """A client that negotiates frame_max 4096 gets bodies in 4088-byte
    frames; the content still arrives whole."""
    connection = connect(broker, frame_max=4096)
    try:
        ch = connection.channel()
        queue = f"{name}-q"
        ch.queue_declare(queue)
        ch.confirm_delivery()
        body = os.urandom(100_000)
        ch.basic_publish("", queue, body, pika.BasicProperties(headers={"k": "v" * 1000}))
        _, properties, got = collect(connection, ch, queue, 1, auto_ack=True)[0]
        assert got == body
        assert properties.headers == {"k": "v" * 1000}
    finally:
        close_quietly(connection)
