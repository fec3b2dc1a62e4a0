"""A real node's containerd in its own network and mount namespaces (opt-in: root and the real-node tools
and images built by ``cachelink real-nodes build``): per-node host paths, images loaded, and nothing left
after stop, after a failed start, or after a killed run (the sweep)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cachelink_dev.devcluster.build import cached_tools
from cachelink_dev.devcluster.errors import ComponentExitedError
from cachelink_dev.realnodes import node as rn
from cachelink_dev.realnodes.images import PAUSE_REF, Podman


@pytest.fixture
def make_node(podman: Podman, tmp_path: Path, real_node_part_missing):
    tools = cached_tools(real_nodes=True)
    if tools is None:
        real_node_part_missing("the real-node tools are not built: run `cachelink real-nodes build` (root)")
    if podman.image_id(PAUSE_REF) is None:
        real_node_part_missing("no pause image: run `cachelink real-nodes build` (root)")
    made: list[rn.ContainerdNode] = []

    def make(name: str, containerd: Path | None = None) -> rn.ContainerdNode:
        node = rn.ContainerdNode(name, tmp_path, containerd or tools["containerd"], tools["ctr"], PAUSE_REF)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()
    rn.sweep(tmp_path)


#: host paths of the node mounts that existed before these tests (the tests must not leave new ones)
HOST_PATHS_BEFORE = {target for target in rn.NODE_MOUNTS if Path(target).exists()}


def _leftovers(root: Path, netns: str) -> list[str]:
    left = [f"netns {netns}"] if netns in rn.namespaces(netns.rsplit("-", 1)[0]) else []
    left += [f"mount {m}" for m in rn.mounts_naming(str(root))]
    left += [f"process {pid}: {cmdline[:120]}" for pid, cmdline in rn.processes_naming(str(root)).items()]
    left += [f"host folder {t}" for t in rn.NODE_MOUNTS if Path(t).exists() and t not in HOST_PATHS_BEFORE]
    return left


def test_containerd_runs_in_the_nodes_namespaces_and_leaves_nothing(make_node, podman: Podman) -> None:
    node = make_node("node-t")
    node.start()
    pid = int(node.pid_file.read_text())
    assert Path(f"/proc/{pid}/ns/net").resolve() != Path("/proc/self/ns/net").resolve()
    assert Path(f"/proc/{pid}/ns/mnt").readlink() != Path("/proc/self/ns/mnt").readlink()
    # the kubelet's root and the chart's host paths are the node's own folders
    subprocess.run(["nsenter", "-t", str(pid), "-m", "touch", "/var/lib/kubelet/seen-by-node-t"], check=True)
    assert (node.root / "mounts" / "kubelet" / "seen-by-node-t").is_file()
    assert not Path("/var/lib/kubelet/seen-by-node-t").exists()
    node.load_image(podman.env(), PAUSE_REF)
    assert PAUSE_REF in node.ctr("images", "ls", "-q")
    assert node.ctr("tasks", "ls", "-q").strip() == ""
    node.stop()
    assert _leftovers(node.root, node.netns) == []


def test_a_node_that_cannot_start_names_its_log_and_leaves_nothing(make_node) -> None:
    node = make_node("node-bad", containerd=Path("/bin/false"))
    with pytest.raises(
        ComponentExitedError, match=r"containerd of node node-bad exited .*log: .*containerd.log"
    ):
        node.start()
    assert _leftovers(node.root, node.netns) == []


def test_the_sweep_removes_what_a_killed_run_left(make_node, tmp_path: Path) -> None:
    node = make_node("node-k")
    node.start()
    node.pid_file.unlink()  # as if the run that started it was killed
    assert rn.sweep(tmp_path) == [node.netns]
    assert _leftovers(node.root, node.netns) == []
