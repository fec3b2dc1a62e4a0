"""Shared by the inference tests: the prompts, server arguments and a tiny blocking HTTP client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT_S = 300.0
DATA = Path(__file__).with_name("data")

PROMPTS = {
    "short": "The capital of France is",  # 6 tokens: one block of 16
    "long": (
        "In a quiet harbour town, the lighthouse keeper kept a journal of every ship that passed. "
        "One stormy night he wrote about a vessel with red sails that never reached the shore, and"
    ),  # more than two blocks
    "other": "Water boils at a temperature of",
}
MAX_TOKENS = 8


def server_args(role: str, cluster_id: int, **opts: Any) -> list[str]:
    args = [role, "--cluster-id", str(cluster_id), "--num-blocks", "64"]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (False, None):
            args += [flag, str(value)]
    return args


def call(url: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.status, _decode(resp.read(), resp.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _decode(error.read(), error.headers.get("Content-Type", ""))


def _decode(payload: bytes, content_type: str) -> Any:
    if content_type.startswith("text/event-stream"):
        events = []
        for line in payload.decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
        return events
    return json.loads(payload)


def stream_tokens(events: list[dict[str, Any]]) -> list[int]:
    return [t for e in events if "choices" in e for t in e["choices"][0]["token_ids"]]
