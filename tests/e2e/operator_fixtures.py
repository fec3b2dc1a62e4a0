"""Operator e2e environment on the development cluster: CRDs, agent DaemonSet + real agents, RBAC, operator.

What runs (all on loopback, all stopped by process id at teardown):

* the CRDs of ``crds/`` and the operator's RBAC rendered by the chart (``helm template``), applied with
  kubectl;
* the agent namespace, the agents' shared Secret and a hostNetwork DaemonSet whose pods KWOK runs on every
  simulated node (pod IP = the node's loopback address, a container port named ``api``);
* one real ``cachelink-agent`` process per node, bound to that node's address and the DaemonSet's port,
  standing in for the DaemonSet pod's container (``CACHELINK_E2E_AGENT_MODE=worker`` runs instances in
  worker processes instead of in the agent);
* the operator (``python -m cachelink_operator``) under a ServiceAccount token (TokenRequest) in a
  kubeconfig holding nothing else, so a permission the chart does not grant fails the tests.

Workloads (``Workload``) are real processes that attach to an instance's socket the way a pod on the node
would: each joins a cgroup whose path names its pod's UID, which is what the agent checks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from cachelink_agent import models
from cachelink_agent.client import AgentClient, node_token

from cachelink.devcluster import DevCluster

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
AGENT_NAMESPACE = "cachelink-system"
AGENT_LABELS = {"app.kubernetes.io/name": "cachelink", "app.kubernetes.io/component": "agent"}
AGENT_SECRET_NAME = "cachelink-agent-token"
AGENT_SECRET_KEY = "secret"
OPERATOR_SA = "cachelink-operator"  # the chart's name for release "cachelink"
RELEASE = "cachelink"
GROUP = "cachelink.io"


def _pythonpath() -> str:
    parts = [str(ROOT), str(ROOT / "agent"), str(ROOT / "operator")]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["PYTHONPATH"] = _pythonpath()
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _common_free_port(hosts: list[str]) -> int:
    """A port free on every one of ``hosts`` (one DaemonSet port serves all nodes)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        ok = True
        for host in hosts[1:]:
            with socket.socket() as other:
                try:
                    other.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no port free on every node address")


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        if process is not None:
            process.wait()
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll until ``predicate`` returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------- agents


