"""An instance as the agent holds it while it runs: its state-file record, its backend, its last attempts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from cachelink_agent import models, state
from cachelink_agent.option_checks import LISTEN_OPTION, pool_bytes
from cachelink_agent.supervisor import Backend


@dataclass
class LinkAttempt:
    """The last attempt at a link (kept for status even when it failed)."""

    status: str
    error: str = ""
    address: str = ""


@dataclass
class Instance:
    """A live instance: its record in the state file and its backend."""

    name: str
    record: state.InstanceRecord
    spec: models.InstanceSpec
    state: models.InstanceState = "starting"
    backend: Backend | None = None
    incarnation: int = 0
    listen_address: str = ""
    pid: int = 0
    restarts: int = 0
    #: monotonic time of the last owner confirmation (creation, restore and every confirmation reset it:
    #: a restarted agent gives the owner a full TTL, and a wall-clock jump changes nothing)
    confirmed_at: float = field(default_factory=time.monotonic)
    #: why new links and attach sessions are refused ("" when they are not): the owner went silent
    quarantine: str = ""
    last_error: str = ""
    attempts: dict[int, LinkAttempt] = field(default_factory=dict)
    comm_attempts: dict[str, LinkAttempt] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stopping: bool = False
    supervisor: asyncio.Task[None] | None = None
    last_status: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    #: the pod sockets its backend serves (path -> pod uid), as last pushed
    pod_sockets: dict[str, str] = field(default_factory=dict)
    #: shared memory its pools reserve (parsed once: the node's listing sums it for every instance)
    pool_bytes: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.pool_bytes = pool_bytes(self.spec.options)
        self._listen_port: tuple[str, models.ListenPort | None] = ("", None)

    def listen_port(self) -> models.ListenPort | None:
        """The port it holds (the configured one while starting); None when stopping or none."""
        if self.stopping:
            return None
        address = self.listen_address or self.spec.options.get(LISTEN_OPTION, "")
        if self._listen_port[0] != address:  # made once per address: the node listing asks every instance
            host, _, port = address.rpartition(":")
            made = (
                models.ListenPort(port=int(port), instance=self.name, owner=self.spec.owner)
                if host and port.isdigit() and int(port) > 0  # 0: any port, none held yet
                else None
            )
            self._listen_port = (address, made)
        return self._listen_port[1]
