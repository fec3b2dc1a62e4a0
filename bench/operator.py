"""Benchmark of the operator on the development cluster; prints JSON (not run in CI).

    PYTHONPATH=.:agent:operator python bench/operator.py --counts 50,100,200,500 > operator-bench.json

For each count N: N CacheLinks (one prompt and one decode instance each, on two of the three simulated
nodes, agents in in-process mode, 1 MiB pools) are applied at once; measured are the time until all are
Ready (and p50/p99 of each one's creation -> Ready), the operator's RSS and CPU seconds, then the time
until all are deleted and finalized. The environment is the e2e suite's (``tests/e2e/operator_fixtures``):
real API server, real agents, the operator under its chart's RBAC. ``--data-dir`` reuses a running
development cluster; otherwise one is started in a temporary directory and stopped at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "operator_fixtures", ROOT / "tests" / "e2e" / "operator_fixtures.py"
)
assert _spec is not None
assert _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
sys.modules["operator_fixtures"] = fixtures
_spec.loader.exec_module(fixtures)

from cachelink.devcluster.fixtures import running_cluster  # noqa: E402

NODES = ("node-a", "node-b", "node-c")


def _cachelink(namespace: str, index: int) -> dict[str, Any]:
    prompt, decode = NODES[index % 3], NODES[(index + 1) % 3]
    return {
        "apiVersion": "cachelink.io/v1alpha1",
        "kind": "CacheLink",
        "metadata": {"name": f"b{index:04d}", "namespace": namespace},
        "spec": {
            "prompt": {"nodeNames": [prompt]},
            "decode": {"nodeNames": [decode]},
            "options": {"memPoolSizeBytes": 1 << 20, "pageShift": 12},
        },
    }


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _proc(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_count(env: Any, count: int, timeout: float) -> dict[str, Any]:
    namespace = f"bench-{count}-{os.getpid()}"
    env.kubectl("create", "namespace", namespace)
    items = [_cachelink(namespace, i) for i in range(count)]
    assert env.operator.process is not None
    _rss0, cpu0 = _proc(env.operator.process.pid)
    started = time.monotonic()
    for chunk in range(0, count, 100):
        env.apply(*items[chunk : chunk + 100])

    def all_ready() -> list[dict[str, Any]] | None:
        found = env.get("cachelinks.cachelink.io", "-n", namespace)["items"]
        done = [o for o in found if (o.get("status") or {}).get("phase") == "Ready"]
        return found if len(done) == count else None

    found = fixtures.wait_for(all_ready, timeout, f"{count} CacheLinks Ready", interval=1.0)
    ready_s = time.monotonic() - started
    rss, cpu1 = _proc(env.operator.process.pid)
    per_link = []
    for obj in found:
        cond = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        per_link.append(_ts(cond["lastTransitionTime"]) - _ts(obj["metadata"]["creationTimestamp"]))
    started = time.monotonic()
    env.kubectl("delete", "cachelinks.cachelink.io", "--all", "-n", namespace, "--wait=false")
    fixtures.wait_for(
        lambda: not env.get("cachelinks.cachelink.io", "-n", namespace)["items"],
        timeout,
        f"{count} CacheLinks finalized",
        interval=1.0,
    )
    deleted_s = time.monotonic() - started
    leftover = sum(len(v) for v in env.instances().values())
    env.kubectl("delete", "namespace", namespace, "--wait=false")
    return {
        "cachelinks": count,
        "instances": 2 * count,
        "all_ready_s": round(ready_s, 2),
        "ready_p50_s": round(statistics.median(per_link), 2),
        "ready_p99_s": round(_percentile(per_link, 0.99), 2),
        "operator_rss_mib": round(rss / 2**20, 1),
        "operator_cpu_s": round(cpu1 - cpu0, 2),
        "all_finalized_s": round(deleted_s, 2),
        "instances_left": leftover,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="50,100,200,500", help="comma-separated CacheLink counts")
    parser.add_argument("--data-dir", default="", help="reuse the development cluster of this data dir")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound (s) of each wait")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="cachelink-operator-bench-") as tmp:
        data_dir = args.data_dir or str(Path(tmp) / "cluster")
        with running_cluster(data_dir, reuse=bool(args.data_dir)) as cluster:
            env = fixtures.OperatorEnv(cluster, Path(tmp) / "env", "in-process")
            for agent in env.agents.values():
                agent.max_pool = "8Gi"
            try:
                env.setup()
                env.start_operator()
                results = [run_count(env, count, args.timeout) for count in counts]
            finally:
                env.teardown()
    print(json.dumps({"benchmark": "operator", "cpus": os.cpu_count(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
