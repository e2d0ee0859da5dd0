"""Helpers shared by the Kafka compatibility tests: the broker process, unique
names, bounded waits, client wrappers and a minimal raw Kafka framing.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# How long the broker may take to accept Kafka connections after spawn.
READY_TIMEOUT_S = 20.0
# How long a SIGTERM'd broker may take before it gets SIGKILL.
STOP_TIMEOUT_S = 15.0
# Default deadline for a client operation (flush, consume, admin future).
CLIENT_TIMEOUT_S = 30.0
# Lines of broker log attached to a failing test's report.
LOG_TAIL_LINES = 400


def broker_binary() -> Path:
    """The broker binary: `BROKER_BIN`, else target/debug/sluice.

    The variable is deliberately not named SLUICE_*: the broker reads every
    SLUICE_* variable as configuration and rejects unknown ones.
    """
    configured = os.environ.get("BROKER_BIN")
    path = Path(configured) if configured else REPO_ROOT / "target" / "debug" / "sluice"
    return path if path.is_absolute() else (Path.cwd() / path)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """Runs in the broker child before exec: SIGTERM it if pytest dies, so a
    killed test run (pytest-timeout, Ctrl-C twice) leaves no broker behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def broker_env() -> dict[str, str]:
    """The environment for a broker child: ours minus every SLUICE_* variable
    (the broker rejects unknown ones), plus SLUICE_LOG (kept from our
    environment if set, else `info`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["SLUICE_LOG"] = os.environ.get("SLUICE_LOG") or "info"
    return env


class BrokerStartError(RuntimeError):
    pass


class Broker:
    """One `sluice` process on a data dir and a Kafka port on 127.0.0.1.

    The port is kept across `stop()`/`start()` so a restarted broker is found
    at the same bootstrap address (and advertises the same one).
    """

    def __init__(self, data_dir: Path, name: str = "broker"):
        self.name = name
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.last_returncode: int | None = None
        self.last_stop_needed_kill = False

    @property
    def bootstrap(self) -> str:
        assert self.port is not None, "broker was never started"
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, start: int = 0, tail_lines: int | None = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(start)
                text = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return "(no broker log)"
        if tail_lines is not None:
            lines = text.splitlines()
            if len(lines) > tail_lines:
                text = "\n".join([f"... ({len(lines) - tail_lines} earlier lines cut)"] + lines[-tail_lines:])
        return text

    def _spawn(self, port: int) -> subprocess.Popen:
        binary = broker_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise BrokerStartError(
                f"broker binary {binary} is missing; build it with `cargo build -p sluice` "
                "or point BROKER_BIN at it"
            )
        log = open(self.log_path, "ab")
        try:
            log.write(f"\n===== {self.name}: starting on 127.0.0.1:{port} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            return subprocess.Popen(
                [
                    str(binary),
                    "--data-dir", str(self.data_dir),
                    "--kafka-listen", f"127.0.0.1:{port}",
                    "--amqp-listen", "127.0.0.1:0",
                    "--http-listen", "127.0.0.1:0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=broker_env(),
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def start(self) -> None:
        """Starts the broker and waits until its Kafka port accepts a TCP
        connection. On failure the process is stopped and the error carries
        the broker log."""
        assert not self.alive(), "broker already running"
        # A fresh port may be taken between our probe and the broker's bind;
        # only then is another port tried. A restart keeps its port.
        attempts = 3 if self.port is None else 1
        for attempt in range(attempts):
            port = self.port if self.port is not None else free_port()
            log_start = self.log_size()
            self.proc = self._spawn(port)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if port_accepts(port):
                    self.port = port
                    return
                time.sleep(0.1)
            exited = self.proc.poll() is not None
            self.stop()
            text = self.log_text(log_start)
            if exited and "in use" in text.lower() and attempt + 1 < attempts:
                continue
            reason = (
                f"exited with code {self.last_returncode}" if exited
                else f"did not accept Kafka connections on 127.0.0.1:{port} within {READY_TIMEOUT_S:.0f} s"
            )
            raise BrokerStartError(f"{self.name} {reason}; log {self.log_path}:\n{text}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.last_returncode
        self.last_stop_needed_kill = False
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.last_stop_needed_kill = True
                proc.kill()
                proc.wait(timeout=timeout)
        self.last_returncode = proc.returncode
        return proc.returncode


# --- names and waits --------------------------------------------------------------


def unique_name(hint: str) -> str:
    """A legal, unique Kafka topic or group name derived from `hint`."""
    cleaned = re.sub(r"[^a-zA-Z0-9._-]+", "-", hint).strip("-.")[:150]
    return f"{cleaned}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Polls `predicate` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- confluent-kafka ---------------------------------------------------------------


def confluent_config(broker: Broker, **extra) -> dict:
    config = {
        "bootstrap.servers": broker.bootstrap,
        "broker.address.family": "v4",
        # Failures surface in the test instead of as endless retries.
        "socket.timeout.ms": 20000,
    }
    config.update(extra)
    return config


def confluent_producer(broker: Broker, **extra):
    from confluent_kafka import Producer

    return Producer(confluent_config(broker, **{"message.timeout.ms": 20000, **extra}))


def confluent_consumer(broker: Broker, group: str | None = None, **extra):
    """A consumer for manual assignment (no group membership in this
    increment): group.id is set because confluent-kafka requires one, and
    auto-commit is off."""
    from confluent_kafka import Consumer

    return Consumer(confluent_config(
        broker,
        **{
            "group.id": group or unique_name("compat-consumer"),
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
            **extra,
        },
    ))


def produce_all(producer, records, timeout: float = CLIENT_TIMEOUT_S):
    """Produces `records` (dicts of Producer.produce kwargs), flushes and
    returns the delivery reports as (error, message) in delivery order.
    Fails unless every record got a report in time."""
    reports = []

    def on_delivery(err, msg):
        reports.append((err, msg))

    for record in records:
        # Serve delivery callbacks so a full local queue drains.
        while True:
            try:
                producer.produce(on_delivery=on_delivery, **record)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} of {len(records)} records still undelivered after {timeout} s"
    assert len(reports) == len(records), f"{len(reports)} delivery reports for {len(records)} records"
    return reports


def assert_all_delivered(reports):
    failed = [(err, msg.topic(), msg.partition()) for err, msg in reports if err is not None]
    assert not failed, f"{len(failed)} deliveries failed, first: {failed[:3]}"


def consume_confluent(consumer, count: int, timeout: float = CLIENT_TIMEOUT_S, settle: float = 0.0):
    """Polls until `count` messages arrived or `timeout` passed; raises on a
    consumer error. With `settle`, keeps polling that long after the count is
    reached to catch unexpected extra messages."""
    from confluent_kafka import KafkaError

    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        msg = consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        messages.append(msg)
    settle_deadline = time.monotonic() + settle
    while settle and time.monotonic() < settle_deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            messages.append(msg)
    return messages


def confluent_admin(broker: Broker):
    from confluent_kafka.admin import AdminClient

    return AdminClient(confluent_config(broker))


def create_topic_confluent(broker: Broker, name: str, partitions: int = 1, config: dict | None = None):
    from confluent_kafka.admin import NewTopic

    admin = confluent_admin(broker)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
        request_timeout=CLIENT_TIMEOUT_S,
    )
    assert set(futures) == {name}
    futures[name].result(timeout=CLIENT_TIMEOUT_S)
    return admin


# --- raw Kafka framing ---------------------------------------------------------------


def kafka_string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def compact_string(value: str) -> bytes:
    data = value.encode()
    return uvarint(len(data) + 1) + data


def request_frame(api_key: int, version: int, correlation_id: int, body: bytes,
                  client_id: str = "sluice-compat-raw", flexible: bool = False) -> bytes:
    """One length-prefixed request: header v1 (v2 when `flexible`) + body."""
    header = struct.pack(">hhi", api_key, version, correlation_id) + kafka_string(client_id)
    if flexible:
        header += uvarint(0)  # no tagged fields
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError(f"connection closed with {size} bytes still expected")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    assert 0 <= size < 64 << 20, f"implausible response size {size}"
    return recv_exact(sock, size)


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes (EOF or reset) within `timeout`; data the
    broker sends first is read and dropped."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


class Reader:
    """Sequential big-endian reader over a response body."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        assert self.pos + size <= len(self.data), (
            f"response truncated: need {size} bytes at {self.pos}, have {len(self.data) - self.pos}"
        )
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def int8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def int16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def int64(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            assert shift < 64, "uvarint too long"

    def string(self) -> str | None:
        size = self.int16()
        return None if size < 0 else self.take(size).decode()

    def tagged_fields(self) -> list[tuple[int, bytes]]:
        fields = []
        for _ in range(self.uvarint()):
            tag = self.uvarint()
            fields.append((tag, self.take(self.uvarint())))
        return fields

    def remaining(self) -> int:
        return len(self.data) - self.pos
