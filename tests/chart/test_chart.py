"""The Helm chart, rendered by the helm built for the local cluster: lint, objects, strict values, no drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachelink.devcluster import ensure_tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cachelink"


@pytest.fixture(scope="module")
def helm() -> str:
    return str(ensure_tools().helm)


def render(helm: str, *sets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [helm, "template", "rel", str(CHART), "--namespace", "cachelink-system"]
    for item in sets:
        argv += ["--set", item]
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def objects(helm: str, *sets: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(helm, *sets).stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_lint_passes(helm):
    done = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_object_carries_the_chart_labels(helm):
    for doc in objects(helm):
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == "rel", doc["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"


def test_operator_deployment_is_locked_down(helm):
    (deploy,) = by_kind(objects(helm), "Deployment")
    assert deploy["spec"]["replicas"] == 2, "two replicas with a leader Lease by default"
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"livenessProbe", "readinessProbe", "resources"} <= set(container)
    (pdb,) = by_kind(objects(helm), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


def test_operator_rbac_is_least_privilege_and_agent_has_none(helm):
    docs = objects(helm)
    rules = [rule for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") for rule in role["rules"]]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule.get("resources", []), rule
    secrets = [r for r in rules if "secrets" in r.get("resources", [])]
    assert all(not {"list", "watch", "delete"} & set(r["verbs"]) for r in secrets), "secrets: get/create only"
    agent_sa = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"].endswith("-agent")]
    assert agent_sa and agent_sa[0]["automountServiceAccountToken"] is False
    bound = {
        s["name"]
        for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding")
        for s in b["subjects"]
    }
    assert agent_sa[0]["metadata"]["name"] not in bound


def test_agent_daemonset_mounts_pools_and_sizes_memory_for_them(helm):
    (ds,) = by_kind(
        objects(helm, "agentDaemonSet.maxPoolBytes=2Gi", "agentDaemonSet.agentMemory=512Mi"), "DaemonSet"
    )
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert {"name": "api", "containerPort": 8470} in container["ports"]
    assert "--max-pool-bytes=2Gi" in container["args"]
    assert container["resources"]["limits"]["memory"] == (2 << 30) + (512 << 20)
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {
        "pools": "/dev/shm/cachelink",
        "run": "/run/cachelink",
        "state": "/var/lib/cachelink",
    }
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_value_sets_change_what_they_say(helm):
    docs = objects(
        helm,
        "agentDaemonSet.hostNetwork=false",
        "agentDaemonSet.inProcess=true",
        "serviceMonitor.enabled=true",
        "crds.enabled=false",
        "crds.keep=false",
        "podSecurity.labelNamespace=true",
    )
    (ds,) = by_kind(docs, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is False
    assert "--in-process" in ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert by_kind(docs, "ServiceMonitor") and by_kind(docs, "PodMonitor")
    assert not by_kind(docs, "CustomResourceDefinition")
    (ns,) = by_kind(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    crds = by_kind(objects(helm), "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in crds} == {
        "cachelinks.cachelink.io",
        "cachelinkpolicies.cachelink.io",
    }
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["agentDaemonSet.hostNetowrk=true"], "additional properties 'hostNetowrk' not allowed"),
        (["agentDaemonSet.logFormat=yaml"], "logFormat"),
        (["agentDaemonSet.maxPoolBytes=lots"], "maxPoolBytes"),
        (["operator.replicas=2", "podDisruptionBudget.minAvailable=2"], "must be below operator.replicas"),
        (["podSecurity.labelNamespace=true", "podSecurity.level=restricted"], "need the privileged level"),
        (["crds.enabled=false"], "crds.keep needs crds.enabled"),
    ],
)
def test_bad_values_fail_with_a_clear_message(helm, sets, message):
    done = render(helm, *sets, check=False)
    assert done.returncode != 0
    assert message in done.stderr


def test_chart_crds_match_crds_dir_and_schema_matches_values():
    for script in ("gen-chart-crds.py", "gen-values-schema.py"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "hack" / script), "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
