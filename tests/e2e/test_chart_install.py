"""A real `helm install` of the chart into the local cluster: server-side validation, RBAC, pods on every node."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "cachelink-chart-test"
# A port of its own: other e2e tests run an agent DaemonSet on the same simulated nodes (hostNetwork).
SETS = ["agentDaemonSet.apiPort=18470", "operator.metricsPort=18480", "operator.healthPort=18481"]

pytestmark = pytest.mark.e2e


def helm(cluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(cluster.helm_path), "--kubeconfig", str(cluster.kubeconfig), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def wait_for(predicate, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def pods(kubectl, component: str) -> list[dict]:
    out = kubectl(
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        f"app.kubernetes.io/component={component}",
        "-o",
        "json",
        check=True,
    ).stdout
    return json.loads(out)["items"]


def agent_secret(kubectl) -> str:
    out = kubectl("get", "secret", "cachelink-agent-token", "-n", NAMESPACE, "-o", "json", check=True).stdout
    return base64.b64decode(json.loads(out)["data"]["secret"]).decode()


def test_install_upgrade_uninstall(dev_cluster, kubectl):
    sets = [arg for item in SETS for arg in ("--set", item)]
    done = helm(
        dev_cluster,
        "install",
        "cl",
        str(ROOT / "charts" / "cachelink"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--take-ownership",  # the CRDs an earlier release kept (crds.keep)
        "--wait",
        "--timeout",
        "3m",
        *sets,
    )
    assert done.returncode == 0, done.stderr
    try:
        nodes = {node.name: node.ip for node in dev_cluster.nodes}

        def agents_running() -> bool:
            running = [p for p in pods(kubectl, "agent") if p["status"].get("phase") == "Running"]
            return {p["spec"]["nodeName"] for p in running} == set(nodes)

        wait_for(agents_running, "an agent pod Running on every node")
        for pod in pods(kubectl, "agent"):
            assert pod["status"]["podIP"] == nodes[pod["spec"]["nodeName"]], (
                "hostNetwork: the node's loopback IP"
            )
        wait_for(
            lambda: sum(p["status"].get("phase") == "Running" for p in pods(kubectl, "operator")) == 2,
            "both operator replicas Running",
        )
        secret = agent_secret(kubectl)
        assert len(secret) == 48
        # the operator's ServiceAccount has exactly the chart's rights
        sa = f"system:serviceaccount:{NAMESPACE}:cl-cachelink-operator"
        assert (
            kubectl(
                "auth", "can-i", "patch", "cachelinks.cachelink.io/status", "--as", sa, "-A", check=False
            ).stdout.strip()
            == "yes"
        )
        assert kubectl("auth", "can-i", "delete", "nodes", "--as", sa, check=False).stdout.strip() == "no"
        agent_sa = f"system:serviceaccount:{NAMESPACE}:cl-cachelink-agent"
        assert (
            kubectl("auth", "can-i", "list", "pods", "--as", agent_sa, "-A", check=False).stdout.strip()
            == "no"
        )
        # a CacheLink the CRDs accept, to check that uninstall keeps it
        kubectl(
            "apply",
            "-f",
            "-",
            check=True,
            input=f"""
apiVersion: cachelink.io/v1alpha1
kind: CacheLink
metadata: {{name: kept, namespace: {NAMESPACE}}}
spec:
  prompt: {{nodeNames: [node-a]}}
  decode: {{nodeNames: [node-b]}}
""",
        )
        done = helm(
            dev_cluster,
            "upgrade",
            "cl",
            str(ROOT / "charts" / "cachelink"),
            "--namespace",
            NAMESPACE,
            "--wait",
            "--timeout",
            "3m",
            *sets,
            "--set",
            "agentDaemonSet.logFormat=text",
        )
        assert done.returncode == 0, done.stderr
        assert agent_secret(kubectl) == secret, "the agents' secret survives an upgrade"
    finally:
        done = helm(dev_cluster, "uninstall", "cl", "--namespace", NAMESPACE, "--wait")
    assert done.returncode == 0, done.stderr
    crds = kubectl("get", "crd", "-o", "name", check=True).stdout
    assert "cachelinks.cachelink.io" in crds, "crds.keep leaves the CRDs"
    assert kubectl("get", "cachelink", "kept", "-n", NAMESPACE, check=False).returncode == 0, (
        "and the CacheLinks"
    )
    kubectl("delete", "cachelink", "kept", "-n", NAMESPACE, "--wait=false", check=False)
    kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
