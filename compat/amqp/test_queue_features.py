"""Queue arguments with RabbitMQ semantics: message TTL (per queue and per
message), queue expiry, dead-lettering with the x-death history, length
limits with drop-head and reject-publish, priorities and single active
consumer.

Expiry tests wait for time to pass: each such wait is named after the TTL
it waits out, plus EXPIRY_GRACE_S for the broker's expiry timer.
"""

from __future__ import annotations

import datetime
import time

import pika
import pika.exceptions
import pytest

from support import CLIENT_TIMEOUT_S, bodies, message_count, pump, queue_exists

# Slack after a TTL for the broker to notice the expiry.
EXPIRY_GRACE_S = 0.5


def declare_dlx(ch, name: str, kind: str = "fanout", key: str = ""):
    """A dead-letter exchange and the queue it feeds; returns their names."""
    dlx, dlq = f"{name}-dlx", f"{name}-dlq"
    ch.exchange_declare(dlx, kind)
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, routing_key=key)
    return dlx, dlq


def wait_for_message(conn, ch, queue: str, timeout: float = CLIENT_TIMEOUT_S):
    """Polls basic.get (auto-ack) until a message arrives; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return method, properties, body
        if time.monotonic() >= deadline:
            raise AssertionError(f"no message reached {queue} within {timeout} s")
        conn.process_data_events(time_limit=0.05)


def death_summary(entries):
    return [(e.get("queue"), e.get("reason"), e.get("count")) for e in entries]


# --- TTL and expiry ----------------------------------------------------------------


def test_queue_message_ttl_expires_messages(conn, ch, name):
    ttl_ms = 1000
    queue = f"{name}-q"
    ch.queue_declare(queue, arguments={"x-message-ttl": ttl_ms})
    ch.confirm_delivery()
    published = time.monotonic()
    ch.basic_publish("", queue, b"fresh")
    ch.basic_publish("", queue, b"stale")
    assert ch.basic_get(queue, auto_ack=True)[2] == b"fresh", "taken well within its TTL"
    conn.sleep(max(0.0, published + ttl_ms / 1000 + EXPIRY_GRACE_S - time.monotonic()))
    assert ch.basic_get(queue, auto_ack=True) == (None, None, None)
    assert message_count(ch, queue) == 0


def test_per_message_expiration(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    ch.confirm_delivery()
    published = time.monotonic()
    ch.basic_publish("", queue, b"short", pika.BasicProperties(expiration="300"))
    ch.basic_publish("", queue, b"forever")
    ch.basic_publish("", queue, b"long", pika.BasicProperties(expiration="60000"))
    conn.sleep(max(0.0, published + 0.3 + EXPIRY_GRACE_S - time.monotonic()))
    got = ch.basic_get(queue, auto_ack=True)
    assert got[2] == b"forever"
    method, properties, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"long" and properties.expiration == "60000"
    assert ch.basic_get(queue, auto_ack=True) == (None, None, None)


def test_queue_ttl_zero_drops_messages_nobody_takes_at_once(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, arguments={"x-message-ttl": 0})
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"gone")
    conn.sleep(EXPIRY_GRACE_S)
    assert ch.basic_get(queue, auto_ack=True) == (None, None, None)


def test_x_expires_deletes_an_unused_queue(conn, ch, name):
    expires_ms = 800
    queue = f"{name}-q"
    ch.queue_declare(queue, arguments={"x-expires": expires_ms})
    # Not polled: in RabbitMQ a passive declare of an unused queue restarts
    # its expiry timer, so each check below is made once, after the wait.
    conn.sleep(expires_ms / 1000 / 4)
    assert queue_exists(conn, queue), "deleted long before x-expires"
    conn.sleep(expires_ms / 1000 + EXPIRY_GRACE_S)
    assert not queue_exists(conn, queue), f"{queue} outlived x-expires={expires_ms}"


def test_x_expires_spares_a_queue_with_a_consumer(conn, ch, name):
    expires_ms = 500
    queue = f"{name}-q"
    ch.queue_declare(queue, arguments={"x-expires": expires_ms})
    tag = ch.basic_consume(queue, lambda *a: None)
    conn.sleep(expires_ms / 1000 * 2 + EXPIRY_GRACE_S)
    assert queue_exists(conn, queue), "deleted although it had a consumer"
    ch.basic_cancel(tag)
    conn.sleep(expires_ms / 1000 + EXPIRY_GRACE_S)
    assert not queue_exists(conn, queue), f"{queue} outlived x-expires={expires_ms} after its consumer left"


# --- dead-lettering ------------------------------------------------------------------


def test_rejected_message_is_dead_lettered_with_x_death(conn, ch, name):
    dlx, dlq = declare_dlx(ch, name)
    entry = f"{name}-in"
    ch.exchange_declare(entry, "direct")
    source = f"{name}-src"
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(source, entry, routing_key="rk")
    ch.confirm_delivery()
    ch.basic_publish(entry, "rk", b"reject me",
                     pika.BasicProperties(headers={"keep": "me"}, message_id="m1", delivery_mode=2))
    method, _, _ = ch.basic_get(source)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, properties, body = wait_for_message(conn, ch, dlq)
    assert body == b"reject me"
    assert (method.exchange, method.routing_key) == (dlx, "rk"), "dead-lettered with the original key"
    assert properties.message_id == "m1" and properties.delivery_mode == 2
    headers = properties.headers
    assert headers["keep"] == "me"
    deaths = headers["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 1, deaths
    death = deaths[0]
    assert death["queue"] == source
    assert death["reason"] == "rejected"
    assert death["count"] == 1
    assert death["exchange"] == entry
    assert death["routing-keys"] == ["rk"]
    assert isinstance(death["time"], datetime.datetime)
    assert headers["x-first-death-queue"] == source
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-exchange"] == entry
    assert message_count(ch, source) == 0


def test_nacked_message_is_dead_lettered(conn, ch, name):
    dlx, dlq = declare_dlx(ch, name)
    source = f"{name}-src"
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", source, b"nack me")
    method, _, _ = ch.basic_get(source)
    ch.basic_nack(method.delivery_tag, requeue=False)
    _, properties, body = wait_for_message(conn, ch, dlq)
    assert body == b"nack me"
    death = properties.headers["x-death"][0]
    assert (death["queue"], death["reason"], death["count"]) == (source, "rejected", 1)
    assert death["exchange"] == "" and death["routing-keys"] == [source]


def test_expired_message_is_dead_lettered(conn, ch, name):
    dlx, dlq = declare_dlx(ch, name)
    source = f"{name}-src"
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 100})
    ch.confirm_delivery()
    ch.basic_publish("", source, b"expire me")
    _, properties, body = wait_for_message(conn, ch, dlq)
    assert body == b"expire me"
    death = properties.headers["x-death"][0]
    assert (death["queue"], death["reason"], death["count"]) == (source, "expired", 1)
    assert death["exchange"] == "" and death["routing-keys"] == [source]


def test_per_message_expiration_dead_letter_keeps_original_expiration(conn, ch, name):
    dlx, dlq = declare_dlx(ch, name)
    source = f"{name}-src"
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", source, b"expire me", pika.BasicProperties(expiration="100"))
    _, properties, body = wait_for_message(conn, ch, dlq)
    assert body == b"expire me"
    # RabbitMQ moves the expiration into x-death so the copy does not
    # expire again in the dead-letter queue.
    assert properties.expiration is None
    death = properties.headers["x-death"][0]
    assert (death["queue"], death["reason"]) == (source, "expired")
    assert death["original-expiration"] == "100"


def test_maxlen_overflow_is_dead_lettered(conn, ch, name):
    dlx, dlq = declare_dlx(ch, name)
    source = f"{name}-src"
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx, "x-max-length": 2})
    ch.confirm_delivery()
    for body in (b"m-0", b"m-1", b"m-2"):
        ch.basic_publish("", source, body)
    _, properties, body = wait_for_message(conn, ch, dlq)
    assert body == b"m-0", "drop-head dead-letters the oldest"
    death = properties.headers["x-death"][0]
    assert (death["queue"], death["reason"], death["count"]) == (source, "maxlen", 1)
    assert bodies(ch, source) == [b"m-1", b"m-2"]


def test_dead_letter_routing_key_replaces_the_key(conn, ch, name):
    dlx, dlq = declare_dlx(ch, name, kind="direct", key="dead")
    source = f"{name}-src"
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"})
    ch.confirm_delivery()
    ch.basic_publish("", source, b"reroute me")
    method, _, _ = ch.basic_get(source)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, properties, body = wait_for_message(conn, ch, dlq)
    assert body == b"reroute me"
    assert (method.exchange, method.routing_key) == (dlx, "dead")
    death = properties.headers["x-death"][0]
    assert death["routing-keys"] == [source], "x-death keeps the original routing keys"


def test_dead_letter_to_default_exchange_by_routing_key(conn, ch, name):
    dlq = f"{name}-dlq"
    ch.queue_declare(dlq)
    source = f"{name}-src"
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", source, b"to the default exchange")
    method, _, _ = ch.basic_get(source)
    ch.basic_reject(method.delivery_tag, requeue=False)
    _, properties, body = wait_for_message(conn, ch, dlq)
    assert body == b"to the default exchange"
    assert properties.headers["x-death"][0]["reason"] == "rejected"


def test_x_death_counts_repeated_deaths_most_recent_first(conn, ch, name):
    """The retry pattern: work rejects to a delay queue whose TTL sends it
    back. x-death keeps one entry per (queue, reason), most recent first."""
    work, delay = f"{name}-work", f"{name}-delay"
    ch.queue_declare(work, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": delay})
    ch.queue_declare(delay, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": work,
                                       "x-message-ttl": 50})
    ch.confirm_delivery()
    ch.basic_publish("", work, b"retry me")
    for attempt in (1, 2):
        method, properties, body = wait_for_message_unacked(conn, ch, work)
        assert body == b"retry me"
        ch.basic_reject(method.delivery_tag, requeue=False)
    method, properties, body = wait_for_message_unacked(conn, ch, work)
    ch.basic_ack(method.delivery_tag)
    assert death_summary(properties.headers["x-death"]) == [(delay, "expired", 2), (work, "rejected", 2)]
    assert properties.headers["x-first-death-queue"] == work
    assert properties.headers["x-first-death-reason"] == "rejected"


def wait_for_message_unacked(conn, ch, queue: str, timeout: float = CLIENT_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = ch.basic_get(queue, auto_ack=False)
        if method is not None:
            return method, properties, body
        if time.monotonic() >= deadline:
            raise AssertionError(f"no message reached {queue} within {timeout} s")
        conn.process_data_events(time_limit=0.05)


# --- length limits -------------------------------------------------------------------


def test_max_length_drop_head_drops_the_oldest(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, arguments={"x-max-length": 3})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", queue, f"m-{i}".encode())
    assert message_count(ch, queue) == 3
    assert bodies(ch, queue) == [b"m-2", b"m-3", b"m-4"]


def test_max_length_reject_publish_nacks_the_publisher(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"m-0")
    ch.basic_publish("", queue, b"m-1")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", queue, b"m-2")
    assert bodies(ch, queue) == [b"m-0", b"m-1"]
    # Room again: accepted.
    ch.basic_publish("", queue, b"m-3")
    assert bodies(ch, queue) == [b"m-3"]


def test_max_length_bytes_counts_body_bytes(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, arguments={"x-max-length-bytes": 10})
    ch.confirm_delivery()
    for body in (b"aaaa", b"bbbb", b"cccc", b"dddd"):
        ch.basic_publish("", queue, body, pika.BasicProperties(headers={"padding": "x" * 100}))
    # 3 x 4 bytes > 10: the oldest go until the rest fit.
    assert bodies(ch, queue) == [b"cccc", b"dddd"]


# --- priorities and single active consumer -------------------------------------------------


def test_priority_queue_delivers_higher_priority_first(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, arguments={"x-max-priority": 10})
    ch.confirm_delivery()
    for body, priority in [(b"p1", 1), (b"p5-a", 5), (b"none", None), (b"p9", 9), (b"p5-b", 5), (b"p20", 20)]:
        ch.basic_publish("", queue, body, pika.BasicProperties(priority=priority))
    consumer = conn.channel()
    got = []
    consumer.basic_consume(queue, lambda c, m, p, b: got.append(b), auto_ack=True)
    pump(conn, lambda: len(got) >= 6, what="six deliveries")
    # Priorities above x-max-priority count as the maximum; none counts as 0.
    assert got == [b"p20", b"p9", b"p5-a", b"p5-b", b"p1", b"none"]


def test_single_active_consumer(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, arguments={"x-single-active-consumer": True})
    first, second = conn.channel(), conn.channel()
    got_first, got_second = [], []

    def acker(into):
        def on_message(channel, method, _properties, body):
            into.append(body)
            channel.basic_ack(method.delivery_tag)
        return on_message

    tag_first = first.basic_consume(queue, acker(got_first))
    second.basic_consume(queue, acker(got_second))
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", queue, f"a-{i}".encode())
    pump(conn, lambda: len(got_first) + len(got_second) >= 10, what="ten deliveries")
    conn.process_data_events(time_limit=0.3)
    assert got_first == [f"a-{i}".encode() for i in range(10)]
    assert got_second == []
    first.basic_cancel(tag_first)
    for i in range(5):
        ch.basic_publish("", queue, f"b-{i}".encode())
    pump(conn, lambda: len(got_second) >= 5, what="five deliveries to the second consumer")
    assert got_second == [f"b-{i}".encode() for i in range(5)]
    assert got_first == [f"a-{i}".encode() for i in range(10)]
