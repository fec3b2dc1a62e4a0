"""What a real container showed: the operator starts under a uid without a passwd entry, and a standby
replica is ready (a 2-replica Deployment becomes Available)."""

from __future__ import annotations

import asyncio
import datetime
import getpass
from typing import Any

import aiohttp
import kopf
import pytest
from cachelink_operator import __main__ as entry
from cachelink_operator import leader
from cachelink_operator.config import Config
from kubernetes import client as k8s


def _no_passwd_entry() -> str:
    raise KeyError("getpwuid(): uid not found: 65532")  # what getpass.getuser() raises in the image


def test_kopf_starts_without_a_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME", "POD_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(getpass, "getuser", _no_passwd_entry)

    async def spawn() -> None:
        stop: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        stop.set_result(True)
        with pytest.raises(KeyError, match="uid not found"):  # kopf's own identity: the image's crash
            await kopf.spawn_tasks(registry=kopf.OperatorRegistry(), stop_flag=stop, clusterwide=True)
        options = entry.kopf_options(Config(identity="cachelink-operator-7d9f-abcde"))
        tasks = await kopf.spawn_tasks(registry=kopf.OperatorRegistry(), stop_flag=stop, **options)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(spawn())


class _LeaseApi:
    """A Lease held, and renewed just now, by another replica."""

    def __init__(self, holder: str) -> None:
        self.holder = holder

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> k8s.V1Lease:
        return k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, resource_version="1"),
            spec=k8s.V1LeaseSpec(
                holder_identity=self.holder,
                lease_duration_seconds=15,
                renew_time=datetime.datetime.now(datetime.UTC),
            ),
        )

    def create_namespaced_lease(self, *_: Any, **__: Any) -> None:
        raise AssertionError("the Lease exists")

    def replace_namespaced_lease(self, *_: Any, **__: Any) -> None:
        pass


async def _readyz(elector: leader.LeaderElector) -> tuple[int, str]:
    runner = await entry._health(0, "127.0.0.1", elector)
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as r:
            return r.status, await r.text()
    finally:
        await runner.cleanup()


def test_a_standby_replica_is_ready_and_says_so() -> None:
    async def scenario() -> list[tuple[int, str]]:
        api: Any = _LeaseApi("cachelink-operator-other")
        elector = leader.LeaderElector(api, "cachelink-system", "cachelink-operator", "me", 15, 0.01)
        before = await _readyz(elector)  # the API was not reached yet
        assert not await elector._try()  # the other replica holds the Lease
        standby = await _readyz(elector)
        api.holder = "me"
        assert await elector._try()
        elector.leading.set()
        return [before, standby, await _readyz(elector)]

    before, standby, leading = asyncio.run(scenario())
    assert before[0] == 503
    assert standby == (200, "standby")
    assert leading == (200, "leading")
