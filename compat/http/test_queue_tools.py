"""The queue page's tools through the API: `get` with RabbitMQ's ack modes
(requeue, ack, reject to the dead-letter exchange) and moving messages from
one queue to another (a dead-letter queue back to its work queue), with
pika publishing and reading what the API moved.

Contract: docs/http.md (`POST /api/queues/{vhost}/{queue}/get` and `/move`).
"""

from __future__ import annotations

import pika

from api import call, get, ok
from common.broker import per_test_broker


def pika_channel(broker):
    connection = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=broker.amqp_port))
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def ready(broker, queue) -> int:
    return ok(get(broker, f"/api/queues/%2F/{queue}"))["messages_ready"]


def test_get_requeues_acknowledges_or_rejects_to_the_dead_letter_queue(broker, name):
    work, dead = f"{name}-work", f"{name}-dlq"
    ok(call(broker, "PUT", f"/api/queues/%2F/{dead}", {"durable": True}), 201)
    ok(call(broker, "PUT", f"/api/queues/%2F/{work}", {"durable": True, "arguments": {
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}}), 201)
    connection, channel = pika_channel(broker)
    for body in (b"m1", b"m2", b"m3"):
        channel.basic_publish("", work, body, pika.BasicProperties(delivery_mode=2))

    requeued = ok(call(broker, "POST", f"/api/queues/%2F/{work}/get", {"count": 2, "ackmode": "reject_requeue_true"}))
    assert [m["payload"] for m in requeued["messages"]] == ["m1", "m2"]
    assert ready(broker, work) == 3
    again = ok(call(broker, "POST", f"/api/queues/%2F/{work}/get", {"count": 1, "ackmode": "ack_requeue_true"}))
    assert again["messages"][0]["redelivered"] is True and ready(broker, work) == 3

    acked = ok(call(broker, "POST", f"/api/queues/%2F/{work}/get", {"count": 1, "ackmode": "ack_requeue_false"}))
    assert [m["payload"] for m in acked["messages"]] == ["m1"]
    assert (ready(broker, work), ready(broker, dead)) == (2, 0)

    rejected = ok(call(broker, "POST", f"/api/queues/%2F/{work}/get", {"count": 1, "ackmode": "reject_requeue_false"}))
    assert [m["payload"] for m in rejected["messages"]] == ["m2"]
    assert (ready(broker, work), ready(broker, dead)) == (1, 1)
    method, properties, body = channel.basic_get(dead, auto_ack=True)
    assert body == b"m2" and properties.headers["x-death"][0]["reason"] == "rejected"

    both = call(broker, "POST", f"/api/queues/%2F/{work}/get", {"count": 1, "ack": True, "ackmode": "ack_requeue_false"})
    assert both.status == 400 and both.error["field"] == "ackmode"
    unknown = call(broker, "POST", f"/api/queues/%2F/{work}/get", {"count": 1, "ackmode": "keep"})
    assert unknown.status == 400
    connection.close()


def test_move_takes_messages_from_a_dead_letter_queue_back_to_its_work_queue(broker, name):
    work, dead = f"{name}-work", f"{name}-dlq"
    ok(call(broker, "PUT", f"/api/queues/%2F/{work}", {"durable": True}), 201)
    ok(call(broker, "PUT", f"/api/queues/%2F/{dead}", {"durable": True}), 201)
    connection, channel = pika_channel(broker)
    for i in range(5):
        channel.basic_publish("", dead, f"d{i}".encode(), pika.BasicProperties(
            delivery_mode=2 if i % 2 == 0 else 1, headers={"n": i}, content_type="text/plain"))

    moved = ok(call(broker, "POST", f"/api/queues/%2F/{dead}/move", {"destination": work, "count": 3}))
    assert moved == {"moved": 3, "source_messages_ready": 2}
    assert (ready(broker, dead), ready(broker, work)) == (2, 3)
    assert ok(get(broker, f"/api/queues/%2F/{dead}"))["messages_unacknowledged"] == 0
    for i in range(3):
        method, properties, body = channel.basic_get(work, auto_ack=True)
        assert body == f"d{i}".encode()
        assert properties.headers == {"n": i} and properties.content_type == "text/plain"
        assert properties.delivery_mode == (2 if i % 2 == 0 else 1), "persistence is kept"
        assert method.routing_key == work

    # Without a count, everything ready moves.
    assert ok(call(broker, "POST", f"/api/queues/%2F/{dead}/move", {"destination": work}))["moved"] == 2
    assert (ready(broker, dead), ready(broker, work)) == (0, 2)
    assert ok(call(broker, "POST", f"/api/queues/%2F/{dead}/move", {"destination": work}))["moved"] == 0

    missing = call(broker, "POST", f"/api/queues/%2F/{work}/move", {"destination": f"{name}-nowhere"})
    assert missing.status == 400 and missing.error["field"] == "destination"
    itself = call(broker, "POST", f"/api/queues/%2F/{work}/move", {"destination": work})
    assert itself.status == 400 and itself.error["field"] == "destination"
    zero = call(broker, "POST", f"/api/queues/%2F/{work}/move", {"destination": dead, "count": 0})
    assert zero.status == 400 and zero.error["field"] == "count"
    assert call(broker, "POST", f"/api/queues/%2F/{name}-absent/move", {"destination": work}).status == 404
    assert ready(broker, work) == 2
    connection.close()


def test_moved_persistent_messages_survive_a_restart(tmp_path, request, name):
    with per_test_broker(tmp_path, request) as broker:
        work, dead = f"{name}-work", f"{name}-dlq"
        ok(call(broker, "PUT", f"/api/queues/%2F/{work}", {"durable": True}), 201)
        ok(call(broker, "PUT", f"/api/queues/%2F/{dead}", {"durable": True}), 201)
        connection, channel = pika_channel(broker)
        for i in range(250):
            channel.basic_publish("", dead, f"p{i}".encode(), pika.BasicProperties(delivery_mode=2))
        connection.close()
        assert ok(call(broker, "POST", f"/api/queues/%2F/{dead}/move", {"destination": work}))["moved"] == 250
        broker.stop()
        broker.start()
        assert (ready(broker, dead), ready(broker, work)) == (0, 250)
        peeked = ok(get(broker, f"/api/queues/%2F/{work}/messages?count=1000"))["messages"]
        assert [m["payload"] for m in peeked] == [f"p{i}" for i in range(250)]
