"""What the chart's pods do in a real container, checked on the image itself (podman + runc): the fixes
that only a container shows (uid without a passwd entry, the agent as PID 1), and that a peer in another PID
namespace is refused at the host socket (pods attach through their CSI volume)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from cachelink_agent import models, tokens
from cachelink_agent.attach import attach
from cachelink_agent.client import AgentClient

from .conftest import Containers

UID = "65532"  # the image's user, without a passwd entry

KOPF_START = """
import asyncio, getpass, kopf
from cachelink_operator.__main__ import kopf_options
from cachelink_operator.config import Config
try:
    getpass.getuser()
except KeyError as error:
    print("no passwd entry:", error)
async def main():
    stop = asyncio.get_running_loop().create_future()
    stop.set_result(True)
    tasks = await kopf.spawn_tasks(registry=kopf.OperatorRegistry(), stop_flag=stop,
                                   **kopf_options(Config(identity="cachelink-operator-0")))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
asyncio.run(main())
print("kopf started")
"""


def test_operator_starts_kopf_as_a_uid_without_passwd_entry(containers: Containers) -> None:
    done = containers.run(
        "--user",
        f"{UID}:{UID}",
        "--passwd=false",  # podman would add a passwd entry for the uid; containerd does not
        "--network=none",
        "--entrypoint",
        "python",
        containers.image,
        "-c",
        KOPF_START,
    )
    assert done.returncode == 0, done.stderr
    assert "no passwd entry" in done.stdout and "kopf started" in done.stdout


@pytest.fixture
def agent_dirs() -> tuple[Path, Path]:
    data = Path(tempfile.mkdtemp(prefix="cachelink-ctr-"))
    pool = Path(tempfile.mkdtemp(prefix="cachelink-ctr-", dir="/dev/shm"))
    for path in (data, pool):
        os.chown(path, int(UID), int(UID))
    yield data, pool
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(pool, ignore_errors=True)


def test_agent_as_pid_1_runs_workers_and_refuses_a_peer_it_cannot_see(
    containers: Containers, agent_dirs: tuple[Path, Path]
) -> None:
    data, pool = agent_dirs
    signing_key = tokens.generate_signing_key()
    (data / "verify.pem").write_bytes(tokens.public_pem(signing_key))
    os.chown(data / "verify.pem", int(UID), int(UID))
    started = containers.run(
        "--network=none", "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges",
        "-v", f"{data}:{data}", "-v", f"{pool}:{pool}", "--entrypoint", "cachelink-agent", containers.image,
        "--listen", f"unix:{data}/api.sock", "--verify-key-file", f"{data}/verify.pem",
        "--state-dir", f"{data}/state", "--run-dir", f"{data}/run", "--pool-dir", str(pool),
        "--node-name", "node-c", "--host-id", "node-c", "--max-pool-bytes", "64Mi",
        detach=True,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    name = containers.names[-1]
    assert containers.podman_out("inspect", "--format", "{{.OCIRuntime}}", name).strip() == "runc"
    deadline = time.monotonic() + 60
    while not (data / "api.sock").exists():
        assert time.monotonic() < deadline, containers.podman_out("logs", name)
        time.sleep(0.2)
    token = tokens.mint(signing_key, "node-c")
    spec = models.InstanceSpec(
        role="prompt",
        cluster_id=9,
        owner="owner-1",
        options={
            "ge.exec.deviceId": "0",
            "llm.EnableCacheManager": "1",
            "llm.listenIpInfo": "127.0.0.1:0",
            "llm.MemPoolConfig": '{"memory_size": 8388608}',
        },
        attach=models.AttachPolicy(pod_uids=["3f0c1d2e-4b5a-4c6d-8e7f-901a2b3c4d5e"]),
    )

    async def put() -> models.PutResult:
        async with AgentClient(f"unix:{data}/api.sock", token, timeout=60) as client:
            return await client.put_instance("in-container", spec)

    instance = asyncio.run(put()).instance
    top = containers.podman_out("top", name, "pid", "args")
    assert instance.state == "running", containers.podman_out("logs", name)
    assert instance.pid != 1 and "cachelink_agent.worker" in top  # a worker beside the agent, PID 1
    # this process is pid 0 to the agent (another PID namespace): the host socket refuses it; pods attach
    # through their CSI volume (tests/agent/test_csi.py; on real kubelets, tests/realnodes/test_demo_real.py)
    with pytest.raises(PermissionError, match=r"pid 0.*CSI volume"):
        attach(data / "run", "in-container")
