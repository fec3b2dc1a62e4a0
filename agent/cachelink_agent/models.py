"""The agent's API models (pydantic v2), shared by the server and by the operator's client.

Kept free of server-only imports: the operator imports this module and ``client`` only.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

API_VERSION = "v1"
#: DNS-1123 label: what an instance name must be (it becomes a file name, so nothing else is accepted)
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_LABEL_RE = re.compile(DNS1123_LABEL)
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MAX_UINT64 = 2**64 - 1
MAX_UINT32 = 2**32 - 1
MAX_OPTIONS = 64
MAX_TIMEOUT_MS = 600_000

InstanceName = Annotated[str, StringConstraints(pattern=DNS1123_LABEL, max_length=63)]
ClusterId = Annotated[int, Field(ge=0, le=MAX_UINT64)]
TimeoutMs = Annotated[int, Field(ge=1, le=MAX_TIMEOUT_MS)]
Role = Literal["prompt", "decoder", "mix"]
Mode = Literal["worker", "in-process"]
InstanceState = Literal["starting", "running", "restarting", "failed", "finalizing"]
LinkState = Literal["linked", "broken", "failed", "pending", "preparing"]
CommState = Literal["OK", "PREPARING", "FAILED", "pending"]
Action = Literal["created", "unchanged", "replaced", "linked", "relinked"]
OptionKey = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.]+$")]
OptionValue = Annotated[str, StringConstraints(max_length=4096)]
Address = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z.:\[\]-]{1,253}:[0-9]{1,5}$", max_length=260)]
OwnerId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")]
Ip = Annotated[str, StringConstraints(pattern=r"^[0-9A-Fa-f.:]{2,45}$")]


def is_instance_name(name: str) -> bool:
    """True when ``name`` is a DNS-1123 label (the only names the agent accepts)."""
    return bool(_LABEL_RE.fullmatch(name))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class AttachPolicy(_Model):
    """Who may attach to an instance.

    Pods attach through a CSI volume naming the CacheLink (``namespace``/``cachelink``): a pod of that
    namespace listed in ``pod_uids`` gets the instance's socket in its volume. Processes on the node attach
    at the instance's host socket, checked with ``SO_PEERCRED`` (``uids``; ``pod_uids`` by cgroup).
    """

    uids: list[Annotated[int, Field(ge=0, le=MAX_UINT32)]] = Field(
        default_factory=list, max_length=32, description="uids allowed to attach (empty: the agent's own uid)"
    )
    pod_uids: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f-]{36}$")]] = Field(
        default_factory=list, max_length=32, description="pods (by UID) allowed"
    )
    namespace: Annotated[str, StringConstraints(pattern=f"^$|{DNS1123_LABEL}", max_length=63)] = Field(
        default="", description="namespace of the granting CacheLink (pods of other namespaces never attach)"
    )
    cachelink: Annotated[str, StringConstraints(pattern=f"^$|{DNS1123_SUBDOMAIN}", max_length=253)] = Field(
        default="", description="name of the granting CacheLink, as a pod's CSI volume names it"
    )


class InstanceSpec(_Model):
    """Desired instance: ``PUT /v1/instances/{name}``."""

    role: Role
    cluster_id: ClusterId
    owner: OwnerId = Field(
        description="the owning CacheLink's UID; the instance is finalized when it is not reconfirmed in time"
    )
    options: dict[OptionKey, OptionValue] = Field(
        default_factory=dict, max_length=MAX_OPTIONS, description="what LLMConfig.generate_options() produces"
    )
    attach: AttachPolicy = Field(default_factory=AttachPolicy)
    replace: bool = Field(
        default=False, description="finalize and re-init a live instance whose spec differs"
    )

    def desired(self) -> dict[str, object]:
        """The spec without request-only fields (what idempotency compares)."""
        return self.model_dump(exclude={"replace"})


class LinkSpec(_Model):
    """Desired ``link_clusters`` link: ``PUT /v1/instances/{name}/links/{remote_cluster_id}``."""

    remote_address: Address = Field(description="the remote instance's listen address, ip:port")
    local_ip: Ip | None = Field(default=None, description="local ip (default: the instance's listen ip)")
    timeout_ms: TimeoutMs = 3000


class CommLinkSpec(_Model):
    """Desired communication-domain link: ``PUT /v1/instances/{name}/comm-links/{comm_name}``."""

    cluster_rank_info: dict[ClusterId, Annotated[int, Field(ge=0, le=MAX_UINT32)]] = Field(
        min_length=2, max_length=4
    )
    rank_table: Annotated[str, StringConstraints(min_length=2, max_length=65536)] = Field(
        description="the rank table JSON (a string, as LLMDataDist.link takes it)"
    )

    @field_validator("cluster_rank_info", mode="before")
    @classmethod
    def _keys_are_ints(cls, value: object) -> object:
        # JSON object keys are strings; accept "1" for cluster id 1 but nothing non-numeric.
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, str) and not key.isdigit():
                    raise ValueError(f"cluster id {key!r} is not a non-negative integer")
        return value


#: at most this many owners per confirmation or ``?owner=`` query, each at most MAX_OWNER_LEN characters
MAX_OWNERS = 1024
MAX_OWNER_LEN = 128


class OwnerConfirmation(_Model):
    """``POST /v1/owners/confirm``: the operator still owns these CacheLinks."""

    owners: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_OWNER_LEN)]] = Field(
        max_length=MAX_OWNERS
    )


class OwnerConfirmResult(_Model):
    """Instances whose owner was confirmed."""

    confirmed: list[str]


class LinkStatus(_Model):
    """A link as the agent and the engine see it."""

    remote_cluster_id: int
    address: str
    state: LinkState
    data_path: Literal["tcp", "shm", ""] = ""
    last_status: str = Field(default="", description="LLMStatusCode name of the last link attempt")
    last_error: str = ""
    peer_incarnation: int = 0


class CommLinkStatus(_Model):
    """A communication-domain link."""

    comm_name: str
    comm_id: int = 0
    state: CommState
    last_status: str = ""
    last_error: str = ""


class PoolStatus(_Model):
    """One shared-memory pool file of an instance."""

    placement: Literal["DEVICE", "HOST"]
    path: str
    size: int
    used: int


class InstanceStatus(_Model):
    """``GET /v1/instances/{name}``."""

    name: str
    role: Role
    cluster_id: int
    owner: str
    mode: Mode
    state: InstanceState
    incarnation: int = 0
    listen_address: str = ""
    pid: int = 0
    restarts: int = 0
    links: list[LinkStatus] = Field(default_factory=list)
    comm_links: list[CommLinkStatus] = Field(default_factory=list)
    pools: list[PoolStatus] = Field(default_factory=list)
    pool_bytes: int = Field(default=0, description="bytes of shared memory the instance's pools reserve")
    caches: int = 0
    attach_socket: str = ""
    attach_sessions: int = 0
    counters: dict[str, int] = Field(default_factory=dict)
    owner_confirmed_at: float = 0.0
    quarantined: bool = Field(
        default=False,
        description="its owner was not reconfirmed within --owner-ttl: new links and attach sessions are "
        "refused until it is, and it is finalized after --owner-finalize-ttl",
    )
    last_error: str = ""
    options: dict[str, str] = Field(
        default_factory=dict, description="the instance's options, secrets (REDACTED_OPTIONS) redacted"
    )
    options_sha256: str = Field(
        default="", description="options_digest() of the full options, secrets included"
    )


#: option keys whose values never leave the agent (GET shows REDACTED in their place)
REDACTED_OPTIONS = frozenset({"cachelink.link_secret"})
REDACTED = "<redacted>"


def redact_options(options: dict[str, str]) -> dict[str, str]:
    """``options`` with secret values replaced, as status shows them."""
    return {key: REDACTED if key in REDACTED_OPTIONS else value for key, value in options.items()}


def options_digest(options: dict[str, str]) -> str:
    """SHA-256 of the canonical JSON of ``options``: lets a client compare specs without seeing secrets."""
    canonical = json.dumps(options, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class InstanceList(_Model):
    """``GET /v1/instances`` (``?owner=`` keeps only those owners' instances)."""

    instances: list[InstanceStatus]


class OwnerList(_Model):
    """``GET /v1/owners``: the names of each owner's live instances, without asking any engine."""

    owners: dict[str, list[str]]


class PutResult(_Model):
    """Result of a PUT: what the agent did."""

    name: str
    action: Action
    instance: InstanceStatus | None = None
    link: LinkStatus | None = None
    comm_link: CommLinkStatus | None = None


class DeleteResult(_Model):
    """Result of a DELETE."""

    name: str
    deleted: bool
    detail: str = ""


class InterfaceInfo(_Model):
    """A network interface and its addresses."""

    name: str
    addresses: list[str]
    up: bool


class ListenPort(_Model):
    """A port one of the node's instances holds, and whose instance it is."""

    port: int
    instance: str
    owner: str


class NodeInfo(_Model):
    """``GET /v1/node``."""

    node_name: str
    mode: Mode
    interfaces: list[InterfaceInfo]
    candidate_addresses: list[str] = Field(description="non-loopback addresses of interfaces that are up")
    shm_path: str
    shm_capacity_bytes: int
    shm_free_bytes: int
    pool_budget_bytes: int
    pool_reserved_bytes: int = Field(description="what live instances reserve of the budget")
    instances: int
    listen_ports: list[ListenPort] = Field(
        default_factory=list,
        description="the ports the node's live instances listen on (or will: configured), by port",
    )
    version: str


class ErrorBody(_Model):
    """Every error response: a stable ``error`` code, a message, and details where they help."""

    error: str
    message: str
    llm_status: str | None = Field(default=None, description="LLMStatusCode name for engine failures")
    fields: list[dict[str, str]] | None = Field(default=None, description="invalid fields (422)")
