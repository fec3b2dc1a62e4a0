"""A realistic paged KV cache: its shape, deterministic contents and the check of every byte."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class KvShape:
    """``layers`` x (K, V) tensors of ``blocks`` blocks of ``block_tokens`` tokens, fp16."""

    layers: int = 32
    blocks: int = 64
    block_tokens: int = 16
    kv_heads: int = 8
    head_dim: int = 128

    @property
    def tensors(self) -> int:
        """K and V per layer."""
        return 2 * self.layers

    @property
    def block_elems(self) -> int:
        """Elements of one block of one tensor."""
        return self.block_tokens * self.kv_heads * self.head_dim

    @property
    def block_bytes(self) -> int:
        """Bytes of one block of one tensor (fp16)."""
        return self.block_elems * 2

    @property
    def cache_bytes(self) -> int:
        """Bytes of the whole cache."""
        return self.tensors * self.blocks * self.block_bytes

    def describe(self) -> str:
        """One line for humans."""
        return (
            f"{self.layers} layers x (K, V), {self.blocks} blocks of {self.block_tokens} tokens x "
            f"{self.kv_heads} heads x {self.head_dim} dims fp16 = {self.cache_bytes / 2**20:.0f} MiB"
        )


def expected(shape: KvShape, tensor: int) -> np.ndarray[Any, np.dtype[np.uint16]]:
    """The contents of ``tensor`` (as raw 16-bit words), blocks x block elements."""
    return np.random.default_rng(tensor).integers(
        0, 1 << 16, (shape.blocks, shape.block_elems), dtype=np.uint16
    )


def fill(cache: Any, shape: KvShape) -> None:
    """Write every tensor of ``cache`` (any object with ``numpy(i)``) with :func:`expected`."""
    for tensor in range(shape.tensors):
        cache.numpy(tensor).view(np.uint16).reshape(shape.blocks, shape.block_elems)[:] = expected(
            shape, tensor
        )


def mismatches(cache: Any, shape: KvShape, order: list[int]) -> list[int]:
    """Tensors of ``cache`` whose block ``i`` differs from block ``order[i]`` of :func:`expected`."""
    bad = []
    for tensor in range(shape.tensors):
        have = cache.numpy(tensor).view(np.uint16).reshape(shape.blocks, shape.block_elems)
        if not np.array_equal(have, expected(shape, tensor)[order]):
            bad.append(tensor)
    return bad


def shuffled_blocks(shape: KvShape, seed: int = 0) -> list[int]:
    """A fixed permutation of the block indexes (a pull that is not a plain copy)."""
    return [int(b) for b in np.random.default_rng(seed).permutation(shape.blocks)]
