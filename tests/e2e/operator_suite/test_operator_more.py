"""The operator for real, part two: policy status, contested pods, annotation clean-up, rollouts.

Same environment as ``test_operator.py`` (the fixture ``operator_env`` of this folder's ``conftest.py``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cachelink_e2e_operator import OperatorEnv, wait_for

pytestmark = pytest.mark.e2e
POOL = 4 << 20
ROOT = Path(__file__).resolve().parents[3]
OUR_ANNOTATIONS = ("cachelink.io/cachelink", "cachelink.io/instance", "cachelink.io/cluster-id")


@pytest.fixture(scope="module", autouse=True)
def canonical_crds(operator_env: OperatorEnv) -> None:
    """The CRDs of ``crds/`` (the status fields this module reads must not be pruned)."""
    operator_env.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))


#: rollouts surge one pod at a time and keep the old ones until the new one is up
ROLLING = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def deployment(
    env: OperatorEnv,
    namespace: str,
    name: str,
    replicas: int,
    node_selector: dict[str, str] | None = None,
    template_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return env.deployment(
        namespace,
        name,
        replicas,
        node_selector=node_selector,
        template_annotations=template_annotations,
        strategy=ROLLING,
    )


def cachelink(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": {"podSelector": {"matchLabels": {"app": "prefill"}}},
        "decode": {"podSelector": {"matchLabels": {"app": "decode"}}},
        "options": {"memPoolSizeBytes": POOL},
    }
    body.update(spec)
    return {
        "apiVersion": "cachelink.io/v1alpha1",
        "kind": "CacheLink",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def node_cachelink(namespace: str, name: str, prompt: list[str], decode: list[str]) -> dict[str, Any]:
    return cachelink(namespace, name, prompt={"nodeNames": prompt}, decode={"nodeNames": decode})


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)
    return found or {}


def ready(obj: dict[str, Any], links: int) -> bool:
    status = obj.get("status") or {}
    return (
        status.get("phase") == "Ready"
        and status.get("readyLinks") == links
        and status.get("desiredLinks") == links
        and condition(obj, "Ready").get("status") == "True"
        and status.get("observedGeneration") == obj["metadata"]["generation"]
    )


def running_pods(env: OperatorEnv, namespace: str, app: str, count: int) -> list[dict[str, Any]] | None:
    pods = [
        p
        for p in env.pods(namespace, f"app={app}")
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    return pods if len(pods) == count else None


def ours(env: OperatorEnv, namespace: str, pod: str) -> dict[str, str]:
    """The operator's annotations on a pod."""
    found = env.get("pod", pod, "-n", namespace)
    annotations = (found or {}).get("metadata", {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith("cachelink.io/")}


def start_workloads(env: OperatorEnv, namespace: str, prompts: int = 1) -> None:
    env.apply(deployment(env, namespace, "prefill", prompts), deployment(env, namespace, "decode", 1))
    wait_for(lambda: running_pods(env, namespace, "prefill", prompts), 60, "prefill pods")
    wait_for(lambda: running_pods(env, namespace, "decode", 1), 60, "decode pod")


# ------------------------------------------------------------------------------------ policy status


@pytest.fixture
def policies(operator_env: OperatorEnv) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    if made:
        operator_env.kubectl(
            "delete", "cachelinkpolicies.cachelink.io", *made, "--ignore-not-found", check=False
        )


def policy(name: str, team: str, defaults: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cachelink.io/v1alpha1",
        "kind": "CacheLinkPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"cachelink-e2e-team": team}},
            "defaults": defaults,
            "limits": limits,
        },
    }


