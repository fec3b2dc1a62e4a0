"""Namespace-wide quotas of CacheLinkPolicy (``maxInstancesPerNamespace``, ``maxPoolBytesPerNamespace``).

A quota is shared by the CacheLinks of a namespace in creation order (creationTimestamp, then name, as
pods are shared): a CacheLink is within quota when what it asks for, added to what every CacheLink created
before it in its namespace asks for, stays within each selecting policy's quota. What a CacheLink asks for
is read from its spec and the namespace's pods (its members, and each side's pool bytes after the policies'
defaults), so the verdict needs no memory of earlier passes and every replica reaches the same one. A
CacheLink over quota is rejected (``PolicyViolation``) and holds no new instance; it is reconciled again
when one created before it changes or goes away.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cachelink_operator import desired, policy
from cachelink_operator.models import CacheLinkSpec, PolicyRef


@dataclass(frozen=True)
class Demand:
    """Instances and pool bytes a set of CacheLinks asks for."""

    instances: int = 0
    pool_bytes: int = 0

    def __add__(self, other: Demand) -> Demand:
        return Demand(self.instances + other.instances, self.pool_bytes + other.pool_bytes)


def has_quota(ordered: Iterable[PolicyRef]) -> bool:
    """Whether any of these policies sets a namespace-wide quota."""
    return any(
        p.spec.limits.max_instances_per_namespace is not None
        or p.spec.limits.max_pool_bytes_per_namespace is not None
        for p in ordered
    )


def demand(
    spec: CacheLinkSpec, namespace: str, pods: Iterable[desired.PodInfo], ordered: Sequence[PolicyRef]
) -> Demand:
    """What one CacheLink asks for: one instance per member of each side, each side's pool bytes."""
    merged = policy.effective_options(spec, ordered)
    total = Demand()
    for role, side_members in desired.members(spec, namespace, pods).items():
        size = policy.pool_bytes(policy.side_options(spec, role, merged))
        total += Demand(len(side_members), size * len(side_members))
    return total


def earlier(
    me: desired.CacheLinkRef, neighbours: Iterable[desired.CacheLinkRef]
) -> list[desired.CacheLinkRef]:
    """The namespace's CacheLinks created before ``me`` (those that parse)."""
    return [
        ref
        for ref in neighbours
        if ref.uid != me.uid
        and ref.namespace == me.namespace
        and ref.order < me.order
        and ref.spec is not None
    ]


def later(me: desired.CacheLinkRef, neighbours: Iterable[desired.CacheLinkRef]) -> list[str]:
    """Uids of the namespace's CacheLinks created after ``me``: the ones its change may admit or push out."""
    return [ref.uid for ref in neighbours if ref.uid != me.uid and ref.order > me.order]


def violations(
    me: desired.CacheLinkRef,
    neighbours: Iterable[desired.CacheLinkRef],
    pods: Iterable[desired.PodInfo],
    ordered: Sequence[PolicyRef],
) -> list[policy.Violation]:
    """Each selecting policy's namespace quota that ``me`` would exceed, after the ones created before it."""
    if me.spec is None or not has_quota(ordered):
        return []
    pods = list(pods)
    before = Demand()
    for ref in earlier(me, neighbours):
        assert ref.spec is not None
        before += demand(ref.spec, me.namespace, pods, ordered)
    mine = demand(me.spec, me.namespace, pods, ordered)
    found: list[policy.Violation] = []
    for pol in ordered:
        limits = pol.spec.limits
        checks = (
            (
                "maxInstancesPerNamespace",
                "instances",
                limits.max_instances_per_namespace,
                before.instances,
                mine.instances,
            ),
            (
                "maxPoolBytesPerNamespace",
                "pool bytes",
                limits.max_pool_bytes_per_namespace,
                before.pool_bytes,
                mine.pool_bytes,
            ),
        )
        for rule, unit, limit, held, asked in checks:
            if limit is not None and held + asked > limit:
                found.append(
                    policy.Violation(
                        pol.name,
                        rule,
                        f"namespace {me.namespace} would hold {held + asked} {unit}, more than {limit}"
                        f" ({held} for the CacheLinks created before this one, {asked} for this one)",
                    )
                )
    return found
