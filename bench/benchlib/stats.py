"""The statistics the benchmark reports use, defined once."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..1) of ``values`` (0 for no values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else 0.0


def rounded(value: float, digits: int = 2) -> float:
    """``value`` rounded for a report."""
    return round(value, digits)
