"""The Celery application the Celery test's worker runs (`celery -A
celery_app worker`). Configured through the environment by the test:
COMPAT_AMQP_URL (the broker), COMPAT_CELERY_QUEUE (the queue to serve) and
COMPAT_RESULTS_DIR (where each task run appends a line to a file named for
its argument, so a task that ran twice shows as a two-line file) and,
optionally, COMPAT_TASK_SLEEP_MS (how long each task works).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

app = Celery("compat", broker=os.environ["COMPAT_AMQP_URL"])
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue=os.environ["COMPAT_CELERY_QUEUE"],
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=False,
    worker_hijack_root_logger=False,
)

RESULTS = Path(os.environ["COMPAT_RESULTS_DIR"])
TASK_SLEEP_S = int(os.environ.get("COMPAT_TASK_SLEEP_MS", "0")) / 1000


@app.task(name="compat.record")
def record(n: int) -> int:
    if TASK_SLEEP_S:
        time.sleep(TASK_SLEEP_S)
    with open(RESULTS / str(n), "a", encoding="utf-8") as out:
        out.write(f"{os.getpid()}\n")
    return n
