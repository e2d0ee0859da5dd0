"""Helpers for the AMQP 0-9-1 compatibility tests: the external broker,
pika wrappers and a minimal raw AMQP framing (built on pika's own frame
codec) for tests that must misbehave on the wire. The broker process, child
processes, unique names and bounded waits come from compat/common/broker.py
and are re-exported here.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import pika
import pika.exceptions
import pika.frame
import pika.spec

from common.broker import (  # noqa: F401 (most are re-exported for the tests)
    Broker,
    child_env,
    die_with_parent,
    stop_process,
    unique_name,
    wait_until,
)

# Default deadline for a client-side wait (a delivery, a state change).
CLIENT_TIMEOUT_S = 15.0

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
    def amqp_address(self) -> str:
        return f"127.0.0.1:{self.amqp_port}"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{self.amqp_address}//"


def external_broker() -> ExternalBroker | None:
    address = os.environ.get("COMPAT_AMQP_EXTERNAL")
    return ExternalBroker(address) if address else None


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
    return wait_until(predicate, timeout, what=what,
                      pause=lambda interval: connection.process_data_events(time_limit=interval))


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
