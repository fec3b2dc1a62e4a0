"""The simulated nodes: names, loopback addresses and the Node objects that KWOK keeps Ready."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cachelink_dev.devcluster.components import KWOK_ANNOTATION

#: every simulated node carries this taint: KWOK runs no containers, so nothing of the product may land
#: there (the chart does not tolerate it); a test pod that only checks scheduling tolerates it
SIMULATED_TAINT = {"key": "cachelink.dev/simulated", "value": "true", "effect": "NoSchedule"}
SIMULATED_TOLERATION = {"key": "cachelink.dev/simulated", "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class Node:
    """A simulated node and the loopback address that stands in for its InternalIP."""

    name: str
    ip: str


def node_manifest(node: Node, kubelet_version: str) -> dict[str, Any]:
    """The Node object KWOK manages: its InternalIP is the node's loopback address; tainted
    (:data:`SIMULATED_TAINT`)."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "cachelink.dev/dev-cluster": "true",
            },
        },
        "spec": {"taints": [SIMULATED_TAINT]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip},
                {"type": "Hostname", "address": node.name},
            ],
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "kwok",
                "osImage": "kwok",
                "kernelVersion": "",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
        },
    }
