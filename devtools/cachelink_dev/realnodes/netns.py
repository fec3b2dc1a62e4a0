"""Calls made from inside a network namespace (``setns`` is per thread; a socket keeps its namespace)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def call_in_netns(path: str, func: Callable[[], T], timeout: float = 120.0) -> T:
    """Run ``func`` in a fresh thread that entered the namespace at ``path``; its result or its error.

    The thread ends with the call, so this process's other threads stay where they were."""
    with ThreadPoolExecutor(1, "in-netns", initializer=enter_netns, initargs=(path,)) as pool:
        return pool.submit(func).result(timeout=timeout)
