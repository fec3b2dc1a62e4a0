"""What the API server alone decides about CacheLinks: the CRDs' schema and CEL rules, printer columns, and
server-side validation of what the chart renders.

API-level (marker ``api``): these tests need nothing but an API server, so they run against the cluster of
``kube_target`` - the development cluster, or an external cluster named with ``--e2e-kubeconfig``. They
create only objects of their own (namespaces of unique names, deleted afterwards; one CacheLinkPolicy of a
unique name, deleted), validate the rest with ``--dry-run=server``, and never delete a CRD of an
external cluster (see ``cachelink_crds``).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cachelink_e2e_target import KubeTarget

ROOT = Path(__file__).resolve().parents[2]
GROUP_VERSION = "cachelink.io/v1alpha1"

pytestmark = [pytest.mark.e2e, pytest.mark.api]


@pytest.fixture(scope="module")
def schema_namespace(cachelink_crds: KubeTarget) -> Iterator[str]:
    """One namespace for this module's dry runs (a dry run still needs its namespace to exist)."""
    with cachelink_crds.namespace("e2e-schema") as name:
        yield name


def cachelink(namespace: str, name: str = "kv", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": {"nodeNames": ["node-a"]},
        "decode": {"nodeNames": ["node-b", "node-c"]},
        "options": {"memPoolSizeBytes": 4 << 20},
    }
    body.update(spec)
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "CacheLink",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


def policy(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"namespaceSelector": {"matchLabels": {"cachelink-e2e-team": name}}}
    body.update(spec)
    return {"apiVersion": GROUP_VERSION, "kind": "CacheLinkPolicy", "metadata": {"name": name}, "spec": body}


def pods(app: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {"app": app}}}


# ------------------------------------------------------------------------------ accepted, rejected

#: spec fields of valid CacheLinks (over the defaults of ``cachelink``)
VALID_CACHELINKS: dict[str, dict[str, Any]] = {
    "node-names": {},
    "pod-selectors": {"prompt": pods("prefill"), "decode": pods("decode")},
    "match-expressions": {
        "prompt": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["p"]}]}},
        "decode": {"podSelector": {"matchExpressions": [{"key": "decode", "operator": "Exists"}]}},
    },
    "pairs": {"topology": {"mode": "Pairs", "pairs": [{"prompt": "node-a", "decode": "node-c"}]}},
    "every-option": {
        "prompt": {"nodeNames": ["node-a"], "options": {"deviceId": 1, "listenCidr": "10.0.0.0/8"}},
        "options": {
            "deviceId": 0,
            "memPoolSizeBytes": 1 << 30,
            "hostMemPoolSizeBytes": 1 << 30,
            "pageShift": 16,
            "syncKvTimeoutMs": 5000,
            "linkTotalTimeSeconds": 0,
            "linkRetryCount": 3,
            "enableRemoteCacheAccessible": True,
            "memUtilization": 0.9,
            "rdmaTrafficClass": 132,
            "rdmaServiceLevel": 4,
            "listenInterface": "eth0",
            "listenCidr": "192.168.0.0/16",
            "linkStyle": "CommDomain",
            "linkInitiator": "Prompt",
            "linkTimeoutMs": 3000,
            "maxClustersPerLinkCall": 16,
            "maxLinkSetupsInFlight": 4,
            "linkAuthentication": True,
            "finalizeTimeoutSeconds": 300,
            "clusterIdRange": {"min": 1, "max": 9007199254740991},
        },
    },
}

