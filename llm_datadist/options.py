"""Turns an ``init`` options dict into the core's ``EngineConfig``.

LLM-DataDist keys (``llm.*``, ``ge.*``) keep their documented meaning; CacheLink's own settings live under
``cachelink.*`` (see ``CACHELINK_OPTIONS``). Values are strings, as ``LLMConfig.generate_options()``
writes them; a malformed value or an unknown ``cachelink.*`` key raises ``LLMException(LLM_PARAM_INVALID)``
naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from llm_datadist import _native
from llm_datadist.status import LLMException, LLMStatusCode

#: CacheLink's options: key -> what it does (documented in docs/options.md)
CACHELINK_OPTIONS: dict[str, str] = {
    "cachelink.force_tcp": '"1": never use the same-host shared-memory path, even when it is available',
    "cachelink.checksum": '"1": checksum every transferred range and fail on mismatch',
    "cachelink.host_id": "host identity exchanged at link time (default: the machine's boot id)",
    "cachelink.pool_dir": "directory of the pool files (default /dev/shm)",
    "cachelink.pool_name": "file-name stem of the pool files (default cachelink-<cluster id>-<pid>)",
    "cachelink.persistent_pool": '"1": keep the pool and its cache index when the process exits without '
    "finalize",
    "cachelink.adopt_pool": '"1": adopt an existing pool and cache index of the same name instead of '
    "creating one",
    "cachelink.comm_base_port": "base port of communication-domain listeners (port = base + device_id)",
    "cachelink.max_connections_per_link": "connections a link may open for concurrent transfers (default 8)",
    "cachelink.tcp_stripes": "connections one large TCP transfer is split across (default 2)",
    "cachelink.copy_threads": "threads of one large same-host copy (default 2)",
    "cachelink.link_secret": "shared secret peers must prove (HMAC challenge-response) to link",
    "cachelink.key_lease_ms": "a CacheKey not pulled within this many ms is released (0: no lease)",
}

DEFAULT_COMM_BASE_PORT = 16000
DEFAULT_SYNC_TIMEOUT_MS = 1000
DEFAULT_LINK_TOTAL_TIME_S = 120
_MAX_PAGE_SHIFT = 31
_MIN_PAGE_SHIFT = 10


def _invalid(message: str) -> LLMException:
    return LLMException(message, status_code=LLMStatusCode.LLM_PARAM_INVALID)


def _flag(options: Mapping[str, str], key: str, default: bool = False) -> bool:
    value = options.get(key)
    if value is None:
        return default
    if value not in ("0", "1"):
        raise _invalid(f'option {key} must be "0" or "1", got {value!r}')
    return value == "1"


def _positive_int(options: Mapping[str, str], key: str, default: int, *, allow_zero: bool = False) -> int:
    value = options.get(key)
    if value is None:
        return default
    if not value.isdigit() or (int(value) == 0 and not allow_zero):
        raise _invalid(
            f"option {key} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}"
        )
    return int(value)


@dataclass(frozen=True)
class PoolSpec:
    """A pool's size and page shift, parsed from ``llm.MemPoolConfig`` / ``llm.HostMemPoolConfig``."""

    memory_size: int
    page_shift: int = 16


