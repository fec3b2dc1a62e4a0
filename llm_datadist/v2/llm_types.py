"""Value types of the LLM-DataDist v2 API: roles, cluster info, cache descriptors, keys, caches."""

import ctypes
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from enum import Enum, IntEnum
from math import prod
from typing import Any, Protocol

import numpy as np

from llm_datadist.data_type import DataType, itemsize, numpy_dtype
from llm_datadist.status import LLMException, LLMStatusCode
from llm_datadist.utils.utils import (
    check_int32,
    check_int64,
    check_int_list,
    check_isinstance,
    check_list_int64,
    check_param,
    check_range,
    check_uint16,
    check_uint32,
    check_uint64,
)

__all__ = [
    "INVALID_ID",
    "BlocksCacheKey",
    "Cache",
    "CacheDesc",
    "CacheKey",
    "CacheKeyByIdAndIndex",
    "CacheTask",
    "DataType",
    "KvCache",
    "LLMClusterInfo",
    "LLMRole",
    "LayerSynchronizer",
    "MemInfo",
    "Memtype",
    "Placement",
    "PushType",
    "RegisterMemStatus",
    "TransferConfig",
    "TransferWithCacheKeyConfig",
    "ip_str_to_int",
    "register_mem_status_from_int",
]

INVALID_ID = 2**64 - 1
"""``UINT64_MAX``: an unused ``req_id``/``prefix_id``."""


class LLMRole(IntEnum):
    """Role of an ``LLMDataDist``; ``str()`` gives ``"LLMRole.PROMPT"``."""

    PROMPT = 1
    DECODER = 2
    MIX = 3

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)


class Placement(IntEnum):
    """Where a cache lives; ``str()`` gives ``"Placement.HOST"``."""

    HOST = 0
    DEVICE = 1

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)


class Memtype(Enum):
    """Memory kind of a ``MemInfo``."""

    MEM_TYPE_DEVICE = 0
    MEM_TYPE_HOST = 1


class RegisterMemStatus(Enum):
    """Result of ``LLMDataDist.query_register_mem_status``."""

    OK = 0
    PREPARING = 1
    FAILED = 2


def register_mem_status_from_int(value: int) -> RegisterMemStatus:
    """Map a core status number to ``RegisterMemStatus``; unknown values give ``FAILED``."""
    try:
        return RegisterMemStatus(value)
    except ValueError:
        return RegisterMemStatus.FAILED


class PushType(Enum):
    """How a layer-wise transfer names its destination (internal to transfer_cache_async)."""

    NO_CACHE_KEY = 0
    BLOCKS_CACHE_KEY = 1
    CACHE_KEY_BY_ID = 2


def ip_str_to_int(ip: str | int) -> int:
    """IPv4 text -> int in the reference's little-endian packing (``"192.168.1.2"`` -> ``0x0201A8C0``).

    Ints pass through unchanged; unparseable text raises ``RuntimeError("Can not parse ip str:<ip>")``.
    """
    if isinstance(ip, str):
        try:
            packed = socket.inet_aton(ip)
        except OSError:
            raise RuntimeError(f"Can not parse ip str:{ip}") from None
        return int.from_bytes(packed, byteorder="little")
    return ip


