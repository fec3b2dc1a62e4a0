"""CacheLink bodies and status checks shared by the operator suite's modules."""

from __future__ import annotations

from typing import Any

from cachelink_e2e_operator import OperatorEnv

#: every CacheLink of the suite gets pools this small, so several fit on the real nodes at once
POOL = 4 << 20


def cachelink(namespace: str, name: str = "kv", **spec: Any) -> dict[str, Any]:
    """A CacheLink selecting ``app=prefill`` and ``app=decode`` pods; ``spec`` keys replace the defaults."""
    body: dict[str, Any] = {
        "prompt": {"podSelector": {"matchLabels": {"app": "prefill"}}},
        "decode": {"podSelector": {"matchLabels": {"app": "decode"}}},
        "options": {"memPoolSizeBytes": POOL},
    }
    body.update(spec)
    return {
        "apiVersion": "cachelink.io/v1alpha1",
        "kind": "CacheLink",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def node_cachelink(
    namespace: str, name: str, prompt: list[str], decode: list[str], **options: Any
) -> dict[str, Any]:
    """A CacheLink placing instances on named nodes (no pods needed)."""
    return cachelink(
        namespace,
        name,
        prompt={"nodeNames": prompt},
        decode={"nodeNames": decode},
        options={"memPoolSizeBytes": POOL, **options},
    )


def policy(
    name: str,
    team: str,
    priority: int = 0,
    defaults: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A CacheLinkPolicy for namespaces labelled ``cachelink-e2e-team=<team>``."""
    return {
        "apiVersion": "cachelink.io/v1alpha1",
        "kind": "CacheLinkPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"cachelink-e2e-team": team}},
            "priority": priority,
            "defaults": defaults or {},
            "limits": limits or {},
        },
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """The status condition of ``type_`` ({} when there is none)."""
    found = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)
    return found or {}


def ready(obj: dict[str, Any], links: int) -> bool:
    """Ready with ``links`` links, for the object's current generation."""
    status = obj.get("status") or {}
    return (
        status.get("phase") == "Ready"
        and status.get("desiredLinks") == links
        and status.get("readyLinks") == links
        and condition(obj, "Ready").get("status") == "True"
        and status.get("observedGeneration") == obj["metadata"]["generation"]
    )


def running_pods(env: OperatorEnv, namespace: str, app: str, count: int) -> list[dict[str, Any]] | None:
    """Exactly ``count`` running, not terminating pods labelled ``app``, else None."""
    pods = [
        p
        for p in env.pods(namespace, f"app={app}")
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    return pods if len(pods) == count else None
