"""Scale benchmark of the operator on the development cluster; prints JSON and writes it to
``bench/results/operator_scale.json`` (not run in CI).

    .venv/bin/python bench/operator_scale.py --counts 50,100,200,500

Its parts are in ``bench/benchlib/`` (the audit log, /proc sampling, Prometheus counters, the watch, the
driver of one count, the report); this file is the command line. For each count N, N CacheLinks
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
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import operator_report, results
from benchlib.operator_driver import APPLY_CHUNK, POOL_BYTES, Bench
from benchlib.stats import rounded

from cachelink.devcluster import DevCluster
from cachelink.devcluster.fixtures import running_cluster
from cachelink.localstack.stack import LocalStack

BENCH = "operator_scale"


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


@dataclass
class Run:
    """What :func:`_run` measured, and with what."""

    results: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    #: whether the audit log rotated during the run (some requests may be missing)
    rotated: bool = False
    #: the chart values the stack ran with
    stack_values: dict[str, Any] | None = None


def _stack(cluster: DevCluster, folder: Path, args: argparse.Namespace) -> LocalStack:
    """The local stack (agents in-process), with the agents' link-repair loop and the operator's log level
    at their production defaults (the local stack's 1 s loop and DEBUG logging are for tests)."""
    stack = LocalStack(cluster, folder, agent_mode="in-process", resync_s=args.resync_seconds, max_pool="8Gi")
    operator = stack.values["operator"]
    operator["extraArgs"] = [a for a in operator["extraArgs"] if args.operator_verbose or a != "--verbose"]
    agent_set = stack.values["agentDaemonSet"]
    agent_set["extraArgs"] = [
        *(a for a in agent_set["extraArgs"] if not a.startswith("--reconcile-interval=")),
        f"--reconcile-interval={args.agent_reconcile_seconds:g}",
    ]
    return stack


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
    """Every count on one stack (stopping at the first that fails)."""
    run = Run()
    with _cluster(args.data_dir) as (cluster, tmp):
        if not cluster.audit_log.exists():
            raise SystemExit(f"no audit log at {cluster.audit_log}: restart the cluster (down, up)")
        stack = _stack(cluster, tmp / "stack", args)
        try:
            stack.setup()
            bench = Bench(cluster, stack, args)
            bench.remove_leftovers()
            start = bench.audit.offset()
            stack.start_operator()
            bench.audit.check_user(start)
            _counts(bench, counts, run)
        finally:
            if args.keep_logs:  # before down(): that removes the pods' folders, logs included
                _keep_logs(stack, Path(args.keep_logs))
            stack.down()
        run.stack_values = getattr(stack, "values", None)
        run.versions, run.rotated = dict(cluster.tools.versions), bench.audit.rotated
    return run


def _parser() -> argparse.ArgumentParser:
    """The command line."""
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
