"""The pods a CacheLink selects over time, for real: contested pods, annotation clean-up, rollouts, a held port."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from cachelink_e2e_operator import OperatorEnv, wait_for

from .resources import cachelink, condition, node_cachelink, ready, running_pods

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("canonical_crds")]
OUR_ANNOTATIONS = ("cachelink.io/cachelink", "cachelink.io/instance", "cachelink.io/cluster-id")


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


def ours(env: OperatorEnv, namespace: str, pod: str) -> dict[str, str]:
    """The operator's annotations on a pod."""
    found = env.get("pod", pod, "-n", namespace)
    annotations = (found or {}).get("metadata", {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith("cachelink.io/")}


def start_workloads(env: OperatorEnv, namespace: str, prompts: int = 1) -> None:
    env.apply(deployment(env, namespace, "prefill", prompts), deployment(env, namespace, "decode", 1))
    wait_for(lambda: running_pods(env, namespace, "prefill", prompts), 60, "prefill pods")
    wait_for(lambda: running_pods(env, namespace, "decode", 1), 60, "decode pod")


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
