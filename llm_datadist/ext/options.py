"""The ``init`` options: completion and validation, pure Python (it loads no native code).

LLM-DataDist keys (``llm.*``, ``ge.*``) keep their documented meaning; CacheLink's own settings live under
``cachelink.*`` (see ``CACHELINK_OPTIONS``). Values are strings, as ``LLMConfig.generate_options()``
writes them. ``validate_options`` checks a dict exactly as ``LLMDataDist.init`` will. A malformed value
or an unknown ``cachelink.*`` key raises ``InvalidOption`` (``LLMException(LLM_PARAM_INVALID)``) or
``InvalidOptionValue`` (``ValueError``, where the reference raises one), both naming the key in ``.key``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm_datadist.status import LLMException, LLMStatusCode
from llm_datadist.utils.utils import check_isinstance

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
    "cachelink.link_secret": "shared secret peers must prove to link; it also keys the per-frame "
    "authentication of every frame and byte after the handshake",
    "cachelink.link_encryption": '"1": encrypt links (AES-256-GCM) instead of only authenticating them; '
    "needs cachelink.link_secret",
    "cachelink.max_server_connections": "connections the listener keeps open at once, all peers together "
    "(default 2048)",
    "cachelink.max_connections_per_source": "connections the listener keeps open at once from one source "
    "address (default 256)",
    "cachelink.handshake_timeout_ms": "an accepted connection must finish the handshake within this many ms "
    "(default 10000)",
    "cachelink.idle_timeout_ms": "an accepted connection idle this many ms is closed "
    "(default 600000; 0: never)",
    "cachelink.key_lease_ms": "a CacheKey not pulled within this many ms is released (0: no lease)",
}

LISTEN_KEY = "llm.listenIpInfo"
DEFAULT_COMM_BASE_PORT = 16000
DEFAULT_SYNC_TIMEOUT_MS = 1000
DEFAULT_LINK_TOTAL_TIME_S = 120
_MAX_PAGE_SHIFT = 31
_MIN_PAGE_SHIFT = 10


#: the role names the core takes (``llm.Role``)
ROLE_NAMES = ("Prompt", "Decoder", "Mix")


class InvalidOption(LLMException):
    """An option the engine refuses (``LLM_PARAM_INVALID``); ``key`` names it ("" when none applies)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message, status_code=LLMStatusCode.LLM_PARAM_INVALID)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, *self.args))


