"""Hostile and broken clients against one broker, on all three ports: the
other protocols' openings, TLS hellos, random bytes, declared sizes of
gigabytes, slow writers, clients that never read, and thousands of
connections opened and dropped. Each gets its error or a closed
connection; the broker's memory stays bounded, its descriptors and
connections come back to where they were, and real clients (librdkafka,
pika) carry on throughout. Cases that compat/kafka/test_hostile_input.py
and compat/amqp/test_protocol_errors.py already cover (truncated frames,
negative sizes, unknown APIs and methods) are not repeated here.

Figures (RSS, descriptors, cases) are printed; run with -s to see them."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import pika
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from common.broker import module_broker, unique_name, wait_until
from support import CLIENT_TIMEOUT_S, confluent_config, open_connections, open_fds, rss_mib

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
HTTP_GET = b"GET /api/overview HTTP/1.1\r\nHost: x\r\n\r\n"
# A TLS 1.2 ClientHello's first bytes: record type 22, version 3.1, length.
TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00\x00\x02\x00\x2f\x01\x00"


def kafka_request(api_key: int, version: int, correlation: int, body: bytes = b"") -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation, 7) + b"hostile"
    return struct.pack(">i", len(header) + len(body)) + header + body


API_VERSIONS = kafka_request(18, 0, 1)
METADATA_ALL = kafka_request(3, 1, 2, struct.pack(">i", -1))


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    with module_broker(tmp_path_factory, request) as instance:
        yield instance


def ports(broker) -> dict[str, int]:
    return {"kafka": broker.kafka_port, "amqp": broker.amqp_port, "http": broker.http_port}


def send_and_read(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Sends `data`, then reads until the broker closes or `timeout`;
    (what came back, whether the broker closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            return b"", True
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return received, False
            except OSError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False


def kafka_round_trip(broker, topic: str) -> None:
    """A real librdkafka produce and consume of one record."""
    producer = Producer(confluent_config(broker, **{"acks": "all"}))
    value = unique_name("check").encode()
    producer.produce(topic, value)
    assert producer.flush(CLIENT_TIMEOUT_S) == 0, "librdkafka could not produce"
    consumer = Consumer(confluent_config(broker, **{"group.id": unique_name("g"), "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    seen = False
    while not seen and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        seen = message is not None and not message.error() and message.value() == value
    consumer.close()
    assert seen, "librdkafka could not read back its record"


def amqp_round_trip(broker) -> None:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port,
                                                                   socket_timeout=CLIENT_TIMEOUT_S))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", queue, b"ping")
    method, _, body = channel.basic_get(queue, auto_ack=True)
    connection.close()
    assert body == b"ping"


def settle_connections(broker, count: int = 0, timeout: float = 30.0) -> None:
    wait_until(lambda: open_connections(broker) == count, timeout,
               what=f"the broker's client connections back to {count}")


OPENINGS = {
    "amqp header": AMQP_HEADER,
    "kafka ApiVersions": API_VERSIONS,
    "http get": HTTP_GET,
    "tls hello": TLS_HELLO,
}


OWN = {"kafka": "kafka ApiVersions", "amqp": "amqp header", "http": "http get"}


@pytest.mark.parametrize(("port_name", "opening"), [
    (port, opening) for port in OWN for opening in OPENINGS if OWN[port] != opening
])
def test_foreign_openings_get_an_answer_or_a_close(broker, port_name, opening):
    received, closed = send_and_read(ports(broker)[port_name], OPENINGS[opening])
    if port_name == "amqp":
        # AMQP answers a wrong header with the one it speaks, then closes.
        assert received == AMQP_HEADER and closed, received[:80]
    elif port_name == "http":
        assert received.startswith(b"HTTP/1.1 400") or (closed and received == b""), received[:80]
    else:
        assert closed and received == b"", received[:80]


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_on_every_port_leave_the_broker_serving(broker, seed):
    rng = random.Random(seed)
    for port in ports(broker).values():
        garbage = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096)))
        _, closed = send_and_read(port, garbage, timeout=5)
        # Either closed, or waiting for the rest of a plausible frame: both
        # are fine as long as the next client is served.
    amqp_round_trip(broker)
    assert broker.alive()


def test_gigabyte_sizes_are_refused_without_allocating(broker):
    pid = broker.proc.pid
    before = rss_mib(pid)
    # Kafka: 2 GiB request size; AMQP: a 4 GiB frame after the handshake;
    # HTTP: a 10 GB body announced on a POST.
    _, closed = send_and_read(broker.kafka_port, struct.pack(">i", 0x7FFF_FFF0) + b"\x00" * 64)
    assert closed
    amqp = socket.create_connection(("127.0.0.1", broker.amqp_port), timeout=10)
    amqp.sendall(AMQP_HEADER)
    time.sleep(0.2)
    amqp.sendall(b"\x01\x00\x00\xff\xff\xff\xf0" + b"\x00" * 64)
    amqp.settimeout(10)
    received = b""
    while chunk := amqp.recv(65536):
        received += chunk
    amqp.close()
    post = (b"POST /api/topics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nContent-Length: 10000000000\r\n\r\n{")
    answer, _ = send_and_read(broker.http_port, post)
    assert answer.startswith(b"HTTP/1.1 413") or answer == b"", answer[:100]
    after = rss_mib(pid)
    print(f"\ngigabyte sizes: RSS {before:.0f} -> {after:.0f} MiB")
    assert after - before < 64
    amqp_round_trip(broker)


def uvarint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out += bytes([(value & 0x7F) | 0x80])
        value >>= 7
    return out + bytes([value])


# Requests declaring billions of array elements in a few bytes. The Kafka
# codec sizes a vector from the count before reading it; this aborted the
# broker ("memory allocation of 65485618992 bytes failed") until huge
# allocations were reserved lazily (sluice-alloc). Found by fuzzing.
BILLIONS = {
    "metadata v1 topics": kafka_request(3, 1, 9, struct.pack(">i", 0x7FFF_FFFF) + b"\x00\x01x"),
    "produce v3 topics": kafka_request(0, 3, 10, struct.pack(">hhii", -1, -1, 1000, 0x7FFF_FFFF) + b"\x00"),
    "metadata v9 compact topics": struct.pack(">i", 15) + struct.pack(">hhih", 3, 9, 11, -1) + b"\x00"
    + uvarint(0xFFFF_FFFF) + b"\x00",
}


@pytest.mark.parametrize("case", list(BILLIONS))
def test_requests_declaring_billions_of_elements_are_refused(broker, case):
    pid = broker.proc.pid
    before = rss_mib(pid)
    _, closed = send_and_read(broker.kafka_port, BILLIONS[case])
    assert closed, "the connection stays open after a malformed request"
    assert broker.alive(), "the broker died on a request of a few bytes"
    assert rss_mib(pid) - before < 64
    kafka_round_trip(broker, unique_name("after-billions"))


def test_slow_writers_do_not_hold_up_other_clients(broker):
    topic = unique_name("slow")
    kafka_round_trip(broker, topic)
    settle_connections(broker)
    requests = {broker.kafka_port: METADATA_ALL, broker.amqp_port: AMQP_HEADER, broker.http_port: HTTP_GET}
    sockets = []
    for port, request in requests.items():
        for _ in range(30):
            sockets.append((socket.create_connection(("127.0.0.1", port), timeout=5), request))
    stop = threading.Event()

    def trickle():
        for position in range(5):
            if stop.is_set():
                return
            for sock, request in sockets:
                try:
                    sock.sendall(request[position:position + 1])
                except OSError:
                    pass
            time.sleep(1)

    writer = threading.Thread(target=trickle, daemon=True)
    writer.start()
    started = time.monotonic()
    kafka_round_trip(broker, topic)
    amqp_round_trip(broker)
    took = time.monotonic() - started
    stop.set()
    writer.join(10)
    for sock, _ in sockets:
        sock.close()
    settle_connections(broker)
    print(f"\n90 slow writers: real Kafka and AMQP round trips took {took:.2f} s meanwhile")


def test_a_kafka_client_that_never_reads_is_held_back_not_buffered(broker):
    pid = broker.proc.pid
    before = rss_mib(pid)
    sock = socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    burst = METADATA_ALL * 1000
    sent = 0
    sock.settimeout(3)
    deadline = time.monotonic() + 60
    try:
        while sent < 3_000_000 and time.monotonic() < deadline:
            sock.sendall(burst)
            sent += 1000
    except (socket.timeout, OSError):
        pass  # the broker stopped reading: its answers to us are stuck
    peak = rss_mib(pid)
    kafka_round_trip(broker, unique_name("other"))
    sock.close()
    settle_connections(broker)
    print(f"\nnever-reading Kafka client: {sent} requests ({sent * len(METADATA_ALL) >> 20} MiB) sent before "
          f"the broker stopped reading; RSS {before:.0f} -> {peak:.0f} MiB")
    assert sent < 3_000_000, "the broker kept reading requests it could not answer"
    assert peak - before < 64


def test_an_amqp_consumer_that_never_reads_is_held_back_not_buffered(broker):
    pid = broker.proc.pid
    queue = unique_name("unread")
    setup = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
    channel = setup.channel()
    channel.queue_declare(queue)
    body = b"u" * 10_000
    for _ in range(10_000):  # 100 MB queued
        channel.basic_publish("", queue, body)
    setup.close()
    before = rss_mib(pid)
    # A consumer without a prefetch limit whose socket is never read.
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
    connection._impl._transport._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    channel = connection.channel()
    channel.basic_consume(queue, lambda *_: None)
    time.sleep(3)  # pika reads nothing unless asked
    peak = rss_mib(pid)
    amqp_round_trip(broker)
    kafka_round_trip(broker, unique_name("beside"))
    connection._impl._transport._sock.close()
    settle_connections(broker)
    print(f"\nnever-reading AMQP consumer on 100 MB: RSS {before:.0f} -> {peak:.0f} MiB")
    assert peak - before < 64, "deliveries to a consumer that does not read piled up in memory"


def test_thousands_of_connections_opened_and_dropped(broker):
    pid = broker.proc.pid
    settle_connections(broker)
    fds_before, rss_before = open_fds(pid), rss_mib(pid)
    opened = 0
    for round_ in range(10):
        batch = []
        for port in ports(broker).values():
            for _ in range(100):
                try:
                    batch.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                    opened += 1
                except OSError:
                    pass
        for index, sock in enumerate(batch):
            try:
                # Some drop mid-handshake, some at once, some reset.
                if index % 3 == 0:
                    sock.sendall(AMQP_HEADER[:4])
                elif index % 3 == 1:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            sock.close()
    # Full AMQP handshakes, dropped without connection.close.
    for _ in range(100):
        connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
        connection._impl._transport._sock.close()
        opened += 1
    settle_connections(broker)
    wait_until(lambda: open_fds(pid) <= fds_before + 8, 30, what="descriptors back to where they were")
    rss_after = rss_mib(pid)
    print(f"\n{opened} connections opened and dropped: descriptors {fds_before} -> {open_fds(pid)}, "
          f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    assert rss_after - rss_before < 64
    amqp_round_trip(broker)
    kafka_round_trip(broker, unique_name("after"))
