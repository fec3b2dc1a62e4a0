"""Worker process: runs one instance (``python -m cachelink_agent.worker --fd N``).

The agent spawns one per instance (LLM-DataDist allows one live instance per process, and a crash
must not take the neighbours down). Requests come over an inherited Unix socket as frames of
``{"id", "op", "args"}``; each runs on a thread so a slow link does not block status reads. The worker
dies with the agent (``PR_SET_PDEATHSIG``) and never finalizes unless told to: its pool outlives it and
the next worker adopts it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cachelink_agent import logs, protocol
from cachelink_agent.attach_server import AttachServer
from cachelink_agent.errors import EngineError
from cachelink_agent.protocol import ErrorKind
from cachelink_agent.runtime import InstanceRuntime, RuntimeConfig

_log = logging.getLogger("cachelink_agent.worker")
_PR_SET_PDEATHSIG = 1

#: operations a runtime answers (shared with the in-process host)
OPERATIONS = (
    "link",
    "unlink",
    "comm_link",
    "comm_unlink",
    "comm_status",
    "status",
    "set_quarantine",
    "set_pod_sockets",
)


def dispatch(runtime: InstanceRuntime, op: str, args: dict[str, Any]) -> Any:
    """Run one operation on a runtime (worker and in-process host alike)."""
    if op not in OPERATIONS:
        raise EngineError(ErrorKind.VALUE, f"unknown operation {op!r}", "LLM_PARAM_INVALID")
    if op == "comm_link":
        args = dict(args, cluster_rank_info={int(k): int(v) for k, v in args["cluster_rank_info"].items()})
    return getattr(runtime, op)(**args)


def _die_with_parent(parent_pid: int | None) -> None:
    """Get SIGKILL when the agent dies; exit now if it already died before that took effect.

    The agent passes its own pid: comparing ``getppid()`` with 1 would be wrong where the agent *is*
    PID 1 (a container), and a reparented worker (to init or a subreaper) has a parent that differs from
    the one recorded. The inherited socket's EOF is the second signal (``_Server.serve``).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.runtime: InstanceRuntime | None = None
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="worker-op")

    def reply(self, request_id: Any, ok: bool, payload: Any) -> None:
        message = {"id": request_id, "ok": ok, "result" if ok else "error": payload}
        with self.send_lock, contextlib.suppress(OSError):
            protocol.send(self.sock, message)

    def run_op(self, request: dict[str, Any]) -> None:
        request_id, op, args = request.get("id"), str(request.get("op")), request.get("args") or {}
        try:
            if op == "start":
                self.runtime = InstanceRuntime(RuntimeConfig(**args), AttachServer)
                result: Any = self.runtime.start()
            elif self.runtime is None:
                raise EngineError(ErrorKind.RUNTIME, "worker not started", "LLM_FAILED")
            elif op == "stop":
                self.runtime.stop(finalize=bool(args.get("finalize")))
                self.reply(request_id, True, {})
                os._exit(0)
            else:
                result = dispatch(self.runtime, op, args)
        except EngineError as error:
            self.reply(request_id, False, error.to_wire())
            return
        except (KeyError, TypeError, ValueError) as error:
            self.reply(
                request_id, False, EngineError(ErrorKind.VALUE, repr(error), "LLM_PARAM_INVALID").to_wire()
            )
            return
        self.reply(request_id, True, result)

    def serve(self) -> None:
        while True:
            try:
                request = protocol.recv(self.sock)
            except (EOFError, OSError, protocol.ProtocolError):
                # The agent is gone or stopping: exit without finalizing, the pool stays for adoption.
                os._exit(0)
            if request.get("op") in ("start", "stop"):
                self.run_op(request)  # in order: nothing else runs before start finishes
            else:
                self.pool.submit(self.run_op, request)


def main(argv: list[str] | None = None) -> None:
    """Entry point of a worker process."""
    parser = argparse.ArgumentParser(prog="cachelink-agent-worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited Unix socket to the agent")
    parser.add_argument("--parent-pid", type=int, help="the agent's pid (the worker exits when it changes)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # never finalize on SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides; a terminal ^C reaches us too
    logs.setup(args.log_format, args.log_level)
    sock = socket.socket(fileno=args.fd)
    _Server(sock).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
