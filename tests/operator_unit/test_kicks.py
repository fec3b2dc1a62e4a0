"""Which CacheLinks a change wakes: those it concerns, not the whole namespace (500 CacheLinks in one
namespace must not all reconcile because one of them was deleted or one pod was annotated)."""

from __future__ import annotations

import dataclasses
from typing import Any

from cachelink_operator import desired, handlers

from .helpers import pod


def _body(name: str, spec: dict[str, Any] | None, generation: int = 1, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": f"uid-{name}",
            "generation": generation,
            "creationTimestamp": "2025-01-01T00:00:00Z",
            **meta,
        },
        "spec": spec,
    }


def _selecting(prompt: str, decode: str) -> dict[str, Any]:
    return {
        "prompt": {"podSelector": {"matchLabels": {"app": prompt}}},
        "decode": {"podSelector": {"matchLabels": {"app": decode}}},
    }


ON_NODES = {"prompt": {"nodeNames": ["node-a"]}, "decode": {"nodeNames": ["node-b"]}}
PODS = [
    pod("p1", "node-a", {"app": "p1"}),
    pod("d1", "node-b", {"app": "d1"}),
    pod("p2", "node-a", {"app": "p2"}),
]
A = desired.cachelink_ref(_body("a", _selecting("p1", "d1")))
B = desired.cachelink_ref(_body("b", _selecting("p1", "d9")))  # shares p1 with A
C = desired.cachelink_ref(_body("c", _selecting("p2", "d9")))  # shares nothing with A
D = desired.cachelink_ref(_body("d", ON_NODES))  # no pods at all
BROKEN = desired.cachelink_ref(_body("x", {"prompt": "nonsense"}))


def test_a_deleted_cachelink_wakes_only_those_sharing_its_pods() -> None:
    assert desired.contenders([A], [A, B, C, D, BROKEN], PODS) == ["uid-b"]
    assert desired.contenders([D], [A, B, C, D], PODS) == []  # node-placed: contends for nothing
    assert desired.contenders([BROKEN], [A, B, C, D], PODS) == []


def test_a_selector_change_wakes_those_sharing_the_old_or_the_new_pods() -> None:
    moved = dataclasses.replace(A, spec=desired.cachelink_ref(_body("a", _selecting("p2", "d1"))).spec)
    assert sorted(desired.contenders([A, moved], [A, B, C, D], PODS)) == ["uid-b", "uid-c"]


def test_a_pod_change_wakes_who_selects_it_and_who_it_names() -> None:
    p1 = PODS[0]
    assert desired.interested(p1, [A, B, C, D]) == ["uid-a", "uid-b"]
    relabelled = dataclasses.replace(p1, labels={"app": "p2"}, annotations={"cachelink.io/cachelink": "a"})
    assert desired.interested(relabelled, [A, B, C, D]) == ["uid-a", "uid-c"]
    elsewhere = dataclasses.replace(p1, namespace="other")
    assert desired.interested(elsewhere, [A, B, C, D]) == []


def test_only_a_deletion_or_a_spec_change_counts_as_a_claims_change() -> None:
    kicks = handlers.Kicks()
    first = _body("a", _selecting("p1", "d1"))
    assert kicks.claims_changed("uid-a", None, first) == []  # first sight: a new CacheLink wins nothing
    status_only = {**first, "status": {"phase": "Ready"}}
    assert kicks.claims_changed("uid-a", "MODIFIED", status_only) == []
    changed = _body("a", _selecting("p2", "d1"), generation=2)
    versions = kicks.claims_changed("uid-a", "MODIFIED", changed)
    assert [v.spec.prompt.pod_selector.match_labels for v in versions if v.spec] == [
        {"app": "p1"},
        {"app": "p2"},
    ]
    deleting = _body("a", _selecting("p2", "d1"), generation=2, deletionTimestamp="2025-01-01T00:01:00Z")
    assert len(kicks.claims_changed("uid-a", "MODIFIED", deleting)) == 2
    assert len(kicks.claims_changed("uid-a", "DELETED", deleting)) == 2
    assert "uid-a" not in kicks.seen


def _indices(objects: list[desired.CacheLinkRef], limits: dict[str, Any]) -> dict[str, Any]:
    from cachelink_operator.models import CacheLinkPolicySpec, PolicyRef

    spec = CacheLinkPolicySpec.model_validate({"limits": limits})
    empty: dict[str, list[Any]] = {}
    return {
        "cachelink_objects": {"ns": objects},
        "cachelink_policies": {"all": [PolicyRef(name="p", spec=spec)]},
        "cachelink_namespaces": {"ns": [{}]},
        "cachelink_pods": empty,
        "cachelink_agents": empty,
        "cachelink_replicasets": empty,
        "cachelink_statefulsets": empty,
    }


def test_a_change_under_a_namespace_quota_wakes_the_later_cachelinks_only() -> None:
    import kopf

    early = _body("early", ON_NODES)
    late = desired.cachelink_ref(_body("late", ON_NODES, creationTimestamp="2025-01-01T00:00:05Z"))
    objects = [desired.cachelink_ref(early), late]
    quota = _indices(objects, {"maxInstancesPerNamespace": 2})
    assert handlers._sharing_a_quota(quota, kopf.Body(early)) == ["uid-late"]
    assert (
        handlers._sharing_a_quota(
            quota, kopf.Body(_body("late", ON_NODES, creationTimestamp="2025-01-01T00:00:05Z"))
        )
        == []
    )
    # without a quota nobody else is woken (500 CacheLinks in a namespace)
    assert handlers._sharing_a_quota(_indices(objects, {"maxPoolBytesPerNode": 1}), kopf.Body(early)) == []
