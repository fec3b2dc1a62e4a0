"""Real nodes leave nothing behind: after ``down``, after a start that failed, and after a killed run."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachelink_dev.devcluster.build import Tools
from cachelink_dev.devcluster.cluster import DevCluster
from cachelink_dev.devcluster.errors import ComponentExitedError
from cachelink_dev.realnodes import cgroups, node
from cachelink_dev.realnodes.cluster import RealNodes

pytestmark = pytest.mark.e2e

#: host paths of the node mounts that existed before (the tests must not leave new ones)
HOST_PATHS_BEFORE = {target for target in node.NODE_MOUNTS if Path(target).exists()}
#: the control plane's programs (they stay: the module's cluster outlives each test)
CONTROL_PLANE = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    cluster = DevCluster(tmp_path_factory.mktemp("lifecycle"), node_names=())
    cluster.up()
    yield cluster
    cluster.down()


def leftovers(nodes: RealNodes) -> list[str]:
    """Everything of the nodes that still exists: processes, namespaces, cgroups, mounts, host folders."""
    left = nodes.leftovers()
    data_dir = str(nodes.data_dir)
    left += [f"mount {m}" for m in node.mounts_naming(data_dir)]
    for pid, cmdline in node.processes_naming(data_dir).items():
        if Path(cmdline.split(" ", 1)[0]).name not in CONTROL_PLANE:
            left.append(f"process {pid}: {cmdline[:150]}")
    left += [f"host folder {t}" for t in node.NODE_MOUNTS if Path(t).exists() and t not in HOST_PATHS_BEFORE]
    left += [f"cgroup {p}" for p in cgroups.leftovers(nodes.prefix)]
    return left


def test_down_removes_every_process_namespace_cgroup_and_mount(
    control_plane: DevCluster, node_tools: Tools
) -> None:
    nodes = RealNodes(control_plane, ["real-z"], tools=node_tools)
    nodes.up()
    try:
        assert cgroups.leftovers(nodes.prefix), "the node's cgroupRoot exists while it runs"
        assert nodes.process("kubelet-real-z").running()
    finally:
        nodes.down()
    assert leftovers(nodes) == []


def test_sweep_removes_what_a_killed_run_left(control_plane: DevCluster, node_tools: Tools) -> None:
    nodes = RealNodes(control_plane, ["real-z"], tools=node_tools)
    nodes.up()
    # a killed run: every recorded process dies at once, nothing of it is cleaned up
    for name in ("apiproxy", "kubelet-real-z", "kube-proxy-real-z"):
        pid = nodes.process(name).pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    assert nodes.leftovers(), "the namespaces and cgroups are still there"
    found = RealNodes(control_plane, ["real-z"], tools=node_tools).sweep()
    assert any(f.startswith("netns") for f in found) and any(f.startswith("cgroup") for f in found), found
    assert leftovers(nodes) == []
    nodes.down()  # only collects the exit status of this test's own child processes


def test_a_node_that_cannot_start_names_its_component_and_leaves_nothing(
    control_plane: DevCluster, node_tools: Tools, tmp_path: Path
) -> None:
    refusing = tmp_path / "kubelet"
    refusing.write_text("#!/bin/sh\necho 'failed to run Kubelet: this runtime refuses' >&2\nexit 1\n")
    refusing.chmod(0o755)
    broken = dataclasses.replace(node_tools, paths={**node_tools.paths, "kubelet": refusing})
    nodes = RealNodes(control_plane, ["real-z"], tools=broken)
    with pytest.raises(ComponentExitedError) as failed:
        nodes.up()
    message = str(failed.value)
    assert "kubelet-real-z" in message and str(nodes.process("kubelet-real-z").log) in message
    assert "this runtime refuses" in message
    assert leftovers(nodes) == []
