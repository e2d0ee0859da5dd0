"""The broker process for the compatibility suites: one `sluice` on a data
dir with its listeners on free ports of 127.0.0.1, started and stopped by
PID, plus unique names and bounded waits.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# How long the broker may take to accept Kafka and AMQP connections after spawn.
READY_TIMEOUT_S = 20.0
# How long a SIGTERM'd process may take before it gets SIGKILL.
STOP_TIMEOUT_S = 15.0
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


# Lowest port of the kernel's ephemeral range (outgoing connections' ports).
def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports this process handed out: never given twice, so one node's HTTP port
# cannot also be another node's cluster port before either has bound it.
_handed: set[int] = set()


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago and never handed out
    before by this process, chosen below the ephemeral range: a broker
    restarted on its old ports (after kill -9) must find them free, and a
    client's outgoing connection may take any ephemeral port while the
    broker is down."""
    low = _ephemeral_low()
    for _ in range(400):
        port = random.randint(10000, low - 1) if low > 11000 else 0
        if port in _handed:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = probe.getsockname()[1]
        if port not in _handed:
            _handed.add(port)
            return port
    raise RuntimeError("no free port on 127.0.0.1 after 400 tries")


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def die_with_parent() -> None:
    """Runs in a child before exec: SIGTERM it if pytest dies, so a killed
    test run (pytest-timeout, Ctrl-C twice) leaves no broker or worker
    behind."""
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


def _terminate(proc: subprocess.Popen, timeout: float) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True if it took the SIGKILL."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
        return True


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int:
    """Stops a child by its PID: SIGTERM, then SIGKILL after `timeout`."""
    _terminate(proc, timeout)
    return proc.returncode


class BrokerStartError(RuntimeError):
    pass


