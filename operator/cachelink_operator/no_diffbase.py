"""A kopf diff-base storage that keeps nothing.

The operator reconciles from a daemon and finalizes from an ``on.delete`` handler; it has no create or
update handlers, so kopf's "last handled configuration" annotation would only cost one API write per
CacheLink (and one per spec change) without ever being read for a decision.
"""

from __future__ import annotations

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """Never stores the essence; every object looks new to kopf's cause detection, which is harmless
    without create or update handlers."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """Nothing is stored."""
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Store nothing (no patch)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
