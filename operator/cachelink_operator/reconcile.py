"""One reconcile of one CacheLink: parse, apply policy, compute desired, diff, call agents, report.

Level-triggered: every pass starts from the object, the pod index and what the agents report, never
from memory of earlier passes, so it converges after a restart at any point. Returns how long to wait
before the next pass (short while work is pending, the resync interval once converged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
from cachelink_agent.models import InstanceStatus as InstanceStatusReport
from kubernetes.client.exceptions import ApiException

from cachelink_operator import (
    agent_certs,
    agents,
    desired,
    diff,
    events,
    kube,
    link_keys,
    metrics,
    policy,
    policy_status,
    quota,
    status,
    timestamps,
)
from cachelink_operator.config import Config
from cachelink_operator.models import CacheLinkSpec, CacheLinkStatus, InstanceStatus, PolicyRef, Role
from cachelink_operator.port_claims import PortClaims
from llm_datadist.status import CacheLinkError

log = logging.getLogger(__name__)
ANNOTATIONS = (
    "cachelink.io/cachelink",
    "cachelink.io/instance",
    "cachelink.io/cluster-id",
    "cachelink.io/attach-socket",
)


@dataclass
class Runtime:
    """What every reconcile shares: API and agent clients, settings, per-CacheLink backoff."""

    config: Config
    kube: kube.Kube
    agents: agents.Agents
    failures: dict[str, int] = field(default_factory=dict)
    linked_once: set[str] = field(default_factory=set)
    #: the master key link secrets are derived from (:mod:`cachelink_operator.link_keys`)
    link_master: bytes = b""
    #: the CA signing agents' serving certificates (None: agents are called over plain HTTP)
    signing_ca: agent_certs.SigningCA | None = None
    #: per CacheLink UID: (status the object had, status we wrote over it)
    written: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    #: what the CacheLinkPolicy status loop works from
    board: policy_status.Board = field(default_factory=policy_status.Board)
    #: listen ports handed out, so CacheLinks reconciled together never pick the same one
    port_claims: PortClaims = field(default_factory=PortClaims)

    def retry_delay(self, uid: str) -> float:
        """The backoff before a CacheLink's next attempt: doubling with its failures, capped."""
        doublings = min(self.failures.get(uid, 0), 10)
        return min(self.config.retry_delay_s * float(2**doublings), self.config.max_retry_delay_s)

    def forget(self, uid: str) -> None:
        """Drop what is remembered about a CacheLink (its daemon stopped)."""
        self.failures.pop(uid, None)
        self.written.pop(uid, None)
        self.linked_once.discard(uid)
        self.port_claims.release(uid)


@dataclass(frozen=True)
class World:
    """The indexed cluster state a reconcile reads."""

    pods: Iterable[desired.PodInfo]
    endpoints: Mapping[str, agents.Endpoint]
    policies: Iterable[PolicyRef]
    namespace_labels: Mapping[str, str]
    #: the CacheLinks of the namespace (who claims which pods)
    cachelinks: Sequence[desired.CacheLinkRef] = ()
    #: the namespace's controllers' current revisions
    revisions: desired.Revisions = field(default_factory=desired.Revisions)


class StatusConflict(CacheLinkError):
    """The API server answered 409 to a status patch: the object changed under us."""


def rank_table_name(name: str) -> str:
    """The rank-table ConfigMap of a CacheLink."""
    return f"{name}-rank-table"[:253]


async def reconcile(
    rt: Runtime, body: Mapping[str, Any], world: World, full: bool = True, conflicts: int = 3
) -> float:
    """One pass (``reconcile_once``), redone from a fresh read of the object if its status patch meets a
    409 conflict, so a conflict is neither a crash nor a lost update; returns the delay before the next."""
    meta = body["metadata"]
    for _ in range(conflicts):
        try:
            return await reconcile_once(rt, body, world, full)
        except StatusConflict:
            metrics.RECONCILE_ERRORS.labels("Conflict").inc()
            log.info("status of %s/%s: conflict, redoing the pass from a fresh read", *_key(meta))
            rt.written.pop(str(meta["uid"]), None)
            fresh = await rt.kube.get_cachelink(meta["namespace"], meta["name"])
            if fresh is None or fresh["metadata"].get("uid") != meta["uid"]:
                return rt.config.resync_interval_s  # gone (or replaced by a namesake)
            body, meta = fresh, fresh["metadata"]
    return rt.config.retry_delay_s


