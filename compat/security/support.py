"""Helpers for the security suite: a broker with every secured listener
(Kafka SASL_SSL, SASL_PLAINTEXT and SSL beside its PLAINTEXT one, AMQPS),
client configurations for them, the `sluice users` CLI, an admin API
client that speaks HTTP or HTTPS, TLS probes, and readers of the broker's
`login failed` lines.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common.broker import Broker, broker_binary, child_env, free_port, port_accepts
from common.broker import unique_name as _unique_name
from common.pki import Pki, serial_of

# Default deadline for a client operation (flush, consume, admin future).
CLIENT_TIMEOUT_S = 30.0
# The Kafka listeners a secure broker has beside its PLAINTEXT one.
EXTRA_LISTENERS = ("SASL_SSL", "SASL_PLAINTEXT", "SSL")
# The user the module brokers' configuration bootstraps as administrator
# (guest stays too: the suites' helpers log in as guest).
ADMIN = ("admin", "Adm1n-pass-phrase")


def unique_name(hint: str) -> str:
    return _unique_name(hint, max_hint=120)


class SecureBroker(Broker):
    """A broker with Kafka SASL_SSL, SASL_PLAINTEXT and SSL listeners (or
    `listeners`) beside its main one (PLAINTEXT unless the settings give
    `kafka.security_protocol`, so admin and readiness paths need no
    credentials) and an AMQPS listener, all on free ports of 127.0.0.1,
    serving `pki`'s server certificate."""

    def __init__(self, data_dir: Path, name: str, pki: Pki, settings: dict[str, str] | None = None,
                 listeners=EXTRA_LISTENERS, amqps: bool = True):
        self.pki = pki
        self.listener_ports = {protocol: free_port() for protocol in listeners}
        self.amqps_port = free_port() if amqps else None
        base = {
            "tls.cert_file": str(pki.server.cert),
            "tls.key_file": str(pki.server.key),
        }
        if listeners:
            base["kafka.listeners"] = ",".join(f"{p}://127.0.0.1:{port}" for p, port in self.listener_ports.items())
        if amqps:
            base["amqp.tls_listen"] = f"127.0.0.1:{self.amqps_port}"
        super().__init__(data_dir, name=name, settings={**base, **(settings or {})})

    @property
    def main_protocol(self) -> str:
        return self.settings.get("kafka.security_protocol", "PLAINTEXT")

    def address(self, protocol: str) -> str:
        """The bootstrap address of the Kafka listener for `protocol`."""
        if protocol in self.listener_ports:
            return f"127.0.0.1:{self.listener_ports[protocol]}"
        assert protocol == self.main_protocol, f"{self.name} has no {protocol} listener"
        return self.bootstrap

    def start(self) -> None:
        super().start()
        # Broker.start waits for the main listeners; the extra ones are
        # bound in the same startup, but a test must not race them.
        extra = [*self.listener_ports.values(), *([self.amqps_port] if self.amqps_port else [])]
        deadline = time.monotonic() + 10
        while not all(port_accepts(port) for port in extra):
            assert time.monotonic() < deadline, f"{self.name}: listeners {extra} not accepting after 10 s"
            time.sleep(0.1)


@contextlib.contextmanager
def running(data_dir: Path, name: str, pki: Pki, settings: dict[str, str] | None = None, **options):
    """A started SecureBroker, stopped by PID when the `with` ends."""
    instance = SecureBroker(data_dir, name, pki, settings, **options)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


# --- Kafka clients -----------------------------------------------------------------


def kafka_config(broker: SecureBroker, protocol: str, mechanism: str | None = None,
                 user: tuple[str, str] | None = None, **extra) -> dict:
    """A confluent-kafka configuration for `broker`'s `protocol` listener,
    trusting the suite's CA, logging in as `user` with `mechanism` on the
    SASL listeners."""
    config = {
        "bootstrap.servers": broker.address(protocol),
        "broker.address.family": "v4",
        "security.protocol": protocol,
        "socket.timeout.ms": 20000,
    }
    if "SSL" in protocol:
        config["ssl.ca.location"] = str(broker.pki.ca_file)
    if "SASL" in protocol:
        assert mechanism and user, "a SASL listener needs a mechanism and a user"
        config.update({"sasl.mechanisms": mechanism, "sasl.username": user[0], "sasl.password": user[1]})
    config.update(extra)
    return config


