"""Fixtures of the end-to-end tests: one real Kubernetes cluster for the whole session.

By default that is the local development cluster: set ``CACHELINK_E2E_DATA_DIR`` to reuse one started with
``cachelink dev-cluster up --data-dir ...`` (it is then left running); otherwise a fresh cluster starts in a
temporary directory and stops at the end.

An external cluster is named with ``--e2e-kubeconfig PATH`` or ``CACHELINK_E2E_KUBECONFIG`` (never the
ambient ``KUBECONFIG``): then the API-level tests (marker ``api``) run against it through ``kube_target``,
and every test that needs the local development cluster skips. See ``tests/e2e/README.md``.

Support modules (``tests/e2e/support/*.py``) are loaded here once and registered under their own top-level
names, so test modules import them normally (pytest runs with ``--import-mode=importlib``, where a test
module cannot import its siblings):

* ``cachelink_e2e_target``: the cluster the suite targets (``KubeTarget``, the options);
* ``cachelink_e2e_operator``: ``OperatorEnv`` (the product on real nodes) and ``Workload``, for the
  operator tests in ``operator_suite/`` (whose conftest starts their cluster).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from cachelink_dev.devcluster import DevCluster, DevClusterError, ensure_tools
from cachelink_dev.devcluster.fixtures import running_cluster

SUPPORT = Path(__file__).resolve().with_name("support")


def _load_support(name: str) -> ModuleType:
    """Import ``support/NAME.py`` as the top-level module ``NAME``, once per process."""
    path = SUPPORT / f"{name}.py"
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(loaded.__file__ or "").resolve() != path:
            raise ImportError(f"module {name!r} is already {loaded.__file__}, not {path}")
        return loaded
    if importlib.util.find_spec(name) is not None:
        raise ImportError(f"support module {name!r} would shadow an importable module of that name")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


target = _load_support("cachelink_e2e_target")
_load_support("cachelink_e2e_operator")  # for operator_suite/

from cachelink_e2e_target import KubeTarget, Settings  # noqa: E402

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
_SETTINGS = pytest.StashKey[Settings]()


# ------------------------------------------------------------------------------------ options, modes


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cachelink-e2e", "CacheLink end-to-end tests")
    group.addoption(
        target.KUBECONFIG_OPTION,
        metavar="PATH",
        default=None,
        help=(
            f"run the API-level e2e tests against the cluster of this kubeconfig (or set "
            f"{target.KUBECONFIG_ENV}); the ambient KUBECONFIG is never used"
        ),
    )
    group.addoption(
        target.IMAGE_OPTION,
        metavar="IMAGE",
        default=None,
        help=f"the product's container image for tests on an external cluster (or set {target.IMAGE_ENV})",
    )


def e2e_settings(config: pytest.Config) -> Settings:
    """The target this run was asked for (``--e2e-kubeconfig`` / ``CACHELINK_E2E_KUBECONFIG``)."""
    found = config.stash.get(_SETTINGS, None)
    if found is None:
        found = target.settings(config.getoption("e2e_kubeconfig", None), config.getoption("e2e_image", None))
        if found.kubeconfig is not None and not found.kubeconfig.is_file():
            raise pytest.UsageError(
                f"{target.KUBECONFIG_OPTION}/{target.KUBECONFIG_ENV}: no such file: {found.kubeconfig}"
            )
        config.stash[_SETTINGS] = found
    return found


def pytest_report_header(config: pytest.Config) -> str:
    chosen = e2e_settings(config)
    if chosen.kubeconfig is None:
        return "cachelink e2e: the local development cluster"
    return f"cachelink e2e: external cluster {chosen.kubeconfig} (image: {chosen.image or 'none'})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build (or find cached) the cluster's tools before any e2e test, outside the per-test timeout;
    against an external cluster, skip what needs the local development cluster."""
    here = Path(__file__).resolve().parent
    e2e = [item for item in items if item.get_closest_marker("e2e") and here in item.path.parents]
    if not e2e:
        return
    chosen = e2e_settings(config)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    log = reporter.write_line if reporter else print
    if not chosen.external:
        ensure_tools(log=log)
        return
    try:
        ensure_tools(log=log)
    except (DevClusterError, OSError) as error:  # kube_target falls back to kubectl and helm on PATH
        log(f"cannot build the cluster tools ({error}); kubectl and helm from PATH will be used")
    skip = pytest.mark.skip(reason=target.LOCAL_ONLY)
    for item in e2e:
        # runs against an external cluster: API-level tests, and tests of the product's image
        if not item.get_closest_marker("api") and "e2e_image" not in item.fixturenames:
            item.add_marker(skip)


# ------------------------------------------------------------------------------------ the cluster


@pytest.fixture(scope="session")
def dev_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevCluster]:
    """The running local cluster: ``.kubeconfig``, ``.kubectl_path``, ``.helm_path``, ``.nodes``, ``.kubectl()``.

    Skips when an external cluster was named (see ``kube_target``)."""
    if e2e_settings(request.config).external:
        pytest.skip(target.LOCAL_ONLY)
    reuse = os.environ.get("CACHELINK_E2E_DATA_DIR")
    with running_cluster(reuse or tmp_path_factory.mktemp("dev-cluster"), reuse=bool(reuse)) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kubectl(dev_cluster: DevCluster) -> Kubectl:
    """Run kubectl against the local cluster: ``kubectl("get", "pods", input=..., check=True)``."""
    return dev_cluster.kubectl


@pytest.fixture(scope="session")
def kube_target(request: pytest.FixtureRequest) -> KubeTarget:
    """The cluster of the API-level tests: ``.kubeconfig``, ``.kubectl(...)``, ``.helm(...)``, ``.helm_path``.

    The external cluster when one was named (``--e2e-kubeconfig`` / ``CACHELINK_E2E_KUBECONFIG``), else the
    local development cluster (``dev_cluster``). An exported ``KUBECONFIG`` never changes it."""
    chosen = e2e_settings(request.config)
    if chosen.kubeconfig is not None:
        return target.external_target(chosen.kubeconfig)
    cluster: DevCluster = request.getfixturevalue("dev_cluster")
    return target.local_target(cluster)


@pytest.fixture(scope="module")
def cachelink_crds(kube_target: KubeTarget) -> Iterator[KubeTarget]:
    """The target with the CRDs of ``crds/`` applied (server-side) and Established.

    On the development cluster, CRDs the fixture created are deleted when the module ends (a later
    ``helm install`` of the chart must be able to own them); on an external cluster CRDs are never deleted.
    """
    with kube_target.crds():
        yield kube_target


@pytest.fixture
def api_namespace(kube_target: KubeTarget) -> Iterator[str]:
    """A namespace of a unique name on the target, deleted (CacheLinks first) at the end."""
    with kube_target.namespace("e2e-api") as name:
        yield name


@pytest.fixture(scope="session")
def e2e_image(request: pytest.FixtureRequest) -> str:
    """The product's image for containers on the external cluster (``--e2e-image``/``CACHELINK_E2E_IMAGE``).

    Skips without one, and on the development cluster (its simulated nodes run no containers)."""
    chosen = e2e_settings(request.config)
    if not chosen.external:
        pytest.skip(target.NO_CONTAINERS)
    if chosen.image is None:
        pytest.skip(target.NEEDS_IMAGE)
    return chosen.image
