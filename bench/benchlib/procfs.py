"""Figures of a process read from ``/proc`` (Linux): CPU seconds, memory sizes, children, TCP listeners."""

from __future__ import annotations

import contextlib
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


def tcp_listeners(hosts: set[str], low: int, high: int) -> dict[str, str]:
    """Socket inode -> ``ip:port`` of the IPv4 TCP listeners on ``hosts`` with a port in ``[low, high]``."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "0A":  # LISTEN
            continue
        ip_hex, port_hex = fields[1].split(":")
        ip = ".".join(str(b) for b in reversed(bytes.fromhex(ip_hex)))
        port = int(port_hex, 16)
        if ip in hosts and low <= port <= high:
            found[fields[9]] = f"{ip}:{port}"
    return found


def socket_inodes(pids: list[int]) -> set[str]:
    """Inodes of the sockets these processes hold open (processes that are gone are skipped)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    return inodes


def foreign_listeners(hosts: set[str], pids: list[int], low: int, high: int) -> set[str]:
    """``ip:port`` of the listeners on ``hosts`` in ``[low, high]`` that none of ``pids`` holds."""
    listening = tcp_listeners(hosts, low, high)
    if not listening:
        return set()
    mine = socket_inodes(pids)
    return {address for inode, address in listening.items() if inode not in mine}
