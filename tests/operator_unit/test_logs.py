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
    out = subprocess.run(
        [sys.executable, "-P", "-c", SNIPPET], capture_output=True, text=True, check=True
    ).stdout
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["msg"] for r in records] == ['spec "bad"\nsecond line', "failed"]
    assert records[0]["level"] == "WARNING" and records[0]["cachelink"] == "ns/one"
    assert records[0]["logger"] == "cachelink_operator.test" and records[0]["ts"].endswith("+00:00")
    assert 'ValueError: with a "quote"' in records[1]["exc_info"]


KOPF_SNIPPET = """
import logging
import kopf
from kopf._core.actions.loggers import ObjectLogger
from cachelink_operator import logs
logs.setup("json", verbose=False)
body = kopf.Body({"apiVersion": "cachelink.io/v1alpha1", "kind": "CacheLink",
                  "metadata": {"name": "one", "namespace": "ns", "uid": "u-1"}})
ObjectLogger(body=body, settings=kopf.OperatorSettings()).info("Handler 'cachelink_changed' succeeded.")
"""


def test_kopf_object_log_lines_are_json():
    """kopf's per-object loggers carry its settings object in every record (seen in a real container:
    a "--- Logging error ---" traceback instead of the line)."""
    done = subprocess.run(
        [sys.executable, "-P", "-c", KOPF_SNIPPET], capture_output=True, text=True, check=True
    )
    assert "Logging error" not in done.stderr
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["msg"] == "Handler 'cachelink_changed' succeeded."
    assert record["k8s_ref"]["name"] == "one" and "settings" not in record
