"""The desired state of one CacheLink: its instances (where, which id, which port, which options) and links.

Pure functions of the spec, the effective options, the selected pods and what the agents report, so a
restarted operator computes the same state. Stability: cluster ids and ports already in use (reported by
an agent, else recorded in status) are kept; new cluster ids are derived from a hash of the CacheLink's
UID and the instance name (probing on collision), new ports are the lowest free port of the node, so
re-deriving after a crash before status was written lands on the same values. A port that something
else on the node holds (an instance's init failed with "Address already in use", recorded in status) is
skipped, so the instance moves to the next free port instead of failing forever.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachelink_agent import models as agent_models

from cachelink_operator import policy
from cachelink_operator.models import (
    CacheLinkSpec,
    ClusterIdRange,
    LinkStyle,
    Options,
    PortRange,
    Role,
    TopologyMode,
)
from llm_datadist.configs import LLMConfig

#: pod labels that name a pod's revision (Deployment/ReplicaSet, then StatefulSet/DaemonSet)
REVISION_LABELS = ("pod-template-hash", "controller-revision-hash")
#: agent role names of our roles
AGENT_ROLE: dict[Role, agent_models.Role] = {Role.PROMPT: "prompt", Role.DECODE: "decoder"}
RANK_TABLE_VERSION = "1.0"
ANNOTATION_PREFIX = "cachelink.io/"
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class PodInfo:
    """The part of a pod the operator needs (what the pod index stores)."""

    namespace: str
    name: str
    uid: str
    node: str | None
    labels: Mapping[str, str]
    created: str
    phase: str
    deleting: bool
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: the controller owner reference: (kind, uid)
    owner: tuple[str, str] | None = None

    @property
    def revision(self) -> str | None:
        """The pod's revision label, if its controller sets one."""
        for key in REVISION_LABELS:
            if key in self.labels:
                return self.labels[key]
        return None

    @property
    def placeable(self) -> bool:
        """Scheduled, not finished and not being deleted: it gets an instance."""
        return bool(self.node) and not self.deleting and self.phase in ("Pending", "Running")


def pod_info(body: Mapping[str, Any]) -> PodInfo:
    """Extract a ``PodInfo`` from a pod object."""
    meta = body.get("metadata", {})
    return PodInfo(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        node=body.get("spec", {}).get("nodeName") or None,
        labels=dict(meta.get("labels") or {}),
        created=meta.get("creationTimestamp") or "",
        phase=body.get("status", {}).get("phase") or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        annotations={
            k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(ANNOTATION_PREFIX)
        },
        owner=controller_of(meta),
    )


