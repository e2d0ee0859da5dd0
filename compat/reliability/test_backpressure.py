"""Backpressure instead of growth. Over the memory high watermark, AMQP
publishers are blocked (compat/amqp covers connection.blocked itself) and
Kafka producers are throttled: their produce requests wait and answer with
throttle_time_ms, which librdkafka reports. A backlog that does not fit the
watermark stays out of the broker's memory: a Kafka topic's backlog and a
durable queue's persistent backlog are on disk, and a publisher of
transient messages that outruns its consumers is held back. The broker's
resident memory is read from /proc and printed."""

from __future__ import annotations

import json
import threading
import time

import pika
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common.broker import wait_until
from support import CLIENT_TIMEOUT_S, confluent_config, rss_mib


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def fill_queue(broker, queue: str, megabytes: int) -> pika.BlockingConnection:
    """Publishes `megabytes` of 100 KB messages into `queue` (no consumer)."""
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.amqp_port, blocked_connection_timeout=120))
    channel = connection.channel()
    channel.queue_declare(queue)
    for _ in range(megabytes * 10):
        channel.basic_publish("", queue, b"x" * 100_000)
    return connection


def test_kafka_producers_are_throttled_while_the_memory_alarm_is_raised(own_broker, name):
    with own_broker({"amqp.memory_high_watermark": "2MiB"}) as broker:
        admin = AdminClient(confluent_config(broker))
        admin.create_topics([NewTopic(name, 1)])[name].result(CLIENT_TIMEOUT_S)
        throttles: list[int] = []

        def on_stats(text):
            for stats in json.loads(text).get("brokers", {}).values():
                if stats.get("nodeid", -1) >= 0:
                    throttles.append(stats["throttle"]["max"])

        producer = Producer(confluent_config(broker, **{
            "acks": "all", "statistics.interval.ms": 100, "stats_cb": on_stats, "linger.ms": 0,
        }))
        producer.produce(name, b"before")
        assert producer.flush(10) == 0
        # Fill a queue over the watermark; its publisher is blocked.
        publisher = fill_queue(broker, f"{name}-q", 3)
        delivered = []
        started = time.monotonic()
        for i in range(3):
            producer.produce(name, f"during-{i}".encode(), on_delivery=lambda err, msg: delivered.append(err))
            producer.flush(30)
        during_s = time.monotonic() - started
        producer.poll(0.5)  # one more statistics interval
        assert delivered == [None, None, None], "a throttled producer's records are still taken"
        assert max(throttles) > 0, f"librdkafka saw no throttle_time_ms: {throttles}"
        # Drain the queue: the alarm clears and producing is not held back.
        drain = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
        channel = drain.channel()
        while channel.basic_get(f"{name}-q", auto_ack=True)[0] is not None:
            pass
        drain.close()
        wait_until(lambda: "memory alarm cleared" in broker.log_text(tail_lines=None), CLIENT_TIMEOUT_S,
                   what="the memory alarm to clear")
        started = time.monotonic()
        producer.produce(name, b"after")
        assert producer.flush(10) == 0
        after_s = time.monotonic() - started
        publisher.close()
        print(f"\nthrottled: 3 produce round trips took {during_s:.2f} s during the alarm, one {after_s:.3f} s "
              f"after; librdkafka's throttle max {max(throttles)} ms")


def test_a_kafka_backlog_waits_on_disk_not_in_memory(own_broker, name):
    with own_broker() as broker:
        pid = broker.proc.pid
        admin = AdminClient(confluent_config(broker))
        admin.create_topics([NewTopic(name, 2)])[name].result(CLIENT_TIMEOUT_S)
        baseline = rss_mib(pid)
        producer = Producer(confluent_config(broker, **{"acks": 1, "linger.ms": 20, "batch.size": 1_000_000}))
        record = b"b" * 10_000
        total = 30_000  # 300 MB
        for i in range(total):
            while True:
                try:
                    producer.produce(name, record)
                    break
                except BufferError:
                    producer.poll(0.05)
        assert producer.flush(120) == 0
        after_produce = rss_mib(pid)
        # A slow consumer reads part of it back.
        consumer = Consumer(confluent_config(broker, **{"group.id": name, "fetch.max.bytes": 1_000_000}))
        consumer.assign([TopicPartition(name, p, 0) for p in range(2)])
        read = 0
        deadline = time.monotonic() + 30
        while read < 2_000 and time.monotonic() < deadline:
            read += len([m for m in consumer.consume(200, 0.5) if not m.error()])
        consumer.close()
        peak = peak_rss_mib(pid)
        print(f"\nkafka backlog of 300 MB: broker RSS {baseline:.0f} MiB before, {after_produce:.0f} MiB after, "
              f"peak {peak:.0f} MiB")
        assert read >= 2_000
        assert peak - baseline < 150, f"RSS grew {peak - baseline:.0f} MiB for a backlog on disk"