class AgentProcess:
    """One node's ``cachelink-agent`` (restartable on the same dirs, as its DaemonSet pod would be)."""

    def __init__(self, root: Path, node: str, ip: str, port: int, secret: bytes, mode: str) -> None:
        self.node, self.ip, self.port, self.mode = node, ip, port, mode
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.state_dir, self.run_dir = root / "state", root / "run"
        self.pool_dir = Path(tempfile.mkdtemp(prefix=f"cachelink-e2e-{node}-", dir="/dev/shm"))
        self.secret_file = root / "secret"
        self.secret_file.write_bytes(secret)
        self.secret = secret
        self.url = f"http://{ip}:{port}"
        self.token = node_token(secret, node)
        self.log = root / "agent.log"
        self.max_pool = "1Gi"
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-P",
            "-m",
            "cachelink_agent",
            "--listen",
            f"{self.ip}:{self.port}",
            "--token-file",
            str(self.secret_file),
            "--state-dir",
            str(self.state_dir),
            "--run-dir",
            str(self.run_dir),
            "--pool-dir",
            str(self.pool_dir),
            "--node-name",
            self.node,
            "--host-id",
            self.node,
            "--max-pool-bytes",
            self.max_pool,
            "--reconcile-interval",
            "1",
            "--restart-backoff-max",
            "2",
        ]
        if self.mode == "in-process":
            argv.append("--in-process")
        return argv

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> AgentProcess:
        """Start the process and wait until it answers /readyz."""
        with self.log.open("ab") as log:
            log.write(f"==> start {' '.join(self.argv())}\n".encode())
            self.process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=self.root
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent {self.node} exited {self.process.returncode}:\n{tail(self.log)}")
            with contextlib.suppress(Exception):
                status, _ = self.call(lambda c: c.request("GET", "/readyz", timeout=2))
                if status == 200:
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"agent {self.node} not ready:\n{tail(self.log)}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL by default: a crash; SIGTERM keeps instances' pools)."""
        _stop(self.process, sig)

    def call(self, func: Callable[[AgentClient], Awaitable[T]], token: str | None = None) -> T:
        """Run one client call against this agent."""

        async def run() -> T:
            async with AgentClient(self.url, self.token if token is None else token, timeout=30) as client:
                return await func(client)

        return asyncio.run(run())

    def instances(self) -> list[models.InstanceStatus]:
        """``GET /v1/instances``."""
        return self.call(lambda c: c.get_instances())

    def close(self) -> None:
        """Stop and remove the pool files."""
        self.kill(signal.SIGTERM)
        shutil.rmtree(self.pool_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------- operator


class OperatorProcess:
    """The operator as its Deployment would run it, but under a kubeconfig with the SA token only."""

    def __init__(self, root: Path, kubeconfig: Path, resync_s: float = 20.0) -> None:
        self.root, self.kubeconfig, self.resync_s = root, kubeconfig, resync_s
        self.log = root / "operator.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.identity = ""
        self.starts = 0

    def argv(self) -> list[str]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(AGENT_LABELS.items()))
        return [
            sys.executable,
            "-P",
            "-m",
            "cachelink_operator",
            f"--kubeconfig={self.kubeconfig}",
            f"--agent-namespace={AGENT_NAMESPACE}",
            f"--agent-selector={selector}",
            f"--agent-secret={AGENT_SECRET_NAME}",
            f"--agent-secret-key={AGENT_SECRET_KEY}",
            "--agent-timeout=10",
            "--api-timeout=15",
            f"--resync-interval={self.resync_s}",
            "--retry-delay=0.5",
            "--max-retry-delay=3",
            "--owner-confirm-interval=10",
            f"--leader-namespace={AGENT_NAMESPACE}",
            "--leader-duration=6",
            "--leader-renew=2",
            f"--identity={self.identity}",
            "--metrics-port=0",
            "--health-port=0",
            "--log-format=plain",
            "--verbose",
        ]

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> OperatorProcess:
        """Start a new replica (new identity, as a new pod would have)."""
        assert not self.running
        self.starts += 1
        self.identity = f"e2e-operator-{self.starts}-{uuid.uuid4().hex[:6]}"
        with self.log.open("ab") as log:
            log.write(f"\n==> start #{self.starts} {' '.join(self.argv())}\n".encode())
            self.process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=self.root
            )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL: a crash)."""
        _stop(self.process, sig, grace=20.0)

    def lines(self) -> list[str]:
        """The log lines of the current run."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[text.rfind("\n==> start") :].splitlines()

    def check_alive(self) -> None:
        """Raise with the log tail if the operator exited."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"operator exited {self.process.returncode}:\n{tail(self.log, 80)}")


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
    """A process standing in for a container of pod ``pod_uid``: attaches to an instance's socket."""

    def __init__(self, pod_uid: str, socket_path: str) -> None:
        root = _cgroup_root()
        if root is None:
            pytest.skip("no writable cgroup hierarchy: a workload cannot pose as a pod's container")
        self.cgroup = root / f"pod{pod_uid}"
        self.cgroup.mkdir(parents=True, exist_ok=True)
        self.socket_path = socket_path
        self.process: subprocess.Popen[str] | None = None

    def _popen(self, mode: str, own_id: int, peer_id: int) -> subprocess.Popen[str]:
        argv = [sys.executable, "-P", "-c", _WORKLOAD, str(self.cgroup), self.socket_path, mode, str(own_id)]
        return subprocess.Popen(
            [*argv, str(peer_id)],
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


class OperatorEnv:
    """The cluster, the agents, the operator, and helpers to drive and observe CacheLinks."""

    def __init__(self, cluster: DevCluster, root: Path, mode: str) -> None:
        self.cluster, self.root, self.mode = cluster, root, mode
        self.secret = secrets.token_hex(24).encode()
        self.nodes = {node.name: node.ip for node in cluster.nodes}
        self.port = _common_free_port(list(self.nodes.values()))
        self.agents = {
            name: AgentProcess(root / "agents" / name, name, ip, self.port, self.secret, mode)
            for name, ip in self.nodes.items()
        }
        self.kubeconfig = root / "operator.kubeconfig"
        self.operator = OperatorProcess(root, self.kubeconfig)

    # -- kubectl helpers ------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """kubectl with admin credentials (the test's, not the operator's)."""
        return self.cluster.kubectl(*args, input=input, check=check)

    def apply(self, *objects: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` of these objects."""
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        return self.kubectl("apply", "-f", "-", input=body, check=check)

    def get(self, *args: str) -> Any:
        """``kubectl get ARGS -o json`` (None when not found)."""
        result = self.kubectl("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise RuntimeError(result.stderr)
        return json.loads(result.stdout)

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

    def instances(self) -> dict[str, list[models.InstanceStatus]]:
        """What every running agent reports, by node."""
        return {node: agent.instances() for node, agent in self.agents.items() if agent.running}

    def owned(self, uid: str) -> dict[str, models.InstanceStatus]:
        """Instances owned by a CacheLink UID, by instance name."""
        return {i.name: i for found in self.instances().values() for i in found if i.owner == uid}

    # -- set-up -----------------------------------------------------------------------------------------

    def setup(self) -> None:
        """CRDs, agent namespace/Secret/DaemonSet, agents, RBAC + token kubeconfig; not the operator."""
        self.kubectl("apply", "-f", str(ROOT / "crds"))
        for crd in ("cachelinks.cachelink.io", "cachelinkpolicies.cachelink.io"):
            self.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
        self.wait_namespace_gone(AGENT_NAMESPACE, only_terminating=True)
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": AGENT_NAMESPACE}},
        )
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": AGENT_SECRET_NAME, "namespace": AGENT_NAMESPACE},
                "type": "Opaque",
                "data": {AGENT_SECRET_KEY: base64.b64encode(self.secret).decode()},
            },
            self.daemonset(),
        )
        self.wait_agent_pods()
        for agent in self.agents.values():
            agent.start()
        self.apply_rbac()
        self.write_kubeconfig()

    def wait_namespace_gone(self, name: str, only_terminating: bool = False, timeout: float = 90.0) -> None:
        """Wait until namespace ``name`` is gone (``only_terminating``: unless it is not being deleted)."""

        def gone() -> bool:
            found = self.get("namespace", name)
            if found is None:
                return True
            return only_terminating and found.get("status", {}).get("phase") != "Terminating"

        wait_for(gone, timeout, f"namespace {name} to be deleted")

    def daemonset(self) -> dict[str, Any]:
        """The agent DaemonSet: what the chart will deploy, minus a pullable image (KWOK runs nothing)."""
        return {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "cachelink-agent", "namespace": AGENT_NAMESPACE, "labels": AGENT_LABELS},
            "spec": {
                "selector": {"matchLabels": AGENT_LABELS},
                "template": {
                    "metadata": {"labels": AGENT_LABELS},
                    "spec": {
                        "hostNetwork": True,
                        "nodeSelector": {"cachelink.dev/dev-cluster": "true"},
                        "containers": [
                            {
                                "name": "agent",
                                "image": "example.invalid/cachelink:e2e",
                                "ports": [{"name": "api", "containerPort": self.port, "protocol": "TCP"}],
                            }
                        ],
                    },
                },
            },
        }

    def wait_agent_pods(self) -> None:
        """One Running agent pod per node, with the node's address."""
        selector = ",".join(f"{k}={v}" for k, v in AGENT_LABELS.items())

        def ready() -> bool:
            pods = self.pods(AGENT_NAMESPACE, selector)
            have = {
                p["spec"].get("nodeName"): p["status"].get("podIP")
                for p in pods
                if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
            }
            return have == self.nodes

        wait_for(ready, 90, "an agent pod per node")

    def apply_rbac(self) -> None:
        """Render the chart's operator RBAC with helm and apply it."""
        rendered = subprocess.run(
            [
                str(self.cluster.helm_path),
                "template",
                RELEASE,
                str(ROOT / "charts" / "cachelink"),
                "--namespace",
                AGENT_NAMESPACE,
                "--show-only",
                "templates/operator-rbac.yaml",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert rendered.returncode == 0, rendered.stderr
        self.kubectl("apply", "-f", "-", input=rendered.stdout)

    def write_kubeconfig(self) -> None:
        """A kubeconfig with the cluster's CA and the operator ServiceAccount's token, nothing else."""
        token = self.kubectl(
            "create", "token", OPERATOR_SA, "-n", AGENT_NAMESPACE, "--duration=4h"
        ).stdout.strip()
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": OPERATOR_SA}}],
            "current-context": "operator",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def start_operator(self) -> None:
        """Start the operator and wait until it holds the Lease."""
        self.operator.start()
        self.wait_leader()

    def wait_leader(self, timeout: float = 60.0) -> None:
        """Wait until the current operator process holds the leader Lease and kopf watches."""

        def leading() -> bool:
            self.operator.check_alive()
            lease = self.get("lease", "cachelink-operator", "-n", AGENT_NAMESPACE)
            return bool(lease) and lease["spec"].get("holderIdentity") == self.operator.identity

        wait_for(leading, timeout, "the operator to hold the leader Lease")

    def release_finalizers(self) -> None:
        """Drop the operator's finalizer from every CacheLink left (the operator is gone)."""
        found = self.get("cachelinks.cachelink.io", "-A")
        for item in (found or {}).get("items", []):
            meta = item["metadata"]
            if meta.get("finalizers"):
                self.kubectl(
                    "patch",
                    "cachelinks.cachelink.io",
                    meta["name"],
                    "-n",
                    meta["namespace"],
                    "--type=merge",
                    "-p",
                    '{"metadata": {"finalizers": null}}',
                    check=False,
                )

    def teardown(self) -> None:
        """Stop the operator and agents; remove what was applied cluster-wide."""
        self.operator.kill(signal.SIGTERM)
        self.release_finalizers()
        for agent in self.agents.values():
            agent.close()
        self.kubectl("delete", "namespace", AGENT_NAMESPACE, "--wait=false", check=False)
        with contextlib.suppress(TimeoutError):
            self.wait_namespace_gone(AGENT_NAMESPACE, timeout=60)
        self.kubectl(
            "delete",
            "clusterrole,clusterrolebinding",
            "cachelink-operator",
            "--ignore-not-found",
            check=False,
        )


@pytest.fixture(scope="session")
def operator_env(dev_cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorEnv]:
    """CRDs, agents (real processes) and the operator (real process, SA token) on the dev cluster."""
    mode = os.environ.get("CACHELINK_E2E_AGENT_MODE", "in-process")
    env = OperatorEnv(dev_cluster, tmp_path_factory.mktemp("operator-e2e"), mode)
    try:
        env.setup()
        env.start_operator()
        yield env
    finally:
        env.teardown()
        print(f"\noperator log: {env.operator.log}")


@pytest.fixture
def namespace(operator_env: OperatorEnv) -> Iterator[str]:
    """A fresh namespace; its CacheLinks are deleted (and finalized) at the end."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    operator_env.kubectl("create", "namespace", name)
    yield name
    operator_env.kubectl(
        "delete", "cachelinks.cachelink.io", "--all", "-n", name, "--timeout=60s", check=False
    )
    operator_env.kubectl("delete", "namespace", name, "--wait=false", check=False)
