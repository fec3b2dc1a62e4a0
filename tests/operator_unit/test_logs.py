"""The operator's JSON logs are valid JSON whatever the message holds (quotes, newlines, exceptions)."""

from __future__ import annotations

import json
import subprocess
import sys

SNIPPET = """
import logging
from cachelink_operator import logs
logs.setup("json", verbose=False)
log = logging.getLogger("cachelink_operator.test")
log.warning('spec "bad"\\nsecond line', extra={"cachelink": "ns/one"})
try:
    raise ValueError("with a \\"quote\\"")
except ValueError:
    log.exception("failed")
"""


def test_every_line_is_one_json_object():
    out = subprocess.run([sys.executable, "-P", "-c", SNIPPET], capture_output=True, text=True, check=True).stdout
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["msg"] for r in records] == ['spec "bad"\nsecond line', "failed"]
    assert records[0]["level"] == "WARNING" and records[0]["cachelink"] == "ns/one"
    assert records[0]["logger"] == "cachelink_operator.test" and records[0]["ts"].endswith("+00:00")
    assert 'ValueError: with a "quote"' in records[1]["exc_info"]
