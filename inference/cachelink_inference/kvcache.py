"""Paged KV storage: ``2 * n_layers`` tensors K, V, K, V, ..., each ``[num_blocks, block_size, kv_dim]``.

The blocks live in CacheLink caches: allocated from the instance's pool (``allocate_blocks_cache``) or in
2 MiB-aligned buffers of this process registered with ``register_blocks_cache`` (the vllm-ascend way). A
plain numpy variant (``NumpyKV``) serves the single-process reference when no CacheLink instance is wanted.
"""

from __future__ import annotations

import contextlib
import mmap
from typing import Any

import numpy as np

from llm_datadist import CacheDesc, DataType, Placement

KV_DTYPE = np.float32
ALIGNMENT = 2 << 20


class NumpyKV:
    def __init__(self, n_layers: int, num_blocks: int, block_size: int, kv_dim: int) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.tensors = [np.zeros((num_blocks, block_size, kv_dim), KV_DTYPE) for _ in range(2 * n_layers)]

    def k(self, layer: int) -> np.ndarray:
        return self.tensors[2 * layer]

    def v(self, layer: int) -> np.ndarray:
        return self.tensors[2 * layer + 1]


def cache_desc(n_layers: int, num_blocks: int, block_size: int, kv_dim: int) -> Any:
    return CacheDesc(2 * n_layers, [num_blocks, block_size, kv_dim], DataType.DT_FLOAT, Placement.DEVICE)


class AlignedBuffers:
    """Anonymous memory holding ``count`` tensors of ``nbytes``, each starting on a 2 MiB boundary."""

    def __init__(self, count: int, nbytes: int) -> None:
        self.stride = (nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
        self._map = mmap.mmap(-1, self.stride * count + ALIGNMENT)
        base = np.frombuffer(self._map, dtype=np.uint8)
        start = base.ctypes.data
        self.skip = (-start) % ALIGNMENT
        self.arrays = [
            base[self.skip + i * self.stride : self.skip + i * self.stride + nbytes] for i in range(count)
        ]
        self.addresses = [int(a.ctypes.data) for a in self.arrays]
        del base

    def close(self) -> None:
        self.arrays = []
        with contextlib.suppress(BufferError):  # views still exported: the mapping goes with the process
            self._map.close()


class CacheLinkKV:
    """KV blocks in a CacheLink cache of ``cache_manager`` (``registered``: in our own aligned buffers)."""

    def __init__(
        self,
        cache_manager: Any,
        n_layers: int,
        num_blocks: int,
        block_size: int,
        kv_dim: int,
        *,
        registered: bool = False,
        blocks_cache_key: Any = None,
    ) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.registered = registered
        self._cm = cache_manager
        desc = cache_desc(n_layers, num_blocks, block_size, kv_dim)
        shape = (num_blocks, block_size, kv_dim)
        self.buffers: AlignedBuffers | None = None
        if registered:
            nbytes = num_blocks * block_size * kv_dim * np.dtype(KV_DTYPE).itemsize
            self.buffers = AlignedBuffers(2 * n_layers, nbytes)
            self.cache = cache_manager.register_blocks_cache(desc, self.buffers.addresses, blocks_cache_key)
            self.tensors = [a.view(KV_DTYPE).reshape(shape) for a in self.buffers.arrays]
        else:
            self.cache = cache_manager.allocate_blocks_cache(desc, blocks_cache_key)
            self.tensors = [np.asarray(self.cache.numpy(i)).reshape(shape) for i in range(2 * n_layers)]

    @property
    def block_bytes(self) -> int:
        """Bytes of one block over all tensors (what a pull of one block moves)."""
        return int(sum(t[0].nbytes for t in self.tensors))

    def k(self, layer: int) -> np.ndarray:
        return self.tensors[2 * layer]

    def v(self, layer: int) -> np.ndarray:
        return self.tensors[2 * layer + 1]

    def close(self) -> None:
        """Release the cache (call before ``finalize``)."""
        self.tensors = []
        if self.registered:
            self._cm.unregister_cache(self.cache.cache_id)
            if self.buffers is not None:
                self.buffers.close()
        else:
            self._cm.deallocate_blocks_cache(self.cache)
