"""The single-process reference: the same engine and forward pass, KV in plain numpy blocks."""

from __future__ import annotations

from typing import Any

from cachelink_inference import weights
from cachelink_inference.engine import Engine, blocks_needed
from cachelink_inference.kvcache import NumpyKV
from cachelink_inference.model import Gemma3
from cachelink_inference.tokenizer import Tokenizer


class Reference:
    def __init__(self, cache_dir: str | None = None, block_size: int = 16, num_blocks: int = 160) -> None:
        files = weights.load(cache_dir)
        self.model = Gemma3(files)
        self.tokenizer = Tokenizer(files.metadata)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.engine = self._engine(num_blocks)

    def _engine(self, num_blocks: int) -> Engine:
        cfg = self.model.cfg
        engine = Engine(self.model, NumpyKV(cfg.n_layers, num_blocks, self.block_size, cfg.kv_dim))
        engine.eos_id = self.tokenizer.eos_id
        return engine

    def generate(self, prompt: list[int], max_tokens: int) -> list[int]:
        need = blocks_needed(len(prompt) + max_tokens, self.block_size)
        if need > self.engine.allocator.free_count:
            self.engine = self._engine(need)
        return list(self.engine.generate(prompt, max_tokens))


def generate_many(
    texts: list[str], prompts: list[list[int]], max_tokens: int, block_size: int, cache_dir: str | None
) -> list[dict[str, Any]]:
    ref = Reference(cache_dir, block_size)
    out = []
    for ids in [ref.tokenizer.encode(t) for t in texts] + prompts:
        tokens = ref.generate(ids, max_tokens)
        out.append({"prompt_ids": ids, "token_ids": tokens, "text": ref.tokenizer.decode(tokens)})
    return out
