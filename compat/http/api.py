"""A small client of the admin API for the tests: JSON in and out, basic
authentication, the status and headers kept for assertions."""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

GUEST = ("guest", "guest")


@dataclass
class Answer:
    status: int
    body: object
    headers: dict = field(default_factory=dict)

    @property
    def error(self) -> dict:
        assert isinstance(self.body, dict) and "error" in self.body, self.body
        return self.body["error"]


def call(broker, method: str, path: str, body=None, credentials=GUEST, raw: bytes | None = None,
         headers: dict | None = None) -> Answer:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{broker.http_port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if credentials:
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, payload, answer_headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, payload, answer_headers = error.code, error.read(), dict(error.headers)
    text = payload.decode()
    try:
        parsed = json.loads(text) if text else None
    except json.JSONDecodeError:
        parsed = text
    return Answer(status, parsed, {k.lower(): v for k, v in answer_headers.items()})


def post_oversized(broker, path: str, body: bytes) -> int | None:
    """POSTs `body` over a plain socket and returns the answer's status, or
    None when the broker closed the connection without one. A server may
    refuse a body over its limit from the Content-Length alone and close
    while the client is still sending (urllib then fails with EPIPE before
    it reads the answer), so write errors are not the test's outcome."""
    token = base64.b64encode(f"{GUEST[0]}:{GUEST[1]}".encode()).decode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Basic {token}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", broker.http_port), timeout=15) as sock:
        try:
            sock.sendall(head.encode() + body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            return None
    parts = answer.split(maxsplit=2)
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None


def get(broker, path: str, **extra) -> Answer:
    return call(broker, "GET", path, **extra)


def ok(answer: Answer, status: int = 200):
    assert answer.status == status, (answer.status, answer.body)
    return answer.body


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def metrics(broker) -> dict[tuple[str, frozenset], float]:
    """/metrics parsed: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/metrics", timeout=15) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        if "{" in series:
            name, labels = series.split("{", 1)
            pairs = []
            for part in _split_labels(labels.rstrip("}")):
                key, raw = part.split("=", 1)
                pairs.append((key, json.loads(raw)))
            samples[(name, frozenset(pairs))] = float(value)
        else:
            samples[(series, frozenset())] = float(value)
    return samples


def _split_labels(text: str):
    """Label pairs of a series; values are quoted and may hold commas."""
    part, quoted, escaped = "", False, False
    for char in text:
        if escaped:
            part += char
            escaped = False
        elif char == "\\":
            part += char
            escaped = True
        elif char == '"':
            part += char
            quoted = not quoted
        elif char == "," and not quoted:
            yield part
            part = ""
        else:
            part += char
    if part:
        yield part


def sample(samples, name: str, **labels) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no series {name}{labels}; have {[k for k in samples if k[0] == name][:5]}"
    return samples[key]
