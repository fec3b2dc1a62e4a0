"""``CacheLink.status`` from the desired state, the plan and what the agents said.

Conditions keep their ``lastTransitionTime`` while their status stays the same; each link keeps its
``since``, attempt and relink counters across reconciles; ``Ready`` counts only links between pods of
the current revision on both sides (the owning Deployment's newest ReplicaSet's ``pod-template-hash``,
the StatefulSet's ``updateRevision``; the newest pod's label where the controller is not known), so a
rollout never shows Ready early.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachelink_operator import agents, desired, diff
from cachelink_operator.models import (
    CacheLinkStatus,
    Condition,
    ConditionStatus,
    InstanceState,
    InstanceStatus,
    LinkState,
    LinkStatus,
    Phase,
    RankTableStatus,
    Role,
)
from cachelink_operator.policy import Violation

READY, INITIALIZED, LINKED, POLICY_COMPLIANT = "Ready", "Initialized", "Linked", "PolicyCompliant"


def merge_patch(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from ``old`` to ``new``: fields ``new`` dropped are set to null, or they linger."""
    patch = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def now() -> str:
    """RFC 3339 UTC timestamp, seconds precision (what metav1.Time serialises to)."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def condition(
    previous: Sequence[Condition],
    type_: str,
    ok: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    at: str,
) -> Condition:
    """A condition; its transition time moves only when its status changes."""
    status: ConditionStatus = "Unknown" if ok is None else "True" if ok else "False"
    old = next((c for c in previous if c.type == type_), None)
    since = (
        old.last_transition_time
        if old is not None and old.status == status and old.last_transition_time
        else at
    )
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:32768],
        last_transition_time=since,
        observed_generation=generation,
    )


@dataclass(frozen=True)
class Transition:
    """A link whose state changed in this reconcile (one Event each)."""

    prompt: str
    decode: str
    old: str | None
    new: str
    detail: str


def _current(
    inst: desired.DesiredInstance, newest: Mapping[Role, str | None], revisions: desired.Revisions | None
) -> bool:
    """Whether an instance's pod is of the current revision: its controller's (the Deployment's newest
    ReplicaSet, the StatefulSet's ``updateRevision``), else the revision of its side's newest pod."""
    pod = inst.member.pod
    if pod is None:
        return True
    known = revisions.is_current(pod) if revisions is not None else None
    if known is not None:
        return known
    return newest[inst.role] is None or pod.revision == newest[inst.role]


def rejected(
    previous: CacheLinkStatus,
    generation: int | None,
    reason: str,
    message: str,
    violations: Sequence[Violation] = (),
    cleared: bool = False,
) -> CacheLinkStatus:
    """Status of a CacheLink that is not applied (bad spec, policy violation, claimed pod).

    The rest is kept, unless ``cleared`` (its instances were removed): then instances and links go.
    """
    at = now()
    compliant = condition(
        previous.conditions,
        POLICY_COMPLIANT,
        not violations,
        "PolicyViolation" if violations else "Compliant",
        "; ".join(str(v) for v in violations) or "no policy limit is violated",
        generation,
        at,
    )
    ready = condition(previous.conditions, READY, False, reason, message, generation, at)
    others = [c for c in previous.conditions if c.type not in (READY, POLICY_COMPLIANT)]
    violated = sorted({name.strip() for v in violations for name in v.policy.split(",") if name.strip()})
    update: dict[str, object] = {
        "phase": "Rejected",
        "observed_generation": generation,
        "violated_policies": tuple(violated),
        "conditions": tuple(sorted([ready, compliant, *others], key=lambda c: c.type)),
    }
    if cleared:
        update.update(instances=(), links=(), desired_links=0, linked_links=0, ready_links=0)
    return previous.model_copy(update=update)


def build(  # noqa: PLR0915 - to split into instance and link builders next session
    previous: CacheLinkStatus,
    generation: int | None,
    want: desired.Desired,
    planned: diff.Plan,
    outcomes: Sequence[agents.Outcome],
    unreachable: Mapping[str, str],
    policies: Sequence[str],
    rank_table_cm: str | None,
    revisions: desired.Revisions | None = None,
) -> tuple[CacheLinkStatus, list[Transition]]:
    """The new status and the link transitions it records."""
    at = now()
    failures = {(o.action.node, o.action.instance): o for o in outcomes if not o.ok}
    old_instances = {i.name: i for i in previous.instances}
    instances: list[InstanceStatus] = []
    for name, inst in sorted(want.instances.items()):
        pod = inst.member.pod
        failure = next(
            (
                o
                for (node, i), o in failures.items()
                if i == name and node == inst.node and isinstance(o.action, diff.PutInstance)
            ),
            None,
        )
        error = inst.problem or (failure.error if failure else None) or unreachable.get(inst.node)
        put = any(isinstance(a, diff.PutInstance) and a.instance == name for a in planned.actions)
        inst_state: InstanceState = (
            "Unreachable"
            if inst.node in unreachable
            else "Failed"
            if error
            else "Pending"
            if put
            else "Initialized"
        )
        have = planned.live.get(name)
        incarnation = str(have.incarnation) if have is not None and have.incarnation else None
        instances.append(
            InstanceStatus(
                name=name,
                role=inst.role,
                member=inst.member.key,
                node=inst.node,
                pod=pod.name if pod else None,
                **{"podUID": pod.uid if pod else None},
                revision=pod.revision if pod else None,
                cluster_id=inst.cluster_id,
                port=inst.port,
                address=inst.address,
                state=inst_state,
                incarnation=incarnation
                or (old_instances[name].incarnation if name in old_instances else None),
                last_error=error,
            )
        )

    by_name = {i.name: i for i in instances}
    newest = {
        role: desired.current_revision([i.member for i in want.instances.values() if i.role is role])
        for role in Role
    }
    old_links = {(link.prompt, link.decode): link for link in previous.links}
    links: list[LinkStatus] = []
    transitions: list[Transition] = []
    attempted = {
        (a.instance, getattr(a, "remote_cluster_id", None) or getattr(a, "comm_name", None)): a
        for a in planned.actions
        if isinstance(a, diff.PutLink | diff.PutCommLink)
    }
    link_failures = {
        (
            o.action.instance,
            getattr(o.action, "remote_cluster_id", None) or getattr(o.action, "comm_name", None),
        ): o
        for o in outcomes
        if isinstance(o.action, diff.PutLink | diff.PutCommLink)
    }
    for link in want.links:
        key = (link.prompt, link.decode)
        view = planned.links.get(key, diff.LinkView("Pending"))
        old = old_links.get(key)
        p, d = want.instances[link.prompt], want.instances[link.decode]
        target_key = (link.initiator, link.comm_name or want.instances[link.target].cluster_id)
        action = attempted.get(target_key)
        outcome = link_failures.get(target_key)
        state: LinkState = view.state
        if action is not None:
            state = (
                "Linked"
                if outcome is not None
                and outcome.ok
                and outcome.result is not None
                and outcome.result.link is not None
                and outcome.result.link.state == "linked"
                else "Linking"
            )
            if outcome is not None and not outcome.ok:
                state = "Broken" if old is not None and old.state == "Linked" else "Pending"
        if state == "Linked" and not all(by_name[n].state == "Initialized" for n in (p.name, d.name)):
            state = "Pending"  # an end is being (re)initialised or cannot be asked: not ready to use
        current = all(_current(inst, newest, revisions) for inst in (p, d))
        since = old.since if old is not None and old.state == state and old.since else at
        if old is None or old.state != state:
            transitions.append(
                Transition(
                    link.prompt,
                    link.decode,
                    old.state if old else None,
                    state,
                    outcome.error if outcome is not None and outcome.error else "",
                )
            )
        relink = isinstance(action, diff.PutLink | diff.PutCommLink) and action.relink
        # what the agent answered to this pass's link call: the data path and status code are known
        # now, so the status that says Linked says them too (no second write one pass later)
        answered = outcome.result if outcome is not None and outcome.ok and outcome.result else None
        fresh_path = answered.link.data_path if answered and answered.link else None
        fresh_code = (
            (answered.link.last_status if answered.link else None)
            or (answered.comm_link.last_status if answered.comm_link else None)
            if answered
            else None
        )
        links.append(
            LinkStatus(
                prompt=link.prompt,
                decode=link.decode,
                prompt_cluster_id=p.cluster_id,
                decode_cluster_id=d.cluster_id,
                state=state,
                data_path=fresh_path or view.data_path or (old.data_path if old else None),
                address=view.address
                or (want.instances[link.target].endpoint if link.comm_name is None else None),
                current=current,
                attempts=(old.attempts if old else 0) + (1 if action is not None else 0),
                relinks=(old.relinks if old else 0) + (1 if relink else 0),
                last_status_code=(outcome.llm_status if outcome is not None and not outcome.ok else None)
                or fresh_code
                or view.last_status_code
                or (old.last_status_code if old else None),
                last_error=(outcome.error if outcome is not None and not outcome.ok else view.last_error),
                prompt_incarnation=str(view.prompt_incarnation) if view.prompt_incarnation else None,
                decode_incarnation=str(view.decode_incarnation) if view.decode_incarnation else None,
                **{
                    "promptPodUID": p.member.pod.uid if p.member.pod else None,
                    "decodePodUID": d.member.pod.uid if d.member.pod else None,
                },
                since=since,
            )
        )

    linked = sum(1 for link in links if link.state == "Linked")
    ready_links = sum(1 for link in links if link.state == "Linked" and link.current)
    all_current = all(link.current for link in links)
    initialized = all(i.state == "Initialized" for i in instances) and bool(instances)
    failed = [i for i in instances if i.state in ("Failed", "Unreachable")]
    ready = bool(links) and linked == len(links) and all_current and initialized
    conds = previous.conditions
    init_msg = f"{sum(i.state == 'Initialized' for i in instances)}/{len(instances)} instances initialized"
    if failed:
        init_msg += "; " + "; ".join(f"{i.name}: {i.last_error}" for i in failed[:5])
    ready_msg = f"{ready_links}/{len(links)} links ready" + (
        "" if all_current else "; a rollout is in progress"
    )
    conditions = (
        condition(
            conds,
            INITIALIZED,
            initialized,
            "Initialized" if initialized else "Initializing",
            init_msg,
            generation,
            at,
        ),
        condition(
            conds,
            LINKED,
            bool(links) and linked == len(links),
            "Linked" if linked == len(links) and links else "NoMembers" if not links else "Linking",
            f"{linked}/{len(links)} links linked",
            generation,
            at,
        ),
        condition(conds, POLICY_COMPLIANT, True, "Compliant", "no policy limit is violated", generation, at),
        condition(conds, READY, ready, "Ready" if ready else "NotReady", ready_msg, generation, at),
    )
    phase: Phase = (
        "Ready"
        if ready
        else "Degraded"
        if failed or any(link.state == "Broken" for link in links)
        else "Linking"
        if initialized
        else "Initializing"
        if instances
        else "Pending"
    )
    new = CacheLinkStatus(
        phase=phase,
        observed_generation=generation,
        desired_links=len(links),
        linked_links=linked,
        ready_links=ready_links,
        rank_table=RankTableStatus(
            config_map_name=rank_table_cm, hash=want.rank_table.hash, complete=want.rank_table.complete
        )
        if want.rank_table is not None and rank_table_cm
        else None,
        policies=tuple(policies),
        conditions=tuple(sorted(conditions, key=lambda c: c.type)),
        instances=tuple(instances),
        links=tuple(links),
    )
    return new, transitions
