"""Consume-transform-produce for the transaction tests (one node in
compat/kafka, three in compat/cluster): one round of it, and a driver of
compat/kafka/eos_worker.py, the application of the exactly-once crash
tests, while the test does its damage between polls."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

WORKER = Path(__file__).resolve().parent.parent / "kafka" / "eos_worker.py"


def transform_round(producer, consumer, read: list, sink: str, commit: bool, timeout: float) -> None:
    """One transaction of confluent-kafka `producer`: b"out-" + each of
    the messages `read` (by `consumer`, from one partition) to partition 0
    of `sink`, and the consumer's position after them sent to the same
    transaction; committed, or aborted."""
    from confluent_kafka import TopicPartition

    producer.begin_transaction()
    for message in read:
        producer.produce(sink, b"out-" + message.value(), partition=0)
    last = read[-1]
    producer.send_offsets_to_transaction(
        [TopicPartition(last.topic(), last.partition(), last.offset() + 1)],
        consumer.consumer_group_metadata(),
        timeout,
    )
    if commit:
        producer.commit_transaction(timeout)
    else:
        producer.abort_transaction(timeout)


def read_progress(progress: Path) -> tuple[int, int, int]:
    """(records done, transactions, restarts) the worker last wrote."""
    try:
        done, transactions, restarts = progress.read_text().split()
        return int(done), int(transactions), int(restarts)
    except (OSError, ValueError):
        return 0, 0, 0


def run_worker(
    args: list[str],
    progress: Path,
    timeout_s: float,
    stuck_s: float,
    between: Callable[[tuple[int, int, int]], None],
) -> tuple[int | None, int]:
    """Runs the worker with `args` (BOOTSTRAP SOURCE SINK GROUP
    TRANSACTIONAL_ID RECORDS, PROGRESS is added) until it exits 0 or
    `timeout_s` pass, starting it again when it fails or writes no progress
    for `stuck_s` (stuck in the client, confluentinc/librdkafka#5456: an
    operator restarts a hung application); calls `between` with the
    progress every 0.1 s. Returns its last exit code and its restarts."""
    command = [sys.executable, str(WORKER), *args, str(progress)]
    deadline = time.monotonic() + timeout_s
    worker = subprocess.Popen(command)
    restarts = 0
    seen, changed = read_progress(progress), time.monotonic()
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            current = read_progress(progress)
            if current != seen:
                seen, changed = current, now
            if worker.poll() is not None:
                if worker.returncode == 0:
                    break
                worker = subprocess.Popen(command)
                restarts += 1
                changed = now
            elif now - changed > stuck_s:
                worker.kill()
                worker.wait(timeout=10)
                worker = subprocess.Popen(command)
                restarts += 1
                changed = now
            between(seen)
            time.sleep(0.1)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    return worker.returncode, restarts


def assert_each_once_in_order(outputs: list[bytes], records: int, context: str) -> None:
    """The checker of the crash tests: the output holds b"out-0" ...
    b"out-<records - 1>" once each, in input order (`context` says what
    the run did, for the failure's message)."""
    expected = [f"out-{i}".encode() for i in range(records)]
    duplicates = len(outputs) - len(set(outputs))
    missing = sorted(set(expected) - set(outputs))
    assert duplicates == 0 and not missing, (
        f"{duplicates} outputs twice, {len(missing)} missing (first {missing[:5]}), {context}")
    assert outputs == expected, "in input order"
