"""A prompt workload writes a KV cache, a decode workload pulls all of it and verifies every byte.

Both are processes of :mod:`cachelink.kvdemo.workload` attached to their instances' sockets, the
way an inference engine in a pod on each node would be.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from cachelink.kvdemo.kvcache import KvShape
from cachelink_dev.procs import child_env, python_argv


@dataclass(frozen=True)
class Transfer:
    """What the decode workload pulled and verified."""

    bytes: int
    seconds: float
    verified: bool
    tensors: int

    @property
    def gbps(self) -> float:
        """Gigabytes per second of the pull."""
        return self.bytes / self.seconds / 1e9 if self.seconds else 0.0


Wrap = Callable[[list[str]], list[str]]


def _as_is(argv: list[str]) -> list[str]:
    return argv


def _workload(*args: str) -> list[str]:
    return python_argv("cachelink.kvdemo.workload", *args)


def transfer(
    prompt_socket: str,
    decode_socket: str,
    prompt_cluster_id: int,
    shape: KvShape,
    log: Callable[[str], None] = print,
    prompt_node: Wrap = _as_is,
    decode_node: Wrap = _as_is,
) -> Transfer:
    """Write the KV cache through ``prompt_socket``, pull and verify it through ``decode_socket``;
    ``prompt_node``/``decode_node`` wrap each command to run where a pod on that node would see the
    sockets (the demo runs them in the workload pods with ``kubectl exec``)."""
    shape_args = [f"--layers={shape.layers}", f"--blocks={shape.blocks}"]
    writer = subprocess.Popen(
        prompt_node(_workload("write", prompt_socket, *shape_args)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    try:
        line = writer.stdout.readline()
        if not line:
            _out, err = writer.communicate(timeout=30)
            raise RuntimeError(f"the prompt workload failed:\n{err}")
        wrote = json.loads(line)
        log(
            f"==> prompt workload wrote the KV cache: BlocksCacheKey({wrote['cluster_id']}, 0), "
            f"{wrote['bytes'] / 2**20:.0f} MiB"
        )
        log("==> decode workload pulls every block (shuffled order) and verifies every byte")
        reader = subprocess.run(
            decode_node(
                _workload("pull", decode_socket, f"--peer-cluster-id={prompt_cluster_id}", *shape_args)
            ),
            capture_output=True,
            text=True,
            timeout=180,
            env=child_env(),
            check=False,
        )
        if not reader.stdout.strip():
            raise RuntimeError(f"the decode workload failed ({reader.returncode}):\n{reader.stderr}")
        pulled = json.loads(reader.stdout.strip().splitlines()[-1])
    finally:
        with contextlib.suppress(OSError):
            writer.stdin.write("done\n")
            writer.stdin.close()
        try:
            writer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
    return Transfer(pulled["bytes"], pulled["seconds"], not pulled["mismatched_tensors"], pulled["tensors"])
