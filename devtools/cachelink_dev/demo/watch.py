"""Following a CacheLink: is it Ready, and a progress line whenever its phase or link counts change."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cachelink_dev.procs import wait_for
from cachelink_dev.release.kube import Kube

CACHELINK = "cachelinks.cachelink.io"
Log = Callable[[str], None]


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of type ``kind`` (empty if absent)."""
    found: dict[str, Any] = next(
        (c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == kind), {}
    )
    return found


def is_ready(obj: dict[str, Any]) -> bool:
    """Phase Ready, every desired link ready, for the current generation."""
    status = obj.get("status") or {}
    return (
        status.get("phase") == "Ready"
        and status.get("desiredLinks", 0) > 0
        and status.get("readyLinks") == status.get("desiredLinks")
        and condition(obj, "Ready").get("status") == "True"
        and status.get("observedGeneration") == obj["metadata"]["generation"]
    )


def why_not_ready(obj: dict[str, Any]) -> str:
    """The Ready condition's message and the first link or instance error, for a progress line."""
    status = obj.get("status") or {}
    parts = [condition(obj, "Ready").get("message") or ""]
    for item in [*status.get("links", []), *status.get("instances", [])]:
        if item.get("lastError"):
            parts.append(f"{item.get('name') or item.get('decode')}: {item['lastError']}")
            break
    text = "; ".join(p for p in parts if p)
    return f"  - {text[:200]}" if text else ""


def progress_line(obj: dict[str, Any] | None) -> str:
    """``phase Ready  linked/desired 1/1  ready 1`` (and why not Ready, or ``gone``)."""
    if obj is None:
        return "gone"
    status = obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    line = (
        f"phase {phase:<10} linked/desired {status.get('linkedLinks', 0)}/{status.get('desiredLinks', 0)}"
        f"  ready {status.get('readyLinks', 0)}"
    )
    if obj["metadata"].get("deletionTimestamp"):
        line += "  (deleting)"
    if phase != "Ready":
        line += why_not_ready(obj)
    return line


class Watch:
    """Polls one CacheLink, logging a progress line on every change (and every 5 s)."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, alive: Callable[[], None] | None = None, log: Log = print
    ) -> None:
        self.kube, self.namespace, self.name, self.log = kube, namespace, name, log
        self.alive = alive or (lambda: None)
        self.started = time.monotonic()
        self.last = ""
        self.last_print = 0.0

    def get(self) -> dict[str, Any] | None:
        """The object (None once it is gone)."""
        found: dict[str, Any] | None = self.kube.get(CACHELINK, self.name, "-n", self.namespace)
        return found

    def _show(self, obj: dict[str, Any] | None) -> None:
        line, now = progress_line(obj), time.monotonic()
        if line != self.last or now - self.last_print > 5:
            self.log(f"    [{now - self.started:5.1f}s] {self.namespace}/{self.name}: {line}")
            self.last, self.last_print = line, now

    def until(self, predicate: Callable[[dict[str, Any] | None], bool], timeout: float, what: str) -> Any:
        """Wait until ``predicate(obj)`` (``alive`` is checked on each poll); returns the object."""
        self.started = time.monotonic()
        seen: list[dict[str, Any] | None] = [None]

        def check() -> bool:
            self.alive()
            seen[0] = obj = self.get()
            self._show(obj)
            return predicate(obj)

        wait_for(check, timeout, f"CacheLink {self.namespace}/{self.name} {what}", interval=0.2)
        return seen[0]
