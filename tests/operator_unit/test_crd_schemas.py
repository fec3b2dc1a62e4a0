"""The canonical CRDs and the pydantic models agree field by field: every field's type, required-ness,
enum, bounds (numbers, string lengths and patterns, item and property counts) and default, both ways."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from cachelink_operator.models import (
    CacheLinkPolicySpec,
    CacheLinkPolicyStatus,
    CacheLinkSpec,
    CacheLinkStatus,
)
from pydantic import BaseModel

CRDS = Path(__file__).resolve().parents[2] / "crds"
#: what a field's schema constrains, compared between the CRD and the model
CONSTRAINTS = (
    "type",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
)
#: not compared: prose; ``format: date-time`` (the operator keeps timestamps as RFC 3339 strings and parses
#: them with ``cachelink_operator.timestamps``); the Kubernetes extensions (CEL rules, list types), which the
#: models' validators repeat where they matter (tests/operator_unit/test_options.py)
IGNORED = ("description", "format", "title")
#: Status is written by the operator alone. The models' defaults there are how it reads a status written
#: before a field existed: the empty value of the field's type, or one of these. The CRD declares no status
#: defaults: the API server would fill them in on every read, and the operator's merge patch
#: (``status.merge_patch``) would undo them on every write.
STATUS_READ_DEFAULTS = {
    ".status.instances[].state": "Pending",  # not yet initialized
    ".status.links[].state": "Pending",  # not yet linked
    ".status.links[].current": True,  # between pods of the current revision unless it says otherwise
}


def _crd(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"cachelink.io_{name}.yaml").read_text())
    [version] = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    return version["schema"]["openAPIV3Schema"]["properties"]


class _Schema:
    """A model's JSON schema (by alias), with references resolved and ``X | None`` unwrapped."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.schema = model.model_json_schema(by_alias=True, mode="validation")
        self.defs = self.schema.get("$defs", {})

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """``node`` with ``$ref`` and ``anyOf [X, null]`` replaced by X (keeping ``default``)."""
        extra = {k: v for k, v in node.items() if k not in ("$ref", "anyOf", "allOf")}
        if "$ref" in node:
            return {**self.resolve(self.defs[node["$ref"].rsplit("/", 1)[1]]), **extra}
        if "allOf" in node and len(node["allOf"]) == 1:
            return {**self.resolve(node["allOf"][0]), **extra}
        if "anyOf" in node:
            kinds = [k for k in node["anyOf"] if k != {"type": "null"}]
            assert len(kinds) == 1, f"a union the CRD cannot express: {node}"
            return {**self.resolve(kinds[0]), **extra}
        return node


def _unset(value: Any, path: str) -> bool:
    """Whether a model default means "not set": None or an empty collection; in status also the empty
    value of a type (``""``, 0, false) and :data:`STATUS_READ_DEFAULTS`."""
    if value is None or value in ({}, []):
        return True
    if not path.startswith(".status"):
        return False
    return value in ("", 0) or STATUS_READ_DEFAULTS.get(path) == value  # 0 is also false


def _compare(
    model: _Schema, mine: dict[str, Any], crd: dict[str, Any], path: str, problems: list[str]
) -> None:
    mine = model.resolve(mine)
    for key in CONSTRAINTS:
        if key == "enum" and sorted(mine.get(key, ())) == sorted(crd.get(key, ())):
            continue  # the order of an enum's values does not matter
        if mine.get(key) != crd.get(key):
            problems.append(f"{path}: {key}: model {mine.get(key)!r}, CRD {crd.get(key)!r}")
    _compare_default(mine, crd, path, problems)
    if crd.get("type") == "object" or mine.get("type") == "object":
        _compare_object(model, mine, crd, path, problems)
    if "items" in crd or "items" in mine:
        _compare(model, mine.get("items", {}), crd.get("items", {}), f"{path}[]", problems)


def _compare_default(mine: dict[str, Any], crd: dict[str, Any], path: str, problems: list[str]) -> None:
    default = mine.get("default")
    if "default" in crd:
        if default != crd["default"]:
            problems.append(f"{path}: default: model {default!r}, CRD {crd['default']!r}")
    elif isinstance(default, dict):
        pass  # a nested model built from nothing: its fields' defaults are compared one by one
    elif not _unset(default, path):
        problems.append(f"{path}: default: model {default!r}, CRD none")


def _compare_object(
    model: _Schema, mine: dict[str, Any], crd: dict[str, Any], path: str, problems: list[str]
) -> None:
    props, crd_props = mine.get("properties", {}), crd.get("properties", {})
    for name in sorted(props.keys() - crd_props.keys()):
        problems.append(f"{path}.{name}: in the model only")
    for name in sorted(crd_props.keys() - props.keys()):
        problems.append(f"{path}.{name}: in the CRD only")
    required, crd_required = set(mine.get("required", ())), set(crd.get("required", ()))
    if required != crd_required:
        problems.append(f"{path}: required: model {sorted(required)}, CRD {sorted(crd_required)}")
    for name in sorted(props.keys() & crd_props.keys()):
        _compare(model, props[name], crd_props[name], f"{path}.{name}", problems)
    values, crd_values = mine.get("additionalProperties"), crd.get("additionalProperties")
    if isinstance(values, dict) or isinstance(crd_values, dict):
        _compare(model, values or {}, crd_values or {}, f"{path}{{}}", problems)


@pytest.mark.parametrize(
    ("crd", "field", "model"),
    [
        ("cachelinks", "spec", CacheLinkSpec),
        ("cachelinks", "status", CacheLinkStatus),
        ("cachelinkpolicies", "spec", CacheLinkPolicySpec),
        ("cachelinkpolicies", "status", CacheLinkPolicyStatus),
    ],
)
def test_models_agree_with_the_crd_schemas(crd: str, field: str, model: type[BaseModel]) -> None:
    problems: list[str] = []
    schema = _Schema(model)
    _compare(schema, schema.schema, _crd(crd)[field], f".{field}", problems)
    assert not problems, "\n".join(problems)


def test_a_difference_in_any_direction_is_found() -> None:
    """The comparison is not vacuous: a bound, a required field, a default and an extra field planted in
    the CRD are each reported."""
    crd = copy.deepcopy(_crd("cachelinks")["spec"])
    crd["properties"]["options"]["properties"]["pageShift"]["maximum"] = 31
    crd["required"] = ["prompt"]
    crd["properties"]["options"]["properties"]["linkRetryCount"]["default"] = 1
    crd["properties"]["topology"]["properties"]["pairs"]["items"]["properties"]["weight"] = {
        "type": "integer"
    }
    problems: list[str] = []
    schema = _Schema(CacheLinkSpec)
    _compare(schema, schema.schema, crd, ".spec", problems)
    assert problems == [
        ".spec: required: model ['decode', 'prompt'], CRD ['prompt']",
        ".spec.options.linkRetryCount: default: model None, CRD 1",
        ".spec.options.pageShift: maximum: model 30, CRD 31",
        ".spec.topology.pairs[].weight: in the CRD only",
    ]
