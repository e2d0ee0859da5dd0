"""Consumers and settlement: work sharing between competing consumers,
basic.qos prefetch, ack / nack / reject with and without requeue (the
redelivered flag on redelivery), multiple-settlement, basic.recover,
unknown delivery tags (406) and requeue on channel close — as RabbitMQ does.
"""

from __future__ import annotations

import threading
import time

from support import (
    CLIENT_TIMEOUT_S,
    PRECONDITION_FAILED,
    channel_error,
    close_quietly,
    collect,
    connect,
    get_all,
    message_count,
    pump,
)

# Messages shared by the work-sharing consumers.
WORK_MESSAGES = 600


def publish_numbered(ch, queue: str, count: int, prefix: str = "m"):
    ch.confirm_delivery()
    for i in range(count):
        ch.basic_publish("", queue, f"{prefix}-{i}".encode())


def test_competing_consumers_share_work_exactly_once(broker, conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, WORK_MESSAGES)

    received: dict[int, list[bytes]] = {1: [], 5: [], 10: []}
    redelivered = []
    errors = []
    done = threading.Event()

    def consume(prefetch: int):
        connection = connect(broker)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=prefetch)

            def on_message(chan, method, _properties, body):
                received[prefetch].append(body)
                if method.redelivered:
                    redelivered.append(body)
                time.sleep(0.001)  # some work, so consumers overlap
                chan.basic_ack(method.delivery_tag)

            channel.basic_consume(queue, on_message)
            deadline = time.monotonic() + CLIENT_TIMEOUT_S * 2
            while not done.is_set() and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.1)
        except Exception as error:  # noqa: BLE001 - reported by the test
            errors.append(f"consumer with prefetch {prefetch}: {error!r}")
        finally:
            close_quietly(connection)

    threads = [threading.Thread(target=consume, args=(p,)) for p in received]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT_S * 2
        while sum(len(v) for v in received.values()) < WORK_MESSAGES and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=CLIENT_TIMEOUT_S)
    assert not errors, errors
    everything = [body for got in received.values() for body in got]
    expected = {f"m-{i}".encode() for i in range(WORK_MESSAGES)}
    assert len(everything) == WORK_MESSAGES, {p: len(v) for p, v in received.items()}
    assert set(everything) == expected
    assert redelivered == []
    shares = {p: len(v) for p, v in received.items()}
    assert all(share > 0 for share in shares.values()), f"a consumer got no share: {shares}"
    assert message_count(ch, queue) == 0


def test_prefetch_limits_unacked_deliveries(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 10)
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=3)
    got = []
    tag = consumer.basic_consume(queue, lambda c, m, p, b: got.append((m, b)))
    pump(conn, lambda: len(got) >= 3, what="three deliveries")
    conn.process_data_events(time_limit=0.5)
    assert [b for _, b in got] == [b"m-0", b"m-1", b"m-2"], "prefetch 3 must stop at 3 unacked"
    # Acking one opens room for exactly one more.
    consumer.basic_ack(got[0][0].delivery_tag)
    pump(conn, lambda: len(got) >= 4, what="a fourth delivery after one ack")
    conn.process_data_events(time_limit=0.5)
    assert len(got) == 4 and got[3][1] == b"m-3"
    # Acking several at once with multiple=True opens room for that many.
    consumer.basic_ack(got[3][0].delivery_tag, multiple=True)
    pump(conn, lambda: len(got) >= 7, what="three more deliveries after a multiple ack")
    conn.process_data_events(time_limit=0.5)
    assert [b for _, b in got] == [f"m-{i}".encode() for i in range(7)]
    consumer.basic_cancel(tag)


def test_nack_and_reject_with_requeue_redeliver_with_flag(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 2)
    first, _, body1 = ch.basic_get(queue)
    assert body1 == b"m-0" and not first.redelivered
    ch.basic_nack(first.delivery_tag, requeue=True)
    again, _, body = ch.basic_get(queue)
    assert body == b"m-0", "a requeued message goes back to its place at the head"
    assert again.redelivered is True
    ch.basic_reject(again.delivery_tag, requeue=True)
    third, _, body = ch.basic_get(queue)
    assert body == b"m-0" and third.redelivered is True
    ch.basic_ack(third.delivery_tag)
    last, _, body = ch.basic_get(queue)
    assert body == b"m-1" and last.redelivered is False
    ch.basic_ack(last.delivery_tag)
    assert ch.basic_get(queue) == (None, None, None)


