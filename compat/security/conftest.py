"""Fixtures for the security suite.

`pki` makes the run's certificates once (a trusted CA, the broker's
certificate, good, expired and untrusted client certificates) in a
temporary directory. `secure_broker` is one broker per test module with
every secured listener (SASL_SSL, SASL_PLAINTEXT, SSL, AMQPS) beside its
PLAINTEXT and AMQP ones; `own_broker` starts brokers for one test, for
tests that need other settings, a restart, or a log no other test writes
into (failed logins are logged once per source address every 10 s, and
every test's client comes from 127.0.0.1). Each is stopped by PID
(SIGTERM, then SIGKILL) when its scope ends, whatever the outcome. A
failing test gets the broker log written during it attached to its
report.
"""

from __future__ import annotations

import shutil

import pytest

from common.pki import make_pki
from support import ADMIN, running, unique_name

# Attaches the broker log to a failing test's report.
pytest_plugins = ["common.broker_log"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory, request, pki):
    module = request.module.__name__.rsplit(".", 1)[-1]
    settings = {"amqp.users": f"guest:guest,{ADMIN[0]}:{ADMIN[1]}", "amqp.loopback_users": "guest"}
    with running(tmp_path_factory.mktemp(module) / "data", f"broker[{module}]", pki, settings) as broker:
        yield broker


@pytest.fixture
def own_broker(tmp_path, request, pki):
    """Starts a SecureBroker for this test: `own_broker(settings, **options)`
    returns it started; every one is stopped when the test ends."""
    started = []

    def start(settings: dict[str, str] | None = None, **options):
        data_dir = tmp_path / f"data{len(started)}"
        context = running(data_dir, f"broker[{request.node.name}]#{len(started)}", pki, settings, **options)
        broker = context.__enter__()
        started.append(context)
        # The broker_log plugin finds brokers among the test's arguments.
        request.node.funcargs.setdefault(f"_own_broker_{len(started)}", broker)
        return broker

    try:
        yield start
    finally:
        for context in reversed(started):
            context.__exit__(None, None, None)


@pytest.fixture
def topic(request):
    """A topic name no other test uses."""
    return unique_name(request.node.name)


@pytest.fixture
def group(request):
    """A consumer group id no other test uses."""
    return unique_name("group-" + request.node.name)


@pytest.fixture(scope="session")
def kcat():
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed (apt-get install kcat); scripts/test installs it")
    return path
