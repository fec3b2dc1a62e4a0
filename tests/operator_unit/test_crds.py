"""The canonical CRDs and the pydantic models agree field by field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cachelink_operator.models import CacheLinkPolicySpec, InstanceOptions, Limits, Options

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _schema(name: str) -> dict:
    crd = yaml.safe_load((CRDS / f"cachelink.io_{name}.yaml").read_text())
    [version] = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    return version["schema"]["openAPIV3Schema"]["properties"]


def _aliases(model) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def test_cachelink_options_match_the_models():
    spec = _schema("cachelinks")["spec"]["properties"]
    assert set(spec["options"]["properties"]) == _aliases(Options)
    for side in ("prompt", "decode"):
        assert set(spec[side]["properties"]["options"]["properties"]) == _aliases(InstanceOptions)


def test_policy_matches_the_models():
    spec = _schema("cachelinkpolicies")["spec"]["properties"]
    assert set(spec) == _aliases(CacheLinkPolicySpec)
    assert set(spec["defaults"]["properties"]) == _aliases(Options)
    assert set(spec["limits"]["properties"]) == _aliases(Limits)


@pytest.mark.parametrize("name", ["cachelinks", "cachelinkpolicies"])
def test_printer_columns_and_cel_rules_present(name):
    crd = yaml.safe_load((CRDS / f"cachelink.io_{name}.yaml").read_text())
    [version] = crd["spec"]["versions"]
    assert any(c["name"] == "Age" for c in version["additionalPrinterColumns"])
    assert "x-kubernetes-validations" in (CRDS / f"cachelink.io_{name}.yaml").read_text()
