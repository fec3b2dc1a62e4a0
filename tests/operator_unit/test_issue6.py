"""Policy status, contested pods, annotation clean-up, controller revisions, status-patch conflicts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cachelink_agent import models as agent_models
from cachelink_operator import agents, desired, diff, finalize, policy, policy_status, reconcile
from cachelink_operator.config import Config
from cachelink_operator.models import CacheLinkPolicyStatus, CacheLinkStatus
from kubernetes.client.exceptions import ApiException

from .helpers import UID, compute, pod, pod_uid, running, spec

OTHER_UID = "0b6f0d8e-9c1e-4d8a-8a55-2f1f3b0c0002"


# ------------------------------------------------------------------------------------------ fakes


class FakeKube:
    """Records every write; ``conflicts`` status patches answer 409 first."""

    def __init__(self, conflicts: int = 0, fresh: dict[str, Any] | None = None) -> None:
        self.conflicts = conflicts
        self.fresh = fresh
        self.status_patches: list[tuple[str, dict[str, Any]]] = []
        self.policy_patches: list[tuple[str, dict[str, Any]]] = []
        self.annotations: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []
        self.reads = 0

    def _maybe_conflict(self) -> None:
        if self.conflicts:
            self.conflicts -= 1
            raise ApiException(status=409, reason="Conflict")

    async def patch_status(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self._maybe_conflict()
        self.status_patches.append((name, body))

    async def patch_policy_status(self, name: str, body: dict[str, Any]) -> None:
        self._maybe_conflict()
        self.policy_patches.append((name, body))

    async def get_cachelink(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.fresh

    async def get_policy(self, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.fresh

    async def post_event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, Any]) -> None:
        self.annotations.append((name, annotations))


class FakeAgents:
    def __init__(self, instances: dict[str, list[agent_models.InstanceStatus]] | None = None) -> None:
        self.instances = instances or {}
        self.executed: list[diff.Action] = []

    async def observe(self, nodes: Any, endpoints: Any, owner: str) -> agents.Observation:
        return agents.Observation(
            {n: [i for i in self.instances.get(n, []) if i.owner == owner] for n in nodes}, {}, {}
        )

    async def execute(self, actions: list[diff.Action], endpoints: Any, timeout: int) -> list[agents.Outcome]:
        self.executed.extend(actions)
        for action in actions:
            if isinstance(action, diff.DeleteInstance):
                self.instances[action.node] = [
                    i for i in self.instances.get(action.node, []) if i.name != action.instance
                ]
        return [agents.Outcome(a) for a in actions]


def runtime(kube: FakeKube, fake_agents: FakeAgents | None = None) -> reconcile.Runtime:
    return reconcile.Runtime(Config(), kube, fake_agents or FakeAgents())  # type: ignore[arg-type]


def body(
    name: str = "cl", uid: str = UID, created: str = "2025-01-02T00:00:00Z", **extra: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": uid,
            "generation": 1,
            "creationTimestamp": created,
        },
        "spec": {
            "prompt": {"podSelector": {"matchLabels": {"app": "p"}}},
            "decode": {"podSelector": {"matchLabels": {"app": "d"}}},
        },
        **extra,
    }


@pytest.fixture(autouse=True)
def posted_warnings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(
        reconcile.events, "warning", lambda obj, reason, message: posted.append((reason, message))
    )
    monkeypatch.setattr(reconcile.events, "normal", lambda obj, reason, message: None)
    return posted


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


# ------------------------------------------------------------------------------------ contested pods


PODS = [pod("p0", "node-a", {"app": "p"}), pod("d0", "node-b", {"app": "d"})]


def test_the_earlier_cachelink_holds_a_contested_pod():
    first = desired.cachelink_ref(body("first", OTHER_UID, "2025-01-01T00:00:00Z"))
    me = desired.cachelink_ref(body("later"))
    tie = desired.cachelink_ref(body("a-same-second", "uid-3", "2025-01-02T00:00:00Z"))
    mine = [m for side in desired.members(spec(), "ns", PODS).values() for m in side]
    assert desired.claims(me, [first, me], mine, PODS) == {"p0": "first", "d0": "first"}
    assert desired.claims(first, [first, me], mine, PODS) == {}  # the earlier one is never rejected
    assert desired.claims(me, [tie], mine, PODS) == {"p0": "a-same-second", "d0": "a-same-second"}
    broken = desired.CacheLinkRef("ns", "broken", "uid-4", "2024-01-01T00:00:00Z", None)
    assert desired.claims(me, [broken], mine, PODS) == {}  # an unparseable spec selects nothing


def test_the_later_cachelink_gives_way_completely(posted_warnings):
    want = compute(spec(), PODS)
    held = {i.node: [running(i)] for i in want.instances.values()}  # it held both pods before
    fake = FakeAgents(held)
    kube = FakeKube()
    rt = runtime(kube, fake)
    annotated = [
        desired.PodInfo(
            "ns", "p0", "u0", "node-a", {"app": "p"}, "", "Running", False, {"cachelink.io/cachelink": "cl"}
        ),
        desired.PodInfo(
            "ns", "d0", "u1", "node-b", {"app": "d"}, "", "Running", False, {"cachelink.io/cachelink": "cl"}
        ),
        desired.PodInfo(
            "ns", "gone", "u2", "node-b", {"app": "x"}, "", "Running", False, {"cachelink.io/cachelink": "cl"}
        ),
    ]
    first = desired.cachelink_ref(body("first", OTHER_UID, "2025-01-01T00:00:00Z"))
    me = body(
        status={
            "instances": [
                {"name": i.name, "role": i.role.value, "node": i.node, "pod": i.member.key}
                for i in want.instances.values()
            ]
        }
    )
    world = reconcile.World(annotated, {}, [], {}, [first, desired.cachelink_ref(me)])
    delay = asyncio.run(reconcile.reconcile(rt, me, world))
    assert delay == rt.config.resync_interval_s
    assert sorted(a.instance for a in fake.executed) == sorted(want.instances)  # nothing half-done
    assert all(isinstance(a, diff.DeleteInstance) for a in fake.executed)
    # the claimed pods' annotations are the other CacheLink's business; a stale one elsewhere goes
    assert [name for name, _ in kube.annotations] == ["gone"]
    ((_, patch),) = kube.status_patches
    assert patch["phase"] == "Rejected" and patch.get("instances", []) == []
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "PodClaimed" and "already claimed by CacheLink first" in ready["message"]
    assert [r for r, _ in posted_warnings] == ["PodClaimed"]
    # the other one goes away: this one converges (instances are put again)
    fake.executed.clear()
    world = reconcile.World(annotated[:2], {}, [], {}, [desired.cachelink_ref(me)])
    rejected = {"metadata": me["metadata"], "spec": me["spec"], "status": patch}
    asyncio.run(reconcile.reconcile(rt, rejected, world))
    assert (
        any(isinstance(a, diff.PutInstance) for a in fake.executed)
        or kube.status_patches[-1][1]["phase"] != "Rejected"
    )


# ------------------------------------------------------------------------------------ annotations


def test_annotations_leave_pods_no_longer_selected():
    kube = FakeKube()
    rt = runtime(kube)
    pods = [
        desired.PodInfo(
            "ns", "kept", "u0", "node-a", {}, "", "Running", False, {"cachelink.io/cachelink": "cl"}
        ),
        desired.PodInfo(
            "ns", "left", "u1", "node-a", {}, "", "Running", False, {"cachelink.io/cachelink": "cl"}
        ),
        desired.PodInfo(
            "ns", "theirs", "u2", "node-a", {}, "", "Running", False, {"cachelink.io/cachelink": "x"}
        ),
        desired.PodInfo(
            "ns", "dying", "u3", "node-a", {}, "", "Running", True, {"cachelink.io/cachelink": "cl"}
        ),
        desired.PodInfo(
            "other", "left", "u4", "node-a", {}, "", "Running", False, {"cachelink.io/cachelink": "cl"}
        ),
    ]
    asyncio.run(reconcile.unannotate(rt, "ns", "cl", pods, {"kept"}))
    assert kube.annotations == [("left", dict.fromkeys(reconcile.ANNOTATIONS))]


def test_finalize_removes_the_annotations(monkeypatch):
    monkeypatch.setattr(finalize.events, "normal", lambda *a: None)
    kube = FakeKube()
    rt = runtime(kube)
    pods = [
        desired.PodInfo(
            "ns", "p0", "u0", "node-a", {}, "", "Running", False, {"cachelink.io/cachelink": "cl"}
        )
    ]
    asyncio.run(finalize.finalize(rt, body(), reconcile.World(pods, {}, [], {})))
    assert kube.annotations == [("p0", dict.fromkeys(reconcile.ANNOTATIONS))]


# ------------------------------------------------------------------------------------ revisions


def _rs(uid: str, deployment: str | None, revision: int, hash_: str) -> dict[str, Any]:
    owners = [{"kind": "Deployment", "uid": deployment, "controller": True}] if deployment else []
    return {
        "metadata": {
            "uid": uid,
            "ownerReferences": owners,
            "annotations": {"deployment.kubernetes.io/revision": str(revision)},
            "labels": {"pod-template-hash": hash_},
        }
    }


def _owned_pod(name: str, kind: str, owner: str, labels: dict[str, str], created: str) -> desired.PodInfo:
    return desired.pod_info(
        {
            "metadata": {
                "namespace": "ns",
                "name": name,
                "uid": pod_uid(name),
                "labels": labels,
                "creationTimestamp": created,
                "ownerReferences": [{"kind": kind, "uid": owner, "controller": True}],
            },
            "spec": {"nodeName": "node-a"},
            "status": {"phase": "Running"},
        }
    )


def test_current_revision_comes_from_the_controller_not_the_newest_pod():
    revisions = desired.Revisions(
        {
            r.uid: r
            for r in map(
                desired.replicaset_info,
                [_rs("rs-old", "dep", 1, "old"), _rs("rs-new", "dep", 2, "new"), _rs("bare", None, 0, "b")],
            )
        },
        {"sts": "web-2"},
    )
    # an old pod recreated late (newest by creation) is still not current
    late_old = _owned_pod(
        "p-old", "ReplicaSet", "rs-old", {"pod-template-hash": "old"}, "2025-01-03T00:00:00Z"
    )
    new = _owned_pod("p-new", "ReplicaSet", "rs-new", {"pod-template-hash": "new"}, "2025-01-02T00:00:00Z")
    assert revisions.is_current(late_old) is False and revisions.is_current(new) is True
    assert revisions.is_current(_owned_pod("b", "ReplicaSet", "bare", {}, "")) is True
    assert (
        revisions.is_current(
            _owned_pod("s1", "StatefulSet", "sts", {"controller-revision-hash": "web-1"}, "")
        )
        is False
    )
    assert (
        revisions.is_current(
            _owned_pod("s2", "StatefulSet", "sts", {"controller-revision-hash": "web-2"}, "")
        )
        is True
    )
    assert revisions.is_current(_owned_pod("x", "DaemonSet", "ds", {}, "")) is None  # unknown: fallback

    pods = [
        _owned_pod(
            "p-old", "ReplicaSet", "rs-old", {"app": "p", "pod-template-hash": "old"}, "2025-01-03T00:00:00Z"
        ),
        _owned_pod(
            "p-new", "ReplicaSet", "rs-new", {"app": "p", "pod-template-hash": "new"}, "2025-01-02T00:00:00Z"
        ),
        pod("d0", "node-b", {"app": "d"}),
    ]
    want = compute(spec(), pods)
    planned = diff.plan(want, UID, {}, link_timeout_ms=3000, max_in_flight=4)
    new_status, _ = reconcile.status.build(CacheLinkStatus(), 1, want, planned, [], {}, [], None, revisions)
    current = {want.instances[link.prompt].member.key: link.current for link in new_status.links}
    assert current == {"p-old": False, "p-new": True}
    # without the controllers, the newest pod's label would have picked the wrong one
    fallback, _ = reconcile.status.build(CacheLinkStatus(), 1, want, planned, [], {}, [], None)
    assert {want.instances[link.prompt].member.key: link.current for link in fallback.links} == {
        "p-old": True,
        "p-new": False,
    }


# ------------------------------------------------------------------------------------ 409 conflicts


def test_status_conflict_is_redone_from_a_fresh_read():
    stale = body(spec={"prompt": {}, "decode": {}})  # invalid: the pass only writes a Rejected status
    fresh = {**stale, "status": {"phase": "Pending", "observedGeneration": 1}}
    fresh["metadata"] = {**stale["metadata"], "resourceVersion": "99"}
    kube = FakeKube(conflicts=1, fresh=fresh)
    rt = runtime(kube)
    delay = asyncio.run(reconcile.reconcile(rt, stale, reconcile.World([], {}, [], {})))
    assert delay == rt.config.resync_interval_s  # not a crash
    assert kube.reads == 1  # re-read once...
    ((_, patch),) = kube.status_patches  # ...and written once, built on the fresh object
    assert patch["phase"] == "Rejected"
    assert reconcile._previous(rt, UID, fresh["status"]).phase == "Rejected"


def test_status_conflict_on_a_vanished_object_stops():
    kube = FakeKube(conflicts=5, fresh=None)
    rt = runtime(kube)
    stale = body(spec={"prompt": {}, "decode": {}})
    assert (
        asyncio.run(reconcile.reconcile(rt, stale, reconcile.World([], {}, [], {})))
        == rt.config.resync_interval_s
    )
    assert kube.status_patches == []


def test_persistent_conflicts_back_off_without_raising():
    kube = FakeKube(conflicts=10, fresh=body(spec={"prompt": {}, "decode": {}}))
    rt = runtime(kube)
    stale = body(spec={"prompt": {}, "decode": {}})
    assert (
        asyncio.run(reconcile.reconcile(rt, stale, reconcile.World([], {}, [], {})))
        == rt.config.retry_delay_s
    )
    assert kube.reads == 3
