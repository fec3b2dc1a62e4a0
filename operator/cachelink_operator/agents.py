"""Reaching node agents: endpoints from the agent DaemonSet's pods, per-node tokens, bounded calls.

An agent pod is found by namespace and label selector (flags); its node is ``spec.nodeName``, its
address ``status.podIP`` and its port the container port named ``api``. Each call carries a short-lived
token for the agent's node, signed with the operator's key (``cachelink_agent.tokens``; agents hold only the
public key), minted again before it expires.
Every call carries the configured timeout; an agent that cannot be reached is reported, not raised,
so one bad node never stalls the rest of a CacheLink.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cachelink_agent import client as agent_client
from cachelink_agent import models as agent_models
from cachelink_agent import tokens
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cachelink_operator import diff, metrics

API_PORT_NAME = "api"
_T = TypeVar("_T")


@dataclass(frozen=True)
class Endpoint:
    """Where one node's agent answers."""

    node: str
    url: str
    address: str


def endpoint_of(body: Mapping[str, Any], scheme: str = "http") -> Endpoint | None:
    """The agent endpoint an agent pod offers, or None while it is unscheduled, unready or gone."""
    node = body.get("spec", {}).get("nodeName")
    ip = body.get("status", {}).get("podIP")
    if not node or not ip or body.get("metadata", {}).get("deletionTimestamp"):
        return None
    for container in body.get("spec", {}).get("containers", []):
        for port in container.get("ports", []) or []:
            if port.get("name") == API_PORT_NAME:
                host = f"[{ip}]" if ":" in ip else ip
                return Endpoint(node, f"{scheme}://{host}:{port['containerPort']}", ip)
    return None


@dataclass(frozen=True)
class Outcome:
    """The result of one planned call."""

    action: diff.Action
    error: str | None = None
    status: int | None = None
    llm_status: str | None = None
    result: agent_models.PutResult | None = None

    @property
    def ok(self) -> bool:
        """The call did what it should."""
        return self.error is None


@dataclass
class Observation:
    """What the agents of some nodes said about one CacheLink's instances."""

    instances: dict[str, list[agent_models.InstanceStatus]]
    nodes: dict[str, agent_models.NodeInfo]
    unreachable: dict[str, str]


