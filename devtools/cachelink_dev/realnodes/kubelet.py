"""A real node's ``KubeletConfiguration`` (the kubelet runs in the node's namespaces; work in progress).

What this host needs (see docs/real-nodes.md): cgroup v1 allowed (``failCgroupV1: false``; the host is
a v1 hybrid), the cgroupfs driver under a ``cgroupRoot`` of the node's own (so teardown finds every cgroup
the node made), the API server's client CA for x509 authentication, anonymous access and the read-only
port off, and low eviction thresholds (a small disk and ``/dev/shm`` must not evict the product's pods).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: containerd's socket inside the node's mount namespace (``cachelink_dev.realnodes.node``)
CONTAINERD_ENDPOINT = "unix:///run/containerd/containerd.sock"
KUBELET_PORT = 10250


def cgroup_root(prefix: str, node: str) -> str:
    """The parent cgroup of everything this node runs (one folder per controller on cgroup v1)."""
    return f"/{prefix}-{node}"


def kubelet_configuration(
    *,
    prefix: str,
    node: str,
    address: str,
    client_ca: Path,
    serving_cert: Path,
    serving_key: Path,
    cluster_dns: str | None = None,
) -> dict[str, Any]:
    """The ``kubelet.config.k8s.io/v1beta1`` configuration of one real node."""
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": address,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "containerRuntimeEndpoint": CONTAINERD_ENDPOINT,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root(prefix, node),
        "cgroupsPerQOS": True,
        "failCgroupV1": False,
        "failSwapOn": False,
        "enforceNodeAllocatable": ["pods"],
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "resolvConf": "",
        "registerNode": True,
    }
    if cluster_dns:
        config["clusterDNS"] = [cluster_dns]
        config["clusterDomain"] = "cluster.local"
    return config


def kube_proxy_configuration(*, node: str, kubeconfig: Path, cluster_cidr: str) -> dict[str, Any]:
    """The ``kubeproxy.config.k8s.io/v1alpha1`` configuration of one real node (iptables mode).

    ``maxPerCore: 0`` leaves the conntrack table size alone: this host refuses the write (no
    ``CAP_SYS_RESOURCE``); the node's namespace has its own table anyway.
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "hostnameOverride": node,
        "clusterCIDR": cluster_cidr,
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "conntrack": {"maxPerCore": 0, "min": 0},
        # in the node's own network namespace: the usual ports never collide between nodes
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "oomScoreAdj": 0,  # lowering it needs CAP_SYS_RESOURCE, which this host does not give
    }
