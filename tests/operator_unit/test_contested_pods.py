"""A pod selected by two CacheLinks goes to the earlier one; pod annotations follow the selection."""

from __future__ import annotations

import asyncio

import pytest
from cachelink_operator import desired, diff, finalize, reconcile

from .fakes import OTHER_UID, PODS, FakeAgents, FakeKube, body, runtime
from .helpers import compute, running, spec

pytestmark = pytest.mark.usefixtures("posted_warnings")


# ------------------------------------------------------------------------------------ contested pods


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
