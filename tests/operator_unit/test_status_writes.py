"""Status writes: the current revision from the controller, and 409 conflicts redone from a fresh read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cachelink_operator import desired, diff, reconcile
from cachelink_operator.models import CacheLinkStatus

from .fakes import FakeKube, body, runtime
from .helpers import UID, compute, pod, pod_uid, spec

pytestmark = pytest.mark.usefixtures("posted_warnings")


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
