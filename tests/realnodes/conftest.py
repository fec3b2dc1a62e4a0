"""One development cluster with two real nodes (kubelet + containerd + kube-proxy each) for the module.

Needs root, the real-node tools and the image of the current source (``cachelink real-nodes build``).
Without them these tests skip and say why, unless ``CACHELINK_REQUIRE_REAL_NODES=1`` (``./dev test`` sets it
once it built them): then a missing piece fails instead, so CI can never skip them silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachelink.devcluster.build import Tools, cached_tools
from cachelink.devcluster.cluster import DevCluster
from cachelink.realnodes.cluster import RealNodes
from cachelink.realnodes.images import BaseImage, Podman, context_digest

ROOT = Path(__file__).resolve().parents[2]
NODES = ("real-a", "real-b")


def _missing(reason: str) -> None:
    if os.environ.get("CACHELINK_REQUIRE_REAL_NODES") == "1":
        pytest.fail(f"real nodes required (CACHELINK_REQUIRE_REAL_NODES=1) but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_tools() -> Tools:
    if os.geteuid() != 0:
        _missing("real nodes need root")
    tools = cached_tools(real_nodes=True)
    if tools is None:
        _missing("the real-node tools are not built: run `cachelink real-nodes build` (root)")
    assert tools is not None
    return tools


@pytest.fixture(scope="session")
def product_image(node_tools: Tools) -> str:
    """The image of the current source (by its context digest), or ``CACHELINK_TEST_IMAGE``."""
    if os.environ.get("CACHELINK_TEST_IMAGE"):
        return os.environ["CACHELINK_TEST_IMAGE"]
    podman = Podman()
    base = podman.image_id(BaseImage().ref)
    if base is None:
        _missing("no base image: run `cachelink real-nodes build` (root)")
    assert base is not None
    ref = f"localhost/cachelink:ctx-{context_digest(ROOT, base)[:16]}"
    if podman.image_id(ref) is None:
        _missing(f"no image of the current source ({ref}): run `cachelink real-nodes build` (root)")
    return ref


@pytest.fixture(scope="module")
def real_nodes(
    node_tools: Tools, product_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealNodes]:
    """The control plane in a temporary folder and two real nodes with the product image loaded."""
    data_dir = tmp_path_factory.mktemp("real-cluster")
    cluster = DevCluster(data_dir, node_names=())
    cluster.up()
    nodes = RealNodes(cluster, NODES, images=[product_image], tools=node_tools)
    try:
        nodes.up()
        yield nodes
    finally:
        nodes.down()
        cluster.down()
