"""Kafka transactions seen from AMQP: a topic's readers on the AMQP side
read what is committed, as a read_committed Kafka consumer does.

Contract: records of an aborted transaction never reach a queue through
forwarding (`sluice.forward.exchange`) nor an AMQP consumer of the topic
as a stream; records of an open transaction reach neither until it
commits, and then all of them do, in order. The other way, an AMQP
transaction (`tx.select`, `tx.commit`) that routes into streams is one
Kafka transaction: its records and a commit marker per partition.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer, TopicPartition

from support import (
    CLIENT_TIMEOUT_S,
    consume_stream,
    consumer,
    create_topic,
    declare_stream,
    get_all,
    kafka_config,
    message_count,
    poll_messages,
    wait_for_count,
    watermarks,
)


def test_forwarding_and_stream_consumers_read_only_committed_records(broker, conn, ch, name):
    exchange, topic, queue = f"{name}-x", f"{name}-t", f"{name}-q"
    ch.exchange_declare(exchange, "fanout", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, exchange)
    create_topic(broker, topic, config={"sluice.forward.exchange": exchange,
                                        "sluice.forward.start": "earliest"})
    producer = Producer(kafka_config(broker, **{"transactional.id": f"{name}-txn"}))
    producer.init_transactions(CLIENT_TIMEOUT_S)

    producer.begin_transaction()
    producer.produce(topic, b"aborted-0")
    producer.produce(topic, b"aborted-1")
    producer.flush(CLIENT_TIMEOUT_S)
    producer.abort_transaction(CLIENT_TIMEOUT_S)

    producer.begin_transaction()
    producer.produce(topic, b"committed-0")
    producer.produce(topic, b"committed-1")
    producer.flush(CLIENT_TIMEOUT_S)
    # Open: nothing of it is forwarded yet.
    time.sleep(1.0)
    assert message_count(ch, queue) == 0
    producer.commit_transaction(CLIENT_TIMEOUT_S)

    assert wait_for_count(ch, queue, 2) == 2
    time.sleep(0.5)
    assert [body for _, _, body in get_all(ch, queue)] == [b"committed-0", b"committed-1"]

    declare_stream(ch, topic)
    got = consume_stream(conn, ch, topic, 2, offset="first", settle=1.0)
    assert [body for _, _, body in got] == [b"committed-0", b"committed-1"]


def committed_values(broker, topic: str, count: int) -> list[bytes]:
    """The values of partition 0 of `topic` a read_committed consumer
    reads from the start (up to `count`, then a moment more)."""
    reader = consumer(broker, **{"isolation.level": "read_committed"})
    try:
        reader.assign([TopicPartition(topic, 0, 0)])
        return [m.value() for m in poll_messages(reader, count, settle=0.5)]
    finally:
        reader.close()


def test_an_amqp_transaction_into_streams_is_one_kafka_transaction(broker, conn, ch, name):
    exchange, first, second = f"{name}-x", f"{name}-a", f"{name}-b"
    ch.exchange_declare(exchange, "direct", durable=True)
    declare_stream(ch, first)
    declare_stream(ch, second)
    ch.queue_bind(first, exchange, "a")
    ch.queue_bind(second, exchange, "b")
    ch.tx_select()
    ch.basic_publish(exchange, "a", b"rolled-back")
    ch.tx_rollback()
    assert watermarks(broker, first) == {0: 0}
    for i in range(3):
        ch.basic_publish(exchange, "a", f"a-{i}".encode())
    ch.basic_publish(exchange, "b", b"b-0")
    ch.tx_commit()
    # Each partition holds the records and the transaction's commit marker
    # (which takes an offset, as in Kafka).
    assert watermarks(broker, first) == {0: 4}
    assert watermarks(broker, second) == {0: 2}
    assert committed_values(broker, first, 3) == [b"a-0", b"a-1", b"a-2"]
    assert committed_values(broker, second, 1) == [b"b-0"]
    # The next commit is the next transaction of the same channel.
    ch.basic_publish(exchange, "a", b"a-3")
    ch.tx_commit()
    assert watermarks(broker, first) == {0: 6}
    assert committed_values(broker, first, 4) == [b"a-0", b"a-1", b"a-2", b"a-3"]
