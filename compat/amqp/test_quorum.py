"""Quorum queues (`x-queue-type: quorum`) as RabbitMQ 3.10 has them on
one node: what they refuse at declaration, the delivery count
(`x-delivery-count`) and the poison-message limit (`x-delivery-limit`),
which dead-letters with reason `delivery_limit`.

Every expectation here was checked against RabbitMQ 3.10.8
(COMPAT_AMQP_EXTERNAL=127.0.0.1:PORT compat/amqp/run.sh -k quorum).
RabbitMQ confirms a quorum-queue publish once its quorum has it, and a
basic.get right after may still find the queue empty: the helpers poll.
"""

from __future__ import annotations

import time

import pika
import pytest

from support import (
    CLIENT_TIMEOUT_S,
    PRECONDITION_FAILED,
    channel_error,
    close_quietly,
    connect,
    external_broker,
    message_count,
    pump,
)

QUORUM = {"x-queue-type": "quorum"}


def quorum(ch, queue: str, **arguments) -> None:
    ch.queue_declare(queue, durable=True, arguments={**QUORUM, **arguments})


def publish(ch, queue: str, body: bytes, headers=None) -> None:
    """A persistent publish, confirmed (the channel is in confirm mode)."""
    ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, headers=headers))


def get(conn, ch, queue: str, timeout: float = CLIENT_TIMEOUT_S):
    """basic.get until a message comes (manual ack); (method, properties, body)."""
    deadline = time.monotonic() + timeout
    while True:
        method, properties, body = ch.basic_get(queue)
        if method is not None:
            return method, properties, body
        if time.monotonic() >= deadline:
            raise AssertionError(f"no message in {queue} within {timeout} s")
        conn.process_data_events(time_limit=0.05)


