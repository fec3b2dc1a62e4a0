"""Framing shared by the worker RPC and the attach socket: a 4-byte big-endian length, then JSON.

Both ends bound what they read (``MAX_FRAME``), so a peer cannot make the other allocate without limit.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

MAX_FRAME = 8 << 20
_HEADER = struct.Struct(">I")


class ProtocolError(ConnectionError):
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


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one frame on a blocking socket."""
    sock.sendall(encode(message))


def recv(sock: socket.socket) -> dict[str, Any]:
    """Receive one frame from a blocking socket (EOFError on a clean close)."""
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit")
    return _decode(_recv_exactly(sock, size))


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
