"""The layers hold: import-linter's contracts pass on the tree, and each fails when a violation is planted."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {  # import name -> source folder
    "llm_datadist": ROOT / "llm_datadist",
    "cachelink": ROOT / "cachelink",
    "cachelink_agent": ROOT / "agent" / "cachelink_agent",
    "cachelink_operator": ROOT / "operator" / "cachelink_operator",
    "cachelink_inference": ROOT / "inference" / "cachelink_inference",
    "cachelink_dev": ROOT / "devtools" / "cachelink_dev",
}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# contract id -> (file to write or append to, planted line, what the report names)
PLANTED = {
    "native-shim": (
        "cachelink_agent/_planted.py",
        "from llm_datadist import _native",
        "llm_datadist._native",
    ),
    "engine-alone": ("llm_datadist/_planted.py", "import cachelink_agent.client", "cachelink_agent"),
    "agent-below-operator": (
        "cachelink_agent/_planted.py",
        "import cachelink_operator.models",
        "cachelink_operator",
    ),
    "inference-is-a-user": (
        "cachelink_inference/_planted.py",
        "import cachelink_agent.client",
        "cachelink_agent",
    ),
    "operator-uses-client": ("cachelink_operator/_planted.py", "import numpy", "numpy"),
    "attach-client": (
        "cachelink_agent/attach.py",
        "import cachelink_agent.instances",
        "cachelink_agent.instances",
    ),
    "product-without-dev-tools": (
        "cachelink_operator/_planted.py",
        "from cachelink_dev.release import kube",
        "cachelink_dev",
    ),
    "agent-acyclic": ("cachelink_agent/runtime.py", "from cachelink_agent import attach_server", "runtime"),
}


def _copy_sources(dest: Path) -> None:
    for name, folder in PACKAGES.items():
        shutil.copytree(folder, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "data"))


def _lint(src: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    config = src / "pyproject.toml"
    if not config.exists():
        shutil.copy(ROOT / "pyproject.toml", config)
    argv = [str(LINT_IMPORTS), "--config", str(config), "--no-cache"]
    if contract:
        argv += ["--contract", contract]
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, cwd=src, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_contracts_cover_every_planted_case():
    import tomllib

    ids = {
        c["id"]
        for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    }
    assert ids == set(PLANTED)


def test_the_operator_contract_names_every_agent_module_but_the_client_side():
    """A new agent module is forbidden to the operator unless it is added to the client side on purpose."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (operator,) = [c for c in contracts if c["id"] == "operator-uses-client"]
    forbidden = {m for m in operator["forbidden_modules"] if m.startswith("cachelink_agent.")}
    package = PACKAGES["cachelink_agent"]
    modules = {f"cachelink_agent.{p.stem}" for p in package.glob("*.py")} - {"cachelink_agent.__init__"}
    modules |= {f"cachelink_agent.{p.parent.name}" for p in package.glob("*/__init__.py")}  # subpackages
    client_side = {
        "cachelink_agent.client",
        "cachelink_agent.models",
        "cachelink_agent.tokens",
        "cachelink_agent.serving_cert",
    }
    assert modules - client_side == forbidden


def test_the_inference_contract_leaves_a_workload_only_the_attach_client():
    """The inference engine attaches as a workload would; any other agent module, new ones included, is
    forbidden to it."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (inference,) = [c for c in contracts if c["id"] == "inference-is-a-user"]
    forbidden = {m for m in inference["forbidden_modules"] if m.startswith("cachelink_agent.")}
    package = PACKAGES["cachelink_agent"]
    modules = {f"cachelink_agent.{p.stem}" for p in package.glob("*.py")} - {"cachelink_agent.__init__"}
    modules |= {f"cachelink_agent.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert modules - {"cachelink_agent.attach"} == forbidden


def test_the_tree_keeps_every_contract(tmp_path):
    _copy_sources(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("contract", sorted(PLANTED))
def test_a_planted_violation_breaks_its_contract(tmp_path, contract):
    _copy_sources(tmp_path)
    relative, line, named = PLANTED[contract]
    target = tmp_path / relative
    target.write_text((target.read_text() if target.exists() else "") + f"\n{line}  # planted\n")
    result = _lint(tmp_path, contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and named in result.stdout


def test_only_the_native_shim_imports_the_compiled_core():
    """import-linter cannot see ``_core`` (it has no Python source), so the rule is checked here."""
    importers = []
    for folder in PACKAGES.values():
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [f"{node.module or ''}.{alias.name}" for alias in node.names] + [
                        node.module or ""
                    ]
                if any(
                    (name.endswith("_core") and "llm_datadist" in name) or name == "._core" for name in names
                ):
                    importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["llm_datadist/_native.py"]


def test_importing_the_operator_loads_no_engine_and_no_numpy():
    code = (
        "import importlib, pkgutil, sys, cachelink_operator\n"
        "for m in pkgutil.walk_packages(cachelink_operator.__path__, 'cachelink_operator.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy' or m == 'llm_datadist._core'))\n"
    )
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
