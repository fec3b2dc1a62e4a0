"""``LocalStack``: the whole product on a :class:`DevCluster`, installed by its Helm chart.

``up()`` runs ``helm upgrade --install`` of the chart (CRDs, RBAC, the agents' Secret and DaemonSet, the
operator Deployment) with values for the development cluster, then runs each product container as a
local process started from its pod (KWOK runs pods without containers): one agent per node, then the
operator under its own pod-bound ServiceAccount token; ``down()`` stops every process by its recorded
pid and uninstalls the release. Processes run detached, so ``up()`` without ``down()``
(``cachelink demo --keep``) leaves the stack running, and :func:`stop_recorded` stops it from a later run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cachelink_agent import models

from cachelink.devcluster import DevCluster
from cachelink.localstack import resources
from cachelink.localstack.agents import (
    AGENT_NAMESPACE,
    AGENT_SECRET_KEY,
    AGENT_SECRET_NAME,
    AGENT_SELECTOR,
    AgentProcess,
    api_port,
)
from cachelink.localstack.chart import Release, stack_values
from cachelink.localstack.kube import Kube
from cachelink.localstack.operator_runner import LEASE_NAME, OPERATOR_SELECTOR, OperatorProcess
from cachelink.localstack.podrun import SHM, Node, host_path_mounts, in_mount_namespace
from cachelink.localstack.podspec import ContainerPlan
from cachelink.localstack.procs import (
    ManagedProcess,
    child_env,
    common_free_port,
    port_free_on,
    tail,
    wait_for,
)

Log = Callable[[str], None]


def _quiet(_line: str) -> None:
    """Discard progress lines."""


def stop_recorded(root: Path) -> list[str]:
    """Stop the containers an earlier run recorded under ``root``; returns what was running."""
    stopped = []
    pods = root / "pods"
    for pid_file in sorted(pods.glob("*/*.pid")) if pods.is_dir() else []:
        node_file = pid_file.parent / "node"
        name = f"{pid_file.stem} {node_file.read_text() if node_file.exists() else pid_file.parent.name}"
        if ManagedProcess(name, pid_file, pid_file.with_suffix(".log")).stop(grace=20.0):
            stopped.append(name)
    return stopped


#: the chart's host paths: the pod runner makes them as mount points (on the host's file systems, empty)
CHART_HOST_PATHS = ("/run/cachelink", "/var/lib/cachelink", "/dev/shm/cachelink")


def _record_missing_host_paths(root: Path) -> None:
    """Remember which of the chart's host paths do not exist yet, so :func:`clean` removes what we made."""
    record = root / "created-host-paths"
    known = set(record.read_text().splitlines()) if record.exists() else set()
    record.write_text(
        "".join(f"{p}\n" for p in sorted(known | {p for p in CHART_HOST_PATHS if not Path(p).exists()}))
    )


def clean(root: Path) -> list[str]:
    """:func:`stop_recorded`, then forget the nodes' files and pods' volumes: the next stack starts fresh."""
    stopped = stop_recorded(root)
    record = root / "created-host-paths"
    if record.exists():
        for path in record.read_text().splitlines():
            with contextlib.suppress(OSError):  # not empty: something else uses it now
                Path(path).rmdir()
        record.unlink()
    shm_record = root / "shm-root"
    if shm_record.exists():
        shm_root = Path(shm_record.read_text().strip())
        if shm_root.parent == SHM and shm_root.name.startswith("cachelink-stack-"):
            shutil.rmtree(shm_root, ignore_errors=True)
        shm_record.unlink()
    for folder in ("nodes", "pods"):
        shutil.rmtree(root / folder, ignore_errors=True)
    return stopped


def _shm_root(root: Path) -> Path:
    """This stack's folder in /dev/shm (host paths under /dev/shm: the pools), recorded for clean-up."""
    record = root / "shm-root"
    with contextlib.suppress(OSError):
        recorded = Path(record.read_text().strip())
        if recorded.is_dir():
            return recorded
    shm_root = Path(tempfile.mkdtemp(prefix="cachelink-stack-", dir=SHM))
    shm_root.chmod(0o755)
    record.write_text(str(shm_root))
    return shm_root