class InvalidOptionValue(ValueError):
    """A value the reference rejects with ``ValueError`` (a port); ``key`` names the option."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, *self.args))


def _invalid(key: str, message: str) -> InvalidOption:
    return InvalidOption(key, message)


def _flag(options: Mapping[str, str], key: str, default: bool = False) -> bool:
    value = options.get(key)
    if value is None:
        return default
    if value not in ("0", "1"):
        raise _invalid(key, f'option {key} must be "0" or "1", got {value!r}')
    return value == "1"


def _positive_int(options: Mapping[str, str], key: str, default: int, *, allow_zero: bool = False) -> int:
    value = options.get(key)
    if value is None:
        return default
    if not value.isdigit() or (int(value) == 0 and not allow_zero):
        raise _invalid(
            key,
            f"option {key} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}",
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
        raise _invalid(key, f"option {key} is not valid JSON: {text!r}") from None
    if not isinstance(data, dict) or "memory_size" not in data:
        raise _invalid(key, f"option {key} must be a JSON object with memory_size, got {text!r}")
    size = data["memory_size"]
    shift = data.get("page_shift", 16)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise _invalid(key, f"option {key}: memory_size must be a positive integer, got {size!r}")
    if (
        not isinstance(shift, int)
        or isinstance(shift, bool)
        or not _MIN_PAGE_SHIFT <= shift < _MAX_PAGE_SHIFT
    ):
        raise _invalid(key, f"option {key}: page_shift must be an integer in [10, 31), got {shift!r}")
    if size >> shift >= 1 << 32:
        raise _invalid(key, f"option {key}: memory_size >> page_shift must be below 2^32")
    return PoolSpec(size, shift)


def parse_listen(text: str) -> tuple[str, int]:
    """Split ``ip:port`` (``llm.listenIpInfo``); a bad port raises ValueError as the reference does."""
    parts = text.split(":")
    if len(parts) != 2:
        raise _invalid(LISTEN_KEY, f"llm.listenIpInfo must be ip:port, got {text!r}")
    ip, port_text = parts
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidOptionValue(
            LISTEN_KEY, f"port in llm.listenIpInfo is not an integer: {port_text!r}"
        ) from None
    if not 0 <= port <= 0xFFFF:
        raise InvalidOptionValue(
            LISTEN_KEY,
            f"port's value is out of range, port in llm.listenIpInfo must be in [0, 65535]: {port}",
        )
    return ip, port


def check_cachelink_keys(options: Mapping[str, str]) -> None:
    """Reject unknown ``cachelink.*`` keys."""
    for key in options:
        if key.startswith("cachelink.") and key not in CACHELINK_OPTIONS:
            known = ", ".join(sorted(CACHELINK_OPTIONS))
            raise _invalid(key, f"unknown option {key}; CacheLink options are: {known}")


def comm_base_port(options: Mapping[str, str]) -> int:
    """Base port for communication-domain listeners."""
    port = _positive_int(options, "cachelink.comm_base_port", DEFAULT_COMM_BASE_PORT)
    if port > 0xFFFF:
        raise _invalid(
            "cachelink.comm_base_port", f"option cachelink.comm_base_port must be a port, got {port}"
        )
    return port


def link_total_time_ms(options: Mapping[str, str]) -> int:
    """Total time a communication-domain link may take (``llm.LinkTotalTime`` s; 0 = 120 s)."""
    seconds = _positive_int(options, "llm.LinkTotalTime", 0, allow_zero=True)
    return (seconds or DEFAULT_LINK_TOTAL_TIME_S) * 1000


def sync_timeout_ms(options: Mapping[str, str]) -> int:
    """``llm.SyncKvCacheWaitTime``: bound of every blocking transfer (ms, default 1000)."""
    return _positive_int(options, "llm.SyncKvCacheWaitTime", DEFAULT_SYNC_TIMEOUT_MS)


@dataclass(frozen=True)
class EngineSettings:
    """What the core is configured with, read from a completed options dict (see ``engine_settings``)."""

    cluster_id: int
    role: str
    listen_ip: str
    listen_port: int
    device_pool: PoolSpec | None
    host_pool: PoolSpec | None
    pool_dir: str
    pool_name: str
    persistent_pool: bool
    adopt_pool: bool
    host_id: str
    force_tcp: bool
    checksum: bool
    sync_timeout_ms: int
    link_retry_count: int
    max_connections_per_link: int
    tcp_stripes: int
    copy_threads: int
    link_secret: str
    link_encryption: bool
    max_server_connections: int
    max_connections_per_source: int
    handshake_timeout_ms: int
    idle_timeout_ms: int
    key_lease_ms: int
    comm_base_port: int
    link_total_time_ms: int


def engine_settings(options: Mapping[str, str], cluster_id: int, role_name: str) -> EngineSettings:
    """The core's settings for ``options`` (already completed by ``complete_options``)."""
    check_cachelink_keys(options)
    pools = {
        key: parse_pool_config(key, options[key]) if options.get(key) else None
        for key in ("llm.MemPoolConfig", "llm.HostMemPoolConfig")
    }
    pool_name = options.get("cachelink.pool_name", "")
    if "/" in pool_name or pool_name in (".", ".."):
        raise _invalid(
            "cachelink.pool_name", f"option cachelink.pool_name must be a file name, got {pool_name!r}"
        )
    return EngineSettings(
        cluster_id=cluster_id,
        role=role_name,
        listen_ip=options.get("llm.ListenIp", ""),
        listen_port=int(options["llm.ListenPort"]) if "llm.ListenIp" in options else 0,
        device_pool=pools["llm.MemPoolConfig"],
        host_pool=pools["llm.HostMemPoolConfig"],
        pool_dir=options.get("cachelink.pool_dir", "/dev/shm"),
        pool_name=pool_name,
        persistent_pool=_flag(options, "cachelink.persistent_pool"),
        adopt_pool=_flag(options, "cachelink.adopt_pool"),
        host_id=options.get("cachelink.host_id", ""),
        force_tcp=_flag(options, "cachelink.force_tcp"),
        checksum=_flag(options, "cachelink.checksum"),
        sync_timeout_ms=sync_timeout_ms(options),
        link_retry_count=_positive_int(options, "llm.LinkRetryCount", 1),
        max_connections_per_link=_positive_int(options, "cachelink.max_connections_per_link", 8),
        tcp_stripes=_positive_int(options, "cachelink.tcp_stripes", 2),
        copy_threads=_positive_int(options, "cachelink.copy_threads", 2),
        link_secret=options.get("cachelink.link_secret", ""),
        link_encryption=_link_encryption(options),
        max_server_connections=_positive_int(options, "cachelink.max_server_connections", 2048),
        max_connections_per_source=_positive_int(options, "cachelink.max_connections_per_source", 256),
        handshake_timeout_ms=_positive_int(options, "cachelink.handshake_timeout_ms", 10000),
        idle_timeout_ms=_positive_int(options, "cachelink.idle_timeout_ms", 600000, allow_zero=True),
        key_lease_ms=_positive_int(options, "cachelink.key_lease_ms", 0, allow_zero=True),
        comm_base_port=comm_base_port(options),
        link_total_time_ms=link_total_time_ms(options),
    )


