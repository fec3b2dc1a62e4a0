"""kopf handlers, registered at start-up from the parsed flags (the agent selector is a flag).

Thin by design: indices keep pods, agent pods, policies, namespaces and CacheLinks in memory; one
daemon per CacheLink runs ``reconcile.reconcile`` whenever it is kicked (its object, a pod of its
namespace, a policy or a namespace changed) and at least every resync interval, which is the drift
repair. Change handlers are not used for reconciling because kopf persists their retry progress on the
object (API writes on every retry) and a pod change cannot trigger them without writing to the
CacheLink. Deletion is a kopf finalizer (``on.delete``) that retries with ``TemporaryError``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from cachelink_operator import agents, desired, diff, finalize, reconcile
from cachelink_operator.models import GROUP, VERSION, CacheLinkPolicySpec, PolicyRef

kopf_logger = logging.getLogger(__name__)
CACHELINKS = f"cachelinks.{VERSION}.{GROUP}"
POLICIES = f"cachelinkpolicies.{VERSION}.{GROUP}"


class Kicks:
    """One asyncio.Event per CacheLink (by UID): set it to make that CacheLink's daemon reconcile now."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}

    def get(self, uid: str) -> asyncio.Event:
        """The event of ``uid``."""
        return self.events.setdefault(uid, asyncio.Event())

    def kick(self, *uids: str) -> None:
        """Wake these CacheLinks' daemons."""
        for uid in uids:
            self.get(uid).set()


def _world(kwargs: Mapping[str, Any], namespace: str) -> reconcile.World:
    pods = kwargs["cachelink_pods"].get(namespace, [])
    endpoints = {e.node: e for e in kwargs["cachelink_agents"].get("all", [])}
    policies = list(kwargs["cachelink_policies"].get("all", []))
    labels: dict[str, str] = next(iter(kwargs["cachelink_namespaces"].get(namespace, [])), {})
    return reconcile.World(list(pods), endpoints, policies, labels)


def register(registry: kopf.OperatorRegistry, rt: reconcile.Runtime) -> Kicks:
    """Register every handler on ``registry``; returns the kick table."""
    kicks = Kicks()
    cfg = rt.config

    @kopf.index("pods", registry=registry)
    def cachelink_pods(body: kopf.Body, **_: Any) -> dict[str, desired.PodInfo]:
        info = desired.pod_info(body)
        return {info.namespace: info}

    def is_agent(body: kopf.Body, **_: Any) -> bool:
        labels = body.metadata.labels
        return body.metadata.namespace == cfg.agent_namespace and all(
            labels.get(k) == v for k, v in cfg.agent_selector.items()
        )

    @kopf.index("pods", registry=registry, when=is_agent)
    def cachelink_agents(body: kopf.Body, **_: Any) -> dict[str, agents.Endpoint] | None:
        endpoint = agents.endpoint_of(body)
        return {"all": endpoint} if endpoint is not None else None

    @kopf.index(POLICIES, registry=registry)
    def cachelink_policies(body: kopf.Body, **_: Any) -> dict[str, PolicyRef] | None:
        try:
            spec = CacheLinkPolicySpec.model_validate(dict(body.spec))
            return {"all": PolicyRef(name=str(body.metadata.name), spec=spec)}
        except ValueError:
            return None

    @kopf.index("namespaces", registry=registry)
    def cachelink_namespaces(body: kopf.Body, **_: Any) -> dict[str, dict[str, str]]:
        return {str(body.metadata.name): dict(body.metadata.labels)}

    @kopf.index(CACHELINKS, registry=registry)
    def cachelink_objects(body: kopf.Body, **_: Any) -> dict[str, str]:
        return {str(body.metadata.namespace): str(body.metadata.uid)}

    @kopf.on.event(CACHELINKS, registry=registry)
    def cachelink_changed(uid: str, **_: Any) -> None:
        kicks.kick(uid)

    @kopf.on.event("pods", registry=registry)
    def pod_changed(body: kopf.Body, **kwargs: Any) -> None:
        kicks.kick(*kwargs["cachelink_objects"].get(body.metadata.namespace, []))
        if is_agent(body):
            kicks.kick(*kicks.events)

    @kopf.on.event(POLICIES, registry=registry)
    @kopf.on.event("namespaces", registry=registry)
    def cluster_changed(**_: Any) -> None:  # a policy or namespace label changed: re-evaluate all
        kicks.kick(*kicks.events)

    @kopf.daemon(CACHELINKS, registry=registry, cancellation_timeout=30.0)
    async def cachelink_reconciler(stopped: kopf.DaemonStopped, body: kopf.Body, **kwargs: Any) -> None:
        uid, namespace = str(body.metadata.uid), str(body.metadata.namespace)
        wake = kicks.get(uid)
        try:
            while not stopped:
                wake.clear()
                if body.metadata.get("deletionTimestamp"):
                    return
                delay = await reconcile.reconcile(rt, body, _world(kwargs, namespace))
                waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())}
                try:
                    await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            kicks.events.pop(uid, None)

    @kopf.on.delete(CACHELINKS, registry=registry)
    async def cachelink_finalizer(body: kopf.Body, **kwargs: Any) -> None:
        await finalize.finalize(rt, body, _world(kwargs, str(body.metadata.namespace)))

    @kopf.daemon("pods", registry=registry, when=is_agent, cancellation_timeout=10.0)
    async def agent_caretaker(stopped: kopf.DaemonStopped, body: kopf.Body, **kwargs: Any) -> None:
        """Per agent pod: reconfirm live CacheLink owners, and sweep instances of deleted CacheLinks."""
        while not stopped:
            endpoint = agents.endpoint_of(body)
            if endpoint is not None:
                live = [uid for store in kwargs["cachelink_objects"].values() for uid in store]
                await _care_for(rt, endpoint, live)
            await stopped.wait(cfg.owner_confirm_interval_s)

    return kicks


async def _care_for(rt: reconcile.Runtime, endpoint: agents.Endpoint, live: list[str]) -> None:
    seen = await rt.agents.observe([endpoint.node], {endpoint.node: endpoint})
    if endpoint.node in seen.unreachable:
        return
    owners = sorted({i.owner for i in seen.instances.get(endpoint.node, []) if i.owner in live})
    if owners:
        try:
            await rt.agents.confirm_owners(endpoint, owners)
        except Exception as error:
            kopf_logger.warning("owner confirmation on %s failed: %s", endpoint.node, error)
    orphans = diff.sweep(seen.instances, live)
    if orphans:
        await rt.agents.execute(orphans, {endpoint.node: endpoint}, 3000)