#: (spec fields of an invalid CacheLink, what kubectl must show of the reason)
INVALID_CACHELINKS: dict[str, tuple[dict[str, Any], str]] = {
    "selector-and-node-names": (
        {"prompt": {**pods("prefill"), "nodeNames": ["node-a"]}},
        "set exactly one of podSelector and nodeNames",
    ),
    "neither-selector-nor-node-names": ({"decode": {}}, "set exactly one of podSelector and nodeNames"),
    "empty-pod-selector": (
        {"prompt": {"podSelector": {}}},
        "podSelector must not be empty (it would select every pod of the namespace)",
    ),
    "in-without-values": (
        {"prompt": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}},
        "In and NotIn need values; Exists and DoesNotExist take none",
    ),
    "pool-too-small": ({"options": {"memPoolSizeBytes": 10}}, "memPoolSizeBytes"),
    "bad-listen-cidr": (
        {"decode": {"nodeNames": ["node-b"], "options": {"listenCidr": "10.0.0.0/33"}}},
        "listenCidr must be a CIDR such as 10.0.0.0/8",
    ),
    "cluster-id-range-reversed": (
        {"options": {"clusterIdRange": {"min": 9, "max": 3}}},
        "clusterIdRange.min must not exceed max",
    ),
    "pairs-mode-without-pairs": (
        {"topology": {"mode": "Pairs"}},
        "mode Pairs needs pairs; AllToAll takes none",
    ),
    "all-to-all-with-pairs": (
        {"topology": {"mode": "AllToAll", "pairs": [{"prompt": "node-a", "decode": "node-b"}]}},
        "mode Pairs needs pairs; AllToAll takes none",
    ),
    "pair-prompt-unknown": (
        {"topology": {"mode": "Pairs", "pairs": [{"prompt": "node-x", "decode": "node-b"}]}},
        "every pair's prompt must be one of prompt.nodeNames",
    ),
    "pair-decode-unknown": (
        {"topology": {"mode": "Pairs", "pairs": [{"prompt": "node-a", "decode": "node-x"}]}},
        "every pair's decode must be one of decode.nodeNames",
    ),
    "traffic-class-not-multiple-of-4": ({"options": {"rdmaTrafficClass": 6}}, "multiple of 4"),
    "unknown-link-style": ({"options": {"linkStyle": "Bogus"}}, 'Unsupported value: "Bogus"'),
    "node-name-not-dns": ({"prompt": {"nodeNames": ["Node_A"]}}, "spec.prompt.nodeNames[0]"),
    "node-names-repeated": ({"decode": {"nodeNames": ["node-b", "node-b"]}}, "Duplicate value"),
    "decode-missing": ({"decode": None}, "spec.decode: Required value"),
}

#: (spec fields of an invalid CacheLinkPolicy, what kubectl must show of the reason)
INVALID_POLICIES: dict[str, tuple[dict[str, Any], str]] = {
    "exists-with-values": (
        {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]}},
        "In and NotIn need values; Exists and DoesNotExist take none",
    ),
    "port-range-reversed": (
        {"limits": {"listenPortRange": {"min": 27000, "max": 26000}}},
        "listenPortRange.min must not exceed max",
    ),
    "bad-default-cidr": ({"defaults": {"listenCidr": "not-a-cidr"}}, "listenCidr must be a CIDR"),
    "priority-below-minimum": ({"priority": -1000001}, "spec.priority"),
}


@pytest.mark.parametrize("case", sorted(VALID_CACHELINKS))
def test_valid_cachelink_is_accepted(cachelink_crds: KubeTarget, schema_namespace: str, case: str) -> None:
    done = cachelink_crds.apply(
        cachelink(schema_namespace, case, **VALID_CACHELINKS[case]), dry_run=True, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("case", sorted(INVALID_CACHELINKS))
def test_malformed_cachelink_is_rejected_with_its_reason(
    cachelink_crds: KubeTarget, schema_namespace: str, case: str
) -> None:
    fields, reason = INVALID_CACHELINKS[case]
    done = cachelink_crds.apply(cachelink(schema_namespace, case, **fields), dry_run=True, check=False)
    assert done.returncode != 0, f"{case} was accepted"
    assert "is invalid" in done.stderr and reason in done.stderr, done.stderr


def test_valid_policy_is_accepted(cachelink_crds: KubeTarget) -> None:
    example = yaml.safe_load((ROOT / "examples" / "cachelinkpolicy.yaml").read_text())
    fields = copy.deepcopy(example["spec"])
    fields["namespaceSelector"] = {
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]
    }
    done = cachelink_crds.apply(policy(f"e2e-{uuid.uuid4().hex[:8]}", **fields), dry_run=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("case", sorted(INVALID_POLICIES))
def test_malformed_policy_is_rejected_with_its_reason(cachelink_crds: KubeTarget, case: str) -> None:
    fields, reason = INVALID_POLICIES[case]
    done = cachelink_crds.apply(policy(f"e2e-{uuid.uuid4().hex[:8]}", **fields), dry_run=True, check=False)
    assert done.returncode != 0, f"{case} was accepted"
    assert "is invalid" in done.stderr and reason in done.stderr, done.stderr


# ------------------------------------------------------------------------------ printer columns


def printer_columns(plural: str) -> list[dict[str, Any]]:
    """The additionalPrinterColumns of ``crds/``."""
    (path,) = (ROOT / "crds").glob(f"cachelink.io_{plural}.yaml")
    columns: list[dict[str, Any]] = yaml.safe_load(path.read_text())["spec"]["versions"][0][
        "additionalPrinterColumns"
    ]
    return columns


def table_and_object(target: KubeTarget, *args: str) -> tuple[list[str], list[str], dict[str, Any]]:
    """``kubectl get ARGS`` as (header, row) and the object that table shows.

    Reads the object before and after the table until both reads are of one resourceVersion (on a shared
    cluster an operator may be writing the status meanwhile)."""
    for _ in range(20):
        before = target.get_json(*args)
        header, row = target.kubectl("get", *args).stdout.splitlines()
        after = target.get_json(*args)
        if before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]:
            return header.split(), row.split(), after
    raise AssertionError(f"{args}: the object kept changing")