def _link_encryption(options: Mapping[str, str]) -> bool:
    """``cachelink.link_encryption``: the session keys come from the link secret, so it needs one."""
    encrypt = _flag(options, "cachelink.link_encryption")
    if encrypt and not options.get("cachelink.link_secret"):
        raise _invalid(
            "cachelink.link_encryption",
            "option cachelink.link_encryption needs cachelink.link_secret (the keys are derived from it)",
        )
    return encrypt


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise _invalid(key, message)


def complete_options(options: Mapping[str, str], role_name: str) -> dict[str, str]:
    """``options`` as ``init`` uses them: types checked, implied keys added, the listen address split.

    Raises ``TypeError`` for a key or value that is not a ``str`` (as the reference does) and
    ``InvalidOption`` / ``InvalidOptionValue`` for a value it refuses.
    """
    opts = dict(options)
    for key, value in opts.items():
        check_isinstance("options key", key, str)
        check_isinstance(f"options[{key}]", value, str)
    if "ge.flowGraphMemMaxSize" in opts:
        value = opts["ge.flowGraphMemMaxSize"]
        _require(
            value.isdigit(),
            "ge.flowGraphMemMaxSize",
            f"ge.flowGraphMemMaxSize must be one all-digit value, got {value}",
        )
    opts["llm.Role"] = role_name
    if "llm.LocalCommRes" in opts:
        _require(
            opts.setdefault("llm.EnableCacheManager", "1") == "1",
            "llm.EnableCacheManager",
            "llm.LocalCommRes needs llm.EnableCacheManager to be enabled",
        )
        opts.setdefault("llm.EnableRemoteCacheAccessible", "1")
    if "llm.TransferBackend" in opts:
        _require(
            opts.get("llm.EnableCacheManager") == "1",
            "llm.EnableCacheManager",
            "llm.TransferBackend needs EnableCacheManager",
        )
        _require(
            opts.setdefault("llm.EnableRemoteCacheAccessible", "1") == "1",
            "llm.EnableRemoteCacheAccessible",
            "llm.TransferBackend needs EnableRemoteCacheAccessible",
        )
        _require(LISTEN_KEY in opts, LISTEN_KEY, "llm.TransferBackend needs listenIpInfo")
    _require(
        opts.get("llm.EnableCacheManager") == "1",
        "llm.EnableCacheManager",
        "CacheLink runs LLM-DataDist in cache-manager mode only: set enable_cache_manager=True "
        "or local_comm_res in LLMConfig",
    )
    _require(
        "ge.exec.deviceId" in opts,
        "ge.exec.deviceId",
        "device_id is required: set LLMConfig.device_id (option ge.exec.deviceId)",
    )
    _require(
        all(part.isdigit() for part in opts["ge.exec.deviceId"].split(";")),
        "ge.exec.deviceId",
        f"device_id must be non-negative integers, got ge.exec.deviceId={opts['ge.exec.deviceId']}",
    )
    if LISTEN_KEY in opts:
        ip, port = parse_listen(opts[LISTEN_KEY])
        opts["llm.ListenIp"], opts["llm.ListenPort"] = ip, str(port)
    return opts


def validate_options(options: Mapping[str, str], role_name: str, cluster_id: int) -> dict[str, str]:
    """Check ``options`` exactly as ``init`` will, without starting anything; returns the completed dict.

    ``role_name`` is ``llm.Role``'s value (``ROLE_NAMES``). Raises what ``init`` raises for the same input.
    """
    if role_name not in ROLE_NAMES:
        raise ValueError(f"role must be one of {', '.join(ROLE_NAMES)}, got {role_name!r}")
    completed = complete_options(options, role_name)
    engine_settings(completed, cluster_id, role_name)
    return completed
