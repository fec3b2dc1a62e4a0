"""The operator: the chart's Deployment pod, its container run as a local process (in-cluster login with
the pod's own bound ServiceAccount token, so only the chart's RBAC applies)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from cachelink.localstack.kube import Kube
from cachelink.localstack.podrun import Node, PodProcess
from cachelink.localstack.procs import tail

LEASE_NAME = "cachelink-operator"
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator,app.kubernetes.io/name=cachelink"


class OperatorProcess:
    """The operator pod's container; ``start`` after ``kill`` is a container restart (same identity)."""

    def __init__(self, kube: Kube, pod: dict[str, Any], root: Path, node: Node) -> None:
        self.pod = PodProcess(kube, pod, "operator", root, node)
        self.identity = self.pod.name  # POD_NAME: the leader election identity
        self.log = self.pod.log
        self.starts = 0

    @property
    def process(self) -> Any:
        """The ``Popen`` of the current run (None before the first start)."""
        return self.pod.process

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self.pod.running

    def start(self) -> OperatorProcess:
        """Start (or restart) the container's process."""
        self.starts += 1
        self.pod.start(header=f"start #{self.starts}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL: a crash)."""
        self.pod.stop(sig, grace=20.0)

    def lines(self) -> list[str]:
        """The log lines of the current run."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[text.rfind("\n==> start") :].splitlines()

    def check_alive(self) -> None:
        """Raise with the log tail if the operator exited."""
        if self.pod.process is not None and not self.pod.running:
            raise RuntimeError(f"operator exited {self.pod.managed.returncode}:\n{tail(self.log, 80)}")
