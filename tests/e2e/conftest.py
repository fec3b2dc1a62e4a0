"""Fixtures of the end-to-end tests: one real development cluster for the whole session.

Set ``CACHELINK_E2E_DATA_DIR`` to reuse a cluster started with ``cachelink dev-cluster up --data-dir ...``
(it is then left running); otherwise a fresh cluster starts in a temporary directory and stops at the end.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from cachelink.devcluster import DevCluster, ensure_tools
from cachelink.devcluster.fixtures import running_cluster

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build (or find cached) the cluster's tools before any e2e test, outside the per-test timeout."""
    if any(item.get_closest_marker("e2e") for item in items):
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        ensure_tools(log=reporter.write_line if reporter else print)


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """The running cluster: ``.kubeconfig``, ``.kubectl_path``, ``.helm_path``, ``.nodes``, ``.kubectl()``."""
    reuse = os.environ.get("CACHELINK_E2E_DATA_DIR")
    with running_cluster(reuse or tmp_path_factory.mktemp("dev-cluster"), reuse=bool(reuse)) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kubectl(dev_cluster: DevCluster) -> Kubectl:
    """Run kubectl against the cluster: ``kubectl("get", "pods", input=..., check=True)``."""
    return dev_cluster.kubectl
