"""Bind mounts of per-pod folders (``mount(2)`` through libc: no ``mount`` binary in the image needed).

A folder is bound read-only, ``nosuid``, ``nodev``, ``noexec`` at the kubelet's target path: the pod can
list it and connect to its sockets (``connect`` on a socket needs no write access to the mount), and
nothing else. Sockets the agent adds to the folder later show through the bind mount at once.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_REMOUNT, _MS_BIND = 0x20, 0x1000
_MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what} {path}: {os.strerror(errno)}", path)


def _unescape(field: str) -> str:
    """A mountinfo path field: spaces, tabs, newlines and backslashes are octal escapes there."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_points() -> set[str]:
    """Every mount point of this process's mount namespace."""
    text = Path("/proc/self/mountinfo").read_text()
    return {_unescape(line.split()[4]) for line in text.splitlines() if line}


def is_mount_point(path: str | Path) -> bool:
    """True when something is mounted at ``path`` (compared as an absolute, resolved path)."""
    return str(Path(path).resolve()) in mount_points()


def bind_read_only(source: str | Path, target: str | Path) -> None:
    """Bind ``source`` at ``target`` read-only (two calls: a bind takes no flags until remounted)."""
    src, dst = str(source).encode(), str(target).encode()
    _check(_libc.mount(src, dst, None, _MS_BIND, None), "bind mount at", str(target))
    flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    try:
        _check(_libc.mount(None, dst, None, flags, None), "read-only remount of", str(target))
    except OSError:
        unmount(target)
        raise


def unmount(target: str | Path) -> None:
    """Unmount ``target`` (lazily: a pod process still inside the folder does not block the kubelet)."""
    _check(_libc.umount2(str(target).encode(), _MNT_DETACH), "unmount", str(target))
