"""Fixtures of the native suite: real peer processes and an in-process LLMDataDist."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("native_harness", Path(__file__).with_name("harness.py"))
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
sys.modules["native_harness"] = harness
_spec.loader.exec_module(harness)

Peer = harness.Peer


@pytest.fixture
def peer_factory(tmp_path: Path) -> Iterator[Callable[[], object]]:
    peers: list[object] = []

    def make() -> object:
        peer = Peer(tmp_path)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()  # type: ignore[attr-defined]


@pytest.fixture
def local_dd() -> Iterator[Callable[..., object]]:
    """Build and init an LLMDataDist in this process; finalized at teardown."""
    import llm_datadist as ld

    made: list[ld.LLMDataDist] = []

    def make(
        role: ld.LLMRole,
        cluster_id: int,
        *,
        listen: str | None = None,
        pool_mb: int = 64,
        extra: dict[str, str] | None = None,
        remote_accessible: bool = False,
    ) -> ld.LLMDataDist:
        dd = ld.LLMDataDist(role, cluster_id)
        cfg = ld.LLMConfig()
        cfg.device_id = 0
        cfg.enable_cache_manager = True
        cfg.mem_pool_cfg = '{"memory_size": %d}' % (pool_mb << 20)
        cfg.host_mem_pool_cfg = '{"memory_size": %d}' % (16 << 20)
        if remote_accessible:
            cfg.enable_remote_cache_accessible = True
        if listen:
            cfg.listen_ip_info = listen
        options = cfg.generate_options()
        options.update(extra or {})
        dd.init(options)
        made.append(dd)
        return dd

    yield make
    for dd in made:
        dd.finalize()
