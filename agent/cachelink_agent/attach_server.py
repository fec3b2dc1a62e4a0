"""The instance's attach sockets: workloads allocate, pull and push through them.

Runs where the instance runs (its worker, or the agent in ``--in-process`` mode), one thread per
connection. Two kinds of socket:

- **Pod sockets**, one per pod granted the instance, each in that pod's CSI volume folder (the agent's
  CSI plugin says which, ``set_pod_sockets``). Only that pod has the folder mounted, so a connection
  accepted there *is* that pod: no peer credentials are read. Removing a pod socket (a revoked grant, an
  unpublished volume) closes its connections and ends the sessions opened through it, freeing their caches.
- **The host socket** (``<run-dir>/<instance>.sock``, mode 0600) for processes on the node: each peer's
  ``SO_PEERCRED`` is checked against the attach policy (uids, or a pod uid in the peer's cgroup). A peer
  whose pid the agent cannot see (another PID namespace) is refused: pods attach through CSI.

The hello reply carries the instance's pool files as file descriptors (``SCM_RIGHTS``): the workload maps
them without any path, and the pool folder stays 0700. Each session holds a lease, renewed by any request;
when it runs out (a workload that crashed or hung) the caches the session allocated are freed. Sessions
and their caches are written to a lease file, so a restarted worker or agent still frees a dead
workload's caches, and a workload may resume its session by id (through a socket of the same pod).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachelink_agent import protocol, state
from cachelink_agent.errors import EngineError
from cachelink_agent.protocol import ErrorKind, decode_key, encode_key
from cachelink_agent.runtime import InstanceRuntime
from llm_datadist.ext import hosting as ext
from llm_datadist.v2.cache_manager import describe
from llm_datadist.v2.llm_types import Cache

_log = logging.getLogger("cachelink_agent.attach")
_PEERCRED = struct.Struct("3i")


@dataclass
class Session:
    """An attached workload's lease and the caches it allocated."""

    session_id: str
    lease_seconds: float
    expires_at: float
    cache_ids: set[int] = field(default_factory=set)
    pid: int = 0
    uid: int = -1
    #: the pod uid whose socket opened it ("" for the host socket); resumed only through that pod's sockets
    pod: str = ""
    #: the socket it was opened or resumed through
    via: str = ""


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection: ``pod`` is set for a pod socket (its mount says so)."""

    pid: int
    uid: int
    pod: str
    via: str


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def _pod_of(pid: int, pod_uids: list[str]) -> str | None:
    """The allowed pod that the peer process ``pid`` on the host socket runs in, by its cgroup; None if none.

    ``SO_PEERCRED`` reports pid 0 for a peer in a PID namespace the agent cannot see (a pod's process when
    the agent runs without ``hostPID``): nothing can be checked, so it is refused. Pods attach through
    their CSI volume's pod socket instead, where the mount is the authorization.
    """
    if pid == 0:
        return None
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for pod in pod_uids:
        if pod in cgroups or pod.replace("-", "_") in cgroups:
            return pod
    return None


def _range(value: Any) -> range | None:
    return None if value is None else range(int(value[0]), int(value[1]))


class AttachServer:
    """Serves one instance's attach socket."""

    def __init__(self, runtime: InstanceRuntime) -> None:
        self.runtime = runtime
        config = runtime.config
        self.path = config.attach_socket
        self.allowed_pods = list(config.attach_pod_uids)
        # No policy at all: the agent's own uid. Pods only: nobody else by uid.
        default_uids = [] if self.allowed_pods else [os.getuid()]
        self.allowed_uids = set(config.attach_uids or default_uids)
        self.default_lease = config.lease_seconds
        self.max_lease = config.max_lease_seconds
        self._refusing = ""  # why new sessions are refused (the instance is quarantined), or ""
        self._save_lock = threading.Lock()  # lease-file writes in the order their snapshots were taken
        self.lease_file = config.lease_file
        self._sessions: dict[str, Session] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        #: connections and the socket each came through
        self._conns: dict[socket.socket, str] = {}
        #: pod sockets: path -> (listener, pod uid)
        self._pod_sockets: dict[str, tuple[socket.socket, str]] = {}
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------ lifecycle

    @staticmethod
    def _bind(path: str, mode: int) -> socket.socket:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with protocol.unix_address(path) as address:
                listener.bind(address)
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        listener.listen(64)
        return listener

    def _thread(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(
            target=target, args=args, name=f"{name}-{self.runtime.config.name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def start(self) -> None:
        """Load leases, bind the host socket (0600) and start accepting."""
        self._load_leases()
        self._listener = self._bind(self.path, 0o600)
        self._thread(self._accept_loop, "attach-accept", self._listener, "")
        self._thread(self._reap_loop, "attach-reaper")

    def set_pod_sockets(self, sockets: dict[str, str]) -> dict[str, str]:
        """Serve exactly these pod sockets (path -> pod uid): bind new ones, revoke the others.

        A pod socket is mode 0666 in a folder only its pod has mounted. Revoking one closes the
        connections that came through it and ends their sessions (their caches are freed).
        """
        with self._lock:
            if self._stopping.is_set():
                return {}
            current = dict(self._pod_sockets)
        for path, (listener, pod) in current.items():
            if sockets.get(path) != pod:
                self._revoke(path, listener, pod)
        for path, pod in sockets.items():
            if path in current and current[path][1] == pod:
                continue
            try:
                listener = self._bind(path, 0o666)
            except OSError as error:
                _log.error("cannot bind pod socket %s of %s: %s", path, self.runtime.config.name, error)
                continue
            with self._lock:
                self._pod_sockets[path] = (listener, pod)
            self._thread(self._accept_loop, "attach-pod", listener, path)
            _log.info("attach socket of %s granted to pod %s at %s", self.runtime.config.name, pod, path)
        with self._lock:
            return {path: pod for path, (_listener, pod) in self._pod_sockets.items()}

    def _revoke(self, path: str, listener: socket.socket, pod: str) -> None:
        with self._lock:
            self._pod_sockets.pop(path, None)
            conns = [conn for conn, via in self._conns.items() if via == path]
            sessions = [s for s in self._sessions.values() if s.via == path]
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for session in sessions:
            self._end_session(session, f"grant to pod {pod} revoked")
        _log.info("attach socket of %s revoked from pod %s (%s)", self.runtime.config.name, pod, path)

    def stop(self, release_leases: bool) -> None:
        """Stop serving; the lease file is kept unless the instance is being finalized."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            pod_sockets, self._pod_sockets = self._pod_sockets, {}
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for path, (pod_listener, _pod) in pod_sockets.items():
            with contextlib.suppress(OSError):
                pod_listener.shutdown(socket.SHUT_RDWR)
            pod_listener.close()
            with contextlib.suppress(FileNotFoundError):
                Path(path).unlink()
        with contextlib.suppress(FileNotFoundError):
            Path(self.path).unlink()
        if release_leases and self.lease_file:
            with contextlib.suppress(FileNotFoundError):
                Path(self.lease_file).unlink()

    def session_count(self) -> int:
        """Sessions holding a lease."""
        with self._lock:
            return len(self._sessions)

    # -------------------------------------------------------------------------------- leases

    def _load_leases(self) -> None:
        if not self.lease_file:
            return
        try:
            data = json.loads(Path(self.lease_file).read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            _log.error("lease file %s is unreadable, ignoring it: %s", self.lease_file, error)
            return
        now = time.monotonic()
        for sid, entry in data.get("sessions", {}).items():
            lease = float(entry.get("lease_seconds", self.default_lease))
            if not math.isfinite(lease):
                lease = self.default_lease
            lease = min(max(lease, 1.0), self.max_lease)
            # The workload could not renew while we were down: it gets one full lease from now.
            self._sessions[sid] = Session(
                sid,
                lease,
                now + lease,
                {int(c) for c in entry.get("cache_ids", [])},
                pod=str(entry.get("pod", "")),
                via=str(entry.get("via", "")),
            )
        if self._sessions:
            _log.info("restored %d attach sessions of %s", len(self._sessions), self.runtime.config.name)

    def _save_leases(self) -> None:
        if not self.lease_file:
            return
        with self._save_lock:  # a later snapshot is never overwritten by an earlier one
            with self._lock:
                data = {
                    "version": 1,
                    "sessions": {
                        s.session_id: {
                            "lease_seconds": s.lease_seconds,
                            "cache_ids": sorted(s.cache_ids),
                            "pod": s.pod,
                            "via": s.via,
                        }
                        for s in self._sessions.values()
                    },
                }
            state.atomic_write(Path(self.lease_file), json.dumps(data).encode())

    def _reap_loop(self) -> None:
        while not self._stopping.wait(min(1.0, self.default_lease / 4)):
            now = time.monotonic()
            with self._lock:
                expired = [s for s in self._sessions.values() if s.expires_at < now]
            for session in expired:
                self._end_session(session, "lease expired")

    def _end_session(self, session: Session, why: str) -> None:
        with self._lock:
            if self._sessions.pop(session.session_id, None) is None:
                return
        freed = 0
        for cache_id in sorted(session.cache_ids):
            try:
                self.runtime.release(cache_id)
                freed += 1
            except EngineError as error:
                _log.warning("freeing cache %d of session %s failed: %s", cache_id, session.session_id, error)
        _log.info(
            "attach session %s of %s ended (%s): freed %d caches",
            session.session_id,
            self.runtime.config.name,
            why,
            freed,
        )
        self._save_leases()

    # ----------------------------------------------------------------------------- serving

    def _accept_loop(self, listener: socket.socket, via: str) -> None:
        """Accept on the host socket (``via`` "") or on the pod socket at path ``via``."""
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                pod = self._pod_sockets.get(via, (None, ""))[1] if via else ""
            if via and not pod:  # revoked between accept and here
                conn.close()
                continue
            thread = threading.Thread(
                target=self._serve,
                args=(conn, via, pod),
                daemon=True,
                name=f"attach-{self.runtime.config.name}",
            )
            thread.start()

    def _allowed(self, pid: int, uid: int) -> bool:
        if uid in self.allowed_uids:
            return True
        return bool(self.allowed_pods) and _pod_of(pid, self.allowed_pods) is not None

    def _serve(self, conn: socket.socket, via: str, pod: str) -> None:
        with conn:
            pid, uid, _gid = peer_credentials(conn)
            if not pod and not self._allowed(pid, uid):
                _log.warning("refused attach to %s from pid %d uid %d", self.runtime.config.name, pid, uid)
                with contextlib.suppress(OSError):
                    protocol.send(
                        conn,
                        {
                            "ok": False,
                            "error": {
                                "kind": ErrorKind.PERMISSION,
                                "llm_status": None,
                                "message": f"uid {uid} (pid {pid}) may not attach to instance "
                                f"{self.runtime.config.name} at its host socket; pods attach through "
                                "a CSI volume naming their CacheLink",
                            },
                        },
                    )
                return
            with self._lock:
                if via and via not in self._pod_sockets:
                    return  # revoked while this connection was being set up
                self._conns[conn] = via
            peer = Peer(pid, uid, pod, via)
            session: Session | None = None
            try:
                while not self._stopping.is_set():
                    try:
                        request = protocol.recv(conn)
                    except (EOFError, OSError, protocol.ProtocolError):
                        return
                    reply, session = self._handle(request, session, peer)
                    fds = self._pool_fds() if request.get("op") == "hello" and reply.get("ok") else []
                    try:
                        protocol.send(conn, reply, fds)
                    finally:
                        for fd in fds:
                            os.close(fd)
                    if request.get("op") == "close":
                        return
            except OSError:
                return
            finally:
                with self._lock:
                    self._conns.pop(conn, None)

    def _pool_fds(self) -> list[int]:
        """The pool files, opened read-write for the hello reply (in ``pools`` order)."""
        fds: list[int] = []
        try:
            for pool in ext.pool_files(self.runtime.datadist):
                fds.append(os.open(pool.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def _handle(
        self, request: dict[str, Any], session: Session | None, peer: Peer
    ) -> tuple[dict[str, Any], Session | None]:
        op = request.get("op")
        args = request.get("args") or {}
        try:
            if op == "hello":
                session = self._hello(args, peer)
                return {"ok": True, "result": self._hello_result(session)}, session
            if session is None:
                raise EngineError(ErrorKind.RUNTIME, "send hello first", "LLM_PARAM_INVALID")
            with self._lock:
                if session.session_id not in self._sessions:
                    raise EngineError(
                        ErrorKind.RUNTIME, f"lease of session {session.session_id} expired", "LLM_FAILED"
                    )
                session.expires_at = time.monotonic() + session.lease_seconds
            if op == "close":
                self._end_session(session, "closed by the workload")
                return {"ok": True, "result": {}}, None
            handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) and op.isidentifier() else None
            if handler is None:
                raise EngineError(ErrorKind.VALUE, f"unknown attach operation {op!r}", "LLM_PARAM_INVALID")
            return {"ok": True, "result": handler(session, args)}, session
        except EngineError as error:
            return {"ok": False, "error": error.to_wire()}, session
        except (KeyError, TypeError, ValueError, IndexError) as error:
            wire = EngineError(ErrorKind.VALUE, f"malformed {op} request: {error!r}", "LLM_PARAM_INVALID")
            return {"ok": False, "error": wire.to_wire()}, session

    def refuse_new_sessions(self, reason: str) -> None:
        """Refuse new sessions with ``reason`` ("" admits them again); resumed ones keep working."""
        self._refusing = reason

    def _hello(self, args: dict[str, Any], peer: Peer) -> Session:
        lease = float(args.get("lease_seconds") or self.default_lease)
        if not math.isfinite(lease):
            raise EngineError(
                ErrorKind.VALUE, f"lease_seconds must be a finite number of seconds, got {lease}"
            )
        lease = min(max(lease, 1.0), self.max_lease)
        resume = args.get("session_id")
        if not resume and self._refusing:
            raise EngineError(
                ErrorKind.PERMISSION, f"new attach sessions are refused: {self._refusing}", None
            )
        with self._lock:
            if resume:
                session = self._sessions.get(str(resume))
                if session is None:
                    raise EngineError(
                        ErrorKind.RUNTIME, f"session {resume} is unknown or its lease expired", "LLM_FAILED"
                    )
                if session.pod != peer.pod:
                    raise EngineError(
                        ErrorKind.PERMISSION, f"session {resume} belongs to another attach socket", None
                    )
            else:
                session = Session(secrets.token_hex(8), lease, 0.0, pod=peer.pod)
                self._sessions[session.session_id] = session
            session.lease_seconds, session.pid, session.uid = lease, peer.pid, peer.uid
            session.via = peer.via
            session.expires_at = time.monotonic() + lease
        self._save_leases()
        return session

    def _hello_result(self, session: Session) -> dict[str, Any]:
        config = self.runtime.config
        datadist = self.runtime.datadist
        return {
            "session_id": session.session_id,
            "lease_seconds": session.lease_seconds,
            "instance": config.name,
            "cluster_id": config.cluster_id,
            "role": config.role,
            "incarnation": ext.incarnation(datadist),
            "pools": [
                {"placement": p.placement.name, "path": p.path, "size": p.size}
                for p in ext.pool_files(datadist)
            ],
        }

    # ---------------------------------------------------------------------------- operations

    def _describe(self, cache: Cache, keys: list[Any] | None = None) -> dict[str, Any]:
        layout = ext.cache_layout(self.runtime.datadist, cache)
        return {
            "cache_id": cache.cache_id,
            "desc": describe(cache.cache_desc),
            "is_blocks_cache": cache.is_blocks_cache,
            "pool_path": layout.pool_path,
            "offsets": list(layout.offsets),
            "tensor_bytes": layout.tensor_bytes,
            "keys": [encode_key(k) for k in keys or []],
        }

    def _own(self, session: Session, cache: Cache) -> None:
        self.runtime.remember(cache)
        with self._lock:
            session.cache_ids.add(cache.cache_id)
        self._save_leases()

    def _disown(self, cache_id: int) -> None:
        self.runtime.forget(cache_id)
        with self._lock:
            for other in self._sessions.values():
                other.cache_ids.discard(cache_id)
        self._save_leases()

    def _op_renew(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        return {"lease_seconds": session.lease_seconds}

    def _op_list_caches(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        found = self.runtime.all_caches()
        for cache, _keys in found:
            self.runtime.remember(cache)
        return {"caches": [self._describe(c, k) for c, k in found if c.placement_pool is not None]}

    def _op_allocate_cache(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        desc = ext.desc_from_meta(args["desc"])
        keys = [decode_key(k) for k in args.get("keys", [])]
        manager = self.runtime.datadist.cache_manager
        cache = self.runtime.run(manager.allocate_cache, desc, keys)
        self._own(session, cache)
        return self._describe(cache)

    def _op_allocate_blocks_cache(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        desc = ext.desc_from_meta(args["desc"])
        key = decode_key(args["key"]) if args.get("key") else None
        manager = self.runtime.datadist.cache_manager
        cache = self.runtime.run(manager.allocate_blocks_cache, desc, key)
        self._own(session, cache)
        return self._describe(cache)

    def _op_deallocate_cache(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        cache = self.runtime.cache(int(args["cache_id"]))
        manager = self.runtime.datadist.cache_manager
        func = manager.deallocate_blocks_cache if args.get("blocks") else manager.deallocate_cache
        self.runtime.run(func, cache)
        self._disown(cache.cache_id)
        return {}

    def _op_remove_cache_key(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        self.runtime.run(self.runtime.datadist.cache_manager.remove_cache_key, decode_key(args["key"]))
        return {}

    def _transfer_kwargs(self, args: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for name in ("src_layer_range", "dst_layer_range"):
            if args.get(name) is not None:
                kwargs[name] = _range(args[name])
        if "tensor_num_per_layer" in args:
            kwargs["tensor_num_per_layer"] = args["tensor_num_per_layer"]
        return kwargs

    def _op_pull_cache(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        cache, key = self.runtime.cache(int(args["cache_id"])), decode_key(args["key"])
        self.runtime.run(
            self.runtime.datadist.cache_manager.pull_cache,
            key,
            cache,
            args.get("batch_index", 0),
            args.get("size", -1),
            direction="pull",
            peer=key.cluster_id,
            **self._transfer_kwargs(args),
        )
        return {}

    def _op_pull_blocks(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        cache, key = self.runtime.cache(int(args["cache_id"])), decode_key(args["key"])
        self.runtime.run(
            self.runtime.datadist.cache_manager.pull_blocks,
            key,
            cache,
            list(args.get("src_blocks", [])),
            list(args.get("dst_blocks", [])),
            direction="pull",
            peer=key.cluster_id,
            **self._transfer_kwargs(args),
        )
        return {}

    def _op_push_cache(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        cache, key = self.runtime.cache(int(args["cache_id"])), decode_key(args["key"])
        self.runtime.run(
            self.runtime.datadist.cache_manager.push_cache,
            key,
            cache,
            args.get("src_batch_index", 0),
            _range(args.get("src_layer_range")),
            _range(args.get("dst_layer_range")),
            args.get("size", -1),
            args.get("tensor_num_per_layer", 2),
            direction="push",
            peer=key.cluster_id,
        )
        return {}

    def _op_push_blocks(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        cache, key = self.runtime.cache(int(args["cache_id"])), decode_key(args["key"])
        self.runtime.run(
            self.runtime.datadist.cache_manager.push_blocks,
            key,
            cache,
            list(args.get("src_blocks", [])),
            list(args.get("dst_blocks", [])),
            _range(args.get("src_layer_range")),
            _range(args.get("dst_layer_range")),
            args.get("tensor_num_per_layer", 2),
            direction="push",
            peer=key.cluster_id,
        )
        return {}

    def _op_copy_cache(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        dst, src = self.runtime.cache(int(args["dst"])), self.runtime.cache(int(args["src"]))
        self.runtime.run(
            self.runtime.datadist.cache_manager.copy_cache,
            dst,
            src,
            args.get("dst_batch_index", 0),
            args.get("src_batch_index", 0),
            args.get("offset", 0),
            args.get("size", -1),
        )
        return {}

    def _op_copy_blocks(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        cache = self.runtime.cache(int(args["cache_id"]))
        info = {int(k): [int(b) for b in v] for k, v in dict(args["copy_block_info"]).items()}
        self.runtime.run(self.runtime.datadist.cache_manager.copy_blocks, cache, info)
        return {}
