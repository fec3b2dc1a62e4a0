"""The operator's RBAC (the chart's rules, shipped with the package) and a kubeconfig with only its token."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from cachelink.localstack.agents import AGENT_NAMESPACE
from cachelink.localstack.kube import Kube
from cachelink.localstack.resources import chart_dir, load_documents

OPERATOR_SA = "cachelink-operator"  # the chart's name for release "cachelink"
RELEASE = "cachelink"


def shipped_rbac() -> list[dict[str, Any]]:
    """The operator's ServiceAccount, ClusterRole(Binding) and leader Role(Binding), as shipped."""
    return load_documents("operator-rbac.yaml")


def default_rbac(helm: Path | str) -> list[dict[str, Any]]:
    """A checkout's chart rendered by ``helm`` (what is being edited is what runs); else the shipped copy."""
    chart = chart_dir()
    return render_chart_rbac(helm, chart) if chart is not None else shipped_rbac()


def render_chart_rbac_text(helm: Path | str, chart: Path | str, namespace: str = AGENT_NAMESPACE) -> str:
    """``helm template`` of the chart's ``templates/operator-rbac.yaml`` for release ``cachelink``."""
    argv = [str(helm), "template", RELEASE, str(chart), "--namespace", namespace]
    argv += ["--show-only", "templates/operator-rbac.yaml"]
    rendered = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if rendered.returncode != 0:
        raise RuntimeError(f"helm template failed: {rendered.stderr.strip()}")
    return rendered.stdout


def render_chart_rbac(
    helm: Path | str, chart: Path | str, namespace: str = AGENT_NAMESPACE
) -> list[dict[str, Any]]:
    """The same objects rendered from the chart with ``helm template`` (for checks and a checkout)."""
    return [doc for doc in yaml.safe_load_all(render_chart_rbac_text(helm, chart, namespace)) if doc]


def token_kubeconfig(kube: Kube, path: Path, duration: str = "24h") -> Path:
    """Write a kubeconfig holding the cluster's CA and a token of the operator's ServiceAccount only."""
    token = kube.kubectl("create", "token", OPERATOR_SA, "-n", AGENT_NAMESPACE, f"--duration={duration}")
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": OPERATOR_SA, "user": {"token": token.stdout.strip()}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": OPERATOR_SA}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
