"""Scale benchmark of the operator on the development cluster; prints JSON and writes it to
``bench/results/operator_scale.json`` (not run in CI).

    .venv/bin/python bench/operator_scale.py --counts 50,100,200,500

Its parts are in ``bench/benchlib/`` (the audit log, /proc sampling, Prometheus counters, the watch, the
driver of one count, the report); this file is the command line. For each count N, N CacheLinks
(one prompt and one decode instance each, on two of the three real nodes, 1 MiB pools, agents in
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
- the load average before each count (the machine may be shared);
- for the why: the reasons CacheLinks were not Ready, which status fields each status write changed
  (before and after Ready), and the Events by reason.

The product runs as ``cachelink demo`` runs it (:class:`cachelink_dev.realnodes.product.Product`): a control
plane with the audit log, three real nodes (kubelet, containerd, kube-proxy) and the chart installed with
``helm upgrade --install --wait``; the agents and both operator replicas are containers, the replica
holding the leader Lease is measured. Needs root and what ``cachelink real-nodes build`` builds (run first,
cached). Everything is started in ``--data-dir`` (default a temporary folder) and removed at the end. A
count that does not get all Ready (or finalized) within ``--timeout`` is reported with what it reached,
and larger counts are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import operator_report, results
from benchlib.operator_driver import APPLY_CHUNK, NODES, POOL_BYTES, Bench
from benchlib.stats import rounded

from cachelink_dev.devcluster import DevCluster
from cachelink_dev.realnodes.cli import build
from cachelink_dev.realnodes.cluster import RealNodes
from cachelink_dev.realnodes.product import Product
from cachelink_dev.release.chart import OPERATOR_FLAGS

ROOT = Path(__file__).resolve().parents[1]

BENCH = "operator_scale"


@contextlib.contextmanager
def _product(args: argparse.Namespace) -> Iterator[tuple[DevCluster, Product]]:
    """The control plane, three real nodes and the chart (values for the benchmark); removed at the end."""
    image = str(build(ROOT)["image"])
    with tempfile.TemporaryDirectory(prefix="cachelink-operator-bench-") as tmp:
        cluster = DevCluster(Path(args.data_dir or tmp) / "cluster", node_names=())
        nodes = RealNodes(cluster, NODES, images=[image])
        product = Product(nodes, image, _values(args))
        try:
            cluster.up()
            nodes.up()
            product.install()
            yield cluster, product
        finally:
            if args.keep_logs:
                _keep_logs(product, Path(args.keep_logs))
            try:
                nodes.down()
            finally:
                cluster.down()


def _keep_logs(product: Product, folder: Path) -> None:
    """Save the operator replicas' and the agents' logs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):
        for pod in product.operator_pods():
            name = pod["metadata"]["name"]
            (folder / f"{name}.log").write_text(product.logs(name, "operator"))
        for node, pod in product.agent_pods(ready=False).items():
            (folder / f"agent-{node}.log").write_text(product.logs(pod["metadata"]["name"], "agent"))


@dataclass
class Run:
    """What :func:`_run` measured, and with what."""

    results: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    #: whether the audit log rotated during the run (some requests may be missing)
    rotated: bool = False
    #: the chart values the stack ran with
    stack_values: dict[str, Any] | None = None


def _values(args: argparse.Namespace) -> dict[str, Any]:
    """Chart values: agents in-process with room for every pool, the operator's resync interval, its
    log level and the agents' link-repair loop as asked (the chart's defaults otherwise)."""
    operator_flags = [a for a in OPERATOR_FLAGS if args.operator_verbose or a != "--verbose"]
    return {
        "operator": {
            "resyncIntervalSeconds": max(1, round(args.resync_seconds)),
            "extraArgs": operator_flags,
        },
        "agentDaemonSet": {
            "inProcess": True,
            "maxPoolBytes": "8Gi",
            "logFormat": "text",
            "extraArgs": [f"--reconcile-interval={args.agent_reconcile_seconds:g}"],
        },
    }


def _counts(bench: Bench, counts: list[int], run: Run) -> None:
    """Every count in turn, stopping at the first that fails."""
    for count in counts:
        print(f"==> {count} CacheLinks", file=sys.stderr, flush=True)
        try:
            run.results.append(bench.run_count(count))
        except (TimeoutError, RuntimeError) as exc:
            run.results.append({"cachelinks": count, "error": str(exc)})
        error = run.results[-1].get("error")
        if error:
            print(f"    {count}: {error}", file=sys.stderr, flush=True)
            break


def _run(args: argparse.Namespace, counts: list[int]) -> Run:
    """Every count on one installation (stopping at the first that fails)."""
    run = Run()
    with _product(args) as (cluster, product):
        if not cluster.audit_log.exists():
            raise SystemExit(f"no audit log at {cluster.audit_log}")
        bench = Bench(cluster, product, args)
        bench.remove_leftovers()
        bench.audit.check_user(0)
        _counts(bench, counts, run)
        run.stack_values = product.values
        run.versions, run.rotated = dict(cluster.tools.versions), bench.audit.rotated
    return run


def _parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="50,100,200,500", help="comma-separated CacheLink counts")
    parser.add_argument(
        "--data-dir", default="", help="where the cluster lives (default: a temporary folder)"
    )
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
    parser.add_argument("--keep-logs", default="", help="copy the operator's and agents' logs to this folder")
    parser.add_argument("--out", default=str(results.result_path(BENCH)), help="JSON file")
    return parser


def main() -> int:
    """Run the counts, print the JSON report and write it to ``--out``."""
    args = _parser().parse_args()
    if args.steady_seconds is None:
        args.steady_seconds = 2.5 * args.resync_seconds
    counts = [int(c) for c in args.counts.split(",") if c]
    started = datetime.now(UTC)
    run = _run(args, counts)
    report = {
        "benchmark": BENCH,
        "command": results.command(),
        "date": started.isoformat(timespec="seconds"),
        "duration_s": rounded((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": results.machine(),
        "versions": run.versions,
        "settings": {
            "nodes": "three real nodes (kubelet + containerd + kube-proxy)",
            "agent_mode": "in-process",
            "pool_bytes": POOL_BYTES,
            "resync_s": args.resync_seconds,
            "steady_s": args.steady_seconds,
            "apply": f"kubectl apply --server-side, chunks of {APPLY_CHUNK} as concurrent processes",
            "timeout_s": args.timeout,
            "settle_s": args.settle_seconds,
            "stack_values": run.stack_values,
        },
        "targets": operator_report.TARGETS,
        "results": run.results,
        "growth": operator_report.growth(run.results),
        "targets_met": operator_report.verdict(run.results),
        "notes": operator_report.NOTES
        + (["the audit log rotated during the run: some requests may be missing"] if run.rotated else []),
    }
    print(results.write(args.out, report))
    print(operator_report.summary(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
