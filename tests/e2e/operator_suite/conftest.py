"""The operator tests' cluster: a control plane, three real nodes and the chart, for this folder only.

It needs what the real-node tests need (root, ``cachelink real-nodes build``); without it the tests skip
and say why, or fail under ``CACHELINK_REQUIRE_REAL_NODES=1`` (``./dev test``). The cluster lives as long
as this folder's tests run (package scope), then every process, namespace and mount of it is removed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cachelink_e2e_operator import NODES, OperatorEnv, e2e_values

from cachelink_dev.devcluster.build import Tools
from cachelink_dev.devcluster.cluster import DevCluster
from cachelink_dev.realnodes.cluster import RealNodes
from cachelink_dev.realnodes.product import Product

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="package")
def operator_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorEnv]:
    """The chart installed with ``--wait`` on three real nodes (agents in ``CACHELINK_E2E_AGENT_MODE``,
    default worker processes as the chart's default)."""
    tools: Tools = request.getfixturevalue("node_tools")
    image: str = request.getfixturevalue("product_image")
    mode = os.environ.get("CACHELINK_E2E_AGENT_MODE", "worker")
    cluster = DevCluster(tmp_path_factory.mktemp("operator-cluster"), node_names=())
    nodes = RealNodes(cluster, NODES, images=[image], tools=tools)
    product = Product(nodes, image, e2e_values(mode))
    try:
        cluster.up()
        nodes.up()
        product.install()
        product.wait_leader()
        yield OperatorEnv(product)
    finally:
        try:
            nodes.down()
        finally:
            cluster.down()


@pytest.fixture
def namespace(operator_env: OperatorEnv) -> Iterator[str]:
    """A fresh namespace (Pod Security ``restricted`` enforced, as a tenant's would be); its CacheLinks
    are deleted (and finalized) at the end, then the namespace."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    operator_env.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
        }
    )
    yield name
    operator_env.kubectl(
        "delete", "cachelinks.cachelink.io", "--all", "-n", name, "--timeout=60s", check=False
    )
    operator_env.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def policies(operator_env: OperatorEnv) -> Iterator[list[str]]:
    """Names of CacheLinkPolicies to delete at the end (they are cluster-scoped)."""
    made: list[str] = []
    yield made
    if made:
        operator_env.kubectl(
            "delete", "cachelinkpolicies.cachelink.io", *made, "--ignore-not-found", check=False
        )


@pytest.fixture(scope="module")
def canonical_crds(operator_env: OperatorEnv) -> None:
    """The CRDs of ``crds/`` (the status fields a module reads must not be pruned)."""
    operator_env.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
