"""Leader election on a ``coordination.k8s.io/v1`` Lease, so two replicas never act at once.

kopf's peering only freezes lower-priority operators and is not a lease. Here a replica starts kopf only
after it holds the Lease, renews it every ``renew_s``, and stops (the process exits non-zero, to be
restarted as a standby) as soon as it fails to renew before ``duration_s`` ran out. Updates carry the
Lease's ``resourceVersion``, so of two replicas racing for an expired Lease exactly one wins (409).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cachelink_operator import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseView:
    """The fields of a Lease that decide who may hold it."""

    holder: str | None
    renewed: datetime.datetime | None
    duration_s: int | None


def may_acquire(lease: LeaseView, identity: str, at: datetime.datetime) -> bool:
    """Whether ``identity`` may take or keep the Lease at time ``at``."""
    if not lease.holder or lease.holder == identity:
        return True
    if lease.renewed is None or lease.duration_s is None:
        return True
    return at > lease.renewed + datetime.timedelta(seconds=lease.duration_s)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """Acquires and renews one Lease."""

    def __init__(
        self,
        api: k8s.CoordinationV1Api,
        namespace: str,
        name: str,
        identity: str,
        duration_s: int = 15,
        renew_s: float = 5.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.duration_s, self.renew_s, self.timeout_s = duration_s, renew_s, timeout_s
        self.leading = asyncio.Event()
        self.reached_api = asyncio.Event()  # a Lease read or write got an answer: able to take over

    async def _try(self) -> bool:
        won = await asyncio.to_thread(self._try_sync)
        self.reached_api.set()
        return won

    def _try_sync(self) -> bool:
        at = _utcnow()
        spec = k8s.V1LeaseSpec(
            holder_identity=self.identity, lease_duration_seconds=self.duration_s, renew_time=at
        )
        try:
            lease: Any = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout_s
            )
        except ApiException as error:
            if error.status != 404:
                raise
            spec.acquire_time, spec.lease_transitions = at, 0
            body = k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace), spec=spec)
            try:
                self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self.timeout_s)
            except ApiException as create_error:
                if create_error.status == 409:
                    return False
                raise
            return True
        view = LeaseView(lease.spec.holder_identity, lease.spec.renew_time, lease.spec.lease_duration_seconds)
        if not may_acquire(view, self.identity, at):
            return False
        if view.holder != self.identity:
            spec.acquire_time = at
            spec.lease_transitions = (lease.spec.lease_transitions or 0) + 1
        else:
            spec.acquire_time = lease.spec.acquire_time
            spec.lease_transitions = lease.spec.lease_transitions
        body = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(
                name=self.name, namespace=self.namespace, resource_version=lease.metadata.resource_version
            ),
            spec=spec,
        )
        try:
            self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self.timeout_s
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Return once this replica holds the Lease."""
        while True:
            try:
                if await self._try():
                    break
            except (ApiException, OSError) as error:
                log.warning("leader election: %s", error)
            await asyncio.sleep(self.renew_s)
        log.info("leader election: %s holds lease %s/%s", self.identity, self.namespace, self.name)
        metrics.LEADER.set(1)
        self.leading.set()

    async def keep(self) -> None:
        """Renew until a renewal fails for longer than the lease lasts; then return (leadership lost)."""
        last = _utcnow()
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                if await self._try():
                    last = _utcnow()
                    continue
                log.error("leader election: lease %s/%s was taken over", self.namespace, self.name)
                break
            except (ApiException, OSError) as error:
                log.warning("leader election: renewal failed: %s", error)
            if (_utcnow() - last).total_seconds() > self.duration_s - self.renew_s:
                log.error("leader election: could not renew for %ss", self.duration_s)
                break
        metrics.LEADER.set(0)
        self.leading.clear()
