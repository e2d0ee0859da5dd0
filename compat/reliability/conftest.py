"""Fixtures for the reliability suite: a broker per test, started with the
configuration the test needs (`--set`), stopped by PID when the test ends;
a failing test gets the broker log attached to its report."""

from __future__ import annotations

import pytest

from common.broker import per_test_broker, unique_name

pytest_plugins = ["common.broker_log"]


@pytest.fixture
def own_broker(tmp_path, request):
    """`own_broker(settings, data_dir=None)`: a started broker for this test."""

    def start(settings: dict[str, str] | None = None):
        return per_test_broker(tmp_path, request, settings)

    return start


@pytest.fixture
def name(request):
    return unique_name(request.node.name)
