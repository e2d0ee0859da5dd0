"""Fixtures for the bridge compatibility suite.

`broker` is one `sluice` process per test module (tests in a module use
unique topic, queue and exchange names, so they do not interfere);
`fresh_broker` is one per test, for tests that kill and restart it. Either
is stopped by PID (SIGTERM, then SIGKILL) when its scope ends, whatever
the outcome. `conn` and `ch` are a pika blocking connection to the
module's broker and a channel on it, closed after the test. A failing test
gets the broker log written during it attached to its report.
"""

from __future__ import annotations

import pytest

from common.broker import module_broker, per_test_broker
from support import close_quietly, connect, unique_name

# Attaches the broker log to a failing test's report.
pytest_plugins = ["common.broker_log"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    with module_broker(tmp_path_factory, request) as instance:
        yield instance


@pytest.fixture
def fresh_broker(tmp_path, request):
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
    """A topic, stream, queue or exchange name no other test uses."""
    return unique_name(request.node.name)
