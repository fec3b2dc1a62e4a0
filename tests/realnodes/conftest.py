"""One development cluster with two real nodes (kubelet + containerd + kube-proxy each) for the module.

Needs root, the real-node tools and the image of the current source (``cachelink real-nodes build``).
Without them these tests skip and say why, unless ``CACHELINK_REQUIRE_REAL_NODES=1`` (``./dev test`` sets it
once it built them): then a missing part fails instead (``real_node_part_missing``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cachelink_dev.devcluster.build import Tools
from cachelink_dev.devcluster.cluster import DevCluster
from cachelink_dev.realnodes.cluster import RealNodes

NODES = ("real-a", "real-b")


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
