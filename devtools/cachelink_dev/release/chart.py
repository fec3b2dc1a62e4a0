"""The product's Helm release: ``helm upgrade --install`` / ``helm uninstall`` of its chart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from cachelink_dev.procs import child_env
from cachelink_dev.release.resources import chart_dir
from llm_datadist.status import CacheLinkError

RELEASE = "cachelink"
RELEASE_NAMESPACE = "cachelink-system"
#: operator flags that make a test or demo react in seconds (the defaults suit a production cluster)
OPERATOR_FLAGS = [
    "--retry-delay=0.5",
    "--max-retry-delay=3",
    "--owner-confirm-interval=10",
    "--leader-duration=6",
    "--leader-renew=2",
    "--log-format=plain",
    "--verbose",
]


class HelmError(CacheLinkError, RuntimeError):
    """A helm command failed."""


class Release:
    """``helm upgrade --install`` / ``helm uninstall`` of the chart against one kubeconfig."""

    def __init__(
        self, helm: Path | str, kubeconfig: Path, root: Path, namespace: str = RELEASE_NAMESPACE
    ) -> None:
        self.helm, self.kubeconfig, self.root, self.namespace = str(helm), kubeconfig, root, namespace
        chart = chart_dir()
        if chart is None:
            raise HelmError("the chart is not found: neither a checkout's charts/ nor the installed copy")
        self.chart = chart

    def _run(self, *args: str, timeout: float = 600.0) -> str:
        argv = [self.helm, f"--kubeconfig={self.kubeconfig}", *args]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=child_env()
        )
        if done.returncode != 0:
            raise HelmError(f"`helm {' '.join(args[:2])}` failed: {done.stderr.strip()}")
        return done.stdout

    def install(self, values: dict[str, Any], wait_s: int | None = None) -> None:
        """Install or upgrade the release with ``values`` (written to a file, for the record);
        ``wait_s``: ``--wait`` until every object is ready, at most that long."""
        values_file = self.root / "values.json"
        values_file.write_text(json.dumps(values, indent=1))
        wait = ["--wait", f"--timeout={wait_s}s"] if wait_s else []
        self._run(
            "upgrade",
            "--install",
            RELEASE,
            str(self.chart),
            f"--namespace={self.namespace}",
            "--create-namespace",
            "--take-ownership",  # of CRDs kept by an earlier release (crds.keep)
            f"--values={values_file}",
            *wait,
        )

    def uninstall(self) -> None:
        """Uninstall the release (the CRDs stay: the chart keeps them)."""
        self._run("uninstall", RELEASE, f"--namespace={self.namespace}", "--ignore-not-found")