def test_a_durable_amqp_backlog_waits_on_disk_not_in_memory(own_broker, name):
    settings = {"amqp.memory_high_watermark": "32MiB", "amqp.queue_memory_bytes": "4MiB"}
    with own_broker(settings) as broker:
        pid = broker.proc.pid
        baseline = rss_mib(pid)
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", broker.amqp_port, blocked_connection_timeout=30))
        channel = connection.channel()
        channel.queue_declare(name, durable=True)
        total = 3_000  # 300 MB, ten times the watermark
        for i in range(total):
            channel.basic_publish("", name, f"{i:06d}".encode() + b"d" * 99_994,
                                  pika.BasicProperties(delivery_mode=2))
        wait_until(lambda: channel.queue_declare(name, passive=True).method.message_count == total,
                   60, what="the backlog to be queued")
        connection.close()
        after_publish = peak_rss_mib(pid)
        assert "memory alarm raised" not in broker.log_text(tail_lines=None), \
            "a persistent backlog on disk must not count against the watermark"
        # Held on disk across a restart too: recovery reads back only the head.
        broker.stop()
        broker.start()
        pid = broker.proc.pid
        after_restart = rss_mib(pid)
        # A slow consumer reads it all back, in order.
        connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
        channel = connection.channel()
        received = 0
        deadline = time.monotonic() + 180
        while received < total and time.monotonic() < deadline:
            method, _, body = channel.basic_get(name, auto_ack=True)
            if method is None:
                break
            assert int(body[:6]) == received, "out of order"
            received += 1
        connection.close()
        peak_after_restart = peak_rss_mib(pid)
        print(f"\namqp: durable backlog of 300 MB against a 32 MiB watermark, 4 MiB in memory per queue; "
              f"broker RSS {baseline:.0f} MiB before, peak {after_publish:.0f} MiB while publishing; "
              f"after a restart {after_restart:.0f} MiB, peak {peak_after_restart:.0f} MiB while draining")
        assert received == total, "messages were lost on the way"
        assert after_publish - baseline < 100, f"RSS grew {after_publish - baseline:.0f} MiB for a backlog on disk"
        assert peak_after_restart < 100, f"RSS reached {peak_after_restart:.0f} MiB recovering a backlog on disk"


def test_a_transient_publisher_that_outruns_its_consumers_is_held_at_the_watermark(own_broker, name):
    with own_broker({"amqp.memory_high_watermark": "32MiB"}) as broker:
        pid = broker.proc.pid
        baseline = rss_mib(pid)
        published = []

        def publish():
            connection = pika.BlockingConnection(pika.ConnectionParameters(
                "127.0.0.1", broker.amqp_port, blocked_connection_timeout=120))
            channel = connection.channel()
            channel.queue_declare(name)
            body = b"p" * 100_000
            for i in range(2_000):  # 200 MB offered
                channel.basic_publish("", name, body)
                published.append(i)
            connection.close()

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        wait_until(lambda: "memory alarm raised" in broker.log_text(tail_lines=None), 120,
                   what="the memory alarm")
        # Held back: the publisher stops getting anywhere.
        time.sleep(1)
        held = len(published)
        time.sleep(2)
        assert len(published) - held < 5, "the publisher kept going over the watermark"
        peak_while_blocked = peak_rss_mib(pid)
        assert held < 2_000
        # A slow consumer drains it; the publisher resumes and finishes.
        connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
        channel = connection.channel()
        received = 0
        deadline = time.monotonic() + 180
        while received < 2_000 and time.monotonic() < deadline:
            method, _, body = channel.basic_get(name, auto_ack=True)
            if method is None:
                connection.process_data_events(0.05)
                continue
            received += 1
        connection.close()
        thread.join(30)
        peak = peak_rss_mib(pid)
        print(f"\namqp: 200 MB offered against a 32 MiB watermark; the publisher was held after {held} messages; "
              f"broker RSS {baseline:.0f} MiB before, peak {peak_while_blocked:.0f} MiB while blocked, "
              f"{peak:.0f} MiB overall")
        assert received == 2_000, "messages were lost on the way"
        assert peak - baseline < 150, f"RSS grew {peak - baseline:.0f} MiB against a 32 MiB watermark"
