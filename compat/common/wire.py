"""A minimal raw Kafka framing for tests that speak the protocol byte by
byte: request frames (header v1, or v2 for flexible versions), length-
prefixed responses, varints, strings, and a sequential reader. Every wait
has a deadline."""

from __future__ import annotations

import socket
import struct
import time


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
