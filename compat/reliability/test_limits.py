"""Limits (`[limits]`): connections in total and per IP address, topics
and queues. A connection over a cap is closed at once with a log line and
every connection already open carries on; a topic or queue over its cap is
refused with the protocol's error (POLICY_VIOLATION, 406) and nothing else
changes. Frame and request sizes and channels per connection are covered by
compat/kafka and compat/amqp."""

from __future__ import annotations

import time
import urllib.request

import pika
import pika.exceptions
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from support import (
    CLIENT_TIMEOUT_S,
    closed_by_peer,
    confluent_config,
    connect_raw,
    pika_connection,
    wait_connections,
)


def amqp_works(broker) -> bool:
    connection = pika_connection(broker)
    try:
        channel = connection.channel()
        channel.queue_declare("", exclusive=True)
        return True
    finally:
        connection.close()


def test_connections_over_the_total_cap_are_closed_and_a_freed_slot_is_reused(own_broker):
    with own_broker({"limits.max_connections": "4"}) as broker:
        wait_connections(broker, 0)  # the start-up probes are gone
        held = [connect_raw(broker.kafka_port) for _ in range(2)]
        held += [connect_raw(broker.amqp_port) for _ in range(2)]
        wait_connections(broker, 4)
        over_kafka = connect_raw(broker.kafka_port)
        over_amqp = connect_raw(broker.amqp_port)
        assert closed_by_peer(over_kafka), "a fifth Kafka connection stays open"
        assert closed_by_peer(over_amqp), "a fifth AMQP connection stays open"
        # The four under the cap were not touched.
        for sock in held:
            assert not closed_by_peer(sock, timeout=0.2)
        log = broker.log_text(tail_lines=None)
        assert "connection limit (4) reached (limits.max_connections)" in log
        with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert "\nsluice_connections_refused_total 2\n" in metrics, metrics
        # A closed connection frees its slot for a real client.
        held.pop().close()
        held.pop().close()
        wait_connections(broker, 2)
        assert amqp_works(broker)
        for sock in held + [over_kafka, over_amqp]:
            sock.close()


def test_the_per_ip_cap_counts_each_address_apart(own_broker):
    with own_broker({"limits.max_connections_per_ip": "3"}) as broker:
        wait_connections(broker, 0)
        held = [connect_raw(broker.kafka_port, source="127.0.0.1") for _ in range(3)]
        wait_connections(broker, 3)
        refused = connect_raw(broker.amqp_port, source="127.0.0.1")
        assert closed_by_peer(refused), "a fourth connection from 127.0.0.1 stays open"
        # Another address of the loopback net has its own allowance.
        others = [connect_raw(broker.kafka_port, source="127.0.0.2") for _ in range(3)]
        for sock in others:
            assert not closed_by_peer(sock, timeout=0.2)
        assert "reached by 127.0.0.1 (limits.max_connections_per_ip)" in broker.log_text(tail_lines=None)
        for sock in held + others + [refused]:
            sock.close()
        wait_connections(broker, 0)
        assert amqp_works(broker)


def test_a_topic_over_the_cap_is_a_policy_violation(own_broker, name):
    with own_broker({"limits.max_topics": "3"}) as broker:
        admin = AdminClient(confluent_config(broker))
        first = [f"{name}-{i}" for i in range(3)]
        for future in admin.create_topics([NewTopic(t, 1) for t in first]).values():
            future.result(timeout=CLIENT_TIMEOUT_S)
        with pytest.raises(Exception) as refused:
            admin.create_topics([NewTopic(f"{name}-over", 1)])[f"{name}-over"].result(timeout=CLIENT_TIMEOUT_S)
        error = refused.value.args[0]
        assert error.code() == KafkaError.POLICY_VIOLATION, error
        assert "topic limit (3) reached" in error.str()
        # Producing to an unknown topic cannot auto-create it either...
        producer = Producer(confluent_config(broker, **{"message.timeout.ms": 3000}))
        reports = []
        producer.produce(f"{name}-auto", b"x", on_delivery=lambda err, msg: reports.append(err))
        producer.flush(10)
        assert reports and reports[0] is not None, "a record reached a topic over the cap"
        # ...while the topics under the cap take records.
        producer.produce(first[0], b"fits", on_delivery=lambda err, msg: reports.append(err))
        producer.flush(10)
        assert reports[-1] is None, reports[-1]
        # Deleting one frees a slot.
        admin.delete_topics([first[1]])[first[1]].result(timeout=CLIENT_TIMEOUT_S)
        admin.create_topics([NewTopic(f"{name}-after", 1)])[f"{name}-after"].result(timeout=CLIENT_TIMEOUT_S)


def test_a_queue_over_the_cap_is_refused_406_and_redeclaring_still_works(own_broker, name):
    with own_broker({"limits.max_queues": "3"}) as broker:
        connection = pika_connection(broker)
        channel = connection.channel()
        for i in range(3):
            channel.queue_declare(f"{name}-{i}", durable=i == 0)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare(f"{name}-over")
        assert refused.value.reply_code == 406
        assert "queue limit in vhost '/' (3) is reached" in refused.value.reply_text
        channel = connection.channel()
        # An existing queue is no new queue; a stream counts as one.
        channel.queue_declare(f"{name}-0", durable=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as stream:
            channel.queue_declare(f"{name}-stream", durable=True, arguments={"x-queue-type": "stream"})
        assert stream.value.reply_code == 406
        channel = connection.channel()
        channel.queue_delete(f"{name}-1")
        channel.queue_declare(f"{name}-after")
        connection.close()
