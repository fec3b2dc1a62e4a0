"""``LLMDataDist``: one instance of the engine in cache-manager mode (the mode the seed page documents).

Differences from LLM-DataDist, all deliberate and documented in docs/compatibility.md:
- ``init`` requires ``device_id`` (the seed page says so; the real package does not check it).
- Only cache-manager mode exists; ``init`` without ``enable_cache_manager``/``local_comm_res`` raises
  ``LLM_PARAM_INVALID`` instead of importing the old KV-manager package.
- ``device_id`` selects the instance; DEVICE caches come from ``mem_pool_cfg`` and HOST caches from
  ``host_mem_pool_cfg``, both host shared memory.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import struct
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from llm_datadist import _native
from llm_datadist.ext import options as option_keys
from llm_datadist.ext import pool_sweep, rank_table
from llm_datadist.status import LLMException, LLMStatusCode
from llm_datadist.utils.utils import (
    check_dict,
    check_isinstance,
    check_param,
    check_uint32,
    check_uint64,
)
from llm_datadist.v2 import cache_manager as cache_manager_module
from llm_datadist.v2.llm_types import LLMClusterInfo, LLMRole, RegisterMemStatus, register_mem_status_from_int

_log = logging.getLogger("LLM_DATADIST")

MAX_CLUSTERS_PER_CALL = 16
MAX_COMM_NAME_LEN = 128
MAX_DOMAIN_MEMBERS = 4
_ROLE_NAMES = {LLMRole.PROMPT: "Prompt", LLMRole.DECODER: "Decoder", LLMRole.MIX: "Mix"}
_NOT_INITIALIZED = "llm datadist is not initialized"
_live_lock = threading.Lock()


def ip_int_to_str(ip: int) -> str:
    """The dotted form of an address stored the way ``LLMClusterInfo`` stores it (little-endian)."""
    return socket.inet_ntoa(struct.pack("<I", ip))


def _mode_error(func: str, supported: bool) -> LLMException:
    negation = "" if supported else "not "
    return LLMException(
        f"{func} is {negation}supported when llm.EnableCacheManager is configured.",
        status_code=LLMStatusCode.LLM_FEATURE_NOT_ENABLED,
    )


class LLMDataDist:
    """An engine instance; at most one is initialized per process (as in LLM-DataDist)."""

    llm_engine_instance: ClassVar[LLMDataDist | None] = None
    #: CacheLink extension: subclasses that set this are exempt from the one-per-process rule
    #: (``llm_datadist.ext.hosting.HostedDataDist``, used by the node agent to host many instances).
    _multi_instance: ClassVar[bool] = False

    def __init__(self, role: LLMRole, cluster_id: int) -> None:
        check_isinstance("role", role, LLMRole)
        check_uint64("cluster_id", cluster_id)
        self._role = role
        self._cluster_id = cluster_id
        self._engine: _native.Engine | None = None
        self._options: dict[str, str] = {}
        self._cache_manager: cache_manager_module.CacheManager | None = None
        self._init_pid = 0
        self._linked_domain = False

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def cluster_id(self) -> int:
        """The cluster id given at construction."""
        return self._cluster_id

    def init(self, options: dict[str, str]) -> None:
        """Initialize in cache-manager mode from ``options`` (``LLMConfig.generate_options()``)."""
        if self._engine is not None:
            return
        check_isinstance("options", options, dict)
        opts = self._complete_options(options)
        config = options_module_build(opts, self._cluster_id, _ROLE_NAMES[self._role])
        pool_sweep.sweep_dead_pools(config.pool_dir)
        with _live_lock:
            live = LLMDataDist.llm_engine_instance
            if (
                not self._multi_instance
                and live is not None
                and live is not self
                and self._holds_engine(live)
            ):
                raise LLMException("Cannot init multiple LLMDataDists", status_code=LLMStatusCode.LLM_FAILED)
            engine = _native.Engine(config)
            with _native.core_call("init"):
                engine.init()
            self._engine = engine
            self._options = opts
            self._init_pid = os.getpid()
            if not self._multi_instance:
                LLMDataDist.llm_engine_instance = self
        self._cache_manager = cache_manager_module.CacheManager(engine, opts, lambda: self._linked_domain)
        _log.info(
            "LLMDataDist cluster %d initialized (%s)", self._cluster_id, engine.listen_address or "client"
        )

    @staticmethod
    def _holds_engine(other: LLMDataDist) -> bool:
        """Whether ``other`` is initialized (an engine is running)."""
        return other._engine is not None

    def _complete_options(self, options: dict[str, str]) -> dict[str, str]:
        return option_keys.complete_options(options, _ROLE_NAMES[self._role])

    def finalize(self) -> None:
        """Unlink everything, stop the engine and release its pools; a no-op when not initialized."""
        engine = self._engine
        if engine is None:
            return
        if self._cache_manager is not None:
            self._cache_manager._mark_dead()  # noqa: SLF001 - its caches die with this engine, not public API
        self._engine = None
        with _live_lock:
            if LLMDataDist.llm_engine_instance is self:
                LLMDataDist.llm_engine_instance = None
        # A forked child must not tear down its parent's pools: the core only detaches there.
        engine.finalize(release_pool=os.getpid() == self._init_pid)

    def _require_engine(self) -> _native.Engine:
        engine = self._engine
        if engine is None:
            raise RuntimeError(_NOT_INITIALIZED)
        if os.getpid() != self._init_pid:
            with _native.core_call("check_owner"):
                engine.check_owner()
        return engine

    @property
    def cache_manager(self) -> cache_manager_module.CacheManager:
        """The ``CacheManager`` of this instance."""
        self._require_engine()
        assert self._cache_manager is not None
        return self._cache_manager

    @property
    def kv_cache_manager(self) -> None:
        """Not available in cache-manager mode (raises, as LLM-DataDist does)."""
        self._require_engine()
        raise _mode_error("kv_cache_manager", supported=False)

    def check_link_status(self, remote_cluster_id: int) -> None:
        """Not available in cache-manager mode (raises, as LLM-DataDist does)."""
        self._require_engine()
        check_uint64("remote_cluster_id", remote_cluster_id)
        raise _mode_error("check_link_status", supported=False)

    # ---------------------------------------------------------------------------------- links

    def _check_clusters(self, clusters: object, timeout: object) -> Sequence[LLMClusterInfo]:
        check_isinstance("clusters", clusters, [list, tuple], inner=LLMClusterInfo)
        check_isinstance("timeout", timeout, int)
        assert isinstance(timeout, int)
        if not -(2**31) <= timeout < 2**31:
            raise ValueError(f"timeout's value is out of range, timeout:{timeout} must be in int32 range")
        check_param(timeout > 0, "timeout:{0} must be > 0", timeout)
        assert isinstance(clusters, list | tuple)
        for cluster in clusters:
            if cluster.remote_cluster_id is None:
                raise TypeError("remote_cluster_id only support [int], but got <class 'NoneType'>.")
        return clusters

    def link_clusters(
        self, clusters: list[LLMClusterInfo] | tuple[LLMClusterInfo, ...], timeout: int = 3000
    ) -> tuple[LLMStatusCode, list[LLMStatusCode]]:
        """Link to each cluster's listen address; failures are returned, not raised."""
        engine = self._require_engine()
        checked = self._check_clusters(clusters, timeout)
        if len(checked) > MAX_CLUSTERS_PER_CALL:
            return LLMStatusCode.LLM_CLUSTER_NUM_EXCEED_LIMIT, [
                LLMStatusCode.LLM_CLUSTER_NUM_EXCEED_LIMIT for _ in checked
            ]
        if not self._options.get("llm.LocalCommRes"):
            for cluster in checked:
                check_param(
                    len(cluster.local_ip_info_list) > 0,
                    "local_ip_info_list is empty, please set local_ip_info_list of cluster {0}",
                    cluster.remote_cluster_id,
                )

        def link_one(cluster: LLMClusterInfo) -> LLMStatusCode:
            if not cluster.remote_ip_info_list:
                _log.error("cluster %s has no remote_ip_info", cluster.remote_cluster_id)
                return LLMStatusCode.LLM_PARAM_INVALID
            ip, port = cluster.remote_ip_info_list[0]
            assert cluster.remote_cluster_id is not None  # checked by _check_clusters
            try:
                engine.link(cluster.remote_cluster_id, ip_int_to_str(ip), port, timeout)
            except _native.CoreError as error:
                code, message = error.args
                status = _native.status_of(code)
                _log.error("link to cluster %d failed: %s (%s)", cluster.remote_cluster_id, status, message)
                return status
            return LLMStatusCode.LLM_SUCCESS

        return _fan_out(link_one, checked)

    def unlink_clusters(
        self,
        clusters: list[LLMClusterInfo] | tuple[LLMClusterInfo, ...],
        timeout: int = 3000,
        force: bool = False,
    ) -> tuple[LLMStatusCode, list[LLMStatusCode]]:
        """Unlink each cluster; failures are returned, not raised."""
        engine = self._require_engine()
        checked = self._check_clusters(clusters, timeout)
        check_isinstance("force", force, bool)

        def unlink_one(cluster: LLMClusterInfo) -> LLMStatusCode:
            assert cluster.remote_cluster_id is not None  # checked by _check_clusters
            try:
                engine.unlink(cluster.remote_cluster_id, force)
            except _native.CoreError as error:
                code, message = error.args
                status = _native.status_of(code)
                _log.error("unlink of cluster %d failed: %s (%s)", cluster.remote_cluster_id, status, message)
                return status
            return LLMStatusCode.LLM_SUCCESS

        return _fan_out(unlink_one, checked)

    def switch_role(self, role: LLMRole, switch_options: dict[str, str] | None = None) -> None:
        """Change the role; refused with ``LLM_EXIST_LINK`` while links exist.

        With ``switch_options`` given, ``llm.listenIpInfo`` makes this side a server there (the old port is
        closed) and its absence makes it a client (no listener), as LLM-DataDist documents; ``None`` keeps
        the listener as it is.
        """
        engine = self._require_engine()
        check_isinstance("role", role, LLMRole)
        check_isinstance("switch_options", switch_options, dict, allow_none=True)
        listen: tuple[str, int] | None = None
        if switch_options is not None:
            check_dict("switch_options", switch_options, str, str)
            listen = (
                option_keys.parse_listen(switch_options[option_keys.LISTEN_KEY])
                if option_keys.LISTEN_KEY in switch_options
                else ("", 0)
            )
        if engine.links() or engine.clients():
            raise LLMException(
                "switch_role failed: unlink all clusters first", status_code=LLMStatusCode.LLM_EXIST_LINK
            )
        if listen is not None:
            with _native.core_call("switch_role"):
                engine.relisten(*listen)
            for key in ("llm.listenIpInfo", "llm.ListenIp", "llm.ListenPort"):
                self._options.pop(key, None)
            if listen[0]:
                self._options["llm.listenIpInfo"] = f"{listen[0]}:{listen[1]}"
                self._options["llm.ListenIp"], self._options["llm.ListenPort"] = listen[0], str(listen[1])
        engine.set_role(_ROLE_NAMES[role])
        self._role = role
        self._options["llm.Role"] = _ROLE_NAMES[role]

    # -------------------------------------------------------------------- communication domains

    def link(self, comm_name: str, cluster_rank_info: dict[int, int], rank_table_text: str) -> int:
        """Join a communication domain; poll ``query_register_mem_status`` until OK."""
        engine = self._require_engine()
        if comm_name is None or not isinstance(comm_name, str):
            raise TypeError(f"comm_name only support ['str'], but got {type(comm_name)}.")
        check_param(0 < len(comm_name) < MAX_COMM_NAME_LEN, "comm_name length must be in (0, 128)")
        check_isinstance("cluster_rank_info", cluster_rank_info, dict)
        check_dict("cluster_rank_info", cluster_rank_info, int, int)
        check_param(
            len(cluster_rank_info) <= MAX_DOMAIN_MEMBERS,
            "cluster_rank_info supports at most {0} entries",
            MAX_DOMAIN_MEMBERS,
        )
        for cluster_id, rank in cluster_rank_info.items():
            check_uint64("cluster_rank_info key", cluster_id)
            check_uint32("cluster_rank_info value", rank)
        check_isinstance("rank_table", rank_table_text, str, allow_none=True)
        check_param(len(cluster_rank_info) >= 2, "cluster_rank_info needs at least 2 entries")
        ranks = list(cluster_rank_info.values())
        check_param(ranks == sorted(ranks) and len(set(ranks)) == len(ranks), "rank values must ascend")
        check_param(
            self._cluster_id in cluster_rank_info,
            "cluster_rank_info must contain this instance's cluster id {0}",
            self._cluster_id,
        )
        check_param(rank_table_text is not None, "rank_table is required")
        endpoints = rank_table.parse_rank_table(rank_table_text, option_keys.comm_base_port(self._options))
        for rank in ranks:
            check_param(rank in endpoints, "rank {0} is not in rank_table", rank)
        me = endpoints[cluster_rank_info[self._cluster_id]]
        peers = [
            (cid, endpoints[rank].ip, endpoints[rank].port)
            for cid, rank in cluster_rank_info.items()
            if cid != self._cluster_id
        ]
        with _native.core_call("link"):
            comm_id: int = engine.comm_link(
                comm_name,
                self._cluster_id,
                me.ip,
                me.port,
                peers,
                option_keys.link_total_time_ms(self._options),
            )
        self._linked_domain = True
        return comm_id

    def unlink(self, comm_id: int) -> None:
        """Leave a communication domain."""
        engine = self._require_engine()
        check_uint64("comm_id", comm_id)
        with _native.core_call("unlink"):
            engine.comm_unlink(comm_id)

    def query_register_mem_status(self, comm_id: int) -> RegisterMemStatus:
        """OK once every member of the domain is linked; FAILED after the link's total time."""
        engine = self._require_engine()
        check_uint64("comm_id", comm_id)
        with _native.core_call("query_register_mem_status"):
            return register_mem_status_from_int(engine.comm_status(comm_id))

    # ------------------------------------------------------------------------------ internals

    @property
    def _native_engine(self) -> _native.Engine:
        return self._require_engine()

    @property
    def _engine_options(self) -> dict[str, str]:
        return self._options


