"""Processes of the local stack: started detached, recorded by pid (and kernel start time), stopped by pid.

A pid file lets a later run (``cachelink demo --down``) stop what an earlier one left running, and never
signals an unrelated process that happens to reuse the id.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cachelink_dev.devcluster.processes import start_time

T = TypeVar("T")
#: the packages every child process imports (in a checkout they live in different folders)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child, ``KUBECONFIG`` never inherited.

    Children run this interpreter and import what it has installed (an inherited ``PYTHONPATH`` still
    applies for development runs); a source checkout is never added, since its ``llm_datadist`` has no
    compiled core.
    """
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def python_argv(module: str, *args: str) -> list[str]:
    """``python -P -m module args`` with this interpreter."""
    return [sys.executable, "-P", "-m", module, *args]


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll until ``predicate`` returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_free_on(port: int, hosts: Sequence[str]) -> bool:
    """Whether TCP ``port`` can be bound on every one of ``hosts``."""
    for host in hosts:
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def common_free_port(hosts: Sequence[str]) -> int:
    """A TCP port free on every one of ``hosts`` (one DaemonSet port serves all nodes)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        if port_free_on(port, hosts[1:]):
            return port
    raise RuntimeError("no port free on every node address")


class ManagedProcess:
    """A process recorded in ``pid_file``; the ``Popen`` is kept while this object started it."""

    def __init__(self, name: str, pid_file: Path, log: Path) -> None:
        self.name, self.pid_file, self.log = name, pid_file, log
        self.process: subprocess.Popen[bytes] | None = None

    def recorded_pid(self) -> int | None:
        """The recorded pid if that process still is the one started, else None."""
        try:
            record: dict[str, Any] = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        pid, started = int(record["pid"]), record.get("start_time")
        # no start time recorded: the process had already exited when it was started
        return pid if started is not None and start_time(pid) == started else None

    @property
    def running(self) -> bool:
        """The process is alive."""
        if self.process is not None:
            return self.process.poll() is None
        return self.recorded_pid() is not None

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited (None while running or when another run started it)."""
        return None if self.process is None else self.process.poll()

    def start(self, argv: Sequence[str], env: dict[str, str], cwd: Path, header: str = "start") -> None:
        """Start ``argv`` in its own session, output appended to the log, and record its pid."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            log.write(f"\n==> {header} {' '.join(argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        record = {"pid": self.process.pid, "start_time": start_time(self.process.pid), "argv": list(argv)}
        self.pid_file.write_text(json.dumps(record))

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> bool:
        """Send ``sig`` (SIGKILL after ``grace``) and wait; returns whether it was running."""
        was_running = False
        if self.process is not None:
            if self.process.poll() is None:
                was_running = True
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        else:
            pid = self.recorded_pid()
            if pid is not None:
                was_running = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + grace
                while self.recorded_pid() is not None and time.monotonic() < deadline:
                    time.sleep(0.1)
                if self.recorded_pid() is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    wait_for(lambda: self.recorded_pid() is None, 10, f"{self.name} to exit after SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return was_running
