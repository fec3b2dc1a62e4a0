"""Operator e2e environment: the chart on a cluster of three real nodes, and helpers to drive it.

Loaded once by ``tests/e2e/conftest.py`` and registered as the top-level module ``cachelink_e2e_operator``
(test modules import ``OperatorEnv``, ``Workload``, ``deployment``, ``wait_for`` from it); the fixture
``operator_env`` and the per-test ``namespace`` live in the conftest.

What runs is what a user runs (:mod:`cachelink_dev.realnodes.product`): a control plane, three real nodes
(kubelet, containerd and kube-proxy each) and the chart installed with ``helm upgrade --install --wait``
(two operator replicas, an agent pod per node). Workloads are pods of the product's image under Pod
Security ``restricted`` that attach through their CacheLink's CSI volume; a test runs code in them with
``kubectl exec``. Faults are made the way they happen on a cluster: a container killed or frozen through
its node's containerd, the kubelet restarting it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachelink_dev.demo import pods
from cachelink_dev.procs import wait_for
from cachelink_dev.realnodes.netns import call_in_netns
from cachelink_dev.realnodes.product import Product
from cachelink_dev.release.chart import OPERATOR_FLAGS

ROOT = Path(__file__).resolve().parents[3]
NODES = ("node-a", "node-b", "node-c")
#: where workload pods mount their CacheLink's CSI volume

__all__ = ["NODES", "OperatorEnv", "Workload", "deployment", "e2e_values", "wait_for"]


def e2e_values(agent_mode: str) -> dict[str, Any]:
    """The chart's defaults, with operator and agent flags that react in seconds (a test waits for them)."""
    return {
        "operator": {"resyncIntervalSeconds": 20, "extraArgs": OPERATOR_FLAGS},
        "agentDaemonSet": {
            "inProcess": agent_mode == "in-process",
            "logFormat": "text",
            "extraArgs": ["--reconcile-interval=1", "--restart-backoff-max=2"],
        },
    }


def workload_pod_spec(
    image: str, cachelink: str | None, node_selector: dict[str, str] | None = None
) -> dict[str, Any]:
    """An idle workload under Pod Security ``restricted`` (:func:`cachelink_dev.demo.pods.idle_pod_spec`)."""
    return pods.idle_pod_spec(image, cachelink, node_selector, container="server", grace_s=1)


def deployment(
    namespace: str,
    name: str,
    replicas: int,
    labels: dict[str, str] | None = None,
    *,
    image: str,
    cachelink: str | None = None,
    node_selector: dict[str, str] | None = None,
    template_annotations: dict[str, str] | None = None,
    strategy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Deployment of idle workload pods of the product's image (:func:`workload_pod_spec`)."""
    labels = labels or {"app": name}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels, "annotations": template_annotations or {}},
            "spec": workload_pod_spec(image, cachelink, node_selector),
        },
    }
    if strategy is not None:
        spec["strategy"] = strategy
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# ---------------------------------------------------------------------------------------- workloads

_WORKLOAD = r"""
import hashlib, json, os, sys
import numpy as np
from cachelink_agent.attach import attach
from llm_datadist import BlocksCacheKey, CacheDesc, DataType
socket_path, mode, own_id, peer_id = sys.argv[1:5]
DESC = CacheDesc(4, [16, 4096], DataType.DT_FLOAT16)
def digest(cache, blocks):
    h = hashlib.sha256()
    for i in range(DESC.num_tensors):
        h.update(cache.numpy(i)[blocks[0]:blocks[-1] + 1].tobytes())
    return h.hexdigest()
run_dir, name = os.path.dirname(socket_path), os.path.basename(socket_path)[: -len(".sock")]
with attach(run_dir, name) as cm:
    if mode == "prompt":
        cache = cm.allocate_blocks_cache(DESC, BlocksCacheKey(int(own_id), 0))
        rng = np.random.default_rng(int(own_id) % 1000)
        for i in range(DESC.num_tensors):
            cache.numpy(i)[:] = rng.standard_normal(cache.numpy(i).shape).astype(np.float16)
        print(json.dumps({"ready": True, "cluster_id": cm.cluster_id, "digest": digest(cache, range(8))}),
              flush=True)
        sys.stdin.readline()
    else:
        cache = cm.allocate_blocks_cache(DESC)
        cm.pull_blocks(BlocksCacheKey(int(peer_id), 0), cache, list(range(8)), list(range(8, 16)))
        print(json.dumps({"cluster_id": cm.cluster_id, "digest": digest(cache, range(8, 16))}), flush=True)
"""


def pod_socket(pod: dict[str, Any]) -> str:
    """Where the pod sees its instance's socket: in its CSI volume, named as the annotation says."""
    annotated = pod["metadata"]["annotations"]["cachelink.io/attach-socket"]
    return f"{pods.ATTACH_DIR}/{Path(annotated).name}"


