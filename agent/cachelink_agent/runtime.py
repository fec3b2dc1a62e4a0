"""One LLMDataDist instance and the operations the agent runs on it.

The same class runs inside a worker process (default) and inside the agent (``--in-process``), so both
modes behave alike. Every method takes and returns JSON-able values; engine failures become
``EngineError``. The pool is persistent and adopted on restart, so a crash keeps the caches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cachelink_agent.errors import EngineError
from cachelink_agent.protocol import ErrorKind
from llm_datadist import LLMClusterInfo, LLMDataDist, LLMException, LLMRole, LLMStatusCode
from llm_datadist.ext import hosting as ext
from llm_datadist.v2.llm_types import Cache, CacheKey

_log = logging.getLogger("cachelink_agent.runtime")

ROLES = {"prompt": LLMRole.PROMPT, "decoder": LLMRole.DECODER, "mix": LLMRole.MIX}
#: ``llm.Role`` of each role of the API
ROLE_NAMES = {"prompt": "Prompt", "decoder": "Decoder", "mix": "Mix"}
#: transfer latency histogram buckets (seconds), shared by runtimes and the metrics endpoint
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POOL_SUFFIXES = (".device", ".host", ".index")
_TIMEOUTS = ("LLM_TIMEOUT", "LLM_WAIT_PROCESS_TIMEOUT")


def pool_stem(node_name: str, instance: str) -> str:
    """File-name stem of an instance's pool files (stable, so a restart adopts them)."""
    return f"cachelink-{node_name}-{instance}"


def remove_pool_files(pool_dir: str, stem: str) -> list[str]:
    """Delete an instance's pool files; returns the paths removed."""
    removed = []
    for suffix in POOL_SUFFIXES:
        path = Path(pool_dir) / f"{stem}{suffix}"
        try:
            path.unlink()
            removed.append(str(path))
        except FileNotFoundError:
            pass
    return removed


@dataclass
class RuntimeConfig:
    """Everything a runtime needs to init its instance (JSON-able: it is sent to workers)."""

    name: str
    node_name: str
    role: str
    cluster_id: int
    options: dict[str, str]
    pool_dir: str
    host_id: str = ""
    bound_listen: str = ""
    adopt: bool = False
    in_process: bool = False
    attach_socket: str = ""
    attach_uids: list[int] = field(default_factory=list)
    attach_pod_uids: list[str] = field(default_factory=list)
    lease_seconds: float = 30.0
    max_lease_seconds: float = 600.0
    lease_file: str = ""

    def engine_options(self) -> dict[str, str]:
        """The user's options plus what the agent manages (pool placement and persistence)."""
        options = dict(self.options)
        options["cachelink.pool_dir"] = self.pool_dir
        options["cachelink.pool_name"] = pool_stem(self.node_name, self.name)
        options["cachelink.persistent_pool"] = "1"
        options["cachelink.adopt_pool"] = "1"
        if self.host_id and "cachelink.host_id" not in options:
            options["cachelink.host_id"] = self.host_id
        listen = options.get("llm.listenIpInfo", "")
        if (
            self.bound_listen
            and listen.endswith(":0")
            and listen.rsplit(":", 1)[0] == self.bound_listen.rsplit(":", 1)[0]
        ):
            options["llm.listenIpInfo"] = self.bound_listen  # keep the address peers linked to
        return options


class Stats:
    """Transfers by direction, their latency histogram, errors by status code (for the agent's /metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.transfers: dict[str, int] = {"pull": 0, "push": 0}
        self.errors: dict[str, int] = {}

    def observe(self, seconds: float, direction: str) -> None:
        """Count one transfer and its latency."""
        with self._lock:
            index = next(
                (i for i, edge in enumerate(LATENCY_BUCKETS) if seconds <= edge), len(LATENCY_BUCKETS)
            )
            self.buckets[index] += 1
            self.latency_sum += seconds
            self.transfers[direction] = self.transfers.get(direction, 0) + 1

    def error(self, status: str) -> None:
        """Count one failure by its LLMStatusCode name."""
        with self._lock:
            self.errors[status] = self.errors.get(status, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """JSON form."""
        with self._lock:
            return {
                "buckets": list(self.buckets),
                "sum": self.latency_sum,
                "transfers": dict(self.transfers),
                "errors": dict(self.errors),
            }


def _engine_call(func: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return func(*args, **kwargs)
    except (LLMException, TypeError, ValueError, RuntimeError, OSError) as error:
        raise EngineError.from_exception(error) from error


class AttachEndpoint(Protocol):
    """The instance's attach socket (``attach_server.AttachServer``), as the runtime drives it."""

    def start(self) -> None:
        """Listen."""

    def stop(self, release_leases: bool) -> None:
        """Close; free the sessions' caches when ``release_leases``."""

    def session_count(self) -> int:
        """Attached sessions now."""

    def refuse_new_sessions(self, reason: str) -> None:
        """Refuse new sessions with ``reason`` ("" admits them again); attached ones keep working."""

    def set_pod_sockets(self, sockets: dict[str, str]) -> dict[str, str]:
        """Serve exactly these pod sockets (path -> pod uid); returns those served."""


