"""The helm binary built for the local cluster (shared by the chart's tests)."""

from __future__ import annotations

import pytest

from cachelink_dev.devcluster import ensure_tools


@pytest.fixture(scope="module")
def helm() -> str:
    return str(ensure_tools().helm)
