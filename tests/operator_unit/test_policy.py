"""Policy selection, defaults merged by priority, and each limit violated once."""

from __future__ import annotations

import pytest
from cachelink_operator import policy
from cachelink_operator.models import CacheLinkPolicySpec, Options, PolicyRef, Role

from .helpers import compute, pod, spec


def pol(name: str, priority: int = 0, *, defaults=None, limits=None, selector=None) -> PolicyRef:
    body = {"priority": priority, "defaults": defaults or {}, "limits": limits or {}}
    if selector is not None:
        body["namespaceSelector"] = selector
    return PolicyRef(name=name, spec=CacheLinkPolicySpec.model_validate(body))


def test_selection_order_is_priority_then_name():
    policies = [
        pol("b", 5),
        pol("a", 5),
        pol("z", 9),
        pol("other", 100, selector={"matchLabels": {"team": "x"}}),
    ]
    chosen = policy.selecting(policies, {"team": "y"})
    assert [p.name for p in chosen] == ["z", "a", "b"]


def test_highest_priority_that_sets_a_field_wins_and_spec_wins_over_all():
    low = pol("low", 1, defaults={"syncKvTimeoutMs": 111, "linkTimeoutMs": 222, "deviceId": 1})
    high = pol("high", 10, defaults={"syncKvTimeoutMs": 999})
    tie = pol("a-tie", 1, defaults={"linkTimeoutMs": 333})
    s = spec(options={"deviceId": 5})
    merged = policy.effective_options(s, policy.selecting([low, high, tie], {}))
    assert merged.sync_kv_timeout_ms == 999
    assert merged.link_timeout_ms == 333  # tie at priority 1: "a-tie" sorts before "low"
    assert merged.device_id == 5
    assert merged.link_retry_count == 1  # built-in default


def test_side_options_override_the_cachelink_options():
    s = spec(
        options={"deviceId": 2},
        prompt={"podSelector": {"matchLabels": {"app": "p"}}, "options": {"deviceId": 7}},
    )
    merged = policy.effective_options(s, [])
    assert policy.side_options(s, Role.PROMPT, merged).device_id == 7
    assert policy.side_options(s, Role.DECODE, merged).device_id == 2


def _violations(policies, **spec_extra):
    s = spec(**spec_extra)
    pods = [
        pod("p0", "node-a", {"app": "p"}),
        pod("p1", "node-a", {"app": "p"}),
        pod("d0", "node-b", {"app": "d"}),
    ]
    merged = policy.effective_options(s, policies)
    sides = {role: policy.side_options(s, role, merged) for role in Role}
    want = compute(s, pods, policies=policies)
    return [v.rule for v in policy.evaluate(policies, merged, sides, want.usage)]


@pytest.mark.parametrize(
    ("limits", "spec_extra", "rule"),
    [
        ({"maxPoolBytesPerInstance": 1 << 20}, {}, "maxPoolBytesPerInstance"),
        ({"maxPoolBytesPerNode": (64 << 20) + 1}, {}, "maxPoolBytesPerNode"),
        ({"maxLinksPerCacheLink": 1}, {}, "maxLinksPerCacheLink"),
        ({"maxLinksPerInstance": 1}, {}, "maxLinksPerInstance"),
        ({"maxClustersPerLinkCall": 8}, {}, "maxClustersPerLinkCall"),
        ({"maxLinkSetupsInFlight": 2}, {}, "maxLinkSetupsInFlight"),
        ({"allowedRoles": ["Decode"]}, {}, "allowedRoles"),
        ({"allowedLinkStyles": ["CommDomain"]}, {}, "allowedLinkStyles"),
        ({"requiredTimeouts": {"maxSyncKvTimeoutMs": 500}}, {}, "requiredTimeouts.maxSyncKvTimeoutMs"),
        ({"requiredTimeouts": {"maxLinkTimeoutMs": 100}}, {}, "requiredTimeouts.maxLinkTimeoutMs"),
        (
            {"requiredTimeouts": {"maxLinkTotalTimeSeconds": 60}},
            {},
            "requiredTimeouts.maxLinkTotalTimeSeconds",
        ),
        (
            {"requireLinkAuthentication": True},
            {"options": {"linkAuthentication": False}},
            "requireLinkAuthentication",
        ),
    ],
)
def test_each_limit_violated_once(limits, spec_extra, rule):
    assert _violations([pol("strict", limits=limits)], **spec_extra) == [rule]


