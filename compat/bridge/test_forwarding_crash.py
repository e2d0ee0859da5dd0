"""Forwarding is exactly once per record and durable queue across kill -9.

Contract (docs/bridging.md, "Topics that feed queues"): a topic of 3
partitions forwards to a topic exchange with three bound durable queues
(one with x-max-priority, one with x-message-ttl and a dead-letter
exchange, one plain). An idempotent librdkafka producer (acks=all) feeds
it uniquely numbered records while three pika workers with a prefetch
share each queue and ack every delivery after recording it. The broker is
killed with SIGKILL up to three times while this goes on, each time restarted
on the same data dir and ports; producer and workers reconnect and
finish. Then, for every queue:

- every record in the topic (and so every record the producer had
  acknowledged) was processed, none was lost;
- no record was processed twice except as a delivery flagged
  `redelivered` (AMQP redelivers what was unacked at the crash, flagged);
- nothing reached the dead-letter queue (the TTL is far longer than the
  test), so processed + dead-lettered = every record.

The forwarder's committed group offsets end at the topic's end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition

from support import (
    CLIENT_TIMEOUT_S,
    Worker,
    admin,
    close_quietly,
    connect,
    create_topic,
    kafka_config,
    message_count,
    read_topic,
    wait_until,
    watermarks,
)

RECORDS = 3000
CHUNK = 100
# Pause between chunks: production spreads over about 6 s, so the
# crashes land in the middle of it.
CHUNK_PAUSE_S = 0.2
PARTITIONS = 3
WORKERS_PER_QUEUE = 3
PREFETCH = 20
# The broker is killed this many times (fewer if the producer is nearly
# done first, but at least once). Before each kill the workers catch
# up with the producer; the kill then comes the moment the producer gets
# the acknowledgement of the chunk after next, when the forwarders are
# publishing that chunk and the workers are taking it: the moment a
# record can be in a queue and in a worker's hands but not yet in the
# forwarder's stored position.
KILLS = 3
# "Caught up": every queue processed all but this many acked records.
CAUGHT_UP_WITHIN = CHUNK
# How long the broker stays dead.
DOWN_S = 0.5
# Deadlines for the phases.
CATCH_UP_S = 10.0
FEEDER_S = 45.0
DRAIN_S = 30.0
# The TTL queue's per-queue TTL: far beyond the test, so nothing expires.
TTL_MS = 600_000


class Feeder(threading.Thread):
    """Produces RECORDS uniquely numbered records with an idempotent
    producer, in chunks; remembers which were acknowledged."""

    def __init__(self, broker, topic: str):
        super().__init__(name="feeder", daemon=True)
        self.topic = topic
        self.producer = Producer(kafka_config(broker, **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(FEEDER_S * 1000) - 5000,
            "retry.backoff.ms": 100,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            # The crashes make librdkafka log every refused connection.
            "log_level": 2,
        }))
        self.lock = threading.Condition()
        self.acked: set[int] = set()
        self.failed: dict[int, str] = {}
        self.errors: list[str] = []
        self.remaining = None

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_acked(self, count: int, timeout: float) -> bool:
        """Waits until `count` records were acknowledged; woken by each
        delivery report, so it returns within a moment of the ack."""
        with self.lock:
            return self.lock.wait_for(lambda: len(self.acked) >= count, timeout)

    def on_delivery(self, err, msg) -> None:
        record_id = int(msg.value())
        with self.lock:
            if err is None:
                self.acked.add(record_id)
            else:
                self.failed[record_id] = str(err)
            self.lock.notify_all()

    def pause(self, seconds: float) -> None:
        """Sleeps while serving delivery reports as they come."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.producer.poll(min(left, 0.01))

    def run(self) -> None:
        try:
            for start in range(0, RECORDS, CHUNK):
                for i in range(start, start + CHUNK):
                    while True:
                        try:
                            self.producer.produce(
                                self.topic,
                                key=f"job.{i}".encode(),
                                value=str(i).encode(),
                                headers=[("id", str(i).encode()), ("amqp.priority", str(i % 10).encode())],
                                on_delivery=self.on_delivery,
                            )
                            break
                        except BufferError:
                            self.producer.poll(0.1)
                self.pause(CHUNK_PAUSE_S)
            self.remaining = self.producer.flush(FEEDER_S - 5)
        except Exception as error:  # reported by the test
            self.errors.append(f"{type(error).__name__}: {error}")


