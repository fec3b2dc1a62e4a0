"""``CacheManager``: allocate, register, pull, push and copy caches of one ``LLMDataDist``.

Every method validates its arguments the way LLM-DataDist does (TypeError / ValueError /
``LLMException(LLM_PARAM_INVALID)``), then makes exactly one native call, which runs with the GIL released
and moves every block of the request in that call: Python never loops over blocks.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from llm_datadist import _native
from llm_datadist.status import LLMException, LLMStatusCode
from llm_datadist.utils.utils import (
    check_dict,
    check_int64,
    check_isinstance,
    check_param,
    check_range,
    check_uint32,
    check_uint64,
)
from llm_datadist.v2.llm_types import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    CacheTask,
    LayerSynchronizer,
    MemInfo,
    Memtype,
    Placement,
    TransferConfig,
    TransferWithCacheKeyConfig,
)

_log = logging.getLogger("LLM_DATADIST")


MAX_REGISTERED_ADDRS = 240
_REF_SLOT_KEY, _REF_ID_AND_INDEX, _REF_BLOCKS_KEY, _REF_ADDRESS = 1, 2, 3, 4
_PULL_KWARGS = ("src_layer_range", "dst_layer_range", "tensor_num_per_layer")


def describe(desc: CacheDesc) -> str:
    """The descriptor as JSON, stored with the cache so it can be rebuilt (adoption, attach)."""
    return json.dumps(
        {
            "num_tensors": desc.num_tensors,
            "shape": list(desc.shape),
            "data_type": desc.data_type.value,
            "placement": int(desc.placement),
            "batch_dim_index": desc.batch_dim,
            "seq_len_dim_index": desc.seq_len_dim_index,
        }
    )


def _units_of(desc: CacheDesc, blocks: bool) -> int:
    """Batch slots (or blocks) of one tensor: slots are laid out along the batch dimension."""
    shape = list(desc.shape)
    units = shape[0] if blocks else shape[desc.batch_dim]
    check_param(units > 0, "cache_desc shape {0} has no {1}", shape, "blocks" if blocks else "batch")
    return int(units)


def _tensor_num_per_layer(value: object) -> int:
    check_isinstance("tensor_num_per_layer", value, int)
    assert isinstance(value, int)
    if value < 0:
        raise ValueError(f"tensor_num_per_layer's value is out of range,{value} is not a uint32 value.")
    check_param(value > 0, "tensor_num_per_layer must be > 0")
    return value


def _tensor_span(
    layer_range: range | None, per_layer: int, num_tensors: int, name: str
) -> tuple[int, int] | None:
    """(first tensor, tensor count) of a layer range; None = all tensors of the cache."""
    if layer_range is None:
        return None
    check_param(
        num_tensors % per_layer == 0,
        "tensor_num_per_layer {0} must divide num_tensors {1}",
        per_layer,
        num_tensors,
    )
    layers = num_tensors // per_layer
    check_param(
        0 <= layer_range.start < layer_range.stop <= layers,
        "{0} {1} is out of the cache's {2} layers",
        name,
        layer_range,
        layers,
    )
    return layer_range.start * per_layer, len(layer_range) * per_layer


def _spans(
    src_range: range | None,
    dst_range: range | None,
    per_layer: int,
    src_tensors: int | None,
    dst_tensors: int,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Source and destination tensor spans; omitted ranges mean all layers, and both must match."""
    dst = _tensor_span(dst_range, per_layer, dst_tensors, "dst_layer_range") or (0, dst_tensors)
    if src_tensors is None:  # remote cache: its bounds are checked by the peer
        src = (
            (src_range.start * per_layer, len(src_range) * per_layer)
            if src_range is not None
            else (0, dst[1])
        )
    else:
        src = _tensor_span(src_range, per_layer, src_tensors, "src_layer_range") or (0, src_tensors)
    check_param(src[1] == dst[1], "layer ranges differ in length: src {0} tensors, dst {1}", src[1], dst[1])
    return src, dst


def _extent(span: tuple[int, int], **fields: Any) -> _native.Extent:
    extent = _native.Extent()
    extent.tensor_start, extent.tensor_count = span
    for name, value in fields.items():
        setattr(extent, name, value)
    return extent


