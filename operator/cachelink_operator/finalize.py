"""Deletion: finalize every instance of a CacheLink through the agents, bounded in time.

The agent's DELETE unlinks an instance and finalizes it. Nodes whose agent does not answer keep the
finalizer until ``finalizeTimeoutSeconds`` (spec or policy) has passed since deletion was requested;
then it is released with a Warning event naming them, and the agents' owner TTL cleans up later.
Once the instances are gone, the operator's annotations are removed from the pods that name the
CacheLink.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from cachelink_operator import diff, events, policy, reconcile, timestamps
from cachelink_operator.models import CacheLinkSpec, CacheLinkStatus


async def finalize(rt: reconcile.Runtime, body: Mapping[str, Any], world: reconcile.World) -> None:
    """Return when everything is finalized (or given up on); raise ``TemporaryError`` to retry."""
    meta = body["metadata"]
    previous = CacheLinkStatus.model_validate(body.get("status") or {})
    try:
        spec = CacheLinkSpec.model_validate(body.get("spec") or {})
        timeout = policy.effective_options(spec, policy.selecting(world.policies, world.namespace_labels))
        limit_s = float(timeout.finalize_timeout_seconds or 300)
    except ValueError:
        limit_s = float(policy.BUILTIN_DEFAULTS.finalize_timeout_seconds or 300)
    nodes = {i.node for i in previous.instances if i.node} | set(world.endpoints)
    seen = await rt.agents.observe(nodes, world.endpoints, meta["uid"])
    actions: list[diff.Action] = [
        diff.DeleteInstance(node, inst.name)
        for node, instances in sorted(seen.instances.items())
        for inst in instances
        if inst.owner == meta["uid"]
    ]
    outcomes = await rt.agents.execute(actions, world.endpoints, policy.LINK_TIMEOUT_MS)
    failed = [o for o in outcomes if not o.ok]
    pending = {i.node for i in previous.instances if i.node in seen.unreachable}
    if not failed and not pending:
        # the instances are gone: so are the pods' annotations naming them
        await reconcile.unannotate(rt, meta["namespace"], meta["name"], world.pods, set())
        events.normal(body, events.FINALIZED, f"{len(actions)} instances finalized")
        return
    requested = meta.get("deletionTimestamp")
    waited = timestamps.age_seconds(requested) if requested else 0.0
    problems = sorted(
        {*(f"{o.action.node}: {o.error}" for o in failed), *(f"{n}: {seen.unreachable[n]}" for n in pending)}
    )
    if waited >= limit_s:
        events.warning(
            body,
            events.FINALIZE_TIMEOUT,
            f"released after {limit_s:.0f}s without finalizing on: {'; '.join(problems)[:800]}",
        )
        return
    raise kopf.TemporaryError(
        f"waiting for agents: {'; '.join(problems)}", delay=min(10.0, max(1.0, limit_s - waited))
    )
