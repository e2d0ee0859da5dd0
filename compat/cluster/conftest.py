"""Fixtures for the cluster suite: a three-node cluster per test module
(`cluster`) or per test (`fresh_cluster`, for tests that kill and restart
nodes), each node stopped by PID when its scope ends; a failing test gets
every node's log attached to its report."""

from __future__ import annotations

import pytest

from common.broker import unique_name
from common.cluster import running_cluster

pytest_plugins = ["common.broker_log"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    module = request.module.__name__.rsplit(".", 1)[-1]
    with running_cluster(tmp_path_factory.mktemp(module), name=f"cluster[{module}]") as instance:
        yield instance


@pytest.fixture
def fresh_cluster(tmp_path, request):
    with running_cluster(tmp_path, name=f"cluster[{request.node.name}]") as instance:
        yield instance


@pytest.fixture
def lagging_cluster(tmp_path, request):
    """A three-node cluster whose followers leave the in-sync replicas
    after 2 s behind (cluster.replica_lag_max), for tests that stop nodes."""
    with running_cluster(
        tmp_path,
        name=f"cluster[{request.node.name}]",
        settings={"cluster.replica_lag_max": "2s"},
    ) as instance:
        yield instance


@pytest.fixture
def proxied_cluster(tmp_path, request):
    """A three-node cluster whose inter-node links each go through a
    fault-injecting proxy (`Cluster.isolate`, `Cluster.mute`,
    `Cluster.heal`), followers leaving the in-sync replicas after 2 s."""
    with running_cluster(
        tmp_path,
        name=f"cluster[{request.node.name}]",
        settings={"cluster.replica_lag_max": "2s"},
        proxied=True,
    ) as instance:
        yield instance


@pytest.fixture
def name(request):
    """A topic or group name no other test uses."""
    return unique_name(request.node.name)
