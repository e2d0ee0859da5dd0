"""Committed offsets per group, without group membership.

Contract: OffsetCommit from a consumer that has not joined the group
(generation -1, empty member id, as librdkafka and kafka-python send with
manual assignment) is stored per group and partition with its metadata;
OffsetFetch returns offset and metadata exactly as given; a later consumer
of the group starts from the committed offset; other groups see nothing;
FindCoordinator answers with this broker.
"""

from __future__ import annotations

from confluent_kafka import OFFSET_INVALID, OFFSET_STORED, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaPythonTopicPartition
from kafka.structs import OffsetAndMetadata

from support import (
    assert_all_delivered,
    confluent_consumer,
    confluent_producer,
    consume_confluent,
    create_topic_confluent,
    produce_all,
    unique_name,
)

METADATA = "checkpoint: métadonnées ✓"


def fill(broker, topic, per_partition):
    create_topic_confluent(broker, topic, partitions=len(per_partition))
    producer = confluent_producer(broker)
    records = [
        {"topic": topic, "partition": p, "value": f"p{p}-{i}".encode()}
        for p, count in enumerate(per_partition)
        for i in range(count)
    ]
    assert_all_delivered(produce_all(producer, records))


def committed(broker, group, topic, partitions):
    consumer = confluent_consumer(broker, group=group)
    try:
        result = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=15)
    finally:
        consumer.close()
    assert all(tp.error is None for tp in result), result
    return {tp.partition: (tp.offset, tp.metadata) for tp in result}


def test_commit_with_metadata_and_fetch_it_back(broker, topic, group):
    fill(broker, topic, [10, 4])
    consumer = confluent_consumer(broker, group=group)
    try:
        result = consumer.commit(
            offsets=[TopicPartition(topic, 0, 5, metadata=METADATA), TopicPartition(topic, 1, 2)],
            asynchronous=False,
        )
        assert all(tp.error is None for tp in result), result
    finally:
        consumer.close()
    got = committed(broker, group, topic, [0, 1])
    assert got[0] == (5, METADATA)
    assert got[1][0] == 2
    assert got[1][1] in (None, ""), "no metadata was given for partition 1"


def test_a_later_commit_replaces_the_earlier_one(broker, topic, group):
    fill(broker, topic, [10])
    consumer = confluent_consumer(broker, group=group)
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 3, metadata="first")], asynchronous=False)
        consumer.commit(offsets=[TopicPartition(topic, 0, 7, metadata="second")], asynchronous=False)
    finally:
        consumer.close()
    assert committed(broker, group, topic, [0]) == {0: (7, "second")}


def test_a_new_consumer_starts_at_the_committed_offset(broker, topic, group):
    fill(broker, topic, [10])
    first = confluent_consumer(broker, group=group)
    try:
        first.commit(offsets=[TopicPartition(topic, 0, 6)], asynchronous=False)
    finally:
        first.close()
    second = confluent_consumer(broker, group=group)
    try:
        second.assign([TopicPartition(topic, 0, OFFSET_STORED)])
        received = consume_confluent(second, 4, settle=0.5)
    finally:
        second.close()
    assert [(m.offset(), m.value()) for m in received] == [(i, f"p0-{i}".encode()) for i in range(6, 10)]


def test_offsets_are_kept_per_group(broker, topic, group):
    fill(broker, topic, [5])
    consumer = confluent_consumer(broker, group=group)
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
    finally:
        consumer.close()
    other = unique_name("other-group")
    assert committed(broker, other, topic, [0])[0][0] == OFFSET_INVALID
    assert committed(broker, group, topic, [0])[0][0] == 4


def test_kafka_python_commit_is_visible_to_librdkafka(broker, topic, group):
    fill(broker, topic, [10])
    tp = KafkaPythonTopicPartition(topic, 0)
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False, request_timeout_ms=30000
    )
    try:
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(8, "from kafka-python", -1)}, timeout_ms=20000)
        got = consumer.committed(tp, metadata=True, timeout_ms=20000)
        assert (got.offset, got.metadata) == (8, "from kafka-python")
    finally:
        consumer.close(autocommit=False)
    assert committed(broker, group, topic, [0]) == {0: (8, "from kafka-python")}
