"""kopf handlers, registered at start-up from the parsed flags (the agent selector is a flag).

Thin by design: indices keep pods, agent pods, policies, namespaces and CacheLinks in memory; one
daemon per CacheLink runs ``reconcile.reconcile`` whenever it is kicked (its spec changed, a pod it
selects or names changed, a CacheLink contending for its pods changed, a policy or a namespace changed)
and at least every resync interval, which is the drift repair. Kicks are aimed: with hundreds of
CacheLinks in a namespace, one pod or one deletion wakes only those it concerns. Change handlers are
not used for reconciling because kopf persists their retry progress on the object (API writes on every
retry) and a pod change cannot trigger them without writing to the CacheLink. Deletion is a kopf
finalizer (``on.delete``) that retries with ``TemporaryError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from cachelink_agent import client as agent_client
from kubernetes.client.exceptions import ApiException

from cachelink_operator import agent_certs, agents, desired, diff, finalize, policy, quota, reconcile, signer
from cachelink_operator.config import Config
from cachelink_operator.models import GROUP, VERSION, CacheLinkPolicySpec, PolicyRef

kopf_logger = logging.getLogger(__name__)
CACHELINKS = f"cachelinks.{VERSION}.{GROUP}"
POLICIES = f"cachelinkpolicies.{VERSION}.{GROUP}"
CERTIFICATE_REQUESTS = "certificatesigningrequests.v1.certificates.k8s.io"


class Kicks:
    """One asyncio.Event per CacheLink (by UID): set it to make that CacheLink's daemon reconcile now."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        #: per CacheLink: (generation, being deleted, what it was) last seen
        self.seen: dict[str, tuple[int | None, bool, desired.CacheLinkRef]] = {}

    def get(self, uid: str) -> asyncio.Event:
        """The event of ``uid``."""
        return self.events.setdefault(uid, asyncio.Event())

    def kick(self, *uids: str) -> None:
        """Wake these CacheLinks' daemons."""
        for uid in uids:
            self.get(uid).set()

    def claims_changed(
        self, uid: str, type_: str | None, body: Mapping[str, Any]
    ) -> list[desired.CacheLinkRef]:
        """The versions of a CacheLink whose pods others may now win or lose: the last one and the
        new one when it went away or its spec changed; none for other events (status writes must not
        wake anyone, and a new CacheLink is younger than all others, so it wins no pod from them)."""
        meta = body.get("metadata") or {}
        if type_ == "DELETED":
            gone = self.seen.pop(uid, None)
            return [desired.cachelink_ref(body)] + ([gone[2]] if gone is not None else [])
        state = (meta.get("generation"), bool(meta.get("deletionTimestamp")))
        old = self.seen.get(uid)
        if old is not None and old[:2] == state:
            return []  # a status write (most events): the spec is not parsed again
        ref = desired.cachelink_ref(body)
        self.seen[uid] = (*state, ref)
        return [] if old is None else [old[2], ref]


def _world(kwargs: Mapping[str, Any], namespace: str) -> reconcile.World:
    pods = kwargs["cachelink_pods"].get(namespace, [])
    endpoints = {e.node: e for e in kwargs["cachelink_agents"].get("all", [])}
    policies = list(kwargs["cachelink_policies"].get("all", []))
    labels: dict[str, str] = next(iter(kwargs["cachelink_namespaces"].get(namespace, [])), {})
    revisions = desired.Revisions(
        {r.uid: r for r in kwargs["cachelink_replicasets"].get(namespace, [])},
        dict(kwargs["cachelink_statefulsets"].get(namespace, [])),
    )
    cachelinks = list(kwargs["cachelink_objects"].get(namespace, []))
    return reconcile.World(list(pods), endpoints, policies, labels, cachelinks, revisions)


def _sharing_a_quota(kwargs: Mapping[str, Any], body: kopf.Body) -> list[str]:
    """The CacheLinks created after this one in its namespace, when a policy gives the namespace a quota."""
    world = _world(kwargs, body.metadata.namespace or "")
    if not quota.has_quota(policy.selecting(world.policies, world.namespace_labels)):
        return []
    return quota.later(desired.cachelink_ref(body), world.cachelinks)


