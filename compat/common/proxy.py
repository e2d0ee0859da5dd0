"""A fault-injecting TCP proxy on 127.0.0.1 for the links between cluster
nodes: it listens on a free port and forwards every connection to one
upstream address, and a test can make it

- `heal()`: forward both ways at once (the default);
- `blackhole()`: forward nothing either way, keeping connections open and
  accepting new ones, as a network partition does (bytes held are
  delivered after `heal()`, as TCP retransmits them);
- `stall(direction)`: hold the bytes of one direction only ("up": from the
  connecting side to the upstream, "down": back), a one-way partition;
- `delay(seconds)`: forward each chunk after a delay;
- `sever()`: close every connection and close new ones at once (a peer
  that is gone, or a firewall that rejects).

One thread accepts, two threads per connection pump bytes; every wait is
bounded and `close()` stops them all.
"""

from __future__ import annotations

import select
import socket
import threading
import time

from common.broker import free_port

POLL = 0.05


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], name: str = "proxy"):
        self.upstream = upstream
        self.name = name
        self.port = free_port()
        self._held = {"up": False, "down": False}
        self._delay = 0.0
        self._severed = False
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=64)
        self._listener.settimeout(POLL * 4)
        self._thread = threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- faults ---------------------------------------------------------

    def heal(self) -> None:
        with self._lock:
            self._held = {"up": False, "down": False}
            self._delay = 0.0
            self._severed = False

    def blackhole(self) -> None:
        with self._lock:
            self._held = {"up": True, "down": True}

    def stall(self, direction: str) -> None:
        assert direction in ("up", "down"), direction
        with self._lock:
            self._held[direction] = True

    def delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = seconds

    def sever(self) -> None:
        with self._lock:
            self._severed = True
            doomed, self._sockets = self._sockets, []
        for sock in doomed:
            _close(sock)

    def close(self) -> None:
        self._closed.set()
        self.sever()
        _close(self._listener)
        self._thread.join(5)

    # --- forwarding -----------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # the accept timeout, or closed
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                # Checked under the lock sever() takes, so a connection
                # accepted meanwhile does not survive it.
                if self._severed:
                    _close(client)
                    _close(server)
                    continue
                self._sockets = [s for s in self._sockets if s.fileno() >= 0]
                self._sockets += [client, server]
            for sock in (client, server):
                # Blocking sends (a slow reader holds the sender back, as
                # TCP does); reads wait in select with a bound, and
                # sever()/close() shut the sockets to end any wait.
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for source, target, direction in ((client, server, "up"), (server, client, "down")):
                threading.Thread(
                    target=self._pump,
                    args=(source, target, direction),
                    name=f"{self.name}-{direction}",
                    daemon=True,
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, direction: str) -> None:
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select([source], [], [], POLL * 4)
                if not readable:
                    continue
                chunk = source.recv(65536)
                # Held bytes wait here (and nothing more is read meanwhile);
                # so does a close, which a partition does not carry either.
                while self._held[direction] and not self._closed.is_set() and not self._severed:
                    time.sleep(POLL)
                if not chunk:
                    break
                if self._severed or self._closed.is_set():
                    break
                if self._delay:
                    time.sleep(self._delay)
                target.sendall(chunk)
        except (OSError, ValueError):  # reset, or a socket closed meanwhile
            pass
        finally:
            _close(source)
            _close(target)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
