"""Figures of a process read from ``/proc`` (Linux): CPU seconds, memory sizes, children, TCP listeners."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_bytes(pid: int, key: str = "VmRSS:") -> int:
    """A ``/proc/<pid>/status`` size (``VmRSS:``, ``VmHWM:``) in bytes (0 if absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size of a process in KiB (``/proc/<pid>/smaps_rollup``; 0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def children(pid: int) -> list[int]:
    """Process ids of the children of a process's main thread (empty if it is gone)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
