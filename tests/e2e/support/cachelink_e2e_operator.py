"""Operator e2e environment on the development cluster: ``cachelink.localstack.LocalStack`` plus helpers.

Loaded once by ``tests/e2e/conftest.py`` and registered as the top-level module ``cachelink_e2e_operator``
(test modules import ``OperatorEnv``, ``Workload``, ``wait_for``, ``node_token`` from it); the session
fixture ``operator_env`` and the per-test ``namespace`` live in the conftest.

What runs (all on loopback, all stopped by process id at teardown) is the product's local stack:

* the chart installed with helm: CRDs, the operator's RBAC, the agents' shared Secret and a hostNetwork
  DaemonSet whose pods KWOK runs on every simulated node (pod IP = the node's loopback address);
* one real ``cachelink-agent`` process per node, bound to that node's address and the DaemonSet's port,
  standing in for the DaemonSet pod's container (``CACHELINK_E2E_AGENT_MODE=worker`` runs instances in
  worker processes instead of in the agent);
* the operator (``python -m cachelink_operator``) under a ServiceAccount token (TokenRequest) in a
  kubeconfig holding nothing else, so a permission the chart does not grant fails the tests.

Workloads (``Workload``) are real processes that attach to an instance's socket the way a pod on the node
would: each joins a cgroup whose path names its pod's UID, which is what the agent checks.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cachelink_agent.tokens import node_token

from cachelink.devcluster import DevCluster
from cachelink.localstack.agents import AGENT_NAMESPACE, AgentProcess
from cachelink.localstack.operator_runner import OperatorProcess
from cachelink.localstack.procs import child_env, tail, wait_for
from cachelink.localstack.stack import LocalStack

ROOT = Path(__file__).resolve().parents[3]
GROUP = "cachelink.io"

__all__ = [
    "AGENT_NAMESPACE",
    "AgentProcess",
    "OperatorEnv",
    "OperatorProcess",
    "Workload",
    "deployment",
    "node_token",
    "tail",
    "wait_for",
]


def _env() -> dict[str, str]:
    return child_env()


def deployment(
    namespace: str,
    name: str,
    replicas: int,
    labels: dict[str, str] | None = None,
    *,
    node_selector: dict[str, str] | None = None,
    template_annotations: dict[str, str] | None = None,
    strategy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Deployment of placeholder servers on the simulated nodes (pods KWOK runs without containers)."""
    labels = labels or {"app": name}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels, "annotations": template_annotations or {}},
            "spec": {
                "nodeSelector": node_selector or {"cachelink.dev/dev-cluster": "true"},
                "containers": [{"name": "server", "image": "example.invalid/llm-server:1"}],
            },
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
cgroup, socket_path, mode, own_id, peer_id = sys.argv[1:6]
if cgroup:
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
from cachelink_agent.attach import attach
from llm_datadist import BlocksCacheKey, CacheDesc, DataType
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


def _cgroup_root() -> Path | None:
    """A cgroup hierarchy this process may create groups in (kubelet's pods live in ``.../pod<UID>``)."""
    for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        probe = base / f"cachelink-e2e-probe-{uuid.uuid4().hex[:6]}"
        try:
            probe.mkdir()
        except OSError:
            continue
        probe.rmdir()
        return base / "cachelink-e2e"
    return None


class Workload:
    """A process standing in for a container of pod ``pod``: in the pod's cgroup (the agent checks the
    pod's UID) and, through ``on_node`` (``OperatorEnv.on_node``), with the host paths a pod on its node
    mounts, so the attach socket of the pod's annotation is found where the annotation says."""

    def __init__(
        self, pod: dict[str, Any], socket_path: str, on_node: Callable[[list[str]], list[str]]
    ) -> None:
        root = _cgroup_root()
        if root is None:
            pytest.skip("no writable cgroup hierarchy: a workload cannot pose as a pod's container")
        self.cgroup = root / f"pod{pod['metadata']['uid']}"
        self.cgroup.mkdir(parents=True, exist_ok=True)
        self.socket_path, self.on_node = socket_path, on_node
        self.process: subprocess.Popen[str] | None = None

    def spawn(self, argv: list[str]) -> subprocess.Popen[str]:
        """Start ``argv`` as a process of this pod (joins the cgroup, then execs)."""
        join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return subprocess.Popen(
            self.on_node(["sh", "-c", join, str(self.cgroup), *argv]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )

    def _popen(self, mode: str, own_id: int, peer_id: int) -> subprocess.Popen[str]:
        argv = [sys.executable, "-P", "-c", _WORKLOAD, str(self.cgroup), self.socket_path, mode, str(own_id)]
        return subprocess.Popen(
            self.on_node([*argv, str(peer_id)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )

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
        out, err = process.communicate(timeout=60)
        if process.returncode != 0:
            raise RuntimeError(f"decode workload failed ({process.returncode}): {err}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def close(self) -> None:
        """End the session (the prompt's caches are freed) and remove the cgroup."""
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            with contextlib.suppress(OSError):
                self.process.stdin.write("done\n")
                self.process.stdin.flush()
            try:
                self.process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()
        for _ in range(50):
            try:
                self.cgroup.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
        with contextlib.suppress(OSError):  # the last workload removes the parent too
            self.cgroup.parent.rmdir()


# ------------------------------------------------------------------------------------------ the env


class OperatorEnv(LocalStack):
    """The local stack, with helpers to drive and observe CacheLinks as the admin."""

    def __init__(self, cluster: DevCluster, root: Path, mode: str) -> None:
        # the stack installs the chart (its RBAC included): the operator runs under the chart's rights
        super().__init__(cluster, root, agent_mode=mode)

    # -- kubectl helpers ------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """kubectl with admin credentials (the test's, not the operator's)."""
        return self.cluster.kubectl(*args, input=input, check=check)

    def apply(self, *objects: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` of these objects."""
        return self.kube.apply(*objects, check=check)

    def get(self, *args: str) -> Any:
        """``kubectl get ARGS -o json`` (None when not found)."""
        return self.kube.get(*args)

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
            self.operator.check_alive()
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
            raise TimeoutError(
                f"{error}\nstatus: {status}\noperator log:\n{tail(self.operator.log)}"
            ) from None

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

    def teardown(self) -> None:
        """Stop the operator and agents; remove what was applied cluster-wide."""
        self.down()
