"""Removes pool files left by processes that died without ``finalize()``.

Non-persistent pools are named ``cachelink-<cluster id>-<pid>.<device|host>``; a file whose process no
longer exists (and that this user owns) is garbage, so every ``init`` sweeps its pool directory.
Persistent pools carry an explicit name and are never swept: they wait for adoption.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_GENERATED = re.compile(r"^cachelink-\d+-(?P<pid>\d+)\.(device|host)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_pools(pool_dir: str) -> list[Path]:
    """Delete generated pool files of dead processes in ``pool_dir``; returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(pool_dir).iterdir())
    except OSError:
        return removed
    uid = os.getuid()
    for path in entries:
        match = _GENERATED.match(path.name)
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            if path.stat().st_uid == uid:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed
