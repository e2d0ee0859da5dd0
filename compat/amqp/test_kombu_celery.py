"""kombu and Celery over AMQP against the real broker: a kombu
producer/consumer round trip (with and without publisher confirms), and a
Celery worker (a subprocess, solo pool, acks_late) that runs 1,000 tasks,
each exactly once, none lost; and a worker killed with SIGKILL mid-run
whose unacked tasks a second worker runs. Workers are stopped by PID.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import (
    CLIENT_TIMEOUT_S,
    die_with_parent,
    child_env,
    close_quietly,
    connect,
    stop_process,
    wait_until,
)

HERE = Path(__file__).resolve().parent
CELERY_TASKS = 1000
# The worker's start (imports, connect, declare) plus 1,000 tasks.
CELERY_DEADLINE_S = 120.0


@pytest.mark.parametrize("confirm_publish", [False, True], ids=["plain", "confirms"])
def test_kombu_producer_consumer_round_trip(broker, name, confirm_publish):
    from kombu import Connection, Exchange, Queue

    exchange = Exchange(f"{name}-x", "direct", durable=False)
    queue = Queue(f"{name}-q", exchange, routing_key="rk", durable=False)
    with Connection(broker.amqp_url, transport_options={"confirm_publish": confirm_publish}) as connection:
        producer = connection.Producer(serializer="json")
        for i in range(20):
            producer.publish(
                {"n": i, "text": "héllo"},
                exchange=exchange,
                routing_key="rk",
                declare=[queue],
                headers={"attempt": i},
                correlation_id=f"c-{i}",
                retry=False,
            )
        received = []

        def on_message(body, message):
            received.append((body, message.headers, message.properties.get("correlation_id"),
                             message.content_type, message.delivery_info["routing_key"]))
            message.ack()

        with connection.Consumer(queue, callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + CLIENT_TIMEOUT_S
            while len(received) < 20 and time.monotonic() < deadline:
                try:
                    connection.drain_events(timeout=0.5)
                except socket.timeout:
                    pass
        assert [r[0] for r in received] == [{"n": i, "text": "héllo"} for i in range(20)]
        assert [r[1] for r in received] == [{"attempt": i} for i in range(20)]
        assert [r[2] for r in received] == [f"c-{i}" for i in range(20)]
        assert {r[3] for r in received} == {"application/json"}
        assert {r[4] for r in received} == {"rk"}
        queue.bind(connection).delete()


def test_kombu_simple_queue(broker, name):
    from kombu import Connection

    with Connection(broker.amqp_url) as connection:
        simple = connection.SimpleQueue(f"{name}-q")
        for i in range(5):
            simple.put({"i": i})
        got = []
        for _ in range(5):
            message = simple.get(block=True, timeout=CLIENT_TIMEOUT_S)
            got.append(message.payload)
            message.ack()
        assert got == [{"i": i} for i in range(5)]
        assert simple.qsize() == 0
        simple.clear()
        simple.close()


def start_worker(name: str, queue: str, results: Path, log_path: Path, broker, sleep_ms: int = 0):
    env = child_env(
        COMPAT_AMQP_URL=broker.amqp_url,
        COMPAT_CELERY_QUEUE=queue,
        COMPAT_RESULTS_DIR=str(results),
        COMPAT_TASK_SLEEP_MS=str(sleep_ms),
        PYTHONPATH=str(HERE),
    )
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=solo",
             "--loglevel=INFO", "-Q", queue, "-n", f"{name}@%h"],
            cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )


def send_tasks(broker, queue: str, count: int):
    from celery import Celery

    producer_app = Celery("compat-producer", broker=broker.amqp_url)
    producer_app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=False)
    with producer_app.producer_or_acquire() as producer:
        for i in range(count):
            producer_app.send_task("compat.record", args=(i,), queue=queue, producer=producer)


def wait_for_runs(worker, results: Path, count: int, log_path: Path, timeout: float):
    def enough():
        if worker.poll() is not None:
            raise AssertionError(f"celery worker exited with {worker.returncode}:\n{log_path.read_text()[-4000:]}")
        return len(list(results.iterdir())) >= count

    try:
        wait_until(enough, timeout, interval=0.1, what=f"{count} Celery tasks to run")
    except AssertionError as error:
        raise AssertionError(f"{error}; {len(list(results.iterdir()))} ran. Worker log tail:\n"
                             f"{log_path.read_text()[-4000:]}") from None


def run_counts(results: Path) -> dict[int, int]:
    return {int(path.name): len(path.read_text().splitlines()) for path in results.iterdir()}


def assert_queue_drained(broker, queue: str):
    conn = connect(broker)
    try:
        declared = conn.channel().queue_declare(queue, passive=True).method
        assert (declared.message_count, declared.consumer_count) == (0, 0)
    finally:
        close_quietly(conn)


@pytest.mark.timeout(CELERY_DEADLINE_S + 60)
def test_celery_worker_runs_every_task_exactly_once(broker, name, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    queue = f"{name}-celery"
    log_path = tmp_path / "worker.log"
    send_tasks(broker, queue, CELERY_TASKS)
    worker = start_worker(name, queue, results, log_path, broker)
    try:
        wait_for_runs(worker, results, CELERY_TASKS, log_path, CELERY_DEADLINE_S)
    finally:
        code = stop_process(worker)
    assert code == 0, f"worker exit code {code}:\n{log_path.read_text()[-4000:]}"

    runs = run_counts(results)
    assert set(runs) == set(range(CELERY_TASKS)), "some tasks never ran"
    twice = {n: count for n, count in runs.items() if count != 1}
    assert twice == {}, f"{len(twice)} tasks ran more than once"
    # Nothing left behind: every task message was acked.
    assert_queue_drained(broker, queue)


# Tasks of the kill test, each working this long, and when the first worker dies.
KILL_TEST_TASKS = 300
KILL_TEST_SLEEP_MS = 5
KILL_AFTER_RUNS = 100
# Sanity bound on tasks run twice. Only tasks the first worker ran may run
# again, but not only the 4 it had prefetched: acks it wrote just before
# SIGKILL can be lost with its socket (a close with unread data is a TCP
# reset, and the broker may drop what it had not read yet), so a few
# finished tasks come back too — RabbitMQ 3.10 reran 6 here.
MAX_RERUNS = 25


@pytest.mark.timeout(CELERY_DEADLINE_S + 60)
def test_celery_tasks_of_a_killed_worker_run_on_another(broker, name, tmp_path):
    """acks_late: a worker killed with SIGKILL loses nothing; its unacked
    tasks go back to the queue and a second worker runs them."""
    results = tmp_path / "results"
    results.mkdir()
    queue = f"{name}-celery"
    log_path = tmp_path / "worker.log"
    send_tasks(broker, queue, KILL_TEST_TASKS)
    first = start_worker(f"{name}-1", queue, results, log_path, broker, sleep_ms=KILL_TEST_SLEEP_MS)
    try:
        wait_for_runs(first, results, KILL_AFTER_RUNS, log_path, CELERY_DEADLINE_S)
    finally:
        first.kill()
        first.wait(timeout=CLIENT_TIMEOUT_S)
    ran_before = len(list(results.iterdir()))
    assert ran_before < KILL_TEST_TASKS, "the first worker finished before it was killed"
    second = start_worker(f"{name}-2", queue, results, log_path, broker, sleep_ms=KILL_TEST_SLEEP_MS)
    try:
        wait_for_runs(second, results, KILL_TEST_TASKS, log_path, CELERY_DEADLINE_S)
    finally:
        code = stop_process(second)
    assert code == 0, f"worker exit code {code}:\n{log_path.read_text()[-4000:]}"

    runs = run_counts(results)
    assert set(runs) == set(range(KILL_TEST_TASKS)), "tasks of the killed worker were lost"
    assert all(count <= 2 for count in runs.values()), "a task ran three times"
    twice = sorted(n for n, count in runs.items() if count == 2)
    first_runs = {n: (results / str(n)).read_text().splitlines()[0] for n in twice}
    assert all(pid == str(first.pid) for pid in first_runs.values()), (
        f"tasks the killed worker never ran were run twice: {first_runs}"
    )
    assert len(twice) <= MAX_RERUNS, f"{len(twice)} tasks ran twice: {twice}"
    assert_queue_drained(broker, queue)
