"""Scale benchmark of the operator on the development cluster; prints JSON (not run in CI).

    PYTHONPATH=.:agent:operator .venv/bin/python -P bench/operator.py --counts 50,100,200,500

(``-P``: this file would otherwise shadow the stdlib ``operator`` module.) For each count N, N CacheLinks
(one prompt and one decode instance each, on two of the three simulated nodes, 1 MiB pools, agents in
their in-process mode) are applied at once (server-side apply, chunks of 100 as concurrent kubectl
processes) into a fresh namespace, then measured:

- time until all are Ready, and p50/p99 of each one's time to Ready, observed by a watch (sub-second):
  from the moment the watch saw it created, and from the start of the apply;
- the operator's API requests, from the API server's audit log (its ServiceAccount's username; each
  request counted once by audit ID, a watch when it opens): writes and reads, per CacheLink, by
  ``verb resource/subresource``, while reaching Ready, while settling (``--settle-seconds`` after all
  are Ready: the last ones' trailing Events; counted towards reaching Ready), in a steady-state window
  after that (``--steady-seconds``, default 2.5 resync intervals), and while deleting (the leader
  Lease's renewals, a constant 0.5/s, are counted apart);
- the operator's peak RSS (``/proc/<pid>/status`` sampled every 0.25 s) and CPU seconds, per phase;
- the load average before each count (the machine may be shared), and listeners of other clusters'
  instances on the node addresses (they take ports this operator cannot see);
- for the why: the reasons CacheLinks were not Ready, which status fields each status write changed
  (before and after Ready), and the Events by reason.

The product runs as ``cachelink demo`` runs it (:class:`cachelink.localstack.stack.LocalStack`): the
chart installed by helm, real agents and the operator run as local processes from their pods, the
operator under its pod's ServiceAccount token. ``--data-dir`` reuses a running development cluster
(started with the audit log); otherwise one is started in a temporary directory and stopped at the end.
A count that does not get all Ready (or finalized) within ``--timeout`` is reported with what it
reached, and larger counts are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cachelink_operator import timestamps
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from cachelink.devcluster import DevCluster
from cachelink.devcluster.fixtures import running_cluster, wait_for
from cachelink.localstack.agents import AGENT_NAMESPACE
from cachelink.localstack.operator_runner import OPERATOR_SELECTOR
from cachelink.localstack.procs import child_env
from cachelink.localstack.stack import LocalStack
from cachelink.localstack.watch import is_ready, why_not_ready

ROOT = Path(__file__).resolve().parents[1]
NODES = ("node-a", "node-b", "node-c")
GROUP, VERSION, PLURAL = "cachelink.io", "v1alpha1", "cachelinks"
CACHELINK = f"{PLURAL}.{GROUP}"
#: the chart's operator ServiceAccount (release ``cachelink``): whose requests are counted
OPERATOR_USER = f"system:serviceaccount:{AGENT_NAMESPACE}:cachelink-operator"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READ_VERBS = frozenset({"get", "list", "watch"})
APPLY_CHUNK = 100
#: numbers and hashes in messages, masked so that the same reason counts once
_MASK = re.compile(r"\b[0-9a-f]{10}\b|\d+")
#: the operator's built-in listen port range of instances (no policy narrows it here)
PORTS = (26000, 27999)
#: the phases whose operator figures are sampled
PHASES = ("to_ready", "steady", "delete")
#: a phase with at most this many writes lists them (when, what, which object)
LIST_WRITES = 20
POOL_BYTES = 1 << 20
NOTES = [
    "Times to Ready are observed by a watch (admin credentials, not audited), sub-second: ready_p50/p99_s "
    "from the moment the watch saw a CacheLink created to the moment it saw it Ready (phase Ready, all "
    "links ready, current generation); since_apply_* from the start of the apply; server_p99_s is the "
    "API server's second-resolution Ready lastTransitionTime minus creationTimestamp, as a cross-check.",
    "API requests are the operator ServiceAccount's, from the API server's audit log (Metadata level), "
    "counted once per audit ID (a watch once, when it opens) and assigned to a phase by "
    "requestReceivedTimestamp. Writes are create/update/patch/delete and include the Events the operator "
    "posts; the leader election's Lease renewals (a get and an update every 2 s, whatever the count) are "
    "reported as lease_writes and not counted in writes.",
    "Peak RSS is sampled from /proc/<pid>/status VmRSS every 0.25 s in each phase; "
    "operator_lifetime_peak_rss_mib is the kernel's VmHWM at the end of the count.",
    "writes_per_cachelink_to_ready counts the writes from the start of the apply until all are Ready plus "
    "those of the settle window right after (the last ones' trailing Events and status writes).",
    "status_writes_seen / status_changes_after_ready: the status fields each status change seen by the "
    "watch changed (one key per change), before Ready and after the CacheLink was already Ready.",
    "The stack runs the operator and the agents with the local stack's development flags (chart values "
    "recorded in settings) but two, set to their production defaults: the operator logs at INFO (no "
    "--verbose unless --operator-verbose), and the agents' link-repair loop runs every 5 s "
    "(--agent-reconcile-seconds), not every 1 s.",
    "foreign_listeners_*: listeners in the instances' port range on the node addresses not held by this "
    "stack's agents (another development cluster on the same machine uses the same addresses); the "
    "operator cannot see them, and an instance given such a port fails with 'Address already in use'.",
    "The machine's 2 cores run the control plane (etcd, kube-apiserver, controller manager, scheduler, "
    "KWOK), three agents, the operator, kubectl and this script; load_average_before shows other load.",
]
TARGETS = {
    "ready_p99_s_at_500": 10.0,
    "writes_per_cachelink_to_ready": 10.0,
    "steady_state_writes": 0,
    "operator_peak_rss_mib": 300.0,
}


def _cachelink(namespace: str, index: int) -> dict[str, Any]:
    """CacheLink ``index``: prompt and decode on two neighbouring nodes, a 1 MiB pool."""
    prompt, decode = NODES[index % 3], NODES[(index + 1) % 3]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CacheLink",
        "metadata": {"name": f"b{index:04d}", "namespace": namespace},
        "spec": {
            "prompt": {"nodeNames": [prompt]},
            "decode": {"nodeNames": [decode]},
            "options": {"memPoolSizeBytes": POOL_BYTES, "pageShift": 12},
        },
    }


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else 0.0


def _ts(text: str) -> float:
    """An RFC 3339 timestamp as seconds since the epoch."""
    return timestamps.epoch_seconds(text)


def _r(value: float, digits: int = 2) -> float:
    """Rounded for the report."""
    return round(value, digits)


# -- the operator process ---------------------------------------------------------------------------------


def _rss_bytes(pid: int, key: str = "VmRSS:") -> int:
    """A ``/proc/<pid>/status`` size (``VmRSS:``, ``VmHWM:``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Peak RSS and CPU seconds of a process over a phase (RSS sampled every ``interval`` s)."""

    def __init__(
        self, pid: int, foreign: Callable[[], set[str]] | None = None, interval: float = 0.25
    ) -> None:
        self.pid, self.interval, self.foreign = pid, interval, foreign
        self.foreign_seen: set[str] = set()
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
            self.peak = max(self.peak, _rss_bytes(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
            self._ticks += 1
            if self._ticks % 4 == 0:
                with contextlib.suppress(OSError):
                    self.timeline.append(_r(_rss_bytes(self.pid) / 2**20, 1))
            if self.foreign is not None and self._ticks % 4 == 1:  # every second
                with contextlib.suppress(OSError):
                    self.foreign_seen |= self.foreign()

    def __enter__(self) -> Sampler:
        self._cpu0, self.started = _cpu_s(self.pid), time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        with contextlib.suppress(OSError):
            self.cpu = _cpu_s(self.pid) - self._cpu0
        self.elapsed = time.monotonic() - self.started

    def figures(self) -> dict[str, Any]:
        """Peak RSS (MiB), CPU seconds and CPU share of one core over the phase."""
        figures: dict[str, Any] = {
            "operator_peak_rss_mib": _r(self.peak / 2**20, 1),
            "operator_cpu_s": _r(self.cpu),
            "operator_cpu_share": _r(self.cpu / self.elapsed, 3) if self.elapsed else 0.0,
        }
        step = max(1, math.ceil(len(self.timeline) / 60))  # at most 60 points
        figures["rss_mib_every_s" if step == 1 else f"rss_mib_every_{step}_s"] = self.timeline[::step]
        if self.foreign is not None:
            figures["foreign_listeners_seen"] = sorted(self.foreign_seen)[:20]
        return figures


def _listeners(hosts: set[str], low: int = PORTS[0], high: int = PORTS[1]) -> dict[str, str]:
    """Socket inode -> ``ip:port`` of the TCP listeners on ``hosts`` with a port in ``[low, high]``."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "0A":  # LISTEN
            continue
        ip_hex, port_hex = fields[1].split(":")
        ip = ".".join(str(b) for b in reversed(bytes.fromhex(ip_hex)))
        port = int(port_hex, 16)
        if ip in hosts and low <= port <= high:
            found[fields[9]] = f"{ip}:{port}"
    return found


def _socket_inodes(pids: list[int]) -> set[str]:
    """Inodes of the sockets these processes hold open."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    return inodes


def foreign_listeners(hosts: set[str], pids: list[int]) -> set[str]:
    """``ip:port`` in the instances' port range on the node addresses that these processes (this
    stack's agents) do not hold: another cluster's instances on this machine, invisible to the operator."""
    listening = _listeners(hosts)
    if not listening:
        return set()
    mine = _socket_inodes(pids)
    return {address for inode, address in listening.items() if inode not in mine}


_METRIC = re.compile(
    r"^(cachelink_operator_(?:agent_calls|reconciles|reconcile_errors)_total)(\{[^}]*\})? (\S+)$"
)


def scrape(url: str) -> dict[str, float]:
    """The operator's agent-call and reconcile counters from its Prometheus endpoint (empty on failure)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            name = match.group(1).removeprefix("cachelink_operator_").removesuffix("_total")
            found[name + (match.group(2) or "")] = float(match.group(3))
    return found


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Counters that changed from ``before`` to ``after``, by how much."""
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items()) if v - before.get(k, 0.0)}


# -- the audit log ----------------------------------------------------------------------------------------


class AuditLog:
    """The operator's requests in the API server's audit log, read from an offset on."""

    def __init__(self, path: Path, user: str = OPERATOR_USER) -> None:
        self.path, self.user = path, user
        self.rotated = False

    def offset(self) -> int:
        """The log's current size: where a phase starts reading."""
        return self.path.stat().st_size if self.path.exists() else 0

    def events(self, start: int) -> list[dict[str, Any]]:
        """The operator's requests logged from ``start`` on, one per audit ID (its first stage: a watch
        counts once, when it opens), with ``t`` the time the API server received it."""
        size = self.offset()
        if size < start:  # rotated (200 MB): what remains is the new file, from its start
            self.rotated, start = True, 0
        with self.path.open("rb") as log:
            log.seek(start)
            data = log.read()
        seen: dict[str, dict[str, Any]] = {}
        for line in data.split(b"\n"):
            if self.user.encode() not in line:
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("user", {}).get("username") != self.user:
                    continue
                if event["auditID"] not in seen:
                    event["t"] = _ts(event["requestReceivedTimestamp"])
                    seen[event["auditID"]] = event
        return list(seen.values())

    def check_user(self, start: int, timeout: float = 30.0) -> None:
        """Wait until the log shows a request of :attr:`user` after ``start`` (the operator renews its
        Lease every 2 s); raise naming the ServiceAccounts seen instead if none comes."""
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


def _key(event: dict[str, Any]) -> str:
    """``verb resource[/subresource]`` of an audit event."""
    ref = event.get("objectRef") or {}
    resource = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    return f"{event['verb']} {resource}"


def _is_lease(event: dict[str, Any]) -> bool:
    """Whether the request is about a Lease (the leader election's)."""
    return (event.get("objectRef") or {}).get("resource") == "leases"


def requests(events: list[dict[str, Any]], start: float, end: float, count: int) -> dict[str, Any]:
    """Writes and reads received in ``[start, end)``: totals, per CacheLink, and by kind of request."""
    inside = [e for e in events if start <= e["t"] < end]
    writes = [e for e in inside if e["verb"] in WRITE_VERBS]
    lease = [e for e in writes if _is_lease(e)]
    reads = [e for e in inside if e["verb"] in READ_VERBS]
    failed = Counter(
        f"{_key(e)} {e['responseStatus'].get('code')}"
        for e in inside
        if (e.get("responseStatus") or {}).get("code", 200) >= 400
    )
    own = [e for e in writes if not _is_lease(e)]
    by_link = Counter(_owner(e) for e in own if (e.get("objectRef") or {}).get("resource") != "events")
    result: dict[str, Any] = {
        "seconds": _r(end - start),
        "writes": len(own),
        "writes_per_cachelink": _r(len(own) / count),
        # Events are created with generated names the audit log does not show: not attributed
        "writes_one_cachelink_max_without_events": max(by_link.values(), default=0),
        "lease_writes": len(lease),
        "reads": len(reads),
        "reads_per_cachelink": _r(len(reads) / count),
        "watches_opened": sum(1 for e in reads if e["verb"] == "watch"),
        "by_request": dict(Counter(_key(e) for e in inside).most_common()),
        "failed": dict(failed.most_common()),
    }
    if own and len(own) <= LIST_WRITES:
        result["writes_listed"] = [
            {
                "after_s": _r(e["t"] - start),
                "request": _key(e),
                "name": (e.get("objectRef") or {}).get("name"),
            }
            for e in sorted(own, key=lambda e: e["t"])
        ]
    return result


def _owner(event: dict[str, Any]) -> str:
    """The CacheLink a write is about (Events, link Secrets and rank tables are named after it)."""
    name = str((event.get("objectRef") or {}).get("name") or "")
    resource = (event.get("objectRef") or {}).get("resource")
    if resource == "events":
        return name.partition(".")[0]
    return name.removesuffix("-link-secret").removesuffix("-rank-table")


# -- observing the CacheLinks -----------------------------------------------------------------------------


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


def _changed(old: Any, new: Any, path: str = "") -> list[str]:
    """Paths of the leaves that differ (list items by index, shown as ``[]``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            c
            for k in sorted(old.keys() | new.keys())
            for c in _changed(old.get(k), new.get(k), f"{path}.{k}")
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for o, n in zip(old, new, strict=True) for c in _changed(o, n, f"{path}[]")]
    return [] if old == new else [path.lstrip(".") or "status"]


class Watcher:
    """A watch (admin credentials, not audited) on the CacheLinks of one namespace, in a thread."""

    def __init__(self, api: k8s_client.CustomObjectsApi, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.seen = Seen()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        listing: dict[str, Any] = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)  # type: ignore[assignment]
        self._rv: str = listing["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stream = self._watch.stream(  # type: ignore[no-untyped-call]
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
            except Exception as exc:  # reported in the results, then the watch resumes
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
                changed = _changed(old.get("status") or {}, obj.get("status") or {})
                if name in self.seen.ready:  # a write after it was Ready: what did it change?
                    self.seen.after_ready.update(changed)
                elif changed:
                    self.seen.status_writes.update([" ".join(sorted(set(changed)))[:300]])
            if is_ready(obj):
                self.seen.ready.setdefault(name, now)
            elif obj.get("status") and not meta.get("deletionTimestamp"):
                why = why_not_ready(obj).strip(" -")
                self.seen.reasons[_MASK.sub("#", why.replace(name, "<name>"))[:200]] += 1

    def counts(self) -> tuple[int, int, int, int]:
        """(created, Ready now, ever Ready, deleted)."""
        with self.lock:
            ready_now = sum(1 for o in self.seen.objects.values() if is_ready(o))
            return len(self.seen.added), ready_now, len(self.seen.ready), len(self.seen.deleted)

    def stop(self) -> None:
        """End the watch."""
        self._stop.set()
        self._watch.stop()  # type: ignore[no-untyped-call]
        self._thread.join(timeout=70)


# -- one count --------------------------------------------------------------------------------------------


class Bench:
    """The stack, the audit log and an API client; :meth:`run_count` measures one count."""

    def __init__(self, cluster: DevCluster, stack: LocalStack, args: argparse.Namespace) -> None:
        self.cluster, self.stack, self.args = cluster, stack, args
        self.audit = AuditLog(cluster.audit_log)
        api_client = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        self.api = k8s_client.CustomObjectsApi(api_client)
        self.hosts = {node.ip for node in cluster.nodes}
        self.metrics_url = ""

    def _metrics(self) -> dict[str, float]:
        """The operator's counters now (its pod IP and the chart's metrics port)."""
        if not self.metrics_url:
            pods = self.stack.kube.get("pods", "-n", AGENT_NAMESPACE, "-l", OPERATOR_SELECTOR) or {}
            ips = [p["status"].get("podIP") for p in pods.get("items", []) if p["status"].get("podIP")]
            port = ((getattr(self.stack, "values", None) or {}).get("operator") or {}).get("metricsPort")
            if not ips or not port:
                return {}
            self.metrics_url = f"http://{ips[-1]}:{port}/metrics"
        return scrape(self.metrics_url)

    def remove_leftovers(self) -> None:
        """Before the operator starts: delete what an interrupted earlier run left (CacheLinks in
        ``bench-*`` namespaces, their finalizers dropped: no agent holds their instances any more),
        so that they are not measured too; refuse CacheLinks elsewhere."""
        found = (self.stack.kube.get(CACHELINK, "-A") or {}).get("items", [])
        namespaces = sorted({o["metadata"]["namespace"] for o in found})
        others = [n for n in namespaces if not n.startswith("bench-")]
        if others:
            raise RuntimeError(f"CacheLinks outside bench-* namespaces would be measured too: {others}")
        if not namespaces:
            return
        print(f"==> removing {', '.join(namespaces)}, left by an earlier run", file=sys.stderr, flush=True)
        self.stack.release_finalizers()
        for namespace in namespaces:
            self.stack.kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        for namespace in namespaces:
            self.stack.kube.wait_namespace_gone(namespace, timeout=self.args.timeout)

    def _foreign(self) -> set[str]:
        """Foreign listeners now (see :func:`foreign_listeners`)."""
        pids = [agent.process.pid for agent in self.stack.agents.values() if agent.process is not None]
        return foreign_listeners(self.hosts, pids)

    @property
    def pid(self) -> int:
        """The operator's process id."""
        process = self.stack.operator.process
        assert process is not None, "the operator is not running"
        return int(process.pid)

    def _apply(self, items: list[dict[str, Any]]) -> float:
        """Server-side apply of every item: chunks of APPLY_CHUNK as concurrent kubectl processes."""
        kube = self.stack.kube
        argv = [kube.kubectl_path, f"--kubeconfig={kube.kubeconfig}", "apply", "--server-side"]
        argv += ["--field-manager=bench", "-f", "-"]
        with contextlib.ExitStack() as files:
            bodies = []
            for first in range(0, len(items), APPLY_CHUNK):
                body = files.enter_context(tempfile.TemporaryFile("w+"))
                json.dump(
                    {"apiVersion": "v1", "kind": "List", "items": items[first : first + APPLY_CHUNK]}, body
                )
                body.seek(0)
                bodies.append(body)
            started = time.monotonic()
            procs = [
                subprocess.Popen(
                    argv,
                    stdin=body,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=child_env(),
                )
                for body in bodies
            ]
            for proc in procs:
                _, err = proc.communicate(timeout=600)
                if proc.returncode != 0:
                    raise RuntimeError(f"kubectl apply failed ({proc.returncode}): {err.strip()}")
        return time.monotonic() - started

    def _operator_log(self, start: int) -> dict[str, int]:
        """Warning/error lines and tracebacks the operator logged from byte ``start`` on."""
        with self.stack.operator.log.open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
        return {
            "lines": text.count("\n"),
            "warnings": sum(" WARNING " in line or "[WARNING" in line for line in text.splitlines()),
            "errors": sum(" ERROR " in line or "[ERROR" in line for line in text.splitlines()),
            "tracebacks": text.count("Traceback (most recent call last)"),
        }

    def _wait(self, watcher: Watcher, done: Any, what: str) -> None:
        """Wait for ``done(created, ready_now, ever_ready, deleted)``; fail if the operator exits."""

        def check() -> bool:
            self.stack.operator.check_alive()
            return bool(done(*watcher.counts()))

        wait_for(check, self.args.timeout, what, interval=0.05)

    def run_count(self, count: int) -> dict[str, Any]:
        """Apply ``count`` CacheLinks at once, wait until all are Ready, hold still, delete them."""
        namespace = f"bench-{count}-{os.getpid()}"
        load = os.getloadavg()
        self.stack.kube.kubectl("create", "namespace", namespace)
        wait_for(
            lambda: self.stack.kube.get("serviceaccount", "default", "-n", namespace),
            60,
            f"the default ServiceAccount of {namespace}",
        )
        time.sleep(1.0)  # let the operator's reaction to the new namespace pass
        audit_start, log_start = self.audit.offset(), self.stack.operator.log.stat().st_size
        watcher = Watcher(self.api, namespace)
        items = [_cachelink(namespace, i) for i in range(count)]
        result: dict[str, Any] = {"cachelinks": count, "instances": 2 * count}
        result["load_average_before"] = [_r(x) for x in load]
        # instances of another cluster on this machine (same node addresses) take ports unseen: wait
        waited = time.monotonic()
        while self._foreign() and time.monotonic() - waited < self.args.foreign_wait:
            time.sleep(1.0)
        result["foreign_listeners_before"] = sorted(self._foreign())[:20]
        result["waited_for_foreign_listeners_s"] = _r(time.monotonic() - waited)
        try:
            self._measure(count, namespace, items, watcher, result)
        except TimeoutError:
            pass  # recorded in result["error"]; the namespace is cleaned up below
        finally:
            watcher.stop()
            if "error" in result:
                self.stack.kube.kubectl(
                    "delete", CACHELINK, "--all", "-n", namespace, "--wait=false", check=False
                )
                with contextlib.suppress(TimeoutError):
                    wait_for(
                        lambda: not (self.stack.kube.get(CACHELINK, "-n", namespace) or {}).get("items"),
                        self.args.timeout,
                        "cleanup",
                    )
            self.stack.kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            with contextlib.suppress(Exception):
                self.stack.kube.wait_namespace_gone(namespace, timeout=120)
        time.sleep(1.0)  # the audit log is written as requests complete; the last ones land first
        events = self.audit.events(audit_start)
        phases = result.pop("_phases")
        api = result["api"] = {name: requests(events, t0, t1, count) for name, (t0, t1) in phases.items()}
        if "to_ready" in api and "settle" not in api:  # did not get there: what it took so far
            result["writes_per_cachelink_so_far"] = api["to_ready"]["writes_per_cachelink"]
        if "settle" in api:  # writes to reach Ready: until all are, and the trailing ones of the last
            writes = api["to_ready"]["writes"] + api["settle"]["writes"]
            result["writes_per_cachelink_to_ready"] = _r(writes / count)
            result["reads_per_cachelink_to_ready"] = _r(
                (api["to_ready"]["reads"] + api["settle"]["reads"]) / count
            )
        result["operator_log"] = self._operator_log(log_start)
        return result

    def _measure(
        self,
        count: int,
        namespace: str,
        items: list[dict[str, Any]],
        watcher: Watcher,
        result: dict[str, Any],
    ) -> None:
        """The phases of one count (apply, Ready, settle, steady, delete), filling ``result``."""
        seen = watcher.seen
        phases: dict[str, tuple[float, float]] = {}
        result["_phases"] = phases
        counters = result["operator_counters"] = {}  # per phase, from the operator's /metrics
        before = self._metrics()
        # -- apply -> all Ready
        t_apply = time.time()
        timed_out: TimeoutError | None = None
        with Sampler(self.pid, self._foreign) as ready_sampler:
            try:
                result["apply_s"] = _r(self._apply(items))
                self._wait(watcher, lambda c, r, ever, d: r == count, f"{count} CacheLinks Ready")
            except TimeoutError as exc:
                timed_out = exc
            t_ready = time.time()
        phases["to_ready"] = (t_apply, t_ready)
        counters["to_ready"], before = _delta(now := self._metrics(), before), now
        with watcher.lock:
            result["not_ready_reasons"] = dict(seen.reasons.most_common(8))
            result["status_writes_seen"] = dict(seen.status_writes.most_common(8))
        if timed_out is not None:
            created, ready, _, _ = watcher.counts()
            result["error"] = f"{timed_out} ({created} created, {ready} Ready)"
            result["to_ready"] = ready_sampler.figures() | {"ready": ready, "created": created}
            raise timed_out
        with watcher.lock:
            to_ready = [seen.ready[n] - seen.added[n] for n in seen.ready]
            since_apply = [seen.ready[n] - t_apply for n in seen.ready]
            server = [
                _ts(next(c for c in o["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"])
                - _ts(o["metadata"]["creationTimestamp"])
                for o in seen.objects.values()
            ]
        result["to_ready"] = {
            "all_ready_s": _r(t_ready - t_apply),
            "ready_p50_s": _r(statistics.median(to_ready)),
            "ready_p99_s": _r(_percentile(to_ready, 0.99)),
            "ready_max_s": _r(max(to_ready)),
            "since_apply_p50_s": _r(statistics.median(since_apply)),
            "since_apply_p99_s": _r(_percentile(since_apply, 0.99)),
            "server_p99_s": _r(_percentile(server, 0.99)),
            **ready_sampler.figures(),
        }
        # -- settling (the last Events and status writes of the last ones), then steady state
        time.sleep(self.args.settle_seconds)
        t_settled = time.time()
        phases["settle"] = (t_ready, t_settled)
        counters["settle"], before = _delta(now := self._metrics(), before), now
        with Sampler(self.pid) as steady_sampler:
            time.sleep(self.args.steady_seconds)
            t_steady = time.time()
        phases["steady"] = (t_settled, t_steady)
        counters["steady"], before = _delta(now := self._metrics(), before), now
        _, ready_now, _, _ = watcher.counts()
        result["steady"] = {"still_ready": ready_now, **steady_sampler.figures()}
        with watcher.lock:
            result["status_changes_after_ready"] = dict(seen.after_ready.most_common(8))
        found = self.stack.kube.get("events", "-n", namespace) or {"items": []}
        result["events_by_reason"] = dict(
            Counter(f"{e.get('type')} {e.get('reason')}" for e in found["items"]).most_common()
        )
        result["cluster_rss_mib"] = _r(self.cluster.status().rss_bytes / 2**20, 1)
        # -- deletion -> all finalized (gone)
        t_delete = time.time()
        with Sampler(self.pid) as delete_sampler:
            self.stack.kube.kubectl("delete", CACHELINK, "--all", "-n", namespace, "--wait=false")
            try:
                self._wait(watcher, lambda c, r, ever, d: d == count, f"{count} CacheLinks finalized")
            except TimeoutError as exc:
                result["error"] = f"{exc} ({watcher.counts()[3]} gone)"
                phases["delete"] = (t_delete, time.time())
                raise
            t_gone = time.time()
        phases["delete"] = (t_delete, t_gone)
        counters["delete"] = _delta(self._metrics(), before)
        with watcher.lock:
            gone = [seen.deleted[n] - t_delete for n in seen.deleted]
        result["delete"] = {
            "all_gone_s": _r(t_gone - t_delete),
            "gone_p50_s": _r(statistics.median(gone)),
            "gone_p99_s": _r(_percentile(gone, 0.99)),
            **delete_sampler.figures(),
        }
        result["instances_left"] = sum(len(v) for v in self.stack.instances().values())
        result["operator_lifetime_peak_rss_mib"] = _r(_rss_bytes(self.pid, "VmHWM:") / 2**20, 1)
        if seen.error:
            result["watch_error"] = seen.error


# -- the report -------------------------------------------------------------------------------------------


def _growth(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each count's figures as multiples of the smallest count's."""
    done = [r for r in results if "error" not in r]
    if not done:
        return []
    base = done[0]

    def figures(r: dict[str, Any]) -> dict[str, float]:
        return {
            "all_ready_s": r["to_ready"]["all_ready_s"],
            "ready_p99_s": r["to_ready"]["ready_p99_s"],
            "writes_per_cachelink_to_ready": r["writes_per_cachelink_to_ready"],
            "reads_per_cachelink_to_ready": r["reads_per_cachelink_to_ready"],
            "operator_peak_rss_mib": max(r[p]["operator_peak_rss_mib"] for p in PHASES),
            "operator_cpu_s_to_ready": r["to_ready"]["operator_cpu_s"],
            "all_gone_s": r["delete"]["all_gone_s"],
            "writes_per_cachelink_to_delete": r["api"]["delete"]["writes_per_cachelink"],
        }

    b = figures(base)
    rows = []
    for r in done:
        f = figures(r)
        row: dict[str, Any] = {
            "cachelinks": r["cachelinks"],
            "x_cachelinks": _r(r["cachelinks"] / base["cachelinks"]),
        }
        row |= {f"x_{k}": (_r(v / b[k]) if b[k] else None) for k, v in f.items()}
        rows.append(row)
    return rows


def _verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target, measured at the largest count that completed, and whether it was met."""
    done = [r for r in results if "error" not in r]
    if not done:
        return {}
    top = done[-1]
    at = top["cachelinks"]
    p99 = top["to_ready"]["ready_p99_s"]
    writes = max(r["writes_per_cachelink_to_ready"] for r in done)
    steady = max(r["api"]["steady"]["writes"] for r in done)
    rss = max(r[p]["operator_peak_rss_mib"] for r in results for p in PHASES if p in r)
    failed = [r for r in results if "error" in r]
    return {
        "largest_count_completed": at,
        "failed_count": failed[0]["cachelinks"] if failed else None,
        "ready_p99_s_at_500": {
            "measured": p99,
            "at_cachelinks": at,
            "met": p99 < TARGETS["ready_p99_s_at_500"] and at >= 500,
        },
        "writes_per_cachelink_to_ready": {
            "measured_max": writes,
            "met": writes <= TARGETS["writes_per_cachelink_to_ready"],
        },
        "steady_state_writes": {"measured_max": steady, "met": steady <= TARGETS["steady_state_writes"]},
        "operator_peak_rss_mib": {"measured_max": rss, "met": rss < TARGETS["operator_peak_rss_mib"]},
    }


def _summary(report: dict[str, Any]) -> str:
    """The results as a table, and the verdict on each target."""
    lines = [
        f"{'N':>5} {'allReady':>8} {'p50':>6} {'p99':>6} {'w/CL':>6} {'steadyW':>7} {'delW/CL':>7} "
        f"{'r/CL':>6} {'RSS MiB':>7} {'CPU s':>6} {'load1':>5}"
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"{r['cachelinks']:>5} FAILED: {r['error']}")
            continue
        api = r["api"]
        rss = max(r[p]["operator_peak_rss_mib"] for p in PHASES)
        lines.append(
            f"{r['cachelinks']:>5} {r['to_ready']['all_ready_s']:>8} {r['to_ready']['ready_p50_s']:>6} "
            f"{r['to_ready']['ready_p99_s']:>6} {r['writes_per_cachelink_to_ready']:>6} "
            f"{api['steady']['writes']:>7} {api['delete']['writes_per_cachelink']:>7} "
            f"{r['reads_per_cachelink_to_ready']:>6} {rss:>7} {r['to_ready']['operator_cpu_s']:>6} "
            f"{r['load_average_before'][0]:>5}"
        )
    for name, verdict in report["targets_met"].items():
        if not isinstance(verdict, dict):
            lines.append(f"{name}: {verdict}")
            continue
        lines.append(f"{'PASS' if verdict['met'] else 'FAIL'} {name}: {verdict}")
    return "\n".join(lines)


@contextlib.contextmanager
def _cluster(data_dir: str) -> Iterator[tuple[DevCluster, Path]]:
    """The cluster of ``data_dir`` (kept running), or a fresh one in a temporary folder."""
    with (
        tempfile.TemporaryDirectory(prefix="cachelink-operator-bench-") as tmp,
        running_cluster(data_dir or Path(tmp) / "cluster", reuse=bool(data_dir)) as cluster,
    ):
        yield cluster, Path(tmp)


def _keep_logs(stack: LocalStack, folder: Path) -> None:
    """Copy the operator's and the agents' logs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    logs = {f"agent-{node}.log": agent.log for node, agent in stack.agents.items()}
    with contextlib.suppress(RuntimeError):
        logs["operator.log"] = stack.operator.log
    for name, path in logs.items():
        with contextlib.suppress(OSError):
            shutil.copyfile(path, folder / name)


def _run(args: argparse.Namespace, counts: list[int]) -> tuple[list[dict[str, Any]], dict[str, str], bool]:
    """Every count on one stack (stopping at the first that fails); (results, versions, log rotated)."""
    results: list[dict[str, Any]] = []
    with _cluster(args.data_dir) as (cluster, tmp):
        if not cluster.audit_log.exists():
            raise SystemExit(f"no audit log at {cluster.audit_log}: restart the cluster (down, up)")
        stack = LocalStack(
            cluster, tmp / "stack", agent_mode="in-process", resync_s=args.resync_seconds, max_pool="8Gi"
        )
        # the agents' link-repair loop and the operator's log level at their production defaults (the
        # local stack's 1 s loop and DEBUG logging are for tests)
        operator = stack.values["operator"]
        operator["extraArgs"] = [
            a for a in operator["extraArgs"] if args.operator_verbose or a != "--verbose"
        ]
        agent_set = stack.values["agentDaemonSet"]
        agent_set["extraArgs"] = [
            *(a for a in agent_set["extraArgs"] if not a.startswith("--reconcile-interval=")),
            f"--reconcile-interval={args.agent_reconcile_seconds:g}",
        ]
        try:
            stack.setup()
            bench = Bench(cluster, stack, args)
            bench.remove_leftovers()
            start = bench.audit.offset()
            stack.start_operator()
            bench.audit.check_user(start)
            for count in counts:
                print(f"==> {count} CacheLinks", file=sys.stderr, flush=True)
                try:
                    results.append(bench.run_count(count))
                except (TimeoutError, RuntimeError) as exc:
                    results.append({"cachelinks": count, "error": str(exc)})
                error = results[-1].get("error")
                if error:
                    print(f"    {count}: {error}", file=sys.stderr, flush=True)
                    break
        finally:
            if args.keep_logs:  # before down(): that removes the pods' folders, logs included
                _keep_logs(stack, Path(args.keep_logs))
            stack.down()
        args.stack_values = getattr(stack, "values", None)
        return results, dict(cluster.tools.versions), bench.audit.rotated


def main() -> int:
    """Run the counts, print the JSON report and write it to ``--out``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="50,100,200,500", help="comma-separated CacheLink counts")
    parser.add_argument("--data-dir", default="", help="reuse the development cluster of this data dir")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound (s) of each wait")
    parser.add_argument("--resync-seconds", type=float, default=20.0, help="the operator's resync interval")
    parser.add_argument(
        "--agent-reconcile-seconds",
        type=float,
        default=5.0,
        help="the agents' --reconcile-interval (default 5, the agent's own default)",
    )
    parser.add_argument(
        "--operator-verbose", action="store_true", help="run the operator with --verbose (DEBUG logs)"
    )
    parser.add_argument(
        "--steady-seconds", type=float, default=None, help="steady-state window (default 2.5 x resync)"
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=5.0,
        help="after all are Ready, before the steady-state window (its writes count towards Ready)",
    )
    parser.add_argument(
        "--foreign-wait",
        type=float,
        default=180.0,
        help="before each count, wait up to this long for other clusters' instances to leave the ports",
    )
    parser.add_argument("--keep-logs", default="", help="copy the operator's and agents' logs to this folder")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "operator.json"), help="JSON file")
    args = parser.parse_args()
    if args.steady_seconds is None:
        args.steady_seconds = 2.5 * args.resync_seconds
    counts = [int(c) for c in args.counts.split(",") if c]
    started = datetime.now(UTC)
    results, versions, rotated = _run(args, counts)
    report = {
        "benchmark": "operator",
        "command": "PYTHONPATH="
        + os.environ.get("PYTHONPATH", "")
        + " "
        + shlex.join(
            [
                os.path.relpath(sys.executable, ROOT)
                if sys.executable.startswith(str(ROOT))
                else sys.executable,
                "-P",
                *sys.argv,
            ]
        ),
        "date": started.isoformat(timespec="seconds"),
        "duration_s": _r((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": _r(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": versions,
        "settings": {
            "agent_mode": "in-process",
            "pool_bytes": POOL_BYTES,
            "resync_s": args.resync_seconds,
            "steady_s": args.steady_seconds,
            "apply": f"kubectl apply --server-side, chunks of {APPLY_CHUNK} as concurrent processes",
            "timeout_s": args.timeout,
            "settle_s": args.settle_seconds,
            "stack_values": getattr(args, "stack_values", None),
        },
        "targets": TARGETS,
        "results": results,
        "growth": _growth(results),
        "targets_met": _verdict(results),
        "notes": NOTES
        + (["the audit log rotated during the run: some requests may be missing"] if rotated else []),
    }
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(_summary(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
