"""A watch on the CacheLinks of one namespace, in a thread: when each was created, Ready and gone, why the
others were not Ready yet, and which status fields each status write changed."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

from cachelink_dev.demo.watch import is_ready, why_not_ready

GROUP, VERSION, PLURAL = "cachelink.io", "v1alpha1", "cachelinks"
#: numbers and hashes in messages, masked so that the same reason counts once
_MASK = re.compile(r"\b[0-9a-f]{10}\b|\d+")


@dataclass
class Seen:
    """When (``time.time()``) the watch first saw each CacheLink created, Ready, and gone."""

    added: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: why CacheLinks were not Ready (the Ready condition's message and first error, names masked)
    reasons: Counter[str] = field(default_factory=Counter)
    #: status fields changed by each status write before Ready (one key per write), and after Ready
    status_writes: Counter[str] = field(default_factory=Counter)
    after_ready: Counter[str] = field(default_factory=Counter)
    error: str = ""


def changed(old: Any, new: Any, path: str = "") -> list[str]:
    """Paths of the leaves that differ (list items by index, shown as ``[]``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            c for k in sorted(old.keys() | new.keys()) for c in changed(old.get(k), new.get(k), f"{path}.{k}")
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for o, n in zip(old, new, strict=True) for c in changed(o, n, f"{path}[]")]
    return [] if old == new else [path.lstrip(".") or "status"]


class Watcher:
    """A watch (admin credentials, not audited) on the CacheLinks of one namespace, in a thread."""

    def __init__(self, api: k8s_client.CustomObjectsApi, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.seen = Seen()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._watch = k8s_watch.Watch()
        listing: dict[str, Any] = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        self._rv: str = listing["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stream = self._watch.stream(
                    self.api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=self._rv,
                    timeout_seconds=60,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    self._on(event["type"], event["object"], time.time())
            except Exception as exc:  # noqa: BLE001 - any failure of the watch: reported, then it resumes
                if self._stop.is_set():
                    return
                self.seen.error = f"{type(exc).__name__}: {exc}"[:300]
                time.sleep(0.2)

    def _on(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj.get("metadata") or {}
        self._rv = meta.get("resourceVersion") or self._rv
        if kind == "BOOKMARK":
            return
        name = meta["name"]
        with self.lock:
            self.seen.added.setdefault(name, now)
            if kind == "DELETED":
                self.seen.deleted.setdefault(name, now)
                self.seen.objects.pop(name, None)
                return
            old = self.seen.objects.get(name)
            self.seen.objects[name] = obj
            if old is not None and not meta.get("deletionTimestamp"):
                self._record_change(name, old, obj)
            if is_ready(obj):
                self.seen.ready.setdefault(name, now)
            elif obj.get("status") and not meta.get("deletionTimestamp"):
                why = why_not_ready(obj).strip(" -")
                self.seen.reasons[_MASK.sub("#", why.replace(name, "<name>"))[:200]] += 1

    def _record_change(self, name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """The status fields a write changed: before Ready (one key per write), or after it."""
        fields = changed(old.get("status") or {}, new.get("status") or {})
        if name in self.seen.ready:  # a write after it was Ready: what did it change?
            self.seen.after_ready.update(fields)
        elif fields:
            self.seen.status_writes.update([" ".join(sorted(set(fields)))[:300]])

    def counts(self) -> tuple[int, int, int, int]:
        """(created, Ready now, ever Ready, deleted)."""
        with self.lock:
            ready_now = sum(1 for o in self.seen.objects.values() if is_ready(o))
            return len(self.seen.added), ready_now, len(self.seen.ready), len(self.seen.deleted)

    def stop(self) -> None:
        """End the watch."""
        self._stop.set()
        self._watch.stop()
        self._thread.join(timeout=70)
