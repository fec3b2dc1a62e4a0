"""A new CacheLink links in one reconcile pass: the instances PUT answered with are planned on at once,
so reaching Ready costs one status write, not two (and the links follow only instances that came up)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cachelink_agent import models as agent_models
from cachelink_operator import agents, diff, reconcile
from cachelink_operator.models import CacheLinkStatus

from .fakes import PODS, FakeAgents, FakeKube, body, runtime

pytestmark = pytest.mark.usefixtures("posted_warnings")

ENDPOINTS = {
    node: agents.Endpoint(node, f"http://{ip}:1", ip)
    for node, ip in (("node-a", "127.0.0.2"), ("node-b", "127.0.0.3"))
}


class AnsweringAgents(FakeAgents):
    """Agents whose PUTs answer with the instance they started (as the real agent does), unless the
    instance is named in ``failing``."""

    def __init__(self, failing: set[str] | None = None) -> None:
        super().__init__()
        self.failing = failing or set()

    async def execute(self, actions: list[diff.Action], endpoints: Any, timeout: int) -> list[agents.Outcome]:
        self.executed.extend(actions)
        outcomes = []
        for action in actions:
            if isinstance(action, diff.PutInstance) and action.instance in self.failing:
                outcomes.append(agents.Outcome(action, "HTTP 503: init failed", 503))
            elif isinstance(action, diff.PutInstance):
                started = _running(action)
                self.instances.setdefault(action.node, []).append(started)
                outcomes.append(
                    agents.Outcome(
                        action,
                        result=agent_models.PutResult(
                            name=action.instance, action="created", instance=started
                        ),
                    )
                )
            elif isinstance(action, diff.PutLink):
                link = agent_models.LinkStatus(
                    remote_cluster_id=action.remote_cluster_id,
                    address=action.spec.remote_address,
                    state="linked",
                    data_path="shm",
                    last_status="LLM_SUCCESS",
                )
                outcomes.append(
                    agents.Outcome(
                        action,
                        result=agent_models.PutResult(name=action.instance, action="linked", link=link),
                    )
                )
            else:
                outcomes.append(agents.Outcome(action))
        return outcomes


def _running(action: diff.PutInstance) -> agent_models.InstanceStatus:
    spec = action.spec
    return agent_models.InstanceStatus(
        name=action.instance,
        role=spec.role,
        cluster_id=spec.cluster_id,
        owner=spec.owner,
        mode="in-process",
        state="running",
        incarnation=1,
        listen_address=spec.options.get("llm.listenIpInfo", ""),
        options=agent_models.redact_options(spec.options),
        options_sha256=agent_models.options_digest(spec.options),
    )


def _pass(fake: AnsweringAgents, kube: FakeKube) -> None:
    world = reconcile.World(PODS, ENDPOINTS, [], {})
    asyncio.run(reconcile.reconcile(runtime(kube, fake), body(), world))


def test_instances_and_their_link_in_one_pass_and_one_status_write() -> None:
    kube, fake = FakeKube(), AnsweringAgents()
    _pass(fake, kube)
    assert [type(a).__name__ for a in fake.executed] == ["PutInstance", "PutInstance", "PutLink"]
    ((_, patch),) = kube.status_patches
    status = CacheLinkStatus.model_validate(patch)
    assert [i.state for i in status.instances] == ["Initialized", "Initialized"]
    assert status.linked_links == 1 and status.links[0].state == "Linked"
    assert status.phase == "Ready" and status.links[0].data_path == "shm"


def test_no_link_is_tried_when_an_instance_did_not_come_up() -> None:
    kube, fake = FakeKube(), AnsweringAgents()
    fake.failing = {next(a.instance for a in _planned_puts())}
    _pass(fake, kube)
    assert [type(a).__name__ for a in fake.executed] == ["PutInstance", "PutInstance"]
    status = CacheLinkStatus.model_validate(kube.status_patches[-1][1])
    assert sorted(i.state for i in status.instances) == ["Failed", "Pending"]
    assert status.linked_links == 0


def _planned_puts() -> list[diff.PutInstance]:
    fake = AnsweringAgents()
    _pass(fake, FakeKube())
    return [a for a in fake.executed if isinstance(a, diff.PutInstance)]
