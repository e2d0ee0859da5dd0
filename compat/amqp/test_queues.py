"""Queue lifecycle and queue.* / basic.get replies: message counts in
get-ok, declare-ok and purge-ok, conditional deletes, passive declares,
equivalence checks on redeclare, exclusivity, reserved names, server-named
queues, auto-delete and exclusive cleanup, and consumer cancel
notification — with RabbitMQ's reply codes.
"""

from __future__ import annotations

import pika
import pytest

from support import (
    ACCESS_REFUSED,
    CLIENT_TIMEOUT_S,
    NOT_FOUND,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
    bodies,
    channel_error,
    close_quietly,
    connect,
    pump,
    queue_exists,
    wait_until,
)


def publish(ch, queue: str, count: int):
    ch.confirm_delivery()
    for i in range(count):
        ch.basic_publish("", queue, f"m-{i}".encode())


def test_get_empty_and_message_count_in_get_ok(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    assert ch.basic_get(queue, auto_ack=True) == (None, None, None)
    publish(ch, queue, 3)
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"m-0"
    assert method.message_count == 2, "get-ok counts the messages left after this one"
    method, _, _ = ch.basic_get(queue, auto_ack=True)
    assert method.message_count == 1


def test_declare_ok_counts_messages_and_consumers(conn, ch, name):
    queue = f"{name}-q"
    declared = ch.queue_declare(queue).method
    assert (declared.queue, declared.message_count, declared.consumer_count) == (queue, 0, 0)
    publish(ch, queue, 4)
    again = ch.queue_declare(queue).method
    assert (again.message_count, again.consumer_count) == (4, 0)
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=1)
    delivered = []
    consumer.basic_consume(queue, lambda *a: delivered.append(a))
    pump(conn, lambda: delivered, what="one delivery")
    passive = ch.queue_declare(queue, passive=True).method
    # One message is out to the consumer (unacked): not counted as ready.
    assert passive.consumer_count == 1
    assert passive.message_count == 3


