"""Beyond LLM-DataDist: end-to-end checksums and peer incarnations, each with a test that fails without it."""

from __future__ import annotations

import contextlib
import socket
import threading

import numpy as np
import pytest
from native_harness import init_code

import llm_datadist as ld
from llm_datadist.ext import hosting as ext

Code = ld.LLMStatusCode


class CorruptingProxy:
    """A loopback TCP proxy that flips one byte of the server-to-client stream at ``flip_at``.

    ``close`` ends every thread and closes every socket it made (left to the threads, the sockets
    were freed unclosed at some later point, warning in whichever test ran then).
    """

    def __init__(self, target: tuple[str, int], flip_at: int) -> None:
        self.target = target
        self.flip_at = flip_at
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(client)
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                continue
            self.conns.append(upstream)
            for src, dst, flip in ((client, upstream, None), (upstream, client, self.flip_at)):
                thread = threading.Thread(target=self._pump, args=(src, dst, flip), daemon=True)
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, flip_at: int | None) -> None:
        seen = 0
        try:
            while data := src.recv(1 << 16):
                if flip_at is not None and seen <= flip_at < seen + len(data):
                    data = bytearray(data)
                    data[flip_at - seen] ^= 0xFF
                    data = bytes(data)
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress
        self.server.close()
        self.accepting.join(timeout=10)
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(timeout=10)
        for conn in self.conns:
            conn.close()


def link_via(dd: ld.LLMDataDist, remote_id: int, port: int) -> None:
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = remote_id
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", port)
    assert dd.link_clusters([info], timeout=3000)[0] == Code.LLM_SUCCESS


@pytest.mark.parametrize("checksum", [True, False])
def test_corrupted_byte_on_the_wire_is_caught(peer_factory, local_dd, checksum):
    prompt = peer_factory()
    address = prompt.run(init_code("PROMPT", 1, listen="127.0.0.1:0", extra={"cachelink.force_tcp": "1"}))
    prompt.run("""
        src = cm.allocate_blocks_cache(CacheDesc(1, [8, 4096], DataType.DT_UINT8), BlocksCacheKey(1, 0))
        src.numpy(0)[:] = 42
    """)
    proxy = CorruptingProxy(("127.0.0.1", int(address.split(":")[1])), flip_at=20000)
    try:
        extra = {"cachelink.force_tcp": "1", "cachelink.checksum": "1" if checksum else "0"}
        dd = local_dd(ld.LLMRole.DECODER, 2, extra=extra)
        link_via(dd, 1, proxy.port)
        dst = dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [8, 4096], ld.DataType.DT_UINT8))
        if checksum:
            with pytest.raises(ld.LLMException) as err:
                dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, list(range(8)), list(range(8)))
            assert err.value.status_code == Code.LLM_FAILED
            assert "checksum mismatch" in str(err.value)
        else:  # without the option the corruption goes unnoticed: this is what the checksum prevents
            dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, list(range(8)), list(range(8)))
            assert (dst.numpy(0) != 42).sum() == 1
    finally:
        proxy.close()


@pytest.mark.parametrize("path", ["shm", "tcp"])
def test_checksummed_transfers_pass_when_intact(peer_factory, local_dd, path):
    extra = {"cachelink.checksum": "1", **({"cachelink.force_tcp": "1"} if path == "tcp" else {})}
    prompt = peer_factory()
    address = prompt.run(init_code("PROMPT", 1, listen="127.0.0.1:0", extra=extra, remote_accessible=True))
    prompt.run("""
        src = cm.allocate_blocks_cache(CacheDesc(2, [64, 65536], DataType.DT_UINT8), BlocksCacheKey(1, 0))
        for t in range(2): src.numpy(t)[:] = np.random.default_rng(t).integers(0, 256, (64, 65536), dtype=np.uint8)
    """)
    dd = local_dd(ld.LLMRole.DECODER, 2, extra=extra, remote_accessible=True)
    link_via(dd, 1, int(address.split(":")[1]))
    assert ext.links(dd)[0].data_path == path
    cm = dd.cache_manager
    dst = cm.allocate_blocks_cache(ld.CacheDesc(2, [64, 65536], ld.DataType.DT_UINT8))
    order = np.random.default_rng(5).permutation(64).tolist()
    cm.pull_blocks(ld.BlocksCacheKey(1, 0), dst, order, list(range(64)))  # 8 MiB: striped over TCP
    for t in range(2):
        expected = np.random.default_rng(t).integers(0, 256, (64, 65536), dtype=np.uint8)
        assert np.array_equal(dst.numpy(t), expected[order])
    cm.push_blocks(ld.BlocksCacheKey(1, 0), dst, [0, 1], [63, 62])
    back = prompt.run("result = [bytes(src.numpy(t)[[63, 62]]).hex()[:64] for t in range(2)]")
    assert back == [bytes(dst.numpy(t)[[0, 1]]).hex()[:64] for t in range(2)]


