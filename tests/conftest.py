"""Shared by every suite: what a test module leaks (a thread still running, an unclosed socket or file)
fails that module, instead of warning later in whichever test or thread happens to free it; and, where
``./dev test`` asks for it (``CACHELINK_STRICT_SKIPS=1``, as root, as in CI), a skip fails unless the test
is marked ``opt_in`` (it needs something CI is not asked to have) - checked on each test's report."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from cachelink_dev.devcluster.build import Tools, cached_tools
from cachelink_dev.realnodes.images import BaseImage, Podman, context_digest

ROOT = Path(__file__).resolve().parents[1]
#: how long a module's threads may take to end once its fixtures are torn down
GRACE_S = 5.0


def _leftover_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    deadline = time.monotonic() + GRACE_S
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(autouse=True, scope="module")
def _no_leaks_left_by_the_module() -> Iterator[None]:
    """At a module's end: no thread it started still runs, and collecting garbage (``ResourceWarning`` an
    error) frees nothing that was left open."""
    before = set(threading.enumerate())
    yield
    left = _leftover_threads(before)
    unraisable: list[str] = []
    previous = sys.unraisablehook

    def hook(info: Any) -> None:
        unraisable.append(f"{info.exc_type.__name__}: {info.exc_value} ({info.object!r})")

    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            gc.collect()
    finally:
        sys.unraisablehook = previous
    problems = [f"thread {t.name!r} ({t!r}) still runs" for t in left] + unraisable
    assert not problems, "the module leaked: " + "; ".join(problems)


#: set by ``./dev test`` where everything the suites need is set up (as root): a skip is then a failure,
#: unless the test is marked ``opt_in``
STRICT_SKIPS = "CACHELINK_STRICT_SKIPS"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under ``CACHELINK_STRICT_SKIPS=1``, a skipped test that is not ``opt_in`` is reported failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.skipped or os.environ.get(STRICT_SKIPS) != "1" or item.get_closest_marker("opt_in"):
        return
    if hasattr(report, "wasxfail"):
        return  # an expected failure, not a skip
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under {STRICT_SKIPS}=1 without an opt_in mark: {reason}\n"
        "(set up what it needs, or mark it @pytest.mark.opt_in if CI is not meant to have it)"
    )


#: set by ``./dev test`` once it built the real nodes' tools and images: their tests must not skip then
REQUIRE_REAL_NODES = "CACHELINK_REQUIRE_REAL_NODES"


@pytest.fixture(scope="session")
def real_node_part_missing() -> Callable[[str], NoReturn]:
    """Skip a test of real nodes or containers that lacks a part (root, tools, an image) and say which; a
    failure instead when ``CACHELINK_REQUIRE_REAL_NODES=1``, so CI never skips them silently."""

    def missing(reason: str) -> NoReturn:
        if os.environ.get(REQUIRE_REAL_NODES) == "1":
            pytest.fail(f"{REQUIRE_REAL_NODES}=1, but {reason}")
        pytest.skip(reason)

    return missing


@pytest.fixture(scope="session")
def node_tools(real_node_part_missing: Callable[[str], NoReturn]) -> Tools:
    if os.geteuid() != 0:
        real_node_part_missing("real nodes need root")
    tools = cached_tools(real_nodes=True)
    if tools is None:
        real_node_part_missing("the real-node tools are not built: run `cachelink real-nodes build` (root)")
    return tools


@pytest.fixture(scope="session")
def product_image(node_tools: Tools, real_node_part_missing: Callable[[str], NoReturn]) -> str:
    """The image of the current source (by its context digest), or ``CACHELINK_TEST_IMAGE``."""
    if os.environ.get("CACHELINK_TEST_IMAGE"):
        return os.environ["CACHELINK_TEST_IMAGE"]
    podman = Podman()
    base = podman.image_id(BaseImage().ref)
    if base is None:
        real_node_part_missing("no base image: run `cachelink real-nodes build` (root)")
    ref = f"localhost/cachelink:ctx-{context_digest(ROOT, base)[:16]}"
    if podman.image_id(ref) is None:
        real_node_part_missing(
            f"no image of the current source ({ref}): run `cachelink real-nodes build` (root)"
        )
    return ref
