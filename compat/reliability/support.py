"""Helpers of the reliability suite: the broker process's resources read
from /proc, Kafka and AMQP clients with short timeouts, and a tmpfs of a
given size for the disk-full tests.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import urllib.request
import socket
import subprocess
import time
from pathlib import Path

import pika

CLIENT_TIMEOUT_S = 15.0


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_connections(broker) -> int:
    """Client connections the broker counts now (admin API)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.http_port}/api/connections?page_size=1",
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
    )
    with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S) as answer:
        return json.load(answer)["total"]


def wait_connections(broker, count: int, timeout: float = CLIENT_TIMEOUT_S) -> None:
    """Waits until the broker counts exactly `count` client connections in
    two looks 200 ms apart (a connection just accepted is counted a moment
    after the client's connect returns)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < 2:
        now = open_connections(broker)
        seen = seen + 1 if now == count else 0
        if seen < 2:
            if time.monotonic() > deadline:
                raise AssertionError(f"the broker counts {now} connections, not {count}, after {timeout} s")
            time.sleep(0.2)


def confluent_config(broker, **extra) -> dict:
    config = {
        "bootstrap.servers": broker.bootstrap,
        "socket.timeout.ms": 10000,
        "reconnect.backoff.max.ms": 500,
        "log_level": 3,
    }
    config.update(extra)
    return config


def pika_connection(broker, **extra) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", broker.amqp_port, connection_attempts=1, socket_timeout=CLIENT_TIMEOUT_S, **extra
        )
    )


def connect_raw(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A plain TCP connection from `source` (any 127.0.0.0/8 address works
    on Linux), for counting connections per IP address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the peer closed `sock` (EOF or reset) within `timeout`;
    False if it stays open."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` for the duration (needs root);
    unmounted afterwards, also on failure."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


def can_mount() -> bool:
    return os.geteuid() == 0


def fill(path: Path, leave_bytes: int) -> int:
    """Writes `path` until the file system has about `leave_bytes` free
    (stopping at ENOSPC); returns the bytes written."""
    stats = os.statvfs(path.parent)
    free = stats.f_bavail * stats.f_frsize
    target = max(0, free - leave_bytes)
    chunk = b"\0" * (1 << 20)
    written = 0
    with open(path, "wb") as out:
        try:
            while written < target:
                written += out.write(chunk[: min(len(chunk), target - written)])
            out.flush()
            os.fsync(out.fileno())
        except OSError:
            pass
    return written


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