def controller_of(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(kind, uid)`` of an object's controller owner reference, if it has one."""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            return str(ref.get("kind", "")), str(ref.get("uid", ""))
    return None


@dataclass(frozen=True)
class ReplicaSetInfo:
    """What the ReplicaSet index stores: its revision within its Deployment and its pods' template hash."""

    uid: str
    deployment_uid: str | None
    revision: int
    template_hash: str | None


def replicaset_info(body: Mapping[str, Any]) -> ReplicaSetInfo:
    """Extract a ``ReplicaSetInfo`` from a ReplicaSet object."""
    meta = body.get("metadata", {})
    owner = controller_of(meta)
    revision = (meta.get("annotations") or {}).get("deployment.kubernetes.io/revision", "0")
    return ReplicaSetInfo(
        uid=str(meta.get("uid", "")),
        deployment_uid=owner[1] if owner is not None and owner[0] == "Deployment" else None,
        revision=int(revision) if str(revision).isdigit() else 0,
        template_hash=(meta.get("labels") or {}).get("pod-template-hash"),
    )


@dataclass(frozen=True)
class Revisions:
    """The controllers' current revisions: ReplicaSets (by uid) and StatefulSets' ``updateRevision``."""

    replicasets: Mapping[str, ReplicaSetInfo] = field(default_factory=dict)
    statefulsets: Mapping[str, str] = field(default_factory=dict)

    def newest(self, deployment_uid: str) -> ReplicaSetInfo | None:
        """The Deployment's newest ReplicaSet (highest revision): the one a rollout moves to."""
        owned = [r for r in self.replicasets.values() if r.deployment_uid == deployment_uid]
        return max(owned, key=lambda r: r.revision) if owned else None

    def is_current(self, pod: PodInfo) -> bool | None:
        """Whether the pod is of its controller's current revision; None when that is not known."""
        if pod.owner is None:
            return None
        kind, uid = pod.owner
        if kind == "ReplicaSet" and uid in self.replicasets:
            rs = self.replicasets[uid]
            if rs.deployment_uid is None:
                return True  # a bare ReplicaSet has one revision
            newest = self.newest(rs.deployment_uid)
            if newest is None or newest.template_hash is None:
                return None
            return pod.labels.get("pod-template-hash") == newest.template_hash
        if kind == "StatefulSet" and self.statefulsets.get(uid):
            return pod.labels.get("controller-revision-hash") == self.statefulsets[uid]
        return None


@dataclass(frozen=True)
class CacheLinkRef:
    """A CacheLink as its neighbours see it (the CacheLink index stores these): who claims which pods."""

    namespace: str
    name: str
    uid: str
    created: str
    spec: CacheLinkSpec | None

    @property
    def order(self) -> tuple[str, str]:
        """Earlier CacheLinks win a pod: by creationTimestamp, then name."""
        return self.created, self.name


def cachelink_ref(body: Mapping[str, Any]) -> CacheLinkRef:
    """Extract a ``CacheLinkRef`` from a CacheLink object (``spec`` None: it does not parse)."""
    meta = body.get("metadata", {})
    try:
        spec: CacheLinkSpec | None = CacheLinkSpec.model_validate(dict(body.get("spec") or {}))
    except ValueError:
        spec = None
    return CacheLinkRef(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        created=str(meta.get("creationTimestamp") or ""),
        spec=spec,
    )


def claims(
    me: CacheLinkRef, others: Iterable[CacheLinkRef], mine: Iterable[Member], pods: Iterable[PodInfo]
) -> dict[str, str]:
    """``{pod name: CacheLink name}``: the pods among ``mine`` that an earlier CacheLink selects.

    A pod is used by one CacheLink only (its annotations name one instance); the earliest CacheLink
    (creationTimestamp, then name) that selects it has it, whatever that one's own state, so the rule
    never depends on which reconcile runs first.
    """
    wanted = {m.pod.name for m in mine if m.pod is not None}
    if not wanted:
        return {}
    pods = list(pods)
    found: dict[str, str] = {}
    for other in sorted(others, key=lambda o: o.order):
        if other.uid == me.uid or other.spec is None or other.order >= me.order:
            continue
        for side in members(other.spec, me.namespace, pods).values():
            for member in side:
                if member.pod is not None and member.pod.name in wanted:
                    found.setdefault(member.pod.name, other.name)
    return found


def selects(spec: CacheLinkSpec, namespace: str, pod: PodInfo) -> bool:
    """Whether either side's pod selector matches ``pod`` (scheduled or not, live or going)."""
    if pod.namespace != namespace:
        return False
    for role in (Role.PROMPT, Role.DECODE):
        selector = spec.side(role).pod_selector
        if selector is not None and selector.matches(dict(pod.labels)):
            return True
    return False


def interested(pod: PodInfo, cachelinks: Iterable[CacheLinkRef]) -> list[str]:
    """UIDs of the CacheLinks a change of ``pod`` concerns: those selecting it, and the one its
    annotations name (it may have just stopped selecting it)."""
    holder = pod.annotations.get("cachelink.io/cachelink")
    return [
        ref.uid
        for ref in cachelinks
        if ref.name == holder or (ref.spec is not None and selects(ref.spec, ref.namespace, pod))
    ]


def contenders(
    changed: Sequence[CacheLinkRef], others: Iterable[CacheLinkRef], pods: Iterable[PodInfo]
) -> list[str]:
    """UIDs of the CacheLinks that select a pod that some version of a changed CacheLink selects (or
    selected): who holds such a pod may change. CacheLinks that share no pod with it are left alone."""
    contested = [
        pod
        for pod in pods
        if any(ref.spec is not None and selects(ref.spec, ref.namespace, pod) for ref in changed)
    ]
    if not contested:
        return []
    skip = {ref.uid for ref in changed}
    return [
        other.uid
        for other in others
        if other.uid not in skip
        and other.spec is not None
        and any(selects(other.spec, other.namespace, pod) for pod in contested)
    ]


@dataclass(frozen=True)
class Member:
    """One instance's placement: a pod (by name) or a node (by name)."""

    role: Role
    key: str
    node: str
    pod: PodInfo | None = None


def members(spec: CacheLinkSpec, namespace: str, pods: Iterable[PodInfo]) -> dict[Role, list[Member]]:
    """Each side's members, sorted by key: selected placeable pods, or the named nodes."""
    pods = list(pods)
    result: dict[Role, list[Member]] = {}
    for role in (Role.PROMPT, Role.DECODE):
        side = spec.side(role)
        if side.node_names is not None:
            found = [Member(role, node, node) for node in side.node_names]
        else:
            assert side.pod_selector is not None
            found = [
                Member(role, pod.name, pod.node or "", pod)
                for pod in pods
                if pod.namespace == namespace
                and pod.placeable
                and side.pod_selector.matches(dict(pod.labels))
            ]
        result[role] = sorted(found, key=lambda m: m.key)
    return result


def current_revision(side: Sequence[Member]) -> str | None:
    """The revision of the newest pod of a side (the one a rollout moves to)."""
    pods = [m.pod for m in side if m.pod is not None]
    if not pods:
        return None
    return max(pods, key=lambda p: (p.created, p.name)).revision


def instance_name(namespace: str, cachelink: str, role: Role, key: str) -> str:
    """A DNS-1123 label naming the instance on its agent: readable stem plus a hash of its identity."""
    digest = hashlib.sha256(f"{namespace}/{cachelink}/{role.value}/{key}".encode()).hexdigest()[:10]
    stem = _NOT_LABEL.sub("-", f"{cachelink}-{role.value[0]}-{key}".lower())
    stem = re.sub("-+", "-", stem)[: 63 - len(digest) - 1].strip("-")
    return f"{stem}-{digest}" if stem else f"i-{digest}"


def allocate_cluster_ids(
    names: Sequence[str], seed: str, id_range: ClusterIdRange, keep: Mapping[str, int]
) -> dict[str, int]:
    """A distinct cluster id per name: kept ones first, then hash-derived with linear probing."""
    span = id_range.max - id_range.min + 1
    if len(names) > span:
        raise ValueError(f"clusterIdRange holds {span} ids, {len(names)} instances need one each")
    taken: set[int] = set()
    result: dict[str, int] = {}
    for name in sorted(names):
        kept = keep.get(name)
        if kept is not None and id_range.min <= kept <= id_range.max and kept not in taken:
            result[name] = kept
            taken.add(kept)
    for name in sorted(set(names) - result.keys()):
        start = int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "big") % span
        probe = 0
        while (candidate := id_range.min + (start + probe) % span) in taken:
            probe += 1
        result[name] = candidate
        taken.add(candidate)
    return result