def _key(meta: Mapping[str, Any]) -> tuple[str, str]:
    return str(meta["namespace"]), str(meta["name"])


async def reconcile_once(rt: Runtime, body: Mapping[str, Any], world: World, full: bool = True) -> float:
    """One pass; returns the delay before the next.

    The agents asked are those of the members' nodes and of the nodes status recorded instances on;
    a ``full`` pass (the first one and every resync) asks every agent, so instances on nodes that status
    forgot (a crash before the status write) are found and removed too.
    """
    meta = body["metadata"]
    namespace, name, uid, generation = meta["namespace"], meta["name"], meta["uid"], meta.get("generation")
    previous = _previous(rt, uid, body.get("status") or {})
    try:
        spec = CacheLinkSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as error:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        await _reject(rt, body, previous, generation, "InvalidSpec", message)
        return rt.config.resync_interval_s

    ordered = policy.selecting(world.policies, world.namespace_labels)
    merged = policy.effective_options(spec, ordered)
    sides = {role: policy.side_options(spec, role, merged) for role in Role}
    ports = policy.port_range(ordered)
    sides_members = desired.members(spec, namespace, world.pods)
    claimed = desired.claims(
        desired.cachelink_ref(body),
        world.cachelinks,
        [m for role in Role for m in sides_members[role]],
        world.pods,
    )
    if claimed:
        return await _give_way(rt, body, previous, world, full, claimed)
    nodes = {m.node for role in Role for m in sides_members[role]} | {
        i.node for i in previous.instances if i.node
    }
    if full:
        nodes |= set(world.endpoints)
    seen = await rt.agents.observe(nodes, world.endpoints, uid)
    link_secret = None
    if merged.link_authentication:
        link_secret = link_keys.link_secret(rt.link_master, namespace, name, uid)
    _note_foreign_ports(rt.port_claims, previous.instances)
    try:
        want = desired.compute(
            spec,
            desired.Inputs(
                namespace=namespace,
                name=name,
                uid=uid,
                members=sides_members,
                options=sides,
                link_options=merged,
                port_range=ports or policy.BUILTIN_PORT_RANGE,
                agent_addresses={n: e.address for n, e in world.endpoints.items()},
                nodes=seen.nodes,
                reported=seen.instances,
                recorded_ids={i.name: i.cluster_id for i in previous.instances if i.cluster_id is not None},
                recorded_ports={i.name: i.port for i in previous.instances if i.port is not None},
                link_secret=link_secret,
                busy_ports=rt.port_claims.held_by_others(uid),
            ),
        )
    except ValueError as error:
        await _reject(rt, body, previous, generation, "AllocationFailed", str(error))
        return rt.config.resync_interval_s
    rt.port_claims.claim(uid, [(i.node, i.port) for i in want.instances.values() if i.port is not None])
    assert want.usage is not None
    violations = policy.evaluate(ordered, merged, sides, want.usage)
    violations += quota.violations(desired.cachelink_ref(body), world.cachelinks, world.pods, ordered)
    if violations:
        await _reject(
            rt,
            body,
            previous,
            generation,
            "PolicyViolation",
            "; ".join(str(v) for v in violations),
            violations,
        )
        return rt.config.resync_interval_s

    cm_name = await _publish_rank_table(rt, body, previous, want)

    planned, outcomes = await _act(
        rt,
        want,
        uid,
        seen.instances,
        world.endpoints,
        link_timeout_ms=merged.link_timeout_ms or policy.LINK_TIMEOUT_MS,
        max_in_flight=merged.max_link_setups_in_flight or policy.MAX_LINK_SETUPS_IN_FLIGHT,
        recorded_pod_uids={i.name: i.pod_uid for i in previous.instances if i.pod_uid},
    )
    await _annotate(rt, namespace, name, want, planned)
    await unannotate(
        rt, namespace, name, world.pods, {i.member.pod.name for i in want.instances.values() if i.member.pod}
    )
    new, transitions = status.build(
        previous,
        generation,
        want,
        planned,
        outcomes,
        seen.unreachable,
        [p.name for p in ordered],
        cm_name,
        world.revisions,
    )
    await _write_status(rt, body, previous, new)
    _post_events(body, outcomes, transitions, seen.unreachable, previous, new)
    _observe_metrics(rt, meta, new)

    failed = any(not o.ok for o in outcomes) or bool(seen.unreachable)
    log.info(
        "reconciled %s/%s: phase %s, %d/%d links ready, %d calls (%d failed), %d unreachable",
        namespace,
        name,
        new.phase,
        new.ready_links,
        new.desired_links,
        len(outcomes),
        sum(not o.ok for o in outcomes),
        len(seen.unreachable),
    )
    return _next_delay(rt, uid, planned.converged, failed)


