"""Desired state vs what the agents report -> the agent calls that close the difference, in order.

Order: unlink what must go, delete instances that must go, (re)initialise instances, link. Only calls
whose effect is missing are planned, and every call is an idempotent PUT or DELETE, so replaying a plan
after a crash changes nothing twice. A link is planned only when both of its instances run with the
desired configuration; at most ``maxLinkSetupsInFlight`` setups per initiating instance are in flight.
A link is stale (unlinked, then linked again, counted as a relink) when it broke, when the peer's
incarnation differs from the one the link was made with, or when the peer now listens elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


def plan(
    desired: Desired,
    owner: str,
    reported: Mapping[str, Sequence[agent_models.InstanceStatus]],
    *,
    link_timeout_ms: int,
    max_in_flight: int,
    recorded_pod_uids: Mapping[str, str] | None = None,
) -> Plan:
    """The ordered agent calls that turn ``reported`` into ``desired``: unlinks first, then deletes, puts
    of instances, and links (see :class:`_Pass` for the steps)."""
    ours = _ours(reported, owner)
    step = _Pass(desired, link_timeout_ms, max_in_flight)
    deletes = _deletes(desired, ours)
    puts = step.put_instances(ours, owner, recorded_pod_uids or {})
    for link in desired.links:
        step.link(link)
    step.unlink_unwanted()
    step.result.live = step.live
    step.result.actions = _dedupe([*step.unlinks, *deletes, *puts, *step.links])
    return step.result


def _ours(
    reported: Mapping[str, Sequence[agent_models.InstanceStatus]], owner: str
) -> dict[str, tuple[str, agent_models.InstanceStatus]]:
    """``owner``'s instances as the agents report them: name -> (node, instance)."""
    return {
        inst.name: (node, inst)
        for node, instances in sorted(reported.items())
        for inst in instances
        if inst.owner == owner
    }


def _deletes(desired: Desired, ours: Mapping[str, tuple[str, agent_models.InstanceStatus]]) -> list[Action]:
    """Instances no longer desired, or desired on another node."""
    deletes: list[Action] = []
    for name, (node, _inst) in sorted(ours.items()):
        want = desired.instances.get(name)
        if want is None or want.node != node:
            deletes.append(DeleteInstance(node, name))
    return deletes


