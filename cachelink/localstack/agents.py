"""The node agents: the chart's DaemonSet pods, each one's container run as a local process.

KWOK runs the DaemonSet's pods without running containers, so each node's agent runs here as a process
started from its pod (:class:`cachelink.localstack.podrun.PodProcess`): the chart's arguments and
environment, the chart's Secret as its token file, the node's host paths at the chart's mount paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from cachelink_agent import models
from cachelink_agent.client import AgentClient
from cachelink_agent.tokens import node_token

from cachelink.localstack.kube import Kube
from cachelink.localstack.podrun import Node, PodProcess
from cachelink.localstack.procs import tail

T = TypeVar("T")
AGENT_NAMESPACE = "cachelink-system"
AGENT_LABELS = {"app.kubernetes.io/name": "cachelink", "app.kubernetes.io/component": "agent"}
AGENT_SELECTOR = ",".join(f"{k}={v}" for k, v in sorted(AGENT_LABELS.items()))
AGENT_SECRET_NAME = "cachelink-agent-token"  # noqa: S105 - a Secret's name
AGENT_SECRET_KEY = "secret"  # noqa: S105 - a key in that Secret
NODE_SELECTOR = {"cachelink.dev/dev-cluster": "true"}


def api_port(pod: dict[str, Any]) -> int | None:
    """The container port named ``api`` of a pod."""
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == "api":
                return int(port["containerPort"])
    return None


class AgentProcess:
    """One node's agent: the container of its DaemonSet pod, restartable as a container is."""

    def __init__(self, kube: Kube, pod: dict[str, Any], root: Path, node: Node, secret: bytes) -> None:
        self.node, self.ip = node.name, str(pod["status"]["podIP"])
        self.port = api_port(pod) or 0
        self.pod = PodProcess(kube, pod, "agent", root, node)
        self.url = f"http://{self.ip}:{self.port}"
        self.token = node_token(secret, self.node)
        self.log = self.pod.log

    @property
    def process(self) -> Any:
        """The ``Popen`` of the running agent (None before the first start)."""
        return self.pod.process

    @property
    def secret_file(self) -> Path:
        """The local file behind the agent's token file (the Secret volume, kept across restarts)."""
        return self.pod.dir / "volumes" / "secret" / AGENT_SECRET_KEY

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self.pod.running

    def start(self, timeout: float = 60.0) -> AgentProcess:
        """Start the container's process and wait until it answers /readyz."""
        self.pod.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pod.running:
                code = self.pod.managed.returncode
                raise RuntimeError(f"agent {self.node} exited {code}:\n{tail(self.log)}")
            with contextlib.suppress(Exception):
                status, _ = self.call(lambda c: c.request("GET", "/readyz", timeout=2))
                if status == 200:
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"agent {self.node} not ready:\n{tail(self.log)}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL by default: a crash; SIGTERM keeps instances' pools)."""
        self.pod.stop(sig)

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
        """Stop the process (SIGTERM)."""
        self.kill(signal.SIGTERM)