def options_module_build(opts: dict[str, str], cluster_id: int, role: str) -> _native.EngineConfig:
    """The core's ``EngineConfig`` for completed options (kept as a function so tests can inspect it)."""
    settings = option_keys.engine_settings(opts, cluster_id, role)
    config = _native.EngineConfig()
    config.cluster_id = settings.cluster_id
    config.role = settings.role
    if settings.listen_ip:
        config.listen_ip = settings.listen_ip
        config.listen_port = settings.listen_port
    # pybind11 returns copies of nested structs: assign them back.
    device, host = config.device_pool, config.host_pool
    for spec, pool in ((settings.device_pool, device), (settings.host_pool, host)):
        if spec is not None:
            pool.size, pool.page_shift = spec.memory_size, spec.page_shift
    config.device_pool, config.host_pool = device, host
    for name in (
        "pool_dir",
        "pool_name",
        "persistent_pool",
        "adopt_pool",
        "host_id",
        "force_tcp",
        "checksum",
        "sync_timeout_ms",
        "link_retry_count",
        "max_connections_per_link",
        "tcp_stripes",
        "copy_threads",
        "link_secret",
        "link_encryption",
        "max_server_connections",
        "max_connections_per_source",
        "handshake_timeout_ms",
        "idle_timeout_ms",
        "key_lease_ms",
    ):
        setattr(config, name, getattr(settings, name))
    return config


def _fan_out(func: object, clusters: Sequence[LLMClusterInfo]) -> tuple[LLMStatusCode, list[LLMStatusCode]]:
    assert callable(func)
    if not clusters:
        return LLMStatusCode.LLM_SUCCESS, []
    with ThreadPoolExecutor(max_workers=len(clusters), thread_name_prefix="cachelink-link") as pool:
        results: list[LLMStatusCode] = list(pool.map(func, clusters))
    failures = [code for code in results if code != LLMStatusCode.LLM_SUCCESS]
    return (failures[0] if failures else LLMStatusCode.LLM_SUCCESS), results


def _finalize_at_exit() -> None:
    instance = LLMDataDist.llm_engine_instance
    if instance is not None:
        try:
            instance.finalize()
        except LLMException:
            _log.exception("finalize at exit failed")


def _shutdown_handler() -> None:
    """Finalize the live instance (LLM-DataDist registers the same at exit)."""
    _finalize_at_exit()


atexit.register(_finalize_at_exit)
