"""The container image's recipe: lint the Dockerfile and run its exact install commands in a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: the installed wheel's processes see only the wheel, never a checkout named by PYTHONPATH
WHEEL_ONLY = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    done = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runs_the_tested_install_script_and_is_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert "RUN hack/install-wheel.sh /wheels /opt/cachelink" in text
    assert "USER 65532:65532" in text
    assert text.count("FROM ") == 2, "multi-stage: builder and runtime"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "build"} <= set(ignored)


@pytest.mark.slow
def test_install_script_builds_a_working_wheel(tmp_path):
    """Exactly what the builder stage runs, then a smoke run of both entrypoints and the engine."""
    venv = tmp_path / "venv"
    done = subprocess.run(
        [str(ROOT / "hack" / "install-wheel.sh"), str(tmp_path / "wheels"), str(venv)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for entrypoint in ("cachelink-operator", "cachelink-agent", "cachelink"):
        help_text = subprocess.run(
            [str(venv / "bin" / entrypoint), "--help"],
            capture_output=True,
            text=True,
            check=True,
            env=WHEEL_ONLY,
        ).stdout
        assert "usage" in help_text.lower()
    smoke = textwrap.dedent("""
        from llm_datadist import LLMDataDist, LLMRole, LLMConfig, CacheDesc, DataType
        dd = LLMDataDist(LLMRole.PROMPT, 0)
        cfg = LLMConfig()
        cfg.enable_cache_manager = True
        cfg.device_id = 0
        cfg.mem_pool_cfg = '{"memory_size": 1048576}'
        dd.init(cfg.generate_options())
        cache = dd.cache_manager.allocate_cache(CacheDesc(1, [1, 16], DataType.DT_FLOAT))
        cache.numpy(0)[:] = 2.5
        print(float(cache.numpy(0).sum()))
        dd.finalize()
    """)
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-P", "-c", smoke],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
        env=WHEEL_ONLY,
    ).stdout
    assert out.strip() == "40.0"
    # the wheel carries the chart that `cachelink demo` installs, and finds it outside a checkout
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-P",
            "-c",
            "from cachelink.release.resources import chart_dir; print(chart_dir())",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
        env=WHEEL_ONLY,
    ).stdout.strip()
    assert where.startswith(str(venv)) and (Path(where) / "Chart.yaml").is_file(), where
    assert (Path(where) / "templates" / "agent-daemonset.yaml").is_file()
