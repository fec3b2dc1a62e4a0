"""Gemma 3 forward pass in numpy over a paged KV cache (float32 weights and KV).

Per layer: RMSNorm, Q/K/V projections, per-head RMSNorm of Q and K (QK-norm), NEOX RoPE (base 10,000 on
sliding-window layers, the file's ``rope.freq_base`` on every sixth, global, layer), attention over the
cache (window of 512 positions on sliding layers), output projection, post-attention RMSNorm, residual; then
RMSNorm, GELU-tanh gated MLP, post-MLP RMSNorm, residual. The output matrix is the token embedding (tied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cachelink_inference.weights import ModelFiles


@dataclass(frozen=True)
class Config:
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    eps: float
    rope_base_global: float
    rope_base_local: float
    sliding_window: int
    swa_pattern: int
    vocab_size: int

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Config:
        arch = meta["general.architecture"]
        if arch != "gemma3":
            raise ValueError(f"architecture {arch!r} is not supported (gemma3 only)")

        def get(key: str) -> Any:
            return meta[f"{arch}.{key}"]

        return cls(
            n_layers=int(get("block_count")),
            n_embd=int(get("embedding_length")),
            n_head=int(get("attention.head_count")),
            n_head_kv=int(get("attention.head_count_kv")),
            head_dim=int(get("attention.key_length")),
            n_ff=int(get("feed_forward_length")),
            eps=float(get("attention.layer_norm_rms_epsilon")),
            rope_base_global=float(get("rope.freq_base")),
            rope_base_local=float(meta.get(f"{arch}.rope.freq_base_swa", 10000.0)),
            sliding_window=int(get("attention.sliding_window")),
            swa_pattern=6,
            vocab_size=len(meta["tokenizer.ggml.tokens"]),
        )

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    def is_global(self, layer: int) -> bool:
        return layer % self.swa_pattern == self.swa_pattern - 1


class PagedKV(Protocol):
    """K and V of every layer, each an array ``[num_blocks, block_size, kv_dim]`` (float32)."""

    block_size: int
    num_blocks: int

    def k(self, layer: int) -> np.ndarray: ...

    def v(self, layer: int) -> np.ndarray: ...


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    scale = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))
    return np.asarray((x * scale.astype(np.float32)) * weight, dtype=np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = np.float32(math.sqrt(2.0 / math.pi))
    inner = np.tanh(c * (x + np.float32(0.044715) * x * x * x))
    return np.asarray(np.float32(0.5) * x * (np.float32(1.0) + inner), dtype=np.float32)


class Gemma3:
    def __init__(self, files: ModelFiles) -> None:
        self.cfg = Config.from_metadata(files.metadata)
        t = files.tensors
        self.embd = t["token_embd.weight"]
        self.out_norm = np.asarray(t["output_norm.weight"])
        self.layers: list[dict[str, np.ndarray]] = []
        for i in range(self.cfg.n_layers):
            prefix = f"blk.{i}."
            self.layers.append(
                {k[len(prefix) : -len(".weight")]: v for k, v in t.items() if k.startswith(prefix)}
            )
        half = self.cfg.head_dim // 2
        exponents = np.arange(half, dtype=np.float64) * 2.0 / self.cfg.head_dim
        self._inv_freq = {
            True: self.cfg.rope_base_global ** (-exponents),
            False: self.cfg.rope_base_local ** (-exponents),
        }
        self.embd_scale = np.float32(math.sqrt(self.cfg.n_embd))
        self.attn_scale = np.float32(1.0 / math.sqrt(self.cfg.head_dim))

    def _rope(self, x: np.ndarray, positions: np.ndarray, is_global: bool) -> np.ndarray:
        """NEOX rotation of ``x`` ``[T, heads, head_dim]``."""
        angles = positions.astype(np.float64)[:, None] * self._inv_freq[is_global][None, :]
        cos = np.cos(angles).astype(np.float32)[:, None, :]
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def forward(
        self,
        tokens: list[int] | np.ndarray,
        start: int,
        block_table: list[int] | np.ndarray,
        kv: PagedKV,
        *,
        all_logits: bool = False,
    ) -> np.ndarray:
        """Run ``tokens`` at positions ``start..``; writes their K and V into ``kv`` through ``block_table``.

        Returns the logits of the last token (``[vocab]``), or of every token with ``all_logits``.
        """
        cfg = self.cfg
        ids = np.asarray(tokens, dtype=np.int64)
        n = len(ids)
        end = start + n
        bs = kv.block_size
        table = np.asarray(block_table, dtype=np.int64)
        if end > len(table) * bs:
            raise ValueError(f"{end} positions need {math.ceil(end / bs)} blocks, the table has {len(table)}")
        positions = np.arange(start, end, dtype=np.int64)
        w_blocks, w_offsets = table[positions // bs], positions % bs
        key_pos = np.arange(end, dtype=np.int64)
        causal = key_pos[None, :] <= positions[:, None]
        window = positions[:, None] - key_pos[None, :] < cfg.sliding_window
        x = np.asarray(self.embd[ids], dtype=np.float32) * self.embd_scale
        for il, w in enumerate(self.layers):
            is_global = cfg.is_global(il)
            h = rms_norm(x, w["attn_norm"], cfg.eps)
            q = (h @ w["attn_q"].T).reshape(n, cfg.n_head, cfg.head_dim)
            k = (h @ w["attn_k"].T).reshape(n, cfg.n_head_kv, cfg.head_dim)
            v = (h @ w["attn_v"].T).reshape(n, cfg.kv_dim)
            q = self._rope(rms_norm(q, w["attn_q_norm"], cfg.eps), positions, is_global) * self.attn_scale
            k = self._rope(rms_norm(k, w["attn_k_norm"], cfg.eps), positions, is_global).reshape(
                n, cfg.kv_dim
            )
            k_cache, v_cache = kv.k(il), kv.v(il)
            k_cache[w_blocks, w_offsets] = k
            v_cache[w_blocks, w_offsets] = v
            first = 0 if is_global else max(0, start - cfg.sliding_window + 1)
            used = table[first // bs : (end - 1) // bs + 1]
            lo = first - first // bs * bs
            keys = k_cache[used].reshape(-1, cfg.kv_dim)[lo : lo + end - first]
            values = v_cache[used].reshape(-1, cfg.kv_dim)[lo : lo + end - first]
            mask = causal[:, first:] if is_global else causal[:, first:] & window[:, first:]
            heads = []
            group = cfg.n_head // cfg.n_head_kv
            for hq in range(cfg.n_head):
                hk = hq // group
                kh = keys[:, hk * cfg.head_dim : (hk + 1) * cfg.head_dim]
                vh = values[:, hk * cfg.head_dim : (hk + 1) * cfg.head_dim]
                scores = q[:, hq, :] @ kh.T
                scores = np.where(mask, scores, np.float32(-np.inf))
                scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
                probs = scores / scores.sum(axis=-1, keepdims=True)
                heads.append(probs @ vh)
            attn = np.concatenate(heads, axis=-1) @ w["attn_output"].T
            x = x + rms_norm(attn, w["post_attention_norm"], cfg.eps)
            h = rms_norm(x, w["ffn_norm"], cfg.eps)
            ff = (gelu_tanh(h @ w["ffn_gate"].T) * (h @ w["ffn_up"].T)) @ w["ffn_down"].T
            x = x + rms_norm(ff, w["post_ffw_norm"], cfg.eps)
        x = rms_norm(x if all_logits else x[-1:], self.out_norm, cfg.eps)
        logits = x @ self.embd.T
        return np.asarray(logits if all_logits else logits[0], dtype=np.float32)
