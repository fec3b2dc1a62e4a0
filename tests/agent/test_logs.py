"""Structured logs: with --log-format json every line the agent writes is one JSON object."""

from __future__ import annotations

import json

from .conftest import PROMPT_IP


def test_json_logs_are_one_object_per_line(agents):
    agent = agents("node-a", PROMPT_IP, "--in-process", "--log-format", "json")
    agent.put_instance("prompt-0", 11)
    status, _ = agent.http("GET", "/v1/instances/prompt-0", token="wrong:token")
    assert status == 401
    agent.kill(15)  # SIGTERM: a clean stop, logged too
    lines = [
        line for line in agent.log.read_text().splitlines() if line.strip() and not line.startswith("==>")
    ]
    records = [json.loads(line) for line in lines]
    assert records, "the agent logged something"
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records), records[:3]
    assert {r["level"] for r in records} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    text = " ".join(json.dumps(r) for r in records)
    assert "prompt-0" in text, "the instance it created is named in its logs"
