"""Helpers shared by the AMQP 0-9-1 compatibility tests: the broker process,
unique names, bounded waits, pika wrappers and a minimal raw AMQP framing
(built on pika's own frame codec) for tests that must misbehave on the wire.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pika.frame
import pika.spec

REPO_ROOT = Path(__file__).resolve().parents[2]

# How long the broker may take to accept AMQP connections after spawn.
READY_TIMEOUT_S = 20.0
# How long a SIGTERM'd broker may take before it gets SIGKILL.
STOP_TIMEOUT_S = 15.0
# Default deadline for a client-side wait (a delivery, a state change).
CLIENT_TIMEOUT_S = 15.0
# Lines of broker log attached to a failing test's report.
LOG_TAIL_LINES = 400

# Reply codes (AMQP 0-9-1 constants, as RabbitMQ uses them).
NO_ROUTE = 312
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
CHANNEL_ERROR = 504
NOT_ALLOWED = 530

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


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


def die_with_parent() -> None:
    """Runs in a child before exec: SIGTERM it if pytest dies, so a killed
    test run leaves no broker or worker behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: ours minus every SLUICE_*
    variable (the broker rejects unknown ones), plus SLUICE_LOG (kept from
    our environment if set, else `info`) and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["SLUICE_LOG"] = os.environ.get("SLUICE_LOG") or "info"
    env.update(extra)
    return env


class BrokerStartError(RuntimeError):
    pass