def allocate_ports(
    names: Sequence[str], port_range: PortRange, keep: Mapping[str, int], used_by_others: Iterable[int]
) -> dict[str, int | None]:
    """Ports of one node's listening instances: kept ones first, then the lowest free (None: range full)."""
    taken = set(used_by_others)
    result: dict[str, int | None] = {}
    for name in sorted(names):
        kept = keep.get(name)
        if kept is not None and port_range.min <= kept <= port_range.max and kept not in taken:
            result[name] = kept
            taken.add(kept)
    free = (p for p in range(port_range.min, port_range.max + 1) if p not in taken)
    for name in sorted(set(names) - result.keys()):
        result[name] = next(free, None)
    return result


def choose_address(
    node: agent_models.NodeInfo | None, default: str | None, interface: str | None, cidr: str | None
) -> tuple[str | None, str | None]:
    """``(address, problem)``: the listen/link address of an instance on a node, per interface/CIDR."""
    if interface is None and cidr is None:
        return (default, None) if default else (None, "the node's agent has no address yet")
    if node is None:
        return None, "the node's agent has not reported its addresses yet"
    candidates: list[str] = []
    for info in node.interfaces:
        if interface is None or info.name == interface:
            candidates.extend(info.addresses)
    if cidr is not None:
        network = ipaddress.ip_network(cidr, strict=False)
        candidates = [a for a in candidates if ipaddress.ip_address(a.split("/")[0]) in network]
    candidates = [a.split("/")[0] for a in candidates]
    if not candidates:
        wanted = " and ".join(
            x for x in (f"interface {interface}" if interface else "", f"CIDR {cidr}" if cidr else "") if x
        )
        return None, f"node {node.node_name} has no address on {wanted}"
    return sorted(candidates, key=lambda a: (ipaddress.ip_address(a).version, a))[0], None