def stays_empty(conn, ch, queue: str, seconds: float = 0.5) -> bool:
    """No message in `queue` for `seconds` (a dropped message stays gone)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        method, _, _ = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return False
        conn.process_data_events(time_limit=0.05)
    return True


def dead_letter_queue(ch, name: str) -> tuple[str, str]:
    dlx, dlq = f"{name}-dlx", f"{name}-dlq"
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    return dlx, dlq


# --- declaration ---------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, arguments, text",
    [
        (dict(durable=False), {}, "invalid property 'non-durable' for queue '{q}' in vhost '/'"),
        (dict(durable=True, exclusive=True), {}, "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'"),
        (dict(durable=True, auto_delete=True), {}, "invalid property 'auto-delete' for queue '{q}' in vhost '/'"),
        (dict(durable=True), {"x-max-priority": 5},
         "invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"),
        (dict(durable=True), {"x-queue-mode": "lazy"},
         "invalid arg 'x-queue-mode' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"),
        (dict(durable=True), {"x-quorum-initial-group-size": 0},
         "invalid arg 'x-quorum-initial-group-size' for queue '{q}' in vhost '/': {{value_zero,0}}"),
        (dict(durable=True), {"x-quorum-initial-group-size": "three"},
         "invalid arg 'x-quorum-initial-group-size' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        (dict(durable=True), {"x-dead-letter-strategy": "twice"},
         "invalid arg 'x-dead-letter-strategy' for queue '{q}' in vhost '/': invalid_dlx_strategy"),
    ],
    ids=["non-durable", "exclusive", "auto-delete", "max-priority", "queue-mode", "group-size-zero",
         "group-size-text", "dlx-strategy"],
)
def test_quorum_queues_refuse_what_rabbitmq_refuses(conn, name, flags, arguments, text):
    ch = conn.channel()
    queue = f"{name}-q"
    with channel_error(PRECONDITION_FAILED):
        try:
            ch.queue_declare(queue, arguments={**QUORUM, **arguments}, **flags)
        except pika.exceptions.ChannelClosedByBroker as error:
            assert error.reply_text == "PRECONDITION_FAILED - " + text.format(q=queue)
            raise


def test_quorum_queue_takes_its_own_arguments(conn, ch, name):
    queue = f"{name}-q"
    quorum(ch, queue, **{"x-delivery-limit": 3, "x-quorum-initial-group-size": 3,
                         "x-dead-letter-strategy": "at-most-once", "x-max-length": 10})
    # The same declaration again is equivalent.
    quorum(ch, queue, **{"x-delivery-limit": 3, "x-quorum-initial-group-size": 3,
                         "x-dead-letter-strategy": "at-most-once", "x-max-length": 10})
    assert message_count(ch, queue) == 0


# --- delivery count and limit ----------------------------------------------------


def test_basic_get_counts_returns_and_the_limit_dead_letters_a_poison_message(conn, ch, name):
    queue = f"{name}-q"
    dlx, dlq = dead_letter_queue(ch, name)
    quorum(ch, queue, **{"x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    publish(ch, queue, b"poison", headers={"origin": "test"})
    seen = []
    for _ in range(3):
        method, properties, body = get(conn, ch, queue)
        assert body == b"poison"
        seen.append((method.redelivered, properties.headers["x-delivery-count"]))
        assert properties.headers["origin"] == "test"
        ch.basic_nack(method.delivery_tag, requeue=True)
    # Delivered limit + 1 times, counted on every basic.get from 0.
    assert seen == [(False, 0), (True, 1), (True, 2)]
    method, properties, body = get(conn, ch, dlq)
    ch.basic_ack(method.delivery_tag)
    assert body == b"poison"
    headers = properties.headers
    assert "x-delivery-count" not in headers, "the count is not part of the dead letter"
    assert headers["origin"] == "test"
    assert headers["x-first-death-reason"] == "delivery_limit"
    assert headers["x-first-death-queue"] == queue
    [death] = headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", queue, 1)
    assert stays_empty(conn, ch, queue)


def test_a_consumer_sees_the_count_once_the_message_came_back(conn, ch, name):
    queue = f"{name}-q"
    quorum(ch, queue, **{"x-delivery-limit": 1})
    ch.confirm_delivery()
    publish(ch, queue, b"c")
    seen = []

    def on_message(channel, method, properties, _body):
        seen.append((method.redelivered, (properties.headers or {}).get("x-delivery-count")))
        channel.basic_nack(method.delivery_tag, requeue=True)

    ch.basic_consume(queue, on_message)
    pump(conn, lambda: len(seen) >= 2, what="two deliveries")
    # Past the limit without a dead-letter exchange: dropped.
    conn.process_data_events(time_limit=0.5)
    assert seen == [(False, None), (True, 1)]
    ch.cancel()
    assert message_count(ch, queue) == 0


def test_a_closed_channel_returns_its_messages_and_that_counts(broker, conn, ch, name):
    queue = f"{name}-q"
    quorum(ch, queue, **{"x-delivery-limit": 1})
    ch.confirm_delivery()
    publish(ch, queue, b"x")
    counts = []
    for _ in range(2):
        other = connect(broker)
        try:
            side = other.channel()
            method, properties, _ = get(other, side, queue)
            counts.append((method.redelivered, properties.headers["x-delivery-count"]))
        finally:
            other.close()
    assert counts == [(False, 0), (True, 1)]
    # The second close took it past the limit.
    assert stays_empty(conn, ch, queue)


def test_a_reject_without_requeue_is_not_counted_and_dies_as_rejected(conn, ch, name):
    queue = f"{name}-q"
    dlx, dlq = dead_letter_queue(ch, name)
    quorum(ch, queue, **{"x-delivery-limit": 5, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    publish(ch, queue, b"rejected")
    method, _, _ = get(conn, ch, queue)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, properties, body = get(conn, ch, dlq)
    ch.basic_ack(method.delivery_tag)
    assert body == b"rejected"
    assert properties.headers["x-first-death-reason"] == "rejected"


def test_without_a_limit_the_count_grows_and_the_message_stays(conn, ch, name):
    queue = f"{name}-q"
    quorum(ch, queue)
    ch.confirm_delivery()
    publish(ch, queue, b"again")
    counts = []
    for _ in range(5):
        method, properties, _ = get(conn, ch, queue)
        counts.append(properties.headers["x-delivery-count"])
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert counts == [0, 1, 2, 3, 4]
    method, _, _ = get(conn, ch, queue)
    ch.basic_ack(method.delivery_tag)


@pytest.mark.parametrize(
    "queue_type, argument, value",
    [
        ("classic", "x-delivery-limit", 1),
        ("classic", "x-dead-letter-strategy", "at-most-once"),
        ("classic", "x-quorum-initial-group-size", 3),
        ("classic", "x-max-age", "1D"),
        ("quorum", "x-max-age", "1D"),
        ("quorum", "x-queue-master-locator", "min-masters"),
        ("stream", "x-delivery-limit", 1),
        ("stream", "x-message-ttl", 1000),
        ("stream", "x-dead-letter-exchange", "dlx"),
    ],
)
def test_each_queue_type_refuses_the_arguments_of_the_others(conn, name, queue_type, argument, value):
    ch = conn.channel()
    queue = f"{name}-q"
    with channel_error(PRECONDITION_FAILED):
        try:
            ch.queue_declare(queue, durable=True, arguments={"x-queue-type": queue_type, argument: value})
        except pika.exceptions.ChannelClosedByBroker as error:
            assert error.reply_text == (
                f"PRECONDITION_FAILED - invalid arg '{argument}' for queue '{queue}' in vhost '/' "
                f"of queue type rabbit_{queue_type}_queue"
            )
            raise


def test_a_classic_queue_has_no_delivery_count(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    publish(ch, queue, b"classic")
    for redelivered in (False, True, True):
        method, properties, _ = get(conn, ch, queue)
        assert method.redelivered is redelivered
        assert "x-delivery-count" not in (properties.headers or {})
        ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, _ = get(conn, ch, queue)
    ch.basic_ack(method.delivery_tag)


# --- dead-letter strategy ---------------------------------------------------------


def rejected_while_unroutable(conn, ch, name: str, strategy: str, body: bytes) -> tuple[str, str, str]:
    """A quorum queue dead-lettering with `strategy` to a fanout exchange
    bound to nothing yet, and `body` published, got and rejected without
    requeue there: the queue, the exchange and the name of the target
    queue to bind later."""
    queue, dlx, target = f"{name}-q", f"{name}-dlx", f"{name}-target"
    ch.exchange_declare(dlx, "fanout", durable=True)
    quorum(ch, queue, **{"x-dead-letter-exchange": dlx, "x-dead-letter-strategy": strategy,
                         "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    publish(ch, queue, body)
    method, _, _ = get(conn, ch, queue)
    ch.basic_reject(method.delivery_tag, requeue=False)
    conn.process_data_events(time_limit=0.5)
    return queue, dlx, target


@pytest.mark.parametrize("strategy", ["at-least-once", "at-most-once"])
def test_at_least_once_keeps_a_dead_letter_until_its_target_has_it(conn, ch, name, strategy):
    """A message rejected while its dead-letter exchange routes nowhere is
    kept by an at-least-once queue (x-overflow reject-publish) and reaches
    the target queue bound afterwards; at most once, it is gone.

    Sluice sends a held dead letter again every 2 s; RabbitMQ 3.10 after
    about 3 minutes (checked with a 300 s wait: it arrived after 183 s).
    """
    queue, dlx, target = rejected_while_unroutable(conn, ch, name, strategy, b"precious")
    ch.queue_declare(target, durable=True)
    ch.queue_bind(target, dlx)
    if strategy == "at-most-once":
        assert stays_empty(conn, ch, target, seconds=5)
        return
    # RabbitMQ 3.10 sends it again after about 183 s (run it with --timeout 300).
    _, properties, body = get(conn, ch, target, timeout=240 if external_broker() else 20)
    assert body == b"precious"
    assert properties.headers["x-first-death-reason"] == "rejected"
    assert stays_empty(conn, ch, target, seconds=3), "settled once the target had it: not sent again"
    assert message_count(ch, queue) == 0


def test_the_count_and_a_held_dead_letter_survive_kill_9(fresh_broker, name):
    """On one node too, a quorum queue keeps a message's delivery count
    and the dead letters it holds for their target across a crash: the
    poison message is dead-lettered at the limit it had nearly reached,
    and the held letter reaches the target bound after the restart
    instead of coming back to its queue. Transient messages survive too,
    as RabbitMQ's quorum queues keep every message."""
    broker = fresh_broker
    transient = f"{name}-transient"
    poison, poison_dlx, poison_dlq = f"{name}-poison", f"{name}-pdlx", f"{name}-pdlq"
    precious, dlx, target = f"{name}-precious", f"{name}-dlx", f"{name}-target"
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.exchange_declare(poison_dlx, "fanout", durable=True)
        ch.queue_declare(poison_dlq, durable=True)
        ch.queue_bind(poison_dlq, poison_dlx)
        quorum(ch, poison, **{"x-delivery-limit": 2, "x-dead-letter-exchange": poison_dlx})
        ch.exchange_declare(dlx, "fanout", durable=True)
        quorum(ch, precious, **{"x-dead-letter-exchange": dlx, "x-dead-letter-strategy": "at-least-once",
                                "x-overflow": "reject-publish"})
        quorum(ch, transient)
        ch.confirm_delivery()
        publish(ch, poison, b"poison")
        publish(ch, precious, b"precious")
        for n in range(3):
            ch.basic_publish("", transient, f"t{n}".encode(), pika.BasicProperties(delivery_mode=1))
        for count in (0, 1):
            method, properties, _ = get(conn, ch, poison)
            assert properties.headers["x-delivery-count"] == count
            ch.basic_nack(method.delivery_tag, requeue=True)
        method, _, _ = get(conn, ch, precious)
        ch.basic_reject(method.delivery_tag, requeue=False)
        # A round trip after the settlements: the broker has done them.
        assert message_count(ch, poison) == 1
        assert message_count(ch, precious) == 0
    finally:
        broker.kill()
        close_quietly(conn)

    broker.start()
    conn = connect(broker)
    try:
        ch = conn.channel()
        method, properties, body = get(conn, ch, poison)
        assert (body, method.redelivered, properties.headers["x-delivery-count"]) == (b"poison", True, 2)
        ch.basic_nack(method.delivery_tag, requeue=True)
        _, properties, body = get(conn, ch, poison_dlq)
        assert (body, properties.headers["x-first-death-reason"]) == (b"poison", "delivery_limit")
        assert stays_empty(conn, ch, poison)

        assert stays_empty(conn, ch, precious), "a held dead letter is not queued again"
        ch.queue_declare(target, durable=True)
        ch.queue_bind(target, dlx)
        _, properties, body = get(conn, ch, target, timeout=20)
        assert (body, properties.headers["x-first-death-reason"]) == (b"precious", "rejected")
        assert stays_empty(conn, ch, target, seconds=3), "settled once the target had it: not sent again"
        assert message_count(ch, precious) == 0

        assert [get(conn, ch, transient)[2] for _ in range(3)] == [b"t0", b"t1", b"t2"]
    finally:
        close_quietly(conn)


