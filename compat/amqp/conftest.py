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

from common.broker import module_broker, per_test_broker
from support import close_quietly, connect, external_broker, unique_name

# Attaches the broker log to a failing test's report.
pytest_plugins = ["common.broker_log"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    external = external_broker()
    if external is not None:
        yield external
        return
    with module_broker(tmp_path_factory, request) as instance:
        yield instance


@pytest.fixture
def fresh_broker(tmp_path, request):
    if external_broker() is not None:
        pytest.skip("needs a broker of its own to stop and kill (COMPAT_AMQP_EXTERNAL is set)")
    with per_test_broker(tmp_path, request) as instance:
        yield instance


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

