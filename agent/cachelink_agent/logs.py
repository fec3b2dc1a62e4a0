"""Logging setup: plain text or one JSON object per line (``--log-format json``)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def json_formatter() -> logging.Formatter:
    """One JSON object per record (python-json-logger): ts, level, logger, msg, pid, extras, exc_info."""
    return JsonFormatter(
        "{levelname}{name}{message}{process}",
        style="{",
        timestamp="ts",
        rename_fields={"levelname": "level", "name": "logger", "message": "msg", "process": "pid"},
    )


def setup(log_format: str, level: str) -> None:
    """Send logs to stderr in the chosen format (stdout stays free for the engine's own logger)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
