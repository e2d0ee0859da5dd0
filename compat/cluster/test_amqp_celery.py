"""Celery on a three-node cluster: 1,000 acks_late tasks queued through
node 1 (the queue's home), one worker connected to each node, and node 3
killed with SIGKILL midway and started again. Every task runs; a task
runs twice only if its first run was on node 3's worker, whose
connection died with its node before its acks reached the queue (the
home requeues what that node's consumers had not settled), and the queue
ends empty.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

from common.broker import unique_name, wait_until
from test_amqp_definitions import channel, queues_on, wait_everywhere

AMQP_SUITE = Path(__file__).resolve().parent.parent / "amqp"
TASKS = 1000
# Each task works this long, so the kill lands mid-run.
TASK_SLEEP_MS = 5
KILL_AFTER_RUNS = 300
DEADLINE_S = 180.0


def start_worker(node, queue: str, results: Path, log_path: Path, name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        COMPAT_AMQP_URL=node.amqp_url,
        COMPAT_CELERY_QUEUE=queue,
        COMPAT_RESULTS_DIR=str(results),
        COMPAT_TASK_SLEEP_MS=str(TASK_SLEEP_MS),
        PYTHONPATH=str(AMQP_SUITE),
        PYTHONDONTWRITEBYTECODE="1",
    )
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=solo",
             "--loglevel=INFO", "-Q", queue, "-n", f"{name}@%h"],
            cwd=AMQP_SUITE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )


def send_tasks(node, queue: str, count: int) -> None:
    from celery import Celery

    app = Celery("compat-cluster-producer", broker=node.amqp_url)
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=False)
    with app.producer_or_acquire() as producer:
        for i in range(count):
            app.send_task("compat.record", args=(i,), queue=queue, producer=producer)


def stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)


@pytest.mark.timeout(DEADLINE_S + 120)
def test_celery_workers_on_three_nodes_run_every_task_while_a_node_is_killed(fresh_cluster, tmp_path):
    cluster = fresh_cluster
    queue = unique_name("celery")
    results = tmp_path / "results"
    results.mkdir()
    log_path = tmp_path / "workers.log"
    send_tasks(cluster.node(1), queue, TASKS)
    wait_everywhere(cluster, lambda node, _: queue in queues_on(node), "the task queue")

    workers = {n: start_worker(cluster.node(n), queue, results, log_path, f"w{n}-{queue}") for n in (1, 2, 3)}

    def ran() -> int:
        return len(list(results.iterdir()))

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    try:
        wait_until(lambda: ran() >= KILL_AFTER_RUNS, DEADLINE_S, interval=0.1, what=f"{KILL_AFTER_RUNS} tasks run")
        cluster.node(3).kill()
        time.sleep(1.0)
        cluster.node(3).start()
        try:
            wait_until(lambda: ran() >= TASKS, DEADLINE_S, interval=0.2, what=f"all {TASKS} tasks run")
        except AssertionError as error:
            raise AssertionError(f"{error}; {ran()} ran. Workers' log tail:\n{log_tail()}") from None
    finally:
        for worker in workers.values():
            stop(worker)

    runs = {int(p.name): p.read_text().splitlines() for p in results.iterdir()}
    assert set(runs) == set(range(TASKS)), f"{TASKS - len(runs)} tasks never ran"
    twice = {n: pids for n, pids in runs.items() if len(pids) > 1}
    assert all(pids[0] == str(workers[3].pid) for pids in twice.values()), (
        f"tasks first run outside node 3's worker ran again: "
        f"{ {n: pids for n, pids in twice.items() if pids[0] != str(workers[3].pid)} }"
    )
    assert all(len(pids) <= 2 for pids in runs.values()), "a task ran three times"
    ran_by = {n: sum(1 for pids in runs.values() if str(w.pid) in pids) for n, w in workers.items()}
    print(f"celery: runs per node's worker {ran_by}, {len(twice)} tasks ran twice", flush=True)
    assert all(ran_by.values()), f"a worker ran nothing: {ran_by}"
    with channel(cluster.node(1)) as ch:
        declared = ch.queue_declare(queue, passive=True).method
        assert declared.message_count == 0, declared
