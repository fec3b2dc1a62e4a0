"""One development cluster with two real nodes (kubelet + containerd + kube-proxy each) for the module.

Needs root, the real-node tools and the image of the current source (``cachelink real-nodes build``).
Without them these tests skip and say why, unless ``CACHELINK_REQUIRE_REAL_NODES=1`` (``./dev test`` sets it
once it built them): then a missing part fails instead (``real_node_part_missing``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from cachelink.devcluster.build import Tools, cached_tools
from cachelink.devcluster.cluster import DevCluster
from cachelink.realnodes.cluster import RealNodes
from cachelink.realnodes.images import BaseImage, Podman, context_digest

ROOT = Path(__file__).resolve().parents[2]
NODES = ("real-a", "real-b")


@pytest.fixture(scope="session")
def node_tools(real_node_part_missing: Callable[[str], NoReturn]) -> Tools:
    if os.geteuid() != 0:
        real_node_part_missing("real nodes need root")
    tools = cached_tools(real_nodes=True)
    if tools is None:
        real_node_part_missing("the real-node tools are not built: run `cachelink real-nodes build` (root)")
    return tools


@pytest.fixture(scope="session")
def product_image(node_tools: Tools, real_node_part_missing: Callable[[str], NoReturn]) -> str:
    """The image of the current source (by its context digest), or ``CACHELINK_TEST_IMAGE``."""
    if os.environ.get("CACHELINK_TEST_IMAGE"):
        return os.environ["CACHELINK_TEST_IMAGE"]
    podman = Podman()
    base = podman.image_id(BaseImage().ref)
    if base is None:
        real_node_part_missing("no base image: run `cachelink real-nodes build` (root)")
    ref = f"localhost/cachelink:ctx-{context_digest(ROOT, base)[:16]}"
    if podman.image_id(ref) is None:
        real_node_part_missing(
            f"no image of the current source ({ref}): run `cachelink real-nodes build` (root)"
        )
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
        try:
            nodes.down()
        finally:
            cluster.down()
