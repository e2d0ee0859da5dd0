"""A broker restart keeps everything acknowledged.

Contract: after records are acknowledged with acks=all and offsets are
committed, SIGTERM stops the broker cleanly (exit code 0, no SIGKILL); a
broker started again on the same data dir and port serves the same topics
(partition counts and configs), every record in order, the committed
offsets with their metadata, and appends after the last offset.
"""

from __future__ import annotations

from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import ConfigResource

from support import (
    CLIENT_TIMEOUT_S,
    assert_all_delivered,
    confluent_admin,
    confluent_consumer,
    confluent_producer,
    consume_confluent,
    create_topic_confluent,
    produce_all,
)

RECORDS = 500


def restart(broker):
    code = broker.stop()
    assert not broker.last_stop_needed_kill, "broker ignored SIGTERM and was killed"
    assert code == 0, f"broker exited with code {code} on SIGTERM"
    broker.start()


def read_all(broker, topic, partitions, count):
    consumer = confluent_consumer(broker)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        messages = consume_confluent(consumer, count, settle=1.0)
    finally:
        consumer.close()
    per_partition = defaultdict(list)
    for m in messages:
        per_partition[m.partition()].append((m.offset(), m.key(), m.value()))
    return dict(per_partition)


def test_records_topics_and_offsets_survive_a_restart(fresh_broker, topic, group):
    broker = fresh_broker
    create_topic_confluent(broker, topic, partitions=2, config={"retention.ms": "7200000"})
    producer = confluent_producer(broker, **{"acks": "all", "linger.ms": 5})
    records = [
        {"topic": topic, "key": f"key-{i % 10}".encode(), "value": f"value-{i}".encode()} for i in range(RECORDS)
    ]
    reports = produce_all(producer, records)
    assert_all_delivered(reports)
    del producer
    expected = defaultdict(list)
    for _, msg in sorted(reports, key=lambda r: (r[1].partition(), r[1].offset())):
        expected[msg.partition()].append((msg.offset(), msg.key(), msg.value()))
    expected = dict(expected)

    committer = confluent_consumer(broker, group=group)
    try:
        committer.commit(
            offsets=[TopicPartition(topic, 0, 17, metadata="before restart"), TopicPartition(topic, 1, 3)],
            asynchronous=False,
        )
    finally:
        committer.close()

    restart(broker)

    assert read_all(broker, topic, 2, RECORDS) == expected

    checker = confluent_consumer(broker, group=group)
    try:
        got = checker.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)
    finally:
        checker.close()
    assert [(tp.partition, tp.offset) for tp in got] == [(0, 17), (1, 3)]
    assert got[0].metadata == "before restart"

    admin = confluent_admin(broker)
    assert len(admin.list_topics(timeout=10).topics[topic].partitions) == 2
    [future] = admin.describe_configs([ConfigResource("topic", topic)]).values()
    assert future.result(timeout=CLIENT_TIMEOUT_S)["retention.ms"].value == "7200000"

    # New records continue after the old ones.
    producer = confluent_producer(broker)
    [(err, msg)] = produce_all(producer, [{"topic": topic, "partition": 0, "value": b"after restart"}])
    assert err is None
    assert msg.offset() == len(expected.get(0, []))


def test_a_producer_reconnects_across_a_restart(fresh_broker, topic):
    broker = fresh_broker
    producer = confluent_producer(broker, **{"acks": "all", "message.timeout.ms": 30000})
    assert_all_delivered(produce_all(producer, [{"topic": topic, "value": f"before-{i}".encode()} for i in range(10)]))
    restart(broker)
    assert_all_delivered(produce_all(producer, [{"topic": topic, "value": f"after-{i}".encode()} for i in range(10)], timeout=40))
    got = read_all(broker, topic, 1, 20)
    assert [value for _, _, value in got[0]] == [f"before-{i}".encode() for i in range(10)] + [
        f"after-{i}".encode() for i in range(10)
    ]
