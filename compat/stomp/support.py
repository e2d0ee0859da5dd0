"""Helpers of the STOMP suite: a stomp.py connection whose listener keeps
every frame, with waits that have deadlines, and raw frames for the
tests that speak the wire themselves."""

from __future__ import annotations

import queue
import socket
import time

import stomp

from common.broker import Broker, unique_name, wait_until  # noqa: F401  (re-exported)

WAIT_S = 15.0


class Recorder(stomp.ConnectionListener):
    def __init__(self):
        self.messages: queue.Queue = queue.Queue()
        self.receipts: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.disconnected = False

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers.get("receipt-id"))

    def on_error(self, frame):
        self.errors.put(frame)

    def on_disconnected(self):
        self.disconnected = True


class Client:
    """A stomp.py connection (`version` 1.0, 1.1 or 1.2) with a recorder."""

    def __init__(self, broker: Broker, version: str = "1.2", heartbeats=(0, 0), login="guest",
                 passcode="guest"):
        classes = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}
        kwargs = {"host_and_ports": [broker.stomp_address], "auto_content_length": True}
        if version != "1.0":
            kwargs["heartbeats"] = heartbeats
        self.version = version
        self.connection = classes[version](**kwargs)
        self.recorder = Recorder()
        self.connection.set_listener("recorder", self.recorder)
        self.login = login
        self.passcode = passcode

    def connect(self):
        self.connection.connect(self.login, self.passcode, wait=True)
        return self

    def take(self, count: int, timeout: float = WAIT_S) -> list:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            try:
                out.append(self.recorder.messages.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {count} messages: {[m.body for m in out]}") from None
        return out

    def nothing_within(self, seconds: float) -> None:
        try:
            frame = self.recorder.messages.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {frame.headers} {frame.body!r}")

    def receipt(self, receipt_id: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.recorder.receipts.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no RECEIPT {receipt_id}") from None
            if got == receipt_id:
                return

    def ack(self, frame) -> None:
        headers = frame.headers
        if self.version == "1.2":
            self.connection.ack(headers["ack"])
        elif self.version == "1.1":
            self.connection.ack(headers["message-id"], headers["subscription"])
        else:
            self.connection.ack(headers["message-id"])

    def nack(self, frame, **extra) -> None:
        headers = frame.headers
        if self.version == "1.2":
            self.connection.nack(headers["ack"], **extra)
        else:
            self.connection.nack(headers["message-id"], headers["subscription"], **extra)

    def close(self) -> None:
        try:
            self.connection.disconnect()
        except Exception:  # noqa: BLE001 - already closed by the test
            pass


def raw_frame(command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [command] + [f"{k}:{v}" for k, v in (headers or {}).items()]
    return ("\n".join(lines) + "\n\n").encode() + body + b"\0"


def open_raw(broker: Broker) -> socket.socket:
    sock = socket.create_connection(broker.stomp_address, timeout=WAIT_S)
    sock.sendall(raw_frame("CONNECT", {"accept-version": "1.2", "host": "/", "login": "guest",
                                       "passcode": "guest"}))
    assert read_frame(sock).startswith(b"CONNECTED"), "CONNECTED"
    return sock


def read_frame(sock: socket.socket) -> bytes:
    data = b""
    while b"\0" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data.lstrip(b"\n")


def closed_within(sock: socket.socket, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False