async def _act(
    rt: Runtime,
    want: desired.Desired,
    uid: str,
    reported: Mapping[str, Sequence[InstanceStatusReport]],
    endpoints: Mapping[str, agents.Endpoint],
    *,
    link_timeout_ms: int,
    max_in_flight: int,
    recorded_pod_uids: Mapping[str, str],
) -> tuple[diff.Plan, list[agents.Outcome]]:
    """Plan the agent calls and make them. When this pass initialised instances and every call
    succeeded, plan again from what the agents answered (each PUT returns the instance's status) and
    make the link calls that are now possible: a new CacheLink links in one pass and one status write,
    not two. Anything else the second plan wants is left to the next pass."""

    def plan(seen: Mapping[str, Sequence[InstanceStatusReport]], pod_uids: Mapping[str, str]) -> diff.Plan:
        return diff.plan(
            want,
            uid,
            seen,
            link_timeout_ms=link_timeout_ms,
            max_in_flight=max_in_flight,
            recorded_pod_uids=pod_uids,
        )

    planned = plan(reported, recorded_pod_uids)
    outcomes = await rt.agents.execute(planned.actions, endpoints, link_timeout_ms)
    started = {o.action.instance for o in outcomes if isinstance(o.action, diff.PutInstance)}
    if not started or not all(o.ok for o in outcomes):
        return planned, outcomes
    pods = {
        name: inst.member.pod.uid
        for name in started
        if (inst := want.instances.get(name)) and inst.member.pod
    }
    again = plan(_after(reported, outcomes), {**recorded_pod_uids, **pods})
    if not all(isinstance(a, diff.PutLink | diff.PutCommLink) for a in again.actions):
        return planned, outcomes
    outcomes += await rt.agents.execute(again.actions, endpoints, link_timeout_ms)
    return again, outcomes


def _after(
    reported: Mapping[str, Sequence[InstanceStatusReport]], outcomes: Iterable[agents.Outcome]
) -> dict[str, list[InstanceStatusReport]]:
    """What the agents report once these calls succeeded: the instances PUT answered with, without
    those deleted."""
    after = {node: list(found) for node, found in reported.items()}
    for outcome in outcomes:
        action = outcome.action
        if not outcome.ok or not isinstance(action, diff.PutInstance | diff.DeleteInstance):
            continue
        kept = [i for i in after.get(action.node, []) if i.name != action.instance]
        if isinstance(action, diff.PutInstance) and outcome.result and outcome.result.instance:
            kept.append(outcome.result.instance)
        after[action.node] = kept
    return after


def _next_delay(rt: Runtime, uid: str, converged: bool, failed: bool) -> float:
    if failed:
        rt.failures[uid] = rt.failures.get(uid, 0) + 1
        metrics.RECONCILES.labels("retry").inc()
    else:
        rt.failures.pop(uid, None)
        metrics.RECONCILES.labels("converged" if converged else "progress").inc()
    if converged and not failed:
        return rt.config.resync_interval_s
    return rt.retry_delay(uid)


