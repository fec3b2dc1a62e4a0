"""The container image's recipe: lint the Dockerfile and run its exact install commands in a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
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
    # the runtime wheel carries none of the development tools (their chart copy, CRDs, Go modules) ...
    (wheel,) = (tmp_path / "wheels").glob("cachelink-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        dev_files = [
            name
            for name in archive.namelist()
            if name.startswith("cachelink_dev/") or name.endswith(("go.mod", "Chart.yaml", "crds/"))
        ]
    assert dev_files == []
    # ... so its command has no dev-cluster sub-commands, and the cluster demo says what is missing
    cli = str(venv / "bin" / "cachelink")
    help_text = subprocess.run([cli, "--help"], capture_output=True, text=True, check=True, env=WHEEL_ONLY)
    assert "{demo}" in help_text.stdout, help_text.stdout  # the only sub-command without the dev tools
    demo = subprocess.run(
        [cli, "demo"], capture_output=True, text=True, cwd=tmp_path, env=WHEEL_ONLY, timeout=60, check=False
    )
    assert demo.returncode == 2 and "development tools" in demo.stderr, demo.stdout + demo.stderr


@pytest.mark.slow
def test_the_dev_tools_wheel_carries_the_chart_crds_and_tool_modules(tmp_path):
    """``cachelink-dev`` (``devtools/``) ships what its commands need outside a checkout, from the one
    source of each: the chart of ``charts/``, the CRDs of ``crds/``, the Go modules of ``hack/tools``."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT / "devtools"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = tmp_path.glob("cachelink_dev-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    probe = textwrap.dedent("""
        from cachelink_dev.devcluster.build import hack_dir
        from cachelink_dev.release.resources import chart_dir, crds
        print(chart_dir())
        print(hack_dir())
        print(" ".join(sorted(doc["metadata"]["name"] for doc in crds())))
    """)
    chart, hack, crd_names = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
        env={**WHEEL_ONLY, "PYTHONPATH": str(site)},
    ).stdout.splitlines()
    assert chart.startswith(str(site)) and (Path(chart) / "templates" / "agent-daemonset.yaml").is_file()
    assert hack.startswith(str(site)) and (Path(hack) / "tools" / "kubernetes" / "go.mod").is_file()
    assert crd_names == "cachelinkpolicies.cachelink.io cachelinks.cachelink.io"
    for name in ("cachelink.io_cachelinks.yaml", "cachelink.io_cachelinkpolicies.yaml"):
        shipped = site / "cachelink_dev" / "release" / "data" / "crds" / name
        assert shipped.read_text() == (ROOT / "crds" / name).read_text()
