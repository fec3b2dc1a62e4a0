#!/usr/bin/env python3
"""Write charts/cachelink/values.schema.json from values.yaml (or check it, --check).

Every mapping in values.yaml becomes a strict object (``additionalProperties: false``), so a typo in
``--set`` fails the install with a clear message; the keys listed in FREE_FORM take arbitrary content
(label maps, Kubernetes objects), and CONSTRAINTS narrows the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "cachelink"
FREE_FORM = {
    "commonLabels",
    "agent.selector",
    "agentDaemonSet.nodeSelector",
    "agentDaemonSet.updateStrategy",
    "operator.resources",
}
QUANTITY = {"type": "string", "pattern": r"^[0-9]+(Ki|Mi|Gi|Ti)?$"}
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "image.pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "operator.replicas": {"minimum": 1},
    "agentDaemonSet.apiPort": {"minimum": 1, "maximum": 65535},
    "operator.metricsPort": {"minimum": 1, "maximum": 65535},
    "operator.healthPort": {"minimum": 1, "maximum": 65535},
    "agentDaemonSet.maxPoolBytes": QUANTITY,
    "agentDaemonSet.agentMemory": QUANTITY,
    "agentDaemonSet.logFormat": {"enum": ["text", "json"]},
    "agentDaemonSet.tolerations": {"type": "array", "items": {"type": "object"}},
    "podSecurity.level": {"enum": ["privileged", "baseline", "restricted"]},
    "podDisruptionBudget.minAvailable": {"minimum": 0},
    "operator.extraArgs": {"items": {"type": "string"}},
    "agentDaemonSet.extraArgs": {"items": {"type": "string"}},
    "csi.driverName": {
        "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        "maxLength": 63,
    },
    "csi.kubeletDir": {"pattern": "^/[^,]*$"},
    "csi.grantWaitSeconds": {"minimum": 1, "maximum": 110},
}


def schema_for(value: Any, path: str) -> dict[str, Any]:
    if path in FREE_FORM:
        return {"type": "object"}
    if isinstance(value, dict):
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: schema_for(v, f"{path}.{k}" if path else k) for k, v in value.items()},
        }
    if isinstance(value, bool):
        node: dict[str, Any] = {"type": "boolean"}
    elif isinstance(value, int):
        node = {"type": "integer"}
    elif isinstance(value, list):
        node = {"type": "array"}
    else:
        node = {"type": "string"}
    node.update(CONSTRAINTS.get(path, {}))
    return node


def render() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", **schema_for(values, "")}
    return json.dumps(schema, indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if values.schema.json is stale")
    args = parser.parse_args()
    target = CHART / "values.schema.json"
    text = render()
    if args.check:
        if not target.exists() or target.read_text() != text:
            print("values.schema.json is stale: run hack/gen-values-schema.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