def test_reject_and_nack_without_requeue_drop(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 2)
    method, _, _ = ch.basic_get(queue)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, _, _ = ch.basic_get(queue)
    ch.basic_nack(method.delivery_tag, requeue=False)
    assert ch.basic_get(queue) == (None, None, None)
    ch.close()
    # Nothing comes back when the channel closes: both were settled.
    assert message_count(conn.channel(), queue) == 0


def test_multiple_ack_and_multiple_nack(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 6)
    gets = [ch.basic_get(queue) for _ in range(6)]
    tags = [method.delivery_tag for method, _, _ in gets]
    assert tags == sorted(tags) and len(set(tags)) == 6
    ch.basic_ack(tags[2], multiple=True)  # settles m-0..m-2
    ch.basic_nack(tags[5], multiple=True, requeue=True)  # requeues m-3..m-5
    back = get_all(ch, queue, auto_ack=True)
    assert [body for _, _, body in back] == [b"m-3", b"m-4", b"m-5"]
    assert all(method.redelivered for method, _, _ in back)
    ch.close()
    assert message_count(conn.channel(), queue) == 0


def test_basic_recover_requeues_unacked(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 3)
    consumer = conn.channel()
    got = []
    consumer.basic_consume(queue, lambda c, m, p, b: got.append((m, b)))
    pump(conn, lambda: len(got) >= 3, what="three deliveries")
    assert not any(m.redelivered for m, _ in got)
    consumer.basic_recover(requeue=True)
    pump(conn, lambda: len(got) >= 6, what="three redeliveries after basic.recover")
    again = got[3:]
    assert sorted(b for _, b in again) == [b"m-0", b"m-1", b"m-2"]
    assert all(m.redelivered for m, _ in again)
    for method, _ in again:
        consumer.basic_ack(method.delivery_tag)
    consumer.close()
    assert message_count(ch, queue) == 0


def test_ack_of_unknown_delivery_tag_closes_channel_406(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    with channel_error(PRECONDITION_FAILED):
        ch.basic_ack(99)
        ch.queue_declare(queue, passive=True)


def test_double_ack_closes_channel_406(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 1)
    method, _, _ = ch.basic_get(queue)
    ch.basic_ack(method.delivery_tag)
    with channel_error(PRECONDITION_FAILED):
        ch.basic_ack(method.delivery_tag)
        ch.queue_declare(queue, passive=True)


def test_closing_a_channel_requeues_its_unacked_messages(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 4)
    consumer = conn.channel()
    got = collect(conn, consumer, queue, 4)
    assert len(got) == 4
    consumer.basic_ack(got[0][0].delivery_tag)
    consumer.close()
    back = get_all(ch, queue, auto_ack=True)
    assert [body for _, _, body in back] == [b"m-1", b"m-2", b"m-3"]
    assert all(method.redelivered for method, _, _ in back)


def test_closing_a_connection_requeues_its_unacked_messages(broker, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 3)
    other = connect(broker)
    try:
        channel = other.channel()
        got = [channel.basic_get(queue) for _ in range(3)]
        assert [body for _, _, body in got] == [b"m-0", b"m-1", b"m-2"]
    finally:
        other.close()
    back = get_all(ch, queue, auto_ack=True)
    assert [body for _, _, body in back] == [b"m-0", b"m-1", b"m-2"]
    assert all(method.redelivered for method, _, _ in back)


def test_auto_ack_consumer_gets_everything_without_acks(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 50)
    consumer = conn.channel()
    got = collect(conn, consumer, queue, 50, auto_ack=True)
    assert [body for _, _, body in got] == [f"m-{i}".encode() for i in range(50)]
    consumer.close()
    assert message_count(ch, queue) == 0


def test_cancel_keeps_unacked_messages_with_the_channel(conn, ch, name):
    """basic.cancel stops deliveries but does not requeue what the channel
    holds unacked; closing the channel does."""
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 3)
    holder = conn.channel()
    held = collect(conn, holder, queue, 3)  # consumes, then cancels
    assert len(held) == 3
    other = conn.channel()
    got = collect(conn, other, queue, 1, timeout=0.5)
    assert got == [], "unacked messages of a cancelled consumer went to another consumer"
    holder.basic_ack(held[0][0].delivery_tag)  # acking after the cancel is fine
    holder.close()
    back = collect(conn, other, queue, 2, auto_ack=True)
    assert [body for _, _, body in back] == [b"m-1", b"m-2"]
    assert all(method.redelivered for method, _, _ in back)


