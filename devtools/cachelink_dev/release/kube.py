"""kubectl against one explicit kubeconfig: an exported ``KUBECONFIG`` is never consulted."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from cachelink_dev.procs import child_env, wait_for
from llm_datadist.status import CacheLinkError


class KubeError(CacheLinkError, RuntimeError):
    """A kubectl call failed."""


class Kube:
    """Runs ``kubectl --kubeconfig=...``; JSON in, JSON out."""

    def __init__(self, kubectl: Path | str, kubeconfig: Path | str, timeout: float = 120.0) -> None:
        self.kubectl_path, self.kubeconfig, self.timeout = str(kubectl), Path(kubeconfig), timeout

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl; raises :class:`KubeError` with its stderr when ``check`` and it fails."""
        cmd = [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args]
        try:
            result = subprocess.run(
                cmd,
                input=input,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                env=child_env(),
            )
        except subprocess.TimeoutExpired as exc:
            raise KubeError(f"`kubectl {' '.join(args)}` timed out after {self.timeout:.0f}s") from exc
        if check and result.returncode != 0:
            raise KubeError(
                f"`kubectl {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def server(self) -> str:
        """The API server URL of the kubeconfig's current context."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
        return str(cluster["cluster"]["server"])

    def apply(
        self, *objects: dict[str, Any], check: bool = True, server_side: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` of these objects (``server_side``: as field manager ``cachelink``, forced)."""
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        flags = ["--server-side", "--force-conflicts", "--field-manager=cachelink"] if server_side else []
        return self.kubectl("apply", *flags, "-f", "-", input=body, check=check)

    def get(self, *args: str) -> Any:
        """``kubectl get ARGS -o json`` (None when not found)."""
        result = self.kubectl("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise KubeError(result.stderr.strip())
        return json.loads(result.stdout)

    def wait_crds_established(self, names: Iterable[str], timeout: float = 60.0) -> None:
        """Wait until every named CRD reports ``Established`` (polling: no race with an empty status)."""

        def established(name: str) -> bool:
            crd = self.get("crd", name) or {}
            conditions = (crd.get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

        for name in names:
            wait_for(functools.partial(established, name), timeout, f"CRD {name} to be established")

    def wait_namespace_gone(self, name: str, only_terminating: bool = False, timeout: float = 90.0) -> None:
        """Wait until namespace ``name`` is gone (``only_terminating``: unless it is not being deleted)."""

        def gone() -> bool:
            found = self.get("namespace", name)
            if found is None:
                return True
            return only_terminating and found.get("status", {}).get("phase") != "Terminating"

        wait_for(gone, timeout, f"namespace {name} to be deleted")
