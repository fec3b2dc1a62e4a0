"""Desired state vs what the agents report -> the agent calls that close the difference, in order.

Order: unlink what must go, delete instances that must go, (re)initialise instances, link. Only calls
whose effect is missing are planned, and every call is an idempotent PUT or DELETE, so replaying a plan
after a crash changes nothing twice. A link is planned only when both of its instances run with the
desired configuration; at most ``maxLinkSetupsInFlight`` setups per initiating instance are in flight.
A link is stale (unlinked, then linked again, counted as a relink) when it broke, when the peer's
incarnation differs from the one the link was made with, or when the peer now listens elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cachelink_agent import models as agent_models

from cachelink_operator.desired import AGENT_ROLE, Desired, DesiredInstance, DesiredLink
from cachelink_operator.models import LinkState

IN_FLIGHT_STATES = frozenset({"pending", "preparing", "PREPARING"})
BROKEN_STATES = frozenset({"broken", "failed", "FAILED"})


@dataclass(frozen=True)
class Action:
    """One agent call on ``node``'s agent, about ``instance``."""

    node: str
    instance: str


@dataclass(frozen=True)
class DeleteLink(Action):
    """``DELETE /v1/instances/{instance}/links/{remote_cluster_id}``."""

    remote_cluster_id: int


@dataclass(frozen=True)
class DeleteCommLink(Action):
    """``DELETE /v1/instances/{instance}/comm-links/{comm_name}``."""

    comm_name: str


@dataclass(frozen=True)
class DeleteInstance(Action):
    """``DELETE /v1/instances/{instance}`` (finalize: the agent unlinks it first)."""


@dataclass(frozen=True)
class PutInstance(Action):
    """``PUT /v1/instances/{instance}``."""

    spec: agent_models.InstanceSpec


@dataclass(frozen=True)
class PutLink(Action):
    """``PUT /v1/instances/{instance}/links/{remote_cluster_id}``."""

    remote_cluster_id: int
    spec: agent_models.LinkSpec
    relink: bool = False


@dataclass(frozen=True)
class PutCommLink(Action):
    """``PUT /v1/instances/{instance}/comm-links/{comm_name}``."""

    comm_name: str
    spec: agent_models.CommLinkSpec
    relink: bool = False


@dataclass(frozen=True)
class LinkView:
    """What the agents say about one desired link, for status."""

    state: LinkState  # Pending | Linking | Linked | Broken
    data_path: str | None = None
    address: str | None = None
    last_status_code: str | None = None
    last_error: str | None = None
    prompt_incarnation: int | None = None
    decode_incarnation: int | None = None


@dataclass
class Plan:
    """The calls to make, and the observed view of each desired link."""

    actions: list[Action] = field(default_factory=list)
    links: dict[tuple[str, str], LinkView] = field(default_factory=dict)
    live: dict[str, agent_models.InstanceStatus] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        """Nothing to do and every link linked."""
        return not self.actions and all(v.state == "Linked" for v in self.links.values())


def _needs_put(
    want: DesiredInstance, have: agent_models.InstanceStatus | None, recorded_pod_uid: str | None
) -> bool:
    if have is None or have.state == "failed":
        return True
    if (
        have.cluster_id != want.cluster_id
        or have.role != AGENT_ROLE[want.role]
        or have.options_sha256 != agent_models.options_digest(want.options)
    ):
        return True
    pod = want.member.pod
    return pod is not None and recorded_pod_uid is not None and recorded_pod_uid != pod.uid


def _ready(want: DesiredInstance, have: agent_models.InstanceStatus | None, stale: bool) -> bool:
    return (
        have is not None
        and not stale
        and have.state == "running"
        and (not want.listens or bool(have.listen_address))
    )