def ready_status(obj: dict[str, Any]) -> str:
    ready = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    return ready[0]["status"] if ready else "<none>"


def text(value: Any) -> str:
    return "<none>" if value is None else str(value)


def test_cachelink_printer_columns(cachelink_crds: KubeTarget, api_namespace: str) -> None:
    target = cachelink_crds
    served = target.get_json("crd", "cachelinks.cachelink.io")["spec"]["versions"][0]
    assert served["additionalPrinterColumns"] == printer_columns("cachelinks")
    # selects no pod: an operator watching this cluster has nothing to do for it
    none = pods(f"none-{uuid.uuid4().hex[:8]}")
    target.apply(cachelink(api_namespace, "shown", prompt=none, decode=none))
    status = {
        "phase": "Degraded",
        "linkedLinks": 1,
        "desiredLinks": 2,
        "conditions": [{"type": "Ready", "status": "False", "reason": "E2E", "message": "set by the test"}],
    }
    target.kubectl(
        "patch",
        "cachelink",
        "shown",
        "-n",
        api_namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    header, row, obj = table_and_object(target, "cachelink", "shown", "-n", api_namespace)
    assert header == ["NAME", "PHASE", "LINKED", "DESIRED", "READY", "AGE"]
    shown = obj.get("status") or {}
    assert row[:5] == [
        "shown",
        text(shown.get("phase")),
        text(shown.get("linkedLinks")),
        text(shown.get("desiredLinks")),
        ready_status(obj),
    ], (row, shown)


def test_policy_printer_columns(cachelink_crds: KubeTarget) -> None:
    target = cachelink_crds
    served = target.get_json("crd", "cachelinkpolicies.cachelink.io")["spec"]["versions"][0]
    assert served["additionalPrinterColumns"] == printer_columns("cachelinkpolicies")
    name = f"e2e-{uuid.uuid4().hex[:8]}"  # selects namespaces labelled with its own name: none
    target.apply(policy(name, priority=7))
    try:
        target.kubectl(
            "patch",
            "cachelinkpolicy",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"selectedCacheLinks": 3, "violatingCacheLinks": 1}}),
        )
        header, row, obj = table_and_object(target, "cachelinkpolicy", name)
        assert header == ["NAME", "PRIORITY", "SELECTED", "VIOLATING", "AGE"]
        shown = obj.get("status") or {}
        assert row[:4] == [
            name,
            "7",
            text(shown.get("selectedCacheLinks")),
            text(shown.get("violatingCacheLinks")),
        ], (row, shown)
    finally:
        target.kubectl("delete", "cachelinkpolicy", name, "--ignore-not-found", check=False)


# ------------------------------------------------------------------------------ the chart


@pytest.mark.parametrize(
    "sets",
    [[], ["podSecurity.labelNamespace=true", "image.tag=e2e"]],
    ids=["defaults", "labelled-namespace"],
)
def test_chart_objects_pass_server_side_validation(
    cachelink_crds: KubeTarget, api_namespace: str, sets: list[str]
) -> None:
    """Everything the chart renders is accepted by the API server (dry run: nothing is installed)."""
    target = cachelink_crds
    if target.helm_path is None:
        pytest.skip("no helm: the cluster tools could not be built and none is on PATH")
    release = f"e2e-{uuid.uuid4().hex[:8]}"
    values = [arg for item in sets for arg in ("--set", item)]
    rendered = target.helm(
        "template", release, str(ROOT / "charts" / "cachelink"), "--namespace", api_namespace, *values
    ).stdout
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    assert {"CustomResourceDefinition", "ClusterRole", "DaemonSet", "Deployment"} <= kinds, kinds
    done = target.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        api_namespace,
        "-f",
        "-",
        input=rendered,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "(server dry run)" in done.stdout, done.stdout
