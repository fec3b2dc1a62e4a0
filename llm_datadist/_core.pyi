"""
CacheLink native core: pools, caches, links and transfers (private; use llm_datadist).
"""

from __future__ import annotations
import collections.abc
import enum
import numpy
import typing

class CoreError(RuntimeError):
    pass

class Code(enum.IntEnum):
    """
    Status codes of the core (LLMStatusCode values).
    """

    ALREADY_LINK = 1343270920
    CLUSTER_NUM_EXCEED_LIMIT = 1343270924
    ENGINE_FINALIZED = 1343270918
    EXIST_LINK = 1343270936
    FAILED = 4294967295
    FEATURE_NOT_ENABLED = 1343270937
    KV_CACHE_NOT_EXIST = 1343270914
    LINK_BUSY = 1343270939
    LINK_FAILED = 1343270921
    NOT_YET_LINK = 1343270919
    OUT_OF_MEMORY = 1343270940
    PARAM_INVALID = 1343270917
    PROCESSING_LINK = 1343270925
    REPEAT_REQUEST = 1343270915
    SUCCESS = 0
    TIMEOUT = 1343270938
    UNLINK_FAILED = 1343270922
    WAIT_PROCESS_TIMEOUT = 1343270913

class PoolKind(enum.IntEnum):
    """
    Where a cache lives (CacheInfo.pool values).
    """

    DEVICE = 0
    HOST = 1
    REGISTERED = -1

