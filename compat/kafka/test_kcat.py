"""kcat (Debian's 1.7.1 on librdkafka 2.0.2) against the broker.

This old librdkafka is kept on purpose: it fails on an ApiVersions v3
response that writes default-valued tagged fields (a Tansu 0.6 bug), so every
test here starts by getting through the ApiVersions handshake. Topics are
auto-created by Metadata (kcat -L -t) and by Produce (kcat -P).
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from support import wait_until

KCAT_TIMEOUT_S = 30


def run_kcat(kcat, broker, *args, stdin: str | None = None, timeout: float = KCAT_TIMEOUT_S):
    command = [kcat, "-b", broker.bootstrap, "-X", "broker.address.family=v4", *args]
    try:
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"{' '.join(command)} did not finish within {timeout} s; "
            f"stdout: {err.stdout!r} stderr: {err.stderr!r}"
        ) from None
    return result


def check(result):
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result


def metadata(kcat, broker, topic: str | None = None) -> dict:
    args = ["-L", "-J", "-m", "10"]
    if topic is not None:
        args += ["-t", topic, "-X", "allow.auto.create.topics=true"]
    return json.loads(check(run_kcat(kcat, broker, *args)).stdout)


def produce_lines(kcat, broker, topic, lines, *extra):
    result = check(run_kcat(kcat, broker, "-P", "-t", topic, "-K:", *extra, stdin="".join(f"{line}\n" for line in lines)))
    assert "ERROR" not in result.stderr and "failed" not in result.stderr.lower(), result.stderr


def consume_lines(kcat, broker, topic):
    result = check(run_kcat(kcat, broker, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k=%s\\n"))
    return result.stdout.splitlines()


def test_kcat_metadata_lists_the_broker_and_auto_creates_a_topic(kcat, broker, topic):
    def listed():
        data = metadata(kcat, broker, topic)
        topics = {t["topic"]: t for t in data.get("topics", [])}
        entry = topics.get(topic)
        if entry and "error" not in entry and entry.get("partitions"):
            return data
        return None

    # Apache Kafka may answer the creating Metadata request with
    # LEADER_NOT_AVAILABLE, so a few attempts are allowed.
    data = wait_until(listed, timeout=20, interval=0.5, what=f"topic {topic} in kcat -L")
    brokers = data["brokers"]
    assert len(brokers) == 1, brokers
    assert brokers[0]["name"] == broker.bootstrap, brokers
    broker_id = brokers[0]["id"]
    entry = next(t for t in data["topics"] if t["topic"] == topic)
    assert [p["partition"] for p in entry["partitions"]] == [0], "auto-created topics get 1 partition"
    partition = entry["partitions"][0]
    assert "error" not in partition, partition
    assert partition["leader"] == broker_id

    # Listing all topics (no -t) shows the created topic too.
    everything = metadata(kcat, broker)
    assert topic in {t["topic"] for t in everything["topics"]}


def test_kcat_keyed_messages_round_trip_in_order(kcat, broker, topic):
    lines = [f"key-{i % 7}=value {i}" for i in range(100)]
    produce_lines(kcat, broker, topic, [line.replace("=", ":", 1) for line in lines])
    assert consume_lines(kcat, broker, topic) == lines


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_kcat_compressed_batches_round_trip(kcat, broker, topic, codec):
    lines = [f"k{i}=compressible payload {'x' * 200} #{i}" for i in range(50)]
    produce_lines(kcat, broker, topic, [line.replace("=", ":", 1) for line in lines], "-z", codec)
    assert consume_lines(kcat, broker, topic) == lines


def test_kcat_queries_offsets_by_timestamp(kcat, broker, topic):
    produce_lines(kcat, broker, topic, [f"a{i}:early {i}" for i in range(5)])
    time.sleep(0.05)
    boundary_ms = int(time.time() * 1000)
    time.sleep(0.05)
    produce_lines(kcat, broker, topic, [f"b{i}:late {i}" for i in range(3)])

    def offset_for(timestamp: int) -> int:
        result = check(run_kcat(kcat, broker, "-Q", "-t", f"{topic}:0:{timestamp}"))
        match = re.search(r"\[0\]\s+offset\s+(-?\d+)", result.stdout)
        assert match, f"unexpected kcat -Q output: {result.stdout!r} {result.stderr!r}"
        return int(match.group(1))

    assert offset_for(boundary_ms) == 5, "first record at or after the timestamp"
    assert offset_for(-2) == 0, "earliest"
    assert offset_for(-1) == 8, "latest"
