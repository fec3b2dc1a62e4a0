"""Builders shared by the operator unit tests."""

from __future__ import annotations

import uuid

from cachelink_agent import models as agent_models
from cachelink_operator import desired, policy
from cachelink_operator.models import CacheLinkSpec, PortRange, Role

UID = "0b6f0d8e-9c1e-4d8a-8a55-2f1f3b0c0001"


def pod_uid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name))


def pod(
    name: str,
    node: str,
    labels: dict[str, str] | None = None,
    *,
    uid: str | None = None,
    created: str = "2025-01-01T00:00:00Z",
    phase: str = "Running",
) -> desired.PodInfo:
    return desired.PodInfo("ns", name, uid or pod_uid(name), node, labels or {}, created, phase, False)


def spec(**extra: object) -> CacheLinkSpec:
    body: dict[str, object] = {
        "prompt": {"podSelector": {"matchLabels": {"app": "p"}}},
        "decode": {"podSelector": {"matchLabels": {"app": "d"}}},
    }
    body.update(extra)
    return CacheLinkSpec.model_validate(body)


def node_info(
    node: str, *interfaces: tuple[str, list[str]], held: tuple[agent_models.ListenPort, ...] = ()
) -> agent_models.NodeInfo:
    return agent_models.NodeInfo(
        node_name=node,
        mode="in-process",
        interfaces=[agent_models.InterfaceInfo(name=n, addresses=a, up=True) for n, a in interfaces],
        candidate_addresses=[a for _, addrs in interfaces for a in addrs],
        shm_path="/dev/shm",
        shm_capacity_bytes=1 << 30,
        shm_free_bytes=1 << 30,
        pool_budget_bytes=1 << 30,
        pool_reserved_bytes=0,
        instances=len(held),
        listen_ports=list(held),
        version="test",
    )


def compute(
    s: CacheLinkSpec,
    pods: list[desired.PodInfo],
    *,
    reported=None,
    nodes=None,
    recorded_ids=None,
    recorded_ports=None,
    policies=(),
    busy_ports=None,
) -> desired.Desired:
    merged = policy.effective_options(s, list(policies))
    sides = {role: policy.side_options(s, role, merged) for role in (Role.PROMPT, Role.DECODE)}
    inputs = desired.Inputs(
        namespace="ns",
        name="cl",
        uid=UID,
        members=desired.members(s, "ns", pods),
        options=sides,
        link_options=merged,
        port_range=policy.port_range(list(policies)) or PortRange(min=1, max=2),
        agent_addresses={"node-a": "127.0.0.2", "node-b": "127.0.0.3", "node-c": "127.0.0.4"},
        nodes=nodes or {},
        reported=reported or {},
        recorded_ids=recorded_ids or {},
        recorded_ports=recorded_ports or {},
        busy_ports=busy_ports or {},
    )
    return desired.compute(s, inputs)


def running(
    inst: desired.DesiredInstance,
    *,
    owner: str = UID,
    incarnation: int = 7,
    links: list[agent_models.LinkStatus] | None = None,
) -> agent_models.InstanceStatus:
    """What an agent reports for an instance it runs exactly as desired."""
    return agent_models.InstanceStatus(
        name=inst.name,
        role=desired.AGENT_ROLE[inst.role],
        cluster_id=inst.cluster_id,
        owner=owner,
        mode="in-process",
        state="running",
        incarnation=incarnation,
        listen_address=inst.endpoint or "",
        options=agent_models.redact_options(inst.options),
        options_sha256=agent_models.options_digest(inst.options),
        links=links or [],
    )
