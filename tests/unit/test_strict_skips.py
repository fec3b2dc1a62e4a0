"""Where ``./dev test`` sets ``CACHELINK_STRICT_SKIPS=1`` (CI), a skip fails unless the test is ``opt_in``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = f"""
import importlib.util

_spec = importlib.util.spec_from_file_location("suite_conftest", {str(ROOT / "tests" / "conftest.py")!r})
_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_suite)
pytest_runtest_makereport = _suite.pytest_runtest_makereport


def pytest_configure(config):
    config.addinivalue_line("markers", "opt_in: may skip")
"""

TESTS = """
import pytest


@pytest.fixture
def missing_part():
    pytest.skip("a part is missing")


def test_skips_in_its_body():
    pytest.skip("not here")


def test_skips_in_a_fixture(missing_part):
    pass


@pytest.mark.skipif(True, reason="never here")
def test_skipped_by_a_mark():
    pass


@pytest.mark.opt_in
def test_declared_optional():
    pytest.skip("needs a GPU")


@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False


def test_passes():
    pass
"""


def outcomes(tmp_path: Path, strict: bool) -> dict[str, str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_sample.py").write_text(TESTS)
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "CACHELINK_STRICT_SKIPS"}
    if strict:
        env["CACHELINK_STRICT_SKIPS"] = "1"
    plugin = tmp_path / "record.py"
    plugin.write_text(
        "import json\n"
        "seen = {}\n"
        "def pytest_runtest_logreport(report):\n"
        "    if report.when == 'call' or report.outcome != 'passed':\n"
        "        seen.setdefault(report.nodeid.split('::')[-1], report.outcome)\n"
        f"def pytest_sessionfinish(session):\n    open({str(report)!r}, 'w').write(json.dumps(seen))\n"
    )
    subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "record",
         "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    return json.loads(report.read_text())


def test_a_skip_without_opt_in_fails_under_strict_skips(tmp_path: Path) -> None:
    assert outcomes(tmp_path, strict=True) == {
        "test_skips_in_its_body": "failed",
        "test_skips_in_a_fixture": "failed",
        "test_skipped_by_a_mark": "failed",
        "test_declared_optional": "skipped",
        "test_expected_failure": "skipped",
        "test_passes": "passed",
    }


def test_skips_stay_skips_without_strict_skips(tmp_path: Path) -> None:
    found = outcomes(tmp_path, strict=False)
    assert {name for name, outcome in found.items() if outcome == "skipped"} == {
        "test_skips_in_its_body",
        "test_skips_in_a_fixture",
        "test_skipped_by_a_mark",
        "test_declared_optional",
        "test_expected_failure",
    }
