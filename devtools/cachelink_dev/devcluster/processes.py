"""Start, probe and stop the cluster's component processes, always by the process id recorded for them.

A pid file holds the process id and its kernel start time, so a later ``down`` never signals an unrelated
process that happens to reuse the id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cachelink_dev.devcluster.errors import ComponentExitedError, DevClusterError, PortInUseError

#: seconds a component gets to exit after SIGTERM before SIGKILL
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 20
#: klog errors (E0102 ...), cobra/Go failures, kwok's slog and etcd's JSON error levels
ERROR_LINE = re.compile(
    r'^[EF]\d{4} |^Error: |^panic: |^fatal error: |level=(ERROR|FATAL)|"level":"(error|fatal|panic)"'
)
#: children started by this Python process, kept so they can be reaped (and never warned about when collected)
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def check_port_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUseError` naming ``what`` if ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {host}:{port} needed by {what} is in use by another process ({exc.strerror}); "
                "stop that process, or use another --data-dir (a new one picks free ports)"
            ) from None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Error lines and the last ``lines`` lines of the latest run recorded in a log file."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    run = text[text.rfind("\n==> ") + 1 :].splitlines()[1:]
    errors = [
        line for line in run if re.match(r"^(E|F)\d{4} |.*\b(error|fatal|panic)\b", line, re.IGNORECASE)
    ]
    tail = run[-lines:]
    picked = [line for line in errors[:10] if line not in tail] + tail
    return "\n".join(line[:400] for line in picked)


def start_time(pid: int) -> str | None:
    """The kernel start time of ``pid`` (field 22 of /proc/pid/stat), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Process:
    """A component process recorded in ``<run_dir>/<name>.pid``."""

    name: str
    run_dir: Path
    log: Path

    @property
    def pid_file(self) -> Path:
        """Where the process id and start time are recorded."""
        return self.run_dir / f"{self.name}.pid"

    def pid(self) -> int | None:
        """The recorded process id if that process is still the one started, else None."""
        try:
            record = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        pid, started = int(record["pid"]), record.get("start_time")
        # no start time recorded: the process had already exited when it was started
        return pid if started is not None and start_time(pid) == started else None

    def running(self) -> bool:
        """Whether the recorded process is alive."""
        return self.pid() is not None

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        """Start ``argv`` detached (own session), appending its output to the log; returns its pid."""
        if self.running():
            raise DevClusterError(f"{self.name} is already running (pid {self.pid()}); run `down` first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as logfile:
            logfile.write(f"\n==> {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            logfile.flush()
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                    cwd=self.run_dir,
                )
            except OSError as exc:
                raise ComponentExitedError(f"cannot start {self.name} ({argv[0]}): {exc}") from exc
        _CHILDREN[proc.pid] = proc
        started = start_time(proc.pid)
        self.pid_file.write_text(json.dumps({"pid": proc.pid, "start_time": started, "argv": list(argv)}))
        return proc.pid

    def exited_error(self, doing: str) -> ComponentExitedError:
        """An error saying this component exited while ``doing``, with its log file and tail."""
        return ComponentExitedError(
            f"{self.name} exited while {doing}; log: {self.log}\n--- last lines of {self.log.name} ---\n"
            + log_tail(self.log)
        )

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float, what: str = "ready") -> None:
        """Poll ``probe`` until it is true; raise if the process exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._reap()
            if not self.running():
                raise self.exited_error(f"waiting to be {what}")
            if probe():
                return
            if time.monotonic() > deadline:
                raise ComponentExitedError(
                    f"{self.name} was not {what} within {timeout_s:.0f}s; log: {self.log}\n"
                    f"--- last lines of {self.log.name} ---\n" + log_tail(self.log)
                )
            time.sleep(0.25)

    def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        """SIGTERM the recorded process (SIGKILL after ``grace_s``); returns whether one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.running() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10
            while self.running() and time.monotonic() < kill_deadline:
                self._reap()
                time.sleep(0.1)
        self._reap()
        self.pid_file.unlink(missing_ok=True)
        return True

    def _reap(self) -> None:
        """Collect the exit status of exited children of this process, so none lingers as a zombie."""
        for pid, proc in list(_CHILDREN.items()):
            if proc.poll() is not None:
                del _CHILDREN[pid]
