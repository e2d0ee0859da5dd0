"""Garbage on the Kafka port.

Contract: random bytes, an oversized or negative length prefix, a malformed
request body, an unknown API key or a frame cut short close (at most) the
connection that sent them; the broker keeps running, allocates nothing for an
oversized prefix, and keeps serving other connections, including while a
half-sent frame is pending on another one.
"""

from __future__ import annotations

import random
import socket
import struct

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from support import (
    Broker,
    assert_all_delivered,
    confluent_consumer,
    confluent_producer,
    consume_confluent,
    kafka_string,
    produce_all,
    recv_frame,
    request_frame,
    unique_name,
    wait_closed,
)

CLOSE_TIMEOUT_S = 10


def connect(broker) -> socket.socket:
    return socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=10)


def send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the broker may close before reading everything


def rss_bytes(broker: Broker) -> int:
    with open(f"/proc/{broker.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def assert_still_serving(broker: Broker) -> None:
    """The process lives and a real client produces and consumes."""
    assert broker.alive(), f"broker died (exit code {broker.proc.returncode if broker.proc else '?'})"
    topic = unique_name("still-serving")
    producer = confluent_producer(broker)
    values = [f"alive-{i}".encode() for i in range(10)]
    assert_all_delivered(produce_all(producer, [{"topic": topic, "value": v} for v in values]))
    consumer = confluent_consumer(broker)
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        assert [m.value() for m in consume_confluent(consumer, len(values))] == values
    finally:
        consumer.close()
    assert broker.alive()


def api_versions_round_trip(sock: socket.socket, correlation_id: int) -> None:
    sock.sendall(request_frame(18, 0, correlation_id, b""))
    assert struct.unpack(">i", recv_frame(sock)[:4])[0] == correlation_id


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_leave_the_broker_serving(broker, seed):
    rng = random.Random(seed)
    with connect(broker) as sock:
        send_ignoring_reset(sock, rng.randbytes(64 * 1024))
        # Whatever the bytes meant, the broker must not hang on to them
        # forever or die; most seeds are closed at once.
        wait_closed(sock, 1.0)
    assert_still_serving(broker)


def test_two_gigabyte_length_prefix_closes_the_connection_without_allocating(broker):
    before = rss_bytes(broker)
    with connect(broker) as sock:
        send_ignoring_reset(sock, struct.pack(">i", 0x7FFFFFFF) + b"\x00\x12\x00\x00" * 4)
        assert wait_closed(sock, CLOSE_TIMEOUT_S), "an oversized frame must close the connection"
    assert rss_bytes(broker) < before + (256 << 20), "the broker allocated for a 2 GB frame"
    assert_still_serving(broker)


def test_negative_length_prefix_closes_the_connection(broker):
    with connect(broker) as sock:
        send_ignoring_reset(sock, struct.pack(">i", -1) + b"\x00" * 16)
        assert wait_closed(sock, CLOSE_TIMEOUT_S)
    assert_still_serving(broker)


def test_malformed_request_body_closes_only_that_connection(broker):
    with connect(broker) as bystander:
        api_versions_round_trip(bystander, 1)
        with connect(broker) as sock:
            # Metadata v1 claiming a million topics, none of them present.
            send_ignoring_reset(sock, request_frame(3, 1, 5, struct.pack(">i", 1_000_000)))
            assert wait_closed(sock, CLOSE_TIMEOUT_S)
        # A string whose length runs past the frame.
        with connect(broker) as sock:
            send_ignoring_reset(sock, request_frame(3, 1, 6, struct.pack(">i", 1) + struct.pack(">h", 500) + b"abc"))
            assert wait_closed(sock, CLOSE_TIMEOUT_S)
        api_versions_round_trip(bystander, 2)
    assert_still_serving(broker)


def test_unknown_api_key_closes_the_connection(broker):
    with connect(broker) as sock:
        send_ignoring_reset(sock, request_frame(9999, 0, 1, b""))
        assert wait_closed(sock, CLOSE_TIMEOUT_S)
    assert_still_serving(broker)


def test_frame_shorter_than_a_header_closes_the_connection(broker):
    with connect(broker) as sock:
        send_ignoring_reset(sock, struct.pack(">i", 3) + b"\x00\x12\x00")
        assert wait_closed(sock, CLOSE_TIMEOUT_S)
    assert_still_serving(broker)


def test_truncated_frame_does_not_block_other_clients(broker):
    header = struct.pack(">hhi", 3, 1, 9) + kafka_string("truncated")
    # Promise 1000 bytes, send the header only, and keep the socket open.
    with connect(broker) as sock:
        sock.sendall(struct.pack(">i", 1000) + header)
        assert_still_serving(broker)
    # The peer vanished mid-frame.
    with connect(broker) as sock:
        sock.sendall(struct.pack(">i", 1000) + header)
        sock.shutdown(socket.SHUT_WR)
        assert wait_closed(sock, CLOSE_TIMEOUT_S)
    assert_still_serving(broker)
