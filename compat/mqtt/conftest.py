"""Fixtures for the MQTT suite: `broker` is one broker per test module;
`own_broker` starts brokers for one test (restarts, kill -9, other
settings). Each is stopped by PID when its scope ends."""

from __future__ import annotations

import pytest

from common.broker import Broker, module_broker

pytest_plugins = ["common.broker_log"]


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    with module_broker(tmp_path_factory, request) as started:
        yield started


@pytest.fixture
def own_broker(tmp_path, request):
    """`own_broker(settings)` returns a started broker for this test."""
    started: list[Broker] = []

    def start(settings: dict[str, str] | None = None) -> Broker:
        instance = Broker(tmp_path / f"data{len(started)}", name=f"broker[{request.node.name}]",
                          settings={"kafka.group_initial_rebalance_delay": "0s", **(settings or {})})
        instance.start()
        started.append(instance)
        request.node.funcargs.setdefault(f"_own_broker_{len(started)}", instance)
        return instance

    try:
        yield start
    finally:
        for instance in reversed(started):
            instance.stop()