class LLMClusterInfo:
    """A peer to link with ``link_clusters``/``unlink_clusters``: its id and (ip, port) pairs."""

    def __init__(self) -> None:
        self._remote_cluster_id: int | None = None
        self._remote_role_type: LLMRole | int | None = None
        self._local_ip_info_list: list[tuple[int, int]] = []
        self._remote_ip_info_list: list[tuple[int, int]] = []

    @property
    def remote_cluster_id(self) -> int | None:
        """Cluster id of the peer (uint64); None until set."""
        return self._remote_cluster_id

    @remote_cluster_id.setter
    def remote_cluster_id(self, remote_cluster_id: int) -> None:
        check_uint64("remote_cluster_id", remote_cluster_id)
        self._remote_cluster_id = remote_cluster_id

    @property
    def remote_role_type(self) -> LLMRole | int | None:
        """Role of the peer (informational; not sent)."""
        return self._remote_role_type

    @remote_role_type.setter
    def remote_role_type(self, remote_role_type: LLMRole | int | None) -> None:
        check_isinstance("remote_role_type", remote_role_type, [LLMRole, int], allow_none=True)
        self._remote_role_type = remote_role_type

    @property
    def local_ip_info_list(self) -> list[tuple[int, int]]:
        """Local ``(ip_int, port)`` pairs."""
        return self._local_ip_info_list

    @property
    def remote_ip_info_list(self) -> list[tuple[int, int]]:
        """Remote ``(ip_int, port)`` pairs."""
        return self._remote_ip_info_list

    @staticmethod
    def _ip_port(ip: str | int, port: int) -> tuple[int, int]:
        check_isinstance("ip", ip, [str, int])
        check_uint16("port", port)
        return ip_str_to_int(ip), port

    def append_local_ip_info(self, ip: str | int, port: int) -> None:
        """Add a local address: ``ip`` text or int (TypeError otherwise), ``port`` uint16."""
        self._local_ip_info_list.append(self._ip_port(ip, port))

    def append_remote_ip_info(self, ip: str | int, port: int) -> None:
        """Add a peer address: ``ip`` text or int (TypeError otherwise), ``port`` uint16."""
        self._remote_ip_info_list.append(self._ip_port(ip, port))

    def __repr__(self) -> str:
        return (
            f"LLMClusterInfo(remote_cluster_id={self._remote_cluster_id}, "
            f"remote_role_type={self._remote_role_type}, "
            f"local_ip_info_list={self._local_ip_info_list}, "
            f"remote_ip_info_list={self._remote_ip_info_list})"
        )


class MemInfo:
    """A memory region for ``remap_registered_memory``."""

    def __init__(self, mem_type: Memtype, addr: int, size: int) -> None:
        check_isinstance("mem_type", mem_type, Memtype)
        check_isinstance("addr", addr, int)
        check_isinstance("size", size, int)
        self._mem_type = mem_type
        self._addr = addr
        self._size = size

    @property
    def mem_type(self) -> Memtype:
        """Memory kind."""
        return self._mem_type

    @property
    def addr(self) -> int:
        """Start address."""
        return self._addr

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self._size

    def __str__(self) -> str:
        return f"MemInfo(mem_type={self._mem_type}, addr={self._addr}, size={self._size})"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemInfo):
            return NotImplemented
        return (self._mem_type, self._addr, self._size) == (other._mem_type, other._addr, other._size)

    def __hash__(self) -> int:
        return hash((MemInfo, self._mem_type, self._addr, self._size))


