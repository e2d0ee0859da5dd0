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

from support import Broker, unique_name


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    module = request.module.__name__.rsplit(".", 1)[-1]
    instance = Broker(tmp_path_factory.mktemp(module) / "data", name=f"broker[{module}]")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def fresh_broker(tmp_path, request):
    instance = Broker(tmp_path / "data", name=f"broker[{request.node.name}]")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


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
        header = f"{b.name} on {b.bootstrap if b.port else '?'}, {state}, log {b.log_path}"
        report.sections.append((f"broker log: {b.name}", header + "\n" + b.log_text(marks.get(id(b), 0))))
