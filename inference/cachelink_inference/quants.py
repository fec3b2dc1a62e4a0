"""Dequantisers for the ggml block formats a Q4_K_M file uses (vectorised numpy, one pass per tensor)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 0, 1, 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16 = 10, 11, 12, 13, 14, 30
QK_K = 256

# ggml type -> (values per block, bytes per block)
BLOCK: dict[int, tuple[int, int]] = {
    F32: (1, 4),
    F16: (1, 2),
    BF16: (1, 2),
    Q4_0: (32, 18),
    Q4_1: (32, 20),
    Q5_0: (32, 22),
    Q5_1: (32, 24),
    Q8_0: (32, 34),
    Q4_K: (QK_K, 144),
    Q5_K: (QK_K, 176),
    Q6_K: (QK_K, 210),
}


def tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    if ggml_type not in BLOCK:
        raise ValueError(f"ggml type {ggml_type} is not supported")
    per_block, block_bytes = BLOCK[ggml_type]
    count = int(np.prod(shape))
    if count % per_block:
        raise ValueError(f"{count} values are not a whole number of type-{ggml_type} blocks")
    return count // per_block * block_bytes


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32).reshape(-1)


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    return np.asarray(raw, dtype=np.uint8).reshape(-1, block_bytes)


def _q8_0(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, 34)
    d = _f16(b[:, 0:2])
    q = np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32)
    return np.asarray(q * d[:, None], dtype=np.float32)


def _q4_0(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, 18)
    d = _f16(b[:, 0:2])
    qs = b[:, 2:]
    q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32) - 8
    return np.asarray(q * d[:, None], dtype=np.float32)


def _q5_0(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, 22)
    d = _f16(b[:, 0:2])
    qh = np.ascontiguousarray(b[:, 2:6]).view("<u4")
    qs = b[:, 6:].astype(np.uint32)
    bits = (qh >> np.arange(32, dtype=np.uint32)) & 1
    lo = (qs & 0xF) | (bits[:, :16] << 4)
    hi = (qs >> 4) | (bits[:, 16:] << 4)
    q = np.concatenate([lo, hi], axis=1).astype(np.float32) - 16
    return np.asarray(q * d[:, None], dtype=np.float32)


def _scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins packed in 12 bytes (ggml's get_scale_min_k4)."""
    s = scales.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), dtype=np.uint8)
    mn = np.empty((s.shape[0], 8), dtype=np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, 144)
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    qs = b[:, 16:].reshape(-1, 4, 32)  # 4 chunks of 64 values: low nibbles then high nibbles
    q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32).astype(np.float32)
    out = d[:, None, None] * sc[:, :, None] * q - dmin[:, None, None] * mn[:, :, None]
    return np.asarray(out, dtype=np.float32).reshape(-1, QK_K)


def _q5_k(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, 176)
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    qh = b[:, 16:48]
    qs = b[:, 48:].reshape(-1, 4, 32)
    low = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32)
    shifts = np.arange(8, dtype=np.uint8)
    high = ((qh[:, None, :] >> shifts[None, :, None]) & 1) << 4
    q = (low + high).astype(np.float32)
    out = d[:, None, None] * sc[:, :, None] * q - dmin[:, None, None] * mn[:, :, None]
    return np.asarray(out, dtype=np.float32).reshape(-1, QK_K)


def _q6_k(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, 210)
    ql = b[:, 0:128].reshape(-1, 2, 64)
    qh = b[:, 128:192].reshape(-1, 2, 32)
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    q1 = (ql[:, :, :32] & 0xF) | (((qh >> 0) & 3) << 4)
    q2 = (ql[:, :, 32:] & 0xF) | (((qh >> 2) & 3) << 4)
    q3 = (ql[:, :, :32] >> 4) | (((qh >> 4) & 3) << 4)
    q4 = (ql[:, :, 32:] >> 4) | (((qh >> 6) & 3) << 4)
    q = np.stack([q1, q2, q3, q4], axis=2).astype(np.float32) - 32  # (n, half, 4, 32)
    sc = scales.reshape(-1, 2, 4, 2)  # per half: 8 scales, one per 16 values
    q = q.reshape(-1, 2, 4, 2, 16) * sc[:, :, :, :, None]
    return (d[:, None] * q.reshape(-1, QK_K)).astype(np.float32)


_DEQUANT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    Q8_0: _q8_0,
    Q4_0: _q4_0,
    Q5_0: _q5_0,
    Q4_K: _q4_k,
    Q5_K: _q5_k,
    Q6_K: _q6_k,
}


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 values of a tensor stored as ``ggml_type``, in numpy ``shape``."""
    if ggml_type == F32:
        out = np.asarray(raw).view("<f4").astype(np.float32)
    elif ggml_type == F16:
        out = _f16(raw)
    elif ggml_type == BF16:
        out = (np.ascontiguousarray(raw).view("<u2").astype(np.uint32) << 16).view(np.float32)
    elif ggml_type in _DEQUANT:
        out = _DEQUANT[ggml_type](raw)
    else:
        raise ValueError(f"ggml type {ggml_type} is not supported")
    return np.ascontiguousarray(out.reshape(shape), dtype=np.float32)
