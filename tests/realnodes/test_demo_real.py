"""``./dev demo``'s default, as the user runs it: the product on real nodes, workloads as real pods, a
verified KV-cache pull, and nothing left after it; ``--keep`` leaves it running until ``--down``.

An exported ``KUBECONFIG`` that points nowhere must be ignored by the demo.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cachelink_dev.devcluster.build import Tools
from cachelink_dev.realnodes.node import netns_prefix, processes_naming

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def demo(data_dir: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(data_dir / "does-not-exist.kubeconfig")}  # must be ignored
    return subprocess.run(
        [sys.executable, "-P", "-m", "cachelink.cli", "demo", "--data-dir", str(data_dir), "--layers=8", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def pids_left(data_dir: Path) -> list[str]:
    """Processes still running whose command line names the data directory."""
    return [f"{pid}: {cmdline[:200]}" for pid, cmdline in processes_naming(str(data_dir)).items()]


def namespaces_left(data_dir: Path) -> list[str]:
    """Network namespaces of the demo's real nodes still present."""
    prefix = netns_prefix(data_dir / "cluster")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line for line in listed.splitlines() if line.startswith(prefix)]


def test_demo_runs_on_real_nodes_and_leaves_nothing(
    node_tools: Tools, product_image: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "demo"
    done = demo(data_dir)
    log = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, log
    out = done.stdout
    assert "helm upgrade --install --wait" in out and "enforces Pod Security restricted" in out, log
    # every part is a container of a node's containerd; the workloads are pods on the two nodes
    assert "inference/demo-prefill" in out and "inference/demo-decode" in out, log
    assert out.count("containerd://") >= 4, log
    assert re.search(r"inference/demo-pd: phase Ready +linked/desired 1/1", out), log
    assert re.search(r"phase Ready, 1/1 links ready, Ready [\d.]+s after apply", out), log
    assert "policies: inference-defaults" in out, log
    row = next((line for line in out.splitlines() if line.startswith("demo-pd-p-")), "")
    assert re.search(
        r"\(node-a\) +demo-pd-d-\S+ \(node-b\) +Linked +tcp +\d+ +[\d.]+ +[\d.]+ +every byte", row
    ), log
    # a real model's KV cache crossed a CacheLink between two server pods, decode continued exactly
    assert re.search(r"KV cache pulled by decode: [1-9][\d.]* MiB in [\d.]+ ms over tcp", out), log
    assert "digest equal on both sides: True" in out, log
    assert "disaggregated == single process, token for token: True" in out, log
    generated = re.search(r"    generated: '(.+)'", out)
    single = re.search(r"single-process run \(one pod, same image and weights\): '(.+)'", out)
    assert generated and single and generated.group(1) == single.group(1) and generated.group(1).strip(), log
    # finalized: the agents hold no instance of it any more
    assert "finalized: CacheLink gone" in out and "node-a: 0 instances, node-b: 0 instances" in out, log
    assert "nothing of the demo runs any more" in out, log
    assert pids_left(data_dir) == [] and namespaces_left(data_dir) == []
    assert not (data_dir / "does-not-exist.kubeconfig").exists()


def test_demo_keep_then_down(node_tools: Tools, product_image: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "kept"
    try:
        done = demo(data_dir, "--keep", "--no-model")
        assert done.returncode == 0, f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-3000:]}"
        kubeconfig = data_dir / "cluster" / "kubeconfig"
        assert f"export KUBECONFIG={kubeconfig}" in done.stdout
        got = subprocess.run(
            [str(node_tools.kubectl), f"--kubeconfig={kubeconfig}", "get", "cachelinks", "-A", "--no-headers"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split()  # fmt: skip
        assert got[:6] == ["inference", "demo-pd", "Ready", "1", "1", "True"], got
        assert pids_left(data_dir) and namespaces_left(data_dir)  # the nodes and the cluster still run
    finally:
        stopped = demo(data_dir, "--down", timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    assert "real node node-a" in stopped.stdout and "etcd" in stopped.stdout, stopped.stdout
    assert pids_left(data_dir) == [] and namespaces_left(data_dir) == []
