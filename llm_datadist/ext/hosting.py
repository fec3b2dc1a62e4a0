"""A live instance as the node agent and attached workloads see it, and several instances in one process.

Nothing here is needed by code written against LLM-DataDist; it exposes what the engine knows (links and
their data path, pool files and cache layout, counters, incarnation) and hosts several instances in
one process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from llm_datadist import _native
from llm_datadist.data_type import DataType
from llm_datadist.v2.llm_datadist import LLMDataDist
from llm_datadist.v2.llm_types import BlocksCacheKey, Cache, CacheDesc, CacheKey, Placement


class HostedDataDist(LLMDataDist):
    """An ``LLMDataDist`` exempt from the one-live-instance-per-process rule (agent in-process mode)."""

    _multi_instance: ClassVar[bool] = True


@dataclass(frozen=True)
class LinkState:
    """One link as the engine sees it."""

    remote_cluster_id: int
    address: str
    state: str  # "linked" | "broken"
    data_path: str  # "shm" | "tcp"
    peer_incarnation: int
    comm_id: int
    last_error: str


@dataclass(frozen=True)
class PoolFile:
    """A shared-memory pool file of an instance (``size`` bytes, mapped by attached workloads)."""

    placement: Placement
    path: str
    size: int
    used: int


@dataclass(frozen=True)
class CacheLayout:
    """Where a pool-backed cache's tensors lie inside its pool file."""

    cache_id: int
    pool_path: str
    offsets: tuple[int, ...]
    tensor_bytes: int


# This module is llm_datadist's own reader of a live instance (the agent and attached workloads use it), so
# it reads the engine, options and caches that LLMDataDist and CacheManager keep out of the compatible API.


def _engine(datadist: LLMDataDist) -> _native.Engine:
    return datadist._native_engine  # noqa: SLF001 - see above


def blocks_keys(datadist: LLMDataDist) -> dict[int, BlocksCacheKey]:
    """The ``BlocksCacheKey`` bound to each blocks cache that has one, by cache id."""
    return {
        int(info.id): BlocksCacheKey(datadist.cluster_id, int(info.blocks_model_id))
        for info in _engine(datadist).list_caches()
        if info.blocks_model_id is not None
    }


def incarnation(datadist: LLMDataDist) -> int:
    """Random id of this initialization; a restarted instance has a new one."""
    return int(_engine(datadist).incarnation)


def listen_address(datadist: LLMDataDist) -> str:
    """``ip:port`` the instance listens on (port 0 in the options becomes the real port), or ""."""
    return str(_engine(datadist).listen_address)


def links(datadist: LLMDataDist) -> list[LinkState]:
    """Links this instance initiated (``link_clusters`` and communication domains)."""
    return [
        LinkState(
            i.remote_cluster_id, i.address, i.state, i.data_path, i.peer_incarnation, i.comm_id, i.last_error
        )
        for i in _engine(datadist).links()
    ]


def linked_clients(datadist: LLMDataDist) -> list[int]:
    """Cluster ids of peers currently linked to this instance's listeners."""
    return [int(c) for c in _engine(datadist).clients()]


def counters(datadist: LLMDataDist) -> dict[str, int]:
    """Bytes pulled, pushed and served, transfers and failed transfers since init."""
    return {str(k): int(v) for k, v in _engine(datadist).counters().items()}


def pool_files(datadist: LLMDataDist) -> list[PoolFile]:
    """The instance's pool files with their capacity and use."""
    engine = _engine(datadist)
    out = []
    for placement, pool in ((Placement.DEVICE, _native.POOL_DEVICE), (Placement.HOST, _native.POOL_HOST)):
        capacity, used = engine.pool_usage(pool)
        if capacity:
            path = _pool_path(datadist, placement)
            out.append(PoolFile(placement, path, int(capacity), int(used)))
    return out


def _pool_path(datadist: LLMDataDist, placement: Placement) -> str:
    opts = datadist._engine_options  # noqa: SLF001 - see _engine
    pid = datadist._init_pid  # noqa: SLF001 - see _engine
    stem = opts.get("cachelink.pool_name") or f"cachelink-{datadist.cluster_id}-{pid}"
    suffix = ".host" if placement == Placement.HOST else ".device"
    return f"{opts.get('cachelink.pool_dir', '/dev/shm')}/{stem}{suffix}"


def desc_from_meta(meta: str) -> CacheDesc:
    """Rebuild a ``CacheDesc`` from the JSON the cache manager stores with each cache."""
    data = json.loads(meta)
    return CacheDesc(
        data["num_tensors"],
        data["shape"],
        DataType(data["data_type"]),
        Placement(data["placement"]),
        data["batch_dim_index"],
        data["seq_len_dim_index"],
    )


def caches(datadist: LLMDataDist) -> list[tuple[Cache, list[CacheKey]]]:
    """Every live cache of the instance (adopted ones included) with the keys still bound to it."""
    engine = _engine(datadist)
    manager = datadist.cache_manager
    out = []
    for info in engine.list_caches():
        desc = desc_from_meta(info.meta)
        cache = manager._make_cache(info, desc, info.blocks)  # noqa: SLF001 - see _engine
        keys = [
            CacheKey(datadist.cluster_id, req_id=req, model_id=model, prefix_id=prefix)
            if prefix != 2**64 - 1
            else CacheKey(datadist.cluster_id, req_id=req, model_id=model)
            for _slot, req, model, prefix in info.slot_keys
        ]
        out.append((cache, keys))
    return out


def cache_layout(datadist: LLMDataDist, cache: Cache) -> CacheLayout:
    """Offsets of a pool-backed cache's tensors in its pool file (for zero-copy attach)."""
    if cache.placement_pool is None:
        raise ValueError(f"cache {cache.cache_id} is caller memory, not in a shared pool")
    placement = Placement.HOST if cache.placement_pool == "host" else Placement.DEVICE
    pool = _native.POOL_HOST if placement == Placement.HOST else _native.POOL_DEVICE
    base = int(_engine(datadist).pool_base(pool))
    offsets = tuple(addr - base for addr in cache.tensor_addrs)
    return CacheLayout(cache.cache_id, _pool_path(datadist, placement), offsets, cache.cache_desc.size)
