"""Peak RSS and CPU seconds of a process over one phase of a benchmark, sampled from ``/proc`` in a thread."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any

from benchlib.procfs import cpu_seconds, status_bytes
from benchlib.stats import rounded


class Sampler:
    """Peak RSS and CPU seconds of process ``pid`` while the ``with`` block runs (RSS every ``interval`` s,
    a timeline point every 4 samples)."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        #: RSS (MiB) every second
        self.timeline: list[float] = []
        self._ticks = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu0 = self.cpu = 0.0
        self.started = self.elapsed = 0.0

    def _sample(self) -> None:
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, status_bytes(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
            self._ticks += 1
            if self._ticks % 4 == 0:
                with contextlib.suppress(OSError):
                    self.timeline.append(rounded(status_bytes(self.pid) / 2**20, 1))

    def __enter__(self) -> Sampler:
        self._cpu0, self.started = cpu_seconds(self.pid), time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        with contextlib.suppress(OSError):
            self.cpu = cpu_seconds(self.pid) - self._cpu0
        self.elapsed = time.monotonic() - self.started

    def figures(self) -> dict[str, Any]:
        """Peak RSS (MiB), CPU seconds and CPU share of one core over the phase."""
        figures: dict[str, Any] = {
            "operator_peak_rss_mib": rounded(self.peak / 2**20, 1),
            "operator_cpu_s": rounded(self.cpu),
            "operator_cpu_share": rounded(self.cpu / self.elapsed, 3) if self.elapsed else 0.0,
        }
        step = max(1, math.ceil(len(self.timeline) / 60))  # at most 60 points
        figures["rss_mib_every_s" if step == 1 else f"rss_mib_every_{step}_s"] = self.timeline[::step]
        return figures
