"""Where forwarding starts (`sluice.forward.start`): switched on for a
topic that already holds records, forwarding covers the records produced
from then on (`latest`, the default, as a RabbitMQ user expects of a new
binding) or the topic's history first (`earliest`). The starting point is
stored when the config is set, so a crash before the first forwarded batch
neither skips nor replays. Also: the README's forwarding example works as
pasted, read from README.md."""

from __future__ import annotations

import base64
import re
import subprocess
import time
import urllib.request

import pytest
from confluent_kafka import KafkaException

from common.broker import REPO_ROOT
from support import (
    CLIENT_TIMEOUT_S,
    connect,
    close_quietly,
    create_topic,
    get_all,
    produce_all,
    producer,
    set_topic_config,
    topic_config,
    wait_for_count,
)


def records(prefix: str, count: int):
    return [dict(key=b"k", value=f"{prefix}-{i}".encode()) for i in range(count)]


def bound_queue(ch, name: str) -> tuple[str, str]:
    exchange, queue = f"{name}-x", f"{name}-q"
    ch.exchange_declare(exchange, "direct", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, exchange, "k")
    return exchange, queue


@pytest.mark.parametrize("start", [None, "latest", "earliest"])
def test_forwarding_switched_on_later_starts_where_configured(broker, ch, name, start):
    exchange, queue = bound_queue(ch, name)
    topic = f"{name}-t"
    create_topic(broker, topic)
    produce_all(producer(broker), topic, records("old", 5))
    config = {"sluice.forward.exchange": exchange}
    if start:
        config["sluice.forward.start"] = start
    set_topic_config(broker, topic, config)
    assert topic_config(broker, topic)["sluice.forward.start"] == (start or "latest")
    produce_all(producer(broker), topic, records("new", 3))

    expected = [f"new-{i}".encode() for i in range(3)]
    if start == "earliest":
        expected = [f"old-{i}".encode() for i in range(5)] + expected
    assert wait_for_count(ch, queue, len(expected)) == len(expected)
    ch.connection.sleep(1.0)  # nothing more arrives
    assert [body for _, _, body in get_all(ch, queue)] == expected


def test_latest_is_kept_across_a_crash_before_the_first_batch(fresh_broker, name):
    connection = connect(fresh_broker)
    ch = connection.channel()
    exchange, queue = bound_queue(ch, name)
    close_quietly(connection)
    topic = f"{name}-t"
    create_topic(fresh_broker, topic)
    produce_all(producer(fresh_broker), topic, records("old", 4))
    set_topic_config(fresh_broker, topic, {"sluice.forward.exchange": exchange})
    # Killed before anything was forwarded; produced to after the restart.
    fresh_broker.kill()
    fresh_broker.start()
    produce_all(producer(fresh_broker), topic, records("new", 2))
    connection = connect(fresh_broker)
    try:
        ch = connection.channel()
        assert wait_for_count(ch, queue, 2) == 2
        ch.connection.sleep(1.0)
        assert [body for _, _, body in get_all(ch, queue)] == [b"new-0", b"new-1"]
    finally:
        close_quietly(connection)


def test_an_unknown_start_is_refused(broker, name):
    topic = f"{name}-t"
    with pytest.raises(KafkaException, match="earliest or latest"):
        create_topic(broker, topic, config={"sluice.forward.start": "beginning"})


def test_readme_forwarding_example_works_as_pasted(fresh_broker):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## One data plane", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    [example] = [block for block in blocks if "sluice.forward.exchange" in block]
    http = f"127.0.0.1:{fresh_broker.http_port}"
    script = example.replace("127.0.0.1:8080", http).replace("127.0.0.1:9092", fresh_broker.bootstrap)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The last command takes the message: its body and routing key are shown.
    # On a loaded machine forwarding may take longer than the example's
    # pause; the message must then still arrive in the queue.
    taken = done.stdout
    deadline = time.monotonic() + 15
    while '"payload"' not in taken and time.monotonic() < deadline:
        time.sleep(0.2)
        request = urllib.request.Request(
            f"http://{http}/api/queues/%2F/jobs-eu/get", data=b'{"count": 1}', method="POST",
            headers={"content-type": "application/json",
                     "authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
        with urllib.request.urlopen(request, timeout=5) as answer:
            taken = answer.read().decode()
    assert '"payload"' in taken and "job.eu" in taken, done.stdout + done.stderr + taken


def test_forwarding_switched_off_and_on_again_skips_the_gap(broker, ch, name):
    exchange, queue = bound_queue(ch, name)
    topic = f"{name}-t"
    create_topic(broker, topic, config={"sluice.forward.exchange": exchange})
    produce_all(producer(broker), topic, records("first", 2))
    assert wait_for_count(ch, queue, 2) == 2
    set_topic_config(broker, topic, {"sluice.forward.exchange": ""})
    ch.connection.sleep(1.0)  # the forwarder has stopped
    produce_all(producer(broker), topic, records("gap", 3))
    set_topic_config(broker, topic, {"sluice.forward.exchange": exchange})
    produce_all(producer(broker), topic, records("again", 2))
    assert wait_for_count(ch, queue, 4) == 4
    ch.connection.sleep(1.0)
    assert [body for _, _, body in get_all(ch, queue)] == [b"first-0", b"first-1", b"again-0", b"again-1"]
