"""The benchmarks run by their path without ``-P`` (nothing in ``bench/`` shadows the standard library), their
parts import, and the shared parsers read what the product writes (Prometheus text, audit events)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))


def _benchlib(module: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``benchlib.<module>``, imported as the scripts import it (``bench/`` first on ``sys.path``)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module(f"benchlib.{module}")


def test_nothing_in_bench_shadows_the_standard_library() -> None:
    names = {p.stem for p in BENCH.glob("*.py")} | {p.name for p in BENCH.iterdir() if p.is_dir()}
    assert not names & set(sys.stdlib_module_names)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_bench_runs_by_its_path_without_dash_p(script: str) -> None:
    """``--help`` from the repository's root, as the docs run them: every module the bench needs imports."""
    done = subprocess.run(
        [sys.executable, f"bench/{script}", "--help"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")


def test_result_files_are_named_after_their_bench() -> None:
    """``bench/results/<bench>.json`` or ``<bench>-<variant>.json``, except records of the dev tooling."""
    benches = {p.removesuffix(".py") for p in SCRIPTS}
    for path in (BENCH / "results").glob("*.json"):
        bench = path.stem.partition("-")[0]
        assert bench in benches or path.name == "real-nodes-setup.json", path.name


def test_prometheus_counters_read_from_the_exposition_format(monkeypatch: pytest.MonkeyPatch) -> None:
    prometheus = _benchlib("prometheus", monkeypatch)
    registry = CollectorRegistry()
    calls = Counter("cachelink_operator_agent_calls_total", "calls", ["call", "result"], registry=registry)
    calls.labels("put_instance", "ok").inc(3)
    Counter("cachelink_operator_reconciles_total", "r", registry=registry).inc()
    Counter("cachelink_operator_other_total", "not asked for", registry=registry).inc()
    text = generate_latest(registry).decode()

    found = prometheus.counters(
        text,
        ["cachelink_operator_agent_calls", "cachelink_operator_reconciles"],
        prefix="cachelink_operator_",
    )

    assert found == {'agent_calls{call="put_instance",result="ok"}': 3.0, "reconciles": 1.0}
    assert prometheus.delta({"a": 3.0, "b": 1.0}, {"a": 1.0, "b": 1.0}) == {"a": 2.0}


def test_audit_events_counted_once_per_audit_id(monkeypatch: pytest.MonkeyPatch) -> None:
    audit = _benchlib("audit", monkeypatch)
    user = "system:serviceaccount:cachelink-system:cachelink-operator"

    def event(audit_id: str, verb: str, resource: str, name: str, second: int, who: str = user) -> bytes:
        return json.dumps(
            {
                "auditID": audit_id,
                "verb": verb,
                "user": {"username": who},
                "objectRef": {"resource": resource, "name": name},
                "requestReceivedTimestamp": f"2026-01-01T00:00:{second:02d}.000000Z",
                "responseStatus": {"code": 200},
            }
        ).encode()

    log = b"\n".join(
        [
            event("1", "patch", "cachelinks", "b0001", 1),
            event("1", "patch", "cachelinks", "b0001", 1),  # the same request's next stage
            event("2", "create", "secrets", "b0001-link-secret", 2),
            event("3", "update", "leases", "cachelink-operator", 3),
            event("4", "watch", "cachelinks", "", 4),
            event("5", "create", "secrets", "x", 5, who="admin"),
            b"not json " + user.encode(),
        ]
    )
    events = audit.parse_events(log, user)
    assert sorted(e["auditID"] for e in events) == ["1", "2", "3", "4"]

    start = events[0]["t"] - 1
    counted = audit.requests(events, start, start + 10, count=2)
    assert (counted["writes"], counted["lease_writes"], counted["reads"]) == (2, 1, 1)
    assert counted["writes_per_cachelink"] == 1.0
    assert counted["writes_one_cachelink_max_without_events"] == 2  # both are b0001's
    assert counted["watches_opened"] == 1
    assert [w["request"] for w in counted["writes_listed"]] == ["patch cachelinks", "create secrets"]


def test_percentile_and_status_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    stats = _benchlib("stats", monkeypatch)
    watcher = _benchlib("watcher", monkeypatch)
    assert stats.percentile([], 0.99) == 0.0
    assert stats.percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert stats.percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    old = {"phase": "Pending", "links": [{"ready": False}], "conditions": [1, 2]}
    new = {"phase": "Ready", "links": [{"ready": True}], "conditions": [1]}
    assert watcher.changed(old, new) == ["conditions", "links[].ready", "phase"]