class PoolConfig:
    def __init__(self) -> None: ...
    @property
    def page_shift(self) -> int: ...
    @page_shift.setter
    def page_shift(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def size(self) -> int: ...
    @size.setter
    def size(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...

class EngineConfig:
    adopt_pool: bool
    checksum: bool
    device_pool: PoolConfig
    force_tcp: bool
    host_id: str
    host_pool: PoolConfig
    link_secret: str
    listen_ip: str
    persistent_pool: bool
    pool_dir: str
    pool_name: str
    role: str
    def __init__(self) -> None: ...
    @property
    def cluster_id(self) -> int: ...
    @cluster_id.setter
    def cluster_id(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def copy_threads(self) -> int: ...
    @copy_threads.setter
    def copy_threads(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def key_lease_ms(self) -> int: ...
    @key_lease_ms.setter
    def key_lease_ms(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def link_retry_count(self) -> int: ...
    @link_retry_count.setter
    def link_retry_count(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def listen_port(self) -> int: ...
    @listen_port.setter
    def listen_port(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def max_connections_per_link(self) -> int: ...
    @max_connections_per_link.setter
    def max_connections_per_link(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def sync_timeout_ms(self) -> int: ...
    @sync_timeout_ms.setter
    def sync_timeout_ms(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def tcp_stripes(self) -> int: ...
    @tcp_stripes.setter
    def tcp_stripes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...

class Extent:
    blocks_unit: bool
    def __init__(self) -> None: ...
    @property
    def block_bytes(self) -> int: ...
    @block_bytes.setter
    def block_bytes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def blocks(self) -> list[int]: ...
    @blocks.setter
    def blocks(self, arg0: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None: ...
    @property
    def length(self) -> int: ...
    @length.setter
    def length(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def offset(self) -> int: ...
    @offset.setter
    def offset(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def slot(self) -> int: ...
    @slot.setter
    def slot(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def tensor_count(self) -> int: ...
    @tensor_count.setter
    def tensor_count(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    @property
    def tensor_start(self) -> int: ...
    @tensor_start.setter
    def tensor_start(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None: ...

class CacheInfo:
    @property
    def addrs(self) -> list[int]: ...
    @property
    def blocks(self) -> bool: ...
    @property
    def blocks_model_id(self) -> int | None: ...
    @property
    def id(self) -> int: ...
    @property
    def meta(self) -> str: ...
    @property
    def num_tensors(self) -> int: ...
    @property
    def pool(self) -> int: ...
    @property
    def remote_accessible(self) -> bool: ...
    @property
    def slot_keys(self) -> list[tuple[int, int, int, int]]: ...
    @property
    def tensor_bytes(self) -> int: ...
    @property
    def units(self) -> int: ...

class LinkInfo:
    @property
    def address(self) -> str: ...
    @property
    def comm_id(self) -> int: ...
    @property
    def data_path(self) -> str: ...
    @property
    def last_error(self) -> str: ...
    @property
    def peer_incarnation(self) -> int: ...
    @property
    def remote_cluster_id(self) -> int: ...
    @property
    def state(self) -> str: ...

class Engine:
    def __init__(self, config: EngineConfig) -> None: ...
    def allocate(
        self,
        pool: typing.SupportsInt | typing.SupportsIndex,
        blocks: bool,
        num_tensors: typing.SupportsInt | typing.SupportsIndex,
        tensor_bytes: typing.SupportsInt | typing.SupportsIndex,
        units: typing.SupportsInt | typing.SupportsIndex,
        meta: str,
    ) -> CacheInfo: ...
    def bind_blocks_key(
        self,
        cache_id: typing.SupportsInt | typing.SupportsIndex,
        model_id: typing.SupportsInt | typing.SupportsIndex,
    ) -> None: ...
    def bind_slot_key(
        self,
        cache_id: typing.SupportsInt | typing.SupportsIndex,
        slot: typing.SupportsInt | typing.SupportsIndex,
        req_id: typing.SupportsInt | typing.SupportsIndex,
        model_id: typing.SupportsInt | typing.SupportsIndex,
        prefix_id: typing.SupportsInt | typing.SupportsIndex,
        lease_ms: typing.SupportsInt | typing.SupportsIndex = -1,
    ) -> None: ...
    def check_owner(self) -> None: ...
    def clients(self) -> list[int]: ...
    def comm_link(
        self,
        name: str,
        self_cluster_id: typing.SupportsInt | typing.SupportsIndex,
        self_ip: str,
        self_port: typing.SupportsInt | typing.SupportsIndex,
        peers: collections.abc.Sequence[
            tuple[typing.SupportsInt | typing.SupportsIndex, str, typing.SupportsInt | typing.SupportsIndex]
        ],
        total_timeout_ms: typing.SupportsInt | typing.SupportsIndex,
    ) -> int: ...
    def comm_status(self, comm_id: typing.SupportsInt | typing.SupportsIndex) -> int: ...
    def comm_unlink(self, comm_id: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def deallocate(
        self, cache_id: typing.SupportsInt | typing.SupportsIndex, expect_blocks: bool
    ) -> None: ...
    def finalize(self, release_pool: bool) -> None: ...
    def find_cache(self, cache_id: typing.SupportsInt | typing.SupportsIndex) -> CacheInfo | None: ...
    def init(self) -> None: ...
    def link(
        self,
        remote_cluster_id: typing.SupportsInt | typing.SupportsIndex,
        ip: str,
        port: typing.SupportsInt | typing.SupportsIndex,
        timeout_ms: typing.SupportsInt | typing.SupportsIndex,
    ) -> None: ...
    def links(self) -> list[LinkInfo]: ...
    def list_caches(self) -> list[CacheInfo]: ...
    def pool_base(self, pool: typing.SupportsInt | typing.SupportsIndex) -> int: ...
    def pool_usage(self, pool: typing.SupportsInt | typing.SupportsIndex) -> tuple[int, int]: ...
    def register_memory(
        self,
        blocks: bool,
        num_tensors: typing.SupportsInt | typing.SupportsIndex,
        tensor_bytes: typing.SupportsInt | typing.SupportsIndex,
        units: typing.SupportsInt | typing.SupportsIndex,
        addrs: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
        remote_accessible: bool,
        meta: str,
    ) -> CacheInfo: ...
    def relisten(self, ip: str, port: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    def remove_blocks_key(self, model_id: typing.SupportsInt | typing.SupportsIndex) -> None: ...
    def remove_slot_key(
        self,
        req_id: typing.SupportsInt | typing.SupportsIndex,
        model_id: typing.SupportsInt | typing.SupportsIndex,
        prefix_id: typing.SupportsInt | typing.SupportsIndex,
    ) -> None: ...
    def set_role(self, role: str) -> None: ...
    def tensor_view(
        self,
        cache_id: typing.SupportsInt | typing.SupportsIndex,
        tensor_index: typing.SupportsInt | typing.SupportsIndex,
    ) -> numpy.ndarray: ...
    def transfer(
        self,
        is_pull: bool,
        remote_cluster_id: typing.SupportsInt | typing.SupportsIndex,
        ref_kind: typing.SupportsInt | typing.SupportsIndex,
        a: typing.SupportsInt | typing.SupportsIndex,
        b: typing.SupportsInt | typing.SupportsIndex,
        c: typing.SupportsInt | typing.SupportsIndex,
        remote_extent: Extent,
        flags: typing.SupportsInt | typing.SupportsIndex,
        local_cache_id: typing.SupportsInt | typing.SupportsIndex,
        local_extent: Extent,
        timeout_ms: typing.SupportsInt | typing.SupportsIndex,
    ) -> None: ...
    def unlink(self, remote_cluster_id: typing.SupportsInt | typing.SupportsIndex, force: bool) -> None: ...
    @property
    def host_id(self) -> str: ...
    @property
    def incarnation(self) -> int: ...
    @property
    def initialized(self) -> bool: ...
    @property
    def listen_address(self) -> str: ...

def copy_units(
    dst_addrs: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
    dst_unit: typing.SupportsInt | typing.SupportsIndex,
    dst_index: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
    dst_offset: typing.SupportsInt | typing.SupportsIndex,
    src_addrs: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
    src_unit: typing.SupportsInt | typing.SupportsIndex,
    src_index: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex],
    src_offset: typing.SupportsInt | typing.SupportsIndex,
    length: typing.SupportsInt | typing.SupportsIndex,
) -> None: ...

FLAG_ALLOW_SHORT: int = 2
FLAG_RELEASE_KEY: int = 1
WHOLE_SLOT: int = 18446744073709551615
