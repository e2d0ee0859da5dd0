"""max.message.bytes is enforced per topic.

Contract: on a topic with max.message.bytes=1000, a record batch larger than
that is refused with MESSAGE_TOO_LARGE (librdkafka: MSG_SIZE_TOO_LARGE,
kafka-python: MessageSizeTooLargeError) and stored nowhere, while small
batches succeed; the limit applies to the batch as sent, so a compressed
batch under the limit is accepted even when its records are larger.
"""

from __future__ import annotations

import os

import pytest
from confluent_kafka import KafkaError, TopicPartition
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from support import (
    CLIENT_TIMEOUT_S,
    assert_all_delivered,
    confluent_consumer,
    confluent_producer,
    consume_confluent,
    create_topic_confluent,
    produce_all,
)

LIMIT = 1000


@pytest.fixture
def limited_topic(broker, topic):
    create_topic_confluent(broker, topic, partitions=1, config={"max.message.bytes": str(LIMIT)})
    return topic


def watermarks(broker, topic):
    consumer = confluent_consumer(broker)
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()


def test_librdkafka_large_message_is_rejected_small_ones_succeed(broker, limited_topic):
    producer = confluent_producer(broker, **{"linger.ms": 0, "compression.type": "none"})
    # Incompressible, so no codec could bring it under the limit.
    [(err, _)] = produce_all(producer, [{"topic": limited_topic, "value": os.urandom(5 * 1024)}])
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err

    small = [f"small-{i}".encode() * 10 for i in range(5)]
    for value in small:
        # One produce and flush each, so no small record shares a batch.
        assert_all_delivered(produce_all(producer, [{"topic": limited_topic, "value": value}]))
    assert watermarks(broker, limited_topic) == (0, len(small)), "the refused batch was stored"

    consumer = confluent_consumer(broker)
    try:
        consumer.assign([TopicPartition(limited_topic, 0, 0)])
        received = consume_confluent(consumer, len(small), settle=0.5)
    finally:
        consumer.close()
    assert [m.value() for m in received] == small


def test_kafka_python_large_message_raises_message_size_too_large(broker, limited_topic):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", request_timeout_ms=20000)
    try:
        with pytest.raises(MessageSizeTooLargeError):
            producer.send(limited_topic, os.urandom(5 * 1024)).get(timeout=CLIENT_TIMEOUT_S)
        metadata = producer.send(limited_topic, b"fits").get(timeout=CLIENT_TIMEOUT_S)
        assert metadata.offset == 0
    finally:
        producer.close(timeout=10)
    assert watermarks(broker, limited_topic) == (0, 1)


def test_limit_applies_to_the_compressed_batch(broker, limited_topic):
    producer = confluent_producer(broker, **{"linger.ms": 0, "compression.type": "gzip"})
    value = b"a" * (5 * 1024)  # gzip makes this a few dozen bytes
    assert_all_delivered(produce_all(producer, [{"topic": limited_topic, "value": value}]))
    consumer = confluent_consumer(broker)
    try:
        consumer.assign([TopicPartition(limited_topic, 0, 0)])
        [message] = consume_confluent(consumer, 1)
    finally:
        consumer.close()
    assert message.value() == value