def test_policy_status(operator_env: OperatorEnv, namespace: str, policies: list[str]) -> None:
    env = operator_env
    env.kubectl("label", "namespace", namespace, f"cachelink-e2e-team={namespace}")
    limit, bad = f"{namespace}-limit", f"{namespace}-bad"
    policies += [limit, bad]
    env.apply(
        policy(limit, namespace, {}, {"maxLinksPerCacheLink": 1}),
        # contradictory: its defaults break its own limit (the schema cannot see that)
        policy(bad, "nobody", {"maxClustersPerLinkCall": 8}, {"maxClustersPerLinkCall": 4}),
    )
    env.apply(
        node_cachelink(namespace, "small", ["node-a"], ["node-b"]),
        node_cachelink(namespace, "big", ["node-a", "node-c"], ["node-b"]),
    )
    env.wait_cachelink(namespace, "small", lambda o: ready(o, 1), "Ready", 60)
    big = env.wait_cachelink(
        namespace, "big", lambda o: (o.get("status") or {}).get("phase") == "Rejected", "Rejected", 60
    )
    assert big["status"]["violatedPolicies"] == [limit]

    def policy_status(name: str, check: Any) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            obj = env.get("cachelinkpolicies.cachelink.io", name)
            return obj if obj is not None and check(obj.get("status") or {}) else None

        found: dict[str, Any] = wait_for(probe, 30, f"status of CacheLinkPolicy {name}")
        return found

    obj = policy_status(limit, lambda s: s.get("violatingCacheLinks") == 1)
    status = obj["status"]
    assert status["selectedCacheLinks"] == 2 and status["violating"] == [f"{namespace}/big"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Valid")["status"] == "True"
    # steady state: no writes
    version = obj["metadata"]["resourceVersion"]
    time.sleep(3)
    assert env.get("cachelinkpolicies.cachelink.io", limit)["metadata"]["resourceVersion"] == version

    invalid = policy_status(bad, lambda s: bool(s.get("conditions")))
    valid = condition(invalid, "Valid")
    assert valid["status"] == "False" and valid["reason"] == "Contradictory", valid
    assert "maxClustersPerLinkCall 8 exceeds" in valid["message"]
    assert invalid["status"]["selectedCacheLinks"] == 0

    def warnings() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = env.get(
            "events",
            "-n",
            "default",
            "--field-selector",
            f"involvedObject.kind=CacheLinkPolicy,involvedObject.name={bad}",
        )["items"]
        return [e for e in items if e["reason"] == "InvalidPolicy" and e["type"] == "Warning"]

    assert len(wait_for(warnings, 20, "the InvalidPolicy event")) == 1

    # the limit is raised: the violating CacheLink goes Ready and leaves the list
    env.apply(policy(limit, namespace, {}, {"maxLinksPerCacheLink": 2}))
    env.wait_cachelink(namespace, "big", lambda o: ready(o, 2), "Ready after the limit was raised", 60)
    obj = policy_status(limit, lambda s: s.get("violatingCacheLinks") == 0)
    assert obj["status"].get("violating", []) == [] and obj["status"]["observedGeneration"] == 2


# ------------------------------------------------------------------------------------ contested pods


def test_second_cachelink_on_the_same_pods_is_rejected_until_the_first_goes(
    operator_env: OperatorEnv, namespace: str
) -> None:
    env = operator_env
    start_workloads(env, namespace)
    first = env.apply(cachelink(namespace, "c1"))
    assert first.returncode == 0
    env.wait_cachelink(namespace, "c1", lambda o: ready(o, 1), "Ready", 90)
    time.sleep(1.1)  # a later creationTimestamp (seconds precision)
    env.apply(cachelink(namespace, "c2"))
    second = env.wait_cachelink(
        namespace,
        "c2",
        lambda o: condition(o, "Ready").get("reason") == "PodClaimed",
        "Rejected (PodClaimed)",
        60,
    )
    assert second["status"]["phase"] == "Rejected"
    assert "CacheLink c1" in condition(second, "Ready")["message"]
    assert env.owned(second["metadata"]["uid"]) == {}  # nothing half-done
    claimed = [e for e in env.events(namespace, "c2") if e["reason"] == "PodClaimed"]
    assert len(claimed) == 1 and claimed[0]["type"] == "Warning" and "c1" in claimed[0]["message"]
    # the first one stays as it was
    env.wait_cachelink(namespace, "c1", lambda o: ready(o, 1), "still Ready", 10)
    (prompt,) = running_pods(env, namespace, "prefill", 1) or []
    assert ours(env, namespace, prompt["metadata"]["name"])["cachelink.io/cachelink"] == "c1"

    env.kubectl("delete", "cachelink", "c1", "-n", namespace, "--wait=false")
    obj = env.wait_cachelink(namespace, "c2", lambda o: ready(o, 1), "Ready once first is gone", 90)
    assert len(env.owned(obj["metadata"]["uid"])) == 2
    wait_for(
        lambda: ours(env, namespace, prompt["metadata"]["name"]).get("cachelink.io/cachelink") == "c2",
        30,
        "the pod's annotations to name the second CacheLink",
    )


# ------------------------------------------------------------------------------------ annotations


def test_annotations_leave_unselected_pods_and_deleted_cachelinks(
    operator_env: OperatorEnv, namespace: str
) -> None:
    env = operator_env
    start_workloads(env, namespace, prompts=2)
    env.apply(cachelink(namespace, "kv"))
    env.wait_cachelink(namespace, "kv", lambda o: ready(o, 2), "Ready with 2 links", 90)
    pods = running_pods(env, namespace, "prefill", 2) or []
    wait_for(
        lambda: all(ours(env, namespace, p["metadata"]["name"]) for p in pods), 30, "annotations on the pods"
    )
    # one prompt pod leaves the selector (its ReplicaSet replaces it): its annotations go
    leaving = pods[0]["metadata"]["name"]
    env.kubectl("label", "pod", leaving, "-n", namespace, "app=retired", "--overwrite")
    wait_for(lambda: not ours(env, namespace, leaving), 60, "annotations removed from the unselected pod")
    env.wait_cachelink(namespace, "kv", lambda o: ready(o, 2), "Ready with the replacement pod", 90)
    selected = [p["metadata"]["name"] for p in env.pods(namespace, "app in (prefill,decode)")]
    wait_for(lambda: all(ours(env, namespace, p) for p in selected), 30, "annotations on the selected pods")
    # deletion removes them everywhere
    env.kubectl("delete", "cachelink", "kv", "-n", namespace, "--wait=false")
    wait_for(lambda: env.cachelink(namespace, "kv") is None, 60, "the CacheLink to be gone")
    assert all(not ours(env, namespace, p) for p in selected), [ours(env, namespace, p) for p in selected]


# ------------------------------------------------------------------------------------ rollouts


def test_ready_waits_for_the_controllers_current_revision(operator_env: OperatorEnv, namespace: str) -> None:
    env = operator_env
    start_workloads(env, namespace)
    env.apply(cachelink(namespace, "kv"))
    env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready", 90)
    (old,) = running_pods(env, namespace, "prefill", 1) or []
    # a rollout whose new pod cannot be scheduled: only the old pod is a member, and it is the newest
    # pod selected - yet not of the Deployment's current revision, so the CacheLink is not Ready
    env.apply(deployment(env, namespace, "prefill", 1, {"cachelink.dev/no-such-node": "true"}))
    stalled = env.wait_cachelink(
        namespace,
        "kv",
        lambda o: (
            (o.get("status") or {}).get("readyLinks") == 0 and (o.get("status") or {}).get("linkedLinks") == 1
        ),
        "not Ready during the rollout",
        60,
    )
    assert stalled["status"]["phase"] != "Ready"
    assert "rollout is in progress" in condition(stalled, "Ready")["message"]
    (link,) = stalled["status"]["links"]
    assert link["current"] is False and link["promptPodUID"] == old["metadata"]["uid"]
    # the rollout completes: Ready again, linked to the new pod
    env.apply(deployment(env, namespace, "prefill", 1, template_annotations={"example.com/rev": "3"}))
    obj = env.wait_cachelink(
        namespace,
        "kv",
        lambda o: ready(o, 1) and o["status"]["links"][0]["promptPodUID"] != old["metadata"]["uid"],
        "Ready on the new revision",
        90,
    )
    assert obj["status"]["links"][0]["current"] is True


def _binds(sock: socket.socket, host: str, port: int) -> bool:
    """Bind ``sock`` to ``host:port`` if nothing else holds it (lower ports the operator also skips)."""
    try:
        sock.bind((host, port))
    except OSError:
        return False
    return True


def test_a_port_held_on_the_node_moves_the_instance(operator_env: OperatorEnv, namespace: str) -> None:
    """Something else on the node holds the port the operator picks: the instance moves to the next one."""
    env = operator_env
    node_ip = env.nodes["node-b"]
    used = {
        int(i.listen_address.rpartition(":")[2])
        for i in env.instances("node-b")
        if i.listen_address and ":" in i.listen_address
    }
    # a socket made in node-b's network namespace (the agent pod shares the node's network)
    with env.in_node_network("node-b", socket.socket) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # over a finished instance's TIME_WAIT
        port = next(p for p in range(26000, 28000) if p not in used and _binds(holder, node_ip, p))
        holder.listen()
        env.apply(node_cachelink(namespace, "kv", ["node-b"], ["node-a"]))
        obj = env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready on another port", 90)
        (prompt,) = [i for i in obj["status"]["instances"] if i["role"] == "Prompt"]
        assert prompt["node"] == "node-b" and prompt["port"] != port, prompt
        assert port not in {
            int(i.listen_address.rpartition(":")[2]) for i in env.instances("node-b") if i.listen_address
        }
