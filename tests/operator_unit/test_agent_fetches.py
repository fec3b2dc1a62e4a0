"""Reconciles observing a node at the same time share one node-info request to its agent, and each asks
only for its own CacheLink's instances (a real HTTP server)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from cachelink_agent import models as agent_models
from cachelink_agent import tokens
from cachelink_operator import agents, diff

NODE = agent_models.NodeInfo(
    node_name="node-a",
    mode="in-process",
    interfaces=[],
    candidate_addresses=[],
    shm_path="/dev/shm",
    shm_capacity_bytes=1,
    shm_free_bytes=1,
    pool_budget_bytes=1,
    pool_reserved_bytes=0,
    instances=0,
    version="test",
).model_dump(mode="json")


async def _serve(counts: dict[str, int], delay: float) -> tuple[web.AppRunner, str]:
    async def instances(request: web.Request) -> web.Response:
        for owner in request.query.getall("owner", ["<all>"]):
            counts[owner] = counts.get(owner, 0) + 1
        return web.json_response({"instances": []})

    async def node(_: web.Request) -> web.Response:
        counts["GET /v1/node"] = counts.get("GET /v1/node", 0) + 1
        await asyncio.sleep(delay)
        return web.json_response(NODE)

    async def delete(_: web.Request) -> web.Response:
        return web.json_response({"name": "x", "deleted": True})

    app = web.Application()
    app.router.add_get("/v1/instances", instances)
    app.router.add_get("/v1/node", node)
    app.router.add_delete("/v1/instances/{name}", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_concurrent_observers_share_one_fetch_and_a_change_forces_a_new_one() -> None:
    async def scenario() -> dict[str, Any]:
        counts: dict[str, int] = {}
        runner, url = await _serve(counts, delay=0.3)
        client = agents.Agents(tokens.generate_signing_key(), 5.0)
        endpoints = {"node-a": agents.Endpoint("node-a", url, "127.0.0.1")}
        try:
            seen = await asyncio.gather(
                *(client.observe(["node-a"], endpoints, f"uid-{i}") for i in range(50))
            )
            shared = counts.pop("GET /v1/node")
            assert all(s.nodes["node-a"].node_name == "node-a" and not s.unreachable for s in seen)
            asked = dict(counts)
            # a call that changes the node while a fetch is in flight: later observers fetch anew
            first = asyncio.ensure_future(client.observe(["node-a"], endpoints, "uid-0"))
            await asyncio.sleep(0.05)
            await client.execute([diff.DeleteInstance("node-a", "x")], endpoints, 1000)
            await asyncio.gather(first, client.observe(["node-a"], endpoints, "uid-1"))
            after_change = counts.pop("GET /v1/node")
            # a cancelled observer does not take the shared fetch down with it
            victim = asyncio.ensure_future(client.observe(["node-a"], endpoints, "uid-2"))
            survivor = asyncio.ensure_future(client.observe(["node-a"], endpoints, "uid-3"))
            await asyncio.sleep(0.05)
            victim.cancel()
            kept = await survivor
            return {
                "shared": shared,
                "owners_asked": asked,
                "after_change": after_change,
                "survivor_ok": not kept.unreachable,
            }
        finally:
            await client.close()
            await runner.cleanup()

    got = asyncio.run(scenario())
    assert got == {
        "shared": 1,
        "owners_asked": {f"uid-{i}": 1 for i in range(50)},  # each its own, never the whole node
        "after_change": 2,
        "survivor_ok": True,
    }