def _set_pools(cfg: LLMConfig, options: Options) -> None:
    """The device and host pools' configuration (``llm.MemPoolConfig``, ``llm.HostMemPoolConfig``)."""
    page_shift = options.page_shift if options.page_shift is not None else 16
    if options.mem_pool_size_bytes:
        cfg.mem_pool_cfg = json.dumps({"memory_size": options.mem_pool_size_bytes, "page_shift": page_shift})
    if options.host_mem_pool_size_bytes:
        cfg.host_mem_pool_cfg = json.dumps(
            {"memory_size": options.host_mem_pool_size_bytes, "page_shift": page_shift}
        )


def engine_options(
    options: Options, *, listen: str | None, host_id: str, link_secret: str | None = None
) -> dict[str, str]:
    """The ``init`` options of one instance, exactly as ``LLMConfig.generate_options()`` writes them."""
    cfg = LLMConfig()
    if options.device_id is not None:
        cfg.device_id = options.device_id
    cfg.enable_cache_manager = True
    if options.sync_kv_timeout_ms is not None:
        cfg.sync_kv_timeout = options.sync_kv_timeout_ms
    _set_pools(cfg, options)
    if options.enable_remote_cache_accessible is not None:
        cfg.enable_remote_cache_accessible = options.enable_remote_cache_accessible
    if options.link_total_time_seconds is not None:
        cfg.link_total_time = options.link_total_time_seconds
    if options.link_retry_count is not None:
        cfg.link_retry_count = options.link_retry_count
    if options.mem_utilization is not None:
        cfg.mem_utilization = float(options.mem_utilization)
    if options.rdma_traffic_class is not None:
        cfg.rdma_traffic_class = options.rdma_traffic_class
    if options.rdma_service_level is not None:
        cfg.rdma_service_level = options.rdma_service_level
    if listen:
        cfg.listen_ip_info = listen
    generated = dict(cfg.generate_options())
    generated["cachelink.host_id"] = host_id
    if link_secret:
        generated["cachelink.link_secret"] = link_secret
    return generated


@dataclass(frozen=True)
class DesiredInstance:
    """One instance as it should exist on its node's agent."""

    name: str
    role: Role
    member: Member
    cluster_id: int
    address: str | None
    port: int | None
    listens: bool
    options: dict[str, str]
    problem: str | None = None
    #: (namespace, name) of the CacheLink: a pod's CSI volume naming it gets this instance's socket
    cachelink: tuple[str, str] = ("", "")

    @property
    def node(self) -> str:
        """The node whose agent hosts the instance."""
        return self.member.node

    @property
    def endpoint(self) -> str | None:
        """``ip:port`` it listens on, when it listens and both are known."""
        return f"{self.address}:{self.port}" if self.listens and self.address and self.port else None

    def agent_spec(self, owner: str) -> agent_models.InstanceSpec:
        """The body of ``PUT /v1/instances/{name}``."""
        pod_uids = [self.member.pod.uid] if self.member.pod is not None and self.member.pod.uid else []
        return agent_models.InstanceSpec(
            role=AGENT_ROLE[self.role],
            cluster_id=self.cluster_id,
            owner=owner,
            options=self.options,
            attach=agent_models.AttachPolicy(
                pod_uids=pod_uids, namespace=self.cachelink[0], cachelink=self.cachelink[1]
            ),
        )


@dataclass(frozen=True)
class DesiredLink:
    """One prompt x decode link; ``initiator`` calls it, ``target`` listens (ClientServer)."""

    prompt: str
    decode: str
    initiator: str
    target: str
    comm_name: str | None = None
    rank_info: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class RankTable:
    """The communication-domain rank table of a CacheLink, its content hash and the rank of each instance."""

    text: str
    hash: str
    ranks: Mapping[str, int]
    complete: bool


