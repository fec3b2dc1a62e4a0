"""Removes pool files left by processes that died without ``finalize()``.

Non-persistent pools are named ``cachelink-<cluster id>-<pid>.<device|host>``; a file whose process no
longer exists (and that this user owns) is garbage, so ``init`` sweeps its pool directory: always
the first time a process inits there, then at most every ``SWEEP_INTERVAL_S`` (a node agent running
hundreds of instances would otherwise list the whole directory at every init).
Persistent pools carry an explicit name and are never swept: they wait for adoption.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

_GENERATED = re.compile(r"^cachelink-\d+-(?P<pid>\d+)\.(device|host)$")
#: seconds between two sweeps of one directory by one process
SWEEP_INTERVAL_S = 10.0
_swept_at: dict[str, float] = {}
_swept_lock = threading.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_pools(pool_dir: str, min_interval_s: float = SWEEP_INTERVAL_S) -> list[Path]:
    """Delete generated pool files of dead processes in ``pool_dir`` (unless this process swept it less
    than ``min_interval_s`` ago); returns what was removed."""
    now = time.monotonic()
    with _swept_lock:
        last = _swept_at.get(pool_dir)
        if last is not None and now - last < min_interval_s:
            return []
        _swept_at[pool_dir] = now
    removed: list[Path] = []
    try:
        with os.scandir(pool_dir) as found:
            entries = [(entry.name, entry.path) for entry in found]
    except OSError:
        return removed
    uid = os.getuid()
    for name, path in entries:
        match = _GENERATED.match(name)
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            if os.stat(path).st_uid == uid:
                os.unlink(path)
                removed.append(Path(path))
        except OSError:
            continue
    return removed
