"""A fresh broker for the order-flow test, from target/debug/sluice (or
$BROKER_BIN) on free ports of 127.0.0.1, stopped by PID when the module
ends; a failing test gets the broker log attached to its report."""

from __future__ import annotations

import pytest

from common.broker import module_broker

pytest_plugins = ["common.broker_log"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    with module_broker(tmp_path_factory, request) as instance:
        yield instance
