"""The wire shared by the worker RPC and the attach socket (both of their ends).

Framing: a 4-byte big-endian length, then JSON; both ends bound what they read (``MAX_FRAME``), so a peer
cannot make the other allocate without limit. A frame may carry file descriptors (``SCM_RIGHTS``, sent
with its first byte: the attach socket hands pools over that way). Also the wire forms of cache keys and
of errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Any

from llm_datadist.status import CacheLinkError, LLMException
from llm_datadist.v2.llm_types import BlocksCacheKey, CacheKey, CacheKeyByIdAndIndex

MAX_FRAME = 8 << 20
#: longest Unix socket path that fits ``sockaddr_un`` (108 bytes with the terminating NUL)
MAX_UNIX_PATH = 107
_HEADER = struct.Struct(">I")


class ProtocolError(CacheLinkError, ConnectionError):
    """The peer sent something that is not a frame of this protocol (or closed mid-frame)."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame holding ``message``."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(body)) + body


def _decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as error:
        raise ProtocolError(f"frame is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            if chunks:
                raise ProtocolError("peer closed the connection mid-frame")
            raise EOFError("peer closed the connection")
        chunks += chunk
    return bytes(chunks)


@contextlib.contextmanager
def unix_address(path: str) -> Iterator[str]:
    """``path``, or while it is too long for ``sockaddr_un``, a short alias through its open folder.

    Kubelet target paths (and test folders) easily pass 107 bytes; ``/proc/self/fd/N/name`` names the same
    socket and fits.
    """
    if len(os.fsencode(path)) <= MAX_UNIX_PATH:
        yield path
        return
    folder, name = os.path.split(path)
    dir_fd = os.open(folder or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dir_fd}/{name}"
    finally:
        os.close(dir_fd)


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one frame on a blocking socket, with ``fds`` attached to its first byte."""
    frame = encode(message)
    if fds:
        sent = socket.send_fds(sock, [frame], list(fds))
        frame = frame[sent:]
    sock.sendall(frame)


def recv(sock: socket.socket) -> dict[str, Any]:
    """Receive one frame from a blocking socket (EOFError on a clean close)."""
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    return _decode(_recv_exactly(sock, size))


def recv_with_fds(sock: socket.socket, max_fds: int) -> tuple[dict[str, Any], list[int]]:
    """Receive one frame and the file descriptors sent with it (close-on-exec); the caller owns them."""
    header, fds, flags, _addr = socket.recv_fds(sock, _HEADER.size, max_fds, socket.MSG_CMSG_CLOEXEC)
    try:
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError(f"peer sent more than {max_fds} file descriptors")
        if not header:
            raise EOFError("peer closed the connection")
        header += _recv_exactly(sock, _HEADER.size - len(header)) if len(header) < _HEADER.size else b""
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
        return _decode(_recv_exactly(sock, size)), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


async def read(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Receive one frame from an asyncio stream (EOFError on a clean close)."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise ProtocolError("peer closed the connection mid-frame") from None
        raise EOFError("peer closed the connection") from None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        return _decode(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        raise ProtocolError("peer closed the connection mid-frame") from None


class ErrorKind(StrEnum):
    """Which Python exception an engine failure is raised as on the other end (wire values are stable)."""

    LLM = "LLMException"
    TYPE = "TypeError"
    VALUE = "ValueError"
    PERMISSION = "PermissionError"
    OS = "OSError"
    RUNTIME = "RuntimeError"

    @classmethod
    def of(cls, error: BaseException) -> ErrorKind:
        """The kind ``error`` travels as."""
        for kind, types in _KIND_TYPES:
            if isinstance(error, types):
                return kind
        return cls.RUNTIME

    @classmethod
    def parse(cls, value: object) -> ErrorKind:
        """The kind named on the wire (an unknown name is ``RUNTIME``)."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.RUNTIME


_KIND_TYPES: tuple[tuple[ErrorKind, type[BaseException] | tuple[type[BaseException], ...]], ...] = (
    (ErrorKind.LLM, LLMException),
    (ErrorKind.PERMISSION, PermissionError),
    (ErrorKind.TYPE, TypeError),
    (ErrorKind.VALUE, ValueError),
    (ErrorKind.OS, OSError),
)


def encode_key(key: CacheKey | CacheKeyByIdAndIndex | BlocksCacheKey) -> dict[str, Any]:
    """Wire form of a cache key."""
    if isinstance(key, CacheKey):
        return {
            "type": "CacheKey",
            "cluster_id": key.cluster_id,
            "req_id": key.req_id,
            "model_id": key.model_id,
            "prefix_id": key.prefix_id,
        }
    if isinstance(key, CacheKeyByIdAndIndex):
        return {
            "type": "CacheKeyByIdAndIndex",
            "cluster_id": key.cluster_id,
            "cache_id": key.cache_id,
            "batch_index": key.batch_index,
        }
    return {"type": "BlocksCacheKey", "cluster_id": key.cluster_id, "model_id": key.model_id}


def decode_key(data: dict[str, Any]) -> CacheKey | CacheKeyByIdAndIndex | BlocksCacheKey:
    """Inverse of ``encode_key``."""
    kind = data.get("type")
    if kind == "CacheKey":
        if data["prefix_id"] != CacheKey.INVALID_ID and data["req_id"] == CacheKey.INVALID_ID:
            return CacheKey(
                data["cluster_id"],
                req_id=CacheKey.INVALID_ID,
                model_id=data["model_id"],
                prefix_id=data["prefix_id"],
            )
        return CacheKey(
            data["cluster_id"], req_id=data["req_id"], model_id=data["model_id"], prefix_id=data["prefix_id"]
        )
    if kind == "CacheKeyByIdAndIndex":
        return CacheKeyByIdAndIndex(data["cluster_id"], data["cache_id"], data["batch_index"])
    if kind == "BlocksCacheKey":
        return BlocksCacheKey(data["cluster_id"], data["model_id"])
    raise TypeError(f"unknown cache key type {kind!r}")
