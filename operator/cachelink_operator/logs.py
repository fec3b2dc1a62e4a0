"""Logging setup: one JSON object per line (python-json-logger), or plain text."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

#: what kopf's per-object loggers attach to every record for its own use: its settings object (not
#: serialisable) and the event-posting flag; ``k8s_ref`` (the object's reference) stays in the line
KOPF_INTERNAL_ATTRS = ("settings", "k8s_skip")


def setup(log_format: str, verbose: bool) -> None:
    """Log to stdout; ``json`` writes ts, level, logger, msg, extras and exc_info as one object per line."""
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                timestamp="ts",
                rename_fields={"levelname": "level", "name": "logger", "message": "msg"},
                reserved_attrs=[*RESERVED_ATTRS, *KOPF_INTERNAL_ATTRS],
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.INFO)
