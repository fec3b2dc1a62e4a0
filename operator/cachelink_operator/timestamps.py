"""Kubernetes timestamps (RFC 3339, UTC): parsed one way everywhere, independent of the local time zone."""

from __future__ import annotations

import datetime


def parse(text: str) -> datetime.datetime:
    """``2026-07-01T12:00:00Z`` (or with an offset or fraction) as an aware ``datetime``."""
    at = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return at


def epoch_seconds(text: str) -> float:
    """The timestamp as seconds since the epoch."""
    return parse(text).timestamp()


def age_seconds(text: str, now: datetime.datetime | None = None) -> float:
    """Seconds from the timestamp to ``now`` (the current time by default)."""
    return ((now or datetime.datetime.now(datetime.UTC)) - parse(text)).total_seconds()
