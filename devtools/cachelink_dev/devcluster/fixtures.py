"""Helpers for tests and demos on the development cluster (the pytest fixtures in tests/e2e use them)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cachelink_dev.devcluster.cluster import DevCluster

T = TypeVar("T")


@contextlib.contextmanager
def running_cluster(data_dir: Path | str, reuse: bool = False) -> Iterator[DevCluster]:
    """Start a cluster in ``data_dir``, stop it afterwards; with ``reuse`` one already running stays up."""
    cluster = DevCluster(data_dir)
    keep = reuse and cluster.status().running
    try:
        cluster.up()
        yield cluster
    finally:
        if not keep:
            cluster.down()


def wait_for(
    predicate: Callable[[], T], timeout: float = 60.0, what: str = "condition", interval: float = 0.5
) -> T:
    """Poll ``predicate`` until it returns something truthy, return that; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def get_json(cluster: DevCluster, *args: str) -> Any:
    """``kubectl get ARGS -o json``, parsed."""
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
