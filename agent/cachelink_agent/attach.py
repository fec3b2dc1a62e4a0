"""Workload side of attach: use a node agent's instance as if it were your own ``CacheManager``.

``attach(folder, "prefill-0")`` connects to the instance's Unix socket in ``folder`` (in a pod: the mount
path of its CSI volume; on the node: the agent's run dir) and returns an ``AttachedCacheManager`` with
``CacheManager``'s method names. The agent hands the instance's pools over the socket as file descriptors,
so no pool path needs to be reachable. Caches are ``llm_datadist`` ``Cache`` objects whose ``numpy(i)``
views map the instance's shared pool (zero copy; numpy arrays are DLPack producers, so
``torch.from_dlpack(cache.numpy(0))`` shares the memory too). Allocate, pull and push run in the agent on
the instance, over the links the operator made.

The session holds a lease, renewed in the background; if this process dies, the caches it allocated
are freed when the lease runs out. ``close()`` frees them at once.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from cachelink_agent import protocol
from cachelink_agent.protocol import ErrorKind, decode_key, encode_key
from llm_datadist import LLMException, LLMStatusCode
from llm_datadist.data_type import numpy_dtype
from llm_datadist.ext.hosting import desc_from_meta
from llm_datadist.status import CacheLinkError
from llm_datadist.v2.cache_manager import describe
from llm_datadist.v2.llm_types import BlocksCacheKey, Cache, CacheDesc, CacheKey, CacheKeyByIdAndIndex

_log = logging.getLogger("cachelink_agent.attach")
AnyKey = CacheKey | CacheKeyByIdAndIndex | BlocksCacheKey


class AttachError(CacheLinkError, ConnectionError):
    """The attach socket is missing, refused us, or the agent went away."""


def _raise(error: dict[str, Any]) -> None:
    kind = ErrorKind.parse(error.get("kind"))
    message, status = str(error.get("message")), error.get("llm_status")
    if kind == ErrorKind.PERMISSION:
        raise PermissionError(message)
    if kind == ErrorKind.TYPE:
        raise TypeError(message)
    if kind == ErrorKind.VALUE and not status:
        raise ValueError(message)
    if status:
        code = LLMStatusCode.__members__.get(str(status), LLMStatusCode.LLM_FAILED)
        raise LLMException(message, status_code=code)
    raise RuntimeError(message)


def _range(value: range | None) -> list[int] | None:
    return None if value is None else [value.start, value.stop]


#: most pools an instance has (device and host) and so file descriptors a hello reply may carry
_MAX_POOL_FDS = 4


class _Pools:
    """The instance's pools, mapped read-write once per session from the descriptors the agent sent."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[mmap.mmap, np.ndarray[Any, Any]]] = {}

    def adopt(self, pools: list[dict[str, Any]], fds: list[int]) -> None:
        """Map each pool from its descriptor (``pools[i]`` came with ``fds[i]``), closing the descriptors."""
        try:
            if not fds:  # an agent from before descriptors were handed over: map by path (it needs root)
                return
            if len(fds) != len(pools):
                raise AttachError(f"the agent sent {len(fds)} pool descriptors for {len(pools)} pools")
            for pool, fd in zip(pools, fds, strict=True):
                mapped = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                self._maps[str(pool["path"])] = (mapped, np.frombuffer(mapped, dtype=np.uint8))
        finally:
            for fd in fds:
                os.close(fd)

    def region(self, path: str) -> np.ndarray[Any, Any]:
        if path not in self._maps:
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as error:
                raise AttachError(
                    f"cache lies in pool {path!r}, which the agent did not hand over: {error.strerror}"
                ) from None
            self.adopt([{"path": path}], [fd])
        return self._maps[path][1]

    def close(self) -> None:
        for mapped, _array in self._maps.values():
            with contextlib.suppress(BufferError):  # views still alive: the map goes with them
                mapped.close()
        self._maps.clear()