async def _publish_rank_table(
    rt: Runtime, body: Mapping[str, Any], previous: CacheLinkStatus, want: desired.Desired
) -> str | None:
    """Write the rank-table ConfigMap when the complete table changed; returns its name (if any)."""
    meta = body["metadata"]
    cm_name = previous.rank_table.config_map_name if previous.rank_table else None
    table = want.rank_table
    if (
        table is not None
        and table.complete
        and (previous.rank_table is None or previous.rank_table.hash != table.hash)
    ):
        cm_name = rank_table_name(meta["name"])
        await rt.kube.apply_config_map(
            meta["namespace"], cm_name, {"rank_table.json": table.text, "hash": table.hash}, body
        )
    return cm_name


def _note_foreign_ports(claims: PortClaims, instances: Iterable[InstanceStatus]) -> None:
    """Remember the ports instances could not listen on because something else on the node holds them."""
    for inst in instances:
        if inst.port is not None and desired.port_in_use(inst.last_error, inst.port):
            claims.mark_foreign(inst.node, inst.port)


def _previous(rt: Runtime, uid: str, observed: Mapping[str, Any]) -> CacheLinkStatus:
    """The status to build on: the object's, unless it is still the one our last write replaced.

    The watch delivers our own status patch a little later; a reconcile kicked in between (a pod event)
    would otherwise start from the status before that write and report every transition twice.
    """
    written = rt.written.get(uid)
    if written is not None and dict(observed) == written[0]:
        return CacheLinkStatus.model_validate(written[1])
    return CacheLinkStatus.model_validate(dict(observed))


async def _write_status(
    rt: Runtime, body: Mapping[str, Any], previous: CacheLinkStatus, new: CacheLinkStatus
) -> bool:
    """Patch the status subresource if it changed; returns whether it did."""
    meta = body["metadata"]
    old_dump, new_dump = previous.dump(), new.dump()
    if new_dump == old_dump:
        return False
    try:
        await rt.kube.patch_status(meta["namespace"], meta["name"], status.merge_patch(new_dump, old_dump))
    except ApiException as error:
        if error.status == 409:
            raise StatusConflict(str(error.reason)) from error
        raise
    rt.written[str(meta["uid"])] = (dict(body.get("status") or {}), new_dump)
    return True


def failed(rt: Runtime, uid: str, error: Exception) -> float:
    """Record a reconcile that raised; returns the backoff before the next attempt."""
    log.warning("reconcile of CacheLink %s failed: %s: %s", uid, type(error).__name__, error)
    metrics.RECONCILE_ERRORS.labels(type(error).__name__).inc()
    rt.failures[uid] = rt.failures.get(uid, 0) + 1
    return rt.retry_delay(uid)


async def _reject(
    rt: Runtime,
    body: Mapping[str, Any],
    previous: CacheLinkStatus,
    generation: int | None,
    reason: str,
    message: str,
    violations: Iterable[policy.Violation] = (),
    cleared: bool = False,
) -> None:
    new = status.rejected(previous, generation, reason, message, list(violations), cleared)
    if await _write_status(rt, body, previous, new):
        events.warning(body, _REJECT_EVENTS.get(reason, events.REJECTED), message)
    metrics.RECONCILES.labels("rejected").inc()


_REJECT_EVENTS = {"PolicyViolation": events.POLICY_VIOLATION, "PodClaimed": events.POD_CLAIMED}