def _block_bytes(cache: Cache) -> int:
    return int(cache.cache_desc.size // _units_of(cache.cache_desc, True))


def _slot_bytes(cache: Cache) -> int:
    return int(cache.cache_desc.size // _units_of(cache.cache_desc, False))


class _LayerwiseTransfer:
    """Runs ``transfer_cache_async`` on its own thread, one layer at a time (the ``CacheTask`` target).

    ``TransferWithCacheKeyConfig`` layers go out as ``push_cache``/``push_blocks``; ``TransferConfig``
    layers are written to the peer's raw tensor addresses (K and V of each layer), over TCP.
    """

    def __init__(
        self,
        manager: CacheManager,
        transfer: Callable[..., None],
        src_cache: Cache,
        synchronizer: LayerSynchronizer,
        configs: Sequence[TransferConfig | TransferWithCacheKeyConfig],
        blocks: tuple[list[int], list[int]] | None,
        dst_block_bytes: int,
    ) -> None:
        self._manager = manager
        self._transfer = transfer  # the manager's own transfer, for raw-address layers
        self._src_cache = src_cache
        self._synchronizer = synchronizer
        self._configs = list(configs)
        self._blocks = blocks
        self._dst_block_bytes = dst_block_bytes
        self._results: list[LLMStatusCode | None] = [None] * len(self._configs)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cachelink-transfer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            layers = self._src_cache.cache_desc.num_tensors // 2
            for layer in range(layers):
                wanted = [i for i, c in enumerate(self._configs) if self._position(c, layer) is not None]
                if not wanted:
                    continue
                ready = self._synchronizer.synchronize_layer(layer, None)
                for index in wanted:
                    if self._results[index] not in (None, LLMStatusCode.LLM_SUCCESS):
                        continue
                    if not ready:
                        self._results[index] = LLMStatusCode.LLM_PARAM_INVALID
                        continue
                    self._results[index] = self._send_layer(self._configs[index], layer)
        finally:
            self._done.set()

    def _position(self, config: TransferConfig | TransferWithCacheKeyConfig, layer: int) -> int | None:
        """Index of ``layer`` among the layers this config sends, or None."""
        layers = config.src_layer_range or range(self._src_cache.cache_desc.num_tensors // 2)
        return layer - layers.start if layer in layers else None

    def _send_layer(self, config: TransferConfig | TransferWithCacheKeyConfig, layer: int) -> LLMStatusCode:
        position = self._position(config, layer)
        assert position is not None
        try:
            if isinstance(config, TransferConfig):
                self._send_to_addresses(config, layer, position)
            else:
                dst_layers = config.dst_layer_range
                assert dst_layers is not None  # required by TransferWithCacheKeyConfig
                src = range(layer, layer + 1)
                dst = range(dst_layers.start + position, dst_layers.start + position + 1)
                key = config.cache_key
                if isinstance(key, BlocksCacheKey):
                    src_blocks, dst_blocks = self._blocks or ([], [])
                    self._manager.push_blocks(key, self._src_cache, src_blocks, dst_blocks, src, dst)
                else:
                    self._manager.push_cache(key, self._src_cache, config.src_batch_index, src, dst)
        except LLMException as error:
            return error.status_code
        return LLMStatusCode.LLM_SUCCESS

    def _send_to_addresses(self, config: TransferConfig, layer: int, position: int) -> None:
        cache = self._src_cache
        for k in range(2):  # K then V of this layer
            tensor = 2 * layer + k
            address = config.dst_addrs[2 * position + k]
            if self._blocks is not None:
                src_blocks, dst_blocks = self._blocks
                if cache.is_blocks_cache:
                    local = _extent(
                        (tensor, 1), blocks_unit=True, blocks=src_blocks, block_bytes=_block_bytes(cache)
                    )
                else:
                    local = _extent((tensor, 1), slot=config.src_batch_index, length=_native.WHOLE_SLOT)
                remote = _extent(
                    (0, 1), blocks_unit=True, blocks=dst_blocks, block_bytes=self._dst_block_bytes
                )
            else:
                local = _extent((tensor, 1), slot=config.src_batch_index, length=_native.WHOLE_SLOT)
                remote = _extent((0, 1), length=_slot_bytes(cache))
            self._transfer(
                "transfer_cache_async",
                is_pull=False,
                cluster_id=config.dst_cluster_id,
                ref=(_REF_ADDRESS, address, 0, 0),
                remote=remote,
                flags=0,
                local_cache=cache,
                local=local,
            )

    def get(self, timeout: float | None) -> LLMStatusCode:
        if not self._done.wait(timeout):
            return LLMStatusCode.LLM_TIMEOUT
        failures = [code for code in self._results if code not in (None, LLMStatusCode.LLM_SUCCESS)]
        return failures[0] if failures else LLMStatusCode.LLM_SUCCESS

    def get_results(self, timeout: float | None) -> list[LLMStatusCode | None]:
        self._done.wait(timeout)
        return list(self._results)


class CacheManager:
    """The caches of one initialized ``LLMDataDist`` (cache-manager mode)."""

    def __init__(
        self, engine: _native.Engine, options: dict[str, str], linked_domain: Callable[[], bool]
    ) -> None:
        """Made by ``LLMDataDist.init`` from its engine, its completed options and whether it has linked a
        communication domain yet (asked at each registration)."""
        self._engine = engine
        self._options = options
        self._linked_domain = linked_domain
        self._dead = False

    def _mark_dead(self) -> None:
        self._dead = True

    def _live_engine(
        self, func: str, code: LLMStatusCode = LLMStatusCode.LLM_PARAM_INVALID
    ) -> _native.Engine:
        if self._dead:
            raise LLMException(
                f"[{func}] failed, error code is {code}, llm datadist is finalized.", status_code=code
            )
        return self._engine

    def _timeout_ms(self) -> int:
        return int(self._options.get("llm.SyncKvCacheWaitTime", "1000"))

    @property
    def _remote_accessible(self) -> bool:
        return self._options.get("llm.EnableRemoteCacheAccessible") == "1"

    def _make_cache(self, info: _native.CacheInfo, desc: CacheDesc, blocks: bool) -> Cache:
        engine = self._engine
        cache_id = info.id

        def view(tensor_index: int) -> Any:
            raw = engine.tensor_view(cache_id, tensor_index)
            from llm_datadist.data_type import numpy_dtype  # noqa: PLC0415 - keeps numpy lazy

            return raw.view(numpy_dtype(desc.data_type)).reshape(tuple(desc.shape))

        pool = (
            "host"
            if info.pool == _native.POOL_HOST
            else "device"
            if info.pool == _native.POOL_DEVICE
            else None
        )
        return Cache(
            cache_id,
            desc,
            list(info.addrs),
            blocks,
            placement_pool=pool,
            view_factory=view if pool is not None else None,
        )

    # ---------------------------------------------------------------------------- allocation

    def _allocate(self, func: str, desc: CacheDesc, blocks: bool) -> _native.CacheInfo:
        check_isinstance("cache_desc", desc, CacheDesc)
        check_param(desc.num_tensors > 0, "cache_desc.num_tensors:{0} must be > 0", desc.num_tensors)
        if desc.placement == Placement.DEVICE:
            check_param(self._options.get("llm.MemPoolConfig"), "llm.MemPoolConfig is not configured")
            pool = _native.POOL_DEVICE
        else:
            check_param(self._options.get("llm.HostMemPoolConfig"), "llm.HostMemPoolConfig is not configured")
            pool = _native.POOL_HOST
        engine = self._live_engine(func, LLMStatusCode.LLM_FAILED)
        with _native.core_call(func):
            return engine.allocate(
                pool, blocks, desc.num_tensors, desc.size, _units_of(desc, blocks), describe(desc)
            )

    def allocate_cache(self, cache_desc: CacheDesc, cache_keys: Sequence[CacheKey] = ()) -> Cache:
        """Allocate a cache; key i names batch slot i (its reference ends on a peer's pull)."""
        check_isinstance("cache_keys", cache_keys, [list, tuple], inner=CacheKey)
        check_isinstance("cache_desc", cache_desc, CacheDesc)
        keys = list(cache_keys)
        if keys:
            check_param(
                len(keys) <= _units_of(cache_desc, False),
                "cache_keys num:{0} exceeds batch size {1}",
                len(keys),
                _units_of(cache_desc, False),
            )
            check_param(len(set(keys)) == len(keys), "cache_keys contain duplicates")
        info = self._allocate("allocate_cache", cache_desc, False)
        self._bind_keys(info.id, keys, blocks=False)
        return self._make_cache(info, cache_desc, False)

    def _bind_keys(self, cache_id: int, keys: Sequence[CacheKey], *, blocks: bool) -> None:
        """Bind keys to slots; on any failure the cache is released, so nothing is half-applied."""
        try:
            with _native.core_call("allocate_cache"):
                for slot, key in enumerate(keys):
                    self._engine.bind_slot_key(cache_id, slot, key.req_id, key.model_id, key.prefix_id)
        except LLMException:
            for key in keys:
                self._engine.remove_slot_key(key.req_id, key.model_id, key.prefix_id)
            self._engine.deallocate(cache_id, blocks)
            raise

    def allocate_blocks_cache(
        self, cache_desc: CacheDesc, blocks_cache_key: BlocksCacheKey | None = None
    ) -> Cache:
        """Allocate a paged cache of ``shape[0]`` blocks, optionally named by a ``BlocksCacheKey``."""
        check_isinstance("blocks_cache_key", blocks_cache_key, BlocksCacheKey, allow_none=True)
        info = self._allocate("allocate_blocks_cache", cache_desc, True)
        if blocks_cache_key is not None:
            try:
                with _native.core_call("allocate_blocks_cache"):
                    self._engine.bind_blocks_key(info.id, blocks_cache_key.model_id)
            except LLMException:
                self._engine.deallocate(info.id, True)
                raise
        return self._make_cache(info, cache_desc, True)

    def deallocate_cache(self, cache: Cache) -> None:
        """Drop the cache's id reference (memory goes once its keys are pulled or removed)."""
        check_isinstance("cache", cache, Cache)
        check_param(not cache.is_blocks_cache, "deallocate_cache does not support blocks cache")
        self._deallocate("deallocate_cache", cache, blocks=False)

    def deallocate_blocks_cache(self, cache: Cache) -> None:
        """Free a blocks cache."""
        check_isinstance("cache", cache, Cache)
        check_param(cache.is_blocks_cache, "deallocate_blocks_cache only supports blocks cache")
        self._deallocate("deallocate_blocks_cache", cache, blocks=True)

    def _deallocate(self, func: str, cache: Cache, *, blocks: bool) -> None:
        engine = self._live_engine(func)
        if cache.placement_pool is None:  # registered memory: unregister_cache releases it
            return
        with _native.core_call(func):
            engine.deallocate(cache.cache_id, blocks)
        cache._invalidate()  # noqa: SLF001 - the manager that made a cache is the one that retires it

    def remove_cache_key(self, cache_key: CacheKey) -> None:
        """Release a key's reference without a pull; an absent key is a no-op."""
        check_isinstance("cache_key", cache_key, CacheKey)
        engine = self._live_engine("remove_cache_key")
        engine.remove_slot_key(cache_key.req_id, cache_key.model_id, cache_key.prefix_id)

    # ---------------------------------------------------------------------------- registration

    def _register(
        self, func: str, desc: CacheDesc, addrs: object, remote_accessible: bool | None, blocks: bool
    ) -> _native.CacheInfo:
        check_isinstance("cache_desc", desc, CacheDesc)
        check_isinstance("addrs", addrs, list, inner=int)
        assert isinstance(addrs, list)
        check_isinstance("remote_accessible", remote_accessible, bool, allow_none=True)
        check_param(len(addrs) > 0, "addrs is empty")
        if not blocks:
            check_param(
                len(addrs) == desc.num_tensors,
                "addrs num:{0} not equal cache_desc num_tensors:{1}",
                len(addrs),
                desc.num_tensors,
            )
        check_param(all(addr != 0 for addr in addrs), "addrs contain 0")
        check_param(len(addrs) == desc.num_tensors, "addrs num:{0} not equal num_tensors", len(addrs))
        if remote_accessible is None:
            remote_accessible = desc.placement == Placement.DEVICE and not self._linked_domain()
        check_param(
            not (remote_accessible and self._linked_domain()),
            "remote_accessible=True is not supported after link()",
        )
        for addr in addrs:
            check_uint64("addrs", addr)
        engine = self._live_engine(func, LLMStatusCode.LLM_FAILED)
        with _native.core_call(func):
            return engine.register_memory(
                blocks,
                desc.num_tensors,
                desc.size,
                _units_of(desc, blocks),
                addrs,
                remote_accessible,
                describe(desc),
            )

    def register_cache(
        self,
        cache_desc: CacheDesc,
        addrs: list[int],
        cache_keys: Sequence[CacheKey] = (),
        remote_accessible: bool | None = None,
    ) -> Cache:
        """Register memory the caller owns (one address per tensor) as a cache."""
        check_isinstance("cache_keys", cache_keys, [list, tuple], inner=CacheKey)
        info = self._register("register_cache", cache_desc, addrs, remote_accessible, False)
        self._bind_keys(info.id, list(cache_keys), blocks=False)
        return self._make_cache(info, cache_desc, False)

    def register_blocks_cache(
        self,
        cache_desc: CacheDesc,
        addrs: list[int],
        blocks_cache_key: BlocksCacheKey | None = None,
        remote_accessible: bool | None = None,
    ) -> Cache:
        """Register paged memory the caller owns (one address per tensor)."""
        check_isinstance("blocks_cache_key", blocks_cache_key, BlocksCacheKey, allow_none=True)
        info = self._register("register_blocks_cache", cache_desc, addrs, remote_accessible, True)
        if blocks_cache_key is not None:
            with _native.core_call("register_blocks_cache"):
                self._engine.bind_blocks_key(info.id, blocks_cache_key.model_id)
        return self._make_cache(info, cache_desc, True)

    def unregister_cache(self, cache_id: int) -> None:
        """Forget a registered cache (its memory stays the caller's)."""
        check_int64("cache_id", cache_id)
        engine = self._live_engine("unregister_cache")
        info = engine.find_cache(cache_id)
        if info is None:
            return
        with _native.core_call("unregister_cache"):
            engine.deallocate(cache_id, info.blocks)

    def remap_registered_memory(self, mem_infos: MemInfo | list[MemInfo]) -> None:
        """Reserved in LLM-DataDist; validates its input and does nothing."""
        infos = mem_infos if isinstance(mem_infos, list) else [mem_infos]
        for info in infos:
            check_param(isinstance(info, MemInfo), "mem_infos must be MemInfo")
            check_param(info.mem_type == Memtype.MEM_TYPE_DEVICE, "only MEM_TYPE_DEVICE can be remapped")
            check_param(info.addr != 0 and info.size > 0, "mem_info addr must be non-zero and size > 0")

    # ------------------------------------------------------------------------------- transfers

    def _transfer(
        self,
        func: str,
        *,
        is_pull: bool,
        cluster_id: int,
        ref: tuple[int, int, int, int],
        remote: _native.Extent,
        flags: int,
        local_cache: Cache,
        local: _native.Extent,
    ) -> None:
        engine = self._live_engine(func)
        check_param(
            local_cache.cache_id > 0, "cache {0} is not managed by this instance", local_cache.cache_id
        )
        kind, a, b, c = ref
        with _native.core_call(func):
            engine.transfer(
                is_pull,
                cluster_id,
                kind,
                a,
                b,
                c,
                remote,
                flags,
                local_cache.cache_id,
                local,
                self._timeout_ms(),
            )

    @staticmethod
    def _pull_kwargs(kwargs: dict[str, Any]) -> tuple[range | None, range | None, int]:
        for name in kwargs:
            if name not in _PULL_KWARGS:
                raise TypeError(f"unexpected keyword argument '{name}'")
        src_range = kwargs.get("src_layer_range")
        dst_range = kwargs.get("dst_layer_range")
        check_range("src_layer_range", src_range, require_increasing=False, allow_none=True)
        check_range("dst_layer_range", dst_range, require_increasing=False, allow_none=True)
        per_layer = _tensor_num_per_layer(kwargs.get("tensor_num_per_layer", 2))
        return src_range, dst_range, per_layer

    @staticmethod
    def _key_ref(key: CacheKey | CacheKeyByIdAndIndex) -> tuple[tuple[int, int, int, int], int]:
        if isinstance(key, CacheKey):
            has_req = key.req_id != CacheKey.INVALID_ID
            has_prefix = key.prefix_id != CacheKey.INVALID_ID
            check_param(
                has_req != has_prefix, "exactly one of req_id and prefix_id must be set in the cache key"
            )
            return (_REF_SLOT_KEY, key.req_id, key.model_id, key.prefix_id), _native.FLAG_RELEASE_KEY
        return (_REF_ID_AND_INDEX, key.cache_id, key.batch_index, 0), 0

    def pull_cache(
        self,
        cache_key: CacheKey | CacheKeyByIdAndIndex,
        cache: Cache,
        batch_index: int = 0,
        size: int = -1,
        **kwargs: Any,
    ) -> None:
        """Pull one batch slot of a peer's cache into slot ``batch_index`` of ``cache``."""
        if self._remote_accessible:
            check_isinstance("cache_key", cache_key, CacheKeyByIdAndIndex)
        else:
            check_isinstance("cache_key", cache_key, [CacheKey, CacheKeyByIdAndIndex])
        check_isinstance("cache", cache, Cache)
        check_uint32("batch_index", batch_index)
        check_isinstance("size", size, int)
        check_param(not cache.is_blocks_cache, "pull_cache does not support blocks cache")
        check_param(size == -1 or size > 0, "size:{0} must be -1 or > 0", size)
        src_range, dst_range, per_layer = self._pull_kwargs(kwargs)
        src, dst = _spans(src_range, dst_range, per_layer, None, cache.cache_desc.num_tensors)
        ref, flags = self._key_ref(cache_key)
        length = _native.WHOLE_SLOT if size == -1 else size
        self._transfer(
            "pull_cache",
            is_pull=True,
            cluster_id=cache_key.cluster_id,
            ref=ref,
            remote=_extent(src, slot=ref[2] if ref[0] == _REF_ID_AND_INDEX else 0, length=length),
            flags=flags,
            local_cache=cache,
            local=_extent(dst, slot=batch_index, length=length),
        )

    def pull_blocks(
        self,
        src_cache_key: CacheKey | CacheKeyByIdAndIndex | BlocksCacheKey,
        dst_cache: Cache,
        src_blocks: Sequence[int] = (),
        dst_blocks: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        """Pull a peer's blocks (or one slot, scattered into blocks) into ``dst_blocks`` of ``dst_cache``."""
        check_isinstance("src_cache_key", src_cache_key, [CacheKey, CacheKeyByIdAndIndex, BlocksCacheKey])
        check_isinstance("dst_cache", dst_cache, Cache)
        check_isinstance("src_blocks", src_blocks, [list, tuple], inner=int)
        check_isinstance("dst_blocks", dst_blocks, [list, tuple], inner=int)
        check_param(dst_cache.is_blocks_cache, "dst_cache must be a blocks cache")
        check_param(len(dst_blocks) > 0, "dst_blocks is empty")
        src_range, dst_range, per_layer = self._pull_kwargs(kwargs)
        src, dst = _spans(src_range, dst_range, per_layer, None, dst_cache.cache_desc.num_tensors)
        block_bytes = _block_bytes(dst_cache)
        local = _extent(dst, blocks_unit=True, blocks=list(dst_blocks), block_bytes=block_bytes)
        if isinstance(src_cache_key, BlocksCacheKey):
            check_param(len(src_blocks) > 0, "src_blocks is empty")
            check_param(
                len(src_blocks) == len(dst_blocks),
                "src_blocks num:{0} not equal dst_blocks num:{1}",
                len(src_blocks),
                len(dst_blocks),
            )
            ref = (_REF_BLOCKS_KEY, 0, src_cache_key.model_id, 0)
            remote = _extent(src, blocks_unit=True, blocks=list(src_blocks), block_bytes=block_bytes)
            flags = 0
        else:
            check_param(
                len(src_blocks) == 0, "src_blocks must be empty when the source is not a blocks cache"
            )
            ref, flags = self._key_ref(src_cache_key)
            flags |= _native.FLAG_ALLOW_SHORT
            slot = ref[2] if ref[0] == _REF_ID_AND_INDEX else 0
            remote = _extent(src, slot=slot, length=_native.WHOLE_SLOT)
        self._transfer(
            "pull_blocks",
            is_pull=True,
            cluster_id=src_cache_key.cluster_id,
            ref=ref,
            remote=remote,
            flags=flags,
            local_cache=dst_cache,
            local=local,
        )

    def _push_ranges(
        self, src_cache: Cache, src_range: range | None, dst_range: range | None, per_layer: object
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        check_param(self._remote_accessible, "push needs enable_remote_cache_accessible")
        check_range("src_layer_range", src_range, require_increasing=True, allow_none=True)
        check_range("dst_layer_range", dst_range, require_increasing=True, allow_none=True)
        per = _tensor_num_per_layer(per_layer)
        num = src_cache.cache_desc.num_tensors
        src = _tensor_span(src_range, per, num, "src_layer_range") or (0, num)
        if dst_range is None:
            dst = src if src_range is None else (0, src[1])
            if src_range is not None:
                dst = (src[0], src[1])
        else:
            dst = (dst_range.start * per, len(dst_range) * per)
        check_param(src[1] == dst[1], "src_layer_range and dst_layer_range differ in length")
        return src, dst

    def push_cache(
        self,
        dst_cache_key: CacheKeyByIdAndIndex,
        src_cache: Cache,
        src_batch_index: int = 0,
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        size: int = -1,
        tensor_num_per_layer: int = 2,
    ) -> None:
        """Push slot ``src_batch_index`` of ``src_cache`` into the peer's cache slot named by the key."""
        check_isinstance("dst_cache_key", dst_cache_key, CacheKeyByIdAndIndex)
        check_isinstance("src_cache", src_cache, Cache)
        check_uint32("src_batch_index", src_batch_index)
        check_param(not src_cache.is_blocks_cache, "push_cache does not support blocks cache")
        check_param(size == -1, "push_cache only supports size == -1")
        src, dst = self._push_ranges(src_cache, src_layer_range, dst_layer_range, tensor_num_per_layer)
        self._transfer(
            "push_cache",
            is_pull=False,
            cluster_id=dst_cache_key.cluster_id,
            ref=(_REF_ID_AND_INDEX, dst_cache_key.cache_id, dst_cache_key.batch_index, 0),
            remote=_extent(dst, slot=dst_cache_key.batch_index, length=_native.WHOLE_SLOT),
            flags=0,
            local_cache=src_cache,
            local=_extent(src, slot=src_batch_index, length=_native.WHOLE_SLOT),
        )

    def push_blocks(
        self,
        dst_cache_key: BlocksCacheKey,
        src_cache: Cache,
        src_blocks: Sequence[int] = (),
        dst_blocks: Sequence[int] = (),
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        tensor_num_per_layer: int = 2,
    ) -> None:
        """Push ``src_blocks`` of ``src_cache`` into ``dst_blocks`` of the peer's blocks cache."""
        check_isinstance("dst_cache_key", dst_cache_key, BlocksCacheKey)
        check_isinstance("src_cache", src_cache, Cache)
        check_isinstance("src_blocks", src_blocks, [list, tuple], inner=int)
        check_isinstance("dst_blocks", dst_blocks, [list, tuple], inner=int)
        check_param(src_cache.is_blocks_cache, "push_blocks needs a blocks cache as source")
        check_param(len(dst_blocks) > 0, "dst_blocks is empty")
        check_param(
            len(src_blocks) == len(dst_blocks),
            "src_blocks num:{0} not equal dst_blocks num:{1}",
            len(src_blocks),
            len(dst_blocks),
        )
        src, dst = self._push_ranges(src_cache, src_layer_range, dst_layer_range, tensor_num_per_layer)
        block_bytes = _block_bytes(src_cache)
        self._transfer(
            "push_blocks",
            is_pull=False,
            cluster_id=dst_cache_key.cluster_id,
            ref=(_REF_BLOCKS_KEY, 0, dst_cache_key.model_id, 0),
            remote=_extent(dst, blocks_unit=True, blocks=list(dst_blocks), block_bytes=block_bytes),
            flags=0,
            local_cache=src_cache,
            local=_extent(src, blocks_unit=True, blocks=list(src_blocks), block_bytes=block_bytes),
        )

    # --------------------------------------------------------------------------- local copies

    def copy_cache(
        self,
        dst: Cache,
        src: Cache,
        dst_batch_index: int = 0,
        src_batch_index: int = 0,
        offset: int = 0,
        size: int = -1,
        req_id: int | None = None,
    ) -> None:
        """Copy one batch slot between two local caches (``offset``/``size`` in bytes)."""
        check_isinstance("dst", dst, Cache)
        check_isinstance("src", src, Cache)
        check_param(
            not dst.is_blocks_cache and not src.is_blocks_cache, "copy_cache does not support blocks cache"
        )
        check_uint32("dst_batch_index", dst_batch_index)
        check_uint32("src_batch_index", src_batch_index)
        check_uint64("offset", offset)
        check_isinstance("size", size, int)
        check_param(size == -1 or size > 0, "size:{0} must be -1 or > 0", size)
        check_param(dst.cache_desc.num_tensors == src.cache_desc.num_tensors, "caches differ in num_tensors")
        dst_slot, src_slot = _slot_bytes(dst), _slot_bytes(src)
        check_param(dst_batch_index < _units_of(dst.cache_desc, False), "dst_batch_index out of range")
        check_param(src_batch_index < _units_of(src.cache_desc, False), "src_batch_index out of range")
        check_param(offset < min(dst_slot, src_slot), "offset:{0} out of range", offset)
        length = min(dst_slot, src_slot) - offset if size == -1 else size
        check_param(offset + length <= min(dst_slot, src_slot), "size:{0} exceeds the batch slot", size)
        self._live_engine("copy_cache")
        _log.debug("copy_cache req_id=%s", req_id)
        _native.copy_units(
            dst.tensor_addrs,
            dst_slot,
            [dst_batch_index],
            offset,
            src.tensor_addrs,
            src_slot,
            [src_batch_index],
            offset,
            length,
        )

    def copy_blocks(self, cache: Cache, copy_block_info: dict[int, list[int]]) -> None:
        """Copy each source block to each listed destination block, inside one blocks cache."""
        check_isinstance("cache", cache, Cache)
        check_isinstance("copy_block_info", copy_block_info, dict)
        check_dict("copy_block_info", copy_block_info, int, list, int)
        check_param(cache.is_blocks_cache, "copy_blocks needs a blocks cache")
        blocks = _units_of(cache.cache_desc, True)
        src_index, dst_index = [], []
        for src_block, dst_list in copy_block_info.items():
            for dst_block in dst_list:
                check_param(0 <= src_block < blocks and 0 <= dst_block < blocks, "block index out of range")
                src_index.append(src_block)
                dst_index.append(dst_block)
        self._live_engine("copy_blocks")
        unit = _block_bytes(cache)
        _native.copy_units(
            cache.tensor_addrs, unit, dst_index, 0, cache.tensor_addrs, unit, src_index, 0, unit
        )

    def swap_blocks(self, src_cache: Cache, dst_cache: Cache, src_to_dst: dict[int, int]) -> None:
        """Swap blocks in (HOST -> DEVICE) or out (DEVICE -> HOST)."""
        check_isinstance("src_cache", src_cache, Cache)
        check_isinstance("dst_cache", dst_cache, Cache)
        check_isinstance("src_to_dst", src_to_dst, dict)
        check_dict("src_to_dst", src_to_dst, int, int)
        check_param(
            src_cache.is_blocks_cache and dst_cache.is_blocks_cache, "swap_blocks needs blocks caches"
        )
        placements = (src_cache.cache_desc.placement, dst_cache.cache_desc.placement)
        check_param(
            placements in ((Placement.HOST, Placement.DEVICE), (Placement.DEVICE, Placement.HOST)),
            "swap_blocks supports HOST->DEVICE or DEVICE->HOST only",
        )
        check_param(
            src_cache.cache_desc.num_tensors == dst_cache.cache_desc.num_tensors, "num_tensors differ"
        )
        unit = _block_bytes(src_cache)
        check_param(unit == _block_bytes(dst_cache), "bytes per block differ")
        src_blocks, dst_blocks = _units_of(src_cache.cache_desc, True), _units_of(dst_cache.cache_desc, True)
        for src_block, dst_block in src_to_dst.items():
            check_param(
                0 <= src_block < src_blocks and 0 <= dst_block < dst_blocks, "block index out of range"
            )
        self._live_engine("swap_blocks")
        _native.copy_units(
            dst_cache.tensor_addrs,
            unit,
            list(src_to_dst.values()),
            0,
            src_cache.tensor_addrs,
            unit,
            list(src_to_dst.keys()),
            0,
            unit,
        )

    # ----------------------------------------------------------------------------- layer-wise

    def transfer_cache_async(
        self,
        src_cache: Cache,
        layer_synchronizer: LayerSynchronizer,
        transfer_configs: Sequence[TransferConfig | TransferWithCacheKeyConfig],
        src_block_indices: list[int] | None = None,
        dst_block_indices: list[int] | None = None,
        dst_block_memory_size: int | None = None,
    ) -> CacheTask:
        """Send ``src_cache`` layer by layer as ``layer_synchronizer`` releases each layer."""
        if src_cache is None:
            raise TypeError("src_cache only support ['Cache'], but got <class 'NoneType'>.")
        check_isinstance("src_cache", src_cache, Cache)
        check_param(src_cache.cache_desc.placement != Placement.HOST, "src_cache must not be HOST")
        check_isinstance("layer_synchronizer", layer_synchronizer, LayerSynchronizer)
        check_isinstance("transfer_configs", transfer_configs, [list, tuple])
        layers = src_cache.cache_desc.num_tensors // 2
        for config in transfer_configs:
            check_isinstance("transfer_config", config, [TransferConfig, TransferWithCacheKeyConfig])
            if isinstance(config, TransferWithCacheKeyConfig):
                check_param(
                    self._remote_accessible, "TransferWithCacheKeyConfig needs enable_remote_cache_accessible"
                )
            else:
                sent = len(config.src_layer_range) if config.src_layer_range is not None else layers
                check_param(
                    len(config.dst_addrs) == 2 * sent,
                    "dst_addrs num:{0} must be 2 x layers sent ({1})",
                    len(config.dst_addrs),
                    sent,
                )
        blocks: tuple[list[int], list[int]] | None = None
        if src_block_indices is not None or dst_block_indices is not None:
            check_isinstance("dst_block_indices", dst_block_indices, list, inner=int)
            assert dst_block_indices is not None
            if src_cache.is_blocks_cache:
                check_isinstance("src_block_indices", src_block_indices, list, inner=int)
                assert src_block_indices is not None
                check_param(
                    len(src_block_indices) == len(dst_block_indices), "block index lists differ in length"
                )
            blocks = (list(src_block_indices or []), list(dst_block_indices))
        check_param(src_cache.cache_desc.num_tensors % 2 == 0, "src_cache num_tensors must be even")
        dst_block_bytes = 0
        if blocks is not None:
            if src_cache.is_blocks_cache:
                dst_block_bytes = dst_block_memory_size or _block_bytes(src_cache)
            else:
                check_param(
                    dst_block_memory_size is not None and dst_block_memory_size > 0,
                    "dst_block_memory_size is required when a cache is sent to blocks",
                )
                assert dst_block_memory_size is not None
                dst_block_bytes = dst_block_memory_size
        else:
            check_param(not dst_block_memory_size, "dst_block_memory_size needs dst_block_indices")
        return CacheTask(
            _LayerwiseTransfer(
                self, self._transfer, src_cache, layer_synchronizer, transfer_configs, blocks, dst_block_bytes
            )
        )
