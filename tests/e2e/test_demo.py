"""``cachelink demo`` for real: its own local cluster, the stack, a CacheLink, a verified KV-cache pull.

The demo runs as the user runs it (a subprocess of ``python -m cachelink.cli``), with an exported
``KUBECONFIG`` that points nowhere: the demo must not use it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cachelink.devcluster import ensure_tools

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def demo(data_dir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["KUBECONFIG"] = str(data_dir / "does-not-exist.kubeconfig")  # must be ignored
    return subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "cachelink.cli",
            "demo",
            "--simulated-nodes",
            "--data-dir",
            str(data_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=data_dir.parent,
        check=False,
    )


def pids_left(data_dir: Path) -> list[str]:
    """Processes still running whose command line names the data directory."""
    left = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(data_dir) in cmdline and int(proc.name) != os.getpid():
                left.append(f"{proc.name}: {cmdline[:200]}")
    return left


def test_demo_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    done = demo(data_dir)
    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr}"
    assert re.search(r"inference/demo-pd: phase Ready +linked/desired 1/1", out), out
    assert re.search(r"phase Ready, 1/1 links ready, Ready [\d.]+s after apply", out), out
    assert "policies: inference-defaults" in out
    row = next(line for line in out.splitlines() if line.startswith("demo-pd-p-node-a"))
    assert re.search(
        r"\(node-a\) +demo-pd-d-node-b-\S+ \(node-b\) +Linked +tcp +128 +[\d.]+ +[\d.]+ +every byte", row
    )
    assert "finalized: CacheLink gone" in out and "node-a: 0 instances, node-b: 0 instances" in out
    assert "nothing of the demo runs any more" in out
    assert pids_left(data_dir) == []
    assert not (data_dir / "does-not-exist.kubeconfig").exists()


def test_demo_keep_then_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "kept"
    try:
        done = demo(data_dir, "--keep")
        assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        kubeconfig = data_dir / "cluster" / "kubeconfig"
        assert f"export KUBECONFIG={kubeconfig}" in done.stdout
        kubectl = ensure_tools().kubectl
        got = subprocess.run(
            [str(kubectl), f"--kubeconfig={kubeconfig}", "get", "cachelinks", "-A", "--no-headers"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        assert got[:6] == ["inference", "demo-pd", "Ready", "1", "1", "True"], got
        assert pids_left(data_dir)  # the stack and the cluster are still running
    finally:
        stopped = demo(data_dir, "--down", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "operator" in stopped.stdout and "agent node-a" in stopped.stdout and "etcd" in stopped.stdout
    assert pids_left(data_dir) == []
