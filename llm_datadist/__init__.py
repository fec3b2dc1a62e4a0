"""LLM-DataDist-compatible KV-cache transfer, with CacheLink's C++ core.

Importing sets ``AUTO_USE_UC_MEMORY=0`` when unset, as LLM-DataDist does. Names of the old KV-manager
mode (``TensorDesc``, ``Tensor``, ``KvCacheManager``) are not provided: CacheLink implements the
cache-manager mode only.
"""

import importlib
import os
from typing import TYPE_CHECKING, Any

from llm_datadist.configs import LLMConfig, LlmConfig
from llm_datadist.status import CacheLinkError, LLMException, LLMStatusCode, Status

if TYPE_CHECKING:
    from llm_datadist.data_type import DataType
    from llm_datadist.v2.cache_manager import CacheManager
    from llm_datadist.v2.llm_datadist import LLMDataDist
    from llm_datadist.v2.llm_types import (
        BlocksCacheKey,
        Cache,
        CacheDesc,
        CacheKey,
        CacheKeyByIdAndIndex,
        CacheTask,
        KvCache,
        LayerSynchronizer,
        LLMClusterInfo,
        LLMRole,
        MemInfo,
        Memtype,
        Placement,
        RegisterMemStatus,
        TransferConfig,
        TransferWithCacheKeyConfig,
    )

os.environ.setdefault("AUTO_USE_UC_MEMORY", "0")

#: names that load numpy or the native core, so they are imported on first use (``import llm_datadist``
#: alone stays light: the operator builds options with ``LLMConfig`` and never loads the engine)
_LAZY = {
    "DataType": "llm_datadist.data_type",
    "CacheManager": "llm_datadist.v2.cache_manager",
    "LLMDataDist": "llm_datadist.v2.llm_datadist",
    **dict.fromkeys(
        (
            "BlocksCacheKey",
            "Cache",
            "CacheDesc",
            "CacheKey",
            "CacheKeyByIdAndIndex",
            "CacheTask",
            "KvCache",
            "LayerSynchronizer",
            "LLMClusterInfo",
            "LLMRole",
            "MemInfo",
            "Memtype",
            "Placement",
            "RegisterMemStatus",
            "TransferConfig",
            "TransferWithCacheKeyConfig",
        ),
        "llm_datadist.v2.llm_types",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BlocksCacheKey",
    "Cache",
    "CacheDesc",
    "CacheKey",
    "CacheKeyByIdAndIndex",
    "CacheLinkError",
    "CacheManager",
    "CacheTask",
    "DataType",
    "KvCache",
    "LLMClusterInfo",
    "LLMConfig",
    "LLMDataDist",
    "LLMException",
    "LLMRole",
    "LLMStatusCode",
    "LayerSynchronizer",
    "LlmConfig",
    "MemInfo",
    "Memtype",
    "Placement",
    "RegisterMemStatus",
    "Status",
    "TransferConfig",
    "TransferWithCacheKeyConfig",
]