class CacheDesc:
    """Describes a cache: ``num_tensors`` tensors of one ``shape`` and ``data_type``.

    For a blocks cache ``shape[0]`` is the block count; otherwise ``shape[batch_dim_index]`` is the
    batch size. ``size`` is the byte size of ONE tensor.
    """

    def __init__(
        self,
        num_tensors: int,
        shape: list[int] | tuple[int, ...],
        data_type: DataType,
        placement: Placement = Placement.DEVICE,
        batch_dim_index: int = 0,
        seq_len_dim_index: int = -1,
        kv_tensor_format: str | None = None,
    ) -> None:
        check_uint32("num_tensors", num_tensors)
        check_isinstance("shape", shape, [tuple, list], inner=int)
        check_isinstance("data_type", data_type, DataType)
        check_isinstance("placement", placement, Placement)
        check_isinstance("batch_dim_index", batch_dim_index, int)
        check_int32("seq_len_dim_index", seq_len_dim_index)
        check_isinstance("kv_tensor_format", kv_tensor_format, str, allow_none=True)
        check_param(
            0 <= batch_dim_index < len(shape),
            "batch_dim_index {0} out of range, [0, {1})",
            batch_dim_index,
            len(shape),
        )
        check_param(
            seq_len_dim_index == -1 or 0 <= seq_len_dim_index < len(shape),
            "seq_len_dim_index {0} is invalid, should be -1 or in range [0, {1})",
            seq_len_dim_index,
            len(shape),
        )
        check_list_int64("shape", shape)
        self._num_tensors = num_tensors
        self._shape = shape
        self._data_type = data_type
        self._placement = placement
        self._batch_dim = batch_dim_index
        self._seq_len_dim_index = seq_len_dim_index
        self._kv_tensor_format = kv_tensor_format

    @property
    def num_tensors(self) -> int:
        """Number of tensors (e.g. 2 x layers for K and V)."""
        return self._num_tensors

    @property
    def shape(self) -> list[int] | tuple[int, ...]:
        """Shape of each tensor: the object passed in (not a copy)."""
        return self._shape

    def update_dim(self, dim_index: int, dim_value: int) -> None:
        """Set ``shape[dim_index] = dim_value`` in place (the shape must be a list)."""
        self._shape[dim_index] = dim_value  # type: ignore[index]

    @property
    def data_type(self) -> DataType:
        """Element type."""
        return self._data_type

    @property
    def numpy_dtype(self) -> np.dtype[np.generic]:
        """CacheLink extension: the numpy dtype of one element (see ``data_type.numpy_dtype``)."""
        return numpy_dtype(self._data_type)

    @property
    def placement(self) -> Placement:
        """HOST or DEVICE."""
        return self._placement

    @property
    def batch_dim(self) -> int:
        """Index of the batch dimension (the constructor's ``batch_dim_index``)."""
        return self._batch_dim

    @property
    def batch_size(self) -> int:
        """``shape[batch_dim]``."""
        return self._shape[self._batch_dim]

    @property
    def seq_len_dim_index(self) -> int:
        """Index of the sequence-length dimension, or -1."""
        return self._seq_len_dim_index

    @property
    def kv_tensor_format(self) -> str | None:
        """Optional data-format label of the tensors."""
        return self._kv_tensor_format

    @property
    def size(self) -> int:
        """Bytes of one tensor (elements x element size); LLMException for dynamic dims or strings."""
        try:
            element_size = itemsize(self._data_type)
        except LLMException:
            element_size = -1
        if element_size < 0 or any(dim < 0 for dim in self._shape):
            raise LLMException(
                f"Failed to calc tensor size, shape = {self._shape}, data_type = {self._data_type}",
                status_code=LLMStatusCode.LLM_PARAM_INVALID,
            )
        return prod(self._shape) * element_size

    def __repr__(self) -> str:
        return (
            f"CacheDesc(num_tensors={self._num_tensors}, shape={self._shape}, "
            f"data_type={self._data_type}, placement={self._placement}, "
            f"batch_dim_index={self._batch_dim}, seq_len_dim_index={self._seq_len_dim_index}, "
            f"kv_tensor_format={self._kv_tensor_format})"
        )


def _fill_positional(
    args: tuple[Any, ...], kwargs: dict[str, Any], names: Sequence[str], limit: int
) -> dict[str, Any]:
    check_param(len(args) + len(kwargs) <= limit, "Param num is over limit")
    merged = dict(kwargs)
    for name, value in zip(names, args, strict=False):
        merged[name] = value
    check_param(
        "prompt_cluster_id" in merged or "cluster_id" in merged,
        "Param prompt_cluster_id or cluster_id is required",
    )
    return merged


def _check_known(merged: dict[str, Any], valid: Sequence[str]) -> None:
    for key in merged:
        check_param(key in valid, "Unsupported param:{}", key)


