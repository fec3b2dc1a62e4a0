"""Where an instance runs: a supervised worker process (default) or inside the agent (``--in-process``).

Both backends expose the same small interface (``Backend``), so the instance manager does not care
which one it drives. A worker's death is noticed through its socket closing; the manager restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import sys
from typing import Any, Protocol

from cachelink_agent import protocol, worker
from cachelink_agent.attach_server import AttachServer
from cachelink_agent.errors import EngineError
from cachelink_agent.runtime import InstanceRuntime, RuntimeConfig
from llm_datadist.status import CacheLinkError

_log = logging.getLogger("cachelink_agent.supervisor")


class WorkerGone(CacheLinkError):
    """The instance's worker process exited (it will be restarted)."""


class Backend(Protocol):
    """What the instance manager needs from a running instance."""

    pid: int

    async def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        """Run one runtime operation; raises ``EngineError`` or ``WorkerGone``."""

    async def stop(self, finalize: bool, timeout: float) -> None:
        """Stop serving; finalize the instance (free its pools) only when asked."""

    async def wait_exit(self) -> None:
        """Return when the instance's process is gone (never, for the in-process host)."""


class InProcessBackend:
    """Runs the instance in the agent (``HostedDataDist``), its calls on threads."""

    def __init__(self, runtime: InstanceRuntime, pid: int) -> None:
        self.runtime = runtime
        self.pid = pid
        self._stopped = asyncio.Event()

    @classmethod
    async def start(cls, config: RuntimeConfig, timeout: float) -> tuple[InProcessBackend, dict[str, Any]]:
        """Init the instance in this process."""
        runtime = InstanceRuntime(dataclasses.replace(config, in_process=True), AttachServer)
        result = await asyncio.wait_for(asyncio.to_thread(runtime.start), timeout)
        return cls(runtime, int(result["pid"])), result

    async def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        """Run ``op`` on a thread."""
        return await asyncio.wait_for(asyncio.to_thread(worker.dispatch, self.runtime, op, args), timeout)

    async def stop(self, finalize: bool, timeout: float) -> None:
        """Close the attach socket and, when asked, finalize."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self.runtime.stop, finalize), timeout)
        finally:
            self._stopped.set()

    async def wait_exit(self) -> None:
        """Never returns while the agent runs (a crash of the instance is a crash of the agent)."""
        await self._stopped.wait()


class WorkerBackend:
    """A worker process and the socket to it; requests are multiplexed by id."""

    def __init__(
        self, process: asyncio.subprocess.Process, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.process = process
        self.pid = process.pid
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._gone = asyncio.Event()
        self._read_task = asyncio.create_task(self._read_loop(), name=f"worker-{process.pid}")

    @classmethod
    async def start(
        cls, config: RuntimeConfig, timeout: float, log_format: str = "text", log_level: str = "INFO"
    ) -> tuple[WorkerBackend, dict[str, Any]]:
        """Spawn a worker and init the instance in it."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-m",
                "cachelink_agent.worker",
                "--fd",
                str(child.fileno()),
                "--parent-pid",
                str(os.getpid()),
                "--log-format",
                log_format,
                "--log-level",
                log_level,
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=protocol.MAX_FRAME + 64)
        backend = cls(process, reader, writer)
        try:
            result = await backend.call("start", dataclasses.asdict(config), timeout)
        except BaseException:
            await backend.kill()
            raise
        return backend, result

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await protocol.read(self._reader)
                future = self._pending.pop(message.get("id", -1), None)
                if future is None or future.done():
                    continue
                if message.get("ok"):
                    future.set_result(message.get("result"))
                else:
                    future.set_exception(EngineError.from_wire(message.get("error") or {}))
        except (EOFError, OSError, protocol.ProtocolError) as error:
            _log.debug("worker %d connection closed: %s", self.pid, error)
        finally:
            self._gone.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(WorkerGone(f"worker {self.pid} exited"))
            self._pending.clear()
            with contextlib.suppress(Exception):
                self._writer.close()

    async def call(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        """Send one request and wait for its answer."""
        if self._gone.is_set():
            raise WorkerGone(f"worker {self.pid} exited")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(protocol.encode({"id": request_id, "op": op, "args": args}))
            await self._writer.drain()
        except (OSError, RuntimeError) as error:
            self._pending.pop(request_id, None)
            raise WorkerGone(f"worker {self.pid} is unreachable: {error}") from error
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    async def stop(self, finalize: bool, timeout: float) -> None:
        """Ask the worker to stop (finalizing or not), then make sure it is gone."""
        with contextlib.suppress(WorkerGone, EngineError, TimeoutError):
            await self.call("stop", {"finalize": finalize}, timeout)
        await self.kill(grace=timeout)

    async def kill(self, grace: float = 2.0) -> None:
        """Terminate the process (SIGTERM never finalizes), then SIGKILL after ``grace``."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        await self._gone.wait()
        await self._read_task

    async def wait_exit(self) -> None:
        """Return when the worker has exited."""
        await self._gone.wait()
        await self.process.wait()
