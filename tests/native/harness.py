"""Test harness: a peer ``LLMDataDist`` in its own process, driven over a pipe."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

PEER_MAIN = Path(__file__).with_name("peer_main.py")


class PeerError(RuntimeError):
    """A snippet failed in the peer."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply['type']}: {reply['message']}\n{reply.get('traceback', '')}")
        self.type = reply["type"]
        self.status_code = reply["status_code"]
        self.message = reply["message"]


class Peer:
    """A real process hosting one LLMDataDist; ``run`` executes code there and returns ``result``."""

    def __init__(self, cwd: Path) -> None:
        env = dict(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(PEER_MAIN)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            env=env,
            text=True,
        )

    def run(self, code: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"code": textwrap.dedent(code)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer exited with {self.proc.wait()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise PeerError(reply)
        return reply["result"]

    def send_nowait(self, code: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"code": textwrap.dedent(code)}) + "\n")
        self.proc.stdin.flush()

    def read_reply(self) -> Any:
        assert self.proc.stdout is not None
        reply = json.loads(self.proc.stdout.readline())
        if not reply["ok"]:
            raise PeerError(reply)
        return reply["result"]

    def stop(self, timeout: float = 10.0) -> None:
        """Freeze the peer, and return only once every thread of it is stopped.

        ``kill`` only queues SIGSTOP: a thread that is running finishes what it is doing first, so without
        the wait a request sent right after could still be answered.
        """
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise TimeoutError(f"peer {self.proc.pid} did not stop within {timeout} s")
            time.sleep(0.005)

    def _all_threads_stopped(self) -> bool:
        tasks = Path(f"/proc/{self.proc.pid}/task")
        states = []
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        return bool(states) and all(state in ("T", "t") for state in states)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):  # a test that failed while the peer was stopped
                os.kill(self.proc.pid, signal.SIGCONT)
            with contextlib.suppress(RuntimeError, BrokenPipeError, OSError):
                self.run("dd.finalize() if 'dd' in globals() else None")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def init_code(
    role: str,
    cluster_id: int,
    *,
    listen: str | None = None,
    pool_mb: int = 64,
    extra: dict[str, str] | None = None,
    remote_accessible: bool = False,
) -> str:
    """Snippet creating ``dd`` and ``cm`` in a peer."""
    return f"""
    dd = LLMDataDist(LLMRole.{role}, {cluster_id})
    cfg = LLMConfig()
    cfg.device_id = 0
    cfg.enable_cache_manager = True
    cfg.mem_pool_cfg = '{{"memory_size": {pool_mb << 20}}}'
    cfg.host_mem_pool_cfg = '{{"memory_size": {16 << 20}}}'
    if {remote_accessible!r}:
        cfg.enable_remote_cache_accessible = True
    if {listen!r}:
        cfg.listen_ip_info = {listen!r}
    options = cfg.generate_options()
    options.update({extra or {}!r})
    dd.init(options)
    cm = dd.cache_manager
    result = ext.listen_address(dd)
    """