@dataclass
class Desired:
    """Everything a CacheLink should have."""

    instances: dict[str, DesiredInstance] = field(default_factory=dict)
    links: list[DesiredLink] = field(default_factory=list)
    rank_table: RankTable | None = None
    usage: policy.Usage | None = None


@dataclass(frozen=True)
class Inputs:
    """What ``compute`` needs besides the spec."""

    namespace: str
    name: str
    uid: str
    members: Mapping[Role, Sequence[Member]]
    options: Mapping[Role, Options]
    link_options: Options
    port_range: PortRange
    agent_addresses: Mapping[str, str]
    nodes: Mapping[str, agent_models.NodeInfo]
    reported: Mapping[str, Sequence[agent_models.InstanceStatus]]
    recorded_ids: Mapping[str, int]
    recorded_ports: Mapping[str, int]
    link_secret: str | None = None
    #: per node, ports held by something other than this operator's instances (see :func:`port_in_use`)
    busy_ports: Mapping[str, Iterable[int]] = field(default_factory=dict)


_ADDRESS_IN_USE = re.compile(r"cannot listen on \S*?:(\d+): Address already in use")


def port_in_use(error: str | None, port: int | None) -> bool:
    """Whether an instance's last error says that ``port`` was held by something else on its node."""
    match = _ADDRESS_IN_USE.search(error or "")
    return match is not None and port is not None and int(match.group(1)) == port


def _port_of(address: str) -> int | None:
    host, _, port = address.rpartition(":")
    return int(port) if host and port.isdigit() else None


def pairs(spec: CacheLinkSpec, sides: Mapping[Role, Sequence[Member]]) -> list[tuple[Member, Member]]:
    """The prompt x decode pairs of the topology among the present members."""
    prompts = {m.key: m for m in sides[Role.PROMPT]}
    decodes = {m.key: m for m in sides[Role.DECODE]}
    if spec.topology.mode is TopologyMode.ALL_TO_ALL:
        return [(p, d) for p in prompts.values() for d in decodes.values()]
    return [
        (prompts[pair.prompt], decodes[pair.decode])
        for pair in spec.topology.pairs
        if pair.prompt in prompts and pair.decode in decodes
    ]


def rank_table(instances: Iterable[DesiredInstance]) -> RankTable:
    """Deterministic rank table: ranks by cluster id, servers by node; same instances -> same hash."""
    ordered = sorted(instances, key=lambda i: i.cluster_id)
    ranks = {inst.name: rank for rank, inst in enumerate(ordered)}
    servers: dict[str, list[dict[str, str]]] = {}
    hosts: dict[str, str] = {}
    for inst in ordered:
        servers.setdefault(inst.node, []).append(
            {
                "device_id": str(inst.options.get("ge.exec.deviceId", "0")),
                "device_ip": inst.address or "",
                "device_port": str(inst.port or 0),
                "rank_id": str(ranks[inst.name]),
            }
        )
        hosts.setdefault(inst.node, inst.address or "")
    table = {
        "version": RANK_TABLE_VERSION,
        "status": "completed",
        "server_count": str(len(servers)),
        "server_list": [
            {"server_id": node, "host_ip": hosts[node], "device": servers[node]} for node in sorted(servers)
        ],
    }
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    complete = all(inst.address and inst.port for inst in ordered)
    return RankTable(text, hashlib.sha256(text.encode()).hexdigest()[:16], ranks, complete)


