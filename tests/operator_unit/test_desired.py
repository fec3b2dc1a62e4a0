"""Desired state: members, names, cluster-id and port allocation, links per topology, rank tables."""

from __future__ import annotations

import json
import random

import pytest
from cachelink_agent import models as agent_models
from cachelink_agent.models import is_instance_name
from cachelink_operator import desired
from cachelink_operator.models import MAX_CLUSTER_ID, ClusterIdRange, PortRange, Role
from hypothesis import given, settings
from hypothesis import strategies as st

from .helpers import UID, compute, node_info, pod, running, spec

PODS = [
    pod("p0", "node-a", {"app": "p"}),
    pod("p1", "node-b", {"app": "p"}),
    pod("d0", "node-c", {"app": "d"}),
    pod("other", "node-a", {"app": "x"}),
]


def test_one_instance_per_selected_pod_on_its_node_and_all_to_all_links():
    want = compute(spec(), PODS)
    nodes = sorted((i.role.value, i.member.key, i.node) for i in want.instances.values())
    assert nodes == [("Decode", "d0", "node-c"), ("Prompt", "p0", "node-a"), ("Prompt", "p1", "node-b")]
    assert len(want.links) == 2
    assert all(want.instances[link.initiator].role is Role.DECODE for link in want.links)


def test_unscheduled_finished_and_deleting_pods_get_no_instance():
    pods = [
        pod("p0", "node-a", {"app": "p"}),
        pod("p1", None, {"app": "p"}),  # type: ignore[arg-type]
        pod("p2", "node-a", {"app": "p"}, phase="Succeeded"),
        pod("d0", "node-b", {"app": "d"}),
    ]
    gone = desired.PodInfo("ns", "p3", "u", "node-a", {"app": "p"}, "", "Running", True)
    want = compute(spec(), [*pods, gone])
    assert sorted(i.member.key for i in want.instances.values()) == ["d0", "p0"]


def test_node_names_and_explicit_pairs():
    s = spec(
        prompt={"nodeNames": ["node-a", "node-b"]},
        decode={"nodeNames": ["node-c"]},
        topology={"mode": "Pairs", "pairs": [{"prompt": "node-b", "decode": "node-c"}]},
    )
    want = compute(s, [])
    assert len(want.instances) == 3
    [link] = want.links
    assert want.instances[link.prompt].member.key == "node-b"


@settings(max_examples=50, deadline=None)
@given(
    ns=st.text("abc-.xyz0123456789", min_size=1, max_size=63),
    key=st.text("abc-.0123456789", min_size=1, max_size=253),
)
def test_instance_names_are_dns_labels(ns, key):
    name = desired.instance_name(ns, "my.cache-link", Role.PROMPT, key)
    assert is_instance_name(name)


def test_cluster_ids_are_stable_distinct_and_json_exact():
    first = compute(spec(), PODS)
    again = compute(spec(), list(reversed(PODS)))
    ids = {n: i.cluster_id for n, i in first.instances.items()}
    assert ids == {n: i.cluster_id for n, i in again.instances.items()}
    assert len(set(ids.values())) == len(ids)
    assert all(1 <= v <= MAX_CLUSTER_ID for v in ids.values())


def test_recorded_and_reported_ids_are_kept():
    first = compute(spec(), PODS)
    name = next(iter(first.instances))
    kept = compute(spec(), PODS, recorded_ids={name: 42})
    assert kept.instances[name].cluster_id == 42
    reported = {
        first.instances[name].node: [running(first.instances[name]).model_copy(update={"cluster_id": 43})]
    }
    assert compute(spec(), PODS, recorded_ids={name: 42}, reported=reported).instances[name].cluster_id == 43


@settings(max_examples=30, deadline=None)
@given(
    names=st.lists(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=20, unique=True),
    lo=st.integers(1, 100),
    extra=st.integers(0, 30),
)
def test_cluster_id_allocation_in_small_ranges(names, lo, extra):
    rng = ClusterIdRange(min=lo, max=lo + len(names) - 1 + extra)
    ids = desired.allocate_cluster_ids(names, UID, rng, {})
    assert len(set(ids.values())) == len(names)
    assert all(rng.min <= v <= rng.max for v in ids.values())


def test_cluster_id_range_too_small_is_an_error():
    with pytest.raises(ValueError, match="clusterIdRange"):
        desired.allocate_cluster_ids(["a", "b"], UID, ClusterIdRange(min=5, max=5), {})


def test_ports_lowest_free_avoiding_other_instances_and_kept():
    got = desired.allocate_ports(["a", "b", "c"], PortRange(min=100, max=104), {"c": 104}, [100, 102])
    assert got == {"a": 101, "b": 103, "c": 104}
    full = desired.allocate_ports(["a", "b"], PortRange(min=100, max=100), {}, [])
    assert full == {"a": 100, "b": None}


def test_only_listeners_get_ports_and_listen_options():
    want = compute(spec(), PODS)
    for inst in want.instances.values():
        assert inst.listens == (inst.role is Role.PROMPT)
        assert ("llm.listenIpInfo" in inst.options) == inst.listens
        assert inst.options["cachelink.host_id"] == inst.node
    ports = [i.port for i in want.instances.values() if i.listens]
    assert ports == [26000, 26000]  # one per node, each node starts at the range's bottom