class Broker:
    """One `sluice` process on a data dir, with its AMQP, Kafka and HTTP
    listeners on free ports of 127.0.0.1.

    The ports are kept across `stop()`/`start()` so a restarted broker is
    found at the same address.
    """

    def __init__(self, data_dir: Path, name: str = "broker"):
        self.name = name
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.amqp_port: int | None = None
        self.kafka_port: int | None = None
        self.http_port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.last_returncode: int | None = None

    @property
    def address(self) -> str:
        assert self.amqp_port is not None, "broker was never started"
        return f"127.0.0.1:{self.amqp_port}"

    @property
    def url(self) -> str:
        """An AMQP URL for kombu and Celery (guest, vhost "/")."""
        return f"amqp://guest:guest@{self.address}//"

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

    def _spawn(self, amqp: int, kafka: int, http: int) -> subprocess.Popen:
        binary = broker_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise BrokerStartError(
                f"broker binary {binary} is missing; build it with `cargo build -p sluice` "
                "or point BROKER_BIN at it"
            )
        log = open(self.log_path, "ab")
        try:
            log.write(
                f"\n===== {self.name}: starting, AMQP on 127.0.0.1:{amqp} at {time.strftime('%H:%M:%S')} =====\n".encode()
            )
            log.flush()
            return subprocess.Popen(
                [
                    str(binary),
                    "--data-dir", str(self.data_dir),
                    "--kafka-listen", f"127.0.0.1:{kafka}",
                    "--amqp-listen", f"127.0.0.1:{amqp}",
                    "--http-listen", f"127.0.0.1:{http}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=child_env(),
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()

    def start(self) -> None:
        """Starts the broker and waits until its AMQP port accepts a TCP
        connection. On failure the process is stopped and the error carries
        the broker log."""
        assert not self.alive(), "broker already running"
        # Fresh ports may be taken between our probe and the broker's bind;
        # only then are other ports tried. A restart keeps its ports.
        attempts = 3 if self.amqp_port is None else 1
        for attempt in range(attempts):
            if self.amqp_port is None:
                ports = (free_port(), free_port(), free_port())
            else:
                ports = (self.amqp_port, self.kafka_port, self.http_port)
            log_start = self.log_size()
            self.proc = self._spawn(*ports)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if port_accepts(ports[0]):
                    self.amqp_port, self.kafka_port, self.http_port = ports
                    return
                time.sleep(0.1)
            exited = self.proc.poll() is not None
            self.stop()
            text = self.log_text(log_start)
            if exited and "in use" in text.lower() and attempt + 1 < attempts:
                continue
            reason = (
                f"exited with code {self.last_returncode}" if exited
                else f"did not accept AMQP connections on 127.0.0.1:{ports[0]} within {READY_TIMEOUT_S:.0f} s"
            )
            raise BrokerStartError(f"{self.name} {reason}; log {self.log_path}:\n{text}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.last_returncode
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self.last_returncode = proc.returncode
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL (a crash: nothing is flushed or closed); returns the exit
        code."""
        proc, self.proc = self.proc, None
        assert proc is not None, "broker is not running"
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
        self.last_returncode = proc.returncode
        return proc.returncode


class ExternalBroker:
    """A broker this suite did not start (COMPAT_AMQP_EXTERNAL=HOST:PORT),
    e.g. a RabbitMQ node, to check the tests' expectations against it.
    Tests that must stop or kill the broker skip."""

    def __init__(self, address: str):
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1", "COMPAT_AMQP_EXTERNAL must be 127.0.0.1:PORT"
        self.amqp_port = int(port)
        self.name = f"external broker {address}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.amqp_port}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.address}//"


def external_broker() -> ExternalBroker | None:
    address = os.environ.get("COMPAT_AMQP_EXTERNAL")
    return ExternalBroker(address) if address else None


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int:
    """Stops a child by its PID: SIGTERM, then SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


# --- names and waits --------------------------------------------------------------


def unique_name(hint: str) -> str:
    """A legal, unique queue or exchange name derived from `hint`."""
    cleaned = re.sub(r"[^a-zA-Z0-9._-]+", "-", hint).strip("-.")[:100]
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


# --- pika --------------------------------------------------------------------------


def connection_parameters(broker: Broker, **extra) -> pika.ConnectionParameters:
    params = dict(
        host="127.0.0.1",
        port=broker.amqp_port,
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=10,
        blocked_connection_timeout=CLIENT_TIMEOUT_S,
    )
    params.update(extra)
    return pika.ConnectionParameters(**params)


def connect(broker: Broker, **extra) -> pika.BlockingConnection:
    """A pika blocking connection as guest to vhost "/"."""
    return pika.BlockingConnection(connection_parameters(broker, **extra))


def close_quietly(connection) -> None:
    with contextlib.suppress(Exception):
        if connection.is_open:
            connection.close()


@contextlib.contextmanager
def channel_error(code: int):
    """Expects the block to end with the broker closing the channel with
    `code` (pika raises ChannelClosedByBroker on the next blocking call)."""
    with_error = None
    try:
        yield
    except pika.exceptions.ChannelClosedByBroker as error:
        with_error = error
    assert with_error is not None, f"expected the broker to close the channel with {code}; it did not"
    assert with_error.reply_code == code, (
        f"expected channel.close {code}, got {with_error.reply_code} {with_error.reply_text!r}"
    )


def queue_exists(connection, queue: str) -> bool:
    """Passive declare on a throwaway channel: False on 404."""
    channel = connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == NOT_FOUND, f"passive declare of {queue}: {error}"
        return False
    channel.close()
    return True


def message_count(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def get_all(channel, queue: str, auto_ack: bool = True, limit: int = 100_000):
    """basic.get until get-empty; returns (method, properties, body) triples."""
    out = []
    for _ in range(limit):
        method, properties, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            return out
        out.append((method, properties, body))
    raise AssertionError(f"{queue} still not empty after {limit} gets")


def bodies(channel, queue: str) -> list[bytes]:
    return [body for _, _, body in get_all(channel, queue)]


def collect(connection, channel, queue: str, count: int, timeout: float = CLIENT_TIMEOUT_S,
            auto_ack: bool = False, settle: float = 0.0, **consume_args):
    """Consumes from `queue` until `count` deliveries arrived (or `timeout`
    passed); with `settle`, keeps going that long to catch extra ones.
    Returns (method, properties, body) triples; the consumer is cancelled,
    unacked deliveries stay unacked."""
    got = []

    def on_message(_ch, method, properties, body):
        got.append((method, properties, body))

    tag = channel.basic_consume(queue, on_message, auto_ack=auto_ack, **consume_args)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(time_limit=min(0.2, max(0.0, deadline - time.monotonic())))
    settle_deadline = time.monotonic() + settle
    while settle and time.monotonic() < settle_deadline:
        connection.process_data_events(time_limit=0.1)
    channel.basic_cancel(tag)
    return got


def pump(connection, predicate, timeout: float = CLIENT_TIMEOUT_S, what: str = "condition"):
    """Runs pika's I/O loop until `predicate()` is truthy or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        connection.process_data_events(time_limit=0.1)


# --- raw AMQP framing ----------------------------------------------------------------


class RawAmqp:
    """A bare socket speaking AMQP frames through pika's codec, for tests
    that must break the protocol. Reads are bounded by `timeout`."""

    def __init__(self, broker: Broker, timeout: float = CLIENT_TIMEOUT_S):
        self.sock = socket.create_connection(("127.0.0.1", broker.amqp_port), timeout=timeout)
        self.timeout = timeout
        self.buffer = b""
        self.frame_max = 131072
        self.heartbeat = 0

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def send_method(self, channel: int, method):
        self.send(pika.frame.Method(channel, method).marshal())

    def recv_some(self, deadline: float) -> bytes:
        """Bytes from the socket; b"" at EOF. Raises on the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the broker before the deadline")
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def read_frame(self, timeout: float | None = None):
        """The next frame (pika.frame object); ConnectionError at EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            consumed, frame = pika.frame.decode_frame(self.buffer)
            if frame is not None:
                self.buffer = self.buffer[consumed:]
                return frame
            chunk = self.recv_some(deadline)
            if not chunk:
                raise ConnectionError(f"EOF; {len(self.buffer)} undecoded bytes: {self.buffer[:64]!r}")
            self.buffer += chunk

    def read_method(self, timeout: float | None = None, skip_heartbeats: bool = True):
        while True:
            frame = self.read_frame(timeout)
            if isinstance(frame, pika.frame.Heartbeat) and skip_heartbeats:
                continue
            assert isinstance(frame, pika.frame.Method), f"expected a method frame, got {frame}"
            return frame

    def wait_eof(self, timeout: float) -> bytes:
        """Reads until the broker closes the socket; returns what it sent.
        Raises AssertionError if the socket is still open at `timeout`."""
        deadline = time.monotonic() + timeout
        data = self.buffer
        self.buffer = b""
        while True:
            try:
                chunk = self.recv_some(deadline)
            except (TimeoutError, socket.timeout):
                raise AssertionError(
                    f"broker kept the connection open for {timeout} s; it sent {data[:200]!r}"
                ) from None
            if not chunk:
                return data
            data += chunk

    def handshake(self, user: str = "guest", password: str = "guest", vhost: str = "/",
                  frame_max: int = 131072, heartbeat: int = 0):
        """Protocol header, start/start-ok (PLAIN), tune/tune-ok, open.
        Returns the broker's reply to start-ok (Tune, or Close on a bad
        login) and to open (OpenOk or Close; None after a Close)."""
        self.send(PROTOCOL_HEADER)
        start = self.read_method().method
        assert isinstance(start, pika.spec.Connection.Start), start
        self.send_method(0, pika.spec.Connection.StartOk(
            client_properties={"product": "sluice-compat-raw",
                               "capabilities": {"authentication_failure_close": True}},
            mechanism="PLAIN",
            response=f"\0{user}\0{password}",
            locale="en_US",
        ))
        tune = self.read_method().method
        if not isinstance(tune, pika.spec.Connection.Tune):
            return tune, None
        self.frame_max = frame_max
        self.heartbeat = heartbeat
        self.send_method(0, pika.spec.Connection.TuneOk(
            channel_max=tune.channel_max or 2047, frame_max=frame_max, heartbeat=heartbeat))
        self.send_method(0, pika.spec.Connection.Open(virtual_host=vhost))
        return tune, self.read_method().method

    def open_channel(self, channel: int = 1):
        self.send_method(channel, pika.spec.Channel.Open())
        reply = self.read_method()
        assert reply.channel_number == channel and isinstance(reply.method, pika.spec.Channel.OpenOk), reply

    def expect_connection_close(self, timeout: float | None = None):
        """Reads frames until connection.close; replies close-ok and returns it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            frame = self.read_frame(max(0.01, deadline - time.monotonic()))
            if isinstance(frame, pika.frame.Method) and isinstance(frame.method, pika.spec.Connection.Close):
                with contextlib.suppress(OSError):
                    self.send_method(0, pika.spec.Connection.CloseOk())
                return frame.method