@pytest.mark.parametrize("path", ["shm", "tcp"])
def test_restarted_peer_is_refused_until_relinked(peer_factory, local_dd, path):
    extra = {"cachelink.force_tcp": "1"} if path == "tcp" else {}
    first = peer_factory()
    address = first.run(init_code("PROMPT", 1, listen="127.0.0.1:0", extra=extra))
    first.run(
        "c = cm.allocate_blocks_cache(CacheDesc(1, [2, 64], DataType.DT_UINT8), BlocksCacheKey(1, 0))\n"
        "c.numpy(0)[:] = 1"
    )
    dd = local_dd(ld.LLMRole.DECODER, 2, extra=extra)
    port = int(address.split(":")[1])
    link_via(dd, 1, port)
    old = ext.links(dd)[0].peer_incarnation
    dst = dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [2, 64], ld.DataType.DT_UINT8))
    dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, [0], [0])
    first.kill()
    second = peer_factory()
    second.run(init_code("PROMPT", 1, listen=f"127.0.0.1:{port}", extra=extra))
    second.run(
        "c = cm.allocate_blocks_cache(CacheDesc(1, [2, 64], DataType.DT_UINT8), BlocksCacheKey(1, 0))\n"
        "c.numpy(0)[:] = 2"
    )
    with pytest.raises(ld.LLMException) as err:
        dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, [0], [1])
    assert err.value.status_code == Code.LLM_NOT_YET_LINK
    assert not dst.numpy(0)[1].any(), "no bytes from the restarted peer before a re-link"
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 1
    dd.unlink_clusters([info])
    link_via(dd, 1, port)
    assert ext.links(dd)[0].peer_incarnation != old
    dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, [0], [1])
    assert (dst.numpy(0)[1] == 2).all()


@pytest.mark.parametrize(
    ("server_secret", "client_secret", "linked"),
    [
        ("s3cret", "s3cret", True),
        ("s3cret", None, False),
        ("s3cret", "wrong", False),
        (None, "s3cret", False),
    ],
)
def test_authenticated_links(peer_factory, local_dd, server_secret, client_secret, linked):
    server_extra = {"cachelink.link_secret": server_secret} if server_secret else {}
    prompt = peer_factory()
    address = prompt.run(init_code("PROMPT", 1, listen="127.0.0.1:0", extra=server_extra))
    prompt.run(
        "c = cm.allocate_blocks_cache(CacheDesc(1, [2, 64], DataType.DT_UINT8), BlocksCacheKey(1, 0))\n"
        "c.numpy(0)[:] = 3"
    )
    client_extra = {"cachelink.link_secret": client_secret} if client_secret else {}
    dd = local_dd(ld.LLMRole.DECODER, 2, extra=client_extra)
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", int(address.split(":")[1]))
    status, per_cluster = dd.link_clusters([info], timeout=2000)
    if linked:
        assert status == Code.LLM_SUCCESS
        dst = dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [2, 64], ld.DataType.DT_UINT8))
        dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, [1], [0])
        assert (dst.numpy(0)[0] == 3).all()
    else:
        assert per_cluster == [Code.LLM_LINK_FAILED]
        assert ext.links(dd) == []
    failures = ext.counters(dd)["auth_failures"] + prompt.run("result = ext.counters(dd)['auth_failures']")
    assert (failures == 0) == linked


def test_unauthenticated_requests_are_refused_by_the_listener(peer_factory):
    """A raw client that skips the handshake gets its connection closed, and nothing is served."""
    prompt = peer_factory()
    address = prompt.run(init_code("PROMPT", 1, listen="127.0.0.1:0", extra={"cachelink.link_secret": "k"}))
    import struct

    with socket.create_connection(("127.0.0.1", int(address.split(":")[1])), timeout=5) as raw:
        payload = bytes(64)
        raw.sendall(struct.pack("<IHHQ", 0x4B4E4C43, 1, 3, len(payload)) + payload)  # a READ, no HELLO
        assert raw.recv(16) == b"", "the listener closes the connection"


def test_expired_key_lease_frees_prompt_cache(peer_factory, local_dd):
    prompt = peer_factory()
    address = prompt.run(
        init_code("PROMPT", 1, listen="127.0.0.1:0", extra={"cachelink.key_lease_ms": "300"})
    )
    used_before = prompt.run("""
        kv = cm.allocate_cache(CacheDesc(1, [2, 65536], DataType.DT_UINT8), [CacheKey(1, req_id=1), CacheKey(1, req_id=2)])
        cm.deallocate_cache(kv)   # the usual prompt pattern: only the keys keep the memory
        result = ext.pool_files(dd)[0].used
    """)
    assert used_before > 0
    dd = local_dd(ld.LLMRole.DECODER, 2)
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", int(address.split(":")[1]))
    assert dd.link_clusters([info])[0] == Code.LLM_SUCCESS
    dst = dd.cache_manager.allocate_cache(ld.CacheDesc(1, [2, 65536], ld.DataType.DT_UINT8))
    dd.cache_manager.pull_cache(ld.CacheKey(1, req_id=1), dst)  # pulled in time: fine
    import time

    time.sleep(0.6)
    with pytest.raises(ld.LLMException) as err:
        dd.cache_manager.pull_cache(ld.CacheKey(1, req_id=2), dst)  # decode "died" and came back too late
    assert err.value.status_code == Code.LLM_KV_CACHE_NOT_EXIST
    assert prompt.run("result = (ext.pool_files(dd)[0].used, ext.counters(dd)['leases_expired'])") == [0, 1]
