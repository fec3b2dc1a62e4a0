"""The operator as its Deployment would run it, but here as a process under a ServiceAccount kubeconfig."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

from cachelink.localstack.agents import AGENT_NAMESPACE, AGENT_SECRET_KEY, AGENT_SECRET_NAME, AGENT_SELECTOR
from cachelink.localstack.procs import ManagedProcess, child_env, python_argv, tail

LEASE_NAME = "cachelink-operator"


class OperatorProcess:
    """``python -m cachelink_operator`` with the chart's flags and a short leader Lease."""

    def __init__(self, root: Path, kubeconfig: Path, resync_s: float = 20.0) -> None:
        self.root, self.kubeconfig, self.resync_s = root, kubeconfig, resync_s
        self.log = root / "operator.log"
        self.managed = ManagedProcess("operator", root / "operator.pid", self.log)
        self.identity = ""
        self.starts = 0

    @property
    def process(self) -> Any:
        """The ``Popen`` of the current replica (None before the first start)."""
        return self.managed.process

    def argv(self) -> list[str]:
        """The operator's command line."""
        return python_argv(
            "cachelink_operator",
            f"--kubeconfig={self.kubeconfig}",
            f"--agent-namespace={AGENT_NAMESPACE}",
            f"--agent-selector={AGENT_SELECTOR}",
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
        )

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self.managed.running

    def start(self) -> OperatorProcess:
        """Start a new replica (a new identity, as a new pod would have)."""
        self.starts += 1
        self.identity = f"local-operator-{self.starts}-{uuid.uuid4().hex[:6]}"
        self.managed.start(self.argv(), child_env(), self.root, header=f"start #{self.starts}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL: a crash)."""
        self.managed.stop(sig, grace=20.0)

    def lines(self) -> list[str]:
        """The log lines of the current run."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[text.rfind("\n==> start") :].splitlines()

    def check_alive(self) -> None:
        """Raise with the log tail if the operator exited."""
        if self.managed.process is not None and not self.managed.running:
            raise RuntimeError(f"operator exited {self.managed.returncode}:\n{tail(self.log, 80)}")
