"""``CacheLinkPolicy.status``: how many CacheLinks a policy selects, which violate it, whether it is valid.

One loop for all policies (not a kopf daemon: daemons put finalizers on their objects, and a policy must
never wait for the operator to be deleted). It works from a ``Board`` the watch handlers keep current:
the policies, the namespaces' labels and, per CacheLink, its namespace and the policies its status says
it violates (``status.violatedPolicies``, written by its reconcile). The loop runs when any of those
changes (coalescing bursts), computes every policy's status and patches only the ones that changed, so
a steady state costs no API writes. A policy whose spec does not parse (it is ignored by reconciles) or
contradicts itself (say, defaults above its own limits) gets ``Valid=False`` and one Warning event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from cachelink_operator import policy
from cachelink_operator.models import MAX_LISTED_VIOLATIONS, CacheLinkPolicyStatus
from cachelink_operator.status import condition, merge_patch, now

log = logging.getLogger(__name__)
VALID = "Valid"
INVALID_POLICY = "InvalidPolicy"  # event reason


class PolicyKube(Protocol):
    """The API calls the loop makes (``kube.Kube`` has them)."""

    async def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None: ...

    async def get_policy(self, name: str) -> dict[str, Any] | None: ...

    async def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class LinkView:
    """A CacheLink as policy status sees it."""

    namespace: str
    name: str
    violated: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PolicyView:
    """A policy object, reduced to what its status needs."""

    name: str
    uid: str
    generation: int | None
    spec: Mapping[str, Any]
    status: Mapping[str, Any]


def _policy_view(body: Mapping[str, Any]) -> PolicyView:
    meta = body.get("metadata") or {}
    return PolicyView(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=meta.get("generation"),
        spec=dict(body.get("spec") or {}),
        status=dict(body.get("status") or {}),
    )


@dataclass
class Board:
    """What the watches have shown; ``changed`` is set whenever a policy's status may have to change."""

    policies: dict[str, PolicyView] = field(default_factory=dict)
    links: dict[str, LinkView] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    #: per policy: (status the object had, status we wrote over it) - see ``reconcile._previous``
    written: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def policy_event(self, type_: str | None, body: Mapping[str, Any]) -> bool:
        """Record a policy event; returns whether its spec changed (CacheLinks must re-evaluate)."""
        view = _policy_view(body)
        old = self.policies.get(view.name)
        if type_ == "DELETED":
            self.policies.pop(view.name, None)
            self.written.pop(view.name, None)
            self.changed.set()
            return True
        self.policies[view.name] = view
        spec_changed = old is None or old.uid != view.uid or old.spec != view.spec
        if spec_changed or old is None or old.status != view.status or old.generation != view.generation:
            self.changed.set()  # a foreign status write is repaired, too
        return spec_changed

    def cachelink_event(self, type_: str | None, body: Mapping[str, Any]) -> None:
        """Record a CacheLink event."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if type_ == "DELETED":
            if self.links.pop(uid, None) is not None:
                self.changed.set()
            return
        status = body.get("status") or {}
        view = LinkView(
            str(meta.get("namespace", "")),
            str(meta.get("name", "")),
            frozenset(str(p) for p in status.get("violatedPolicies") or ()),
        )
        if self.links.get(uid) != view:
            self.links[uid] = view
            self.changed.set()

    def namespace_event(self, type_: str | None, body: Mapping[str, Any]) -> bool:
        """Record a namespace event; returns whether its labels changed."""
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        if type_ == "DELETED":
            self.namespaces.pop(name, None)
            self.changed.set()
            return True
        labels = dict(meta.get("labels") or {})
        if self.namespaces.get(name) == labels:
            return False
        self.namespaces[name] = labels
        self.changed.set()
        return True

    def previous(self, view: PolicyView) -> CacheLinkPolicyStatus:
        """The status to compare with: the object's, unless it is still the one our last write replaced."""
        written = self.written.get(view.name)
        if written is not None and dict(view.status) == written[0]:
            return CacheLinkPolicyStatus.model_validate(written[1])
        return CacheLinkPolicyStatus.model_validate(dict(view.status))