def parse_pool_config(key: str, text: str) -> PoolSpec:
    """Parse ``{"memory_size": N, "page_shift": 16}`` with the core's rules."""
    try:
        data = json.loads(text)
    except ValueError:
        raise _invalid(f"option {key} is not valid JSON: {text!r}") from None
    if not isinstance(data, dict) or "memory_size" not in data:
        raise _invalid(f"option {key} must be a JSON object with memory_size, got {text!r}")
    size = data["memory_size"]
    shift = data.get("page_shift", 16)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise _invalid(f"option {key}: memory_size must be a positive integer, got {size!r}")
    if (
        not isinstance(shift, int)
        or isinstance(shift, bool)
        or not _MIN_PAGE_SHIFT <= shift < _MAX_PAGE_SHIFT
    ):
        raise _invalid(f"option {key}: page_shift must be an integer in [10, 31), got {shift!r}")
    if size >> shift >= 1 << 32:
        raise _invalid(f"option {key}: memory_size >> page_shift must be below 2^32")
    return PoolSpec(size, shift)


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``ip:port`` (``llm.listenIpInfo``); a bad port raises ValueError as the reference does."""
    parts = text.split(":")
    if len(parts) != 2:
        raise _invalid(f"llm.listenIpInfo must be ip:port, got {text!r}")
    ip, port_text = parts
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port in llm.listenIpInfo is not an integer: {port_text!r}") from None
    if not 0 <= port <= 0xFFFF:
        raise ValueError(
            f"port's value is out of range, port in llm.listenIpInfo must be in [0, 65535]: {port}"
        )
    return ip, port


def check_cachelink_keys(options: Mapping[str, str]) -> None:
    """Reject unknown ``cachelink.*`` keys."""
    for key in options:
        if key.startswith("cachelink.") and key not in CACHELINK_OPTIONS:
            known = ", ".join(sorted(CACHELINK_OPTIONS))
            raise _invalid(f"unknown option {key}; CacheLink options are: {known}")


def comm_base_port(options: Mapping[str, str]) -> int:
    """Base port for communication-domain listeners."""
    port = _positive_int(options, "cachelink.comm_base_port", DEFAULT_COMM_BASE_PORT)
    if port > 0xFFFF:
        raise _invalid(f"option cachelink.comm_base_port must be a port, got {port}")
    return port


def link_total_time_ms(options: Mapping[str, str]) -> int:
    """Total time a communication-domain link may take (``llm.LinkTotalTime`` s; 0 = 120 s)."""
    seconds = _positive_int(options, "llm.LinkTotalTime", 0, allow_zero=True)
    return (seconds or DEFAULT_LINK_TOTAL_TIME_S) * 1000


def sync_timeout_ms(options: Mapping[str, str]) -> int:
    """``llm.SyncKvCacheWaitTime``: bound of every blocking transfer (ms, default 1000)."""
    return _positive_int(options, "llm.SyncKvCacheWaitTime", DEFAULT_SYNC_TIMEOUT_MS)


def build_engine_config(options: Mapping[str, str], cluster_id: int, role_name: str) -> _native.EngineConfig:
    """The core configuration for ``options`` (already completed by ``init``)."""
    check_cachelink_keys(options)
    config = _native.EngineConfig()
    config.cluster_id = cluster_id
    config.role = role_name
    if "llm.ListenIp" in options:
        config.listen_ip = options["llm.ListenIp"]
        config.listen_port = int(options["llm.ListenPort"])
    # pybind11 returns copies of nested structs: assign them back.
    device, host = config.device_pool, config.host_pool
    for key, pool in (("llm.MemPoolConfig", device), ("llm.HostMemPoolConfig", host)):
        text = options.get(key, "")
        if text:
            spec = parse_pool_config(key, text)
            pool.size, pool.page_shift = spec.memory_size, spec.page_shift
    config.device_pool, config.host_pool = device, host
    config.pool_dir = options.get("cachelink.pool_dir", "/dev/shm")
    config.pool_name = options.get("cachelink.pool_name", "")
    if "/" in config.pool_name or config.pool_name in (".", ".."):
        raise _invalid(f"option cachelink.pool_name must be a file name, got {config.pool_name!r}")
    config.persistent_pool = _flag(options, "cachelink.persistent_pool")
    config.adopt_pool = _flag(options, "cachelink.adopt_pool")
    config.host_id = options.get("cachelink.host_id", "")
    config.force_tcp = _flag(options, "cachelink.force_tcp")
    config.checksum = _flag(options, "cachelink.checksum")
    config.sync_timeout_ms = sync_timeout_ms(options)
    config.link_retry_count = _positive_int(options, "llm.LinkRetryCount", 1)
    config.max_connections_per_link = _positive_int(options, "cachelink.max_connections_per_link", 8)
    config.tcp_stripes = _positive_int(options, "cachelink.tcp_stripes", 2)
    config.copy_threads = _positive_int(options, "cachelink.copy_threads", 2)
    config.link_secret = options.get("cachelink.link_secret", "")
    config.key_lease_ms = _positive_int(options, "cachelink.key_lease_ms", 0, allow_zero=True)
    comm_base_port(options)
    link_total_time_ms(options)
    return config
