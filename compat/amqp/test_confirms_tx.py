"""Publisher confirms, mandatory returns and transactions, as RabbitMQ
implements them: confirm.select makes pika's publishes synchronous and
surfaces returns (UnroutableError) and nacks (NackError); without confirms
an unroutable mandatory message comes back as basic.return 312 NO_ROUTE;
tx.commit applies a channel's publishes and acks, tx.rollback discards
them.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from support import (
    NO_ROUTE,
    PRECONDITION_FAILED,
    bodies,
    channel_error,
    get_all,
    message_count,
    pump,
)


def test_confirms_ack_every_publish(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", queue, f"m-{i}".encode())
    # Unroutable but not mandatory: still confirmed.
    ch.basic_publish("", f"{name}-nowhere", b"dropped")
    assert message_count(ch, queue) == 200


def test_confirm_ok_delivery_tags_count_up(conn, name):
    """Through pika's asynchronous channel: one ack per publish, tags 1..N
    (possibly coalesced with multiple=True), never a nack."""
    ch = conn.channel()
    queue = f"{name}-q"
    ch.queue_declare(queue)
    impl = ch._impl  # the asynchronous channel under the blocking one
    acked, nacked = set(), []

    def on_confirm(frame):
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            nacked.append(method.delivery_tag)
            return
        tag = method.delivery_tag
        if method.multiple:
            acked.update(t for t in range(1, tag + 1))
        else:
            assert tag not in acked, f"delivery tag {tag} acked twice"
            acked.add(tag)

    selected = []
    impl.confirm_delivery(on_confirm, callback=lambda frame: selected.append(frame))
    pump(conn, lambda: selected, what="confirm.select-ok")
    for i in range(50):
        impl.basic_publish("", queue, f"m-{i}".encode())
    pump(conn, lambda: len(acked) >= 50, what="50 publisher acks")
    assert acked == set(range(1, 51))
    assert nacked == []


def test_mandatory_unroutable_with_confirms_raises_unroutable(conn, ch, name):
    queue = f"{name}-q"
    ch.queue_declare(queue)
    ch.confirm_delivery()
    ch.basic_publish("", queue, b"routable", mandatory=True)
    with pytest.raises(pika.exceptions.UnroutableError) as raised:
        ch.basic_publish("", f"{name}-nowhere", b"unroutable", mandatory=True)
    returned = raised.value.messages
    assert len(returned) == 1
    assert returned[0].method.reply_code == NO_ROUTE
    assert returned[0].method.routing_key == f"{name}-nowhere"
    assert returned[0].body == b"unroutable"
    assert bodies(ch, queue) == [b"routable"]


def test_mandatory_return_without_confirms(conn, ch, name):
    returns = []
    ch.add_on_return_callback(lambda c, method, props, body: returns.append((method, props, body)))
    exchange = f"{name}-x"
    ch.exchange_declare(exchange, "direct")
    ch.basic_publish(exchange, "unbound", b"come back", pika.BasicProperties(message_id="r1"), mandatory=True)
    pump(conn, lambda: returns, what="basic.return")
    method, props, body = returns[0]
    assert method.reply_code == NO_ROUTE
    assert method.reply_text == "NO_ROUTE"
    assert (method.exchange, method.routing_key) == (exchange, "unbound")
    assert body == b"come back" and props.message_id == "r1"


def test_tx_commit_and_rollback_of_publishes(broker, conn, name):
    queue = f"{name}-q"
    observer = conn.channel()
    observer.queue_declare(queue)
    tx = conn.channel()
    tx.tx_select()
    tx.basic_publish("", queue, b"rolled back 1")
    tx.basic_publish("", queue, b"rolled back 2")
    assert message_count(observer, queue) == 0, "uncommitted publishes are invisible"
    tx.tx_rollback()
    tx.basic_publish("", queue, b"committed")
    assert message_count(observer, queue) == 0
    tx.tx_commit()
    assert bodies(observer, queue) == [b"committed"]
    # The channel stays transactional: the next batch also waits for commit.
    tx.basic_publish("", queue, b"second batch")
    assert message_count(observer, queue) == 0
    tx.tx_commit()
    assert bodies(observer, queue) == [b"second batch"]


def test_tx_rollback_does_not_apply_acks(conn, name):
    queue = f"{name}-q"
    setup = conn.channel()
    setup.queue_declare(queue)
    setup.confirm_delivery()
    setup.basic_publish("", queue, b"m-0")
    setup.basic_publish("", queue, b"m-1")

    tx = conn.channel()
    tx.tx_select()
    first, _, _ = tx.basic_get(queue)
    second, _, _ = tx.basic_get(queue)
    tx.basic_ack(first.delivery_tag)
    tx.tx_rollback()  # the ack is discarded; m-0 stays unacked
    tx.basic_ack(second.delivery_tag)
    tx.tx_commit()  # m-1 is acked
    tx.close()  # m-0, still unacked, goes back to the queue
    back = get_all(setup, queue)
    assert [body for _, _, body in back] == [b"m-0"]
    assert back[0][0].redelivered is True


def test_tx_commit_applies_acks(conn, name):
    queue = f"{name}-q"
    setup = conn.channel()
    setup.queue_declare(queue)
    setup.confirm_delivery()
    setup.basic_publish("", queue, b"m-0")
    tx = conn.channel()
    tx.tx_select()
    method, _, _ = tx.basic_get(queue)
    tx.basic_ack(method.delivery_tag)
    tx.tx_commit()
    tx.close()
    assert message_count(setup, queue) == 0


def test_tx_commit_without_select_is_refused_406(conn):
    with channel_error(PRECONDITION_FAILED):
        conn.channel().tx_commit()
    with channel_error(PRECONDITION_FAILED):
        conn.channel().tx_rollback()


def test_confirm_select_on_a_transactional_channel_is_refused_406(conn):
    ch = conn.channel()
    ch.tx_select()
    with channel_error(PRECONDITION_FAILED):
        ch.confirm_delivery()


def test_tx_select_on_a_confirm_channel_is_refused_406(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    with channel_error(PRECONDITION_FAILED):
        ch.tx_select()