@dataclass
class _Pass:
    """One planning pass over the desired state: puts of instances (:meth:`put_instances`), then each
    desired link (:meth:`link`), then unlinks of what is no longer wanted (:meth:`unlink_unwanted`)."""

    desired: Desired
    link_timeout_ms: int
    max_in_flight: int
    result: Plan = field(default_factory=Plan)
    #: desired instances the agents run now (on the desired node)
    live: dict[str, agent_models.InstanceStatus] = field(default_factory=dict)
    #: instances put again in this pass: their links go with them
    replaced: set[str] = field(default_factory=set)
    unlinks: list[Action] = field(default_factory=list)
    links: list[Action] = field(default_factory=list)
    #: per initiator, the remote cluster ids / communication domains it should be linked to
    wanted_remote: dict[str, set[int]] = field(default_factory=dict)
    wanted_comm: dict[str, set[str]] = field(default_factory=dict)
    #: per instance, link setups in flight (reported, plus those planned in this pass)
    in_flight: dict[str, int] = field(default_factory=dict)

    def put_instances(
        self,
        ours: Mapping[str, tuple[str, agent_models.InstanceStatus]],
        owner: str,
        recorded_pod_uids: Mapping[str, str],
    ) -> list[Action]:
        """Puts of desired instances that are missing, failed or differ; records what is live."""
        puts: list[Action] = []
        for name, want in sorted(self.desired.instances.items()):
            if want.problem is not None:
                continue
            node, have = ours.get(name, (want.node, None))
            have = have if node == want.node else None
            if _needs_put(want, have, recorded_pod_uids.get(name)):
                spec = want.agent_spec(owner).model_copy(update={"replace": have is not None})
                puts.append(PutInstance(want.node, name, spec))
                self.replaced.add(name)
            if have is not None:
                self.live[name] = have
        for name, inst in self.live.items():
            self.in_flight[name] = sum(1 for link in inst.links if link.state in IN_FLIGHT_STATES)
            self.in_flight[name] += sum(1 for link in inst.comm_links if link.state in IN_FLIGHT_STATES)
        return puts

    def ready(self, name: str) -> bool:
        """Whether instance ``name`` runs as desired and can link (not being put again in this pass)."""
        want = self.desired.instances.get(name)
        return (
            want is not None
            and want.problem is None
            and _ready(want, self.live.get(name), name in self.replaced)
        )

    def _take_slot(self, name: str) -> bool:
        """Whether instance ``name`` may start one more link setup now (and count it if so)."""
        if self.in_flight.get(name, 0) >= self.max_in_flight:
            return False
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        return True

    def link(self, link: DesiredLink) -> None:
        """The view of one desired link, and the calls that link it (again)."""
        view = _view(self.desired, link, self.live)
        self.result.links[(link.prompt, link.decode)] = view
        if self.desired.rank_table is not None:
            self._comm_link(link)
        else:
            self._client_server_link(link)

    def _client_server_link(self, link: DesiredLink) -> None:
        """The initiator calls ``link_clusters`` to the target's listener."""
        desired = self.desired
        initiator, target = desired.instances[link.initiator], desired.instances[link.target]
        self.wanted_remote.setdefault(link.initiator, set()).add(target.cluster_id)
        if not (self.ready(link.initiator) and self.ready(link.target)):
            return
        have_init, have_target = self.live[link.initiator], self.live[link.target]
        existing = next((x for x in have_init.links if x.remote_cluster_id == target.cluster_id), None)
        stale = existing is not None and (
            existing.state in BROKEN_STATES
            or (
                existing.peer_incarnation not in (0, have_target.incarnation) and have_target.incarnation != 0
            )
            or existing.address != have_target.listen_address
        )
        if existing is not None and not stale:
            return
        if stale:
            self.unlinks.append(DeleteLink(initiator.node, initiator.name, target.cluster_id))
        if not self._take_slot(link.initiator):
            return
        link_spec = agent_models.LinkSpec(
            remote_address=have_target.listen_address,
            local_ip=initiator.address,
            timeout_ms=min(self.link_timeout_ms, agent_models.MAX_TIMEOUT_MS),
        )
        self.links.append(PutLink(initiator.node, initiator.name, target.cluster_id, link_spec, relink=stale))

    def _comm_link(self, link: DesiredLink) -> None:
        """Both members of a communication domain call ``link`` with the same rank table."""
        rank_table = self.desired.rank_table
        assert rank_table is not None
        assert link.comm_name is not None
        for name in (link.prompt, link.decode):
            self.wanted_comm.setdefault(name, set()).add(link.comm_name)
        if not rank_table.complete or not (self.ready(link.prompt) and self.ready(link.decode)):
            return
        spec = agent_models.CommLinkSpec(cluster_rank_info=dict(link.rank_info), rank_table=rank_table.text)
        for name in (link.prompt, link.decode):
            existing = next((x for x in self.live[name].comm_links if x.comm_name == link.comm_name), None)
            stale = existing is not None and existing.state == "FAILED"
            if existing is not None and not stale:
                continue
            inst = self.desired.instances[name]
            if stale:
                self.unlinks.append(DeleteCommLink(inst.node, name, link.comm_name))
            if not self._take_slot(name):
                continue
            self.links.append(PutCommLink(inst.node, name, link.comm_name, spec, relink=stale))

    def unlink_unwanted(self) -> None:
        """Unlinks of the live instances' links that no desired link wants (a replaced instance's go
        with it)."""
        for name, inst in sorted(self.live.items()):
            want = self.desired.instances[name]
            if name in self.replaced:
                continue
            for rl in inst.links:
                if rl.remote_cluster_id not in self.wanted_remote.get(name, set()):
                    self.unlinks.append(DeleteLink(want.node, name, rl.remote_cluster_id))
            for cl in inst.comm_links:
                if cl.comm_name not in self.wanted_comm.get(name, set()):
                    self.unlinks.append(DeleteCommLink(want.node, name, cl.comm_name))


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


def sweep(node: str, owners: Mapping[str, Iterable[str]], live_owners: Iterable[str]) -> list[DeleteInstance]:
    """The instances on ``node`` (``{owner UID: instance names}``) whose CacheLink no longer exists."""
    alive = set(live_owners)
    return [
        DeleteInstance(node, name)
        for owner, names in sorted(owners.items())
        if owner not in alive
        for name in sorted(names)
    ]
