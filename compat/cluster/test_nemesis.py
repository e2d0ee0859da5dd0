"""A nemesis in the spirit of Jepsen, short version (the long one is
`NEMESIS_FAULTS=1000 compat/cluster/run.sh -k nemesis`, RELIABILITY.md;
NEMESIS_MINUTES bounds a long run in time, checking what it did):
an acks=all idempotent producer writes numbered records to a topic with
three replicas on a three-node cluster while faults hit the nodes, one at
a time, each healed before the next: kill -9 of a random node, of a
partition's leader, of the controller; SIGSTOP then SIGCONT of a node; a
rolling restart (SIGTERM, start, next node); and on the network (every
inter-node link goes through a fault-injecting proxy): a random node, a
partition's leader, or the controller cut off from the others both ways,
and a node whose outgoing traffic is held (a one-way partition), each for
3 to 5 s. Then a checker decides:
every acknowledged record is present exactly once, in the order it was
acknowledged, on every replica (the replicas' logs are byte-identical),
and nothing acknowledged is lost (a majority always survives). Meanwhile
a consumer group commits ever larger offsets through its coordinator (the
leader of the group's `__consumer_offsets` partition, which the faults hit
too) and reads them back: a read never shows less than the last commit
acknowledged before it (committed offsets never go backwards), and at the
end the group has the last acknowledged commit.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from common.broker import wait_until
from test_kafka_cluster import admin, controller_of, layout
from test_replication import check_replicas_identical, create_replicated, read_to_end

FAULTS = int(os.environ.get("NEMESIS_FAULTS", "9"))
# A time budget (minutes) for a long run on a shared machine: no fault
# starts after it, and the checker runs on what was done.
MINUTES = float(os.environ.get("NEMESIS_MINUTES", "0"))
PARTITIONS = 3


class Writer:
    """Produces numbered records until stopped; keeps what was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = PARTITIONS):
        self.topic = topic
        self.partitions = partitions
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.timeout.ms": 120000,
                **({"debug": os.environ["NEMESIS_DEBUG"]} if os.environ.get("NEMESIS_DEBUG") else {}),
            }
        )
        self.acked: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
        self.failed = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def report(self, error, message):
        if error is None:
            self.acked[message.partition()].append((message.offset(), message.value()))
        else:
            self.failed.append(error)

    def run(self):
        sequence = 0
        while not self.stopping.is_set():
            try:
                self.producer.produce(
                    self.topic,
                    value=f"n{sequence}".encode(),
                    partition=sequence % self.partitions,
                    on_delivery=self.report,
                )
                sequence += 1
            except BufferError:
                pass
            self.producer.poll(0.002)
        self.producer.flush(120)

    def count(self) -> int:
        return sum(len(v) for v in self.acked.values())