def test_held_dead_letters_count_against_the_length_limit(conn, ch, name):
    """An unreachable dead-letter target pushes back on publishers: the
    letters held for it count against `x-max-length` (RabbitMQ counts its
    discarded-but-unconfirmed messages the same way; its limit is soft by
    one message). Once the target takes them, publishes go in again."""
    queue, dlx, target = f"{name}-q", f"{name}-dlx", f"{name}-target"
    ch.exchange_declare(dlx, "fanout", durable=True)
    quorum(ch, queue, **{"x-dead-letter-exchange": dlx, "x-dead-letter-strategy": "at-least-once",
                         "x-overflow": "reject-publish", "x-max-length": 2})
    ch.confirm_delivery()
    publish(ch, queue, b"m1")
    publish(ch, queue, b"m2")
    for _ in range(2):
        method, _, _ = get(conn, ch, queue)
        ch.basic_reject(method.delivery_tag, requeue=False)
    conn.process_data_events(time_limit=0.5)
    nacked = 0
    for n in range(3, 7):
        try:
            publish(ch, queue, f"m{n}".encode())
        except pika.exceptions.NackError:
            nacked += 1
    assert nacked >= 3, f"only {nacked} of 4 publishes refused while 2 dead letters are held"
    if external_broker() is not None:
        return  # RabbitMQ 3.10 sends held letters again only after about 3 minutes.
    ch.queue_declare(target, durable=True)
    ch.queue_bind(target, dlx)
    bodies = sorted(get(conn, ch, target, timeout=20)[2] for _ in range(2))
    assert bodies == [b"m1", b"m2"]
    publish(ch, queue, b"m7")
    assert message_count(ch, queue) == 1


def test_a_purge_drops_held_dead_letters_too(conn, ch, name):
    """`queue.purge` also drops the dead letters a queue holds for an
    unreachable target (as RabbitMQ's purge does): binding the target
    afterwards brings nothing."""
    queue, dlx, target = rejected_while_unroutable(conn, ch, name, "at-least-once", b"purged")
    ch.queue_purge(queue)
    ch.queue_declare(target, durable=True)
    ch.queue_bind(target, dlx)
    assert stays_empty(conn, ch, target, seconds=5), "a purged held letter was sent on"

