"""A component process is alive only while the process recorded for it runs (cachelink_dev.devcluster.processes)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from cachelink_dev.devcluster.processes import Process


def test_a_process_that_exits_at_once_is_not_running_and_says_why(tmp_path: Path) -> None:
    process = Process("quick", tmp_path / "run", tmp_path / "quick.log")
    process.start(["sh", "-c", "echo 'this runtime refuses' >&2; exit 1"])
    deadline = time.monotonic() + 10
    while process.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process.running()
    assert "this runtime refuses" in str(process.exited_error("starting"))


def test_a_record_without_a_start_time_names_no_process(tmp_path: Path) -> None:
    # what start() records when the child exited before its start time could be read; the pid may be reused
    gone = subprocess.Popen(["true"])
    gone.wait()
    for pid in (gone.pid, os.getpid()):
        process = Process("gone", tmp_path, tmp_path / "gone.log")
        process.pid_file.write_text(json.dumps({"pid": pid, "start_time": None, "argv": ["true"]}))
        assert process.pid() is None and not process.running()


def test_a_record_of_a_live_process_names_it(tmp_path: Path) -> None:
    process = Process("sleeper", tmp_path / "run", tmp_path / "sleeper.log")
    pid = process.start(["sleep", "30"])
    try:
        assert process.pid() == pid and process.running()
    finally:
        assert process.stop(grace_s=5)
    assert not process.running()
