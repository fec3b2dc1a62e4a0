"""The operator for real: kopf in its own process (under the chart's RBAC), real agents, real transfers.

Everything runs on real nodes: the chart installed with ``helm --wait`` (the fixture ``operator_env`` of this
folder's ``conftest.py``), workloads as pods; the helpers are in ``../support/cachelink_e2e_operator.py``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import pytest
from cachelink_agent import client as agent_client
from cachelink_agent import tokens
from cachelink_e2e_operator import OperatorEnv, Workload, wait_for

from cachelink_dev.devcluster.errors import DevClusterError
from cachelink_dev.realnodes.product import VERIFY_KEY_CONFIGMAP

from .resources import POOL, cachelink, condition, node_cachelink, policy, ready, running_pods

pytestmark = pytest.mark.e2e


def test_happy_path(operator_env: OperatorEnv, namespace: str) -> None:
    env = operator_env
    # workload pods mount the CacheLink's CSI volume: they start once it grants them their instance
    env.apply(
        env.deployment(namespace, "prefill", 1, cachelink="kv"),
        env.deployment(namespace, "decode", 1, cachelink="kv"),
    )
    env.apply(cachelink(namespace))
    obj = env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready with 1 link", 120)
    uid = obj["metadata"]["uid"]
    status = obj["status"]
    assert "cachelink.io/finalizer" in obj["metadata"]["finalizers"]

    # instances on the agents, initialised with the generated options (incl. the link secret)
    owned = env.owned(uid)
    assert len(owned) == 2, owned
    # the link secret is derived from the operator's master key: no Secret in the tenant's namespace
    assert env.get("secrets", "-n", namespace)["items"] == []
    for inst in status["instances"]:
        have = owned[inst["name"]]
        assert inst["state"] == "Initialized"
        assert have.cluster_id == inst["clusterId"]
        assert have.role == {"Prompt": "prompt", "Decode": "decoder"}[inst["role"]]
        assert have.options["llm.MemPoolConfig"].startswith('{"memory_size": %d' % POOL)
        assert have.options["cachelink.host_id"] == inst["node"]
        assert have.options.get("cachelink.link_secret"), "link secret not handed to the instance"
        assert inst["incarnation"] == str(have.incarnation)
    # per-link status
    (link,) = status["links"]
    assert link["state"] == "Linked" and link["current"] is True
    assert link["promptPodUID"] and link["decodePodUID"]
    decode_inst = owned[link["decode"]]
    assert decode_inst.links[0].state == "linked"
    assert decode_inst.links[0].remote_cluster_id == link["promptClusterId"]

    # a workload in the decode pod pulls blocks written by a workload in the prompt pod
    (prompt_pod,) = wait_for(lambda: running_pods(env, namespace, "prefill", 1), 120, "prefill pod")
    (decode_pod,) = wait_for(lambda: running_pods(env, namespace, "decode", 1), 120, "decode pod")
    wait_for(
        lambda: all(
            "cachelink.io/attach-socket"
            in (env.get("pod", p["metadata"]["name"], "-n", namespace)["metadata"].get("annotations") or {})
            for p in (prompt_pod, decode_pod)
        ),
        30,
        "attach annotations on the pods",
    )
    prompt_pod = env.get("pod", prompt_pod["metadata"]["name"], "-n", namespace)
    decode_pod = env.get("pod", decode_pod["metadata"]["name"], "-n", namespace)
    p_ann, d_ann = prompt_pod["metadata"]["annotations"], decode_pod["metadata"]["annotations"]
    assert (
        p_ann["cachelink.io/instance"] == link["prompt"] and d_ann["cachelink.io/instance"] == link["decode"]
    )
    writer, reader = Workload(env, prompt_pod), Workload(env, decode_pod)
    try:
        wrote = writer.write(int(p_ann["cachelink.io/cluster-id"]))
        pulled = reader.pull(int(p_ann["cachelink.io/cluster-id"]))
        assert pulled["digest"] == wrote["digest"]
        assert pulled["cluster_id"] == int(d_ann["cachelink.io/cluster-id"])
    finally:
        writer.close()
        reader.close()

    # events say so: instances initialised, the link's transition, Ready
    events = env.events(namespace, "kv")
    reasons = [e["reason"] for e in events]
    initialized = " ".join(e["message"] for e in events if e["reason"] == "InstanceInitialized")
    assert all(inst["name"] in initialized for inst in status["instances"]), initialized
    assert reasons.count("Ready") == 1, reasons
    transitions = [e["message"] for e in events if e["reason"] == "LinkStateChanged"]
    assert transitions and len(transitions) == len(set(transitions)), transitions  # one Event per transition
    assert any(t.endswith("-> Linked") for t in transitions), transitions

    # scale the prompt side: links follow
    env.kubectl("scale", "deployment/prefill", "-n", namespace, "--replicas=3")
    obj = env.wait_cachelink(namespace, "kv", lambda o: ready(o, 3), "Ready with 3 links", 120)
    assert len(env.owned(uid)) == 4
    assert {x["decode"] for x in obj["status"]["links"]} == {link["decode"]}
    env.kubectl("scale", "deployment/prefill", "-n", namespace, "--replicas=1")
    obj = env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready with 1 link again", 90)
    wait_for(lambda: len(env.owned(uid)) == 2, 30, "the scaled-down prompt instances to be deleted")

    # delete: everything finalized, finalizer gone
    env.kubectl("delete", "cachelink", "kv", "-n", namespace, "--wait=false")
    wait_for(lambda: env.cachelink(namespace, "kv") is None, 60, "the CacheLink to be gone")
    assert env.owned(uid) == {}


# ------------------------------------------------------------------------------------------- policy


def labelled_namespace(env: OperatorEnv, name: str, team: str) -> str:
    env.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"cachelink-e2e-team": team}},
        }
    )
    return name


def rejected_for(obj: dict[str, Any], rule: str) -> bool:
    status = obj.get("status") or {}
    return status.get("phase") == "Rejected" and rule in condition(obj, "PolicyCompliant").get("message", "")


def option_of(env: OperatorEnv, uid: str, key: str) -> set[str]:
    return {inst.options.get(key, "") for inst in env.owned(uid).values()}


def test_policy_defaults_priority_and_change(
    operator_env: OperatorEnv, namespace: str, policies: list[str]
) -> None:
    env = operator_env
    team = namespace
    env.kubectl("label", "namespace", namespace, f"cachelink-e2e-team={team}")
    high, low = f"{team}-high", f"{team}-low"
    policies += [high, low]
    env.apply(
        policy(high, team, 10, defaults={"syncKvTimeoutMs": 2345}, limits={"maxLinksPerCacheLink": 4}),
        policy(low, team, 5, defaults={"syncKvTimeoutMs": 999, "linkRetryCount": 3}),
    )
    env.apply(node_cachelink(namespace, "kv", ["node-a"], ["node-b"]))
    obj = env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready", 60)
    uid = obj["metadata"]["uid"]
    assert obj["status"]["policies"] == [high, low]
    assert option_of(env, uid, "llm.SyncKvCacheWaitTime") == {"2345"}  # the higher priority wins
    assert option_of(env, uid, "llm.LinkRetryCount") == {"3"}  # only the lower one sets it
    # the CacheLink's own value beats every policy
    env.apply(node_cachelink(namespace, "own", ["node-c"], ["node-b"], syncKvTimeoutMs=1500))
    own = env.wait_cachelink(namespace, "own", lambda o: ready(o, 1), "Ready", 60)
    assert option_of(env, own["metadata"]["uid"], "llm.SyncKvCacheWaitTime") == {"1500"}

    # a policy change is re-evaluated: new defaults re-initialise the instances...
    env.apply(policy(high, team, 10, defaults={"syncKvTimeoutMs": 3456}, limits={"maxLinksPerCacheLink": 4}))
    wait_for(
        lambda: option_of(env, uid, "llm.SyncKvCacheWaitTime") == {"3456"},
        60,
        "instances with the new default",
    )
    env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready again", 60)
    # ...and a tighter limit rejects what is already running, a looser one lets it back
    env.apply(policy(high, team, 10, defaults={"syncKvTimeoutMs": 3456}, limits={"maxLinksPerCacheLink": 0}))
    env.wait_cachelink(namespace, "kv", lambda o: rejected_for(o, "maxLinksPerCacheLink"), "Rejected", 60)
    env.apply(policy(high, team, 10, defaults={"syncKvTimeoutMs": 3456}, limits={"maxLinksPerCacheLink": 4}))
    env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready after the limit was raised", 60)
    reasons = [e["reason"] for e in env.events(namespace, "kv")]
    assert "PolicyViolation" in reasons, reasons


#: (rule, the limits of the policy, CacheLink (prompt nodes, decode nodes, options)) - each violates one rule
VIOLATIONS: list[tuple[str, list[dict[str, Any]], tuple[list[str], list[str], dict[str, Any]]]] = [
    ("maxPoolBytesPerInstance", [{"maxPoolBytesPerInstance": 1 << 20}], (["node-a"], ["node-b"], {})),
    ("maxPoolBytesPerNode", [{"maxPoolBytesPerNode": 6 << 20}], (["node-a"], ["node-a"], {})),
    ("maxLinksPerCacheLink", [{"maxLinksPerCacheLink": 1}], (["node-a", "node-b"], ["node-c"], {})),
    ("maxLinksPerInstance", [{"maxLinksPerInstance": 1}], (["node-a", "node-b"], ["node-c"], {})),
    (
        "maxClustersPerLinkCall",
        [{"maxClustersPerLinkCall": 4}],
        (["node-a"], ["node-b"], {"maxClustersPerLinkCall": 8}),
    ),
    (
        "maxLinkSetupsInFlight",
        [{"maxLinkSetupsInFlight": 2}],
        (["node-a"], ["node-b"], {"maxLinkSetupsInFlight": 3}),
    ),
    (
        "listenPortRange",
        [
            {"listenPortRange": {"min": 26000, "max": 26010}},
            {"listenPortRange": {"min": 27000, "max": 27010}},
        ],
        (["node-a"], ["node-b"], {}),
    ),
    ("allowedRoles", [{"allowedRoles": ["Prompt"]}], (["node-a"], ["node-b"], {})),
    ("allowedLinkStyles", [{"allowedLinkStyles": ["CommDomain"]}], (["node-a"], ["node-b"], {})),
    (
        "requiredTimeouts.maxSyncKvTimeoutMs",
        [{"requiredTimeouts": {"maxSyncKvTimeoutMs": 500}}],
        (["node-a"], ["node-b"], {}),
    ),
    (
        "requiredTimeouts.maxLinkTimeoutMs",
        [{"requiredTimeouts": {"maxLinkTimeoutMs": 1000}}],
        (["node-a"], ["node-b"], {}),
    ),
    (
        "requiredTimeouts.maxLinkTotalTimeSeconds",
        [{"requiredTimeouts": {"maxLinkTotalTimeSeconds": 60}}],
        (["node-a"], ["node-b"], {}),
    ),
    (
        "requireLinkAuthentication",
        [{"requireLinkAuthentication": True}],
        (["node-a"], ["node-b"], {"linkAuthentication": False}),
    ),
    ("allowedNodes", [{"allowedNodes": ["node-a", "node-c"]}], (["node-a"], ["node-b"], {})),
    ("allowedListenInterfaces", [{"allowedListenInterfaces": ["eth9"]}], (["node-a"], ["node-b"], {})),
    ("maxInstancesPerNamespace", [{"maxInstancesPerNamespace": 1}], (["node-a"], ["node-b"], {})),
    ("maxPoolBytesPerNamespace", [{"maxPoolBytesPerNamespace": 1 << 20}], (["node-a"], ["node-b"], {})),
]


def test_each_policy_limit_violated_once(operator_env: OperatorEnv, policies: list[str]) -> None:
    env = operator_env
    run = uuid.uuid4().hex[:6]
    cases = []
    for index, (rule, limits, _cachelink) in enumerate(VIOLATIONS):
        team = f"lim-{run}-{index}"
        ns = labelled_namespace(env, team, team)
        for n, limit in enumerate(limits):
            policies.append(f"{team}-{n}")
            env.apply(policy(f"{team}-{n}", team, n, limits=limit))
        cases.append((rule, ns))
    try:
        for rule, ns in cases:
            prompt, decode, options = next(v[2] for v in VIOLATIONS if v[0] == rule)
            env.apply(node_cachelink(ns, "kv", prompt, decode, **options))
        for rule, ns in cases:
            obj = env.wait_cachelink(
                ns, "kv", lambda o, r=rule: rejected_for(o, r), f"Rejected by {rule}", 60
            )
            compliant = condition(obj, "PolicyCompliant")
            assert compliant.get("status") == "False" and compliant.get("reason") == "PolicyViolation"
            assert condition(obj, "Ready").get("reason") == "PolicyViolation"
            assert env.owned(obj["metadata"]["uid"]) == {}, f"{rule}: a rejected CacheLink got instances"
            events = [e for e in env.events(ns, "kv") if e["reason"] == "PolicyViolation"]
            assert len(events) == 1 and rule in events[0]["message"], (rule, events)
    finally:
        for _rule, ns in cases:
            env.kubectl("delete", "cachelinks.cachelink.io", "--all", "-n", ns, "--timeout=60s", check=False)
            env.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_namespace_quota_goes_to_the_earliest_cachelinks_and_frees_on_deletion(
    operator_env: OperatorEnv, policies: list[str]
) -> None:
    env = operator_env
    team = f"quota-{uuid.uuid4().hex[:6]}"
    ns = labelled_namespace(env, team, team)
    policies.append(team)
    env.apply(policy(team, team, limits={"maxInstancesPerNamespace": 3}))
    try:
        env.apply(node_cachelink(ns, "first", ["node-a"], ["node-b"]))
        env.wait_cachelink(ns, "first", lambda o: ready(o, 1), "Ready within the quota", 60)
        env.apply(node_cachelink(ns, "second", ["node-b"], ["node-c"]))
        second = env.wait_cachelink(
            ns, "second", lambda o: rejected_for(o, "maxInstancesPerNamespace"), "Rejected over the quota", 60
        )
        assert env.owned(second["metadata"]["uid"]) == {}, "a CacheLink over quota got instances"
        assert (
            "(2 for the CacheLinks created before this one, 2 for this one)"
            in condition(second, "PolicyCompliant")["message"]
        )
        # the first one goes away: the second is reconciled at once (no resync wait) and fits
        env.kubectl("delete", "cachelinks.cachelink.io", "first", "-n", ns, "--timeout=60s")
        env.wait_cachelink(ns, "second", lambda o: ready(o, 1), "Ready once the quota freed", 15)
        reasons = [e["reason"] for e in env.events(ns, "second")]
        assert "PolicyViolation" in reasons, reasons
    finally:
        env.kubectl("delete", "cachelinks.cachelink.io", "--all", "-n", ns, "--timeout=60s", check=False)
        env.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# ------------------------------------------------------------------------------------------- faults


def agent_log_lines(env: OperatorEnv, text: str) -> list[str]:
    return [line for node in env.nodes for line in env.agent_log(node).splitlines() if text in line]


def test_operator_killed_mid_reconcile_converges_without_duplicate_calls(
    operator_env: OperatorEnv, namespace: str
) -> None:
    env = operator_env
    nodes = ["node-a", "node-b", "node-c"]
    env.apply(node_cachelink(namespace, "kv", nodes, nodes, maxLinkSetupsInFlight=1))
    uid = wait_for(
        lambda: (env.cachelink(namespace, "kv") or {}).get("metadata", {}).get("uid"), 30, "the uid"
    )
    wait_for(lambda: env.owned(uid), 60, "the first instance", interval=0.02)
    env.kill_operator()  # SIGKILL of the leader's container: no chance to finish the pass or write status
    at_kill = {name: inst.incarnation for name, inst in env.owned(uid).items()}
    # the standby replica takes the Lease over (or the kubelet restarts the killed one first)
    obj = env.wait_cachelink(
        namespace, "kv", lambda o: ready(o, 9), "Ready with 9 links after the takeover", 150
    )
    owned = env.owned(uid)
    assert len(owned) == 6
    for name, incarnation in at_kill.items():
        if incarnation:  # 0: its worker was still starting at the kill
            assert owned[name].incarnation == incarnation, f"{name} was re-initialised after the restart"
    for name in owned:
        created = [
            line
            for line in agent_log_lines(env, f"instance {name} ")
            if " created " in line or " replaced " in line
        ]
        assert len(created) == 1, created
    assert all(link["relinks"] == 0 for link in obj["status"]["links"])
    decodes = [inst for inst in owned.values() if inst.role == "decoder"]
    assert all(len(inst.links) == 3 and all(x.state == "linked" for x in inst.links) for inst in decodes)


def test_agent_killed_degrades_then_recovers(operator_env: OperatorEnv, namespace: str) -> None:
    env = operator_env
    env.apply(node_cachelink(namespace, "kv", ["node-b"], ["node-c"]))
    obj = env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready", 90)
    uid = obj["metadata"]["uid"]
    before = {i["node"]: i["incarnation"] for i in obj["status"]["instances"]}
    agent = env.product.agent_pods()["node-b"]["metadata"]["name"]
    restarts = env.product.restart_count(agent, "agent")
    # frozen first (the kubelet would restart a dead container at once): the agent stops answering
    env.product.ctr_task(agent, "agent", "pause")
    try:
        degraded = env.wait_cachelink(
            namespace,
            "kv",
            lambda o: (
                o["status"].get("phase") == "Degraded"
                and any(
                    i["node"] == "node-b" and i["state"] == "Unreachable" for i in o["status"]["instances"]
                )
            ),
            "Degraded with node-b Unreachable",
            90,
        )
        assert condition(degraded, "Ready").get("status") == "False"
        assert "AgentUnreachable" in [e["reason"] for e in env.events(namespace, "kv")]
        # then it dies: the kubelet starts the container again
        env.product.ctr_task(agent, "agent", "kill", "--signal", "SIGKILL")
    finally:  # thawed, unless the kill already ended it (a frozen task takes SIGKILL)
        with contextlib.suppress(DevClusterError):
            env.product.ctr_task(agent, "agent", "resume")
    wait_for(
        lambda: env.product.restart_count(agent, "agent") > restarts, 60, "the kubelet to restart the agent"
    )
    obj = env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready after the agent returned", 120)
    after = {i["node"]: i["incarnation"] for i in obj["status"]["instances"]}
    assert after["node-b"] != before["node-b"]  # the restart is detected (new incarnation)...
    (link,) = obj["status"]["links"]
    assert link["promptIncarnation"] == after["node-b"]
    assert link["relinks"] >= 1  # ...and the link was made again
    # both agents report them (the restarted agent's pod turns Ready after its probe passes)
    wait_for(lambda: len(env.owned(uid)) == 2, 60, "both instances reported by Ready agents")


def test_wrong_agent_token_is_reported(operator_env: OperatorEnv, namespace: str) -> None:
    """An agent that refuses the operator's tokens (its verify key rotated under it): a 401 in status, and
    Ready once it verifies with the operator's key again."""
    env = operator_env
    product = env.product
    found = product.kube.get("configmap", VERIFY_KEY_CONFIGMAP, "-n", product.namespace)
    original = found["data"]["cert.pem"]
    other = tokens.public_pem(tokens.generate_signing_key()).decode()

    def use_key(pem: str) -> None:
        patch = json.dumps({"data": {"cert.pem": pem}})
        env.kubectl("patch", "configmap", VERIFY_KEY_CONFIGMAP, "-n", product.namespace, "-p", patch)
        # a new agent pod mounts the ConfigMap as it is now (a running pod's volume follows it only later)
        old = product.agent_pods()["node-c"]["metadata"]["name"]
        env.kubectl("delete", "pod", old, "-n", product.namespace, "--wait=true", "--timeout=60s")
        wait_for(
            lambda: (
                (product.agent_pods().get("node-c") or {}).get("metadata", {}).get("name") not in (None, old)
            ),
            90,
            "a new agent pod on node-c",
        )

    # only node-c's agent restarts with another key; the operator still signs with the chart's
    use_key(other)
    try:
        env.apply(node_cachelink(namespace, "kv", ["node-a"], ["node-c"]))
        obj = env.wait_cachelink(
            namespace,
            "kv",
            lambda o: any(
                i["node"] == "node-c" and "401" in (i.get("lastError") or "")
                for i in (o.get("status") or {}).get("instances", [])
            ),
            "the 401 of node-c in status",
            120,
        )
        assert obj["status"]["phase"] != "Ready"
    finally:
        use_key(original)
    env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready with the right key", 120)

    # every agent mounts the ConfigMap: the running ones followed both patches (the kubelet syncs volumes
    # within about a minute); the next test starts once all of them verify the operator's tokens again
    def every_agent_accepts() -> bool:
        try:
            return all(product.instances(node) is not None for node in product.agent_pods())
        except agent_client.AgentUnauthorized:
            return False

    wait_for(every_agent_accepts, 180, "every agent verifying the operator's tokens again")


