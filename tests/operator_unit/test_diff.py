"""Planning agent calls: only what closes the difference, in order, idempotent, with restart detection."""

from __future__ import annotations

from cachelink_agent import models as agent_models
from cachelink_operator import diff
from hypothesis import given, settings
from hypothesis import strategies as st

from .helpers import UID, compute, pod, pod_uid, running, spec

PODS = [pod("p0", "node-a", {"app": "p"}), pod("d0", "node-b", {"app": "d"})]


def _plan(want, reported, **kw):
    return diff.plan(
        want, UID, reported, link_timeout_ms=3000, max_in_flight=kw.pop("max_in_flight", 4), **kw
    )


def _reported(want, **kw):
    out: dict[str, list[agent_models.InstanceStatus]] = {}
    for inst in want.instances.values():
        out.setdefault(inst.node, []).append(running(inst, **kw))
    return out


def test_fresh_cachelink_creates_instances_then_links():
    want = compute(spec(), PODS)
    first = _plan(want, {})
    assert [type(a).__name__ for a in first.actions] == ["PutInstance", "PutInstance"]
    assert not first.converged
    second = _plan(want, _reported(want))
    [link] = second.actions
    assert isinstance(link, diff.PutLink)
    decode = next(i for i in want.instances.values() if i.role.value == "Decode")
    prompt = next(i for i in want.instances.values() if i.role.value == "Prompt")
    assert (link.instance, link.remote_cluster_id) == (decode.name, prompt.cluster_id)
    assert link.spec.remote_address == prompt.endpoint and link.spec.local_ip == "127.0.0.3"


def _linked(want, *, peer_incarnation=7, state="linked"):
    reported = _reported(want)
    prompt = next(i for i in want.instances.values() if i.role.value == "Prompt")
    for inst in reported["node-b"]:
        inst.links.append(
            agent_models.LinkStatus(
                remote_cluster_id=prompt.cluster_id,
                address=prompt.endpoint,
                state=state,
                data_path="tcp",
                peer_incarnation=peer_incarnation,
            )
        )
    return reported


def test_converged_state_plans_nothing():
    want = compute(spec(), PODS)
    result = _plan(want, _linked(want))
    assert result.actions == [] and result.converged
    assert [v.state for v in result.links.values()] == ["Linked"]


def test_restarted_peer_forces_unlink_and_relink():
    want = compute(spec(), PODS)
    result = _plan(want, _linked(want, peer_incarnation=6))
    assert [type(a).__name__ for a in result.actions] == ["DeleteLink", "PutLink"]
    assert result.actions[1].relink  # type: ignore[attr-defined]


def test_broken_link_is_relinked():
    want = compute(spec(), PODS)
    assert [type(a).__name__ for a in _plan(want, _linked(want, state="broken")).actions] == [
        "DeleteLink",
        "PutLink",
    ]


def test_changed_options_replace_the_instance():
    want = compute(spec(), PODS)
    reported = _linked(want)
    reported["node-a"][0] = reported["node-a"][0].model_copy(
        update={"options_sha256": agent_models.options_digest({"llm.SyncKvCacheWaitTime": "5"})}
    )
    [put] = _plan(want, reported).actions
    assert isinstance(put, diff.PutInstance) and put.spec.replace


def test_scale_down_unlinks_and_deletes_the_gone_instance():
    big = compute(spec(), [*PODS, pod("p1", "node-c", {"app": "p"})])
    reported = _reported(big)
    small = compute(spec(), PODS)
    result = _plan(small, reported)
    kinds = [type(a).__name__ for a in result.actions]
    assert kinds[0] == "DeleteInstance" and result.actions[0].node == "node-c"


def test_other_owners_instances_are_left_alone_but_swept_when_orphaned():
    want = compute(spec(), PODS)
    reported = _linked(want)
    stranger = running(next(iter(want.instances.values())), owner="someone-else").model_copy(
        update={"name": "x"}
    )
    reported["node-a"].append(stranger)
    assert _plan(want, reported).actions == []
    owners: dict[str, list[str]] = {}
    for inst in reported["node-a"]:
        owners.setdefault(inst.owner, []).append(inst.name)
    assert diff.sweep("node-a", owners, [UID]) == [diff.DeleteInstance("node-a", "x")]
    assert diff.sweep("node-a", owners, [UID, "someone-else"]) == []


def test_pod_recreated_with_same_name_reinitialises():
    want = compute(spec(), PODS)
    name = next(n for n, i in want.instances.items() if i.member.key == "p0")
    [put] = _plan(want, _linked(want), recorded_pod_uids={name: "older-uid"}).actions
    assert isinstance(put, diff.PutInstance) and put.spec.attach.pod_uids == [pod_uid("p0")]


@settings(max_examples=20, deadline=None)
@given(prompts=st.integers(1, 6), decodes=st.integers(1, 6), limit=st.integers(1, 4))
def test_in_flight_link_setups_are_bounded_per_instance(prompts, decodes, limit):
    pods = [pod(f"p{i}", "node-a", {"app": "p"}) for i in range(prompts)]
    pods += [pod(f"d{i}", "node-b", {"app": "d"}) for i in range(decodes)]
    want = compute(spec(), pods)
    result = _plan(want, _reported(want), max_in_flight=limit)
    per: dict[str, int] = {}
    for action in result.actions:
        assert isinstance(action, diff.PutLink)
        per[action.instance] = per.get(action.instance, 0) + 1
    assert all(count == min(limit, prompts) for count in per.values())
    assert len(per) == decodes


def test_comm_domain_links_both_sides_with_the_rank_table():
    want = compute(spec(options={"linkStyle": "CommDomain"}), PODS)
    result = _plan(want, _reported(want))
    assert sorted(type(a).__name__ for a in result.actions) == ["PutCommLink", "PutCommLink"]
    assert {a.instance for a in result.actions} == set(want.instances)
    assert all(a.spec.rank_table == want.rank_table.text for a in result.actions)  # type: ignore[union-attr,attr-defined]


def test_instances_name_their_cachelink_so_only_its_pods_csi_volumes_get_the_socket():
    want = compute(spec(), PODS)
    puts = [a for a in _plan(want, {}).actions if isinstance(a, diff.PutInstance)]
    assert {(p.spec.attach.namespace, p.spec.attach.cachelink) for p in puts} == {("ns", "cl")}
    by_key = {want.instances[p.instance].member.key: p.spec.attach.pod_uids for p in puts}
    assert by_key == {"p0": [pod_uid("p0")], "d0": [pod_uid("d0")]}
