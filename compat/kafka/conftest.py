"""Fixtures for the Kafka compatibility suite.

`broker` is one `sluice` process per test module (tests in a module use
unique topic and group names, so they do not interfere); `fresh_broker` is
one per test, for tests that stop and restart it. Either is stopped by PID
(SIGTERM, then SIGKILL) when its scope ends, whatever the outcome. A failing
test gets the broker log written during it attached to its report.
"""

from __future__ import annotations

import shutil

import pytest

from common.broker import module_broker, per_test_broker
from support import unique_name

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

