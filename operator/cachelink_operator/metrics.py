"""Prometheus metrics of the operator (served on ``--metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("cachelink_operator_reconciles_total", "CacheLink reconciles", ["result"])
RECONCILE_ERRORS = Counter(
    "cachelink_operator_reconcile_errors_total", "Failed CacheLink reconciles", ["reason"]
)
AGENT_CALLS = Counter("cachelink_operator_agent_calls_total", "Calls to node agents", ["call", "result"])
TIME_TO_LINKED = Histogram(
    "cachelink_operator_time_to_linked_seconds",
    "From a CacheLink's creation to its first Linked=True",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
LINKS = Gauge("cachelink_operator_links", "Links by state across all CacheLinks", ["state"])
LEADER = Gauge("cachelink_operator_leader", "1 while this replica holds the leader Lease")
