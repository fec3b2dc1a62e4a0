"""A CacheLinkPolicy's status on a real cluster: the CacheLinks it selects and those violating it, its validity."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cachelink_e2e_operator import OperatorEnv, wait_for

from .resources import condition, node_cachelink, policy, ready

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("canonical_crds")]


def test_policy_status(operator_env: OperatorEnv, namespace: str, policies: list[str]) -> None:
    env = operator_env
    env.kubectl("label", "namespace", namespace, f"cachelink-e2e-team={namespace}")
    limit, bad = f"{namespace}-limit", f"{namespace}-bad"
    policies += [limit, bad]
    env.apply(
        policy(limit, namespace, limits={"maxLinksPerCacheLink": 1}),
        # contradictory: its defaults break its own limit (the schema cannot see that)
        policy(bad, "nobody", defaults={"maxClustersPerLinkCall": 8}, limits={"maxClustersPerLinkCall": 4}),
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
    env.apply(policy(limit, namespace, limits={"maxLinksPerCacheLink": 2}))
    env.wait_cachelink(namespace, "big", lambda o: ready(o, 2), "Ready after the limit was raised", 60)
    obj = policy_status(limit, lambda s: s.get("violatingCacheLinks") == 0)
    assert obj["status"].get("violating", []) == [] and obj["status"]["observedGeneration"] == 2
