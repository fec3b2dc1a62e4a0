"""Files shipped with the package: the demo's samples, the CRDs, and the Helm chart.

The ``cachelink-dev`` wheel build installs ``crds/`` (the one source) as ``data/crds`` and the chart as
``cachelink_dev/release/chart`` (``devtools/pyproject.toml``); nothing is copied by hand. In a checkout,
``crds/`` and ``charts/cachelink`` themselves are used, so what is being edited is what runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DATA_DIR = Path(__file__).resolve().parent / "data"
CRD_NAMES = ("cachelinks.cachelink.io", "cachelinkpolicies.cachelink.io")
CRD_FILES = ("cachelink.io_cachelinks.yaml", "cachelink.io_cachelinkpolicies.yaml")


def checkout_root() -> Path | None:
    """The repository the package runs from, if it runs from a checkout (not from a wheel)."""
    root = DATA_DIR.parents[3]
    if (root / "pyproject.toml").is_file() and (root / "crds").is_dir() and (root / "charts").is_dir():
        return root
    return None


def read_text(name: str) -> str:
    """The text of ``data/<name>``."""
    return (DATA_DIR / name).read_text(encoding="utf-8")


def load_documents(name: str) -> list[dict[str, Any]]:
    """The YAML documents of ``data/<name>`` (empty ones dropped)."""
    return [doc for doc in yaml.safe_load_all(read_text(name)) if doc]


def crds() -> list[dict[str, Any]]:
    """The CustomResourceDefinitions of CacheLink and CacheLinkPolicy (a checkout's ``crds/`` first)."""
    root = checkout_root()
    docs = []
    for name in CRD_FILES:
        text = (root / "crds" / name).read_text() if root else read_text(f"crds/{name}")
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def chart_dir() -> Path | None:
    """The chart: a checkout's ``charts/cachelink``, else the copy installed with the package."""
    root = checkout_root()
    if root is not None:
        return root / "charts" / "cachelink"
    installed = DATA_DIR.parent / "chart"
    return installed if (installed / "Chart.yaml").is_file() else None
