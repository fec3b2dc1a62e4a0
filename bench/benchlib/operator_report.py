"""The operator's scale benchmark's report: its targets, how each count grew against the smallest, the
verdict on each target, and a summary table."""

from __future__ import annotations

from typing import Any

from benchlib.stats import rounded

#: the phases whose operator figures are sampled
PHASES = ("to_ready", "steady", "delete")
TARGETS = {
    "ready_p99_s_at_500": 10.0,
    "writes_per_cachelink_to_ready": 10.0,
    "steady_state_writes": 0,
    "operator_peak_rss_mib": 300.0,
}
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
    "The chart runs on three real nodes (kubelet, containerd, kube-proxy each) with its defaults (two "
    "operator replicas: the one holding the Lease is measured) but the values recorded in settings: agents "
    "in-process, the operator's resync interval, its log level INFO (no --verbose unless "
    "--operator-verbose), the agents' link-repair loop every --agent-reconcile-seconds.",
    "The machine's 2 cores run the control plane (etcd, kube-apiserver, controller manager, scheduler), "
    "three kubelets, containerds and kube-proxies, three agents, two operator replicas, kubectl and this "
    "script; load_average_before shows other load.",
]


def _figures(r: dict[str, Any]) -> dict[str, float]:
    """The figures of one completed count that :func:`growth` compares."""
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


def growth(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each count's figures as multiples of the smallest count's."""
    done = [r for r in results if "error" not in r]
    if not done:
        return []
    base = done[0]
    b = _figures(base)
    rows = []
    for r in done:
        row: dict[str, Any] = {
            "cachelinks": r["cachelinks"],
            "x_cachelinks": rounded(r["cachelinks"] / base["cachelinks"]),
        }
        row |= {f"x_{k}": (rounded(v / b[k]) if b[k] else None) for k, v in _figures(r).items()}
        rows.append(row)
    return rows


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
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


def _row(r: dict[str, Any]) -> str:
    """One count's line of the summary table."""
    if "error" in r:
        return f"{r['cachelinks']:>5} FAILED: {r['error']}"
    api = r["api"]
    rss = max(r[p]["operator_peak_rss_mib"] for p in PHASES)
    return (
        f"{r['cachelinks']:>5} {r['to_ready']['all_ready_s']:>8} {r['to_ready']['ready_p50_s']:>6} "
        f"{r['to_ready']['ready_p99_s']:>6} {r['writes_per_cachelink_to_ready']:>6} "
        f"{api['steady']['writes']:>7} {api['delete']['writes_per_cachelink']:>7} "
        f"{r['reads_per_cachelink_to_ready']:>6} {rss:>7} {r['to_ready']['operator_cpu_s']:>6} "
        f"{r['load_average_before'][0]:>5}"
    )


def summary(report: dict[str, Any]) -> str:
    """The results as a table, and the verdict on each target."""
    lines = [
        f"{'N':>5} {'allReady':>8} {'p50':>6} {'p99':>6} {'w/CL':>6} {'steadyW':>7} {'delW/CL':>7} "
        f"{'r/CL':>6} {'RSS MiB':>7} {'CPU s':>6} {'load1':>5}"
    ]
    lines += [_row(r) for r in report["results"]]
    for name, target in report["targets_met"].items():
        if not isinstance(target, dict):
            lines.append(f"{name}: {target}")
            continue
        lines.append(f"{'PASS' if target['met'] else 'FAIL'} {name}: {target}")
    return "\n".join(lines)
