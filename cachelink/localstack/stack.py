"""``LocalStack``: the whole product on a :class:`DevCluster` - CRDs, agents, RBAC, the operator.

``up()`` applies the CRDs, the agents' namespace, Secret and DaemonSet, starts one real agent per node,
applies the operator's RBAC, writes a kubeconfig with only its ServiceAccount token and starts the operator;
``down()`` stops every process by its recorded pid and removes what was applied cluster-wide. Processes
run detached, so ``up()`` without ``down()`` (``cachelink demo --keep``) leaves the stack running, and
:func:`stop_recorded` stops it from a later run.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cachelink_agent import models

from cachelink.devcluster import DevCluster
from cachelink.localstack import resources
from cachelink.localstack.agents import (
    AGENT_NAMESPACE,
    AGENT_SELECTOR,
    AgentProcess,
    agent_objects,
    stop_recorded_agent,
)
from cachelink.localstack.kube import Kube
from cachelink.localstack.operator_runner import LEASE_NAME, OperatorProcess
from cachelink.localstack.procs import ManagedProcess, common_free_port, port_free_on, tail, wait_for
from cachelink.localstack.rbac import default_rbac, token_kubeconfig

Log = Callable[[str], None]


def _quiet(_line: str) -> None:
    """Discard progress lines."""


def stop_recorded(root: Path) -> list[str]:
    """Stop the operator and agents an earlier run recorded under ``root``; returns what was running."""
    stopped = []
    if ManagedProcess("operator", root / "operator.pid", root / "operator.log").stop(grace=20.0):
        stopped.append("operator")
    agents = root / "agents"
    for node_dir in sorted(agents.iterdir()) if agents.is_dir() else []:
        if stop_recorded_agent(node_dir):
            stopped.append(f"agent {node_dir.name}")
    return stopped


def clean(root: Path) -> list[str]:
    """:func:`stop_recorded`, then forget the agents' state: the next stack starts fresh."""
    stopped = stop_recorded(root)
    shutil.rmtree(root / "agents", ignore_errors=True)
    return stopped


def _api_port(pod: dict[str, Any]) -> int | None:
    """The container port named ``api`` of a pod."""
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == "api":
                return int(port["containerPort"])
    return None


def _stack_port(root: Path, hosts: list[str]) -> int:
    """The port an earlier stack in ``root`` used if it is still free everywhere (its DaemonSet then
    stays as it is), else a new one; recorded for the next stack."""
    record = root / "port"
    with contextlib.suppress(OSError, ValueError):
        port = int(record.read_text())
        if port_free_on(port, hosts):
            return port
    port = common_free_port(hosts)
    record.write_text(str(port))
    return port


class LocalStack:
    """CRDs, agents (real processes), RBAC and the operator (real process, SA token) on a dev cluster."""

    def __init__(
        self,
        cluster: DevCluster,
        root: Path,
        *,
        nodes: Sequence[str] | None = None,
        agent_mode: str = "in-process",
        rbac: list[dict[str, Any]] | None = None,
        resync_s: float = 20.0,
        max_pool: str = "1Gi",
        log: Log = _quiet,
    ) -> None:
        self.cluster, self.root, self.mode, self.log = cluster, Path(root), agent_mode, log
        self.root.mkdir(parents=True, exist_ok=True)
        self.kube = Kube(cluster.kubectl_path, cluster.kubeconfig)
        self.secret = secrets.token_hex(24).encode()
        self.nodes = {n.name: n.ip for n in cluster.nodes if nodes is None or n.name in nodes}
        self.rbac = rbac if rbac is not None else default_rbac(cluster.helm_path)
        self.port = _stack_port(self.root, list(self.nodes.values()))
        self.agents = {
            name: AgentProcess(
                self.root / "agents" / name, name, ip, self.port, self.secret, agent_mode, max_pool
            )
            for name, ip in self.nodes.items()
        }
        self.kubeconfig = self.root / "operator.kubeconfig"
        self.operator = OperatorProcess(self.root, self.kubeconfig, resync_s)

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
        """CRDs, agent namespace/Secret/DaemonSet, agents, RBAC + token kubeconfig; not the operator."""
        self.log("==> CRDs: CacheLink, CacheLinkPolicy")
        self.kube.apply(*resources.crds(), server_side=True)
        self.kube.wait_crds_established(resources.CRD_NAMES)
        self.kube.wait_namespace_gone(AGENT_NAMESPACE, only_terminating=True)
        self.log(f"==> agent DaemonSet in {AGENT_NAMESPACE} (port {self.port}) and its Secret")
        namespace, *objects = agent_objects(self.secret, self.port)
        self.kube.apply(namespace)
        # pods of a namespace without its default ServiceAccount are refused (and the DaemonSet backs off)
        wait_for(
            lambda: self.kube.get("serviceaccount", "default", "-n", AGENT_NAMESPACE),
            60,
            f"the default ServiceAccount of {AGENT_NAMESPACE}",
        )
        self.kube.apply(*objects)
        self.wait_agent_pods()
        for agent in self.agents.values():
            self.log(f"==> agent on {agent.node} at {agent.url} (log: {agent.log})")
            agent.start()
        self.log("==> operator RBAC (the chart's rules) and a ServiceAccount token kubeconfig")
        self.kube.apply(*self.rbac)
        token_kubeconfig(self.kube, self.kubeconfig)

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

    def wait_agent_pods(self, timeout: float = 90.0) -> None:
        """One Running agent pod per node of the stack, with the node's address."""

        def ready() -> bool:
            pods = self.kube.get("pods", "-n", AGENT_NAMESPACE, "-l", AGENT_SELECTOR)["items"]
            have = {
                p["spec"].get("nodeName"): (p["status"].get("podIP"), _api_port(p))
                for p in pods
                if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
            }
            return all(have.get(node) == (ip, self.port) for node, ip in self.nodes.items())

        wait_for(ready, timeout, "an agent pod per node")

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
        """Stop the operator and agents (by pid); ``remove_objects``: also the agents' namespace and the
        operator's RBAC (not worth waiting for when the cluster stops next and the stack comes back)."""
        self.operator.kill(signal.SIGTERM)
        with contextlib.suppress(Exception):
            self.release_finalizers()
        for agent in self.agents.values():
            agent.close()
        if not remove_objects:
            return
        self.kube.kubectl("delete", "namespace", AGENT_NAMESPACE, "--wait=false", check=False)
        with contextlib.suppress(Exception):
            self.kube.wait_namespace_gone(AGENT_NAMESPACE, timeout=60)
        self.kube.kubectl(
            "delete",
            "clusterrole,clusterrolebinding",
            "cachelink-operator",
            "--ignore-not-found",
            check=False,
        )

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
