"""Every YAML example is accepted by the real API server (server-side validation, CRDs and CEL included).

API-level: runs against the cluster of ``kube_target`` (the development cluster, or an external one named
with ``--e2e-kubeconfig``). Nothing is stored: the examples are applied with ``--dry-run=server``, their
namespaced objects moved into a namespace of the test's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cachelink_e2e_target import KubeTarget

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.api]


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_example_is_valid_for_the_api_server(
    cachelink_crds: KubeTarget, api_namespace: str, example: str
) -> None:
    objects = [doc for doc in yaml.safe_load_all((ROOT / "examples" / example).read_text()) if doc]
    assert objects, f"{example} holds no object"
    for obj in objects:
        if "namespace" in obj.get("metadata", {}):
            obj["metadata"]["namespace"] = api_namespace
    done = cachelink_crds.apply(*objects, dry_run=True, check=False)
    assert done.returncode == 0, done.stderr