def _register_indices(registry: kopf.OperatorRegistry, cfg: Config) -> Callable[..., bool]:
    """The in-memory indices the reconciles read; returns the agent-pod filter."""

    @kopf.index("pods", registry=registry, id="cachelink_pods")
    def cachelink_pods(body: kopf.Body, **_: Any) -> dict[str, desired.PodInfo]:
        info = desired.pod_info(body)
        return {info.namespace: info}

    def is_agent(body: kopf.Body, **_: Any) -> bool:
        labels = body.metadata.labels
        return body.metadata.namespace == cfg.agent_namespace and all(
            labels.get(k) == v for k, v in cfg.agent_selector.items()
        )

    @kopf.index("pods", registry=registry, when=is_agent, id="cachelink_agents")
    def cachelink_agents(body: kopf.Body, **_: Any) -> dict[str, agents.Endpoint] | None:
        endpoint = agents.endpoint_of(body, cfg.agent_scheme)
        return {"all": endpoint} if endpoint is not None else None

    @kopf.index(POLICIES, registry=registry, id="cachelink_policies")
    def cachelink_policies(body: kopf.Body, **_: Any) -> dict[str, PolicyRef] | None:
        try:
            spec = CacheLinkPolicySpec.model_validate(dict(body.spec))
            return {"all": PolicyRef(name=str(body.metadata.name), spec=spec)}
        except ValueError:
            return None

    @kopf.index("namespaces", registry=registry, id="cachelink_namespaces")
    def cachelink_namespaces(body: kopf.Body, **_: Any) -> dict[str, dict[str, str]]:
        return {str(body.metadata.name): dict(body.metadata.labels)}

    @kopf.index(CACHELINKS, registry=registry, id="cachelink_objects")
    def cachelink_objects(body: kopf.Body, **_: Any) -> dict[str, desired.CacheLinkRef]:
        return {str(body.metadata.namespace): desired.cachelink_ref(body)}

    # the controllers of selected pods: which revision is current (Ready counts only current pods)
    @kopf.index("replicasets.v1.apps", registry=registry, id="cachelink_replicasets")
    def cachelink_replicasets(body: kopf.Body, **_: Any) -> dict[str, desired.ReplicaSetInfo]:
        return {str(body.metadata.namespace): desired.replicaset_info(body)}

    @kopf.index("statefulsets.v1.apps", registry=registry, id="cachelink_statefulsets")
    def cachelink_statefulsets(body: kopf.Body, **_: Any) -> dict[str, tuple[str, str]] | None:
        revision = body.status.get("updateRevision")
        return {str(body.metadata.namespace): (str(body.metadata.uid), str(revision))} if revision else None

    return is_agent


def _register_kickers(
    registry: kopf.OperatorRegistry, rt: reconcile.Runtime, kicks: Kicks, is_agent: Callable[..., bool]
) -> None:
    """The watch-event handlers that wake the daemons of the CacheLinks a change concerns."""

    @kopf.on.event(CACHELINKS, registry=registry, id="cachelink_changed")
    def cachelink_changed(uid: str, type: str | None, body: kopf.Body, **kwargs: Any) -> None:
        rt.board.cachelink_event(type, body)
        # its spec changed or it is being deleted: reconcile now; an event for a status write (ours,
        # mostly) wakes nobody: the pass that wrote it already scheduled the next one
        changed = kicks.claims_changed(uid, type, body)
        if changed and type != "DELETED":
            kicks.kick(uid)
        # who holds a contested pod changes when a CacheLink goes away or its selectors change
        namespace = body.metadata.namespace
        neighbours = kwargs["cachelink_objects"].get(namespace, [])
        if changed:
            kicks.kick(*desired.contenders(changed, neighbours, kwargs["cachelink_pods"].get(namespace, [])))
        # a namespace quota is shared in creation order: the ones created later may now fit, or not
        if changed or type == "DELETED":
            kicks.kick(*_sharing_a_quota(kwargs, body))

    @kopf.on.event("pods", registry=registry, id="pod_changed")
    def pod_changed(body: kopf.Body, **kwargs: Any) -> None:
        if is_agent(body):
            kicks.kick(*kicks.events)
        neighbours = kwargs["cachelink_objects"].get(body.metadata.namespace, [])
        kicks.kick(*desired.interested(desired.pod_info(body), neighbours))

    @kopf.on.event(POLICIES, registry=registry, id="policy_changed")
    def policy_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
        if rt.board.policy_event(type, body):  # its spec changed (not just its status): re-evaluate all
            kicks.kick(*kicks.events)

    @kopf.on.event("namespaces", registry=registry, id="namespace_changed")
    def namespace_changed(type: str | None, body: kopf.Body, **_: Any) -> None:
        if rt.board.namespace_event(type, body):  # its labels changed: policies may select otherwise
            kicks.kick(*kicks.events)

    @kopf.on.event("replicasets.v1.apps", registry=registry, id="replicaset_changed")
    @kopf.on.event("statefulsets.v1.apps", registry=registry, id="statefulset_changed")
    def controller_changed(body: kopf.Body, **kwargs: Any) -> None:  # a rollout moved on
        kicks.kick(*(ref.uid for ref in kwargs["cachelink_objects"].get(body.metadata.namespace, [])))


