"""Fakes of the operator's Kubernetes writer and agent client that record what a reconcile pass does."""

from __future__ import annotations

from typing import Any

from cachelink_agent import models as agent_models
from cachelink_operator import agents, diff, reconcile
from cachelink_operator.config import Config
from kubernetes.client.exceptions import ApiException

from .helpers import UID, pod

OTHER_UID = "0b6f0d8e-9c1e-4d8a-8a55-2f1f3b0c0002"
PODS = [pod("p0", "node-a", {"app": "p"}), pod("d0", "node-b", {"app": "d"})]


class FakeKube:
    """Records every write; ``conflicts`` status patches answer 409 first."""

    def __init__(self, conflicts: int = 0, fresh: dict[str, Any] | None = None) -> None:
        self.conflicts = conflicts
        self.fresh = fresh
        self.status_patches: list[tuple[str, dict[str, Any]]] = []
        self.policy_patches: list[tuple[str, dict[str, Any]]] = []
        self.annotations: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []
        self.reads = 0

    def _maybe_conflict(self) -> None:
        if self.conflicts:
            self.conflicts -= 1
            raise ApiException(status=409, reason="Conflict")

    async def patch_status(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self._maybe_conflict()
        self.status_patches.append((name, body))

    async def patch_policy_status(self, name: str, body: dict[str, Any]) -> None:
        self._maybe_conflict()
        self.policy_patches.append((name, body))

    async def get_cachelink(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.fresh

    async def get_policy(self, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.fresh

    async def post_event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, Any]) -> None:
        self.annotations.append((name, annotations))


class FakeAgents:
    def __init__(self, instances: dict[str, list[agent_models.InstanceStatus]] | None = None) -> None:
        self.instances = instances or {}
        self.executed: list[diff.Action] = []

    async def observe(self, nodes: Any, endpoints: Any, owner: str) -> agents.Observation:
        return agents.Observation(
            {n: [i for i in self.instances.get(n, []) if i.owner == owner] for n in nodes}, {}, {}
        )

    async def execute(self, actions: list[diff.Action], endpoints: Any, timeout: int) -> list[agents.Outcome]:
        self.executed.extend(actions)
        for action in actions:
            if isinstance(action, diff.DeleteInstance):
                self.instances[action.node] = [
                    i for i in self.instances.get(action.node, []) if i.name != action.instance
                ]
        return [agents.Outcome(a) for a in actions]


def runtime(kube: FakeKube, fake_agents: FakeAgents | None = None) -> reconcile.Runtime:
    return reconcile.Runtime(Config(), kube, fake_agents or FakeAgents())  # type: ignore[arg-type]


def body(
    name: str = "cl", uid: str = UID, created: str = "2025-01-02T00:00:00Z", **extra: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": uid,
            "generation": 1,
            "creationTimestamp": created,
        },
        "spec": {
            "prompt": {"podSelector": {"matchLabels": {"app": "p"}}},
            "decode": {"podSelector": {"matchLabels": {"app": "d"}}},
        },
        **extra,
    }
