"""The operator's scale benchmark, one count at a time: apply N CacheLinks at once, wait until all are
Ready, let them settle, hold still, delete them; each phase's figures go into that count's result."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from cachelink_operator import timestamps
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from benchlib import audit, procfs, prometheus
from benchlib.sampler import Sampler
from benchlib.stats import percentile, rounded
from benchlib.watcher import GROUP, PLURAL, VERSION, Watcher
from cachelink_dev.devcluster import DevCluster
from cachelink_dev.devcluster.fixtures import wait_for
from cachelink_dev.procs import child_env
from cachelink_dev.realnodes.product import RELEASE_NAMESPACE, Product

NODES = ("node-a", "node-b", "node-c")
CACHELINK = f"{PLURAL}.{GROUP}"
#: the chart's operator ServiceAccount (release ``cachelink``): whose requests are counted
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:cachelink-operator"
APPLY_CHUNK = 100
POOL_BYTES = 1 << 20
#: the operator's counters read from its /metrics (family names)
COUNTERS = tuple(f"cachelink_operator_{name}" for name in ("agent_calls", "reconciles", "reconcile_errors"))

#: ``done(created, ready_now, ever_ready, deleted)``: what a wait waits for
Done = Callable[[int, int, int, int], bool]


def cachelink(namespace: str, index: int) -> dict[str, Any]:
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


class Bench:
    """The product on real nodes, the audit log and an API client; :meth:`run_count` measures one count.

    The operator measured is the replica holding the leader Lease (the other one stands by): its
    container's process is sampled through ``/proc`` (containers are processes of this machine), its
    log read with ``kubectl logs``, its counters scraped from its pod's metrics port inside the nodes'
    network."""

    def __init__(self, cluster: DevCluster, product: Product, args: argparse.Namespace) -> None:
        self.cluster, self.product, self.args = cluster, product, args
        self.kube = product.kube
        self.audit = audit.AuditLog(cluster.audit_log, OPERATOR_USER)
        api_client = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.api = k8s_client.CustomObjectsApi(api_client)
        self.leader = product.wait_leader()
        self.restarts = product.restart_count(self.leader, "operator")
        self.pid = product.task_pid(self.leader, "operator")
        pod = product.pod(self.leader)
        port = next(
            p["containerPort"]
            for c in pod["spec"]["containers"]
            for p in c.get("ports", [])
            if p["name"] == "metrics"
        )
        self.metrics_url = f"http://{pod['status']['podIP']}:{port}/metrics"

    def metrics(self) -> dict[str, float]:
        """The leading operator's counters now."""
        return self.product.in_hub(
            lambda: prometheus.scrape(self.metrics_url, COUNTERS, prefix="cachelink_operator_")
        )

    def check_alive(self) -> None:
        """Fail when the measured operator container restarted or lost the Lease."""
        if self.product.restart_count(self.leader, "operator") != self.restarts:
            raise RuntimeError(f"the operator container of {self.leader} restarted during the benchmark")
        if self.product.leader() != self.leader:
            raise RuntimeError(f"{self.leader} lost the leader Lease during the benchmark")

    def remove_leftovers(self) -> None:
        """Delete what an interrupted earlier run left (CacheLinks in ``bench-*`` namespaces), so that
        it is not measured too; refuse CacheLinks elsewhere."""
        found = (self.kube.get(CACHELINK, "-A") or {}).get("items", [])
        namespaces = sorted({o["metadata"]["namespace"] for o in found})
        others = [n for n in namespaces if not n.startswith("bench-")]
        if others:
            raise RuntimeError(f"CacheLinks outside bench-* namespaces would be measured too: {others}")
        if not namespaces:
            return
        print(f"==> removing {', '.join(namespaces)}, left by an earlier run", file=sys.stderr, flush=True)
        for namespace in namespaces:
            self.kube.kubectl("delete", CACHELINK, "--all", "-n", namespace, "--wait=false", check=False)
            self.kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        for namespace in namespaces:
            self.kube.wait_namespace_gone(namespace, timeout=self.args.timeout)

    def operator_log(self) -> str:
        """The measured operator container's log so far."""
        return self.product.logs(self.leader, "operator")

    def instances_left(self) -> int:
        """Instances every node's agent still holds."""
        return sum(len(self.product.instances(node)) for node in self.product.nodes.names)

    def apply(self, items: list[dict[str, Any]]) -> float:
        """Server-side apply of every item: chunks of APPLY_CHUNK as concurrent kubectl processes."""
        kube = self.kube
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
        """Warning/error lines and tracebacks the operator logged from character ``start`` on."""
        text = self.operator_log()[start:]
        return {
            "lines": text.count("\n"),
            "warnings": sum(" WARNING " in line or "[WARNING" in line for line in text.splitlines()),
            "errors": sum(" ERROR " in line or "[ERROR" in line for line in text.splitlines()),
            "tracebacks": text.count("Traceback (most recent call last)"),
        }

    def wait(self, watcher: Watcher, done: Done, what: str) -> None:
        """Wait for ``done(created, ready_now, ever_ready, deleted)``; fail if the operator restarts."""

        def check() -> bool:
            return bool(done(*watcher.counts()))

        checked = [time.monotonic()]

        def check_and_watch_operator() -> bool:
            if time.monotonic() - checked[0] > 5.0:  # a kubectl call: not at every poll
                self.check_alive()
                checked[0] = time.monotonic()
            return check()

        wait_for(check_and_watch_operator, self.args.timeout, what, interval=0.05)

    def _clean_up(self, namespace: str, failed: bool) -> None:
        """Delete the count's namespace (its CacheLinks first, after a failure: they are finalized)."""
        kube = self.kube
        if failed:
            kube.kubectl("delete", CACHELINK, "--all", "-n", namespace, "--wait=false", check=False)
            with contextlib.suppress(TimeoutError):
                wait_for(
                    lambda: not (kube.get(CACHELINK, "-n", namespace) or {}).get("items"),
                    self.args.timeout,
                    "cleanup",
                )
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        with contextlib.suppress(Exception):
            kube.wait_namespace_gone(namespace, timeout=120)

    def run_count(self, count: int) -> dict[str, Any]:
        """Apply ``count`` CacheLinks at once, wait until all are Ready, hold still, delete them."""
        namespace = f"bench-{count}-{os.getpid()}"
        load = os.getloadavg()
        self.kube.kubectl("create", "namespace", namespace)
        wait_for(
            lambda: self.kube.get("serviceaccount", "default", "-n", namespace),
            60,
            f"the default ServiceAccount of {namespace}",
        )
        time.sleep(1.0)  # let the operator's reaction to the new namespace pass
        audit_start, log_start = self.audit.offset(), len(self.operator_log())
        watcher = Watcher(self.api, namespace)
        items = [cachelink(namespace, i) for i in range(count)]
        result: dict[str, Any] = {"cachelinks": count, "instances": 2 * count}
        result["load_average_before"] = [rounded(x) for x in load]
        phases: dict[str, tuple[float, float]] = {}
        try:
            Count(self, watcher, count, namespace, result, phases).measure(items)
        except TimeoutError:
            pass  # recorded in result["error"]; the namespace is cleaned up below
        finally:
            watcher.stop()
            self._clean_up(namespace, failed="error" in result)
        time.sleep(1.0)  # the audit log is written as requests complete; the last ones land first
        self._count_requests(self.audit.events(audit_start), phases, count, result)
        result["operator_log"] = self._operator_log(log_start)
        return result

    @staticmethod
    def _count_requests(
        events: list[dict[str, Any]],
        phases: dict[str, tuple[float, float]],
        count: int,
        result: dict[str, Any],
    ) -> None:
        """The operator's API requests of each phase, and those it took to reach Ready."""
        api = result["api"] = {
            name: audit.requests(events, t0, t1, count) for name, (t0, t1) in phases.items()
        }
        if "to_ready" in api and "settle" not in api:  # did not get there: what it took so far
            result["writes_per_cachelink_so_far"] = api["to_ready"]["writes_per_cachelink"]
        if "settle" in api:  # writes to reach Ready: until all are, and the trailing ones of the last
            writes = api["to_ready"]["writes"] + api["settle"]["writes"]
            result["writes_per_cachelink_to_ready"] = rounded(writes / count)
            result["reads_per_cachelink_to_ready"] = rounded(
                (api["to_ready"]["reads"] + api["settle"]["reads"]) / count
            )


