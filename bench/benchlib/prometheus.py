"""Counters read from a Prometheus endpoint, parsed by ``prometheus_client.parser``."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families


def counters(text: str, names: Iterable[str], prefix: str = "") -> dict[str, float]:
    """The samples of the counters ``names`` (family names, without ``_total``) in an exposition ``text``,
    keyed ``name{label="value",...}`` with ``prefix`` removed from the name (labels in exposition order)."""
    wanted = set(names)
    found = {}
    for family in text_string_to_metric_families(text):
        if family.type != "counter" or family.name not in wanted:
            continue
        short = family.name.removeprefix(prefix)
        for sample in family.samples:
            if sample.name != family.name + "_total":  # _created: when the series began
                continue
            labels = ",".join(f'{key}="{value}"' for key, value in sample.labels.items())
            found[short + (f"{{{labels}}}" if labels else "")] = float(sample.value)
    return found


def scrape(url: str, names: Iterable[str], prefix: str = "", timeout: float = 5.0) -> dict[str, float]:
    """:func:`counters` of the endpoint at ``url`` now (empty if it cannot be read)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    return counters(text, names, prefix)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Counters that changed from ``before`` to ``after``, by how much."""
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items()) if v - before.get(k, 0.0)}
