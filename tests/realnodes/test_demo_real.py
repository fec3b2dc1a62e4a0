"""``./dev demo``'s default: the product on real nodes, workloads as real pods, and nothing left after it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cachelink.devcluster.build import Tools
from cachelink.realnodes.node import netns_prefix

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_on_real_nodes_and_leaves_nothing(
    node_tools: Tools, product_image: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-P", "-m", "cachelink.cli", "demo", "--data-dir", str(data_dir), "--layers=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    log = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, log
    out = done.stdout
    assert "helm upgrade --install --wait" in out and "enforces Pod Security restricted" in out, log
    # every part is a container of a node's containerd; the workloads are pods on the two nodes
    assert "inference/demo-prefill" in out and "inference/demo-decode" in out, log
    assert out.count("containerd://") >= 4, log
    assert "Linked  tcp" in out and "every byte" in out, log
    assert "finalized: CacheLink gone" in out and "nothing of the demo runs any more" in out, log
    prefix = netns_prefix(data_dir / "cluster")
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert prefix not in namespaces