def compute(
    view: PolicyView,
    links: Mapping[str, LinkView],
    namespaces: Mapping[str, Mapping[str, str]],
    previous: CacheLinkPolicyStatus,
) -> tuple[CacheLinkPolicyStatus, list[str]]:
    """A policy's status, and the problems of its spec (empty: valid)."""
    spec, problems = policy.check_policy(view.spec)
    selected: list[LinkView] = []
    if spec is not None:
        selected = [
            link
            for link in links.values()
            if spec.namespace_selector.matches(dict(namespaces.get(link.namespace, {})))
        ]
    violating = sorted(f"{link.namespace}/{link.name}" for link in selected if view.name in link.violated)
    if spec is None:
        reason, message = "InvalidSpec", "the policy is ignored: " + "; ".join(problems)
    elif problems:
        reason, message = "Contradictory", "; ".join(problems)
    else:
        reason, message = "Valid", "the spec is valid"
    valid = condition(previous.conditions, VALID, not problems, reason, message, view.generation, now())
    others = [c for c in previous.conditions if c.type != VALID]
    new = CacheLinkPolicyStatus(
        observed_generation=view.generation,
        selected_cache_links=len(selected),
        violating_cache_links=len(violating),
        violating=tuple(violating[:MAX_LISTED_VIOLATIONS]),
        conditions=tuple(sorted([valid, *others], key=lambda c: c.type)),
    )
    return new, problems


async def sync_one(kube: PolicyKube, board: Board, view: PolicyView, retries: int = 3) -> bool:
    """Write one policy's status if it changed; returns whether it wrote.

    A 409 (someone changed the object between our read and our write) is retried from the object as
    the API server has it now, so neither a crash nor a lost update.
    """
    for attempt in range(retries + 1):
        previous = board.previous(view)
        new, problems = compute(view, board.links, board.namespaces, previous)
        old_dump, new_dump = previous.dump(), new.dump()
        if new_dump == old_dump:
            return False
        try:
            await kube.patch_policy_status(view.name, merge_patch(new_dump, old_dump))
        except ApiException as error:
            if error.status != 409 or attempt == retries:
                raise
            log.info("status of CacheLinkPolicy %s: conflict, retrying from a fresh read", view.name)
            board.written.pop(view.name, None)
            fresh = await kube.get_policy(view.name)
            if fresh is None:
                return False
            view = _policy_view(fresh)
            board.policies[view.name] = view
            continue
        board.written[view.name] = (dict(view.status), new_dump)
        old_valid = next((c for c in previous.conditions if c.type == VALID), None)
        new_valid = next(c for c in new.conditions if c.type == VALID)
        if problems and (
            old_valid is None
            or old_valid.status != new_valid.status
            or old_valid.message != new_valid.message
        ):
            body = {
                "apiVersion": "cachelink.io/v1alpha1",
                "kind": "CacheLinkPolicy",
                "metadata": {"name": view.name, "uid": view.uid},
            }
            try:
                await kube.post_event(body, "Warning", INVALID_POLICY, new_valid.message)
            except Exception as error:  # noqa: BLE001 - an event is best effort: its failure only logged
                log.warning("event on CacheLinkPolicy %s failed: %s", view.name, error)
        return True
    return False


async def sync(kube: PolicyKube, board: Board) -> int:
    """Bring every policy's status up to date; returns how many were written."""
    wrote = 0
    for name in sorted(board.policies):
        view = board.policies.get(name)
        if view is not None and await sync_one(kube, board, view):
            wrote += 1
    return wrote


async def run(kube: PolicyKube, board: Board, stop: asyncio.Event, settle_s: float = 0.5) -> None:
    """Until ``stop``: whenever the board changes, wait ``settle_s`` for the burst to end, then sync."""
    delay = settle_s
    while not stop.is_set():
        waiters = {asyncio.ensure_future(board.changed.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        board.changed.clear()
        try:
            await sync(kube, board)
            delay = settle_s
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure: retried on the next change or after a backoff
            log.warning("CacheLinkPolicy status pass failed: %s: %s", type(error).__name__, error)
            board.changed.set()
            delay = min(max(delay * 2, 1.0), 30.0)