class Agents:
    """Clients of the agents, one per node, recreated when the node's agent moves."""

    def __init__(
        self,
        signing_key: Ed25519PrivateKey,
        timeout_s: float,
        concurrency: int = 32,
        trusted_ca_pem: bytes | None = None,
    ) -> None:
        """``trusted_ca_pem``: the CA agents' serving certificates chain to (HTTPS endpoints need it)."""
        self._minter = tokens.Minter(signing_key)
        self._tls: ssl.SSLContext | None = None
        if trusted_ca_pem is not None:
            self._tls = ssl.create_default_context(cadata=trusted_ca_pem.decode())
        self._timeout = timeout_s
        self._clients: dict[str, tuple[str, agent_client.AgentClient]] = {}
        self._limit = asyncio.Semaphore(concurrency)
        #: per node, the fetch of its node info in flight, with the node's generation when it started
        self._fetches: dict[str, tuple[int, asyncio.Task[agent_models.NodeInfo]]] = {}
        #: per node, bumped by every call that may change what the node reports about itself
        self._generation: dict[str, int] = {}

    def client(self, endpoint: Endpoint) -> agent_client.AgentClient:
        """The client of ``endpoint``'s node."""
        known = self._clients.get(endpoint.node)
        if known is not None and known[0] == endpoint.url:
            return known[1]
        node = endpoint.node
        made = agent_client.AgentClient(
            endpoint.url, lambda: self._minter.token(node), timeout=self._timeout, ssl_context=self._tls
        )
        self._clients[endpoint.node] = (endpoint.url, made)
        if known is not None:
            asyncio.get_running_loop().create_task(known[1].close())
        return made

    async def close(self) -> None:
        """Close every client."""
        for _url, made in self._clients.values():
            await made.close()
        self._clients.clear()

    async def observe(
        self, nodes: Iterable[str], endpoints: Mapping[str, Endpoint], owner: str
    ) -> Observation:
        """``owner``'s instances and the node info of each node, concurrently; missing or failing agents
        are listed. Each node is asked only for this owner's instances: a reconcile's cost does not grow
        with the number of CacheLinks sharing its nodes."""
        seen = Observation({}, {}, {})

        async def one(node: str) -> None:
            endpoint = endpoints.get(node)
            if endpoint is None:
                seen.unreachable[node] = f"no ready agent pod on node {node}"
                return
            try:
                instances, info = await asyncio.gather(
                    self._instances(endpoint, owner), self._node_info(node, endpoint)
                )
            except agent_client.AgentError as error:
                seen.unreachable[node] = str(error)
                return
            seen.instances[node] = instances
            seen.nodes[node] = info

        await asyncio.gather(*(one(node) for node in sorted(set(nodes))))
        return seen

    async def owners(self, endpoint: Endpoint) -> dict[str, list[str]]:
        """Each owner's instance names on ``endpoint``'s node (raises ``AgentError``)."""
        return await self._counted("owners", self._bounded(endpoint, lambda made: made.get_owners()))

    async def _instances(self, endpoint: Endpoint, owner: str) -> list[agent_models.InstanceStatus]:
        return await self._counted(
            "observe", self._bounded(endpoint, lambda made: made.get_instances(owner=owner))
        )

    async def _node_info(self, node: str, endpoint: Endpoint) -> agent_models.NodeInfo:
        """What ``node`` reports about itself. Reconciles that ask while a fetch started after the node's
        last change is in flight share it: hundreds of CacheLinks reconciled at once cost one request per
        node, not one each."""
        generation = self._generation.get(node, 0)
        known = self._fetches.get(node)
        if known is None or known[0] != generation or known[1].done():
            task = asyncio.get_running_loop().create_task(
                self._counted("node", self._bounded(endpoint, lambda made: made.get_node()))
            )
            known = (generation, task)
            self._fetches[node] = known
            task.add_done_callback(lambda done: self._forget_fetch(node, done))
        return await asyncio.shield(known[1])  # a cancelled caller leaves the fetch to the others

    def _bump(self, node: str) -> None:
        self._generation[node] = self._generation.get(node, 0) + 1

    def _forget_fetch(self, node: str, done: asyncio.Task[agent_models.NodeInfo]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved: a failure is reported to every caller, never "unretrieved"
        if self._fetches.get(node, (0, None))[1] is done:
            del self._fetches[node]

    async def _bounded(
        self, endpoint: Endpoint, call: Callable[[agent_client.AgentClient], Awaitable[_T]]
    ) -> _T:
        async with self._limit:
            return await call(self.client(endpoint))

    @staticmethod
    async def _counted(verb: str, call: Awaitable[_T]) -> _T:
        try:
            result = await call
        except agent_client.AgentError as error:
            metrics.AGENT_CALLS.labels(verb, error.error).inc()
            raise
        metrics.AGENT_CALLS.labels(verb, "ok").inc()
        return result

    async def execute(
        self, actions: Sequence[diff.Action], endpoints: Mapping[str, Endpoint], link_timeout_ms: int
    ) -> list[Outcome]:
        """Run a plan: each phase (unlink, delete, put, link) after the previous one, calls within a phase
        concurrently."""
        outcomes: list[Outcome] = []
        for phase in _phases(actions):
            outcomes.extend(await asyncio.gather(*(self._call(a, endpoints, link_timeout_ms) for a in phase)))
        return outcomes

    async def confirm_owners(self, endpoint: Endpoint, owners: Sequence[str]) -> None:
        """Reconfirm, on one node, that these CacheLink UIDs still exist."""
        async with self._limit:
            await self.client(endpoint).confirm_owner(*owners)

    async def _call(
        self, action: diff.Action, endpoints: Mapping[str, Endpoint], link_timeout_ms: int
    ) -> Outcome:
        endpoint = endpoints.get(action.node)
        if endpoint is None:
            return Outcome(action, f"no ready agent pod on node {action.node}")
        verb = type(action).__name__
        # only instances coming and going change what a node reports about itself (ports, pools)
        changes_node = isinstance(action, diff.PutInstance | diff.DeleteInstance)
        if changes_node:
            self._bump(action.node)
        try:
            async with self._limit:
                made = self.client(endpoint)
                result: agent_models.PutResult | None = None
                if isinstance(action, diff.PutInstance):
                    result = await made.put_instance(action.instance, action.spec)
                elif isinstance(action, diff.PutLink):
                    result = await made.put_link(action.instance, action.remote_cluster_id, action.spec)
                elif isinstance(action, diff.PutCommLink):
                    result = await made.put_comm_link(action.instance, action.comm_name, action.spec)
                elif isinstance(action, diff.DeleteLink):
                    await made.delete_link(
                        action.instance,
                        action.remote_cluster_id,
                        force=True,
                        timeout_ms=min(link_timeout_ms, agent_models.MAX_TIMEOUT_MS),
                    )
                elif isinstance(action, diff.DeleteCommLink):
                    await made.delete_comm_link(action.instance, action.comm_name)
                elif isinstance(action, diff.DeleteInstance):
                    await made.delete_instance(action.instance)
        except agent_client.AgentError as error:
            metrics.AGENT_CALLS.labels(verb, error.error).inc()
            return Outcome(action, str(error), error.status, error.llm_status)
        finally:
            if changes_node:  # a fetch that overlapped the call may miss its effect: not shared
                self._bump(action.node)
        metrics.AGENT_CALLS.labels(verb, "ok").inc()
        return Outcome(action, result=result)


_PHASE: dict[type[diff.Action], int] = {
    diff.DeleteLink: 0,
    diff.DeleteCommLink: 0,
    diff.DeleteInstance: 1,
    diff.PutInstance: 2,
    diff.PutLink: 3,
    diff.PutCommLink: 3,
}


def _phases(actions: Sequence[diff.Action]) -> list[list[diff.Action]]:
    phases: list[list[diff.Action]] = [[] for _ in range(4)]
    for action in actions:
        phases[_PHASE[type(action)]].append(action)
    return [phase for phase in phases if phase]
