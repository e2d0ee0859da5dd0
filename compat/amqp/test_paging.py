"""A durable queue's backlog waits on disk: beyond `amqp.queue_memory_bytes`
of ready messages, persistent messages are kept only in the queue's log and
read back as consumers reach them. Nothing a client sees changes: order,
counts, the redelivered flag, TTL and dead-lettering, `x-max-length`,
purge, and recovery after a clean stop or `kill -9` are as for a queue
held in memory. These brokers keep 32 KiB per queue in memory, so a few
hundred 1 KB messages are enough to page.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request

import pika
import pytest

from common.broker import per_test_broker, wait_until
from support import CLIENT_TIMEOUT_S, collect, connect, external_broker, message_count

BUDGET = {"amqp.queue_memory_bytes": "32KiB"}
PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


@pytest.fixture
def paging_broker(tmp_path, request):
    if external_broker() is not None:
        pytest.skip("needs a broker started with its own settings (COMPAT_AMQP_EXTERNAL is set)")
    with per_test_broker(tmp_path, request, BUDGET) as instance:
        yield instance


def body(i: int) -> bytes:
    return f"{i:06d}-".encode() + b"p" * 1000


def number(payload: bytes) -> int:
    return int(payload[:6])


def publish(broker, queue: str, count: int, start: int = 0, transient_every: int = 0,
            arguments: dict | None = None) -> None:
    """Declares `queue` durable and publishes `count` numbered messages with
    confirms; with `transient_every`, every such message is transient."""
    connection = connect(broker)
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments=arguments)
    channel.confirm_delivery()
    for i in range(start, start + count):
        transient = transient_every and i % transient_every == 0
        channel.basic_publish("", queue, body(i), TRANSIENT if transient else PERSISTENT)
    connection.close()


def admin(broker, path: str):
    """GET on the admin API, as guest."""
    request = urllib.request.Request(f"http://127.0.0.1:{broker.http_port}/api/{path}", headers={
        "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S) as response:
        return json.load(response)


def paged_out(broker, queue: str) -> int:
    """The admin API's `messages_paged_out` of `queue` in vhost `/`."""
    return admin(broker, f"queues/%2F/{urllib.parse.quote(queue)}")["messages_paged_out"]


def get_acked(broker, queue: str, count: int):
    """Takes `count` messages with basic.get and acks them; returns
    (number, redelivered) pairs in order."""
    connection = connect(broker)
    channel = connection.channel()
    got = []
    for _ in range(count):
        method, _, payload = channel.basic_get(queue)
        assert method is not None, f"{queue} ran dry after {len(got)} messages"
        got.append((number(payload), method.redelivered))
        channel.basic_ack(method.delivery_tag)
    connection.close()
    return got


def consume_all(broker, queue: str, count: int, ack: bool = True):
    """Consumes the `count` messages `queue` holds (prefetch 50) and returns
    (number, redelivered) pairs in delivery order."""
    connection = connect(broker)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=50)
    got = []

    def on_message(ch, method, _properties, payload):
        got.append((number(payload), method.redelivered))
        if ack:
            ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.2)
    # Anything extra would show as a longer list.
    connection.process_data_events(time_limit=0.3)
    connection.close()
    return got


def test_order_and_counts_hold_across_the_memory_budget_and_a_clean_restart(paging_broker, name):
    broker = paging_broker
    # 1,000 messages of 1 KB: 32 in memory, the rest on disk; every 10th is
    # transient, so it waits in memory behind messages on disk.
    publish(broker, name, 1_000, transient_every=10)
    connection = connect(broker)
    assert message_count(connection.channel(), name) == 1_000
    connection.close()
    # 1,000 KB against 32 KiB: all but a few dozen wait on disk.
    assert paged_out(broker, name) > 800
    # Peeking reads past the in-memory head, without taking anything.
    peeked = admin(broker, f"queues/%2F/{urllib.parse.quote(name)}/messages?count=100&encoding=text")
    assert [int(m["payload"][:6]) for m in peeked["messages"]] == list(range(100))

    first = get_acked(broker, name, 300)
    assert [n for n, _ in first] == list(range(300)), "delivery order across the page boundary"
    assert not any(redelivered for _, redelivered in first)

    broker.stop()
    broker.start()
    # Transient messages do not survive a restart (as in RabbitMQ); the
    # persistent ones come back in order, never delivered, so not flagged.
    expected = [i for i in range(300, 1_000) if i % 10 != 0]
    connection = connect(broker)
    assert message_count(connection.channel(), name) == len(expected)
    connection.close()
    assert paged_out(broker, name) > 550, "recovery leaves the backlog on disk"
    rest = consume_all(broker, name, len(expected))
    assert [n for n, _ in rest] == expected
    assert not any(redelivered for _, redelivered in rest)


def test_paged_messages_survive_kill_9_flagged_redelivered(paging_broker, name):
    broker = paging_broker
    publish(broker, name, 600)
    # 100 delivered and acked, 50 delivered and left unacked when it dies.
    connection = connect(broker)
    channel = connection.channel()
    for i in range(100):
        method, _, payload = channel.basic_get(name)
        assert number(payload) == i
        channel.basic_ack(method.delivery_tag)
    channel.basic_qos(prefetch_count=50)
    held = collect(connection, channel, name, 50)
    assert [number(p) for _, _, p in held] == list(range(100, 150))
    broker.kill()
    broker.start()
    back = consume_all(broker, name, 500)
    assert [n for n, _ in back] == list(range(100, 600)), "acked ones stay gone, the rest come back in order"
    # After a crash every recovered message is flagged, as RabbitMQ does.
    assert all(redelivered for _, redelivered in back)


def test_ttl_expires_paged_messages_into_the_dead_letter_queue(paging_broker, name):
    broker = paging_broker
    dead = f"{name}-dead"
    connection = connect(broker)
    channel = connection.channel()
    channel.queue_declare(dead, durable=True)
    connection.close()
    publish(broker, name, 400, arguments={
        "x-message-ttl": 300,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead,
    })
    connection = connect(broker)
    channel = connection.channel()
    wait_until(lambda: message_count(channel, name) == 0, CLIENT_TIMEOUT_S,
               what="every message, paged ones too, to expire")
    # Dead letters are republished after they leave their queue (in
    # RabbitMQ too), so the dead-letter queue's count catches up a moment
    # later; every one of them must arrive, none twice.
    wait_until(lambda: message_count(channel, dead) >= 400, CLIENT_TIMEOUT_S,
               what="every expired message to reach the dead-letter queue")
    assert message_count(channel, dead) == 400
    connection.close()
    letters = consume_all(broker, dead, 400)
    assert [n for n, _ in letters] == list(range(400)), "dead-lettered in order"


def test_purge_and_max_length_count_paged_messages(paging_broker, name):
    broker = paging_broker
    publish(broker, name, 500)
    connection = connect(broker)
    channel = connection.channel()
    assert channel.queue_purge(name).method.message_count == 500
    assert message_count(channel, name) == 0
    connection.close()

    capped = f"{name}-capped"
    publish(broker, capped, 500, arguments={"x-max-length": 120})
    connection = connect(broker)
    assert message_count(connection.channel(), capped) == 120
    connection.close()

    broker.stop()
    broker.start()
    connection = connect(broker)
    channel = connection.channel()
    assert message_count(channel, name) == 0, "purged messages stay purged after a restart"
    connection.close()
    kept = consume_all(broker, capped, 120)
    assert [n for n, _ in kept] == list(range(380, 500)), "drop-head dropped the oldest, paged or not"
