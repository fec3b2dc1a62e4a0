"""The API server's audit log: one user's requests, counted by phase and by kind of request."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cachelink_operator import timestamps

from benchlib.stats import rounded

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READ_VERBS = frozenset({"get", "list", "watch"})
#: a phase with at most this many writes lists them (when, what, which object)
LIST_WRITES = 20


class AuditLog:
    """The requests of ``user`` in the API server's audit log (JSON lines), read from an offset on."""

    def __init__(self, path: Path, user: str) -> None:
        self.path, self.user = path, user
        self.rotated = False

    def offset(self) -> int:
        """The log's current size: where a phase starts reading."""
        return self.path.stat().st_size if self.path.exists() else 0

    def events(self, start: int) -> list[dict[str, Any]]:
        """The user's requests logged from ``start`` on, one per audit ID (its first stage: a watch
        counts once, when it opens), with ``t`` the time the API server received it."""
        size = self.offset()
        if size < start:  # rotated (200 MB): what remains is the new file, from its start
            self.rotated, start = True, 0
        with self.path.open("rb") as log:
            log.seek(start)
            data = log.read()
        return parse_events(data, self.user)

    def check_user(self, start: int, timeout: float = 30.0) -> None:
        """Wait until the log shows a request of :attr:`user` after ``start``; raise naming the users
        seen instead if none comes."""
        deadline = time.monotonic() + timeout
        while not self.events(start):
            if time.monotonic() > deadline:
                users = set()
                with self.path.open("rb") as log:
                    log.seek(start)
                    for line in log.read().splitlines():
                        with contextlib.suppress(ValueError, KeyError):
                            users.add(json.loads(line)["user"]["username"])
                raise RuntimeError(f"no request of {self.user} in {self.path}; users seen: {sorted(users)}")
            time.sleep(0.5)


def parse_events(data: bytes, user: str) -> list[dict[str, Any]]:
    """The audit events of ``user`` in ``data`` (JSON lines; broken lines skipped), one per audit ID,
    each with ``t``: its ``requestReceivedTimestamp`` in seconds since the epoch."""
    seen: dict[str, dict[str, Any]] = {}
    for line in data.split(b"\n"):
        if user.encode() not in line:
            continue
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("user", {}).get("username") != user:
                continue
            if event["auditID"] not in seen:
                event["t"] = timestamps.epoch_seconds(event["requestReceivedTimestamp"])
                seen[event["auditID"]] = event
    return list(seen.values())


def request_key(event: dict[str, Any]) -> str:
    """``verb resource[/subresource]`` of an audit event."""
    ref = event.get("objectRef") or {}
    resource = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    return f"{event['verb']} {resource}"


def is_lease(event: dict[str, Any]) -> bool:
    """Whether the request is about a Lease (the leader election's)."""
    return (event.get("objectRef") or {}).get("resource") == "leases"


def owner(event: dict[str, Any]) -> str:
    """The CacheLink a write is about (Events, link Secrets and rank tables are named after it)."""
    name = str((event.get("objectRef") or {}).get("name") or "")
    resource = (event.get("objectRef") or {}).get("resource")
    if resource == "events":
        return name.partition(".")[0]
    return name.removesuffix("-link-secret").removesuffix("-rank-table")


def requests(events: list[dict[str, Any]], start: float, end: float, count: int) -> dict[str, Any]:
    """Writes and reads received in ``[start, end)``: totals, per CacheLink (``count`` of them), and by
    kind of request; the Lease's writes apart."""
    inside = [e for e in events if start <= e["t"] < end]
    writes = [e for e in inside if e["verb"] in WRITE_VERBS]
    lease = [e for e in writes if is_lease(e)]
    reads = [e for e in inside if e["verb"] in READ_VERBS]
    failed = Counter(
        f"{request_key(e)} {e['responseStatus'].get('code')}"
        for e in inside
        if (e.get("responseStatus") or {}).get("code", 200) >= 400
    )
    own = [e for e in writes if not is_lease(e)]
    by_link = Counter(owner(e) for e in own if (e.get("objectRef") or {}).get("resource") != "events")
    result: dict[str, Any] = {
        "seconds": rounded(end - start),
        "writes": len(own),
        "writes_per_cachelink": rounded(len(own) / count),
        # Events are created with generated names the audit log does not show: not attributed
        "writes_one_cachelink_max_without_events": max(by_link.values(), default=0),
        "lease_writes": len(lease),
        "reads": len(reads),
        "reads_per_cachelink": rounded(len(reads) / count),
        "watches_opened": sum(1 for e in reads if e["verb"] == "watch"),
        "by_request": dict(Counter(request_key(e) for e in inside).most_common()),
        "failed": dict(failed.most_common()),
    }
    if own and len(own) <= LIST_WRITES:
        result["writes_listed"] = [
            {
                "after_s": rounded(e["t"] - start),
                "request": request_key(e),
                "name": (e.get("objectRef") or {}).get("name"),
            }
            for e in sorted(own, key=lambda e: e["t"])
        ]
    return result
