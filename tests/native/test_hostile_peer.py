"""A hostile or broken peer: malformed frames close that connection only; the instance keeps serving."""

from __future__ import annotations

import contextlib
import random
import socket
import struct

import numpy as np
import pytest
from native_harness import init_code

import llm_datadist as ld

MAGIC, VERSION, PROTOCOL = 0x4B4E4C43, 1, 2
HELLO, READ, WRITE, RESOLVE, RELEASE, AUTH = 1, 3, 5, 7, 9, 11


def frame(
    kind: int, payload: bytes, *, magic: int = MAGIC, version: int = VERSION, length: int | None = None
) -> bytes:
    return struct.pack("<IHHQ", magic, version, kind, len(payload) if length is None else length) + payload


def text(value: str) -> bytes:
    return struct.pack("<I", len(value)) + value.encode()


def hello(cluster_id: int, expected: int, protocol: int = PROTOCOL) -> bytes:
    """HELLO in protocol 2 (role, host and incarnation go empty: they follow AUTH)."""
    body = struct.pack("<IQ", protocol, cluster_id) + text("") + text("") + struct.pack("<QQ", 0, expected)
    return frame(HELLO, body + b"\x00" + text(""))


def auth() -> bytes:
    """AUTH of a link without a secret (in clear): role, host id, incarnation."""
    return frame(AUTH, text("Decoder") + text("elsewhere") + struct.pack("<Q", 7))


def recv_frame(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 16:
        head += sock.recv(16 - len(head))
    _, _, kind, length = struct.unpack("<IHHQ", head)
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return kind, body


def handshake(sock: socket.socket) -> None:
    """A full handshake without a secret: HELLO, HELLO_ACK, AUTH, SESSION."""
    sock.sendall(hello(99, 1))
    recv_frame(sock)
    sock.sendall(auth())
    recv_frame(sock)


def closed_or_answered(sock: socket.socket) -> bool:
    """True once the engine closed the connection (it may answer first, then close)."""
    sock.settimeout(5)
    try:
        while data := sock.recv(65536):
            del data
        return True
    except (ConnectionResetError, TimeoutError):
        return False


@pytest.fixture
def server(peer_factory):
    peer = peer_factory()
    address = peer.run(init_code("PROMPT", 1, listen="127.0.0.1:0"))
    peer.run(
        "c = cm.allocate_blocks_cache(CacheDesc(1, [4, 64], DataType.DT_UINT8), BlocksCacheKey(1, 0))\n"
        "c.numpy(0)[:] = 9"
    )
    host, port = address.split(":")
    peer.endpoint = (host, int(port))
    return peer


CASES = {
    "not a cachelink peer": frame(READ, b"", magic=0xDEADBEEF),
    "future wire version": frame(READ, b"", version=9),
    "unknown frame type": frame(77, b""),
    "oversized payload announced": frame(READ, b"", length=1 << 40),
    "truncated request": frame(READ, b"\x03\x01"),
    "write announcing 1 TiB into nothing": frame(WRITE, b"\x03" + bytes(100), length=101),
    "release of an unknown transfer": frame(RELEASE, struct.pack("<QB", 12345, 1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_frame_closes_only_that_connection(server, case):
    with socket.create_connection(server.endpoint, timeout=5) as sock:
        handshake(sock)
        sock.sendall(CASES[case])
        assert closed_or_answered(sock), f"{case}: the engine must drop the connection"
    # the instance still serves an honest peer
    assert server.run("result = int(c.numpy(0).sum())") == 9 * 4 * 64
    with socket.create_connection(server.endpoint, timeout=5) as sock:  # and still accepts handshakes
        sock.sendall(hello(99, 1))
        answer = sock.recv(4096)
        assert struct.unpack_from("<IHH", answer)[0] == MAGIC


def test_random_garbage_never_crashes_the_instance(server, local_dd):
    rng = random.Random(1234)
    for _ in range(60):
        with socket.create_connection(server.endpoint, timeout=5) as sock:
            if rng.random() < 0.5:
                handshake(sock)
            kind = rng.choice([HELLO, READ, WRITE, RESOLVE, RELEASE, rng.randrange(0, 65536)])
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
            with contextlib.suppress(OSError):  # the engine may have dropped it already
                sock.sendall(frame(kind, body))
                sock.shutdown(socket.SHUT_WR)
            closed_or_answered(sock)
    # after all that, a real decode still links and pulls the exact bytes
    dd = local_dd(ld.LLMRole.DECODER, 2)
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info(*server.endpoint)
    assert dd.link_clusters([info])[0] == ld.LLMStatusCode.LLM_SUCCESS
    dst = dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [4, 64], ld.DataType.DT_UINT8))
    dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, [0, 1, 2, 3], [3, 2, 1, 0])
    assert np.all(dst.numpy(0) == 9)
    assert server.proc.poll() is None, "the instance survived"