class CacheKey:
    """Names one batch slot of a peer's cache: ``(cluster_id, req_id, model_id=0, prefix_id=2**64-1)``.

    Keywords: ``cluster_id`` or ``prompt_cluster_id``, ``req_id``, ``model_id``, ``prefix_id``; all
    uint64. Keys compare and hash by value.
    """

    INVALID_ID = INVALID_ID

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        merged = _fill_positional(args, kwargs, ("cluster_id", "req_id", "model_id", "prefix_id"), 4)
        check_param("req_id" in merged, "Param req_id is required")
        _check_known(merged, ("prompt_cluster_id", "cluster_id", "req_id", "model_id", "prefix_id"))
        cluster_id = merged["cluster_id"] if "cluster_id" in merged else merged["prompt_cluster_id"]
        req_id = merged["req_id"]
        model_id = merged.get("model_id", 0)
        prefix_id = merged.get("prefix_id", INVALID_ID)
        check_uint64("cluster_id", cluster_id)
        check_uint64("req_id", req_id)
        check_uint64("model_id", model_id)
        check_uint64("prefix_id", prefix_id)
        self._cluster_id: int = cluster_id
        self._req_id: int = req_id
        self._model_id: int = model_id
        self._prefix_id: int = prefix_id

    @property
    def cluster_id(self) -> int:
        """Cluster id of the peer holding the cache."""
        return self._cluster_id

    @property
    def prompt_cluster_id(self) -> int:
        """Same as ``cluster_id``."""
        return self._cluster_id

    @property
    def req_id(self) -> int:
        """Request id (``2**64-1`` = unused)."""
        return self._req_id

    @property
    def model_id(self) -> int:
        """Model id (default 0)."""
        return self._model_id

    @property
    def prefix_id(self) -> int:
        """Prefix id (default ``2**64-1`` = none)."""
        return self._prefix_id

    def _fields(self) -> tuple[int, int, int, int]:
        return (self._cluster_id, self._req_id, self._model_id, self._prefix_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheKey):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((CacheKey, *self._fields()))

    def __repr__(self) -> str:
        return (
            f"CacheKey(cluster_id={self._cluster_id}, req_id={self._req_id}, "
            f"prefix_id={self._prefix_id}, model_id={self._model_id})"
        )


class BlocksCacheKey:
    """Names a peer's blocks cache: ``(cluster_id, model_id=0)``; ints, no range check."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        merged = _fill_positional(args, kwargs, ("cluster_id", "model_id"), 2)
        _check_known(merged, ("prompt_cluster_id", "cluster_id", "model_id"))
        self._key_name = "cluster_id" if "cluster_id" in merged else "prompt_cluster_id"
        cluster_id = merged[self._key_name]
        model_id = merged.get("model_id", 0)
        check_isinstance("cluster_id", cluster_id, int, extra_fmt="The first param ")
        check_isinstance("model_id", model_id, int, extra_fmt="The second param ")
        self._cluster_id: int = cluster_id
        self._model_id: int = model_id

    @property
    def cluster_id(self) -> int:
        """Cluster id of the peer."""
        return self._cluster_id

    @property
    def prompt_cluster_id(self) -> int:
        """Same as ``cluster_id``."""
        return self._cluster_id

    @property
    def model_id(self) -> int:
        """Model id (default 0)."""
        return self._model_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlocksCacheKey):
            return NotImplemented
        return (self._cluster_id, self._model_id) == (other._cluster_id, other._model_id)

    def __hash__(self) -> int:
        return hash((BlocksCacheKey, self._cluster_id, self._model_id))

    def __repr__(self) -> str:
        return f"BlocksCacheKey({self._key_name}={self._cluster_id}, model_id={self._model_id})"


class CacheKeyByIdAndIndex:
    """Names batch slot ``batch_index`` of the peer cache ``cache_id`` on cluster ``cluster_id``."""

    def __init__(self, cluster_id: int, cache_id: int, batch_index: int = 0) -> None:
        check_uint64("cluster_id", cluster_id)
        check_int64("cache_id", cache_id)
        check_uint32("batch_index", batch_index)
        self._cluster_id = cluster_id
        self._cache_id = cache_id
        self._batch_index = batch_index

    @property
    def cluster_id(self) -> int:
        """Cluster id of the peer."""
        return self._cluster_id

    @property
    def cache_id(self) -> int:
        """Id of the peer's cache."""
        return self._cache_id

    @property
    def batch_index(self) -> int:
        """Batch slot in that cache."""
        return self._batch_index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheKeyByIdAndIndex):
            return NotImplemented
        return (self._cluster_id, self._cache_id, self._batch_index) == (
            other._cluster_id,
            other._cache_id,
            other._batch_index,
        )

    def __hash__(self) -> int:
        return hash((CacheKeyByIdAndIndex, self._cluster_id, self._cache_id, self._batch_index))

    def __repr__(self) -> str:
        return (
            f"CacheKeyByIdAndIndex(cluster_id={self._cluster_id}, cache_id={self._cache_id}, "
            f"batch_index={self._batch_index})"
        )


