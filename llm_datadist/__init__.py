"""LLM-DataDist-compatible KV-cache transfer, with CacheLink's C++ core.

Importing sets ``AUTO_USE_UC_MEMORY=0`` when unset, as LLM-DataDist does. Names of the old KV-manager
mode (``TensorDesc``, ``Tensor``, ``KvCacheManager``) are not provided: CacheLink implements the
cache-manager mode only.
"""

import os

from llm_datadist.configs import LLMConfig, LlmConfig
from llm_datadist.data_type import DataType
from llm_datadist.status import LLMException, LLMStatusCode, Status
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

__all__ = [
    "BlocksCacheKey",
    "Cache",
    "CacheDesc",
    "CacheKey",
    "CacheKeyByIdAndIndex",
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