@pytest.fixture
def quiet_pika():
    """pika logs every refused reconnection at ERROR, which would bury a
    failure's report; the workers record their errors themselves."""
    logger = logging.getLogger("pika")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def committed(broker, group: str, topic: str) -> dict[int, int]:
    client = admin(broker)
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(PARTITIONS)])]
    [future] = client.list_consumer_group_offsets(request, request_timeout=CLIENT_TIMEOUT_S).values()
    return {tp.partition: tp.offset for tp in future.result(timeout=CLIENT_TIMEOUT_S).topic_partitions}


def processed_ids(workers) -> set[int]:
    return {int(body) for worker in workers for body, _, _ in worker.snapshot()}


def test_forwarding_is_exactly_once_per_queue_across_kill_9(fresh_broker, name, quiet_pika):
    broker = fresh_broker
    exchange, topic = f"{name}-x", f"{name}-t"
    plain, priority, ttl = f"{name}-plain", f"{name}-priority", f"{name}-ttl"
    dead_letters, dead_queue = f"{name}-dlx", f"{name}-dlq"
    queues = (plain, priority, ttl)

    conn = connect(broker)
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, "topic", durable=True)
        ch.exchange_declare(dead_letters, "fanout", durable=True)
        ch.queue_declare(dead_queue, durable=True)
        ch.queue_bind(dead_queue, dead_letters, "")
        ch.queue_declare(plain, durable=True)
        ch.queue_declare(priority, durable=True, arguments={"x-max-priority": 9})
        ch.queue_declare(ttl, durable=True, arguments={"x-message-ttl": TTL_MS, "x-dead-letter-exchange": dead_letters})
        for queue in queues:
            ch.queue_bind(queue, exchange, "job.*")
    finally:
        close_quietly(conn)
    create_topic(broker, topic, partitions=PARTITIONS, config={"sluice.forward.exchange": exchange})
    group = f"__sluice_forward:/:{exchange}"

    stop = threading.Event()
    workers = {
        queue: [Worker(broker, queue, PREFETCH, stop, name=f"{queue}-worker-{n}") for n in range(WORKERS_PER_QUEUE)]
        for queue in queues
    }
    feeder = Feeder(broker, topic)
    everyone = [w for pool in workers.values() for w in pool]
    try:
        for worker in everyone:
            worker.start()
        feeder.start()

        acked_at_crash, killed_at = [], []
        positions_before_crash, positions_after_restart = [], []
        for _ in range(KILLS):
            wait_until(
                lambda: all(len(processed_ids(pool)) >= feeder.acked_count() - CAUGHT_UP_WITHIN
                            for pool in workers.values()),
                CATCH_UP_S, interval=0.02, what="the workers to catch up with the producer",
            )
            positions_before_crash.append(committed(broker, group, topic))
            target = (feeder.acked_count() // CHUNK + 2) * CHUNK
            if target >= RECORDS:
                break  # a slow machine: the producer is nearly done
            assert feeder.wait_acked(target, CATCH_UP_S), f"{target} records were not acked in time"
            broker.kill()
            killed_at.append(time.monotonic())
            acked_at_crash.append(feeder.acked_count())
            time.sleep(DOWN_S)
            broker.start()
            # For a failure's report: where forwarding stood (the stored
            # position it resumes from, or a little past it).
            positions_after_restart.append(committed(broker, group, topic))

        assert killed_at, "the producer finished before the first crash"
        feeder.join(FEEDER_S)
        assert not feeder.is_alive(), f"the producer did not finish within {FEEDER_S} s"

        # Every record in the topic reaches every queue.
        log = read_topic(broker, topic, partitions=PARTITIONS)
        in_log = Counter(int(m.value()) for m in log)
        where_in_log = {int(m.value()): f"{m.partition()}/{m.offset()}" for m in log}
        wait_until(lambda: all(set(in_log) <= processed_ids(pool) for pool in workers.values()),
                   DRAIN_S, interval=0.1, what="every record in the topic processed from every queue")
        ends = watermarks(broker, topic, PARTITIONS)
        wait_until(lambda: committed(broker, group, topic) == ends, 10,
                   what=f"the forwarder's committed offsets to reach {ends}")
        # Late duplicates would show up now.
        time.sleep(1.0)
        conn = connect(broker)
        try:
            ch = conn.channel()
            held = {queue: message_count(ch, queue) for queue in (*queues, dead_queue)}
        finally:
            close_quietly(conn)
    finally:
        stop.set()
        for worker in everyone:
            worker.join(5)

    acked = set(feeder.acked)
    report = {}
    for queue, pool in workers.items():
        # (id, redelivered, "worker@crashes before it")
        deliveries = [(int(body), redelivered, f"{worker.name[-8:]}@{sum(1 for k in killed_at if k < at)}")
                      for worker in pool for body, redelivered, at in worker.snapshot()]
        unflagged = Counter(i for i, redelivered, _ in deliveries if not redelivered)
        processed = {i for i, _, _ in deliveries}
        duplicated = {i for i, n in unflagged.items() if n > in_log[i]}
        report[queue] = dict(
            deliveries=len(deliveries),
            redelivered=sum(1 for _, r, _ in deliveries if r),
            lost_acked=sorted(acked - processed)[:20],
            lost_in_log=sorted(set(in_log) - processed)[:20],
            not_in_log=sorted(processed - set(in_log))[:20],
            unflagged_duplicates={
                f"{i} at {where_in_log[i]}": [(r, when) for j, r, when in deliveries if j == i]
                for i in sorted(duplicated)[:10]
            },
            unflagged_duplicate_count=len(duplicated),
        )
    summary = {queue: {k: v for k, v in r.items() if v} for queue, r in report.items()}
    # Shown with -s, and in the report of a failure.
    positions = f"forwarder positions shortly before each crash {positions_before_crash}, soon after each " \
                f"restart {positions_after_restart}"
    print(f"crashes after {acked_at_crash} acked records; {positions}; per queue: {summary}")
    for queue, r in report.items():
        assert not r["lost_acked"], f"{queue}: records acknowledged to the producer never processed: {summary}"
        assert not r["lost_in_log"], f"{queue}: records in the topic never processed: {summary}"
        assert not r["not_in_log"], f"{queue}: processed records that are not in the topic: {summary}"
        assert not r["unflagged_duplicates"], (
            f"{queue}: records processed twice without the redelivered flag "
            f"(for the first ten, 'id at partition/offset': each delivery as (redelivered, "
            f"'worker@number of crashes before it')): {summary}; {positions}"
        )
    assert held == {queue: 0 for queue in (*queues, dead_queue)}, (
        f"messages left over (the dead-letter queue must stay empty: processed + dead-lettered = all): {held}"
    )

    # The Kafka side of the same run: acknowledged records survived the
    # crash, the idempotent producer wrote none twice and got every
    # record through in the end.
    assert acked <= set(in_log), f"acknowledged records missing from the topic: {sorted(acked - set(in_log))[:20]}"
    assert [i for i, n in in_log.items() if n > 1] == [], "the idempotent producer's records are in the topic twice"
    assert not feeder.errors and feeder.remaining == 0 and len(acked) == RECORDS, (
        f"producer: {len(acked)} of {RECORDS} acknowledged, {feeder.remaining} left after flush, "
        f"errors {feeder.errors}, first failures {dict(list(feeder.failed.items())[:5])}"
    )