class Broker:
    """One `sluice` process on a data dir, with its Kafka, AMQP and HTTP
    listeners on free ports of 127.0.0.1.

    The ports are kept across `stop()`/`start()` so a restarted broker is
    found at the same addresses (and advertises the same Kafka one).
    """

    def __init__(
        self,
        data_dir: Path,
        name: str = "broker",
        settings: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.name = name
        # Extra environment (SLUICE_TEST_* fault injection), on every start.
        self.env = dict(env or {})
        # Configuration keys passed as `--set KEY=VALUE`. Groups form at
        # once rather than after Kafka's 3 s wait for more members, unless a
        # test asks for the delay.
        self.settings = {"kafka.group_initial_rebalance_delay": "0s", **(settings or {})}
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.kafka_port: int | None = None
        self.amqp_port: int | None = None
        self.http_port: int | None = None
        self.mqtt_port: int | None = None
        self.stomp_port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.last_returncode: int | None = None
        self.last_stop_needed_kill = False

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap address."""
        assert self.kafka_port is not None, "broker was never started"
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def amqp_address(self) -> str:
        assert self.amqp_port is not None, "broker was never started"
        return f"127.0.0.1:{self.amqp_port}"

    @property
    def amqp_url(self) -> str:
        """An AMQP URL for kombu and Celery (guest, vhost "/")."""
        return f"amqp://guest:guest@{self.amqp_address}//"

    def listeners(self) -> str:
        """Where it listens, for reports; `?` before its first start."""
        if self.kafka_port is None:
            return "?"
        return f"Kafka {self.bootstrap}, AMQP {self.amqp_address}"

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

    @property
    def mqtt_address(self) -> tuple[str, int]:
        """Host and port of the MQTT listener."""
        assert self.mqtt_port is not None, "broker was never started"
        return ("127.0.0.1", self.mqtt_port)

    @property
    def stomp_address(self) -> tuple[str, int]:
        """Host and port of the STOMP listener."""
        assert self.stomp_port is not None, "broker was never started"
        return ("127.0.0.1", self.stomp_port)

    def _spawn(self, kafka: int, amqp: int, http: int, mqtt: int, stomp: int) -> subprocess.Popen:
        binary = broker_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise BrokerStartError(
                f"broker binary {binary} is missing; build it with `cargo build -p sluice` "
                "or point BROKER_BIN at it"
            )
        log = open(self.log_path, "ab")
        try:
            log.write(
                f"\n===== {self.name}: starting, Kafka on 127.0.0.1:{kafka}, AMQP on 127.0.0.1:{amqp}"
                f" at {time.strftime('%H:%M:%S')} =====\n".encode()
            )
            log.flush()
            return subprocess.Popen(
                [
                    str(binary),
                    "--data-dir", str(self.data_dir),
                    "--kafka-listen", f"127.0.0.1:{kafka}",
                    "--amqp-listen", f"127.0.0.1:{amqp}",
                    "--http-listen", f"127.0.0.1:{http}",
                    "--mqtt-listen", f"127.0.0.1:{mqtt}",
                    "--stomp-listen", f"127.0.0.1:{stomp}",
                    *[f"--set={key}={value}" for key, value in self.settings.items()],
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=child_env(**self.env),
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()

    def start(self) -> None:
        """Starts the broker and waits until its Kafka, AMQP and HTTP ports
        accept a TCP connection. On failure the process is stopped and the error
        carries the broker log."""
        assert not self.alive(), "broker already running"
        # Fresh ports may be taken between our probe and the broker's bind;
        # only then are other ports tried. A restart keeps its ports.
        attempts = 3 if self.kafka_port is None else 1
        for attempt in range(attempts):
            if self.kafka_port is None:
                ports = (free_port(), free_port(), free_port(), free_port(), free_port())
            else:
                ports = (self.kafka_port, self.amqp_port, self.http_port, self.mqtt_port, self.stomp_port)
            log_start = self.log_size()
            self.proc = self._spawn(*ports)
            waiting = {"Kafka": ports[0], "AMQP": ports[1], "HTTP": ports[2], "MQTT": ports[3], "STOMP": ports[4]}
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                waiting = {protocol: port for protocol, port in waiting.items() if not port_accepts(port)}
                if not waiting:
                    self.kafka_port, self.amqp_port, self.http_port, self.mqtt_port, self.stomp_port = ports
                    return
                time.sleep(0.1)
            exited = self.proc.poll() is not None
            self.stop()
            text = self.log_text(log_start)
            if exited and "in use" in text.lower() and attempt + 1 < attempts:
                continue
            reason = (
                f"exited with code {self.last_returncode}" if exited
                else "did not accept " + " and ".join(
                    f"{protocol} connections on 127.0.0.1:{port}" for protocol, port in waiting.items()
                ) + f" within {READY_TIMEOUT_S:.0f} s"
            )
            raise BrokerStartError(f"{self.name} {reason}; log {self.log_path}:\n{text}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.last_returncode
        self.last_stop_needed_kill = _terminate(proc, timeout)
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


# --- for the suites' fixtures -----------------------------------------------------
# Each stops its broker by PID (SIGTERM, then SIGKILL) when the `with` ends,
# whatever the outcome.


@contextlib.contextmanager
def _running_broker(data_dir, name: str, settings: dict[str, str] | None = None):
    instance = Broker(data_dir, name=name, settings=settings)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def module_broker(tmp_path_factory, request, settings: dict[str, str] | None = None):
    """A started broker for the requesting test module (pytest's
    tmp_path_factory and request), with configuration `settings` given as
    `--set`."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    return _running_broker(tmp_path_factory.mktemp(module) / "data", f"broker[{module}]", settings)


def per_test_broker(tmp_path, request, settings: dict[str, str] | None = None):
    """A started broker for the requesting test alone (pytest's tmp_path
    and request), with configuration `settings` given as `--set`."""
    return _running_broker(tmp_path / "data", f"broker[{request.node.name}]", settings)


# --- names and waits --------------------------------------------------------------


def unique_name(hint: str, max_hint: int = 100) -> str:
    """A unique name derived from `hint`: at most `max_hint` characters of
    it, limited to [a-zA-Z0-9._-] (legal as a Kafka topic or group and as an
    AMQP queue or exchange), then a random suffix."""
    cleaned = re.sub(r"[^a-zA-Z0-9._-]+", "-", hint).strip("-.")[:max_hint]
    return f"{cleaned}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition", pause=time.sleep):
    """Polls `predicate` until it returns a truthy value or `timeout` passes,
    calling `pause(interval)` between polls (by default it sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        pause(interval)


def api_get(broker: Broker, path: str, timeout: float = 30.0):
    """GET of a broker's (or a cluster node's) admin API as guest: the
    decoded JSON answer."""
    import base64
    import json
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{broker.http_port}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.load(answer)


def sluice_cli(broker: Broker, *args: str, timeout: float = 30.0) -> str:
    """`sluice ARGS --http 127.0.0.1:PORT` against a broker's (or a cluster
    node's) admin API as guest: its standard output; fails on a non-zero
    exit."""
    done = subprocess.run([str(broker_binary()), *args, "--http", f"127.0.0.1:{broker.http_port}"],
                          capture_output=True, text=True, timeout=timeout, env=child_env(),
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"sluice {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done.stdout