def compute(spec: CacheLinkSpec, inputs: Inputs) -> Desired:
    """The desired instances, links, rank table and usage of a CacheLink."""
    style = inputs.link_options.link_style or LinkStyle.CLIENT_SERVER
    initiator_role = inputs.link_options.link_initiator or Role.DECODE
    names: dict[str, Member] = {
        instance_name(inputs.namespace, inputs.name, m.role, m.key): m
        for role in (Role.PROMPT, Role.DECODE)
        for m in inputs.members[role]
    }
    reported = {i.name: i for node in inputs.reported.values() for i in node if i.owner == inputs.uid}
    keep_ids = {**inputs.recorded_ids, **{n: r.cluster_id for n, r in reported.items()}}
    ids = allocate_cluster_ids(
        list(names),
        inputs.uid,
        inputs.link_options.cluster_id_range or ClusterIdRange(min=1, max=2**53 - 1),
        keep_ids,
    )

    def listens(member: Member) -> bool:
        return style is LinkStyle.COMM_DOMAIN or member.role is not initiator_role

    ports: dict[str, int | None] = {}
    by_node: dict[str, list[str]] = {}
    for name, member in names.items():
        if listens(member):
            by_node.setdefault(member.node, []).append(name)
    for node, node_names in by_node.items():
        keep_ports = dict(inputs.recorded_ports)
        for inst in inputs.reported.get(node, ()):
            if inst.name in names and (port := _port_of(inst.listen_address)) is not None:
                keep_ports[inst.name] = port
        # a port another CacheLink's instance holds, or one of ours that is going away
        info = inputs.nodes.get(node)
        others = [
            held.port
            for held in (info.listen_ports if info is not None else ())
            if held.owner != inputs.uid or held.instance not in names
        ]
        others += inputs.busy_ports.get(node, ())
        ports.update(allocate_ports(node_names, inputs.port_range, keep_ports, others))

    desired = Desired()
    for name, member in sorted(names.items()):
        opts = inputs.options[member.role]
        address, problem = choose_address(
            inputs.nodes.get(member.node),
            inputs.agent_addresses.get(member.node),
            opts.listen_interface,
            opts.listen_cidr,
        )
        port = ports.get(name)
        if listens(member) and port is None and problem is None:
            problem = f"no free port in {inputs.port_range.min}-{inputs.port_range.max} on node {member.node}"
        listen = (
            f"{address}:{port}"
            if style is LinkStyle.CLIENT_SERVER and listens(member) and address and port
            else None
        )
        desired.instances[name] = DesiredInstance(
            name=name,
            role=member.role,
            member=member,
            cluster_id=ids[name],
            address=address,
            port=port,
            listens=listens(member),
            options=engine_options(
                opts,
                listen=listen,
                host_id=member.node,
                link_secret=inputs.link_secret,
            ),
            problem=problem,
            cachelink=(inputs.namespace, inputs.name),
        )
    by_member = {(m.role, m.key): n for n, m in names.items()}
    if style is LinkStyle.COMM_DOMAIN:
        desired.rank_table = rank_table(desired.instances.values())
    for prompt, decode in pairs(spec, inputs.members):
        p_name, d_name = by_member[(Role.PROMPT, prompt.key)], by_member[(Role.DECODE, decode.key)]
        initiator, target = (p_name, d_name) if initiator_role is Role.PROMPT else (d_name, p_name)
        if desired.rank_table is None:
            desired.links.append(DesiredLink(p_name, d_name, initiator, target))
            continue
        p_id, d_id = ids[p_name], ids[d_name]
        ranked = sorted(
            ((p_id, desired.rank_table.ranks[p_name]), (d_id, desired.rank_table.ranks[d_name])),
            key=lambda item: item[1],
        )
        comm_name = f"cl-{inputs.uid[:8]}-{p_id}-{d_id}"
        desired.links.append(DesiredLink(p_name, d_name, initiator, target, comm_name, tuple(ranked)))
    desired.usage = usage(desired)
    return desired


def usage(desired: Desired) -> policy.Usage:
    """What the desired state would use, for the policy limits."""
    per_instance: dict[str, int] = {}
    per_node: dict[str, int] = {}
    for inst in desired.instances.values():
        size = 0
        for key in ("llm.MemPoolConfig", "llm.HostMemPoolConfig"):
            if key in inst.options:
                size += int(json.loads(inst.options[key])["memory_size"])
        per_instance[inst.name] = size
        per_node[inst.node] = per_node.get(inst.node, 0) + size
    links_per: dict[str, int] = {}
    for link in desired.links:
        for name in (link.prompt, link.decode):
            links_per[name] = links_per.get(name, 0) + 1
    return policy.Usage(
        pool_bytes_per_instance=per_instance,
        pool_bytes_per_node=per_node,
        links=len(desired.links),
        links_per_instance=links_per,
        roles=frozenset(i.role for i in desired.instances.values()),
    )
