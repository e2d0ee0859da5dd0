"""A nemesis for quorum queues, short version (a longer one:
`QQ_NEMESIS_FAULTS=1000 QQ_NEMESIS_MINUTES=120 compat/cluster/run.sh -k
quorum_nemesis`; QQ_NEMESIS_MINUTES stops starting faults after that
many minutes, and the checker runs on what was done): a pika
publisher with confirms and a pika consumer with manual acks, each on
its own node (moving to the next node when theirs fails), while faults
hit the cluster one at a time, each healed before the next: kill -9 of
the queue's leader, of a random node; SIGSTOP then SIGCONT of a node;
the leader or a random node cut off from the others (every inter-node
link goes through a fault-injecting proxy). Then a checker decides:
every confirmed message was delivered at least once, every delivery
of a message after its first is flagged redelivered, and an acknowledged
message comes back only across a reconnect of the consumer (its node
failed), never across a fault or change of the queue's leader alone
(`QQ_NEMESIS_STRICT=0` lets those through and only counts them, for
looking into one). A Kafka
consumer reads the queue's internal topic throughout: a committed record
found replaced at its offset fails the run, and a lost message's report
names its enqueue and settlement records. Afterwards, on the
healed cluster, a poison message is dead-lettered by `x-delivery-limit`
exactly as configured, through a consumer on another node.
"""

from __future__ import annotations

import os
import random
import re
import signal
import struct
import threading
import time

import pika
import pika.exceptions
import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition

from common.broker import unique_name, wait_until
from test_amqp_definitions import channel, queues_on
from test_kafka_cluster import admin

FAULTS = int(os.environ.get("QQ_NEMESIS_FAULTS", "5"))
MINUTES = float(os.environ.get("QQ_NEMESIS_MINUTES", "0"))
# An acknowledged message back across a fault or leader change fails the
# run (only a reconnect of the consumer excuses one); QQ_NEMESIS_STRICT=0
# lets it through and counts it.
STRICT = os.environ.get("QQ_NEMESIS_STRICT", "1") != "0"
KINDS = ["kill the leader", "kill a node", "pause a node", "partition the leader", "partition a node"]


def connect(node) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=node.amqp_port,
            credentials=pika.PlainCredentials("guest", "guest"),
            heartbeat=5,
            blocked_connection_timeout=10,
            socket_timeout=10,
            connection_attempts=1,
        )
    )


def close_quietly(connection) -> None:
    try:
        if connection is not None and connection.is_open:
            connection.close()
    except Exception:  # noqa: BLE001 (a dead node's connection)
        pass


class Publisher:
    """Publishes numbered persistent messages, one confirm at a time;
    `confirmed` holds those the broker confirmed."""

    def __init__(self, cluster, queue: str, first_node: int):
        self.cluster, self.queue, self.node = cluster, queue, first_node
        self.confirmed: list[bytes] = []
        # Monotonic time of each confirm, by body (for a failure's report).
        self.confirmed_at: dict[bytes, float] = {}
        self.nacked = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        number = 0
        while not self.stopping.is_set():
            connection = None
            try:
                connection = connect(self.cluster.node(self.node))
                ch = connection.channel()
                ch.confirm_delivery()
                while not self.stopping.is_set():
                    body = f"m-{number}".encode()
                    number += 1
                    try:
                        ch.basic_publish("", self.queue, body, pika.BasicProperties(delivery_mode=2))
                        self.confirmed.append(body)
                        self.confirmed_at[body] = time.monotonic()
                    except pika.exceptions.NackError:
                        self.nacked += 1
                        time.sleep(0.05)
            except Exception:  # noqa: BLE001 (its node failed: the next one)
                self.node = self.node % 3 + 1
                time.sleep(0.3)
            finally:
                close_quietly(connection)