class InstanceRuntime:
    """An initialized instance; thread-safe for concurrent status reads, links and transfers.

    ``attach`` makes the instance's attach endpoint once it is initialized (when the config names a
    socket); the host process passes ``attach_server.AttachServer``.
    """

    def __init__(
        self, config: RuntimeConfig, attach: Callable[[InstanceRuntime], AttachEndpoint] | None = None
    ) -> None:
        self.config = config
        self._attach_factory = attach
        self.stats = Stats()
        self._datadist: LLMDataDist | None = None
        self._caches: dict[int, Cache] = {}
        self._caches_lock = threading.Lock()
        self._comm_ids: dict[str, int] = {}
        # Links whose last transfer timed out: the engine keeps them "linked" (a stalled peer sends no
        # error), but LLM-DataDist's remedy for a transfer timeout is unlink + link, so report them broken.
        self._suspects: dict[int, str] = {}
        self._attach: AttachEndpoint | None = None
        self._quarantine = ""

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def datadist(self) -> LLMDataDist:
        """The live engine instance."""
        if self._datadist is None:
            raise EngineError(ErrorKind.RUNTIME, "instance is not initialized", "LLM_ENGINE_FINALIZED")
        return self._datadist

    def start(self) -> dict[str, Any]:
        """Init the instance (adopting its pool when ``adopt``) and open its attach socket."""
        config = self.config
        if not config.adopt:
            stale = remove_pool_files(config.pool_dir, pool_stem(config.node_name, config.name))
            if stale:
                _log.warning("removed stale pool files of %s: %s", config.name, stale)
        cls = ext.HostedDataDist if config.in_process else LLMDataDist
        datadist = _engine_call(cls, ROLES[config.role], config.cluster_id)
        _engine_call(datadist.init, config.engine_options())
        self._datadist = datadist
        with self._caches_lock:
            for cache, _keys in ext.caches(datadist):
                self._caches[cache.cache_id] = cache
        if config.attach_socket and self._attach_factory is not None:
            self._attach = self._attach_factory(self)
            self._attach.refuse_new_sessions(self._quarantine)
            self._attach.start()
        return {
            "incarnation": ext.incarnation(datadist),
            "listen_address": ext.listen_address(datadist),
            "pid": os.getpid(),
            "caches": len(self._caches),
        }

    def stop(self, finalize: bool) -> None:
        """Close the attach socket; finalize (free the pools) only when asked."""
        if self._attach is not None:
            self._attach.stop(release_leases=finalize)
            self._attach = None
        datadist, self._datadist = self._datadist, None
        if datadist is not None and finalize:
            _engine_call(datadist.finalize)
            remove_pool_files(self.config.pool_dir, pool_stem(self.config.node_name, self.config.name))

    def set_quarantine(self, reason: str) -> None:
        """Refuse new attach sessions while ``reason`` is set (its owner went silent); "" lifts it."""
        self._quarantine = reason
        if self._attach is not None:
            self._attach.refuse_new_sessions(reason)

    def set_pod_sockets(self, sockets: dict[str, str]) -> dict[str, str]:
        """Serve attach sockets in these pods' CSI volume folders (path -> pod uid), and no others."""
        if self._attach is None:
            return {}
        return self._attach.set_pod_sockets({str(k): str(v) for k, v in sockets.items()})

    # ---------------------------------------------------------------------------------- links

    def link(self, remote_cluster_id: int, remote_address: str, local_ip: str | None, timeout_ms: int) -> str:
        """``link_clusters`` one remote; returns the LLMStatusCode name."""
        datadist = self.datadist
        ip, port = remote_address.rsplit(":", 1)
        listen = ext.listen_address(datadist)
        info = LLMClusterInfo()
        info.remote_cluster_id = remote_cluster_id
        try:
            info.append_local_ip_info(local_ip or (listen.rsplit(":", 1)[0] if listen else "0.0.0.0"), 0)
            info.append_remote_ip_info(ip, int(port))
        except (RuntimeError, ValueError, TypeError) as error:
            raise EngineError(
                ErrorKind.VALUE, f"bad address {remote_address!r}: {error}", "LLM_PARAM_INVALID"
            ) from error
        status, _ = _engine_call(datadist.link_clusters, [info], timeout_ms)
        if status != LLMStatusCode.LLM_SUCCESS:
            self.stats.error(status.name)
        else:
            self._suspects.pop(remote_cluster_id, None)
        return str(status.name)

    def unlink(self, remote_cluster_id: int, timeout_ms: int, force: bool) -> str:
        """``unlink_clusters`` one remote; returns the LLMStatusCode name."""
        info = LLMClusterInfo()
        info.remote_cluster_id = remote_cluster_id
        status, _ = _engine_call(self.datadist.unlink_clusters, [info], timeout_ms, force)
        return str(status.name)

    def comm_link(self, comm_name: str, cluster_rank_info: dict[int, int], rank_table: str) -> int:
        """Join a communication domain; returns its comm id."""
        comm_id = int(_engine_call(self.datadist.link, comm_name, cluster_rank_info, rank_table))
        self._comm_ids[comm_name] = comm_id
        return comm_id

    def comm_unlink(self, comm_name: str) -> None:
        """Leave a communication domain (a no-op when not joined)."""
        comm_id = self._comm_ids.pop(comm_name, None)
        if comm_id is not None:
            _engine_call(self.datadist.unlink, comm_id)

    def comm_status(self, comm_name: str) -> str:
        """RegisterMemStatus name of a domain, or "pending" when not joined."""
        comm_id = self._comm_ids.get(comm_name)
        if comm_id is None:
            return "pending"
        return str(_engine_call(self.datadist.query_register_mem_status, comm_id).name)

    # --------------------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """Links, pools, counters, caches and attach sessions, as JSON."""
        datadist = self.datadist
        return {
            "incarnation": ext.incarnation(datadist),
            "listen_address": ext.listen_address(datadist),
            "pid": os.getpid(),
            "links": [
                {
                    "remote_cluster_id": link.remote_cluster_id,
                    "address": link.address,
                    "state": "broken" if link.remote_cluster_id in self._suspects else link.state,
                    "data_path": link.data_path,
                    "peer_incarnation": link.peer_incarnation,
                    "comm_id": link.comm_id,
                    "last_error": link.last_error or self._suspects.get(link.remote_cluster_id, ""),
                }
                for link in ext.links(datadist)
            ],
            "comm_links": {
                name: {"comm_id": cid, "state": self.comm_status(name)}
                for name, cid in list(self._comm_ids.items())
            },
            "linked_clients": ext.linked_clients(datadist),
            "counters": ext.counters(datadist),
            "pools": [
                {"placement": pool.placement.name, "path": pool.path, "size": pool.size, "used": pool.used}
                for pool in ext.pool_files(datadist)
            ],
            "caches": len(self._caches),
            "attach_sessions": self._attach.session_count() if self._attach is not None else 0,
            "stats": self.stats.snapshot(),
        }

    # ------------------------------------------------------------------------ caches (attach)

    def remember(self, cache: Cache) -> None:
        """Track a cache allocated through the attach socket."""
        with self._caches_lock:
            self._caches[cache.cache_id] = cache

    def forget(self, cache_id: int) -> None:
        """Stop tracking a deallocated cache."""
        with self._caches_lock:
            self._caches.pop(cache_id, None)

    def cache(self, cache_id: int) -> Cache:
        """A live cache of this instance by id."""
        with self._caches_lock:
            cache = self._caches.get(cache_id)
        if cache is None:
            raise EngineError(
                ErrorKind.LLM, f"cache {cache_id} does not exist on this instance", "LLM_KV_CACHE_NOT_EXIST"
            )
        return cache

    def all_caches(self) -> list[tuple[Cache, list[CacheKey]]]:
        """Every live cache with its bound keys (adopted ones included)."""
        return list(ext.caches(self.datadist))

    def release(self, cache_id: int) -> None:
        """Free a cache fully: drop its keys and its id reference (lease expiry, session close)."""
        datadist = self.datadist
        keys = next((keys for cache, keys in ext.caches(datadist) if cache.cache_id == cache_id), [])
        cache = self._caches.get(cache_id)
        manager = datadist.cache_manager
        for key in keys:
            _engine_call(manager.remove_cache_key, key)
        if cache is not None:
            if cache.is_blocks_cache:
                _engine_call(manager.deallocate_blocks_cache, cache)
            else:
                _engine_call(manager.deallocate_cache, cache)
        self.forget(cache_id)

    def run(self, func: Any, *args: Any, direction: str = "", peer: int | None = None, **kwargs: Any) -> Any:
        """Run one cache operation, counting its failure code; transfers (``direction``) also get timed.

        A transfer to ``peer`` that times out marks that link broken until a transfer succeeds or it is
        linked again.
        """
        start = time.perf_counter()
        try:
            result = _engine_call(func, *args, **kwargs)
        except EngineError as error:
            self.stats.error(error.llm_status or error.kind)
            if peer is not None and error.llm_status in _TIMEOUTS:
                self._suspects[peer] = error.message
            raise
        if direction:
            self.stats.observe(time.perf_counter() - start, direction)
        if peer is not None:
            self._suspects.pop(peer, None)
        return result
