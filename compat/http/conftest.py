"""Fixtures for the admin API suite: one broker per module (tests use
unique names), one per test where a test needs its own configuration. Each
is stopped by PID when its scope ends; a failing test gets the broker log
attached to its report."""

from __future__ import annotations

import pytest

from common.broker import module_broker, unique_name

pytest_plugins = ["common.broker_log"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    with module_broker(tmp_path_factory, request) as instance:
        yield instance


@pytest.fixture
def name(request):
    return unique_name(request.node.name)
