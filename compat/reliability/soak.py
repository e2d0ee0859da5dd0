"""The soak run: a mixed workload on both protocols for a set time, while the
broker's resident memory, open file descriptors and threads are sampled.

Workload (all at once, each in its own thread, every loop bounded by the
run's deadline):
- an idempotent Kafka producer into a 3-partition topic whose retention
  keeps deleting small segments;
- a consumer group of two members, one of which leaves and rejoins every
  15 s (rebalances all through the run);
- an AMQP publisher into a queue with a message TTL and a dead-letter
  exchange; a consumer that acknowledges nine messages in ten and rejects
  the tenth (dead-lettered), messages left unconsumed expire into the
  dead-letter queue too; a consumer drains the dead-letter queue.

The run fails on any client error, any ERROR line in the broker log, or a
growth trend: the least-squares slope of a sample series over the second
half of the run, extrapolated over that half, above the series' allowance
(RSS 48 MiB, descriptors 32, threads 8).

Usage (the long run is 30 minutes; the test suite runs a short one):
    target/venv/bin/python compat/reliability/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pika  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from common.broker import Broker  # noqa: E402

TOPIC = "soak"
QUEUE = "soak-work"
DEAD = "soak-dead"
ALLOWANCE = {"rss_mib": 48.0, "fds": 32.0, "threads": 8.0}


def proc_sample(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return {
        "rss_mib": int(fields["VmRSS"][0]) / 1024,
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
        "threads": int(fields["Threads"][0]),
    }


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var


class Soak:
    def __init__(self, broker: Broker, seconds: float):
        self.broker = broker
        self.deadline = time.monotonic() + seconds
        self.errors: list[str] = []
        self.counts = {"produced": 0, "consumed": 0, "rebalances": 0, "published": 0, "acked": 0,
                       "rejected": 0, "dead_lettered": 0}
        self.lock = threading.Lock()

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def guard(self, name, target):
        def run():
            try:
                target()
            except Exception:  # every failure of a worker fails the soak
                with self.lock:
                    self.errors.append(f"{name}: {traceback.format_exc(limit=3)}")
        return threading.Thread(target=run, name=name, daemon=True)

    def kafka_config(self, **extra) -> dict:
        config = {"bootstrap.servers": self.broker.bootstrap, "log_level": 3}
        config.update(extra)
        return config

    def produce(self):
        producer = Producer(self.kafka_config(**{"enable.idempotence": True, "linger.ms": 5}))
        failures = []
        index = 0
        while self.running():
            for _ in range(100):
                producer.produce(TOPIC, b"k" * 512, key=str(index % 64).encode(),
                                 on_delivery=lambda err, _msg: err and failures.append(str(err)))
                index += 1
            producer.poll(0.05)
            if failures:
                raise RuntimeError(f"delivery failed: {failures[:3]}")
            time.sleep(0.05)
        assert producer.flush(30) == 0, "records still pending at the end"
        self.count("produced", index)

    def group_member(self, churn: bool):
        while self.running():
            consumer = Consumer(self.kafka_config(**{
                "group.id": "soak-group", "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
            }))
            consumer.subscribe([TOPIC], on_assign=lambda *_: self.count("rebalances"))
            member_until = time.monotonic() + (15 if churn else 1e9)
            while self.running() and time.monotonic() < member_until:
                for message in consumer.consume(500, 0.5):
                    if message.error():
                        raise RuntimeError(f"consume error: {message.error()}")
                    self.count("consumed")
            consumer.close()

    def amqp(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", self.broker.amqp_port,
                                                                 heartbeat=30))

    def declare(self):
        connection = self.amqp()
        channel = connection.channel()
        channel.exchange_declare("soak-dlx", "fanout", durable=True)
        channel.queue_declare(DEAD, durable=True)
        channel.queue_bind(DEAD, "soak-dlx")
        channel.queue_declare(QUEUE, durable=True, arguments={
            "x-message-ttl": 2000, "x-dead-letter-exchange": "soak-dlx"})
        connection.close()

    def publish(self):
        connection = self.amqp()
        channel = connection.channel()
        channel.confirm_delivery()
        while self.running():
            for _ in range(50):
                channel.basic_publish("", QUEUE, b"m" * 256, pika.BasicProperties(delivery_mode=2))
                self.count("published")
            connection.process_data_events(0.05)
        connection.close()

    def work(self):
        connection = self.amqp()
        channel = connection.channel()
        channel.basic_qos(prefetch_count=50)
        seen = 0

        def on_message(ch, method, _props, _body):
            nonlocal seen
            seen += 1
            if seen % 10 == 0:
                ch.basic_reject(method.delivery_tag, requeue=False)
                self.count("rejected")
            else:
                ch.basic_ack(method.delivery_tag)
                self.count("acked")

        channel.basic_consume(QUEUE, on_message)
        while self.running():
            # Slower than the publisher at times, so some messages expire.
            connection.process_data_events(0.2)
            if int(time.monotonic()) % 10 < 3:
                time.sleep(0.3)
        connection.close()

    def drain_dead(self):
        connection = self.amqp()
        channel = connection.channel()
        channel.basic_consume(DEAD, lambda ch, m, _p, _b: (ch.basic_ack(m.delivery_tag),
                                                           self.count("dead_lettered")))
        while self.running():
            connection.process_data_events(0.2)
        connection.close()


def run(broker: Broker, seconds: float, sample_every: float = 2.0) -> dict:
    """Runs the soak against a started broker; returns the report."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(TOPIC, 3, config={
        "retention.bytes": "262144", "segment.bytes": "65536"})])[TOPIC].result(30)
    soak = Soak(broker, seconds)
    soak.declare()
    workers = [
        soak.guard("kafka-producer", soak.produce),
        soak.guard("group-member", lambda: soak.group_member(churn=False)),
        soak.guard("group-churner", lambda: soak.group_member(churn=True)),
        soak.guard("amqp-publisher", soak.publish),
        soak.guard("amqp-worker", soak.work),
        soak.guard("amqp-dead-letters", soak.drain_dead),
    ]
    log_start = broker.log_size()
    started = time.monotonic()
    for worker in workers:
        worker.start()
    samples = []
    while soak.running() and not soak.errors:
        samples.append((time.monotonic() - started, proc_sample(broker.proc.pid)))
        time.sleep(sample_every)
    for worker in workers:
        worker.join(60)
    hung = [w.name for w in workers if w.is_alive()]
    broker_errors = [line for line in broker.log_text(log_start, tail_lines=None).splitlines()
                     if " ERROR " in line]
    half = [(t, s) for t, s in samples if t >= seconds / 2]
    trends = {}
    failures = list(soak.errors) + [f"worker did not stop: {name}" for name in hung]
    failures += [f"broker error: {line}" for line in broker_errors[:5]]
    for series, allowance in ALLOWANCE.items():
        points = [(t, s[series]) for t, s in half]
        growth = slope(points) * (points[-1][0] - points[0][0]) if len(points) > 1 else 0.0
        trends[series] = {
            "first": samples[0][1][series] if samples else None,
            "max": max((s[series] for _, s in samples), default=None),
            "last": samples[-1][1][series] if samples else None,
            "second_half_growth": round(growth, 2),
        }
        if growth > allowance:
            failures.append(f"{series} grows: {growth:.1f} over the second half (allowed {allowance})")
    for name in ("produced", "consumed", "rebalances", "acked", "rejected", "dead_lettered"):
        if soak.counts[name] == 0:
            failures.append(f"nothing {name}: the workload did not run")
    return {"seconds": seconds, "samples": len(samples), "counts": soak.counts, "trends": trends,
            "broker_errors": len(broker_errors), "passed": not failures, "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluice-soak-") as tmp:
        broker = Broker(Path(tmp) / "data", name="soak", settings={
            "log.retention_check_interval": "1s", "log.segment_bytes": "64KiB"})
        broker.start()
        try:
            report = run(broker, args.minutes * 60, sample_every=5.0)
        finally:
            broker.stop()
        report["clean_stop"] = broker.last_returncode == 0
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] and report["clean_stop"] else 1


if __name__ == "__main__":
    sys.exit(main())
