"""A minimal engine: a block allocator over a paged KV store, prefill and greedy decode, one request at a time
per call (the servers interleave requests between calls)."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from cachelink_inference.model import Gemma3, PagedKV


class OutOfBlocks(RuntimeError):
    """No free KV blocks for a request."""


class BlockAllocator:
    """Free list of block ids; hands blocks out from the end of the pool (tables are not 0, 1, 2, ...)."""

    def __init__(self, num_blocks: int) -> None:
        self._free = list(range(num_blocks))
        self._lock = threading.Lock()
        self.num_blocks = num_blocks

    def allocate(self, count: int) -> list[int]:
        with self._lock:
            if count > len(self._free):
                raise OutOfBlocks(f"{count} blocks wanted, {len(self._free)} free")
            return [self._free.pop() for _ in range(count)]

    def free(self, blocks: list[int]) -> None:
        with self._lock:
            self._free.extend(blocks)

    @property
    def free_count(self) -> int:
        with self._lock:
            return len(self._free)


def blocks_needed(tokens: int, block_size: int) -> int:
    return max(1, math.ceil(tokens / block_size))


def kv_digest(kv: PagedKV, blocks: list[int], n_layers: int) -> str:
    """sha256 over the K and V bytes of ``blocks`` (all layers, in table order)."""
    digest = hashlib.sha256()
    idx = np.asarray(blocks, dtype=np.int64)
    for layer in range(n_layers):
        digest.update(np.ascontiguousarray(kv.k(layer)[idx]).tobytes())
        digest.update(np.ascontiguousarray(kv.v(layer)[idx]).tobytes())
    return digest.hexdigest()


@dataclass
class Counters:
    prefills: int = 0
    prefill_tokens: int = 0
    decode_steps: int = 0


@dataclass
class Sequence:
    """A request's state: its block table and the tokens it has (prompt, then generated)."""

    prompt: list[int]
    block_table: list[int]
    generated: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.generated)


class Engine:
    def __init__(self, model: Gemma3, kv: PagedKV, *, allow_prefill: bool = True) -> None:
        self.model = model
        self.kv = kv
        self.allocator = BlockAllocator(kv.num_blocks)
        self.allow_prefill = allow_prefill
        self.counters = Counters()
        self.eos_id: int | None = None

    @property
    def block_size(self) -> int:
        return self.kv.block_size

    def prefill(self, seq: Sequence) -> int:
        """Run the prompt (KV written into the sequence's blocks); returns the first token."""
        if not self.allow_prefill:
            raise RuntimeError("this engine is decode-only: prefill is not allowed")
        self.counters.prefills += 1
        self.counters.prefill_tokens += len(seq.prompt)
        logits = self.model.forward(seq.prompt, 0, seq.block_table, self.kv)
        token = int(np.argmax(logits))
        seq.generated.append(token)
        return token

    def step(self, seq: Sequence) -> int:
        """Feed the last generated token; returns the next one (greedy)."""
        self.counters.decode_steps += 1
        last = seq.generated[-1]
        logits = self.model.forward([last], seq.length - 1, seq.block_table, self.kv)
        token = int(np.argmax(logits))
        seq.generated.append(token)
        return token

    def generate(self, prompt: list[int], max_tokens: int) -> Iterator[int]:
        """Single-process reference: prefill then decode; frees its blocks at the end."""
        blocks = self.allocator.allocate(blocks_needed(len(prompt) + max_tokens, self.block_size))
        try:
            seq = Sequence(list(prompt), blocks)
            token = self.prefill(seq)
            yield token
            for _ in range(max_tokens - 1):
                if token == self.eos_id:
                    return
                token = self.step(seq)
                yield token
        finally:
            self.allocator.free(blocks)
