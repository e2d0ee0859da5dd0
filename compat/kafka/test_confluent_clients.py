"""confluent-kafka (bundled librdkafka 2.x) Producer and Consumer.

Contract: keyed records keep their partition and order; every compression
codec and acks setting is accepted and read back unchanged; headers round
trip; a consumer reads from earliest, from latest (only new records), from a
timestamp, from the middle of a batch, and is woken by an append while its
Fetch long-polls. Consumers use manual assignment: group membership
(JoinGroup) is not part of this increment.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from support import (
    assert_all_delivered,
    consume_confluent,
    confluent_consumer,
    confluent_producer,
    create_topic_confluent,
    produce_all,
)


def consume_all_partitions(broker, topic, partitions, count, **consumer_config):
    consumer = confluent_consumer(broker, **consumer_config)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        return consume_confluent(consumer, count, settle=1.0)
    finally:
        consumer.close()


def test_keyed_messages_keep_partition_and_order(broker, topic):
    create_topic_confluent(broker, topic, partitions=3)
    producer = confluent_producer(broker, **{"linger.ms": 20})
    records = [
        {"topic": topic, "key": f"key-{i % 12}".encode(), "value": f"value-{i}".encode()}
        for i in range(300)
    ]
    reports = produce_all(producer, records)
    assert_all_delivered(reports)

    # Every key went to one partition, and together they used more than one.
    partitions_of_key = defaultdict(set)
    sent_per_partition = defaultdict(list)
    for _, msg in sorted(reports, key=lambda r: (r[1].partition(), r[1].offset())):
        partitions_of_key[msg.key()].add(msg.partition())
        sent_per_partition[msg.partition()].append((msg.offset(), msg.key(), msg.value()))
    assert all(len(p) == 1 for p in partitions_of_key.values()), partitions_of_key
    assert len(sent_per_partition) > 1, "12 keys over 3 partitions landed in only one"
    for partition, sent in sent_per_partition.items():
        assert [offset for offset, _, _ in sent] == list(range(len(sent))), (
            f"partition {partition}: offsets from delivery reports are not 0..n-1"
        )
        # The producer sends per partition in produce() order.
        expected = [(r["key"], r["value"]) for r in records if r["key"] in {k for _, k, _ in sent}]
        assert [(k, v) for _, k, v in sent] == expected

    received = consume_all_partitions(broker, topic, 3, len(records))
    assert len(received) == len(records)
    got_per_partition = defaultdict(list)
    for msg in received:
        got_per_partition[msg.partition()].append((msg.offset(), msg.key(), msg.value()))
    assert dict(got_per_partition) == dict(sent_per_partition)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_each_compression_codec_round_trips(broker, topic, codec):
    producer = confluent_producer(broker, **{"compression.type": codec, "linger.ms": 50})
    # Compressible values, many per batch.
    records = [{"topic": topic, "key": f"k{i}".encode(), "value": (f"{codec} record {i} " * 20).encode()} for i in range(200)]
    assert_all_delivered(produce_all(producer, records))
    received = consume_all_partitions(broker, topic, 1, len(records))
    assert [(m.offset(), m.key(), m.value()) for m in received] == [
        (i, r["key"], r["value"]) for i, r in enumerate(records)
    ]


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_each_acks_setting_stores_the_records(broker, topic, acks):
    producer = confluent_producer(broker, **{"acks": acks})
    records = [{"topic": topic, "value": f"acks={acks} #{i}".encode()} for i in range(20)]
    reports = produce_all(producer, records)
    assert_all_delivered(reports)
    if acks != "0":
        assert sorted(msg.offset() for _, msg in reports) == list(range(20))
    # With acks=0 nothing confirms the write, so the consumer waits for it.
    received = consume_all_partitions(broker, topic, 1, len(records))
    assert [m.value() for m in received] == [r["value"] for r in records]


def test_headers_round_trip(broker, topic):
    producer = confluent_producer(broker)
    headers = [
        ("trace-id", b"abc123"),
        ("binary", bytes(range(256))),
        ("repeated", b"first"),
        ("repeated", b"second"),
        ("empty", b""),
        ("null", None),
    ]
    records = [
        {"topic": topic, "key": b"with-headers", "value": b"v0", "headers": headers},
        {"topic": topic, "key": b"no-headers", "value": b"v1"},
    ]
    assert_all_delivered(produce_all(producer, records))
    received = consume_all_partitions(broker, topic, 1, 2)
    assert len(received) == 2
    assert received[0].headers() == headers
    assert received[1].headers() is None


def test_watermarks_track_the_log(broker, topic):
    producer = confluent_producer(broker)
    assert_all_delivered(produce_all(producer, [{"topic": topic, "value": b"x"}] * 7))
    consumer = confluent_consumer(broker)
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (0, 7)
    finally:
        consumer.close()


def test_consume_from_latest_sees_only_new_messages(broker, topic):
    producer = confluent_producer(broker)
    old_count = 10
    assert_all_delivered(produce_all(producer, [{"topic": topic, "value": f"old-{i}".encode()} for i in range(old_count)]))

    consumer = confluent_consumer(broker)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])
        # The consumer resolves "latest" asynchronously, so new records are
        # produced one at a time until the first one shows up; nothing
        # older may ever be delivered.
        received = []
        deadline = time.monotonic() + 30
        sent = 0
        while not received and time.monotonic() < deadline:
            assert_all_delivered(produce_all(producer, [{"topic": topic, "value": f"new-{sent}".encode()}]))
            sent += 1
            received = consume_confluent(consumer, 1, timeout=1.0)
        assert received, "no new record arrived within 30 s of assigning OFFSET_END"
        more = [{"topic": topic, "value": f"new-{sent + i}".encode()} for i in range(5)]
        assert_all_delivered(produce_all(producer, more))
        received += consume_confluent(consumer, 5, settle=0.5)
    finally:
        consumer.close()
    values = [m.value().decode() for m in received]
    assert all(v.startswith("new-") for v in values), values
    assert all(m.offset() >= old_count for m in received)
    first = int(values[0].split("-")[1])
    assert values == [f"new-{i}" for i in range(first, sent + 5)]


def test_consume_from_timestamp_via_offsets_for_times(broker, topic):
    producer = confluent_producer(broker, **{"linger.ms": 100})
    base = int(time.time() * 1000) - 3_600_000
    # Two groups of records in (likely) one batch: the lookup must find the
    # exact record inside a batch, not the batch start.
    records = [{"topic": topic, "value": f"early-{i}".encode(), "timestamp": base + i} for i in range(10)]
    records += [{"topic": topic, "value": f"late-{i}".encode(), "timestamp": base + 100_000 + i} for i in range(5)]
    assert_all_delivered(produce_all(producer, records))

    consumer = confluent_consumer(broker)
    try:
        found = consumer.offsets_for_times([TopicPartition(topic, 0, base + 50_000)], timeout=10)
        assert len(found) == 1 and found[0].error is None, found
        assert found[0].offset == 10
        exact = consumer.offsets_for_times([TopicPartition(topic, 0, base + 3)], timeout=10)
        assert exact[0].offset == 3
        past_end = consumer.offsets_for_times([TopicPartition(topic, 0, base + 200_000)], timeout=10)
        assert past_end[0].offset == -1, "no record at or after the timestamp gives -1 (OFFSET_END)"

        consumer.assign([TopicPartition(topic, 0, found[0].offset)])
        received = consume_confluent(consumer, 5, settle=0.5)
    finally:
        consumer.close()
    assert [m.value() for m in received] == [f"late-{i}".encode() for i in range(5)]
    assert [m.timestamp()[1] for m in received] == [base + 100_000 + i for i in range(5)]


def test_fetch_from_the_middle_of_a_batch_returns_the_rest(broker, topic):
    producer = confluent_producer(broker, **{"linger.ms": 200})
    records = [{"topic": topic, "value": f"batched-{i}".encode()} for i in range(10)]
    assert_all_delivered(produce_all(producer, records))
    consumer = confluent_consumer(broker)
    try:
        consumer.assign([TopicPartition(topic, 0, 5)])
        received = consume_confluent(consumer, 5, settle=0.5)
    finally:
        consumer.close()
    assert [(m.offset(), m.value()) for m in received] == [(i, f"batched-{i}".encode()) for i in range(5, 10)]


def test_fetch_beyond_the_log_end_resets_to_earliest(broker, topic):
    producer = confluent_producer(broker)
    assert_all_delivered(produce_all(producer, [{"topic": topic, "value": f"r{i}".encode()} for i in range(5)]))
    # The broker must answer OFFSET_OUT_OF_RANGE; an empty answer would leave
    # the consumer waiting forever at offset 1000.
    consumer = confluent_consumer(broker, **{"auto.offset.reset": "earliest"})
    try:
        consumer.assign([TopicPartition(topic, 0, 1000)])
        received = consume_confluent(consumer, 5, timeout=20)
    finally:
        consumer.close()
    assert [m.offset() for m in received] == list(range(5))


def test_long_polling_fetch_is_woken_by_an_append(broker, topic):
    producer = confluent_producer(broker)
    assert_all_delivered(produce_all(producer, [{"topic": topic, "value": b"seed"}]))
    # With a 10 s fetch wait, a record produced while the Fetch waits must
    # arrive long before the wait ends.
    consumer = confluent_consumer(broker, **{"fetch.wait.max.ms": 10_000})
    try:
        consumer.assign([TopicPartition(topic, 0, 1)])
        assert consumer.poll(1.0) is None  # let the first Fetch reach the broker and park
        latencies = []
        for i in range(3):
            start = time.monotonic()
            assert_all_delivered(produce_all(producer, [{"topic": topic, "value": f"wake-{i}".encode()}]))
            got = consume_confluent(consumer, 1, timeout=8)
            assert [m.value() for m in got] == [f"wake-{i}".encode()]
            latencies.append(time.monotonic() - start)
            consumer.poll(0.3)
    finally:
        consumer.close()
    assert max(latencies) < 3.0, f"records waited for the fetch timeout: {latencies}"