def test_delivery_tags_belong_to_their_channel_406(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 1)
    method, _, _ = ch.basic_get(queue)
    other = conn.channel()
    with channel_error(PRECONDITION_FAILED):
        other.basic_ack(method.delivery_tag)
        other.queue_declare(queue, passive=True)
    ch.basic_ack(method.delivery_tag)
    assert message_count(ch, queue) == 0


def test_consumer_priorities(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    low, high = conn.channel(), conn.channel()
    got_low, got_high = [], []
    low.basic_consume(queue, lambda c, m, p, b: got_low.append(b), auto_ack=True,
                      arguments={"x-priority": 1})
    high.basic_consume(queue, lambda c, m, p, b: got_high.append(b), auto_ack=True,
                       arguments={"x-priority": 10})
    publish_numbered(ch, queue, 20)
    pump(conn, lambda: len(got_low) + len(got_high) >= 20, what="20 deliveries")
    assert got_high == [f"m-{i}".encode() for i in range(20)]
    assert got_low == []


def test_requeued_messages_keep_their_original_order(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish_numbered(ch, queue, 5)
    gets = [ch.basic_get(queue) for _ in range(4)]
    tags = {body: method.delivery_tag for method, _, body in gets}
    # Requeue out of order: m-2 first, then m-0; m-1 and m-3 are acked.
    ch.basic_nack(tags[b"m-2"], requeue=True)
    ch.basic_ack(tags[b"m-1"])
    ch.basic_nack(tags[b"m-0"], requeue=True)
    ch.basic_ack(tags[b"m-3"])
    back = get_all(ch, queue)
    assert [body for _, _, body in back] == [b"m-0", b"m-2", b"m-4"]
    assert [method.redelivered for method, _, _ in back] == [True, True, False]


# Published without confirms, as fast as pika writes.
BULK_MESSAGES = 20_000


def test_bulk_publish_without_confirms_arrives_complete_and_in_order(broker, conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publisher = connect(broker)
    try:
        channel = publisher.channel()
        for i in range(BULK_MESSAGES):
            channel.basic_publish("", queue, b"%d" % i)
        channel.queue_declare(queue, passive=True)  # a round trip after the last publish
    finally:
        publisher.close()
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=500)
    got = []

    def on_message(chan, method, _properties, body):
        got.append(body)
        if len(got) % 100 == 0:
            chan.basic_ack(method.delivery_tag, multiple=True)

    consumer.basic_consume(queue, on_message)
    pump(conn, lambda: len(got) >= BULK_MESSAGES, timeout=CLIENT_TIMEOUT_S * 4, what=f"{BULK_MESSAGES} deliveries")
    assert got == [b"%d" % i for i in range(BULK_MESSAGES)]
    consumer.close()
    assert message_count(ch, queue) == 0


def test_concurrent_confirmed_publishers_lose_nothing(broker, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    per_publisher = 300
    errors = []

    def publish(index: int):
        connection = connect(broker)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            for i in range(per_publisher):
                channel.basic_publish("", queue, f"p{index}-{i}".encode())
        except Exception as error:  # noqa: BLE001 - reported by the test
            errors.append(repr(error))
        finally:
            close_quietly(connection)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=CLIENT_TIMEOUT_S * 2)
    assert not errors, errors
    got = [body for _, _, body in get_all(ch, queue)]
    assert sorted(got) == sorted(f"p{p}-{i}".encode() for p in range(4) for i in range(per_publisher))
    for p in range(4):
        mine = [body for body in got if body.startswith(f"p{p}-".encode())]
        assert mine == [f"p{p}-{i}".encode() for i in range(per_publisher)], "one publisher's messages out of order"
