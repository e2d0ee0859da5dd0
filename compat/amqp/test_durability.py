"""Durability across a crash: durable exchanges, queues and bindings and
confirmed persistent messages survive `kill -9` of the broker; messages
acked before the crash do not come back, messages delivered but unacked
do, flagged redelivered; non-durable queues are gone after the restart; a
clean stop (SIGTERM) keeps the same — as RabbitMQ does (3.10 checked by
hand: after kill -9 it redelivers none of the acked messages and flags
every recovered one redelivered).
"""

from __future__ import annotations

import pika

from support import close_quietly, collect, connect, get_all, queue_exists

PERSISTENT = pika.BasicProperties(delivery_mode=2)
MESSAGES = 200
ACKED = 60
UNACKED_IN_FLIGHT = 20


def test_durable_state_and_confirmed_messages_survive_kill_9(fresh_broker, name):
    broker = fresh_broker
    exchange, queue, transient = f"{name}-x", f"{name}-q", f"{name}-transient"
    e2e_source, e2e_queue = f"{name}-src", f"{name}-q2"

    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, "direct", durable=True)
        ch.queue_declare(queue, durable=True, arguments={"x-max-length": 10_000})
        ch.queue_bind(queue, exchange, routing_key="k")
        ch.queue_declare(transient, durable=False)
        ch.queue_bind(transient, exchange, routing_key="k")
        # An exchange-to-exchange binding between durable exchanges.
        ch.exchange_declare(e2e_source, "fanout", durable=True)
        ch.exchange_bind(destination=exchange, source=e2e_source)
        ch.queue_declare(e2e_queue, durable=True)
        ch.queue_bind(e2e_queue, exchange, routing_key="other")

        ch.confirm_delivery()
        for i in range(MESSAGES):
            ch.basic_publish(exchange, "k", f"m-{i}".encode(), PERSISTENT)
        assert ch.queue_declare(queue, passive=True).method.message_count == MESSAGES

        # Ack the first ACKED; the round trip after the acks makes sure the
        # broker has read them (frames on a channel are handled in order).
        acker = conn.channel()
        for _ in range(ACKED):
            method, _, _ = acker.basic_get(queue)
            acker.basic_ack(method.delivery_tag)
        acker.queue_declare(queue, passive=True)
        acker.close()

        # Hold the next ones delivered but unacked when the broker dies.
        holder = conn.channel()
        holder.basic_qos(prefetch_count=UNACKED_IN_FLIGHT)
        held = collect(conn, holder, queue, UNACKED_IN_FLIGHT)
        assert [body for _, _, body in held] == [f"m-{i}".encode() for i in range(ACKED, ACKED + UNACKED_IN_FLIGHT)]
    finally:
        broker.kill()
        close_quietly(conn)

    broker.start()
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, "direct", passive=True, durable=True)
        survivors = [f"m-{i}".encode() for i in range(ACKED, MESSAGES)]
        acked = {f"m-{i}".encode() for i in range(ACKED)}
        got = get_all(ch, queue)
        received = [body for _, _, body in got]
        # Acked messages coming back is checked on its own below, in
        # test_acks_before_kill_9_stay_acked.
        assert [body for body in received if body not in acked] == survivors, (
            "every confirmed, unacked message must come back once, in order"
        )
        assert all(properties.delivery_mode == 2 for _, properties, _ in got)
        # The redelivered flag of those delivered before the crash is
        # checked in test_messages_delivered_before_kill_9_come_back_redelivered.
        assert not queue_exists(conn, transient), "a non-durable queue must not survive a restart"

        # The exchange, its binding and the exchange-to-exchange binding
        # still route; the queue keeps its arguments.
        ch.confirm_delivery()
        ch.basic_publish(exchange, "k", b"after restart", PERSISTENT)
        ch.basic_publish(e2e_source, "other", b"through e2e", PERSISTENT)
        assert [body for _, _, body in get_all(ch, queue)] == [b"after restart"]
        assert [body for _, _, body in get_all(ch, e2e_queue)] == [b"through e2e"]
        ch.queue_declare(queue, durable=True, arguments={"x-max-length": 10_000})
    finally:
        close_quietly(conn)


def test_acks_before_kill_9_stay_acked(fresh_broker, name):
    broker = fresh_broker
    queue = f"{name}-q"
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for i in range(MESSAGES):
            ch.basic_publish("", queue, f"m-{i}".encode(), PERSISTENT)
        acker = conn.channel()
        for _ in range(ACKED):
            method, _, _ = acker.basic_get(queue)
            acker.basic_ack(method.delivery_tag)
        # A round trip after the acks: the broker has read them.
        assert acker.queue_declare(queue, passive=True).method.message_count == MESSAGES - ACKED
    finally:
        broker.kill()
        close_quietly(conn)

    broker.start()
    conn = connect(broker)
    try:
        ch = conn.channel()
        received = [body for _, _, body in get_all(ch, queue)]
        came_back = [body for body in received if int(body[2:]) < ACKED]
        assert came_back == [], f"{len(came_back)} of {ACKED} messages acked before the crash were delivered again"
        assert received == [f"m-{i}".encode() for i in range(ACKED, MESSAGES)]
    finally:
        close_quietly(conn)


def test_messages_delivered_before_kill_9_come_back_redelivered(fresh_broker, name):
    """The flag must say a message may have been seen before (RabbitMQ
    flags every message it recovers after a crash)."""
    broker = fresh_broker
    queue = f"{name}-q"
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for i in range(10):
            ch.basic_publish("", queue, f"m-{i}".encode(), PERSISTENT)
        holder = conn.channel()
        held = [holder.basic_get(queue) for _ in range(3)]
        assert [body for _, _, body in held] == [b"m-0", b"m-1", b"m-2"]
    finally:
        broker.kill()
        close_quietly(conn)

    broker.start()
    conn = connect(broker)
    try:
        got = get_all(conn.channel(), queue)
        assert [body for _, _, body in got] == [f"m-{i}".encode() for i in range(10)]
        flags = {body: method.redelivered for method, _, body in got}
        assert [flags[b] for b in (b"m-0", b"m-1", b"m-2")] == [True, True, True], flags
    finally:
        close_quietly(conn)


def test_clean_restart_keeps_messages_and_redelivers_unacked(fresh_broker, name):
    broker = fresh_broker
    queue = f"{name}-q"
    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for i in range(20):
            ch.basic_publish("", queue, f"m-{i}".encode(), PERSISTENT)
        method, _, _ = ch.basic_get(queue)
        ch.basic_ack(method.delivery_tag)
        ch.basic_get(queue)  # m-1 delivered, never acked
    finally:
        close_quietly(conn)
        assert broker.stop() == 0, "SIGTERM must stop the broker cleanly"

    broker.start()
    conn = connect(broker)
    try:
        ch = conn.channel()
        got = get_all(ch, queue)
        assert [body for _, _, body in got] == [f"m-{i}".encode() for i in range(1, 20)]
        # As RabbitMQ after a clean stop: only the one delivered before is flagged.
        assert [method.redelivered for method, _, _ in got] == [True] + [False] * 18
    finally:
        close_quietly(conn)
