"""LogAppendTime topics and kafka-python's group admin.

Contract: a topic with message.timestamp.type=LogAppendTime stamps every
record with the broker's time at append, whatever the producer sent, and
consumers see the LogAppendTime type; kafka-python's KafkaAdminClient lists,
describes and deletes consumer groups and reads their committed offsets.
"""

from __future__ import annotations

import time

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, TopicPartition
from kafka import KafkaAdminClient, KafkaConsumer

from support import (
    CLIENT_TIMEOUT_S,
    assert_all_delivered,
    confluent_consumer,
    confluent_producer,
    create_topic_confluent,
    produce_all,
    wait_until,
)


def test_log_append_time_replaces_the_producers_timestamp(broker, topic):
    create_topic_confluent(broker, topic, config={"message.timestamp.type": "LogAppendTime"})
    long_ago = 1_000_000_000_000  # 2001
    before = int(time.time() * 1000)
    producer = confluent_producer(broker)
    reports = produce_all(
        producer, [{"topic": topic, "value": f"v{i}".encode(), "timestamp": long_ago} for i in range(5)]
    )
    assert_all_delivered(reports)
    after = int(time.time() * 1000)
    consumer = confluent_consumer(broker)
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        seen = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(seen) < 5 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen.append(message.timestamp())
    finally:
        consumer.close()
    assert len(seen) == 5
    for kind, stamp in seen:
        assert kind == TIMESTAMP_LOG_APPEND_TIME
        assert before - 1000 <= stamp <= after + 1000, (stamp, before, after)


def test_kafka_python_admin_lists_describes_and_deletes_groups(broker, topic, group):
    create_topic_confluent(broker, topic, partitions=2)
    producer = confluent_producer(broker)
    assert_all_delivered(produce_all(producer, [{"topic": topic, "partition": p, "value": b"x"} for p in (0, 1)]))

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=20000)
    try:
        records = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(records) < 2 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        assert len(records) == 2
        consumer.commit()

        listed = admin.list_consumer_groups()
        assert any(entry[0] == group for entry in listed), listed
        [description] = admin.describe_consumer_groups([group])
        assert description.state == "Stable"
        assert len(description.members) == 1
        offsets = admin.list_consumer_group_offsets(group)
        assert {tp.partition: meta.offset for tp, meta in offsets.items()} == {0: 1, 1: 1}
    finally:
        consumer.close()

    # Once the member has left, the group can be deleted with its offsets.
    wait_until(
        lambda: admin.describe_consumer_groups([group])[0].state == "Empty",
        timeout=CLIENT_TIMEOUT_S,
        what="the group to empty",
    )
    results = admin.delete_consumer_groups([group])
    assert [(name, error.errno) for name, error in results] == [(group, 0)], results
    assert admin.list_consumer_group_offsets(group) == {}
    admin.close()
