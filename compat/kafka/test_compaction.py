"""Log compaction (cleanup.policy=compact) seen through a consumer.

Contract: a topic created with cleanup.policy=compact and small segments is
compacted in the background (the broker checks compacted logs about every
15 s): in the sealed segments only the latest record per key remains, a
tombstone (null value) and the records it deletes disappear once
delete.retention.ms has passed, surviving records keep their original
offsets, the latest value of every key is readable at every moment, and the
partition keeps taking records at the offsets after the old ones.
"""

from __future__ import annotations

import time
from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from support import (
    assert_all_delivered,
    confluent_consumer,
    confluent_producer,
    create_topic_confluent,
    produce_all,
)

KEYS = [f"key-{i}".encode() for i in range(5)]
DELETED = KEYS[-1]
UPDATES = 40
# The broker's compaction check runs every 15 s; allow several passes.
COMPACTION_TIMEOUT_S = 60.0

COMPACTED = {
    "cleanup.policy": "compact",
    "segment.bytes": "2048",
    "segment.ms": "1000",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "100",
}


def read_partition(broker, topic):
    """Every record of partition 0 from its start to its end, as
    (offset, key, value)."""
    consumer = confluent_consumer(broker, **{"enable.partition.eof": True})
    records = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return records
                raise AssertionError(f"consumer error: {msg.error()}")
            records.append((msg.offset(), msg.key(), msg.value()))
        raise AssertionError(f"did not reach the end of {topic} within 20 s ({len(records)} records read)")
    finally:
        consumer.close()


def test_compaction_keeps_the_latest_record_per_key_at_its_offset(broker, topic):
    create_topic_confluent(broker, topic, partitions=1, config=COMPACTED)
    producer = confluent_producer(broker, **{"linger.ms": 0, "batch.num.messages": 5, "acks": "all"})

    records = [
        {"topic": topic, "partition": 0, "key": key, "value": f"{key.decode()}={n}".encode()}
        for n in range(UPDATES)
        for key in KEYS
    ]
    records.append({"topic": topic, "partition": 0, "key": DELETED, "value": None})
    reports = produce_all(producer, records)
    assert_all_delivered(reports)
    produced = {msg.offset(): (msg.key(), msg.value()) for _, msg in reports}
    latest = {}
    for offset in sorted(produced):
        latest[produced[offset][0]] = offset
    tombstone = latest[DELETED]
    assert produced[tombstone] == (DELETED, None)

    filler_count = 0

    def fill(count):
        """Records under another key, so the records above end up in sealed
        segments and later passes find new dirty segments."""
        nonlocal filler_count
        batch = [
            {"topic": topic, "partition": 0, "key": b"filler", "value": f"filler-{filler_count + i}".encode() * 4}
            for i in range(count)
        ]
        for _, msg in produce_all(producer, batch):
            produced[msg.offset()] = (msg.key(), msg.value())
        filler_count += count

    fill(60)
    end = max(produced) + 1

    deadline = time.monotonic() + COMPACTION_TIMEOUT_S
    history = []
    while True:
        stored = read_partition(broker, topic)
        by_key = defaultdict(list)
        for offset, key, value in stored:
            # Offsets are never renumbered: each survivor is what was written there.
            assert offset in produced, f"offset {offset} was never produced"
            assert produced[offset] == (key, value), (
                f"offset {offset}: stored {(key, value)}, produced {produced[offset]}"
            )
            by_key[key].append(offset)
        # The latest value of every live key is there at every moment, and a
        # deleted key is never seen without its tombstone.
        for key in KEYS[:-1]:
            assert latest[key] in by_key[key], f"latest record of {key} (offset {latest[key]}) is gone"
        if by_key[DELETED]:
            assert tombstone in by_key[DELETED], f"{DELETED} lost its tombstone but kept {by_key[DELETED]}"
        assert stored[-1][0] == max(produced), "the last record must stay"

        history.append((len(stored), {k.decode(): len(v) for k, v in by_key.items() if k != b"filler"}))
        compacted = all(by_key[key] == [latest[key]] for key in KEYS[:-1]) and not by_key[DELETED]
        if compacted:
            break
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"not compacted within {COMPACTION_TIMEOUT_S:.0f} s: records per key over time (total, per key): "
                f"{history[:: max(1, len(history) // 8)] + history[-1:]}; "
                f"expected one record each for {[k.decode() for k in KEYS[:-1]]} and none for {DELETED.decode()}"
            )
        fill(20)
        time.sleep(1.0)

    # Appends continue after the compacted records, offsets unchanged.
    [(err, msg)] = produce_all(producer, [{"topic": topic, "partition": 0, "key": KEYS[0], "value": b"after"}])
    assert err is None
    assert msg.offset() == max(produced) + 1
    assert msg.offset() >= end
