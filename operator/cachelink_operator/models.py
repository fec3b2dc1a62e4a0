"""Pydantic models of the custom resources (``cachelink.io/v1alpha1``) and of what agents report.

Field names are the CRD's camelCase names (aliases); Python uses snake_case. Every option is optional in
the models because CacheLinkPolicy defaults fill the gaps; ``defaults.BUILTIN`` holds the documented
defaults applied last. The CRD schema (``crds/``) is the first line of validation; these models are the
second, for objects written before a schema change or by clients that skip validation.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

#: largest cluster id that JSON (IEEE doubles) keeps exact
MAX_CLUSTER_ID = 2**53 - 1
GROUP = "cachelink.io"
VERSION = "v1alpha1"
#: how many violating CacheLinks a policy's status names
MAX_LISTED_VIOLATIONS = 20

# Bounds and enums below are the CRDs' (crds/); tests/operator_unit/test_crd_schemas.py compares them.
#: a node name (DNS subdomain)
NodeName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
#: a pod or node name in an explicit pair
MemberName = Annotated[str, Field(min_length=1, max_length=253)]
#: a network interface name (Linux: at most 15 characters)
InterfaceName = Annotated[str, Field(min_length=1, max_length=15, pattern=r"^[A-Za-z0-9_.:-]+$")]
#: a label value
LabelValue = Annotated[str, Field(max_length=63)]
#: ``status.phase`` of a CacheLink
Phase = Literal["Pending", "Rejected", "Initializing", "Linking", "Ready", "Degraded", "Terminating"]
#: ``state`` of an instance in a CacheLink's status
InstanceState = Literal["Pending", "Initialized", "Failed", "Unreachable", "Finalizing"]
#: ``state`` of a link in a CacheLink's status
LinkState = Literal["Pending", "Linking", "Linked", "Broken", "Unlinking"]
#: ``status`` of a condition
ConditionStatus = Literal["True", "False", "Unknown"]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    def dump(self) -> dict[str, Any]:
        """The model as the API server stores it: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Role(StrEnum):
    """Side of a link."""

    PROMPT = "Prompt"
    DECODE = "Decode"


class LinkStyle(StrEnum):
    """``ClientServer`` = ``link_clusters`` to a listener; ``CommDomain`` = ``link`` over a rank table."""

    CLIENT_SERVER = "ClientServer"
    COMM_DOMAIN = "CommDomain"


class TopologyMode(StrEnum):
    """All prompt x all decode, or an explicit pair list."""

    ALL_TO_ALL = "AllToAll"
    PAIRS = "Pairs"


class LabelSelectorRequirement(_Model):
    """One ``matchExpressions`` entry."""

    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[LabelValue, ...] = Field(default=(), max_length=64)


