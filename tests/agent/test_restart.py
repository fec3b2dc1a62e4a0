"""No lost state: SIGKILL of the agent or of a worker keeps instances, links and cache bytes."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest
from cachelink_agent import models
from cachelink_agent.attach import attach

from llm_datadist import BlocksCacheKey, CacheDesc, CacheKey, DataType

from .conftest import DECODE_IP, PROMPT_IP, engine_options, wait_for

DESC = CacheDesc(4, [8, 4096], DataType.DT_FLOAT16)
SLOTS = CacheDesc(2, [2, 2048], DataType.DT_INT32)


def _snapshot(manager) -> dict[int, list[bytes]]:
    return {cache.cache_id: [t.tobytes() for t in cache.tensors()] for cache, _keys in manager.caches()}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["worker", "in-process"])
def test_sigkill_and_restart_restores_everything(agents, mode) -> None:
    extra = ("--in-process",) if mode == "in-process" else ()
    prompt = agents("node-p", PROMPT_IP, *extra)
    decode = agents("node-d", DECODE_IP, *extra)
    address = prompt.put_instance("prefill", 1).instance.listen_address
    decode.put_instance("decode", 2, role="decoder")
    decode.call(lambda c: c.put_link("decode", 1, models.LinkSpec(remote_address=address)))

    with attach(prompt.run_dir, "prefill", lease_seconds=60) as pm:
        blocks = pm.allocate_blocks_cache(DESC, BlocksCacheKey(1, 0))
        for tensor in blocks.tensors():
            tensor[:] = np.arange(tensor.size, dtype=np.float16).reshape(tensor.shape)
        keyed = pm.allocate_cache(SLOTS, [CacheKey(1, req_id=5), CacheKey(1, req_id=6)])
        for index, tensor in enumerate(keyed.tensors()):
            tensor[:] = index + 1
        before = _snapshot(pm)
        pm.detach()  # keep the lease: the caches must outlive the agent
    before_incarnation = prompt.instance("prefill").incarnation

    for agent in (prompt, decode):
        assert agent.kill(signal.SIGKILL) == -signal.SIGKILL
    for agent in (prompt, decode):
        agent.start()

    status = prompt.instance("prefill")
    assert status.state == "running" and status.listen_address == address  # peers keep their address
    assert status.incarnation != before_incarnation and status.caches == 2
    link = wait_for(
        lambda: next((x for x in decode.instance("decode").links if x.state == "linked"), None),
        15,
        "decode's link to come back",
    )
    assert link.remote_cluster_id == 1
    with attach(prompt.run_dir, "prefill") as pm, attach(decode.run_dir, "decode") as dm:
        assert _snapshot(pm) == before
        keys = {cache.cache_id: keys for cache, keys in pm.caches()}
        assert sorted(k.req_id for k in keys[keyed.cache_id]) == [5, 6]
        dst = dm.allocate_blocks_cache(DESC, BlocksCacheKey(2, 0))
        dm.pull_blocks(BlocksCacheKey(1, 0), dst, [0, 1, 2], [5, 6, 7])
        assert dst.numpy(3)[5:8].tobytes() == blocks_bytes(before, 3)


def blocks_bytes(before: dict[int, list[bytes]], tensor: int) -> bytes:
    raw = np.frombuffer(next(iter(before.values()))[tensor], dtype=np.float16).reshape(DESC.shape)
    return raw[0:3].tobytes()


@pytest.mark.slow
def test_dead_worker_is_restarted_with_its_pool(agents) -> None:
    agent = agents("node-w", PROMPT_IP, "--restart-backoff-max", "1")
    first = agent.put_instance("solo", 3).instance
    with attach(agent.run_dir, "solo", lease_seconds=60) as manager:
        cache = manager.allocate_blocks_cache(DESC, BlocksCacheKey(3, 0))
        cache.numpy(0)[:] = 42
        manager.detach()
    os.kill(first.pid, signal.SIGKILL)
    restarted = wait_for(
        lambda: (s := agent.instance("solo")).state == "running" and s.restarts == 1 and s,
        20,
        "the worker to be restarted",
    )
    assert restarted.pid != first.pid and restarted.listen_address == first.listen_address
    with attach(agent.run_dir, "solo") as manager:
        [(adopted, _keys)] = manager.caches()
        assert (adopted.numpy(0) == 42).all()
    assert "cachelink_agent_worker_restarts_total 1.0" in agent.call(lambda c: c.metrics())


@pytest.mark.slow
def test_sigterm_stops_without_finalizing(agents) -> None:
    agent = agents("node-t", PROMPT_IP)
    agent.put_instance("keep", 4)
    assert agent.kill(signal.SIGTERM) == 0
    assert sorted(p.suffix for p in agent.pool_dir.iterdir()) == [".device", ".index"]
    agent.start()
    assert agent.instance("keep").state == "running"


def test_instances_created_concurrently_all_survive_a_sigkill(agents) -> None:
    """Concurrent changes share state-file writes; each PUT still answers only once its change is on disk."""
    agent = agents("node-k", PROMPT_IP, "--in-process")
    names = [f"burst-{i}" for i in range(12)]

    def put(client, name: str, cluster_id: int):  # type: ignore[no-untyped-def]
        spec = models.InstanceSpec(
            role="prompt", cluster_id=cluster_id, owner="uid-burst", options=engine_options(PROMPT_IP)
        )
        return client.put_instance(name, spec)

    agent.call(lambda c: asyncio.gather(*(put(c, n, i + 1) for i, n in enumerate(names))))
    assert agent.kill(signal.SIGKILL) == -signal.SIGKILL
    agent.start()
    assert agent.call(lambda c: c.get_owners()) == {"uid-burst": sorted(names)}
    assert all(agent.instance(n).state == "running" for n in names)


@pytest.mark.slow
def test_worker_mode_works_when_the_agent_is_pid_1(agents) -> None:
    """In a container the agent is PID 1: a worker must not take ``getppid() == 1`` for a dead agent."""
    agent = agents("node-pid1", PROMPT_IP, pid1=True)
    created = agent.put_instance("in-container", 5).instance
    assert created.state == "running" and created.pid not in (0, 1)  # a worker, not the agent
    with attach(agent.run_dir, "in-container", lease_seconds=60) as manager:
        cache = manager.allocate_blocks_cache(DESC, BlocksCacheKey(5, 0))
        cache.numpy(0)[:] = 7
        assert (cache.numpy(0) == 7).all()
    status = agent.instance("in-container")
    assert status.state == "running" and status.restarts == 0 and status.pid == created.pid