ViewFactory = Callable[[int], np.ndarray[Any, Any]]


class Cache:
    """A cache made by the ``CacheManager`` (allocate/register) or by ``create_cpu_cache``.

    Users should not construct it. ``tensor_addrs`` holds one address per tensor and is emptied when
    the cache is deallocated.

    CacheLink extensions: ``numpy(i)``/``tensors()`` give zero-copy numpy views of the tensors (dtype
    and shape from ``cache_desc``). numpy arrays implement ``__dlpack__``, so
    ``torch.from_dlpack(cache.numpy(i))`` shares the memory with torch as well. Views stay valid only
    while the cache is allocated.
    """

    def __init__(
        self,
        cache_id: int,
        cache_desc: CacheDesc,
        tensor_addrs: list[int],
        is_blocks_cache: bool = False,
        *,
        placement_pool: str | None = None,
        view_factory: ViewFactory | None = None,
    ) -> None:
        check_int64("cache_id", cache_id)
        self._cache_id = cache_id
        self._cache_desc = cache_desc
        self._tensor_addrs = tensor_addrs
        self._is_blocks_cache = is_blocks_cache
        self._placement_pool = placement_pool
        self._view_factory = view_factory
        self._valid = True

    @property
    def cache_id(self) -> int:
        """Id of the cache (1, 2, ... per process; -1 for ``create_cpu_cache``)."""
        return self._cache_id

    @property
    def cache_desc(self) -> CacheDesc:
        """The descriptor the cache was made from."""
        return self._cache_desc

    @property
    def tensor_addrs(self) -> list[int]:
        """Address of each tensor; empty after deallocation."""
        return self._tensor_addrs

    @property
    def per_device_tensor_addrs(self) -> list[list[int]]:
        """``[tensor_addrs]`` (the old ``KvCache`` shape, used by the reference's guide)."""
        return [self._tensor_addrs]

    @property
    def is_blocks_cache(self) -> bool:
        """True for a blocks (paged) cache."""
        return self._is_blocks_cache

    @property
    def placement_pool(self) -> str | None:
        """Internal: name of the pool the memory came from, if any."""
        return self._placement_pool

    def _invalidate(self) -> None:
        """Internal: mark deallocated and drop the addresses (called by the CacheManager)."""
        self._valid = False
        self._tensor_addrs = []
        self._view_factory = None

    @staticmethod
    def create_cpu_cache(cache_desc: CacheDesc, addrs: list[int]) -> "Cache":
        """Wrap host memory the caller owns as a blocks cache (``cache_id=-1``), e.g. for swap_blocks.

        ``cache_desc.placement`` must be HOST and ``len(addrs) == cache_desc.num_tensors``.
        """
        check_isinstance("cache_desc", cache_desc, CacheDesc)
        check_isinstance("addrs", addrs, list, inner=int)
        check_param(cache_desc.placement == Placement.HOST, "cache_desc placement must be HOST")
        check_param(
            cache_desc.num_tensors == len(addrs),
            f"cache_desc num_tensors:{cache_desc.num_tensors} not equal addrs num:{len(addrs)}",
        )
        return Cache(-1, cache_desc, addrs, True)

    def numpy(self, tensor_index: int = 0) -> np.ndarray[Any, Any]:
        """CacheLink extension: a zero-copy, writable numpy view of tensor ``tensor_index``.

        Raises ``LLMException(LLM_PARAM_INVALID)`` for a bad index or a shape/dtype that cannot be
        viewed, and ``RuntimeError`` once the cache was deallocated.
        """
        if not self._valid:
            raise RuntimeError(f"cache {self._cache_id} has been deallocated")
        check_isinstance("tensor_index", tensor_index, int)
        check_param(
            0 <= tensor_index < len(self._tensor_addrs),
            "tensor_index {0} out of range, [0, {1})",
            tensor_index,
            len(self._tensor_addrs),
        )
        if self._view_factory is not None:
            return self._view_factory(tensor_index)
        return self._view_from_address(self._tensor_addrs[tensor_index])

    def tensors(self) -> list[np.ndarray[Any, Any]]:
        """CacheLink extension: ``numpy(i)`` for every tensor."""
        return [self.numpy(index) for index in range(len(self._tensor_addrs))]

    def _view_from_address(self, addr: int) -> np.ndarray[Any, Any]:
        desc = self._cache_desc
        dtype = numpy_dtype(desc.data_type)
        nbytes = desc.size
        shape = tuple(desc.shape)
        if nbytes == 0:
            return np.empty(shape, dtype=dtype)
        check_param(addr != 0, "tensor address of cache {0} is null", self._cache_id)
        buffer = (ctypes.c_char * nbytes).from_address(addr)
        return np.frombuffer(memoryview(buffer), dtype=dtype).reshape(shape)

    def __str__(self) -> str:
        return (
            f"Cache(cache_id = {self._cache_id}, device_tensor_addrs = {len(self._tensor_addrs)}, "
            f"is_blocks_cache = {self._is_blocks_cache})"
        )

    __repr__ = __str__


