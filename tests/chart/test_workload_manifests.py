"""No workload mounts a host path: every pod manifest the chart, the demo and the docs render is checked.

The agent DaemonSet is the one pod allowed host paths (and privilege): it serves the CSI plugin through
which workloads get their sockets. Every other pod, and every workload the docs show, must pass the Pod
Security ``restricted`` rules that concern volumes and privileges.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from .test_chart import ROOT, objects

WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
#: volume types Pod Security "restricted" allows
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
_YAML_BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.DOTALL)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def is_agent(doc: dict[str, Any]) -> bool:
    labels = doc.get("metadata", {}).get("labels") or {}
    return doc["kind"] == "DaemonSet" and labels.get("app.kubernetes.io/component") == "agent"


def host_paths(doc: dict[str, Any]) -> list[str]:
    return [v["name"] for v in pod_spec(doc).get("volumes") or [] if "hostPath" in v]


def restricted_violations(doc: dict[str, Any]) -> list[str]:
    """What breaks Pod Security ``restricted`` (the rules a workload's manifest decides)."""
    spec = pod_spec(doc)
    problems = [
        f"volume {v['name']} is not of a restricted type"
        for v in spec.get("volumes") or []
        if not set(v) - {"name"} <= RESTRICTED_VOLUMES
    ]
    problems += [f"{flag} is set" for flag in ("hostNetwork", "hostPID", "hostIPC") if spec.get(flag)]
    pod_ctx = spec.get("securityContext") or {}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        ctx = container.get("securityContext") or {}
        name = container["name"]
        if ctx.get("privileged"):
            problems.append(f"{name} is privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name} may escalate privileges")
        if (ctx.get("capabilities") or {}).get("drop") != ["ALL"]:
            problems.append(f"{name} keeps capabilities")
        if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
            problems.append(f"{name} may run as root")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name} has no seccomp profile")
    return problems


def doc_workloads() -> dict[str, dict[str, Any]]:
    """Workload manifests in README.md, docs/*.md and examples/*.yaml, by where they are."""
    found: dict[str, dict[str, Any]] = {}
    texts = {
        p: _YAML_BLOCK.findall(p.read_text())
        for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    }
    texts.update({p: [p.read_text()] for p in sorted((ROOT / "examples").glob("*.yaml"))})
    for path, blocks in texts.items():
        for i, block in enumerate(blocks):
            for j, doc in enumerate(yaml.safe_load_all(block)):
                if isinstance(doc, dict) and doc.get("kind") in WORKLOAD_KINDS:
                    found[f"{path.relative_to(ROOT)} block {i} doc {j}"] = doc
    return found


def flatten_values(prefix: str, value: Any) -> list[str]:
    """Chart values as ``--set`` flags."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in flatten_values(f"{prefix}.{k}" if prefix else k, v)]
    if isinstance(value, list):
        return [f"{prefix}={{{','.join(str(v) for v in value)}}}"] if value else []
    return [f"{prefix}={str(value).lower() if isinstance(value, bool) else value}"]


def e2e_chart_sets() -> list[str]:
    """The values the operator's e2e tests install the chart with (the demo uses the defaults)."""
    from cachelink_dev.release.chart import OPERATOR_FLAGS

    values = {
        "operator": {"resyncIntervalSeconds": 20, "extraArgs": OPERATOR_FLAGS},
        "agentDaemonSet": {"inProcess": True, "extraArgs": ["--reconcile-interval=1"]},
    }
    return flatten_values("", values)