def plan(  # noqa: PLR0915 - one pass over instances then links; split next session
    desired: Desired,
    owner: str,
    reported: Mapping[str, Sequence[agent_models.InstanceStatus]],
    *,
    link_timeout_ms: int,
    max_in_flight: int,
    recorded_pod_uids: Mapping[str, str] | None = None,
) -> Plan:
    """The ordered agent calls that turn ``reported`` into ``desired``."""
    recorded_pod_uids = recorded_pod_uids or {}
    result = Plan()
    ours: dict[str, tuple[str, agent_models.InstanceStatus]] = {}
    for node, instances in sorted(reported.items()):
        for inst in instances:
            if inst.owner == owner:
                ours[inst.name] = (node, inst)
    unlinks: list[Action] = []
    deletes: list[Action] = []
    puts: list[Action] = []
    links: list[Action] = []

    for name, (node, _inst) in sorted(ours.items()):
        want = desired.instances.get(name)
        if want is None or want.node != node:
            deletes.append(DeleteInstance(node, name))

    live: dict[str, agent_models.InstanceStatus] = {}
    replaced: set[str] = set()
    for name, want in sorted(desired.instances.items()):
        if want.problem is not None:
            continue
        node, have = ours.get(name, (want.node, None))
        have = have if node == want.node else None
        if _needs_put(want, have, recorded_pod_uids.get(name)):
            spec = want.agent_spec(owner).model_copy(update={"replace": have is not None})
            puts.append(PutInstance(want.node, name, spec))
            replaced.add(name)
        if have is not None:
            live[name] = have

    def ready(name: str) -> bool:
        want = desired.instances.get(name)
        return want is not None and want.problem is None and _ready(want, live.get(name), name in replaced)

    comm = desired.rank_table is not None
    wanted_remote: dict[str, set[int]] = {}
    wanted_comm: dict[str, set[str]] = {}
    in_flight: dict[str, int] = {}
    for name, inst in live.items():
        in_flight[name] = sum(1 for link in inst.links if link.state in IN_FLIGHT_STATES)
        in_flight[name] += sum(1 for link in inst.comm_links if link.state in IN_FLIGHT_STATES)

    for link in desired.links:
        key = (link.prompt, link.decode)
        view = _view(desired, link, live)
        if comm:
            _plan_comm(
                desired,
                link,
                live,
                ready,
                wanted_comm,
                unlinks,
                links,
                result,
                view,
                in_flight,
                max_in_flight,
            )
            continue
        initiator, target = desired.instances[link.initiator], desired.instances[link.target]
        wanted_remote.setdefault(link.initiator, set()).add(target.cluster_id)
        result.links[key] = view
        if not (ready(link.initiator) and ready(link.target)):
            continue
        have_init, have_target = live[link.initiator], live[link.target]
        existing = next((x for x in have_init.links if x.remote_cluster_id == target.cluster_id), None)
        stale = existing is not None and (
            existing.state in BROKEN_STATES
            or (
                existing.peer_incarnation not in (0, have_target.incarnation) and have_target.incarnation != 0
            )
            or existing.address != have_target.listen_address
        )
        if existing is not None and not stale:
            continue
        if stale:
            unlinks.append(DeleteLink(initiator.node, initiator.name, target.cluster_id))
        if in_flight.get(link.initiator, 0) >= max_in_flight:
            continue
        in_flight[link.initiator] = in_flight.get(link.initiator, 0) + 1
        link_spec = agent_models.LinkSpec(
            remote_address=have_target.listen_address,
            local_ip=initiator.address,
            timeout_ms=min(link_timeout_ms, agent_models.MAX_TIMEOUT_MS),
        )
        links.append(PutLink(initiator.node, initiator.name, target.cluster_id, link_spec, relink=stale))

    for name, inst in sorted(live.items()):
        want = desired.instances[name]
        if name in replaced:
            continue
        for rl in inst.links:
            if rl.remote_cluster_id not in wanted_remote.get(name, set()):
                unlinks.append(DeleteLink(want.node, name, rl.remote_cluster_id))
        for cl in inst.comm_links:
            if cl.comm_name not in wanted_comm.get(name, set()):
                unlinks.append(DeleteCommLink(want.node, name, cl.comm_name))

    result.live = live
    result.actions = _dedupe([*unlinks, *deletes, *puts, *links])
    return result