class KvCache:
    """Cache of the older KV-manager mode: addresses per device (``per_device_tensor_addrs``)."""

    def __init__(
        self,
        cache_id: int,
        cache_desc: CacheDesc,
        per_device_tensor_addrs: list[list[int]],
        kv_cache_manager: object = None,
    ) -> None:
        check_int64("cache_id", cache_id)
        self._cache_id = cache_id
        self._cache_desc = cache_desc
        self._per_device_tensor_addrs = per_device_tensor_addrs
        self._kv_cache_manager = kv_cache_manager

    @property
    def cache_id(self) -> int:
        """Id of the cache."""
        return self._cache_id

    @property
    def cache_desc(self) -> CacheDesc:
        """The descriptor the cache was made from."""
        return self._cache_desc

    @property
    def per_device_tensor_addrs(self) -> list[list[int]]:
        """Tensor addresses, one list per device."""
        return self._per_device_tensor_addrs

    @staticmethod
    def create_cpu_cache(cache_desc: CacheDesc, addrs: list[int] | list[list[int]]) -> "KvCache":
        """Wrap host memory: ``addrs`` is one address list or a list of them (one per device)."""
        check_isinstance("cache_desc", cache_desc, CacheDesc)
        check_param(cache_desc.placement == Placement.HOST, "cache_desc placement must be HOST")
        check_isinstance("addrs", addrs, list)
        check_param(len(addrs) > 0, "addrs length should be bigger than zero.")
        nested = isinstance(addrs[0], list)
        for addr in addrs:
            check_isinstance("the internal element of addrs", addr, [list, int])
            if isinstance(addr, list):
                check_isinstance("the internal element of addrs", addr, list, inner=int)
                check_param(
                    cache_desc.num_tensors == len(addr),
                    f"cache_desc num_tensors:{cache_desc.num_tensors} "
                    f"should be equal to size of the internal element of addrs:{len(addr)}",
                )
            check_param(
                isinstance(addr, list) == nested,
                "the type of the internal element of addrs should be consistent.",
            )
        if not nested:
            check_param(
                cache_desc.num_tensors == len(addrs),
                f"cache_desc num_tensors:{cache_desc.num_tensors} "
                f"should be equal to size of addrs:{len(addrs)}",
            )
            return KvCache(-1, cache_desc, [addrs])  # type: ignore[list-item]
        return KvCache(-1, cache_desc, addrs)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"KvCache(cache_id = {self._cache_id}, num_devices = {len(self._per_device_tensor_addrs)})"

    __repr__ = __str__