def _register_signer(
    registry: kopf.OperatorRegistry, rt: reconcile.Runtime, ca: agent_certs.SigningCA
) -> None:
    """The agents' certificate signer (:mod:`cachelink_operator.signer`) on pending requests."""

    def pending(body: kopf.Body, **_: Any) -> bool:
        return agent_certs.is_pending_agent_request(body)

    @kopf.on.event(CERTIFICATE_REQUESTS, registry=registry, when=pending, id="agent_certificates")
    async def agent_certificate(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event.get("type") == "DELETED":
            return
        raw = event["object"]  # the request as plain JSON (written back with the decision)
        for attempt in range(3):
            try:
                await signer.handle(rt.kube, ca, rt.config.agent_user, raw)
                return
            except ApiException as error:
                kopf_logger.warning(
                    "certificate request %s not handled: %s", body.metadata.name, error.reason
                )
                if error.status == 409:
                    return  # changed since: the change comes back as an event
                await asyncio.sleep(rt.config.retry_delay_s * 2**attempt)


def register(registry: kopf.OperatorRegistry, rt: reconcile.Runtime) -> Kicks:
    """Register every handler on ``registry``; returns the kick table."""
    kicks = Kicks()
    _register_kickers(registry, rt, kicks, _register_indices(registry, rt.config))

    @kopf.daemon(CACHELINKS, registry=registry, cancellation_timeout=30.0, id="reconciler")
    async def cachelink_reconciler(stopped: kopf.DaemonStopped, body: kopf.Body, **kwargs: Any) -> None:
        uid, namespace = str(body.metadata.uid), str(body.metadata.namespace)
        wake = kicks.get(uid)
        full = True
        try:
            while not stopped:
                wake.clear()
                if body.metadata.get("deletionTimestamp"):
                    return
                try:
                    delay = await reconcile.reconcile(rt, body, _world(kwargs, namespace), full)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - any failure of a pass (API, agent, bug): retried with backoff, the daemon never dies
                    delay = reconcile.failed(rt, uid, error)
                waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())}
                try:
                    await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                    full = not wake.is_set()  # woken by the resync timer, not by a change
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            kicks.events.pop(uid, None)
            rt.forget(uid)

    @kopf.on.delete(CACHELINKS, registry=registry, id="finalizer")
    async def cachelink_finalizer(body: kopf.Body, **kwargs: Any) -> None:
        await finalize.finalize(rt, body, _world(kwargs, str(body.metadata.namespace)))

    if rt.signing_ca is not None:
        _register_signer(registry, rt, rt.signing_ca)

    return kicks


async def caretaker(rt: reconcile.Runtime, stop: asyncio.Event) -> None:
    """Every ``owner_confirm_interval_s``: reconfirm live owners on every agent, sweep orphans.

    Not a kopf daemon on the agent pods: kopf puts a finalizer on every object a daemon runs for, and
    agent pods must never wait for the operator to be deleted. Each pass reads agents first and lists
    CacheLinks second, so an instance seen on an agent always belongs to a CacheLink that was created
    before the list: only instances of CacheLinks that are really gone are swept.
    """
    while not stop.is_set():
        try:
            await care(rt)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of a pass is logged; the next pass runs
            kopf_logger.warning("owner confirmation pass failed: %s: %s", type(error).__name__, error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rt.config.owner_confirm_interval_s)


async def care(rt: reconcile.Runtime) -> None:
    """One pass of the caretaker."""
    cfg = rt.config
    endpoints: dict[str, agents.Endpoint] = {}
    for pod in await rt.kube.list_pods(cfg.agent_namespace, cfg.agent_selector):
        endpoint = agents.endpoint_of(pod, cfg.agent_scheme)
        if endpoint is not None:
            endpoints[endpoint.node] = endpoint
    held: dict[str, dict[str, list[str]]] = {}
    for node, endpoint in sorted(endpoints.items()):
        try:
            held[node] = await rt.agents.owners(endpoint)
        except agent_client.AgentError as error:
            kopf_logger.warning("owner listing on %s failed: %s", node, error)
    live = set(await rt.kube.list_cachelink_uids())
    for node, owners in sorted(held.items()):
        endpoint = endpoints[node]
        confirm = sorted(owner for owner in owners if owner in live)
        if confirm:
            try:
                await rt.agents.confirm_owners(endpoint, confirm)
            except Exception as error:  # noqa: BLE001 - one node's failure must not stop the others' pass
                kopf_logger.warning("owner confirmation on %s failed: %s", node, error)
        orphans = diff.sweep(node, owners, live)
        if orphans:
            kopf_logger.info("sweeping %d instances of deleted CacheLinks on %s", len(orphans), node)
            await rt.agents.execute(orphans, endpoints, policy.LINK_TIMEOUT_MS)