def _dedupe(actions: Iterable[Action]) -> list[Action]:
    seen: set[Action] = set()
    out: list[Action] = []
    for action in actions:
        key = action if not isinstance(action, PutInstance | PutLink | PutCommLink) else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out.append(action)
    return out


#: an agent's link and comm-link states -> the link's state in the CacheLink's status (others: Linking)
_LINK_STATES: dict[str, LinkState] = {"linked": "Linked", "broken": "Broken", "failed": "Broken"}
_COMM_LINK_STATES: dict[str, LinkState] = {"OK": "Linked", "FAILED": "Broken"}


def _view(desired: Desired, link: DesiredLink, live: Mapping[str, agent_models.InstanceStatus]) -> LinkView:
    p, d = live.get(link.prompt), live.get(link.decode)
    p_inc, d_inc = (p.incarnation if p else None), (d.incarnation if d else None)
    init = live.get(link.initiator)
    if init is None:
        return LinkView("Pending", prompt_incarnation=p_inc, decode_incarnation=d_inc)
    if link.comm_name is not None:
        cl = next((x for x in init.comm_links if x.comm_name == link.comm_name), None)
        if cl is None:
            return LinkView("Pending", prompt_incarnation=p_inc, decode_incarnation=d_inc)
        state = _COMM_LINK_STATES.get(cl.state, "Linking")
        return LinkView(state, "tcp", None, cl.last_status or None, cl.last_error or None, p_inc, d_inc)
    target_id = desired.instances[link.target].cluster_id
    rl = next((x for x in init.links if x.remote_cluster_id == target_id), None)
    if rl is None:
        return LinkView("Pending", prompt_incarnation=p_inc, decode_incarnation=d_inc)
    state = _LINK_STATES.get(rl.state, "Linking")
    return LinkView(
        state,
        rl.data_path or None,
        rl.address or None,
        rl.last_status or None,
        rl.last_error or None,
        p_inc,
        d_inc,
    )


def _plan_comm(
    desired: Desired,
    link: DesiredLink,
    live: Mapping[str, agent_models.InstanceStatus],
    ready: Callable[[str], bool],
    wanted_comm: dict[str, set[str]],
    unlinks: list[Action],
    links: list[Action],
    result: Plan,
    view: LinkView,
    in_flight: dict[str, int],
    max_in_flight: int,
) -> None:
    """Both members of a communication domain call ``link`` with the same rank table."""
    assert desired.rank_table is not None
    assert link.comm_name is not None
    result.links[(link.prompt, link.decode)] = view
    for name in (link.prompt, link.decode):
        wanted_comm.setdefault(name, set()).add(link.comm_name)
    if not desired.rank_table.complete or not (ready(link.prompt) and ready(link.decode)):
        return
    spec = agent_models.CommLinkSpec(
        cluster_rank_info=dict(link.rank_info), rank_table=desired.rank_table.text
    )
    for name in (link.prompt, link.decode):
        existing = next((x for x in live[name].comm_links if x.comm_name == link.comm_name), None)
        stale = existing is not None and existing.state == "FAILED"
        if existing is not None and not stale:
            continue
        inst = desired.instances[name]
        if stale:
            unlinks.append(DeleteCommLink(inst.node, name, link.comm_name))
        if in_flight.get(name, 0) >= max_in_flight:
            continue
        in_flight[name] = in_flight.get(name, 0) + 1
        links.append(PutCommLink(inst.node, name, link.comm_name, spec, relink=stale))


def sweep(node: str, owners: Mapping[str, Iterable[str]], live_owners: Iterable[str]) -> list[DeleteInstance]:
    """The instances on ``node`` (``{owner UID: instance names}``) whose CacheLink no longer exists."""
    alive = set(live_owners)
    return [
        DeleteInstance(node, name)
        for owner, names in sorted(owners.items())
        if owner not in alive
        for name in sorted(names)
    ]