def produce_and_consume(config: dict, topic: str, group: str, count: int = 5) -> list[bytes]:
    """Produces `count` records with acks=all through a client of
    `config`, then reads them back with a consumer in group `group`;
    returns the values read. The topic is created by the first produce
    (auto-create), so every step goes through the listener under test."""
    from confluent_kafka import Consumer, KafkaError, Producer

    values = [f"{topic}-{i}".encode() for i in range(count)]
    producer = Producer({**config, "acks": "all", "message.timeout.ms": 20000})
    failures = []
    for value in values:
        producer.produce(topic, value, on_delivery=lambda err, msg: err and failures.append(err))
    assert producer.flush(CLIENT_TIMEOUT_S) == 0, "records still undelivered"
    assert not failures, failures
    consumer = Consumer({**config, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    try:
        consumer.subscribe([topic])
        seen = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(seen) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {msg.error()}")
            seen.append(msg.value())
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return seen


def first_client_error(config: dict, timeout: float = 15.0):
    """The first error a confluent-kafka producer of `config` reports
    through its error callback (librdkafka reports a failed SASL login or
    TLS handshake there), or None if none came within `timeout`."""
    from confluent_kafka import Producer

    errors = []
    producer = Producer({**config, "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + timeout
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    # Stop its reconnect attempts before they pile up in the broker's log.
    del producer
    return errors[0] if errors else None


def login_error(config: dict, timeout: float = 15.0):
    """Connects a confluent-kafka client of `config` and returns None once
    Metadata came through (the login worked), or the first error it
    reported (a failed SASL login is KafkaError._AUTHENTICATION)."""
    from confluent_kafka import KafkaException, Producer

    errors = []
    producer = Producer({**config, "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            producer.poll(0)
            if errors:
                return errors[0]
            try:
                producer.list_topics(timeout=0.5)
                return None
            except KafkaException:
                producer.poll(0.1)
        raise AssertionError(f"neither Metadata nor an error within {timeout} s")
    finally:
        del producer


def metadata_brokers(config: dict) -> dict[int, str]:
    """node id -> host:port, as Metadata through `config`'s listener
    advertises the brokers."""
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(config).list_topics(timeout=CLIENT_TIMEOUT_S)
    return {node: f"{b.host}:{b.port}" for node, b in metadata.brokers.items()}


# --- the admin API and the CLI -----------------------------------------------------


@dataclass
class Answer:
    status: int
    body: object
    text: str


def api(broker: Broker, method: str, path: str, body=None, credentials=("guest", "guest"),
        context: ssl.SSLContext | None = None) -> Answer:
    """One admin API call, over HTTPS when `context` is given; the status
    and the decoded answer whatever the status."""
    scheme = "https" if context is not None else "http"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{broker.http_port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if credentials:
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    text = payload.decode()
    try:
        parsed = json.loads(text) if text else None
    except json.JSONDecodeError:
        parsed = text
    return Answer(status, parsed, text)


# Every permission on a virtual host (RabbitMQ's `".*" ".*" ".*"`).
FULL_PERMISSIONS = {"configure": ".*", "write": ".*", "read": ".*"}


def add_user(broker: Broker, name: str, password: str, tags: str = "",
             permissions: dict | None = FULL_PERMISSIONS) -> None:
    """Adds a user through the admin API as guest (an administrator),
    with `permissions` on the default virtual host (None: none, so AMQP
    refuses the user every virtual host), as `rabbitmqctl add_user` then
    `set_permissions` would."""
    answer = api(broker, "PUT", f"/api/users/{name}", {"password": password, "tags": tags})
    assert answer.status == 201, (answer.status, answer.body)
    if permissions is not None:
        answer = api(broker, "PUT", f"/api/permissions/%2F/{name}", permissions)
        assert answer.status == 201, (answer.status, answer.body)


def sluice_users(broker: Broker, *args: str, user: tuple[str, str] | None = None, stdin: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
    """`sluice users --http 127.0.0.1:PORT [--user NAME:PW] ARGS...`."""
    command = [str(broker_binary()), "users", "--http", f"127.0.0.1:{broker.http_port}"]
    if user:
        command += ["--user", f"{user[0]}:{user[1]}"]
    done = subprocess.run([*command, *args], input=stdin, capture_output=True, text=True, timeout=30,
                          env=child_env(), stdin=None if stdin is not None else subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, f"{command + list(args)} exited {done.returncode}: {done.stderr}"
    return done


# --- TLS probes --------------------------------------------------------------------


def client_context(pki: Pki, cert=None, ca_file: Path | None = None) -> ssl.SSLContext:
    """A client context checking the server against the suite's CA (or
    `ca_file`) and the name localhost, presenting `cert` (an Issued) if
    given."""
    context = ssl.create_default_context(cafile=str(ca_file or pki.ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


def handshake(port: int, context: ssl.SSLContext, timeout: float = 10.0) -> tuple[str, int]:
    """A TLS handshake with 127.0.0.1:`port` as server name localhost:
    (the protocol version, the serial of the certificate the server
    presented). Raises what the handshake raised."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version(), serial_of(tls.getpeercert(binary_form=True))


def served_serial(port: int, pki: Pki) -> int:
    return handshake(port, client_context(pki))[1]


# --- the broker's log --------------------------------------------------------------


def lines_matching(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line)]


def field(line: str, name: str) -> str:
    """A `name=value` field of a log line's event (quotes stripped): the
    fields after the message, not those of the connection's span (whose
    `peer` carries the port)."""
    event = line.split("login failed", 1)[-1]
    match = re.search(rf"\b{name}=(\"[^\"]*\"|\S+)", event)
    assert match, f"no field {name} in {line}"
    return match.group(1).strip('"')


def login_failures(broker: Broker, since: int) -> list[str]:
    """The WARN `login failed` lines the broker wrote after log offset
    `since`."""
    return [line for line in lines_matching(broker.log_text(since, tail_lines=None), r"login failed")
            if " WARN " in line]


def wait_for_log(broker: Broker, since: int, pattern: str, timeout: float = 10.0) -> list[str]:
    """Waits until the log after `since` has a line matching `pattern`."""
    deadline = time.monotonic() + timeout
    while True:
        found = lines_matching(broker.log_text(since, tail_lines=None), pattern)
        if found:
            return found
        assert time.monotonic() < deadline, (
            f"no log line matching {pattern!r} within {timeout} s:\n{broker.log_text(since)}")
        time.sleep(0.1)