def test_api_server_restart(operator_env: OperatorEnv, namespace: str) -> None:
    env = operator_env
    env.apply(node_cachelink(namespace, "kv", ["node-a"], ["node-b"]))
    obj = env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "Ready", 60)
    uid = obj["metadata"]["uid"]
    incarnations = {n: i.incarnation for n, i in env.owned(uid).items()}
    cluster = env.product.nodes.cluster
    apiserver = cluster.process("kube-apiserver")
    assert apiserver.stop()
    cluster.up()
    # a replica rode it out, or lost the Lease and exited non-zero (the kubelet restarts it)
    env.product.wait_leader(120)
    env.apply(node_cachelink(namespace, "after", ["node-c"], ["node-b"]))
    env.wait_cachelink(namespace, "after", lambda o: ready(o, 1), "a new CacheLink Ready", 120)
    env.wait_cachelink(namespace, "kv", lambda o: ready(o, 1), "the old one still Ready", 30)
    assert {n: i.incarnation for n, i in env.owned(uid).items()} == incarnations


def test_malformed_cachelinks(operator_env: OperatorEnv, namespace: str) -> None:
    env = operator_env
    both = cachelink(
        namespace, "both", prompt={"podSelector": {"matchLabels": {"a": "b"}}, "nodeNames": ["node-a"]}
    )
    result = env.apply(both, check=False)
    assert result.returncode != 0 and "set exactly one of podSelector and nodeNames" in result.stderr
    low = cachelink(namespace, "low", options={"memPoolSizeBytes": 10})
    result = env.apply(low, check=False)
    assert result.returncode != 0 and "memPoolSizeBytes" in result.stderr
    # what the schema cannot see: two instances, one cluster id
    tight = node_cachelink(namespace, "tight", ["node-a"], ["node-b"], clusterIdRange={"min": 7, "max": 7})
    env.apply(tight)
    obj = env.wait_cachelink(
        namespace, "tight", lambda o: (o.get("status") or {}).get("phase") == "Rejected", "Rejected", 60
    )
    ready_cond = condition(obj, "Ready")
    assert ready_cond.get("reason") == "AllocationFailed"
    assert "clusterIdRange holds 1 ids, 2 instances" in ready_cond["message"]
    assert env.owned(obj["metadata"]["uid"]) == {}
    assert "Rejected" in [e["reason"] for e in env.events(namespace, "tight")]