class Count:
    """The phases of one count (apply -> all Ready, settle, steady state, delete -> all gone), each
    recording its interval in ``phases``, the operator's counters and its figures in ``result``."""

    def __init__(
        self,
        bench: Bench,
        watcher: Watcher,
        count: int,
        namespace: str,
        result: dict[str, Any],
        phases: dict[str, tuple[float, float]],
    ) -> None:
        self.bench, self.watcher, self.count, self.namespace = bench, watcher, count, namespace
        self.result, self.phases = result, phases
        self.counters: dict[str, dict[str, float]] = {}
        result["operator_counters"] = self.counters  # per phase, from the operator's /metrics
        self._before: dict[str, float] = {}

    def _phase(self, name: str, start: float, end: float) -> None:
        """Record phase ``name`` and the operator's counters that changed during it."""
        self.phases[name] = (start, end)
        now = self.bench.metrics()
        self.counters[name], self._before = prometheus.delta(now, self._before), now

    def measure(self, items: list[dict[str, Any]]) -> None:
        """Every phase in turn; a TimeoutError ends the count (``result["error"]`` says where)."""
        self._before = self.bench.metrics()
        t_apply = time.time()
        t_ready = self.to_ready(items, t_apply)
        t_settled = self.settle(t_ready)
        self.steady(t_settled)
        self.delete()

    def to_ready(self, items: list[dict[str, Any]], t_apply: float) -> float:
        """Apply every CacheLink, wait until all are Ready; return when they were."""
        seen, result, count = self.watcher.seen, self.result, self.count
        timed_out: TimeoutError | None = None
        with Sampler(self.bench.pid) as sampler:
            try:
                result["apply_s"] = rounded(self.bench.apply(items))
                self._wait(lambda c, r, ever, d: r == count, f"{count} CacheLinks Ready")
            except TimeoutError as exc:
                timed_out = exc
            t_ready = time.time()
        self._phase("to_ready", t_apply, t_ready)
        with self.watcher.lock:
            result["not_ready_reasons"] = dict(seen.reasons.most_common(8))
            result["status_writes_seen"] = dict(seen.status_writes.most_common(8))
        if timed_out is not None:
            created, ready, _, _ = self.watcher.counts()
            result["error"] = f"{timed_out} ({created} created, {ready} Ready)"
            result["to_ready"] = sampler.figures() | {"ready": ready, "created": created}
            raise timed_out
        result["to_ready"] = self._ready_times(t_apply, t_ready) | sampler.figures()
        return t_ready

    def _ready_times(self, t_apply: float, t_ready: float) -> dict[str, float]:
        """Times to Ready: as the watch saw them (from creation, from the apply) and as the server says."""
        seen = self.watcher.seen
        with self.watcher.lock:
            to_ready = [seen.ready[n] - seen.added[n] for n in seen.ready]
            since_apply = [seen.ready[n] - t_apply for n in seen.ready]
            server = [
                timestamps.epoch_seconds(
                    next(c for c in o["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"]
                )
                - timestamps.epoch_seconds(o["metadata"]["creationTimestamp"])
                for o in seen.objects.values()
            ]
        return {
            "all_ready_s": rounded(t_ready - t_apply),
            "ready_p50_s": rounded(statistics.median(to_ready)),
            "ready_p99_s": rounded(percentile(to_ready, 0.99)),
            "ready_max_s": rounded(max(to_ready)),
            "since_apply_p50_s": rounded(statistics.median(since_apply)),
            "since_apply_p99_s": rounded(percentile(since_apply, 0.99)),
            "server_p99_s": rounded(percentile(server, 0.99)),
        }

    def settle(self, t_ready: float) -> float:
        """The last Events and status writes of the last ones (``--settle-seconds``)."""
        time.sleep(self.bench.args.settle_seconds)
        t_settled = time.time()
        self._phase("settle", t_ready, t_settled)
        return t_settled

    def steady(self, t_settled: float) -> None:
        """Hold still (``--steady-seconds``): what the operator does with nothing to do."""
        seen, result = self.watcher.seen, self.result
        with Sampler(self.bench.pid) as sampler:
            time.sleep(self.bench.args.steady_seconds)
            t_steady = time.time()
        self._phase("steady", t_settled, t_steady)
        _, ready_now, _, _ = self.watcher.counts()
        result["steady"] = {"still_ready": ready_now, **sampler.figures()}
        with self.watcher.lock:
            result["status_changes_after_ready"] = dict(seen.after_ready.most_common(8))
        found = self.bench.kube.get("events", "-n", self.namespace) or {"items": []}
        result["events_by_reason"] = dict(
            Counter(f"{e.get('type')} {e.get('reason')}" for e in found["items"]).most_common()
        )
        result["cluster_rss_mib"] = rounded(self.bench.cluster.status().rss_bytes / 2**20, 1)

    def delete(self) -> None:
        """Delete every CacheLink, wait until all are finalized (gone)."""
        seen, result, count, kube = self.watcher.seen, self.result, self.count, self.bench.kube
        t_delete = time.time()
        with Sampler(self.bench.pid) as sampler:
            kube.kubectl("delete", CACHELINK, "--all", "-n", self.namespace, "--wait=false")
            try:
                self._wait(lambda c, r, ever, d: d == count, f"{count} CacheLinks finalized")
            except TimeoutError as exc:
                result["error"] = f"{exc} ({self.watcher.counts()[3]} gone)"
                self.phases["delete"] = (t_delete, time.time())
                raise
            t_gone = time.time()
        self._phase("delete", t_delete, t_gone)
        with self.watcher.lock:
            gone = [seen.deleted[n] - t_delete for n in seen.deleted]
        result["delete"] = {
            "all_gone_s": rounded(t_gone - t_delete),
            "gone_p50_s": rounded(statistics.median(gone)),
            "gone_p99_s": rounded(percentile(gone, 0.99)),
            **sampler.figures(),
        }
        result["instances_left"] = self.bench.instances_left()
        pid = self.bench.pid
        result["operator_lifetime_peak_rss_mib"] = rounded(procfs.status_bytes(pid, "VmHWM:") / 2**20, 1)
        if seen.error:
            result["watch_error"] = seen.error

    def _wait(self, done: Done, what: str) -> None:
        """:meth:`Bench.wait` on this count's watch."""
        self.bench.wait(self.watcher, done, what)
