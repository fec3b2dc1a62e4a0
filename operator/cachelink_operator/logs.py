"""Logging setup: one JSON object per line (python-json-logger), or plain text."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


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
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.INFO)
