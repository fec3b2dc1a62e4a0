"""Pool files of dead processes are swept at init; one process lists a directory at most every
``SWEEP_INTERVAL_S`` (an agent starting hundreds of instances must not list it at every init)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llm_datadist.ext import pool_sweep


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_a_dead_process_pool_is_swept_then_the_directory_rests(tmp_path: Path) -> None:
    dead = tmp_path / f"cachelink-1-{_dead_pid()}.device"
    dead.write_bytes(b"x")
    named = tmp_path / "persistent-pool"  # explicitly named pools wait for adoption: never swept
    named.write_bytes(b"x")
    assert pool_sweep.sweep_dead_pools(str(tmp_path)) == [dead]
    again = tmp_path / f"cachelink-2-{_dead_pid()}.host"
    again.write_bytes(b"x")
    assert pool_sweep.sweep_dead_pools(str(tmp_path)) == []  # swept a moment ago: not listed again
    assert again.exists()
    assert pool_sweep.sweep_dead_pools(str(tmp_path), min_interval_s=0) == [again]
    assert named.exists()
