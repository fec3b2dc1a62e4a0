"""A node's ``cgroupRoot`` on this cgroup v1 host: made in every controller, emptied and removed at stop.

The kubelet (cgroupfs driver) puts every pod and container under its ``cgroupRoot``, so killing what is
in that tree and removing it depth-first leaves nothing of the node's containers, also after a killed run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
KILL_TIMEOUT_S = 15.0


def controllers() -> list[Path]:
    """Mount points of the v1 hierarchies (``cpu``, ``memory``, ``name=systemd``, ...)."""
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, target, fstype, *_ = line.split()
        if fstype == "cgroup" and target.startswith(str(CGROUP_FS)):
            mounts.append(Path(target))
    return mounts


def create(root: str) -> None:
    """Make ``root`` (``/name``) in every hierarchy (the kubelet expects it there)."""
    for hierarchy in controllers():
        path = hierarchy / root.lstrip("/")
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":  # a new cpuset has no cpus or mems until given its parent's
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if not (path / knob).read_text().strip():
                    (path / knob).write_text((hierarchy / knob).read_text())


def _folders(tree: Path) -> list[Path]:
    """Every cgroup under ``tree``, deepest first (``os.walk`` skips ones removed meanwhile)."""
    return [Path(folder) for folder, _, _ in os.walk(tree, topdown=False)]


def _pids(tree: Path) -> set[int]:
    pids: set[int] = set()
    for folder in _folders(tree):
        with contextlib.suppress(OSError):  # removed meanwhile (the runtime cleans up too)
            pids.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
    return pids


def remove(root: str) -> bool:
    """Kill every process under ``root`` in every hierarchy and remove its cgroups; returns if any existed."""
    trees = [hierarchy / root.lstrip("/") for hierarchy in controllers()]
    trees = [tree for tree in trees if tree.is_dir()]
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while (pids := set().union(*(_pids(tree) for tree in trees)) if trees else set()) and (
        time.monotonic() < deadline
    ):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for tree in trees:
        for folder in _folders(tree):  # the tree itself last
            with contextlib.suppress(OSError):
                folder.rmdir()
    return bool(trees)


def leftovers(prefix: str) -> list[Path]:
    """Cgroups at the top of any hierarchy whose name starts with ``prefix``."""
    return [path for hierarchy in controllers() for path in hierarchy.glob(f"{prefix}-*") if path.is_dir()]
