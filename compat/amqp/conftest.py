"""Fixtures for the AMQP 0-9-1 compatibility suite.

`broker` is one `sluice` process per test module (tests in a module use
unique queue and exchange names, so they do not interfere); `fresh_broker`
is one per test, for tests that kill and restart it. Either is stopped by
PID (SIGTERM, then SIGKILL) when its scope ends, whatever the outcome.
`conn` and `ch` are a pika blocking connection to the module's broker and a
channel on it, closed after the test. A failing test gets the broker log
written during it attached to its report.

With COMPAT_AMQP_EXTERNAL=127.0.0.1:PORT every test that can runs
against that broker instead (a RabbitMQ node, to check that the tests
expect what RabbitMQ does); the tests that stop or kill the broker skip.
"""

from __future__ import annotations

import pytest

from support import Broker, close_quietly, connect, external_broker, unique_name


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    external = external_broker()
    if external is not None:
        yield external
        return
    module = request.module.__name__.rsplit(".", 1)[-1]
    instance = Broker(tmp_path_factory.mktemp(module) / "data", name=f"broker[{module}]")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def fresh_broker(tmp_path, request):
    if external_broker() is not None:
        pytest.skip("needs a broker of its own to stop and kill (COMPAT_AMQP_EXTERNAL is set)")
    instance = Broker(tmp_path / "data", name=f"broker[{request.node.name}]")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def conn(broker):
    connection = connect(broker)
    try:
        yield connection
    finally:
        close_quietly(connection)


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def name(request):
    """A queue or exchange name prefix no other test uses."""
    return unique_name(request.node.name)


def _brokers(item):
    funcargs = getattr(item, "funcargs", None) or {}
    return [value for value in funcargs.values() if isinstance(value, Broker)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    item._broker_log_marks = {id(b): b.log_size() for b in _brokers(item)}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    marks = getattr(item, "_broker_log_marks", {})
    for b in _brokers(item):
        if b.alive():
            state = "running"
        elif b.proc is not None:
            state = f"CRASHED with exit code {b.proc.returncode}"
        else:
            state = f"stopped (last exit code {b.last_returncode})"
        header = f"{b.name} on {b.address if b.amqp_port else '?'}, {state}, log {b.log_path}"
        report.sections.append((f"broker log: {b.name}", header + "\n" + b.log_text(marks.get(id(b), 0))))