def _stack_port(root: Path, hosts: list[str], name: str = "port") -> int:
    """The port an earlier stack in ``root`` recorded as ``name`` if it is still free everywhere (its
    pods then stay as they are), else a new one; recorded for the next stack."""
    record = root / name
    with contextlib.suppress(OSError, ValueError):
        port = int(record.read_text())
        if port_free_on(port, hosts):
            return port
    port = common_free_port(hosts)
    record.write_text(str(port))
    return port


def _running(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


class LocalStack:
    """The chart installed on a dev cluster, its agents and operator run as local processes."""

    def __init__(
        self,
        cluster: DevCluster,
        root: Path,
        *,
        nodes: Sequence[str] | None = None,
        agent_mode: str = "in-process",
        resync_s: float = 20.0,
        max_pool: str = "1Gi",
        log: Log = _quiet,
    ) -> None:
        self.cluster, self.root, self.mode, self.log = cluster, Path(root), agent_mode, log
        self.root.mkdir(parents=True, exist_ok=True)
        self.kube = Kube(cluster.kubectl_path, cluster.kubeconfig)
        self.nodes = {n.name: n.ip for n in cluster.nodes if nodes is None or n.name in nodes}
        self.port = _stack_port(self.root, list(self.nodes.values()))
        # the operator pod's IP is only known once it exists: ports free on loopback, apart per stack
        metrics_port = _stack_port(self.root, ["127.0.0.1"], "metrics-port")
        health_port = _stack_port(self.root, ["127.0.0.1"], "health-port")
        while health_port in (metrics_port, self.port):
            (self.root / "health-port").unlink()
            health_port = _stack_port(self.root, ["127.0.0.1"], "health-port")
        self.values = stack_values(self.port, agent_mode, max_pool, resync_s, (metrics_port, health_port))
        self.release = Release(cluster.helm_path, cluster.kubeconfig, self.root)
        self._shm_root: Path | None = None
        self.secret = b""
        self.agents: dict[str, AgentProcess] = {}
        self._operator: OperatorProcess | None = None

    @property
    def operator(self) -> OperatorProcess:
        """The operator pod's container (after :meth:`setup`)."""
        if self._operator is None:
            raise RuntimeError("the stack is not set up: no operator pod yet")
        return self._operator

    @property
    def shm_root(self) -> Path:
        """This stack's folder in /dev/shm, made on first use (a stack never set up leaves none)."""
        if self._shm_root is None:
            self._shm_root = _shm_root(self.root)
        return self._shm_root

    def node(self, name: str) -> Node:
        """Local folders standing in for node ``name``'s filesystem."""
        return Node(name, self.root / "nodes" / name, self.shm_root / name)

    # -- lifecycle ------------------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    def up(self) -> LocalStack:
        """Everything: :meth:`setup`, then the operator (it holds the leader Lease on return)."""
        self.setup()
        self.start_operator()
        return self

    def setup(self) -> None:
        """The chart installed, its pods scheduled, one agent per node running; not the operator."""
        _record_missing_host_paths(self.root)
        self.kube.wait_namespace_gone(AGENT_NAMESPACE, only_terminating=True)
        self.log(f"==> helm upgrade --install {self.release.chart.name} (agent port {self.port})")
        self.release.install(self.values)
        self.kube.wait_crds_established(resources.CRD_NAMES)
        secret = self.kube.get("secret", AGENT_SECRET_NAME, "-n", AGENT_NAMESPACE)
        self.secret = base64.b64decode(secret["data"][AGENT_SECRET_KEY])
        for name, pod in self.wait_agent_pods().items():
            agent = AgentProcess(self.kube, pod, self.root, self.node(name), self.secret)
            self.agents[name] = agent
            self.log(f"==> agent on {name} at {agent.url} (log: {agent.log})")
            agent.start()
        pod = self.wait_operator_pod()
        self._operator = OperatorProcess(self.kube, pod, self.root, self.node(pod["spec"]["nodeName"]))

    def start_operator(self, timeout: float = 60.0) -> None:
        """Start the operator and wait until it holds the Lease."""
        self.log(f"==> operator (log: {self.operator.log})")
        self.operator.start()
        self.wait_leader(timeout)

    def wait_leader(self, timeout: float = 60.0) -> None:
        """Wait until the current operator process holds the leader Lease."""

        def leading() -> bool:
            self.operator.check_alive()
            lease = self.kube.get("lease", LEASE_NAME, "-n", AGENT_NAMESPACE)
            return bool(lease) and lease["spec"].get("holderIdentity") == self.operator.identity

        wait_for(leading, timeout, "the operator to hold the leader Lease")

    def wait_agent_pods(self, timeout: float = 90.0) -> dict[str, dict[str, Any]]:
        """One Running agent pod per node of the stack, with the node's address and the stack's port."""

        def ready() -> dict[str, dict[str, Any]] | None:
            pods = self.kube.get("pods", "-n", AGENT_NAMESPACE, "-l", AGENT_SELECTOR)["items"]
            have = {p["spec"].get("nodeName"): p for p in _running(pods)}
            for node, ip in self.nodes.items():
                pod = have.get(node)
                if pod is None or (pod["status"].get("podIP"), api_port(pod)) != (ip, self.port):
                    return None
            return {node: have[node] for node in self.nodes}

        return wait_for(ready, timeout, "an agent pod per node")

    def wait_operator_pod(self, timeout: float = 90.0) -> dict[str, Any]:
        """The Running operator pod of the release (the newest if a rollout left two)."""

        def ready() -> dict[str, Any] | None:
            pods = _running(self.kube.get("pods", "-n", AGENT_NAMESPACE, "-l", OPERATOR_SELECTOR)["items"])
            pods.sort(key=lambda p: p["metadata"]["creationTimestamp"])
            return pods[-1] if pods and pods[-1]["status"].get("podIP") else None

        return wait_for(ready, timeout, "the operator pod")

    def on_node(self, node: str) -> Callable[[list[str]], list[str]]:
        """Wrap a command line so that it runs as a workload pod on ``node`` would: with the node's host
        paths that the agent shares (attach sockets, pools) mounted where the agent's pod has them."""
        agent = self.agents[node]
        mounts = host_path_mounts(agent.pod.pod, "agent", self.node(node))

        def wrap(argv: list[str]) -> list[str]:
            plan = ContainerPlan(argv=list(argv), env=child_env(), mounts=mounts)
            return in_mount_namespace(plan, self.root / "workloads" / f"{node}-{uuid.uuid4().hex[:8]}.json")

        return wrap

    def release_finalizers(self) -> None:
        """Drop the operator's finalizer from every CacheLink left (the operator is gone)."""
        found = self.kube.get("cachelinks.cachelink.io", "-A")
        for item in (found or {}).get("items", []):
            meta = item["metadata"]
            if meta.get("finalizers"):
                self.kube.kubectl(
                    "patch",
                    "cachelinks.cachelink.io",
                    meta["name"],
                    "-n",
                    meta["namespace"],
                    "--type=merge",
                    "-p",
                    json.dumps({"metadata": {"finalizers": None}}),
                    check=False,
                )

    def down(self, remove_objects: bool = True) -> None:
        """Stop the operator and agents (by pid); ``remove_objects``: also uninstall the release and
        delete its namespace (not worth waiting for when the cluster stops next and the stack comes back)."""
        if self._operator is not None:
            self._operator.kill(signal.SIGTERM)
        with contextlib.suppress(Exception):
            self.release_finalizers()
        for agent in self.agents.values():
            agent.close()
        stop_recorded(self.root)
        if not remove_objects:
            return
        with contextlib.suppress(Exception):
            self.release.uninstall()
        self.kube.kubectl("delete", "namespace", AGENT_NAMESPACE, "--wait=false", check=False)
        with contextlib.suppress(Exception):
            self.kube.wait_namespace_gone(AGENT_NAMESPACE, timeout=60)
        clean(self.root)
        self._shm_root = None

    # -- observing ------------------------------------------------------------------------------------

    def instances(self) -> dict[str, list[models.InstanceStatus]]:
        """What every running agent reports, by node."""
        return {node: agent.instances() for node, agent in self.agents.items() if agent.running}

    def owned(self, uid: str) -> dict[str, models.InstanceStatus]:
        """Instances owned by a CacheLink UID, by instance name."""
        return {i.name: i for found in self.instances().values() for i in found if i.owner == uid}

    def operator_log_tail(self, lines: int = 60) -> str:
        """The end of the operator's log."""
        return tail(self.operator.log, lines)
