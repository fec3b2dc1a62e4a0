"""The node agents: the objects of their DaemonSet, and one real ``cachelink-agent`` process per node.

KWOK runs the DaemonSet's pods without running containers, so each node's agent runs here as a process
bound to the node's loopback address and the DaemonSet's port (what a hostNetwork pod would do).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from cachelink_agent import models
from cachelink_agent.client import AgentClient, node_token

from cachelink.localstack.procs import ManagedProcess, child_env, python_argv, tail

T = TypeVar("T")
AGENT_NAMESPACE = "cachelink-system"
AGENT_LABELS = {"app.kubernetes.io/name": "cachelink", "app.kubernetes.io/component": "agent"}
AGENT_SELECTOR = ",".join(f"{k}={v}" for k, v in sorted(AGENT_LABELS.items()))
AGENT_SECRET_NAME = "cachelink-agent-token"  # noqa: S105 - a Secret's name
AGENT_SECRET_KEY = "secret"  # noqa: S105 - a key in that Secret
NODE_SELECTOR = {"cachelink.dev/dev-cluster": "true"}
#: the longest run dir whose attach sockets (``<dir>/<63-char instance name>.sock``) fit an AF_UNIX path
SHORT_PATH = 107 - 1 - 63 - len(".sock")


def agent_objects(secret: bytes, port: int) -> list[dict[str, Any]]:
    """The agents' namespace, shared Secret and hostNetwork DaemonSet (an image KWOK never pulls)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": AGENT_NAMESPACE}}
    token = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": AGENT_SECRET_NAME, "namespace": AGENT_NAMESPACE},
        "type": "Opaque",
        "data": {AGENT_SECRET_KEY: base64.b64encode(secret).decode()},
    }
    container = {
        "name": "agent",
        "image": "example.invalid/cachelink:local",
        "ports": [{"name": "api", "containerPort": port, "protocol": "TCP"}],
    }
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "cachelink-agent", "namespace": AGENT_NAMESPACE, "labels": AGENT_LABELS},
        "spec": {
            "selector": {"matchLabels": AGENT_LABELS},
            "template": {
                "metadata": {"labels": AGENT_LABELS},
                "spec": {"hostNetwork": True, "nodeSelector": NODE_SELECTOR, "containers": [container]},
            },
        },
    }
    return [namespace, token, daemonset]


class AgentProcess:
    """One node's ``cachelink-agent`` (restartable on the same dirs, as its DaemonSet pod would be)."""

    def __init__(
        self,
        root: Path,
        node: str,
        ip: str,
        port: int,
        secret: bytes,
        mode: str = "in-process",
        max_pool: str = "1Gi",
    ) -> None:
        self.node, self.ip, self.port, self.mode, self.max_pool = node, ip, port, mode, max_pool
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.state_dir, self.run_dir = root / "state", _short_run_dir(root / "run", node)
        self.pool_dir = Path(tempfile.mkdtemp(prefix=f"cachelink-{node}-", dir="/dev/shm"))
        (root / "pool-dir").write_text(str(self.pool_dir))  # for a later run's clean-up
        self.secret_file = root / "secret"
        self.secret_file.write_bytes(secret)
        self.secret_file.chmod(0o600)
        self.url = f"http://{ip}:{port}"
        self.token = node_token(secret, node)
        self.log = root / "agent.log"
        self.managed = ManagedProcess(f"agent-{node}", root / "agent.pid", self.log)

    @property
    def process(self) -> Any:
        """The ``Popen`` of the running agent (None before the first start)."""
        return self.managed.process

    def argv(self) -> list[str]:
        """The agent's command line."""
        argv = python_argv(
            "cachelink_agent",
            f"--listen={self.ip}:{self.port}",
            f"--token-file={self.secret_file}",
            f"--state-dir={self.state_dir}",
            f"--run-dir={self.run_dir}",
            f"--pool-dir={self.pool_dir}",
            f"--node-name={self.node}",
            f"--host-id={self.node}",
            f"--max-pool-bytes={self.max_pool}",
            "--reconcile-interval=1",
            "--restart-backoff-max=2",
        )
        if self.mode == "in-process":
            argv.append("--in-process")
        return argv

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self.managed.running

    def start(self, timeout: float = 60.0) -> AgentProcess:
        """Start the process and wait until it answers /readyz."""
        self.managed.start(self.argv(), child_env(), self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.managed.running:
                code = self.managed.returncode
                raise RuntimeError(f"agent {self.node} exited {code}:\n{tail(self.log)}")
            with contextlib.suppress(Exception):
                status, _ = self.call(lambda c: c.request("GET", "/readyz", timeout=2))
                if status == 200:
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"agent {self.node} not ready:\n{tail(self.log)}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL by default: a crash; SIGTERM keeps instances' pools)."""
        self.managed.stop(sig)

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
        (self.root / "pool-dir").unlink(missing_ok=True)
        _remove_short_run_dir(self.root)


def stop_recorded_agent(root: Path) -> bool:
    """Stop the agent recorded in ``root`` by an earlier run (by pid) and remove its pool files."""
    stopped = ManagedProcess(f"agent-{root.name}", root / "agent.pid", root / "agent.log").stop()
    pool_record = root / "pool-dir"
    if pool_record.exists():
        pool_dir = Path(pool_record.read_text().strip())
        if pool_dir.parent == Path("/dev/shm") and pool_dir.name.startswith("cachelink-"):
            shutil.rmtree(pool_dir, ignore_errors=True)
        pool_record.unlink()
    _remove_short_run_dir(root)
    return stopped


def _short_run_dir(preferred: Path, node: str) -> Path:
    """``preferred`` if its sockets' paths fit ``sun_path`` (108 bytes, instance names up to 63 chars),
    else a short folder under /tmp, recorded in ``run-dir`` next to ``preferred`` for the clean-up."""
    if len(str(preferred)) <= SHORT_PATH:
        return preferred
    short = Path(tempfile.mkdtemp(prefix=f"cachelink-{node}-", dir="/tmp"))
    (preferred.parent / "run-dir").write_text(str(short))
    return short


def _remove_short_run_dir(root: Path) -> None:
    record = root / "run-dir"
    if record.exists():
        short = Path(record.read_text().strip())
        if short.parent == Path("/tmp") and short.name.startswith("cachelink-"):
            shutil.rmtree(short, ignore_errors=True)
        record.unlink()