class Consumer:
    """Consumes with manual acks (prefetch 50), acknowledging each
    delivery; `deliveries` holds (body, redelivered, monotonic time) in
    arrival order, `reconnects` the times it connected again."""

    def __init__(self, cluster, queue: str, first_node: int):
        self.cluster, self.queue, self.node = cluster, queue, first_node
        self.deliveries: list[tuple[bytes, bool, float]] = []
        self.reconnects: list[float] = []
        self.cancelled = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def seen(self) -> set[bytes]:
        return {body for body, _, _ in self.deliveries}

    def run(self) -> None:
        first = True
        while not self.stopping.is_set():
            connection = None
            if not first:
                self.reconnects.append(time.monotonic())
            first = False
            try:
                connection = connect(self.cluster.node(self.node))
                ch = connection.channel()
                ch.basic_qos(prefetch_count=50)

                def on_message(channel_, method, _properties, body):
                    self.deliveries.append((body, method.redelivered, time.monotonic()))
                    channel_.basic_ack(method.delivery_tag)

                cancels = []
                ch.add_on_cancel_callback(lambda frame: cancels.append(frame))
                ch.basic_consume(self.queue, on_message)
                while not self.stopping.is_set() and not cancels:
                    connection.process_data_events(time_limit=0.2)
                # The broker cancelled it (it should not): consume again,
                # and count it.
                self.cancelled += len(cancels)
            except Exception as error:  # noqa: BLE001 (its node failed: the next one)
                self.errors.append(f"node {self.node}: {error!r}")
                self.node = self.node % 3 + 1
                time.sleep(0.3)
            finally:
                close_quietly(connection)