class Committer:
    """Commits 1, 2, 3... as the offset of every partition for one group
    until stopped, and reads the committed offsets back after each commit;
    a read below the last acknowledged commit is a regression."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        self.topic = topic
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self.acked = 0
        self.attempts = 0
        self.reads = 0
        self.regressions: list[tuple[int, int]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def partitions(self, offset: int = -1001) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p, offset) for p in range(PARTITIONS)]

    def read(self) -> list[int] | None:
        """The committed offsets, or None when the read failed (as a whole
        or for a partition: its offset is then not a committed one)."""
        try:
            found = self.consumer.committed(self.partitions(), timeout=5)
        except KafkaException:
            return None
        if any(tp.error is not None for tp in found):
            return None
        return [tp.offset for tp in found]

    def run(self):
        value = 0
        try:
            while not self.stopping.is_set():
                value += 1
                self.attempts += 1
                try:
                    self.consumer.commit(offsets=self.partitions(value), asynchronous=False)
                    self.acked = value
                except KafkaException:
                    time.sleep(0.2)
                floor = self.acked
                found = self.read()
                if found is not None:
                    self.reads += 1
                    if min(found) < floor:
                        self.regressions.append((floor, min(found)))
                time.sleep(0.05)
        finally:
            self.consumer.close()


def known(node_of, what: str) -> int:
    """The node `node_of` names once it names one (a leader or controller
    may be unknown for a moment after the last fault)."""
    return wait_until(lambda: (lambda n: n if n > 0 else None)(node_of()), 30, interval=0.3, what=what)


def wait_all_in_sync(cluster, topic: str, timeout: float = 60) -> None:
    def in_sync():
        for node in cluster.nodes:
            if not node.alive():
                return False
        view = layout(cluster.node(1).bootstrap, topic)
        return all(len(isr) == 3 for _, _, isr in view.values())

    wait_until(in_sync, timeout, interval=0.3, what="every replica back in sync")


def read_from_leader(cluster, topic: str, partition: int, timeout: float = 90) -> list[bytes]:
    """Every record of one partition, read from its leader once the
    cluster settled: a leader that moves, or a client whose metadata is
    not there yet, gets the read asked again (from the new leader) until
    `timeout`; the records read are checked whole by the caller."""
    deadline = time.monotonic() + timeout
    while True:
        leader = layout(cluster.node(1).bootstrap, topic)[partition][0]
        try:
            return read_to_end(cluster.node(leader).bootstrap, topic, partition)
        except (KafkaException, AssertionError) as error:
            if time.monotonic() > deadline:
                raise
            print(f"nemesis: reading partition {partition} from node {leader} failed ({error}); again", flush=True)
            time.sleep(1)


# Each fault takes some seconds (its wait, healing, the replicas catching
# up); the suite's 300 s limit is for the short version.
@pytest.mark.timeout(180 + FAULTS * 45)
def test_acknowledged_records_survive_kills_pauses_restarts_and_partitions(proxied_cluster, name):
    cluster = proxied_cluster
    seed = int(os.environ.get("NEMESIS_SEED", str(time.time_ns())))
    print(f"nemesis: NEMESIS_SEED={seed}", flush=True)
    rng = random.Random(seed)
    cluster.wait_registered(admin)
    create_replicated(cluster.node(1).bootstrap, name, PARTITIONS, 3)
    writer = Writer(cluster.bootstrap, name)
    writer.thread.start()
    committer = Committer(cluster.bootstrap, name, f"{name}-group")
    committer.thread.start()
    faults = [
        "kill a node",
        "kill a leader",
        "kill the controller",
        "pause a node",
        "rolling restart",
        "partition a node",
        "partition a leader",
        "partition the controller",
        "mute a node",
    ]
    done = []
    budget_ends = time.monotonic() + MINUTES * 60 if MINUTES > 0 else None
    try:
        wait_until(lambda: writer.count() > 200, 30, what="the writer to get going")
        for i in range(FAULTS):
            if budget_ends is not None and time.monotonic() >= budget_ends:
                print(f"nemesis: NEMESIS_MINUTES={MINUTES:g} spent after {len(done)} faults", flush=True)
                break
            fault = faults[i % len(faults)] if i < len(faults) else rng.choice(faults)
            before = writer.count()
            if fault in ("kill a node", "pause a node", "partition a node", "mute a node"):
                victims = [rng.choice([1, 2, 3])]
            elif fault in ("kill a leader", "partition a leader"):
                partition = rng.randrange(PARTITIONS)
                victims = [known(lambda: layout(cluster.node(1).bootstrap, name)[partition][0], "a leader")]
            elif fault in ("kill the controller", "partition the controller"):
                victims = [known(lambda: controller_of(cluster.node(1).bootstrap), "the controller")]
            else:
                victims = [1, 2, 3]
            for victim in victims:
                node = cluster.node(victim)
                if fault.startswith("partition") or fault == "mute a node":
                    if fault == "mute a node":
                        cluster.mute(victim)
                    else:
                        cluster.isolate(victim)
                    time.sleep(rng.uniform(3.0, 5.0))
                    cluster.heal()
                elif fault == "pause a node":
                    os.kill(node.proc.pid, signal.SIGSTOP)
                    time.sleep(rng.uniform(2.0, 4.0))
                    os.kill(node.proc.pid, signal.SIGCONT)
                elif fault == "rolling restart":
                    node.stop()
                    node.start()
                    wait_all_in_sync(cluster, name)
                else:
                    node.kill()
                    time.sleep(rng.uniform(1.0, 3.0))
                    node.start()
            wait_all_in_sync(cluster, name)
            # Writes go on after each fault.
            wait_until(lambda: writer.count() > before + 50, 60, what=f"writes after '{fault}'")
            done.append(fault)
            print(f"nemesis: fault {len(done)}/{FAULTS} '{fault}' on {victims} healed, {writer.count()} acknowledged", flush=True)
    finally:
        writer.stopping.set()
        committer.stopping.set()
        writer.thread.join(180)
        committer.thread.join(60)
    assert not writer.thread.is_alive(), "the writer did not finish"
    assert not committer.thread.is_alive(), "the committer did not finish"
    assert len(done) == FAULTS or (budget_ends is not None and done), done

    wait_all_in_sync(cluster, name)
    total = 0
    for partition in range(PARTITIONS):
        acked = [value for _, value in sorted(writer.acked[partition])]
        # A leader that just took over serves up to its high watermark,
        # which catches up once its followers fetch from it (as Kafka's):
        # the read is asked again until it covers what was acknowledged,
        # or the time is up and the checks below say what is missing.
        deadline = time.monotonic() + 60
        while True:
            stored = read_from_leader(cluster, name, partition)
            if set(acked) <= set(stored) or time.monotonic() > deadline:
                break
            print(f"nemesis: partition {partition} does not show every acknowledged record yet; reading again", flush=True)
            time.sleep(1)
        offsets = [offset for offset, _ in writer.acked[partition]]
        twice = sorted({o for o in offsets if offsets.count(o) > 1}) if len(offsets) != len(set(offsets)) else []
        if twice:
            values = {}
            for offset, value in writer.acked[partition]:
                values.setdefault(offset, []).append(value)
            examples = [(o, values[o], stored[o] if o < len(stored) else None) for o in twice[:5]]
            lost = [v for v in values[twice[0]] if v not in stored]
            raise AssertionError(
                f"partition {partition}: {len(twice)} offsets acknowledged twice, "
                f"{twice[0]}..{twice[-1]}; (offset, acknowledged values, stored value): {examples}; "
                f"of the first offset's values, not stored: {lost}"
            )
        positions = {}
        for index, value in enumerate(stored):
            assert value not in positions, f"partition {partition}: {value!r} stored twice"
            positions[value] = index
        missing = [v for v in acked if v not in positions]
        assert not missing, f"partition {partition}: {len(missing)} acknowledged records lost, first {missing[:3]}"
        order = [positions[v] for v in acked]
        assert order == sorted(order), f"partition {partition}: acknowledged records out of order"
        total += len(acked)
    assert total == writer.count()

    # Committed offsets never went backwards, and the last acknowledged
    # commit is the group's.
    assert committer.acked > len(done), f"only {committer.acked} of {committer.attempts} commits acknowledged"
    assert not committer.regressions, f"committed offsets went backwards: {committer.regressions[:3]}"
    final = Committer(cluster.node(1).bootstrap, name, f"{name}-group")
    try:
        last = wait_until(final.read, 30, interval=0.5, what="the group's committed offsets")
    finally:
        final.consumer.close()
    assert min(last) >= committer.acked, f"committed {last} after acknowledging {committer.acked}"
    cluster.stop()
    check_replicas_identical(cluster, name, PARTITIONS)
    print(
        f"nemesis: {len(done)} faults ({dict(Counter(done))}), {total} acknowledged records checked, "
        f"{committer.acked} of {committer.attempts} commits acknowledged, {committer.reads} reads, none backwards"
    )
