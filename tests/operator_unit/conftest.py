"""Fixtures shared by the operator's unit tests."""

from __future__ import annotations

import pytest
from cachelink_operator import reconcile


@pytest.fixture
def posted_warnings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The warning events a test's reconcile passes post (reason, message); normal events are dropped."""
    posted: list[tuple[str, str]] = []
    monkeypatch.setattr(
        reconcile.events, "warning", lambda obj, reason, message: posted.append((reason, message))
    )
    monkeypatch.setattr(reconcile.events, "normal", lambda obj, reason, message: None)
    return posted
