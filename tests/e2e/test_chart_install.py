"""A real `helm install` of the chart into the local cluster of simulated (KWOK) nodes: server-side validation,
RBAC, the Secret kept across upgrades, CRDs and CacheLinks kept on uninstall, and no pod of the chart or the
demo on a simulated node (they are tainted; the product runs on real nodes, ``tests/realnodes``)."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest
from cachelink_agent import tokens

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "cachelink-chart-test"
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


def agent_keys(kubectl) -> tuple[bytes, str, bytes]:
    """The agents' credentials as installed: signing key (PEM), verify certificate, metrics credential."""

    def get(kind: str, name: str) -> dict:
        return json.loads(kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json", check=True).stdout)[
            "data"
        ]

    signing = base64.b64decode(get("secret", "cachelink-agent-signing-key")["key.pem"])
    cert = get("configmap", "cachelink-agent-verify-key")["cert.pem"]
    metrics = base64.b64decode(get("secret", "cachelink-agent-metrics")["token"])
    return signing, cert, metrics


def unschedulable(pod: dict) -> bool:
    """The scheduler said it fits no node (the simulated nodes' taint)."""
    conditions = pod["status"].get("conditions") or []
    return not pod["spec"].get("nodeName") and any(
        c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
        for c in conditions
    )


def assert_nothing_lands_on_simulated_nodes(dev_cluster, kubectl) -> None:
    """The chart's DaemonSet schedules no pod, its operator pods and the demo's workload pods stay
    Pending: every node here is a tainted simulated node."""
    from cachelink_dev.demo.real import demo_objects

    nodes = json.loads(kubectl("get", "nodes", "-o", "json", check=True).stdout)["items"]
    assert nodes and all(
        any(t["key"] == "cachelink.dev/simulated" for t in n["spec"].get("taints") or []) for n in nodes
    )
    _policy, _namespace, _cachelink, demo_pods = demo_objects("localhost/cachelink:test")
    demo_namespace = f"{NAMESPACE}-demo"
    for pod in demo_pods:
        pod["metadata"]["namespace"] = demo_namespace
    kubectl("create", "namespace", demo_namespace, check=True)
    try:
        kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": demo_pods}),
            check=True,
        )

        def pending() -> bool:
            ours = [
                *pods(kubectl, "operator"),
                *json.loads(kubectl("get", "pods", "-n", demo_namespace, "-o", "json", check=True).stdout)[
                    "items"
                ],
            ]
            return len(ours) == 2 + len(demo_pods) and all(unschedulable(p) for p in ours)

        wait_for(pending, "the operator's and the demo's pods reported Unschedulable")
        daemonset = json.loads(
            kubectl(
                "get",
                "daemonset",
                "-n",
                NAMESPACE,
                "-l",
                "app.kubernetes.io/component=agent",
                "-o",
                "json",
                check=True,
            ).stdout
        )["items"][0]
        assert daemonset["status"].get("desiredNumberScheduled", 0) == 0 and not pods(kubectl, "agent")
    finally:
        kubectl("delete", "namespace", demo_namespace, "--wait=false", check=False)


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
        *sets,
    )
    assert done.returncode == 0, done.stderr
    try:
        assert_nothing_lands_on_simulated_nodes(dev_cluster, kubectl)
        keys = agent_keys(kubectl)
        # helm made an Ed25519 key, and the certificate the agents verify with carries its public half
        signing_key = tokens.load_signing_key(keys[0])
        assert tokens.load_verify_key(keys[1].encode()) == signing_key.public_key()
        assert len(keys[2]) == 48
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
            *sets,
            "--set",
            "agentDaemonSet.logFormat=text",
        )
        assert done.returncode == 0, done.stderr
        assert agent_keys(kubectl) == keys, "the agents' keys survive an upgrade"
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