class LayerSynchronizer(ABC):
    """Implemented by the caller of ``transfer_cache_async`` to wait for each layer's computation."""

    @abstractmethod
    def synchronize_layer(self, layer_index: int, timeout_in_millis: int | None) -> bool:
        """Block until layer ``layer_index`` is computed; True on success, False on failure."""


def _check_layer_range(name: str, value: range | None, *, allow_none: bool) -> None:
    check_range(name, value, require_increasing=True, allow_none=allow_none)


class TransferConfig:
    """One destination of ``transfer_cache_async``: peer ``dst_cluster_id`` and its tensor addresses.

    ``dst_addrs`` holds 2 addresses (K, V) per layer sent; ``src_layer_range`` None = all layers.
    """

    def __init__(
        self,
        dst_cluster_id: int,
        dst_addrs: list[int] | tuple[int, ...],
        src_layer_range: range | None = None,
        src_batch_index: int = 0,
    ) -> None:
        check_uint64("dst_cluster_id", dst_cluster_id)
        self._check_dst_addrs(dst_addrs)
        _check_layer_range("src_layer_range", src_layer_range, allow_none=True)
        check_uint32("src_batch_index", src_batch_index)
        self._dst_cluster_id = dst_cluster_id
        self._dst_addrs = dst_addrs
        self._src_layer_range = src_layer_range
        self._src_batch_index = src_batch_index
        self.dst_layer_range: range | None = None

    @staticmethod
    def _check_dst_addrs(dst_addrs: object) -> None:
        check_int_list("dst_addrs", dst_addrs, check_uint64)

    @property
    def dst_cluster_id(self) -> int:
        """Cluster id of the destination (uint64)."""
        return self._dst_cluster_id

    @dst_cluster_id.setter
    def dst_cluster_id(self, dst_cluster_id: int) -> None:
        check_uint64("dst_cluster_id", dst_cluster_id)
        self._dst_cluster_id = dst_cluster_id

    @property
    def dst_addrs(self) -> list[int] | tuple[int, ...]:
        """Destination tensor addresses (uint64 each)."""
        return self._dst_addrs

    @dst_addrs.setter
    def dst_addrs(self, dst_addrs: list[int] | tuple[int, ...]) -> None:
        self._check_dst_addrs(dst_addrs)
        self._dst_addrs = dst_addrs

    @property
    def src_layer_range(self) -> range | None:
        """Source layers to send (step 1, ``0 <= start < stop``); None = all."""
        return self._src_layer_range

    @src_layer_range.setter
    def src_layer_range(self, src_layer_range: range | None) -> None:
        _check_layer_range("src_layer_range", src_layer_range, allow_none=True)
        self._src_layer_range = src_layer_range

    @property
    def src_batch_index(self) -> int:
        """Source batch slot (uint32)."""
        return self._src_batch_index

    @src_batch_index.setter
    def src_batch_index(self, src_batch_index: int) -> None:
        check_uint32("src_batch_index", src_batch_index)
        self._src_batch_index = src_batch_index

    def __repr__(self) -> str:
        return (
            f"TransferConfig(dst_cluster_id={self._dst_cluster_id}, dst_addrs={self._dst_addrs}, "
            f"src_layer_range={self._src_layer_range}, src_batch_index={self._src_batch_index})"
        )


