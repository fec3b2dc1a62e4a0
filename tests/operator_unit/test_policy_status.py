"""A CacheLinkPolicy's status: counts, a bounded list of violators, validity conditions, conflicts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cachelink_operator import policy, policy_status, reconcile
from cachelink_operator.models import CacheLinkPolicyStatus, CacheLinkStatus

from .fakes import FakeKube

pytestmark = pytest.mark.usefixtures("posted_warnings")


# ------------------------------------------------------------------------------------ policy status


def policy_body(name: str, spec: dict[str, Any], generation: int = 1, status: Any = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "generation": generation},
        "spec": spec,
        "status": status or {},
    }


def cachelink_body(namespace: str, name: str, violated: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{namespace}-{name}"},
        "status": {"violatedPolicies": list(violated)} if violated else {},
    }


def board_with(*policies: dict[str, Any]) -> policy_status.Board:
    board = policy_status.Board()
    board.namespace_event(None, {"metadata": {"name": "team-a", "labels": {"team": "a"}}})
    board.namespace_event(None, {"metadata": {"name": "team-b", "labels": {"team": "b"}}})
    for p in policies:
        board.policy_event(None, p)
    return board


def test_policy_status_counts_selected_and_violating_with_a_bounded_list():
    board = board_with(policy_body("a-only", {"namespaceSelector": {"matchLabels": {"team": "a"}}}))
    for i in range(45):
        board.cachelink_event(None, cachelink_body("team-a", f"cl{i:02d}", ["a-only"] if i % 2 == 0 else []))
    board.cachelink_event(None, cachelink_body("team-b", "elsewhere", ["a-only"]))
    kube = FakeKube()
    assert asyncio.run(policy_status.sync(kube, board)) == 1
    ((name, patch),) = kube.policy_patches
    status = CacheLinkPolicyStatus.model_validate(patch)
    assert name == "a-only" and status.observed_generation == 1
    assert status.selected_cache_links == 45 and status.violating_cache_links == 23
    assert len(status.violating) == 20 and status.violating[0] == "team-a/cl00"  # bounded, sorted
    (valid,) = status.conditions
    assert (valid.type, valid.status, valid.reason) == ("Valid", "True", "Valid")
    assert kube.events == []
    # steady state: nothing to write, even before the watch shows our write
    assert asyncio.run(policy_status.sync(kube, board)) == 0
    board.policy_event("MODIFIED", policy_body("a-only", board.policies["a-only"].spec, status=patch))
    assert asyncio.run(policy_status.sync(kube, board)) == 0
    # one CacheLink complies again: one write, the emptied fields are nulled when they go
    board.cachelink_event("MODIFIED", cachelink_body("team-a", "cl00"))
    assert asyncio.run(policy_status.sync(kube, board)) == 1
    assert kube.policy_patches[-1][1]["violatingCacheLinks"] == 22


@pytest.mark.parametrize(
    ("spec", "reason", "needle"),
    [
        (
            {"defaults": {"maxClustersPerLinkCall": 8}, "limits": {"maxClustersPerLinkCall": 4}},
            "Contradictory",
            "defaults.maxClustersPerLinkCall 8 exceeds the policy's own limit 4",
        ),
        (
            {"defaults": {"linkAuthentication": False}, "limits": {"requireLinkAuthentication": True}},
            "Contradictory",
            "requireLinkAuthentication",
        ),
        ({"limits": {"allowedLinkStyles": []}}, "Contradictory", "allowedLinkStyles is empty"),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}},
            "Contradictory",
            "In needs values",
        ),
        (
            {"limits": {"listenPortRange": {"min": 27000, "max": 26000}}},
            "InvalidSpec",
            "listenPortRange.min must not exceed max",
        ),
        ({"namespaceSelector": {"matchExpressions": [{"key": "x", "operator": "Bogus"}]}}, "InvalidSpec", ""),
    ],
)
def test_invalid_policy_gets_valid_false_and_one_warning(spec, reason, needle):
    board = board_with(policy_body("bad", spec))
    board.cachelink_event(None, cachelink_body("team-a", "cl"))
    kube = FakeKube()
    asyncio.run(policy_status.sync(kube, board))
    status = CacheLinkPolicyStatus.model_validate(kube.policy_patches[-1][1])
    (valid,) = status.conditions
    assert (valid.status, valid.reason) == ("False", reason) and needle in valid.message
    if reason == "InvalidSpec":
        assert status.selected_cache_links == 0  # ignored by reconciles: it selects nothing
    assert [(t, r) for t, r, _ in kube.events] == [("Warning", "InvalidPolicy")]
    # the same problem again: no second event, no write
    asyncio.run(policy_status.sync(kube, board))
    assert len(kube.events) == 1 and len(kube.policy_patches) == 1


def test_policy_status_conflict_is_retried_from_a_fresh_read():
    fresh = policy_body("p", {}, generation=2, status={"selectedCacheLinks": 7})
    board = board_with(policy_body("p", {}))
    kube = FakeKube(conflicts=1, fresh=fresh)
    assert asyncio.run(policy_status.sync(kube, board)) == 1
    assert kube.reads == 1
    ((_, patch),) = kube.policy_patches
    assert patch["observedGeneration"] == 2 and patch["selectedCacheLinks"] == 0


def test_board_wakes_only_on_relevant_changes():
    board = board_with(policy_body("p", {}))
    board.changed.clear()
    assert not board.policy_event("MODIFIED", policy_body("p", {}))  # nothing new
    assert not board.changed.is_set()
    assert not board.policy_event("MODIFIED", policy_body("p", {}, status={"x": 1}))  # status only
    assert board.changed.is_set()  # ...is repaired, but CacheLinks need not re-evaluate
    assert board.policy_event("MODIFIED", policy_body("p", {"priority": 3}, generation=2))
    board.changed.clear()
    assert not board.namespace_event("MODIFIED", {"metadata": {"name": "team-a", "labels": {"team": "a"}}})
    assert not board.changed.is_set()


def test_rejected_status_records_the_violated_policies():
    violations = [
        policy.Violation("high", "maxLinksPerCacheLink", "2 links"),
        policy.Violation("a, b", "listenPortRange", "no overlap"),
    ]
    new = reconcile.status.rejected(CacheLinkStatus(), 1, "PolicyViolation", "x", violations)
    assert new.violated_policies == ("a", "b", "high")
    assert new.dump()["violatedPolicies"] == ["a", "b", "high"]
    assert reconcile.status.rejected(new, 1, "InvalidSpec", "y").violated_policies == ()
