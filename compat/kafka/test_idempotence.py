"""An idempotent producer (librdkafka, enable.idempotence) across a broker
restart.

Contract: records produced with acks=all while the broker is stopped and
started again in the middle (the producer stays open and retries what was
in flight) are all delivered, each exactly once, in production order per
partition, at the offsets their delivery reports gave: a retried batch the
broker already wrote is answered with its original offset, not written
again, also when the broker was killed (SIGKILL) rather than stopped, since
the sequence state is rebuilt from the log on start.
"""

from __future__ import annotations

import signal
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from support import confluent_consumer, confluent_producer, consume_confluent, create_topic_confluent

PARTITIONS = 3
RECORDS = 3000
# Produce at about this rate, so that requests are in flight when the broker goes.
RATE = 1500.0


def stop_and_start(broker):
    code = broker.stop()
    assert not broker.last_stop_needed_kill, "broker ignored SIGTERM and was killed"
    assert code == 0, f"broker exited with code {code} on SIGTERM"
    broker.start()


def kill_and_start(broker):
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(timeout=10)
    broker.stop()  # already dead: only records the exit code
    broker.start()


@pytest.mark.parametrize("restart", [stop_and_start, kill_and_start], ids=["sigterm", "sigkill"])
def test_idempotent_producer_leaves_no_duplicates_across_a_restart(fresh_broker, topic, restart):
    broker = fresh_broker
    create_topic_confluent(broker, topic, partitions=PARTITIONS)
    producer = confluent_producer(
        broker,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.num.messages": 50,
            "message.timeout.ms": 60000,
        },
    )
    reports = {}
    failures = []

    def on_delivery(err, msg):
        if err is None:
            reports[msg.value()] = (msg.partition(), msg.offset())
        else:
            failures.append((err, msg.value()))

    started = time.monotonic()
    for i in range(RECORDS):
        if i == RECORDS // 2:
            restart(broker)
        producer.produce(topic, partition=i % PARTITIONS, key=f"key-{i % 7}".encode(), value=f"{i}".encode(),
                         on_delivery=on_delivery)
        producer.poll(0)
        ahead = (i + 1) / RATE - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} records undelivered"
    assert not failures, f"{len(failures)} deliveries failed, first: {failures[:3]}"
    assert len(reports) == RECORDS

    consumer = confluent_consumer(broker)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        messages = consume_confluent(consumer, RECORDS, timeout=60, settle=1.0)
    finally:
        consumer.close()

    got = defaultdict(list)
    for m in messages:
        got[m.partition()].append((m.offset(), int(m.value())))
    for p in range(PARTITIONS):
        values = [v for _, v in got[p]]
        expected = list(range(p, RECORDS, PARTITIONS))
        seen_twice = sorted(v for v, n in Counter(values).items() if n > 1)
        assert not seen_twice, f"partition {p}: {len(seen_twice)} values stored twice, e.g. {seen_twice[:5]}"
        missing = sorted(set(expected) - set(values))
        assert not missing, f"partition {p}: {len(missing)} values missing, e.g. {missing[:5]}"
        assert values == expected, f"partition {p}: order not kept"
        assert [o for o, _ in got[p]] == list(range(len(expected))), f"partition {p}: offsets not contiguous"
        for offset, value in got[p]:
            reported = reports[f"{value}".encode()]
            assert reported == (p, offset), f"value {value}: delivery report said {reported}, stored at {(p, offset)}"
