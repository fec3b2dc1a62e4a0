"""Manifests of workload pods that attach through a CacheLink CSI volume under Pod Security ``restricted``.

Non-root, read-only root file system, no capability, seccomp ``RuntimeDefault``, no host path: what the
demo's, the benchmarks' and the e2e suite's workloads run as (and what the docs tell users to write).
"""

from __future__ import annotations

import copy
from typing import Any

#: where a workload mounts its CacheLink volume (the folder holding its instances' sockets)
ATTACH_DIR = "/run/cachelink"
CSI_DRIVER = "cachelink.io"
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
#: a container that idles until it is stopped; its workload is run in it with ``kubectl exec``
IDLE = ["python", "-c", "import signal; signal.pause()"]


def csi_volume(cachelink: str, name: str = "cachelink") -> dict[str, Any]:
    """The inline CSI volume naming ``cachelink`` (a CacheLink of the pod's own namespace)."""
    return {
        "name": name,
        "csi": {"driver": CSI_DRIVER, "readOnly": True, "volumeAttributes": {"cachelink": cachelink}},
    }


def attach_mount(name: str = "cachelink") -> dict[str, Any]:
    """The container's mount of :func:`csi_volume` at :data:`ATTACH_DIR`."""
    return {"name": name, "mountPath": ATTACH_DIR, "readOnly": True}


def idle_pod_spec(
    image: str,
    cachelink: str | None,
    node_selector: dict[str, str] | None = None,
    container: str = "engine",
    grace_s: int = 2,
) -> dict[str, Any]:
    """An idle workload's pod spec, with ``cachelink``'s volume (none when it is None: a pod that never
    attaches starts without waiting for a grant)."""
    main: dict[str, Any] = {
        "name": container,
        "image": image,
        "imagePullPolicy": "Never",
        "command": IDLE,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    spec: dict[str, Any] = {
        "securityContext": copy.deepcopy(POD_SECURITY),
        "terminationGracePeriodSeconds": grace_s,
        "containers": [main],
    }
    if cachelink is not None:
        main["volumeMounts"] = [attach_mount()]
        spec["volumes"] = [csi_volume(cachelink)]
    if node_selector:
        spec["nodeSelector"] = node_selector
    return spec


def restricted_pod(
    name: str, namespace: str, node: str, labels: dict[str, str], image: str, cachelink: str
) -> dict[str, Any]:
    """An idle workload pod on ``node`` attached to ``cachelink`` (see :func:`idle_pod_spec`)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": idle_pod_spec(image, cachelink, {"kubernetes.io/hostname": node}),
    }