class Audit:
    """Reads the queue's internal topic through the Kafka protocol as the
    run goes (a consumer sees only what the in-sync replicas have), for a
    failure's report: where each message's enqueue record is, which
    settlement records name its id, and any committed record later
    found replaced by another at the same offset (the replication lost
    it)."""

    def __init__(self, cluster, queue: str):
        self.cluster, self.queue = cluster, queue
        # offset -> (key, value), as first read.
        self.records: dict[int, tuple[bytes, bytes]] = {}
        # body -> [(offset, leader epoch)] of its enqueue records.
        self.enqueued: dict[bytes, list[tuple[int, int]]] = {}
        # id -> [(offset, leader epoch)] of settlement records naming it.
        self.settled: dict[int, list[tuple[int, int]]] = {}
        self.replaced: list[tuple[int, tuple[bytes, bytes], tuple[bytes, bytes]]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def topic(self, consumer) -> str | None:
        prefix = f"__amqp_quorum.{self.queue}-"
        topics = consumer.list_topics(timeout=10).topics
        return next((name for name in topics if name.startswith(prefix)), None)

    def run(self) -> None:
        consumer = KafkaConsumer({
            "bootstrap.servers": self.cluster.bootstrap,
            "group.id": f"{self.queue}-audit",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Faults make it log connection failures: nothing to report.
            "log_level": 0,
        })
        try:
            topic = None
            while topic is None and not self.stopping.wait(0.5):
                try:
                    topic = self.topic(consumer)
                except Exception as error:  # noqa: BLE001 (a node down: again)
                    self.errors.append(repr(error))
            if topic is None:
                return
            consumer.assign([TopicPartition(topic, 0, 0)])
            while not self.stopping.is_set():
                for record in consumer.consume(500, timeout=0.5):
                    if record.error() is None:
                        self.take(record.offset(), record.leader_epoch() or -1, record.key() or b"", record.value() or b"")
        finally:
            consumer.close()

    def take(self, offset: int, epoch: int, key: bytes, value: bytes) -> None:
        before = self.records.get(offset)
        if before is not None:
            if before != (key, value):
                self.replaced.append((offset, before, (key, value)))
            return
        self.records[offset] = (key, value)
        if key == b"m":
            for body in set(re.findall(rb"m-\d+", value)):
                self.enqueued.setdefault(body, []).append((offset, epoch))
        elif key == b"s" and len(value) >= 4:
            (count,) = struct.unpack_from(">I", value)
            for index in range(min(count, (len(value) - 4) // 8)):
                (settled,) = struct.unpack_from(">Q", value, 4 + 8 * index)
                self.settled.setdefault(settled, []).append((offset, epoch))

    def report(self, body: bytes) -> str:
        where = self.enqueued.get(body, [])
        return (
            f"enqueue records (offset, epoch) {where}; settlement records naming them "
            f"{[(offset, self.settled.get(offset, [])) for offset, _ in where]}"
        )


def leader_of(cluster, queue: str) -> int:
    """The queue's leader as the live nodes agree on it (-1: none yet)."""
    seen = set()
    for node in cluster.nodes:
        if not node.alive():
            continue
        try:
            seen.add(queues_on(node)[queue]["node"])
        except Exception:  # noqa: BLE001 (a paused or restarting node)
            return -1
    return seen.pop() if len(seen) == 1 else -1


class LeaderWatch:
    """Polls the queue's leader (every 0.25 s) and records each change as
    a window (from the poll before it to the one that saw it, a second of
    slack either side), which the checker counts as a fault."""

    def __init__(self, cluster, queue: str, windows: list[tuple[float, float]]):
        self.cluster, self.queue, self.windows = cluster, queue, windows
        self.changes = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def leader(self) -> int | None:
        for node in self.cluster.nodes:
            if not node.alive():
                continue
            try:
                return queues_on(node)[self.queue]["node"]
            except Exception:  # noqa: BLE001 (a paused or restarting node: the next)
                continue
        return None

    def run(self) -> None:
        last, last_poll = None, time.monotonic()
        while not self.stopping.wait(0.25):
            now_leader = self.leader()
            now = time.monotonic()
            if now_leader is not None:
                if last is not None and now_leader != last:
                    self.windows.append((last_poll - 1.0, now + 1.0))
                    self.changes += 1
                last = now_leader
            last_poll = now


def returns_without_reconnect(deliveries, reconnects) -> list[tuple[bytes, float, float]]:
    """Messages delivered again (each delivery is acknowledged) with no
    reconnect of the consumer between the previous delivery and this
    one, with the times of both."""
    last: dict[bytes, float] = {}
    returned = []
    for body, _, at in deliveries:
        before = last.get(body)
        if before is not None and not any(before <= when <= at for when in reconnects):
            returned.append((body, before, at))
        last[body] = at
    return returned


@pytest.mark.timeout(240 + FAULTS * 60)
def test_confirmed_messages_survive_faults_and_every_duplicate_is_flagged(proxied_cluster):
    cluster = proxied_cluster
    seed = int(os.environ.get("NEMESIS_SEED", str(time.time_ns())))
    print(f"quorum nemesis: NEMESIS_SEED={seed}", flush=True)
    rng = random.Random(seed)
    cluster.wait_registered(admin)
    queue = unique_name("qq-nemesis")
    with channel(cluster.node(1)) as ch:
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    wait_until(lambda: leader_of(cluster, queue) > 0, 30, interval=0.2, what="the queue's leader on every node")
    leader = leader_of(cluster, queue)
    others = [n for n in (1, 2, 3) if n != leader]
    publisher = Publisher(cluster, queue, others[0])
    consumer = Consumer(cluster, queue, others[1])
    audit = Audit(cluster, queue)
    publisher.thread.start()
    consumer.thread.start()
    audit.thread.start()
    # For a failure's report: broker logs carry wall-clock times.
    wall_offset = time.time() - time.monotonic()

    def utc(at: float) -> str:
        wall = at + wall_offset
        return time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int((wall % 1) * 1000):03d}"

    done = []
    # (start, healed) of each fault, monotonic.
    windows: list[tuple[float, float]] = []
    # (kind, start, healed) of each fault, for a failure's report.
    fault_log: list[tuple[str, float, float]] = []
    watch = LeaderWatch(cluster, queue, windows)
    watch.thread.start()
    budget_ends = time.monotonic() + MINUTES * 60 if MINUTES > 0 else None
    try:
        wait_until(lambda: len(publisher.confirmed) > 100, 60, what="the publisher to get going")
        for i in range(FAULTS):
            if budget_ends is not None and time.monotonic() >= budget_ends:
                print(f"quorum nemesis: QQ_NEMESIS_MINUTES={MINUTES:g} spent after {len(done)} faults", flush=True)
                break
            started = time.monotonic()
            fault = KINDS[i] if i < len(KINDS) else rng.choice(KINDS)
            before = len(publisher.confirmed)
            victim = (
                leader_of(cluster, queue) if fault.endswith("the leader") else rng.choice([1, 2, 3])
            )
            if victim < 0:
                victim = rng.choice([1, 2, 3])
            node = cluster.node(victim)
            if fault.startswith("kill"):
                node.kill()
                time.sleep(rng.uniform(1.0, 3.0))
                node.start()
            elif fault == "pause a node":
                os.kill(node.proc.pid, signal.SIGSTOP)
                time.sleep(rng.uniform(2.0, 4.0))
                os.kill(node.proc.pid, signal.SIGCONT)
            else:
                cluster.isolate(victim)
                time.sleep(rng.uniform(3.0, 5.0))
                cluster.heal()
            wait_until(lambda: leader_of(cluster, queue) > 0, 60, interval=0.3, what=f"a leader after '{fault}'")
            wait_until(
                lambda: len(publisher.confirmed) > before + 30, 90, interval=0.3, what=f"confirms after '{fault}'"
            )
            done.append(fault)
            windows.append((started, time.monotonic()))
            fault_log.append((fault, started, time.monotonic()))
            print(
                f"quorum nemesis: fault {len(done)}/{FAULTS} '{fault}' on {victim} healed, "
                f"{len(publisher.confirmed)} confirmed, {len(consumer.deliveries)} delivered",
                flush=True,
            )
    finally:
        publisher.stopping.set()
        publisher.thread.join(60)
    confirmed = list(publisher.confirmed)
    try:
        wait_until(lambda: set(confirmed) <= consumer.seen(), 90, interval=0.5, what="every confirmed message delivered")
    except AssertionError:
        for node_id, node in enumerate(cluster.nodes, start=1):
            seen = queues_on(node).get(queue, {})
            print(
                f"quorum nemesis: on node {node_id}: leader {seen.get('node')}, ready {seen.get('messages_ready')}, "
                f"unacked {seen.get('messages_unacknowledged')}, consumers {seen.get('consumers')}; "
                f"the consumer is on node {consumer.node}",
                flush=True,
            )
        print(f"quorum nemesis: consumer alive {consumer.thread.is_alive()}, errors {consumer.errors[-5:]} "
              f"({len(consumer.errors)} in all), cancelled {consumer.cancelled}", flush=True)
        lost = sorted(set(confirmed) - consumer.seen(), key=lambda body: publisher.confirmed_at[body])
        print(f"quorum nemesis: {len(lost)} confirmed messages never delivered", flush=True)
        for body in lost[:20]:
            at = publisher.confirmed_at[body]
            near = [
                (index, kind, round(start - at, 1), round(end - at, 1))
                for index, (kind, start, end) in enumerate(fault_log)
                if start - 10 <= at <= end + 10
            ]
            print(f"quorum nemesis: lost {body!r}, confirmed at {at:.1f} ({utc(at)} UTC); faults around it "
                  f"(index, kind, start and end relative to the confirm): {near}; "
                  f"internal topic: {audit.report(body)}", flush=True)
        raise
    finally:
        consumer.stopping.set()
        consumer.thread.join(60)
        watch.stopping.set()
        watch.thread.join(30)
        audit.stopping.set()
        audit.thread.join(30)
        print(f"quorum nemesis: internal topic audit: {len(audit.records)} records read, "
              f"{len(audit.replaced)} committed records replaced {audit.replaced[:3]}, "
              f"errors {audit.errors[-3:]}", flush=True)
    assert not audit.replaced, f"{len(audit.replaced)} committed records of the internal topic replaced"
    assert len(done) == FAULTS or (budget_ends is not None and done), done
    assert consumer.cancelled == 0, f"the consumer was cancelled {consumer.cancelled} times"

    deliveries = list(consumer.deliveries)
    missing = set(confirmed) - {body for body, _, _ in deliveries}
    assert not missing, f"{len(missing)} confirmed messages never delivered, e.g. {sorted(missing)[:3]}"
    first_seen: set[bytes] = set()
    unflagged = []
    for body, redelivered, _ in deliveries:
        if body in first_seen and not redelivered:
            unflagged.append(body)
        first_seen.add(body)
    assert not unflagged, f"{len(unflagged)} deliveries again without the redelivered flag, e.g. {unflagged[:3]}"
    again = len(deliveries) - len(first_seen)
    returned = returns_without_reconnect(deliveries, list(consumer.reconnects))
    unexplained = [
        (body, before, at) for body, before, at in returned
        if STRICT or not any(start <= at and end >= before for start, end in windows)
    ]
    for body, before, at in returned[:10]:
        near = [
            (kind, round(start - before, 1), round(end - before, 1))
            for kind, start, end in fault_log
            if start - 10 <= at and end + 10 >= before
        ]
        changes = [(round(start - before, 1), round(end - before, 1)) for start, end in windows
                   if start <= at and end >= before]
        print(f"quorum nemesis: {body!r} acknowledged at {before:.1f} ({utc(before)} UTC) came back "
              f"{at - before:.1f} s later; internal topic: {audit.report(body)}; "
              f"faults around it (kind, start and end relative to the ack): {near}; "
              f"fault and leader change windows around it: {changes}", flush=True)
    assert not unexplained, (
        f"{len(unexplained)} acknowledged messages came back with no reconnect of the consumer"
        f"{'' if STRICT else ', fault or leader change'}, e.g. {[body for body, _, _ in unexplained[:3]]}"
    )
    print(
        f"quorum nemesis: {len(done)} faults, {watch.changes} leader changes, {len(confirmed)} confirmed "
        f"({publisher.nacked} nacked), {len(deliveries)} delivered ({again} again, all flagged; "
        f"{len(returned)} of them acknowledged before and back across a fault or leader change without "
        f"a reconnect of the consumer), none lost"
    )

    # A poison message on the healed cluster: delivered limit + 1 times
    # (to a consumer on another node than the leader), then dead-lettered.
    poison, dead = f"{queue}-poison", f"{queue}-dead"
    with channel(cluster.node(1)) as ch:
        ch.exchange_declare(f"{dead}-x", "fanout", durable=True)
        ch.queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(dead, f"{dead}-x")
        ch.queue_declare(
            poison,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": f"{dead}-x"},
        )
    wait_until(lambda: leader_of(cluster, poison) > 0 and leader_of(cluster, dead) > 0, 30, interval=0.2,
               what="the poison queues' leaders")
    elsewhere = next(n for n in (1, 2, 3) if n != leader_of(cluster, poison))
    with channel(cluster.node(elsewhere)) as ch:
        ch.confirm_delivery()
        ch.basic_publish("", poison, b"poison", pika.BasicProperties(delivery_mode=2))
        counts = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(counts) < 4:
            method, properties, _ = ch.basic_get(poison)
            if method is None:
                time.sleep(0.1)
                if counts and len(counts) == 3:
                    break
                continue
            counts.append(properties.headers["x-delivery-count"])
            ch.basic_nack(method.delivery_tag, requeue=True)
        assert counts == [0, 1, 2], counts
        deadline = time.monotonic() + 30
        method = None
        while method is None and time.monotonic() < deadline:
            method, properties, body = ch.basic_get(dead, auto_ack=True)
            time.sleep(0.1)
        assert method is not None and body == b"poison", "the poison message was not dead-lettered"
        assert properties.headers["x-first-death-reason"] == "delivery_limit"