def test_purge_returns_the_count(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish(ch, queue, 5)
    assert ch.queue_purge(queue).method.message_count == 5
    assert ch.queue_purge(queue).method.message_count == 0
    assert ch.basic_get(queue) == (None, None, None)


def test_delete_returns_the_count(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish(ch, queue, 2)
    assert ch.queue_delete(queue).method.message_count == 2
    assert not queue_exists(conn, queue)


def test_delete_if_empty_refuses_a_non_empty_queue_406(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish(ch, queue, 1)
    with channel_error(PRECONDITION_FAILED):
        ch.queue_delete(queue, if_empty=True)
    assert queue_exists(conn, queue)
    other = conn.channel()
    other.queue_purge(queue)
    other.queue_delete(queue, if_empty=True)
    assert not queue_exists(conn, queue)


def test_delete_if_unused_refuses_a_queue_with_consumers_406(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    consumer = conn.channel()
    tag = consumer.basic_consume(queue, lambda *a: None)
    with channel_error(PRECONDITION_FAILED):
        ch.queue_delete(queue, if_unused=True)
    assert queue_exists(conn, queue)
    consumer.basic_cancel(tag)
    conn.channel().queue_delete(queue, if_unused=True)
    assert not queue_exists(conn, queue)


def test_passive_declare_of_missing_queue_and_exchange_404(conn, name):
    with channel_error(NOT_FOUND):
        conn.channel().queue_declare(f"{name}-missing", passive=True)
    with channel_error(NOT_FOUND):
        conn.channel().exchange_declare(f"{name}-missing", passive=True)


def test_redeclare_with_different_properties_406(conn, name):
    queue = f"{name}-q"
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    ch.queue_declare(queue, durable=True)  # identical: fine
    with channel_error(PRECONDITION_FAILED):
        ch.queue_declare(queue, durable=False)

    ttl = f"{name}-ttl"
    ch = conn.channel()
    ch.queue_declare(ttl, arguments={"x-message-ttl": 1000})
    with channel_error(PRECONDITION_FAILED):
        ch.queue_declare(ttl, arguments={"x-message-ttl": 2000})
    ch = conn.channel()
    with channel_error(PRECONDITION_FAILED):
        ch.queue_declare(ttl)  # missing argument is different too

    exchange = f"{name}-x"
    ch = conn.channel()
    ch.exchange_declare(exchange, "direct")
    with channel_error(PRECONDITION_FAILED):
        ch.exchange_declare(exchange, "topic")
    ch = conn.channel()
    with channel_error(PRECONDITION_FAILED):
        ch.exchange_declare(exchange, "direct", durable=True)
    cleanup = conn.channel()
    cleanup.queue_delete(queue)
    cleanup.exchange_delete(exchange)


def test_exclusive_queue_is_locked_to_its_connection_405(broker, conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, exclusive=True)
    publish(ch, queue, 1)
    other = connect(broker)
    try:
        with channel_error(RESOURCE_LOCKED):
            other.channel().basic_consume(queue, lambda *a: None)
        with channel_error(RESOURCE_LOCKED):
            other.channel().basic_get(queue)
        with channel_error(RESOURCE_LOCKED):
            other.channel().queue_declare(queue, exclusive=True)
        with channel_error(RESOURCE_LOCKED):
            other.channel().queue_declare(queue, passive=True)
        with channel_error(RESOURCE_LOCKED):
            other.channel().queue_delete(queue)
    finally:
        close_quietly(other)
    # Still usable by its owner.
    assert ch.basic_get(queue, auto_ack=True)[2] == b"m-0"


def test_amq_prefixed_names_are_reserved_403(conn, name):
    with channel_error(ACCESS_REFUSED):
        conn.channel().queue_declare(f"amq.{name}")
    with channel_error(ACCESS_REFUSED):
        conn.channel().exchange_declare(f"amq.{name}", "direct")


def test_server_named_queues(conn, ch):
    first = ch.queue_declare("", exclusive=True).method.queue
    second = ch.queue_declare("", exclusive=True).method.queue
    assert first.startswith("amq.gen-") and second.startswith("amq.gen-")
    assert first != second
    ch.confirm_delivery()
    ch.basic_publish("", first, b"to a server-named queue")
    assert ch.basic_get(first, auto_ack=True)[2] == b"to a server-named queue"


def test_auto_delete_queue_goes_when_last_consumer_cancels(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, auto_delete=True)
    one = conn.channel()
    two = conn.channel()
    tag1 = one.basic_consume(queue, lambda *a: None)
    tag2 = two.basic_consume(queue, lambda *a: None)
    one.basic_cancel(tag1)
    assert queue_exists(conn, queue), "deleted while a consumer remains"
    two.basic_cancel(tag2)
    wait_until(lambda: not queue_exists(conn, queue), CLIENT_TIMEOUT_S, what=f"auto-delete of {queue}")


def test_auto_delete_queue_without_consumers_stays(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue, auto_delete=True)
    conn.process_data_events(time_limit=0.3)
    # RabbitMQ deletes an auto-delete queue only once it had a consumer.
    assert queue_exists(conn, queue)
    ch.queue_delete(queue)


def test_exclusive_queue_goes_with_its_connection(broker, conn, name):
    queue = f"{name}-q"
    owner = connect(broker)
    try:
        owner.channel().queue_declare(queue, exclusive=True)
        assert queue_exists(owner, queue)
    finally:
        owner.close()
    wait_until(lambda: not queue_exists(conn, queue), CLIENT_TIMEOUT_S,
               what=f"exclusive queue {queue} to go with its connection")


def test_consumer_cancel_notification_on_queue_delete(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    consumer = conn.channel()
    cancelled = []
    consumer.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = consumer.basic_consume(queue, lambda *a: None)
    conn.channel().queue_delete(queue)
    pump(conn, lambda: cancelled, what="basic.cancel from the broker")
    assert cancelled == [tag]
    # The channel survives the cancel.
    assert consumer.is_open
    consumer.queue_declare("", exclusive=True)


def test_basic_consume_on_missing_queue_404(conn, name):
    with channel_error(NOT_FOUND):
        conn.channel().basic_consume(f"{name}-missing", lambda *a: None)



def test_exclusive_consumer_locks_out_other_consumers_403(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    owner = conn.channel()
    tag = owner.basic_consume(queue, lambda *a: None, exclusive=True)
    with channel_error(ACCESS_REFUSED):
        conn.channel().basic_consume(queue, lambda *a: None)
    owner.basic_cancel(tag)
    # Free again once the exclusive consumer is gone.
    conn.channel().basic_consume(queue, lambda *a: None)


def test_exclusive_consume_refused_while_others_consume_403(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    ch.basic_consume(queue, lambda *a: None)
    with channel_error(ACCESS_REFUSED):
        conn.channel().basic_consume(queue, lambda *a: None, exclusive=True)


def test_exchange_delete_if_unused_406(conn, ch, name):
    exchange, queue = f"{name}-x", f"{name}-q"
    ch.exchange_declare(exchange, "direct")
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange, routing_key="k")
    with channel_error(PRECONDITION_FAILED):
        ch.exchange_delete(exchange, if_unused=True)
    ch = conn.channel()
    ch.queue_unbind(queue, exchange, routing_key="k")
    ch.exchange_delete(exchange, if_unused=True)
    with channel_error(NOT_FOUND):
        conn.channel().exchange_declare(exchange, passive=True)


def test_auto_delete_exchange_goes_with_its_last_binding(conn, ch, name):
    exchange = f"{name}-x"
    ch.exchange_declare(exchange, "fanout", auto_delete=True)
    q1, q2 = f"{name}-q1", f"{name}-q2"
    for queue in (q1, q2):
        ch.queue_declare(queue)
        ch.queue_bind(queue, exchange)
    ch.queue_unbind(q1, exchange)
    ch.exchange_declare(exchange, "fanout", passive=True)
    ch.queue_unbind(q2, exchange)
    with channel_error(NOT_FOUND):
        conn.channel().exchange_declare(exchange, passive=True)


def test_unbind_and_exchange_delete_remove_routes(conn, ch, name):
    exchange, queue = f"{name}-x", f"{name}-q"
    ch.exchange_declare(exchange, "direct")
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange, routing_key="a")
    ch.queue_bind(queue, exchange, routing_key="b")
    ch.confirm_delivery()
    ch.queue_unbind(queue, exchange, routing_key="a")
    ch.basic_publish(exchange, "a", b"unbound key")
    ch.basic_publish(exchange, "b", b"still bound")
    assert bodies(ch, queue) == [b"still bound"]
    # A deleted exchange takes its bindings along: redeclared, it routes nowhere.
    ch.exchange_delete(exchange)
    ch.exchange_declare(exchange, "direct")
    ch.basic_publish(exchange, "b", b"after redeclare")
    assert ch.basic_get(queue, auto_ack=True) == (None, None, None)


def test_deleting_missing_queue_or_exchange_is_not_an_error(conn, ch, name):
    assert ch.queue_delete(f"{name}-missing").method.message_count == 0
    ch.exchange_delete(f"{name}-missing")
    assert ch.is_open


@pytest.mark.parametrize(
    "arguments",
    [
        {"x-message-ttl": -1},
        {"x-message-ttl": "soon"},
        {"x-expires": 0},
        {"x-max-length": -1},
        {"x-max-length-bytes": "big"},
        {"x-overflow": "explode"},
        {"x-max-priority": 256},
        {"x-dead-letter-routing-key": "k"},  # without x-dead-letter-exchange
        {"x-single-active-consumer": "yes"},
    ],
    ids=lambda arguments: "-".join(f"{k}={v}" for k, v in arguments.items()),
)
def test_invalid_queue_arguments_are_refused_406(conn, name, arguments):
    with channel_error(PRECONDITION_FAILED):
        conn.channel().queue_declare(f"{name}-q", arguments=arguments)
    assert not queue_exists(conn, f"{name}-q")


def test_unknown_exchange_type_is_a_command_invalid_503(conn, name):
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as raised:
        conn.channel().exchange_declare(f"{name}-x", "no-such-type")
    assert raised.value.reply_code == 503


def test_bind_with_missing_queue_or_exchange_404(conn, ch, name):
    queue, exchange = f"{name}-q", f"{name}-x"
    ch.queue_declare(queue)
    ch.exchange_declare(exchange, "direct")
    with channel_error(NOT_FOUND):
        conn.channel().queue_bind(f"{name}-missing", exchange, routing_key="k")
    with channel_error(NOT_FOUND):
        conn.channel().queue_bind(queue, f"{name}-missing", routing_key="k")
    with channel_error(NOT_FOUND):
        conn.channel().exchange_bind(destination=exchange, source=f"{name}-missing")


def test_purge_leaves_unacked_messages(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    publish(ch, queue, 3)
    holder = conn.channel()
    method, _, body = holder.basic_get(queue)
    assert body == b"m-0"
    assert ch.queue_purge(queue).method.message_count == 2
    holder.close()  # the unacked one survives the purge and comes back
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"m-0" and method.redelivered
    assert ch.basic_get(queue, auto_ack=True) == (None, None, None)


def test_invalid_expiration_property_is_refused_406(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    with channel_error(PRECONDITION_FAILED):
        bad = conn.channel()
        bad.basic_publish("", queue, b"x", pika.BasicProperties(expiration="soon"))
        bad.queue_declare(queue, passive=True)
    assert ch.basic_get(queue, auto_ack=True) == (None, None, None)
