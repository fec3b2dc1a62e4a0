"""A real single-machine Kubernetes cluster: etcd, the control plane and KWOK-simulated nodes on loopback.

``DevCluster(data_dir).up()`` starts everything (building the tools on first use) and waits until the
nodes are Ready; ``down()`` stops what ``up`` started, by recorded process id; ``up()`` again on the same
directory brings the same objects back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cachelink_dev.devcluster import probes
from cachelink_dev.devcluster.build import Tools, ensure_tools
from cachelink_dev.devcluster.components import (
    HOST,
    ORDER,
    SERVICE_IP,
    Layout,
    Ports,
    command_lines,
    write_audit_policy,
    write_egress_config,
)
from cachelink_dev.devcluster.errors import DevClusterError
from cachelink_dev.devcluster.kubeconfig import write_kubeconfig
from cachelink_dev.devcluster.nodes import Node, node_manifest
from cachelink_dev.devcluster.pki import Pki, ensure_pki
from cachelink_dev.devcluster.processes import Process, check_port_free, free_port, rss_bytes

DEFAULT_DATA_DIR = Path(".cachelink/dev-cluster")
DEFAULT_NODES = ("node-a", "node-b", "node-c")
#: bounds of each wait during ``up`` (seconds)
TIMEOUTS = {"etcd": 60.0, "kube-apiserver": 180.0, "component": 120.0, "nodes": 120.0, "kubectl": 120.0}

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ComponentStatus:
    """Whether a component runs, with its pid, memory and log file."""

    name: str
    pid: int | None
    rss_bytes: int
    log: Path


@dataclass(frozen=True)
class ClusterStatus:
    """Snapshot of the cluster for ``status``."""

    components: list[ComponentStatus]
    apiserver_ready: bool
    nodes: list[Node]

    @property
    def running(self) -> bool:
        """Every component runs and the API server is ready."""
        return self.apiserver_ready and all(c.pid is not None for c in self.components)

    @property
    def rss_bytes(self) -> int:
        """Memory (sum of resident set sizes) of all components."""
        return sum(c.rss_bytes for c in self.components)


class DevCluster:
    """The development cluster whose files live in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path | str = DEFAULT_DATA_DIR,
        node_names: Sequence[str] = DEFAULT_NODES,
        tools: Tools | None = None,
        log: Log = _stderr,
    ) -> None:
        self.layout = Layout(Path(data_dir).resolve())
        self._node_names = tuple(node_names)
        self._tools = tools
        self.log = log

    # -- public API -------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The data directory (absolute)."""
        return self.layout.root

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig."""
        return self.layout.admin_kubeconfig

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines, rotated at 200 MB keeping one backup): requests of
        every ServiceAccount outside kube-system at Metadata level (user, verb, objectRef, response code),
        stage ResponseComplete (or ResponseStarted once for a watch); nothing of users with certificates."""
        return self.layout.audit_log

    @property
    def tools(self) -> Tools:
        """The built tools (built on first access)."""
        if self._tools is None:
            self._tools = ensure_tools(self.log)
        return self._tools

    @property
    def kubectl_path(self) -> Path:
        """The kubectl matching the API server's version."""
        return self.tools.kubectl

    @property
    def helm_path(self) -> Path:
        """The helm binary."""
        return self.tools.helm

    @property
    def nodes(self) -> list[Node]:
        """The simulated nodes (from the state file once the cluster was started)."""
        state = self._read_state()
        if state:
            return [Node(**node) for node in state["nodes"]]
        return [Node(name, f"127.0.0.{i + 2}") for i, name in enumerate(self._node_names)]

    @property
    def ports(self) -> Ports | None:
        """The components' ports, once the cluster was started."""
        state = self._read_state()
        return Ports(**state["ports"]) if state else None

    @property
    def server(self) -> str:
        """The API server URL."""
        ports = self.ports
        if ports is None:
            raise DevClusterError(f"no cluster in {self.data_dir}; run `cachelink dev-cluster up` first")
        return f"https://{HOST}:{ports.apiserver}"

    def env(self) -> dict[str, str]:
        """Variables that point clients at this cluster (and, once it was started, kubectl/helm on PATH)."""
        env = {"KUBECONFIG": str(self.kubeconfig)}
        if self.bin_dirs:
            env["PATH"] = os.pathsep.join([*self.bin_dirs, os.environ.get("PATH", "")])
        return env

    @property
    def bin_dirs(self) -> list[str]:
        """Folders of the kubectl and helm that the last ``up`` used (empty before the first)."""
        state = self._read_state()
        return list(state.get("bin_dirs", [])) if state else []

    def up(self) -> DevCluster:
        """Start every component not running yet and wait until the nodes are Ready.

        If a component fails, the ones this call started are stopped again and the error names its log.
        """
        started_at = time.monotonic()
        tools = self.tools
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._read_state() or self._new_state()
        ports = Ports(**state["ports"])
        state["bin_dirs"] = self._bin_dirs(tools)
        self._write_state(state)
        pki = ensure_pki(self.layout.pki, SERVICE_IP)
        self._write_kubeconfigs(pki, ports)
        write_audit_policy(self.layout)
        write_egress_config(self.layout)
        self._check_ports(ports)
        started: list[str] = []
        try:
            self._start_components(command_lines(tools, self.layout, pki, ports), ports, pki, started)
            self._apply_nodes()
            self._wait_nodes_ready()
            self._wait_default_service_account()
        except BaseException:
            for name in reversed(started):
                self.process(name).stop()
            raise
        elapsed = time.monotonic() - started_at
        self.log(f"==> dev cluster ready in {elapsed:.1f}s; export KUBECONFIG={self.kubeconfig}")
        return self

    def _start_components(
        self, argv: dict[str, list[str]], ports: Ports, pki: Pki, started: list[str]
    ) -> None:
        ready: dict[str, Callable[[], bool]] = {
            "etcd": lambda: probes.etcd_healthy(ports.etcd_client),
            "kube-apiserver": lambda: probes.apiserver_ready(ports.apiserver, pki),
            "kube-controller-manager": lambda: probes.component_healthy(ports.controller_manager),
            "kube-scheduler": lambda: probes.component_healthy(ports.scheduler),
        }
        for name in ORDER:
            process = self.process(name)
            if process.running():
                continue
            self.log(f"==> starting {name} (log: {process.log})")
            process.start(argv[name])
            started.append(name)
            if name in ("etcd", "kube-apiserver"):
                process.wait_ready(ready[name], TIMEOUTS[name])
        for name in ("kube-controller-manager", "kube-scheduler"):
            self.process(name).wait_ready(ready[name], TIMEOUTS["component"], "healthy")

    @staticmethod
    def _bin_dirs(tools: Tools) -> list[str]:
        return sorted({str(tools[name].parent) for name in ("kubectl", "helm")})

    def down(self) -> list[str]:
        """Stop every component this data directory recorded, in reverse start order; returns their names."""
        stopped = []
        for name in reversed(ORDER):
            if self.process(name).stop():
                self.log(f"==> stopped {name}")
                stopped.append(name)
        return stopped

    def status(self) -> ClusterStatus:
        """Which components run, their memory, and whether the API server is ready."""
        components = []
        for name in ORDER:
            process = self.process(name)
            pid = process.pid()
            components.append(ComponentStatus(name, pid, rss_bytes(pid) if pid else 0, process.log))
        ports = self.ports
        ready = bool(
            ports
            and self.layout.pki.exists()
            and probes.apiserver_ready(ports.apiserver, Pki(self.layout.pki))
        )
        return ClusterStatus(components, ready, self.nodes)

    def process(self, name: str) -> Process:
        """The recorded process of component ``name``."""
        return Process(name, self.layout.run, self.layout.logs / f"{name}.log")

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = TIMEOUTS["kubectl"],
    ) -> subprocess.CompletedProcess[str]:
        """Run the cluster's kubectl against this cluster; raises with its stderr when ``check`` fails."""
        cmd = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        try:
            result = subprocess.run(
                cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise DevClusterError(f"`kubectl {' '.join(args)}` timed out after {timeout:.0f}s") from exc
        if check and result.returncode != 0:
            raise DevClusterError(
                f"`kubectl {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    # -- internals --------------------------------------------------------------------------------------

    def _new_state(self) -> dict[str, Any]:
        ports = Ports(*(free_port() for _ in range(5)))
        return {"ports": asdict(ports), "nodes": [asdict(node) for node in self.nodes]}

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.layout.state.read_text())
        except FileNotFoundError:
            return None
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        self.layout.state.write_text(json.dumps(state, indent=2) + "\n")

    def _check_ports(self, ports: Ports) -> None:
        owners = {
            "etcd (client)": "etcd",
            "etcd (peer)": "etcd",
            "kube-apiserver": "kube-apiserver",
            "kube-controller-manager": "kube-controller-manager",
            "kube-scheduler": "kube-scheduler",
        }
        for what, port in ports.named().items():
            if not self.process(owners[what]).running():
                check_port_free(port, what)

    def _write_kubeconfigs(self, pki: Pki, ports: Ports) -> None:
        server = f"https://{HOST}:{ports.apiserver}"
        write_kubeconfig(self.kubeconfig, server, pki, "admin", "kubernetes-admin")
        for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
            write_kubeconfig(self.layout.kubeconfig(component), server, pki, component, component)

    def _apply_nodes(self) -> None:
        existing = set(self.kubectl("get", "nodes", "-o", "name").stdout.split())
        missing = [node for node in self.nodes if f"node/{node.name}" not in existing]
        if missing:
            manifest = {
                "apiVersion": "v1",
                "kind": "List",
                "items": [node_manifest(n, self.tools.versions["kubernetes"]) for n in missing],
            }
            self.kubectl("create", "-f", "-", input=json.dumps(manifest))
            self.log("==> created nodes " + ", ".join(f"{n.name} ({n.ip})" for n in missing))

    def ready_nodes(self) -> set[str]:
        """Names of the nodes whose Ready condition is True."""
        out = self.kubectl("get", "nodes", "-o", "json").stdout
        ready = set()
        for item in json.loads(out)["items"]:
            conditions = item.get("status", {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                ready.add(item["metadata"]["name"])
        return ready

    def _wait_nodes_ready(self) -> None:
        wanted = {node.name for node in self.nodes}
        self.process("kwok").wait_ready(
            lambda: wanted <= self.ready_nodes(), TIMEOUTS["nodes"], "making nodes Ready"
        )

    def _wait_default_service_account(self) -> None:
        def has_default() -> bool:
            return (
                self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0
            )

        self.process("kube-controller-manager").wait_ready(
            has_default, TIMEOUTS["component"], "creating the default ServiceAccount"
        )


def memory_summary(status: ClusterStatus) -> str:
    """One line per component with its RSS, and the total."""
    lines = [f"{c.name:<24} {(c.rss_bytes / 2**20):8.1f} MiB" for c in status.components]
    lines.append(f"{'total':<24} {(status.rss_bytes / 2**20):8.1f} MiB")
    return os.linesep.join(lines)
