"""Every YAML example is accepted by the real API server (server-side validation, CRDs and CEL included)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_example_is_valid_for_the_api_server(dev_cluster, kubectl, example):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds"), check=True)
    kubectl("create", "namespace", "inference", check=False)
    done = kubectl("apply", "--dry-run=server", "-f", str(ROOT / "examples" / example), check=False)
    assert done.returncode == 0, done.stderr

