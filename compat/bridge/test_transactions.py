"""Kafka transactions seen from AMQP: a topic's readers on the AMQP side
read what is committed, as a read_committed Kafka consumer does.

Contract: records of an aborted transaction never reach a queue through
forwarding (`sluice.forward.exchange`) nor an AMQP consumer of the topic
as a stream; records of an open transaction reach neither until it
commits, and then all of them do, in order.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer

from support import (
    CLIENT_TIMEOUT_S,
    consume_stream,
    create_topic,
    declare_stream,
    get_all,
    kafka_config,
    message_count,
    wait_for_count,
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