class LabelSelector(_Model):
    """A Kubernetes label selector."""

    match_labels: dict[str, LabelValue] = Field(default_factory=dict, max_length=32)
    match_expressions: tuple[LabelSelectorRequirement, ...] = Field(default=(), max_length=16)

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether ``labels`` satisfy the selector (an empty selector matches everything)."""
        if any(labels.get(key) != value for key, value in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class ClusterIdRange(_Model):
    """Inclusive range of allocatable cluster ids."""

    min: int = Field(ge=1, le=MAX_CLUSTER_ID)
    max: int = Field(ge=1, le=MAX_CLUSTER_ID)

    @model_validator(mode="after")
    def _ordered(self) -> ClusterIdRange:
        if self.min > self.max:
            raise ValueError("clusterIdRange.min must not exceed max")
        return self


class PortRange(_Model):
    """Inclusive range of ports."""

    min: int = Field(ge=1, le=65535)
    max: int = Field(ge=1, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.min > self.max:
            raise ValueError("listenPortRange.min must not exceed max")
        return self


class InstanceOptions(_Model):
    """Per-instance options (a side's ``options``); units are in the names."""

    device_id: int | None = Field(default=None, ge=0, le=2**31 - 1)
    mem_pool_size_bytes: int | None = Field(default=None, ge=1024, le=2**40)
    host_mem_pool_size_bytes: int | None = Field(default=None, ge=1024, le=20 * 2**30)
    page_shift: int | None = Field(default=None, ge=10, le=30)
    sync_kv_timeout_ms: int | None = Field(default=None, ge=1, le=2**31 - 1)
    link_total_time_seconds: int | None = Field(default=None, ge=0, le=2**32 - 1)
    link_retry_count: int | None = Field(default=None, ge=1, le=100)
    enable_remote_cache_accessible: bool | None = None
    mem_utilization: float | None = Field(default=None, ge=0.0, le=1.0)
    rdma_traffic_class: int | None = Field(default=None, ge=0, le=252, multiple_of=4)
    rdma_service_level: int | None = Field(default=None, ge=0, le=7)
    listen_interface: InterfaceName | None = None
    listen_cidr: str | None = Field(default=None, max_length=64)


class Options(InstanceOptions):
    """Options of a whole CacheLink (``spec.options``) and of a policy's ``defaults``."""

    link_style: LinkStyle | None = None
    link_initiator: Role | None = None
    link_timeout_ms: int | None = Field(default=None, ge=1, le=2**31 - 1)
    max_clusters_per_link_call: int | None = Field(default=None, ge=1, le=16)
    max_link_setups_in_flight: int | None = Field(default=None, ge=1, le=64)
    link_authentication: bool | None = None
    finalize_timeout_seconds: int | None = Field(default=None, ge=1, le=86400)
    cluster_id_range: ClusterIdRange | None = None


class Side(_Model):
    """Where one side's instances live, and its option overrides."""

    pod_selector: LabelSelector | None = None
    node_names: Annotated[tuple[NodeName, ...], Field(min_length=1, max_length=512)] | None = None
    options: InstanceOptions = InstanceOptions()

    @model_validator(mode="after")
    def _one_placement(self) -> Side:
        if (self.pod_selector is None) == (self.node_names is None):
            raise ValueError("set exactly one of podSelector and nodeNames")
        if self.pod_selector is not None and not (
            self.pod_selector.match_labels or self.pod_selector.match_expressions
        ):
            raise ValueError("podSelector must not be empty")
        return self


class Pair(_Model):
    """One explicit link, by member name (pod name or node name)."""

    prompt: MemberName
    decode: MemberName


class Topology(_Model):
    """Which prompt x decode pairs link."""

    mode: TopologyMode = TopologyMode.ALL_TO_ALL
    pairs: tuple[Pair, ...] = Field(default=(), max_length=4096)

    @model_validator(mode="after")
    def _pairs_iff_mode(self) -> Topology:
        if (self.mode is TopologyMode.PAIRS) != bool(self.pairs):
            raise ValueError("mode Pairs needs pairs; AllToAll takes none")
        return self


class CacheLinkSpec(_Model):
    """``CacheLink.spec``."""

    prompt: Side
    decode: Side
    options: Options = Options()
    topology: Topology = Topology()

    def side(self, role: Role) -> Side:
        """The spec of one side."""
        return self.prompt if role is Role.PROMPT else self.decode


class RequiredTimeouts(_Model):
    """Upper bounds on the timeouts a CacheLink may use."""

    max_sync_kv_timeout_ms: int | None = Field(default=None, ge=1)
    max_link_timeout_ms: int | None = Field(default=None, ge=1)
    max_link_total_time_seconds: int | None = Field(default=None, ge=1)


class Limits(_Model):
    """``CacheLinkPolicy.spec.limits``; ``None`` = no limit from this policy."""

    max_pool_bytes_per_instance: int | None = Field(default=None, ge=0)
    max_pool_bytes_per_node: int | None = Field(default=None, ge=0)
    max_links_per_cache_link: int | None = Field(default=None, ge=0)
    max_links_per_instance: int | None = Field(default=None, ge=0, le=512)
    max_clusters_per_link_call: int | None = Field(default=None, ge=1, le=16)
    max_link_setups_in_flight: int | None = Field(default=None, ge=1, le=64)
    listen_port_range: PortRange | None = None
    allowed_roles: Annotated[tuple[Role, ...], Field(max_length=2)] | None = None
    allowed_link_styles: Annotated[tuple[LinkStyle, ...], Field(max_length=2)] | None = None
    required_timeouts: RequiredTimeouts | None = None
    require_link_authentication: bool | None = None
    allowed_nodes: Annotated[tuple[NodeName, ...], Field(max_length=512)] | None = None
    allowed_listen_interfaces: Annotated[tuple[InterfaceName, ...], Field(max_length=32)] | None = None
    max_instances_per_namespace: int | None = Field(default=None, ge=0)
    max_pool_bytes_per_namespace: int | None = Field(default=None, ge=0)


class CacheLinkPolicySpec(_Model):
    """``CacheLinkPolicy.spec``."""

    namespace_selector: LabelSelector = LabelSelector()
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    defaults: Options = Options()
    limits: Limits = Limits()


class PolicyRef(_Model):
    """A policy as the policy code sees it: its name and spec."""

    name: str
    spec: CacheLinkPolicySpec


# ---- status ------------------------------------------------------------------------------------


class Condition(_Model):
    """A status condition (``metav1.Condition`` shape)."""

    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int | None = None


class InstanceStatus(_Model):
    """One instance in ``status.instances``."""

    name: str
    role: Role
    member: str = ""
    node: str = ""
    pod: str | None = None
    pod_uid: str | None = Field(default=None, alias="podUID")
    revision: str | None = None
    cluster_id: int | None = None
    port: int | None = None
    address: str | None = None
    state: InstanceState = "Pending"
    incarnation: str | None = None
    last_error: str | None = None


class LinkStatus(_Model):
    """One prompt x decode link in ``status.links``."""

    prompt: str
    decode: str
    prompt_cluster_id: int | None = None
    decode_cluster_id: int | None = None
    state: LinkState = "Pending"
    data_path: str | None = None
    address: str | None = None
    current: bool = True
    attempts: int = 0
    relinks: int = 0
    last_status_code: str | None = None
    last_error: str | None = None
    prompt_incarnation: str | None = None
    decode_incarnation: str | None = None
    prompt_pod_uid: str | None = Field(default=None, alias="promptPodUID")
    decode_pod_uid: str | None = Field(default=None, alias="decodePodUID")
    since: str | None = None


class RankTableStatus(_Model):
    """Where the communication-domain rank table lives and its content hash (the operator writes all three;
    the CRD requires none, so one that lacks some reads as empty and is written again)."""

    config_map_name: str = ""
    hash: str = ""
    complete: bool = False


class CacheLinkStatus(_Model):
    """``CacheLink.status`` (what the operator reads back of it)."""

    phase: Phase | None = None
    observed_generation: int | None = None
    desired_links: int = 0
    linked_links: int = 0
    ready_links: int = 0
    rank_table: RankTableStatus | None = None
    policies: tuple[str, ...] = ()
    #: the policies whose limits this CacheLink violates (set while it is Rejected for PolicyViolation)
    violated_policies: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()
    instances: tuple[InstanceStatus, ...] = ()
    links: tuple[LinkStatus, ...] = ()


class CacheLinkPolicyStatus(_Model):
    """``CacheLinkPolicy.status``: what it selects, what violates it, whether its spec makes sense."""

    observed_generation: int | None = None
    selected_cache_links: int = 0
    violating_cache_links: int = 0
    #: ``namespace/name`` of violating CacheLinks, sorted, at most ``MAX_LISTED_VIOLATIONS``
    violating: tuple[str, ...] = Field(default=(), max_length=MAX_LISTED_VIOLATIONS)
    conditions: tuple[Condition, ...] = ()
