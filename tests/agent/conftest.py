"""Fixtures that run real ``cachelink-agent`` processes on loopback with their own state/run/pool dirs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cachelink_agent import models, tokens
from cachelink_agent.client import AgentClient

T = TypeVar("T")
#: the operator's signing key of these tests; agents get only its public half
SIGNING_KEY = tokens.generate_signing_key()
METRICS_TOKEN = b"metrics-only-credential-of-the-tests-0123456789"
PROMPT_IP, DECODE_IP = "127.0.0.2", "127.0.0.3"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def engine_options(listen_ip: str, pool_bytes: int = 8 << 20, **extra: str) -> dict[str, str]:
    """What LLMConfig.generate_options() gives for a cache-manager instance listening on listen_ip."""
    options = {
        "ge.exec.deviceId": "0",
        "llm.EnableCacheManager": "1",
        "llm.EnableRemoteCacheAccessible": "1",
        "llm.listenIpInfo": f"{listen_ip}:0",
        "llm.MemPoolConfig": json.dumps({"memory_size": pool_bytes}),
        "llm.SyncKvCacheWaitTime": "2000",
    }
    options.update(extra)
    return options


class Agent:
    """One agent process (restartable on the same dirs, as a DaemonSet pod would be)."""

    def __init__(
        self,
        root: Path,
        node: str,
        host: str,
        extra: list[str],
        netns: str | None = None,
        pid1: bool = False,
    ) -> None:
        self.root, self.node, self.host, self.extra, self.netns = root, node, host, extra, netns
        self.pid1 = pid1  # PID 1 of a PID namespace of its own, as in a container
        self.state_dir, self.run_dir = root / "state", root / "run"
        self.pool_dir = Path(tempfile.mkdtemp(prefix=f"cachelink-test-{node}-", dir="/dev/shm"))
        self.verify_key_file = root / "verify.pem"
        self.verify_key_file.write_bytes(tokens.public_pem(SIGNING_KEY))
        self.metrics_token_file = root / "metrics-token"
        self.metrics_token_file.write_bytes(METRICS_TOKEN)
        self.unix = str(root / "api.sock") if netns else ""
        self.port = 0 if netns else free_port(host)
        self.url = f"unix:{self.unix}" if netns else f"http://{host}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "agent.log"

    @property
    def token(self) -> str:
        """A fresh API token for this agent's node, signed as the operator signs them."""
        return tokens.mint(SIGNING_KEY, self.node)

    def argv(self) -> list[str]:
        listen = f"unix:{self.unix}" if self.unix else f"{self.host}:{self.port}"
        argv = [
            sys.executable,
            "-P",
            "-m",
            "cachelink_agent",
            "--listen",
            listen,
            "--verify-key-file",
            str(self.verify_key_file),
            "--metrics-token-file",
            str(self.metrics_token_file),
            "--state-dir",
            str(self.state_dir),
            "--run-dir",
            str(self.run_dir),
            "--pool-dir",
            str(self.pool_dir),
            "--node-name",
            self.node,
            "--host-id",
            self.node,
            "--max-pool-bytes",
            "256Mi",
            *self.extra,
        ]
        if self.pid1:
            argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *argv]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self, wait_ready: bool = True) -> Agent:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv(), stdout=log, stderr=log, env=os.environ.copy())
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"agent {self.node} exited {self.process.returncode}:\n{self.log.read_text()}"
                )
            with contextlib.suppress(Exception):
                status, _ = self.call(lambda c: c.request("GET", "/readyz", timeout=2))
                if status == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"agent {self.node} not ready:\n{self.log.read_text()}")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def call(self, func: Callable[[AgentClient], Awaitable[T]], token: str | None = None) -> T:
        async def run() -> T:
            async with AgentClient(self.url, self.token if token is None else token, timeout=30) as client:
                return await func(client)

        return asyncio.run(run())

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        token: str | None = "",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Raw request (for malformed bodies and missing tokens); returns (status, parsed JSON or text)."""
        assert not self.unix
        request = urllib.request.Request(f"{self.url}{path}", data=body, method=method, headers=headers or {})
        if token is not None:
            request.add_header("Authorization", f"Bearer {token or self.token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw, ctype = (
                    response.status,
                    response.read(),
                    response.headers.get("Content-Type", ""),
                )
        except urllib.error.HTTPError as error:
            status, raw, ctype = error.code, error.read(), error.headers.get("Content-Type", "")
        return status, json.loads(raw) if "json" in ctype else raw.decode()

    def put_instance(
        self, name: str, cluster_id: int, role: str = "prompt", owner: str = "owner-1", **kw: Any
    ) -> models.PutResult:
        options = kw.pop("options", None) or engine_options(self.host if not self.netns else kw.pop("ip"))
        spec = models.InstanceSpec(role=role, cluster_id=cluster_id, owner=owner, options=options, **kw)  # type: ignore[arg-type]
        return self.call(lambda c: c.put_instance(name, spec))

    def instance(self, name: str) -> models.InstanceStatus:
        return self.call(lambda c: c.get_instance(name))

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        shutil.rmtree(self.pool_dir, ignore_errors=True)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Factory: ``agents("node-a", PROMPT_IP, "--in-process")`` starts an agent; all are killed afterwards."""
    started: list[Agent] = []

    def make(
        node: str,
        host: str = PROMPT_IP,
        *extra: str,
        start: bool = True,
        netns: str | None = None,
        pid1: bool = False,
    ) -> Agent:
        root = tmp_path / node
        root.mkdir(exist_ok=True)
        agent = Agent(root, node, host, list(extra), netns, pid1)
        started.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in started:
        agent.cleanup()


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