def test_a_port_held_by_something_else_moves_the_instance():
    error = (
        "HTTP 422: [init] failed, error code is LLMStatusCode.LLM_PARAM_INVALID, "
        "cannot listen on 127.0.0.3:26000: Address already in use."
    )
    assert desired.port_in_use(error, 26000)
    assert not desired.port_in_use(error, 26001)
    assert not desired.port_in_use("HTTP 401: bad token", 26000)
    first = compute(spec(), PODS)
    (node, name) = next((i.node, n) for n, i in first.instances.items() if i.listens)
    moved = compute(spec(), PODS, recorded_ports={name: 26000}, busy_ports={node: {26000}})
    assert moved.instances[name].port == 26001
    assert moved.instances[name].options["llm.listenIpInfo"].endswith(":26001")
    # once it listens on the new port the error is gone: the port is kept, nothing flips back
    settled = compute(spec(), PODS, recorded_ports={name: 26001})
    assert settled.instances[name].port == 26001


def test_ports_other_cachelinks_hold_on_the_node_are_avoided_and_our_own_kept():
    first = compute(spec(), PODS)
    (node, name) = next((i.node, n) for n, i in first.instances.items() if i.listens)
    foreign = agent_models.ListenPort(port=26000, instance="someone-else", owner="uid-other")
    moved = compute(spec(), PODS, nodes={node: node_info(node, held=(foreign,))})
    assert moved.instances[name].port == 26001
    # our own instance holding 26001 on the node keeps it; one of ours that is going away does not
    ours = agent_models.ListenPort(port=26001, instance=name, owner=UID)
    leaving = agent_models.ListenPort(port=26002, instance="ours-leaving", owner=UID)
    kept = compute(
        spec(),
        PODS,
        nodes={node: node_info(node, held=(foreign, ours, leaving))},
        recorded_ports={name: 26001},
    )
    assert kept.instances[name].port == 26001
    fresh = compute(spec(), PODS, nodes={node: node_info(node, held=(foreign, leaving))})
    assert fresh.instances[name].port == 26001


def test_prompt_initiator_makes_decode_listen():
    want = compute(spec(options={"linkInitiator": "Prompt"}), PODS)
    assert all(i.listens == (i.role is Role.DECODE) for i in want.instances.values())


def test_rank_table_is_deterministic_and_complete():
    s = spec(options={"linkStyle": "CommDomain"})
    one = compute(s, PODS)
    shuffled = PODS[:]
    random.Random(3).shuffle(shuffled)
    two = compute(s, shuffled)
    assert one.rank_table is not None and two.rank_table is not None
    assert one.rank_table.hash == two.rank_table.hash and one.rank_table.complete
    table = json.loads(one.rank_table.text)
    assert table["server_count"] == "3"
    assert sorted(int(d["rank_id"]) for srv in table["server_list"] for d in srv["device"]) == [0, 1, 2]
    for link in one.links:
        assert link.comm_name and len(link.comm_name) < 128
        assert [rank for _, rank in link.rank_info] == sorted(rank for _, rank in link.rank_info)
    assert all("llm.listenIpInfo" not in i.options for i in one.instances.values())


def test_rank_table_incomplete_without_addresses():
    s = spec(options={"linkStyle": "CommDomain", "listenCidr": "10.0.0.0/8"})
    want = compute(s, PODS)
    assert want.rank_table is not None and not want.rank_table.complete
    assert all(i.problem for i in want.instances.values())


def test_current_revision_is_the_newest_pods():
    side = [
        desired.Member(
            Role.PROMPT, "a", "n", pod("a", "n", {"pod-template-hash": "old"}, created="2025-01-01T00:00:00Z")
        ),
        desired.Member(
            Role.PROMPT, "b", "n", pod("b", "n", {"pod-template-hash": "new"}, created="2025-01-02T00:00:00Z")
        ),
    ]
    assert desired.current_revision(side) == "new"


def test_cachelinks_reconciled_together_never_share_a_port():
    from cachelink_operator.port_claims import PortClaims

    claims = PortClaims()
    first = compute(spec(), PODS)
    claims.claim("uid-a", [(i.node, i.port) for i in first.instances.values() if i.port is not None])
    # a second CacheLink on the same nodes, before any agent reports the first one's instances
    second = compute(spec(), PODS, busy_ports=claims.held_by_others("uid-b"))
    taken = {(i.node, i.port) for i in first.instances.values() if i.port is not None}
    mine = {(i.node, i.port) for i in second.instances.values() if i.port is not None}
    assert mine and not (mine & taken)
    assert claims.held_by_others("uid-a") == {}
    claims.release("uid-a")
    assert claims.held_by_others("uid-b") == {}
    claims.mark_foreign("node-a", 26005)  # held outside the operator: avoided by every CacheLink, for good
    assert claims.held_by_others("uid-a") == claims.held_by_others("uid-b") == {"node-a": {26005}}