class TransferWithCacheKeyConfig:
    """A ``transfer_cache_async`` destination named by a key (needs remote-cache-accessible mode).

    Both layer ranges are required and of equal length; a ``BlocksCacheKey`` needs
    ``src_batch_index == 0``.
    """

    def __init__(
        self,
        cache_key: BlocksCacheKey | CacheKeyByIdAndIndex,
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        src_batch_index: int = 0,
    ) -> None:
        check_isinstance("cache_key", cache_key, [BlocksCacheKey, CacheKeyByIdAndIndex])
        _check_layer_range("src_layer_range", src_layer_range, allow_none=False)
        _check_layer_range("dst_layer_range", dst_layer_range, allow_none=False)
        assert src_layer_range is not None
        assert dst_layer_range is not None
        check_param(
            len(src_layer_range) == len(dst_layer_range),
            "src_layer_range size shoulde be equal to dst_layer_range size",
        )
        check_uint32("src_batch_index", src_batch_index)
        self._check_blocks_batch(cache_key, src_batch_index)
        self._cache_key = cache_key
        self._src_layer_range: range | None = src_layer_range
        self._dst_layer_range: range | None = dst_layer_range
        self._src_batch_index = src_batch_index
        self.dst_cluster_id: int = cache_key.cluster_id

    @staticmethod
    def _check_blocks_batch(cache_key: object, src_batch_index: int) -> None:
        check_param(
            not (isinstance(cache_key, BlocksCacheKey) and src_batch_index != 0),
            "src_batch_index shoulde be 0 when cache_key is BlocksCacheKey.",
        )

    @property
    def cache_key(self) -> BlocksCacheKey | CacheKeyByIdAndIndex:
        """Key naming the destination cache."""
        return self._cache_key

    @cache_key.setter
    def cache_key(self, cache_key: BlocksCacheKey | CacheKeyByIdAndIndex) -> None:
        check_isinstance("cache_key", cache_key, [BlocksCacheKey, CacheKeyByIdAndIndex])
        self._cache_key = cache_key
        self.dst_cluster_id = cache_key.cluster_id

    @property
    def src_layer_range(self) -> range | None:
        """Source layers."""
        return self._src_layer_range

    @src_layer_range.setter
    def src_layer_range(self, src_layer_range: range | None) -> None:
        _check_layer_range("src_layer_range", src_layer_range, allow_none=True)
        self._src_layer_range = src_layer_range

    @property
    def dst_layer_range(self) -> range | None:
        """Destination layers."""
        return self._dst_layer_range

    @dst_layer_range.setter
    def dst_layer_range(self, dst_layer_range: range | None) -> None:
        _check_layer_range("dst_layer_range", dst_layer_range, allow_none=True)
        self._dst_layer_range = dst_layer_range

    @property
    def src_batch_index(self) -> int:
        """Source batch slot (uint32; 0 for a BlocksCacheKey)."""
        return self._src_batch_index

    @src_batch_index.setter
    def src_batch_index(self, src_batch_index: int) -> None:
        self._check_blocks_batch(self._cache_key, src_batch_index)
        check_uint32("src_batch_index", src_batch_index)
        self._src_batch_index = src_batch_index

    def __repr__(self) -> str:
        return (
            f"TransferWithCacheKeyConfig(cache_key={self._cache_key}, "
            f"src_layer_range={self._src_layer_range}, dst_layer_range={self._dst_layer_range}, "
            f"src_batch_index={self._src_batch_index})"
        )


class _AsyncTransfer(Protocol):
    def get(self, timeout: float | None) -> LLMStatusCode: ...

    def get_results(self, timeout: float | None) -> list[LLMStatusCode | None]: ...


class CacheTask:
    """Handle of a ``transfer_cache_async`` run; wraps the object doing the transfer."""

    def __init__(self, transfer_async_task: _AsyncTransfer) -> None:
        self._transfer_async_task = transfer_async_task

    @staticmethod
    def _seconds(timeout_in_millis: int | None) -> float | None:
        if timeout_in_millis is None:
            return None
        check_uint32("timeout_in_millis", timeout_in_millis)
        return timeout_in_millis / 1000

    def synchronize(self, timeout_in_millis: int | None = None) -> LLMStatusCode:
        """Wait (uint32 ms; None = forever): first failure, else ``LLM_SUCCESS``."""
        return self._transfer_async_task.get(self._seconds(timeout_in_millis))

    def get_results(self, timeout_in_millis: int | None = None) -> list[LLMStatusCode | None]:
        """Wait, then one code per transfer config (None if that config never started)."""
        return self._transfer_async_task.get_results(self._seconds(timeout_in_millis))