class Workload:
    """Code run in a workload pod's container (``kubectl exec -i``), attached through its CSI volume."""

    def __init__(self, env: OperatorEnv, pod: dict[str, Any]) -> None:
        self.env, self.pod = env, pod
        self.socket_path = pod_socket(pod)
        self.process: subprocess.Popen[str] | None = None

    def spawn(self, argv: list[str]) -> subprocess.Popen[str]:
        """Run ``argv`` in the pod's container; stdin, stdout and stderr are pipes."""
        kube = self.env.product.kube
        meta = self.pod["metadata"]
        return subprocess.Popen(
            [kube.kubectl_path, f"--kubeconfig={kube.kubeconfig}", "exec", "-i", "-n", meta["namespace"],
             meta["name"], "--", *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def _popen(self, mode: str, own_id: int, peer_id: int) -> subprocess.Popen[str]:
        return self.spawn(["python", "-c", _WORKLOAD, self.socket_path, mode, str(own_id), str(peer_id)])

    def write(self, cluster_id: int) -> dict[str, Any]:
        """Prompt side: allocate ``BlocksCacheKey(cluster_id, 0)``, fill it, keep it until ``close``."""
        self.process = self._popen("prompt", cluster_id, 0)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            _out, err = self.process.communicate(timeout=30)
            raise RuntimeError(f"prompt workload failed: {err}")
        result: dict[str, Any] = json.loads(line)
        return result

    def pull(self, peer_cluster_id: int) -> dict[str, Any]:
        """Decode side: pull 8 blocks of the peer's ``BlocksCacheKey(peer, 0)``; returns their digest."""
        process = self._popen("decode", 0, peer_cluster_id)
        out, err = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"decode workload failed ({process.returncode}): {err}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def close(self) -> None:
        """End the session (the prompt's caches are freed)."""
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            with contextlib.suppress(OSError):
                self.process.stdin.write("done\n")
                self.process.stdin.flush()
            try:
                self.process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()


# ------------------------------------------------------------------------------------------ the env


class OperatorEnv:
    """The product on real nodes, with helpers to drive and observe CacheLinks as the admin."""

    def __init__(self, product: Product) -> None:
        self.product = product
        self.image = product.image
        self.nodes = {a.name: a.address for a in product.nodes.addressing}

    # -- kubectl helpers ------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """kubectl with admin credentials (the test's, not the operator's)."""
        return self.product.kube.kubectl(*args, input=input, check=check)

    def apply(self, *objects: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` of these objects."""
        return self.product.kube.apply(*objects, check=check)

    def get(self, *args: str) -> Any:
        """``kubectl get ARGS -o json`` (None when not found)."""
        return self.product.kube.get(*args)

    def deployment(self, namespace: str, name: str, replicas: int, **kwargs: Any) -> dict[str, Any]:
        """:func:`deployment` of the product's image."""
        return deployment(namespace, name, replicas, image=self.image, **kwargs)

    def cachelink(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The CacheLink object."""
        found: dict[str, Any] | None = self.get("cachelinks.cachelink.io", name, "-n", namespace)
        return found

    def wait_cachelink(
        self,
        namespace: str,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Wait until the CacheLink satisfies ``predicate``; the error shows its status and the log."""
        seen: list[dict[str, Any]] = []

        def check() -> dict[str, Any] | None:
            obj = self.cachelink(namespace, name)
            if obj is not None:
                seen[:] = [obj]
                if predicate(obj):
                    return obj
            return None

        try:
            return wait_for(check, timeout, f"CacheLink {namespace}/{name}: {what}")
        except TimeoutError as error:
            status = json.dumps(seen[0].get("status") if seen else None, indent=1)[:6000]
            log = "\n".join(self.operator_log().splitlines()[-60:])
            raise TimeoutError(f"{error}\nstatus: {status}\noperator log:\n{log}") from None

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Events about a CacheLink, oldest first."""
        items = self.get(
            "events",
            "-n",
            namespace,
            "--field-selector",
            f"involvedObject.kind=CacheLink,involvedObject.name={name}",
        )["items"]
        return sorted(
            items, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "", e["metadata"]["name"])
        )

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector."""
        items: list[dict[str, Any]] = self.get("pods", "-n", namespace, "-l", selector)["items"]
        return items

    # -- the product ----------------------------------------------------------------------------------

    def owned(self, uid: str) -> dict[str, Any]:
        """Instances owned by a CacheLink UID, by instance name (what every Ready agent reports)."""
        return self.product.owned(uid)

    def instances(self, node: str) -> list[Any]:
        """What the node's agent reports."""
        return self.product.instances(node)

    def agent_log(self, node: str) -> str:
        """The node's agent container's log, its previous run's first."""
        pod = self.product.agent_pods(ready=False)[node]["metadata"]["name"]
        return self.product.logs(pod, "agent", previous=True) + self.product.logs(pod, "agent")

    def operator_log(self) -> str:
        """The log of the replica holding the Lease (empty when none does)."""
        leader = self.product.leader()
        return self.product.logs(leader, "operator") if leader else ""

    def kill_operator(self) -> str:
        """SIGKILL the leading replica's container (no chance to finish a pass); its pod's name."""
        leader = self.product.wait_leader()
        self.product.ctr_task(leader, "operator", "kill", "--signal", "SIGKILL")
        return leader

    def in_node_network(self, node: str, func: Callable[[], Any]) -> Any:
        """Run ``func`` in a thread inside ``node``'s network namespace."""
        netns = self.product.nodes.containerd(node).netns
        return call_in_netns(f"/run/netns/{netns}", func)

    def wait_pods_gone(self, namespace: str, timeout: float = 60.0) -> None:
        """Wait until no pod is left in ``namespace``."""
        wait_for(lambda: not self.get("pods", "-n", namespace)["items"], timeout, f"no pods in {namespace}")
