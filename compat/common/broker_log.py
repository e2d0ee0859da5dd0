"""Pytest plugin for the compatibility suites (each conftest.py names it in
`pytest_plugins`): a failing test gets the log its brokers wrote during it
attached to its report.
"""

from __future__ import annotations

import pytest

from common.broker import Broker


def _brokers(item):
    funcargs = getattr(item, "funcargs", None) or {}
    brokers = []
    for value in funcargs.values():
        if isinstance(value, Broker):
            brokers.append(value)
        # A cluster (compat/common/cluster.py) holds its nodes.
        brokers.extend(n for n in getattr(value, "nodes", None) or [] if isinstance(n, Broker))
    return brokers


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
        header = f"{b.name} on {b.listeners()}, {state}, log {b.log_path}"
        report.sections.append((f"broker log: {b.name}", header + "\n" + b.log_text(marks.get(id(b), 0))))
