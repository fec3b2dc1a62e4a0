"""Namespace quotas: shared by a namespace's CacheLinks in creation order, computed from specs and pods."""

from __future__ import annotations

from cachelink_operator import desired, quota
from cachelink_operator.models import CacheLinkPolicySpec, PolicyRef

from .helpers import pod, spec

MIB = 1 << 20


def quota_policy(**limits: int) -> PolicyRef:
    return PolicyRef(name="quota", spec=CacheLinkPolicySpec.model_validate({"limits": limits}))


def ref(name: str, created: str, **extra: object) -> desired.CacheLinkRef:
    return desired.CacheLinkRef("ns", name, f"uid-{name}", created, spec(**extra))


NODES = {"prompt": {"nodeNames": ["node-a"]}, "decode": {"nodeNames": ["node-b"]}}
SMALL = {"memPoolSizeBytes": 4 * MIB}


def rules(me, neighbours, policies, pods=()):
    return [v.rule for v in quota.violations(me, neighbours, pods, policies)]


def test_demand_counts_one_instance_per_member_and_each_sides_pool_bytes():
    s = spec(
        options=SMALL,
        prompt={"podSelector": {"matchLabels": {"app": "p"}}, "options": {"memPoolSizeBytes": 8 * MIB}},
    )
    pods = [
        pod("p0", "node-a", {"app": "p"}),
        pod("p1", "node-a", {"app": "p"}),
        pod("d0", "node-b", {"app": "d"}),
    ]
    assert quota.demand(s, "ns", pods, []) == quota.Demand(3, 2 * 8 * MIB + 4 * MIB)


def test_the_first_created_cachelinks_get_the_quota_and_the_rest_are_rejected():
    first = ref("zeta", "2026-01-01T00:00:00Z", options=SMALL, **NODES)
    second = ref("alpha", "2026-01-01T00:00:01Z", options=SMALL, **NODES)
    policies = [quota_policy(maxInstancesPerNamespace=3)]
    assert rules(first, [first, second], policies) == []
    assert rules(second, [first, second], policies) == ["maxInstancesPerNamespace"]
    # the first one gone, the second fits
    assert rules(second, [second], policies) == []


def test_creation_ties_are_broken_by_name_and_the_message_says_who_holds_what():
    a = ref("a", "2026-01-01T00:00:00Z", options=SMALL, **NODES)
    b = ref("b", "2026-01-01T00:00:00Z", options=SMALL, **NODES)
    policies = [quota_policy(maxPoolBytesPerNamespace=10 * MIB)]
    assert rules(a, [b, a], policies) == []
    (violation,) = quota.violations(b, [b, a], [], policies)
    assert str(violation) == (
        "quota: maxPoolBytesPerNamespace: namespace ns would hold 16777216 pool bytes, more than 10485760"
        " (8388608 for the CacheLinks created before this one, 8388608 for this one)"
    )


def test_a_quota_counts_only_the_namespace_and_cachelinks_that_parse():
    me = ref("me", "2026-01-01T00:00:02Z", options=SMALL, **NODES)
    elsewhere = desired.CacheLinkRef("other", "x", "uid-x", "2026-01-01T00:00:00Z", me.spec)
    broken = desired.CacheLinkRef("ns", "broken", "uid-b", "2026-01-01T00:00:00Z", None)
    assert rules(me, [elsewhere, broken, me], [quota_policy(maxInstancesPerNamespace=2)]) == []
    assert rules(me, [me], [quota_policy(maxInstancesPerNamespace=1)]) == ["maxInstancesPerNamespace"]


def test_every_selecting_policys_quota_applies_and_none_means_no_check():
    me = ref("me", "2026-01-01T00:00:00Z", options=SMALL, **NODES)
    loose = quota_policy(maxInstancesPerNamespace=100)
    tight = PolicyRef(
        name="tight", spec=CacheLinkPolicySpec.model_validate({"limits": {"maxPoolBytesPerNamespace": 1}})
    )
    assert rules(me, [me], [loose, tight]) == ["maxPoolBytesPerNamespace"]
    assert not quota.has_quota([PolicyRef(name="none", spec=CacheLinkPolicySpec())])
    assert rules(me, [me], [PolicyRef(name="none", spec=CacheLinkPolicySpec())]) == []


def test_later_names_the_cachelinks_a_change_may_admit():
    a = ref("a", "2026-01-01T00:00:00Z", **NODES)
    b = ref("b", "2026-01-01T00:00:01Z", **NODES)
    c = ref("c", "2026-01-01T00:00:02Z", **NODES)
    assert quota.later(b, [a, b, c]) == ["uid-c"]
    assert quota.later(a, [a, b, c]) == ["uid-b", "uid-c"]