class AttachedCacheManager:
    """A ``CacheManager`` of an instance owned by the node agent."""

    def __init__(
        self, path: str, lease_seconds: float | None, timeout: float, session_id: str | None
    ) -> None:
        self._path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pools = _Pools()
        self._caches: dict[int, Cache] = {}
        self._closed = False
        self._sock = self._connect()
        try:
            hello, fds = self._call_with_fds(
                "hello", {"lease_seconds": lease_seconds, "session_id": session_id}
            )
            self._pools.adopt(list(hello.get("pools", [])), fds)
        except BaseException:
            self._sock.close()
            self._pools.close()
            raise
        self.session_id: str = hello["session_id"]
        self.lease_seconds: float = float(hello["lease_seconds"])
        self.instance: str = hello["instance"]
        self.cluster_id: int = int(hello["cluster_id"])
        self.incarnation: int = int(hello["incarnation"])
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._renew_loop, name="attach-lease", daemon=True)
        self._heartbeat.start()

    # ------------------------------------------------------------------------------ plumbing

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            with protocol.unix_address(self._path) as address:
                sock.connect(address)
        except OSError as error:
            sock.close()
            raise AttachError(f"cannot attach at {self._path}: {error.strerror or error}") from error
        return sock

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        return self._call_with_fds(op, args, max_fds=0)[0]

    def _call_with_fds(
        self, op: str, args: dict[str, Any], max_fds: int = _MAX_POOL_FDS
    ) -> tuple[Any, list[int]]:
        with self._lock:
            if self._closed:
                raise AttachError("attach session is closed")
            unsent: OSError | None = None
            try:
                protocol.send(self._sock, {"op": op, "args": args})
            except OSError as error:
                # the agent may have answered and closed before reading (a refusal at accept): read it
                unsent = error
            try:
                if max_fds:
                    reply, fds = protocol.recv_with_fds(self._sock, max_fds)
                else:
                    reply, fds = protocol.recv(self._sock), []
            except (OSError, EOFError, protocol.ProtocolError) as error:
                raise AttachError(
                    f"agent connection lost during {op}: {unsent or error!r}; attach again "
                    f"(session {getattr(self, 'session_id', '?')} can be resumed)"
                ) from error
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            _raise(reply.get("error") or {})
        return reply.get("result"), fds

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(self.lease_seconds / 3, 0.2)):
            try:
                self._call("renew", {})
            except (AttachError, LLMException, RuntimeError) as error:
                _log.warning("lease renewal of session %s failed: %s", self.session_id, error)
                return

    def _cache(self, info: dict[str, Any]) -> Cache:
        desc = desc_from_meta(info["desc"])
        region = self._pools.region(info["pool_path"])
        dtype = numpy_dtype(desc.data_type)
        nbytes = int(info["tensor_bytes"])
        offsets = [int(o) for o in info["offsets"]]
        shape = tuple(desc.shape)

        def view(index: int) -> np.ndarray[Any, Any]:
            start = offsets[index]
            return region[start : start + nbytes].view(dtype).reshape(shape)

        base = region.ctypes.data
        cache = Cache(
            int(info["cache_id"]),
            desc,
            [base + o for o in offsets],
            bool(info["is_blocks_cache"]),
            placement_pool="device" if desc.placement else "host",
            view_factory=view,
        )
        self._caches[cache.cache_id] = cache
        return cache

    def __enter__(self) -> AttachedCacheManager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AttachedCacheManager(instance={self.instance!r}, session={self.session_id!r})"

    def close(self) -> None:
        """End the session: the caches it allocated are freed now."""
        if self._closed:
            return
        self._stop.set()
        with contextlib.suppress(AttachError, RuntimeError):
            self._call("close", {})
        with self._lock:
            self._closed = True
            self._sock.close()
        for cache in self._caches.values():
            cache._invalidate()  # noqa: SLF001 - the manager that made a cache is the one that retires it
        self._pools.close()

    def detach(self) -> None:
        """Drop the connection but keep the session's lease (resume it with ``attach(..., session_id=)``)."""
        self._stop.set()
        with self._lock:
            self._closed = True
            self._sock.close()

    # ---------------------------------------------------------------------------- CacheManager

    def allocate_cache(self, cache_desc: CacheDesc, cache_keys: Sequence[CacheKey] = ()) -> Cache:
        """Allocate a cache in the instance's pool; key i names batch slot i."""
        info = self._call(
            "allocate_cache", {"desc": describe(cache_desc), "keys": [encode_key(k) for k in cache_keys]}
        )
        return self._cache(info)

    def allocate_blocks_cache(
        self, cache_desc: CacheDesc, blocks_cache_key: BlocksCacheKey | None = None
    ) -> Cache:
        """Allocate a paged cache, optionally named by a ``BlocksCacheKey``."""
        key = encode_key(blocks_cache_key) if blocks_cache_key is not None else None
        return self._cache(self._call("allocate_blocks_cache", {"desc": describe(cache_desc), "key": key}))

    def _deallocate(self, cache: Cache, blocks: bool) -> None:
        self._call("deallocate_cache", {"cache_id": cache.cache_id, "blocks": blocks})
        self._caches.pop(cache.cache_id, None)
        cache._invalidate()  # noqa: SLF001 - the manager that made a cache is the one that retires it

    def deallocate_cache(self, cache: Cache) -> None:
        """Drop the cache's id reference."""
        self._deallocate(cache, False)

    def deallocate_blocks_cache(self, cache: Cache) -> None:
        """Free a blocks cache."""
        self._deallocate(cache, True)

    def remove_cache_key(self, cache_key: CacheKey) -> None:
        """Release a key's reference without a pull."""
        self._call("remove_cache_key", {"key": encode_key(cache_key)})

    def pull_cache(
        self,
        cache_key: CacheKey | CacheKeyByIdAndIndex,
        cache: Cache,
        batch_index: int = 0,
        size: int = -1,
        **kwargs: Any,
    ) -> None:
        """Pull one batch slot of a peer's cache into slot ``batch_index`` of ``cache``."""
        args = {
            "key": encode_key(cache_key),
            "cache_id": cache.cache_id,
            "batch_index": batch_index,
            "size": size,
        }
        self._call("pull_cache", {**args, **self._kwargs(kwargs)})

    def pull_blocks(
        self,
        src_cache_key: AnyKey,
        dst_cache: Cache,
        src_blocks: Sequence[int] = (),
        dst_blocks: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        """Pull a peer's blocks into ``dst_blocks`` of ``dst_cache``."""
        args = {
            "key": encode_key(src_cache_key),
            "cache_id": dst_cache.cache_id,
            "src_blocks": list(src_blocks),
            "dst_blocks": list(dst_blocks),
        }
        self._call("pull_blocks", {**args, **self._kwargs(kwargs)})

    def push_cache(
        self,
        dst_cache_key: CacheKeyByIdAndIndex,
        src_cache: Cache,
        src_batch_index: int = 0,
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        size: int = -1,
        tensor_num_per_layer: int = 2,
    ) -> None:
        """Push a slot of ``src_cache`` into the peer's cache slot named by the key."""
        self._call(
            "push_cache",
            {
                "key": encode_key(dst_cache_key),
                "cache_id": src_cache.cache_id,
                "src_batch_index": src_batch_index,
                "src_layer_range": _range(src_layer_range),
                "dst_layer_range": _range(dst_layer_range),
                "size": size,
                "tensor_num_per_layer": tensor_num_per_layer,
            },
        )

    def push_blocks(
        self,
        dst_cache_key: BlocksCacheKey,
        src_cache: Cache,
        src_blocks: Sequence[int] = (),
        dst_blocks: Sequence[int] = (),
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        tensor_num_per_layer: int = 2,
    ) -> None:
        """Push ``src_blocks`` of ``src_cache`` into ``dst_blocks`` of the peer's blocks cache."""
        self._call(
            "push_blocks",
            {
                "key": encode_key(dst_cache_key),
                "cache_id": src_cache.cache_id,
                "src_blocks": list(src_blocks),
                "dst_blocks": list(dst_blocks),
                "src_layer_range": _range(src_layer_range),
                "dst_layer_range": _range(dst_layer_range),
                "tensor_num_per_layer": tensor_num_per_layer,
            },
        )

    def copy_cache(
        self,
        dst: Cache,
        src: Cache,
        dst_batch_index: int = 0,
        src_batch_index: int = 0,
        offset: int = 0,
        size: int = -1,
        req_id: int | None = None,
    ) -> None:
        """Copy one batch slot between two caches of the instance."""
        del req_id  # only logged by LLM-DataDist
        self._call(
            "copy_cache",
            {
                "dst": dst.cache_id,
                "src": src.cache_id,
                "dst_batch_index": dst_batch_index,
                "src_batch_index": src_batch_index,
                "offset": offset,
                "size": size,
            },
        )

    def copy_blocks(self, cache: Cache, copy_block_info: dict[int, list[int]]) -> None:
        """Copy blocks inside one blocks cache."""
        self._call(
            "copy_blocks",
            {
                "cache_id": cache.cache_id,
                "copy_block_info": {str(k): list(v) for k, v in copy_block_info.items()},
            },
        )

    @staticmethod
    def _kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
        allowed = ("src_layer_range", "dst_layer_range", "tensor_num_per_layer")
        for name in kwargs:
            if name not in allowed:
                raise TypeError(f"unexpected keyword argument '{name}'")
        out: dict[str, Any] = {}
        for name in ("src_layer_range", "dst_layer_range"):
            if kwargs.get(name) is not None:
                value = kwargs[name]
                if not isinstance(value, range):
                    raise TypeError(f"{name} only support [range], but got {type(value)}.")
                out[name] = _range(value)
        if "tensor_num_per_layer" in kwargs:
            out["tensor_num_per_layer"] = kwargs["tensor_num_per_layer"]
        return out

    # ---------------------------------------------------------------------------- extensions

    def caches(self) -> list[tuple[Cache, list[AnyKey]]]:
        """Every cache of the instance (including ones from before an agent restart) with its keys."""
        result = self._call("list_caches", {})
        return [(self._cache(info), [decode_key(k) for k in info["keys"]]) for info in result["caches"]]


def socket_path(run_dir: str | Path, instance_name: str) -> str:
    """Where an instance's attach socket is in ``run_dir`` (a pod's CSI volume, or the agent's run dir)."""
    return str(Path(run_dir) / f"{instance_name}.sock")


def attach(
    run_dir: str | Path,
    instance_name: str,
    *,
    lease_seconds: float | None = None,
    timeout: float = 30.0,
    session_id: str | None = None,
) -> AttachedCacheManager:
    """Attach to ``instance_name`` through its socket in ``run_dir``; ``session_id`` resumes a session.

    In a pod, ``run_dir`` is the mount path of the pod's CSI volume (``driver: cachelink.io``,
    ``volumeAttributes: {cachelink: NAME}``); on the node, the agent's ``--run-dir``.
    """
    from cachelink_agent.models import is_instance_name  # noqa: PLC0415 - keeps pydantic off the fast path

    if not is_instance_name(instance_name):
        raise ValueError(f"instance name {instance_name!r} is not a DNS-1123 label")
    return AttachedCacheManager(socket_path(run_dir, instance_name), lease_seconds, timeout, session_id)
