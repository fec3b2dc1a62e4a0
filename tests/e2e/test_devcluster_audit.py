"""The development cluster's API server audits ServiceAccount requests (not kube-system's controllers)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachelink_dev.devcluster import DevCluster
from cachelink_dev.devcluster.fixtures import wait_for

pytestmark = pytest.mark.e2e

Kubectl = Callable[..., Any]


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace, deleted afterwards."""
    name = f"audit-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _events(path: Path) -> list[dict[str, Any]]:
    """Every audit event in the log written so far."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _token_kubeconfig(cluster: DevCluster, token: str, path: Path) -> Path:
    """A kubeconfig with the cluster's CA and only ``token`` as credentials (no admin certificate)."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    entry = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [entry],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": entry["name"], "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_service_account_requests_are_audited(
    dev_cluster: DevCluster, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    sa, configmap = "writer", f"audited-{uuid.uuid4().hex[:6]}"
    rbac = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "configmap-writer", "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "configmap-writer", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-writer"},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
    ]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
    token = kubectl("create", "token", sa, "-n", namespace, "--duration=10m").stdout.strip()
    config = _token_kubeconfig(dev_cluster, token, tmp_path / "sa.kubeconfig")
    username = f"system:serviceaccount:{namespace}:{sa}"

    def create() -> bool:  # the RoleBinding may take a moment to reach the authorizer's cache
        argv = [str(dev_cluster.kubectl_path), f"--kubeconfig={config}", "create", "configmap"]
        argv += [configmap, "-n", namespace, "--from-literal=k=v"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        return result.returncode == 0

    wait_for(create, 30, f"{username} to create a ConfigMap", interval=0.5)

    def created() -> list[dict[str, Any]]:
        return [
            e
            for e in _events(dev_cluster.audit_log)
            if e.get("user", {}).get("username") == username
            and e.get("verb") == "create"
            and e.get("objectRef", {}).get("resource") == "configmaps"
            and e.get("objectRef", {}).get("name") == configmap
            and e.get("responseStatus", {}).get("code") == 201
        ]

    found = wait_for(created, 30, f"the audit event of {username} creating {configmap}", interval=0.5)
    event = found[0]
    assert event["stage"] == "ResponseComplete"
    assert event["level"] == "Metadata"
    assert event["objectRef"]["namespace"] == namespace
    assert "requestObject" not in event and "responseObject" not in event
    assert "system:serviceaccounts" in event["user"]["groups"]
    events = _events(dev_cluster.audit_log)
    assert all(e["stage"] != "RequestReceived" for e in events)
    from_kube_system = [
        e
        for e in events
        if "system:serviceaccounts:kube-system" in e.get("user", {}).get("groups", [])
        or e.get("user", {}).get("username", "").startswith("system:serviceaccount:kube-system:")
    ]
    assert not from_kube_system, from_kube_system[:3]
    # certificate users (the admin, the scheduler, KWOK) are not audited either
    assert not [e for e in events if "system:serviceaccounts" not in e.get("user", {}).get("groups", [])]