async def _give_way(
    rt: Runtime,
    body: Mapping[str, Any],
    previous: CacheLinkStatus,
    world: World,
    full: bool,
    claimed: Mapping[str, str],
) -> float:
    """Some selected pods belong to an earlier CacheLink: hold nothing (no instance, no annotation) and
    say so (``Rejected``, reason ``PodClaimed``); the daemon is kicked when the other one goes away."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    nodes = {i.node for i in previous.instances if i.node} | (set(world.endpoints) if full else set())
    seen = await rt.agents.observe(nodes, world.endpoints, uid)
    actions: list[diff.Action] = [
        diff.DeleteInstance(node, inst.name)
        for node, instances in sorted(seen.instances.items())
        for inst in instances
        if inst.owner == uid
    ]
    outcomes = await rt.agents.execute(actions, world.endpoints, policy.LINK_TIMEOUT_MS)
    released = all(o.ok for o in outcomes) and not (
        seen.unreachable.keys() & {i.node for i in previous.instances}
    )
    await unannotate(rt, namespace, name, world.pods, set(claimed))
    by_owner: dict[str, list[str]] = {}
    for pod, owner in sorted(claimed.items()):
        by_owner.setdefault(owner, []).append(pod)
    message = "; ".join(
        f"pod{'s' if len(pods) > 1 else ''} {', '.join(pods)} already claimed by CacheLink {owner}"
        f" (created earlier)"
        for owner, pods in sorted(by_owner.items())
    )
    await _reject(rt, body, previous, meta.get("generation"), "PodClaimed", message, cleared=released)
    if released:
        return rt.config.resync_interval_s
    rt.failures[uid] = rt.failures.get(uid, 0) + 1
    return rt.retry_delay(uid)


async def unannotate(
    rt: Runtime, namespace: str, name: str, pods: Iterable[desired.PodInfo], keep: set[str]
) -> None:
    """Remove our annotations from the pods that carry them for this CacheLink but are not in ``keep``."""
    for pod in pods:
        if (
            pod.namespace == namespace
            and pod.name not in keep
            and not pod.deleting
            and pod.annotations.get(ANNOTATIONS[0]) == name
        ):
            await rt.kube.annotate_pod(namespace, pod.name, dict.fromkeys(ANNOTATIONS))


async def _annotate(
    rt: Runtime, namespace: str, name: str, want: desired.Desired, planned: diff.Plan
) -> None:
    for inst in want.instances.values():
        pod = inst.member.pod
        if pod is None:
            continue
        have = planned.live.get(inst.name)
        socket = have.attach_socket if have is not None and have.attach_socket else rt.config.attach_socket
        wanted = dict(zip(ANNOTATIONS, (name, inst.name, str(inst.cluster_id), socket), strict=True))
        if any(pod.annotations.get(k) != v for k, v in wanted.items()):
            await rt.kube.annotate_pod(namespace, pod.name, dict(wanted))


def _post_events(
    body: Mapping[str, Any],
    outcomes: Iterable[agents.Outcome],
    transitions: Iterable[status.Transition],
    unreachable: Mapping[str, str],
    previous: CacheLinkStatus,
    new: CacheLinkStatus,
) -> None:
    initialized = []
    for outcome in outcomes:
        action = outcome.action
        if isinstance(action, diff.PutInstance):
            if outcome.ok:
                initialized.append(
                    f"{action.instance} (cluster id {action.spec.cluster_id}) on node {action.node}"
                )
            else:
                events.warning(body, events.INSTANCE_FAILED, f"instance {action.instance}: {outcome.error}")
        elif isinstance(action, diff.DeleteInstance) and outcome.ok:
            events.normal(body, events.INSTANCE_DELETED, f"instance {action.instance} on node {action.node}")
    if initialized:  # one Event per pass lists every instance it initialised (one API write, not N)
        noun = "instance" if len(initialized) == 1 else "instances"
        events.normal(body, events.INSTANCE_INITIALIZED, f"{noun} " + ", ".join(initialized))
    for t in transitions:
        text = f"link {t.prompt} -> {t.decode}: {t.old or 'new'} -> {t.new}" + (
            f" ({t.detail})" if t.detail else ""
        )
        (events.warning if t.new == "Broken" else events.normal)(body, events.LINK_TRANSITION, text)
    old_unreachable = {i.node for i in previous.instances if i.state == "Unreachable"}
    for node, why in sorted(unreachable.items()):
        if node not in old_unreachable:
            events.warning(body, events.AGENT_UNREACHABLE, f"node {node}: {why}")
    if new.phase == "Ready" and previous.phase != "Ready":
        events.normal(body, events.READY, f"{new.ready_links}/{new.desired_links} links ready")


def _observe_metrics(rt: Runtime, meta: Mapping[str, Any], new: CacheLinkStatus) -> None:
    uid = meta["uid"]
    if new.phase == "Ready" and uid not in rt.linked_once:
        rt.linked_once.add(uid)
        created = meta.get("creationTimestamp")
        if created:
            metrics.TIME_TO_LINKED.observe(max(0.0, timestamps.age_seconds(created)))