def test_the_demo_and_e2e_workload_pods_attach_through_csi_under_restricted():
    """The pods the demo and the operator's e2e tests run as workloads: restricted, CSI, no host path."""
    import importlib.util

    from cachelink_dev.demo.real import demo_objects

    _policy, _namespace, _cachelink, pods = demo_objects("localhost/cachelink:test")
    support = ROOT / "tests" / "e2e" / "support" / "cachelink_e2e_operator.py"
    spec = importlib.util.spec_from_file_location("_e2e_operator_support_for_manifests", support)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    attaching = module.deployment("ns", "prefill", 1, image="localhost/cachelink:test", cachelink="kv")
    idle = module.deployment("ns", "decode", 1, image="localhost/cachelink:test")
    for doc in [*pods, attaching, idle]:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        assert not host_paths(doc), f"{where} mounts a host path"
        assert not restricted_violations(doc), (where, restricted_violations(doc))
    for doc in [*pods, attaching]:
        (volume,) = pod_spec(doc)["volumes"]
        assert volume["csi"]["driver"] == "cachelink.io", doc["metadata"]["name"]


def test_the_demo_model_pods_attach_through_csi_and_keep_weights_in_their_own_volume():
    """The demo's Gemma prefill, decode and router pods: restricted, no host path; the servers attach
    through the CacheLink's CSI volume and dequantise the weights into an emptyDir of their own."""
    from cachelink_dev.demo import inference as demo_inference

    image = "localhost/cachelink-model:test"
    cachelink, prefill, decode = demo_inference.objects("inference", ("node-a", "node-b"), image)
    router = demo_inference.router_pod(
        "inference", "node-a", image, "http://10.0.0.1:8000", "http://10.0.0.2:8000"
    )
    for doc in (prefill, decode, router):
        where = f"{doc['kind']} {doc['metadata']['name']}"
        assert not host_paths(doc), f"{where} mounts a host path"
        assert not restricted_violations(doc), (where, restricted_violations(doc))
    for doc, role in ((prefill, "Prompt"), (decode, "Decode")):
        volumes = {v["name"]: v for v in pod_spec(doc)["volumes"]}
        assert volumes["cachelink"]["csi"]["volumeAttributes"] == {"cachelink": cachelink["metadata"]["name"]}
        assert "emptyDir" in volumes["weights"]
        selector = cachelink["spec"]["prompt" if role == "Prompt" else "decode"]["podSelector"]["matchLabels"]
        assert selector.items() <= doc["metadata"]["labels"].items()
        (container,) = pod_spec(doc)["containers"]
        assert container["args"][:3] == [container["args"][0], "--attach-dir", "/run/cachelink"]


def test_the_docs_show_a_workload_and_it_attaches_through_csi_under_restricted():
    workloads = doc_workloads()
    assert workloads, "the README's workload example was not found"
    for where, doc in workloads.items():
        assert not host_paths(doc), f"{where} mounts a host path"
        assert not restricted_violations(doc), (where, restricted_violations(doc))
    volumes = [v for doc in workloads.values() for v in pod_spec(doc).get("volumes") or []]
    assert any(
        v.get("csi", {}).get("driver") == "cachelink.io" and "cachelink" in v["csi"]["volumeAttributes"]
        for v in volumes
    )


@pytest.mark.parametrize("flavour", ["defaults", "e2e", "csi-off"])
def test_only_the_agent_mounts_host_paths_in_what_the_chart_renders(helm, flavour):
    sets = {"defaults": [], "e2e": e2e_chart_sets(), "csi-off": ["csi.enabled=false"]}[flavour]
    docs = [d for d in objects(helm, *sets) if d["kind"] in WORKLOAD_KINDS]
    agents = [d for d in docs if is_agent(d)]
    assert len(agents) == 1 and host_paths(agents[0]), "the agent is found (and does use host paths)"
    for doc in docs:
        if not is_agent(doc):
            assert not host_paths(doc), f"{doc['kind']} {doc['metadata']['name']} mounts a host path"


def test_the_checks_catch_a_host_path_and_a_privileged_workload():
    pod = {
        "kind": "Pod",
        "metadata": {"name": "bad"},
        "spec": {
            "containers": [{"name": "c", "securityContext": {"privileged": True}}],
            "volumes": [{"name": "run", "hostPath": {"path": "/run/cachelink"}}],
        },
    }
    assert host_paths(pod) == ["run"]
    problems = restricted_violations(pod)
    assert "volume run is not of a restricted type" in problems and "c is privileged" in problems
