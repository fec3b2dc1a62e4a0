"""Prometheus metrics of the agent.

Engine counters restart from zero with each incarnation of an instance (a worker restart, an agent
restart); ``Accumulator`` folds them into totals that only grow while the agent runs, so ``rate()``
stays meaningful. Gauges (instances, links by state, pool use) are read from the latest statuses at
scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from cachelink_agent.runtime import LATENCY_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # type: ignore[no-untyped-call] # the _created series only add noise here


class Accumulator:
    """Per-(instance, series) totals over incarnations: a value smaller than the last one is a restart."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[int, float]] = {}
        self._base: dict[tuple[str, str], float] = {}

    def feed(self, instance: str, series: str, incarnation: int, value: float) -> None:
        """Record the current value of a series of an instance."""
        key = (instance, series)
        last = self._last.get(key)
        if last is not None and (last[0] != incarnation or value < last[1]):
            self._base[key] = self._base.get(key, 0.0) + last[1]
        self._last[key] = (incarnation, value)

    def series(self, prefix: str) -> list[str]:
        """The names of the series fed so far that start with ``prefix``, sorted."""
        return sorted({series for _, series in self._last if series.startswith(prefix)})

    def total(self, series: str) -> float:
        """Sum over instances (finalized ones included) of a series."""
        total = sum(v for (_, s), v in self._base.items() if s == series)
        return total + sum(v for (_, s), (_, v) in self._last.items() if s == series)


class _StatusCollector(Collector):
    def __init__(self, source: Callable[[], list[dict[str, Any]]], accumulator: Accumulator) -> None:
        self._source = source
        self._acc = accumulator

    def collect(self) -> Iterable[Metric]:
        snapshots = self._source()
        instances = GaugeMetricFamily("cachelink_agent_instances", "Instances by state", labels=["state"])
        by_state: dict[str, int] = {}
        links = GaugeMetricFamily("cachelink_agent_links", "Links by state", labels=["state"])
        link_states: dict[str, int] = {"linked": 0, "broken": 0, "failed": 0}
        pool = GaugeMetricFamily(
            "cachelink_agent_pool_bytes", "Pool bytes by instance", labels=["instance", "kind"]
        )
        for snap in snapshots:
            by_state[snap["state"]] = by_state.get(snap["state"], 0) + 1
            for link in snap.get("links", []):
                link_states[link["state"]] = link_states.get(link["state"], 0) + 1
            pool.add_metric([snap["name"], "size"], snap.get("pool_size", 0))
            pool.add_metric([snap["name"], "used"], snap.get("pool_used", 0))
        for state, count in sorted(by_state.items()):
            instances.add_metric([state], count)
        for state, count in sorted(link_states.items()):
            links.add_metric([state], count)
        yield instances
        yield links
        yield pool
        moved = CounterMetricFamily("cachelink_agent_bytes", "Bytes moved by direction", labels=["direction"])
        for direction in ("pulled", "pushed", "served"):
            moved.add_metric([direction], self._acc.total(f"bytes_{direction}"))
        yield moved
        transfers = CounterMetricFamily(
            "cachelink_agent_transfers", "Transfers by direction", labels=["direction"]
        )
        for direction in ("pull", "push"):
            transfers.add_metric([direction], self._acc.total(f"transfers_{direction}"))
        yield transfers
        errors = CounterMetricFamily(
            "cachelink_agent_errors", "Failures by LLMStatusCode", labels=["status_code"]
        )
        for series in self._acc.series("error_"):
            errors.add_metric([series[len("error_") :]], self._acc.total(series))
        yield errors
        histogram = HistogramMetricFamily("cachelink_agent_transfer_seconds", "Latency of attach transfers")
        cumulative, buckets = 0.0, []
        for index, edge in enumerate((*LATENCY_BUCKETS, float("inf"))):
            cumulative += self._acc.total(f"bucket_{index}")
            buckets.append(("+Inf" if edge == float("inf") else str(edge), cumulative))
        histogram.add_metric([], buckets, self._acc.total("latency_sum"))
        yield histogram


class AgentMetrics:
    """The agent's registry: status-derived families plus counters the agent increments itself."""

    def __init__(self, source: Callable[[], list[dict[str, Any]]]) -> None:
        self.registry = CollectorRegistry()
        self.accumulator = Accumulator()
        self.registry.register(_StatusCollector(source, self.accumulator))
        self.requests = Counter(
            "cachelink_agent_http_requests",
            "API requests",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "cachelink_agent_worker_restarts", "Worker processes restarted", registry=self.registry
        )
        self.owner_expired = Counter(
            "cachelink_agent_owner_expired",
            "Instances finalized because their owner was not reconfirmed in time",
            registry=self.registry,
        )
        self.owner_quarantined = Counter(
            "cachelink_agent_owner_quarantined",
            "Instances quarantined because their owner was not reconfirmed in time",
            registry=self.registry,
        )
        self.link_failures = Counter(
            "cachelink_agent_link_failures",
            "Failed link attempts by LLMStatusCode",
            ["status_code"],
            registry=self.registry,
        )

    def feed_status(self, instance: str, status: dict[str, Any]) -> None:
        """Fold a runtime status (counters and stats) into the totals."""
        incarnation = int(status.get("incarnation", 0))
        feed = self.accumulator.feed
        for name, value in status.get("counters", {}).items():
            feed(instance, name, incarnation, value)
        stats = status.get("stats", {})
        for direction, value in stats.get("transfers", {}).items():
            feed(instance, f"transfers_{direction}", incarnation, value)
        for code, value in stats.get("errors", {}).items():
            feed(instance, f"error_{code}", incarnation, value)
        for index, value in enumerate(stats.get("buckets", [])):
            feed(instance, f"bucket_{index}", incarnation, value)
        feed(instance, "latency_sum", incarnation, stats.get("sum", 0.0))

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
