"""Fixtures for the STOMP suite: `broker` is one broker per test module,
stopped by PID when the module ends."""

from __future__ import annotations

import pytest

from common.broker import module_broker

pytest_plugins = ["common.broker_log"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    with module_broker(tmp_path_factory, request) as started:
        yield started