def test_link_authentication_is_required_unless_a_policy_allows_turning_it_off():
    unauthenticated = {"options": {"linkAuthentication": False}}
    assert _violations([], **unauthenticated) == ["requireLinkAuthentication"]
    assert _violations([pol("silent", limits={})], **unauthenticated) == ["requireLinkAuthentication"]
    assert _violations([pol("lenient", limits={"requireLinkAuthentication": False})], **unauthenticated) == []
    assert _violations([], options={"linkAuthentication": True}) == []


def test_compliant_cachelink_has_no_violation():
    generous = pol(
        "generous",
        limits={
            "maxPoolBytesPerInstance": 1 << 30,
            "maxLinksPerInstance": 512,
            "allowedRoles": ["Prompt", "Decode"],
            "requireLinkAuthentication": True,
        },
    )
    assert _violations([generous]) == []


def test_all_policies_limits_apply_and_port_ranges_intersect():
    a = pol("a", 1, limits={"listenPortRange": {"min": 30000, "max": 30100}})
    b = pol("b", 9, limits={"listenPortRange": {"min": 30050, "max": 30200}})
    assert policy.port_range([b, a]) == policy.PortRange(min=30050, max=30100)
    c = pol("c", 0, limits={"listenPortRange": {"min": 40000, "max": 40001}})
    assert "listenPortRange" in _violations([b, a, c])


def test_builtin_limit_of_512_links_per_instance_applies_without_policy():
    usage = policy.Usage({}, {}, 513, {"x": 513}, frozenset({Role.PROMPT}))
    found = policy.evaluate([], policy.BUILTIN_DEFAULTS, {}, usage)
    assert [(v.policy, v.rule) for v in found] == [(policy.BUILTIN_POLICY, "maxLinksPerInstance")]


def test_merge_keeps_first_set_value():
    merged = policy.merge_options(Options(device_id=None), Options(device_id=0), Options(device_id=9))
    assert merged.device_id == 0


def test_allowed_nodes_name_every_node_outside_the_list():
    limits = {"allowedNodes": ["node-a"]}
    assert _violations([pol("pinned", limits=limits)]) == ["allowedNodes"]
    s = spec()
    pods = [
        pod("p0", "node-a", {"app": "p"}),
        pod("d0", "node-b", {"app": "d"}),
        pod("d1", "node-c", {"app": "d"}),
    ]
    want = compute(s, pods)
    merged = policy.effective_options(s, [])
    sides = {role: policy.side_options(s, role, merged) for role in Role}
    found = policy.evaluate([pol("pinned", limits=limits)], merged, sides, want.usage)
    assert [str(v) for v in found] == ["pinned: allowedNodes: nodes node-b, node-c not allowed here"]
    assert _violations([pol("open", limits={"allowedNodes": ["node-a", "node-b"]})]) == []


def test_allowed_listen_interfaces_refuse_an_unset_or_other_interface():
    fabric = pol("fabric", limits={"allowedListenInterfaces": ["eth1"]})
    assert _violations([fabric]) == ["allowedListenInterfaces"]
    assert _violations([fabric], options={"listenInterface": "eth0"}) == ["allowedListenInterfaces"]
    assert _violations([fabric], options={"listenInterface": "eth1"}) == []
    # a policy default that names an allowed interface makes tenants comply without saying anything
    defaulted = pol(
        "fabric", defaults={"listenInterface": "eth1"}, limits={"allowedListenInterfaces": ["eth1"]}
    )
    assert _violations([defaulted]) == []


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"allowedNodes": []}, "limits.allowedNodes is empty"),
        ({"allowedListenInterfaces": []}, "limits.allowedListenInterfaces is empty"),
    ],
)
def test_an_empty_allow_list_is_a_contradiction(limits, problem):
    assert any(
        problem in p for p in policy.contradictions(CacheLinkPolicySpec.model_validate({"limits": limits}))
    )


def test_a_default_interface_outside_the_allow_list_is_a_contradiction():
    body = {"defaults": {"listenInterface": "eth0"}, "limits": {"allowedListenInterfaces": ["eth1"]}}
    assert policy.contradictions(CacheLinkPolicySpec.model_validate(body)) == [
        "defaults.listenInterface eth0 is not in limits.allowedListenInterfaces"
    ]
