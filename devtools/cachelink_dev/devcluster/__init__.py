"""The local development cluster: a real Kubernetes control plane with simulated (KWOK) nodes.

``ensure_tools()`` builds etcd, the Kubernetes binaries, KWOK and helm from Go sources once (cached
outside the clone); ``DevCluster(data_dir).up()`` starts a cluster on loopback and ``down()`` stops it.
"""

from __future__ import annotations

from cachelink_dev.devcluster.build import Tools, ensure_tools
from cachelink_dev.devcluster.cluster import DEFAULT_DATA_DIR, ClusterStatus, DevCluster
from cachelink_dev.devcluster.errors import ComponentExitedError, DevClusterError, PortInUseError
from cachelink_dev.devcluster.nodes import Node

__all__ = [
    "DEFAULT_DATA_DIR",
    "ClusterStatus",
    "ComponentExitedError",
    "DevCluster",
    "DevClusterError",
    "Node",
    "PortInUseError",
    "Tools",
    "ensure_tools",
]
