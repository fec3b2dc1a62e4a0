"""Link security (protocol 2): an on-path relay replays, injects, reorders and rewrites frames and the HELLO_ACK.

The relay is a small TCP proxy the test puts between a decode (this process, ``force_tcp``) and a prompt (a
peer process). Each attack gets its specific error, the prompt's cache is unchanged, and a normal transfer
succeeds afterwards. The listener tests check the limits before AUTH.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from native_harness import init_code

import llm_datadist as ld
from llm_datadist import LLMStatusCode as Code
from llm_datadist.ext import hosting as ext

HEADER = struct.Struct("<IHHQ")
TAG = 16
RECORD = 256 << 10
HELLO, HELLO_ACK, READ_RESP, AUTH_RESULT = 1, 2, 4, 12
BLOCKS, BLOCK_BYTES = 8, 128 << 10  # 1 MiB: four bulk records per pull
SECRET = "relay-test-secret"

Hook = Callable[[int, int, bytes], list[bytes]]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


class Relay:
    """An on-path attacker: forwards whole frames (and bulk records), letting hooks change the stream.

    A hook gets (connection number, item number, item bytes) and returns what to forward instead. Items are
    frames (header, payload, tag) and, after a READ response, the bulk records (bytes and tag).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.c2s: Hook | None = None
        self.s2c: Hook | None = None
        self.read_total = BLOCKS * BLOCK_BYTES
        self.connections = 0
        self._closing = False
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        self._closing = True
        for sock in [self.listener, *self._socks]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._socks += [client, server]
            number = self.connections
            self.connections += 1
            for args in ((client, server, number, True), (server, client, number, False)):
                thread = threading.Thread(target=self._pump, args=args, daemon=True)
                self._threads.append(thread)
                thread.start()

    def _items(self, src: socket.socket, to_server: bool) -> Iterator[bytes]:
        index = 0
        while True:
            head = _recv_exact(src, HEADER.size)
            _, _, kind, length = HEADER.unpack(head)
            in_clear = index == 0 or kind == AUTH_RESULT or (not to_server and kind == HELLO_ACK)
            yield head + _recv_exact(src, length + (0 if in_clear else TAG))
            index += 1
            if not to_server and kind == READ_RESP:
                left = self.read_total
                while left > 0:
                    n = min(RECORD, left)
                    yield _recv_exact(src, n + TAG)
                    left -= n

    def _pump(self, src: socket.socket, dst: socket.socket, number: int, to_server: bool) -> None:
        try:
            for index, item in enumerate(self._items(src, to_server)):
                hook = self.c2s if to_server else self.s2c
                for piece in hook(number, index, item) if hook else [item]:
                    dst.sendall(piece)
        except (OSError, ConnectionError):
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.fixture(params=["authenticated", "encrypted"])
def setup(request, peer_factory, local_dd):
    """A prompt with a blocks cache, a relay in front of it, and a decode linked through the relay."""
    extra = {"cachelink.link_secret": SECRET}
    if request.param == "encrypted":
        extra["cachelink.link_encryption"] = "1"
    prompt = peer_factory()
    address = prompt.run(init_code("PROMPT", 1, listen="127.0.0.1:0", extra=extra))
    prompt.run(
        f"c = cm.allocate_blocks_cache(CacheDesc(1, [{BLOCKS}, {BLOCK_BYTES}], DataType.DT_UINT8), "
        "BlocksCacheKey(1, 0))\n"
        "c.numpy(0)[:] = np.arange(c.numpy(0).size, dtype=np.uint64).reshape(c.numpy(0).shape) % 251"
    )
    relay = Relay(("127.0.0.1", int(address.rsplit(":", 1)[1])))
    dd = local_dd(ld.LLMRole.DECODER, 2, extra={**extra, "cachelink.force_tcp": "1"})
    yield prompt, relay, dd
    relay.close()


def digest(prompt) -> str:
    return prompt.run("import hashlib\nresult = hashlib.sha256(c.numpy(0).tobytes()).hexdigest()")


def link(dd, relay) -> tuple[Code, list[Code]]:
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", relay.port)
    return dd.link_clusters([info], timeout=5000)


def unlink(dd) -> None:
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", 0)
    dd.unlink_clusters([info], force=True)


def pull(dd) -> np.ndarray:
    dst = dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [BLOCKS, BLOCK_BYTES], ld.DataType.DT_UINT8))
    try:
        blocks = list(range(BLOCKS))
        dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, blocks, blocks)
        return dst.numpy(0).copy()
    finally:
        dd.cache_manager.deallocate_blocks_cache(dst)


def expected() -> np.ndarray:
    return (np.arange(BLOCKS * BLOCK_BYTES, dtype=np.uint64).reshape(BLOCKS, BLOCK_BYTES) % 251).astype(
        np.uint8
    )


def finishes_cleanly(prompt, dd, relay, before: str) -> None:
    """The attack left the prompt's cache as it was, and a transfer without an attacker works."""
    relay.c2s = relay.s2c = None
    assert digest(prompt) == before
    if not ext.links(dd) or ext.links(dd)[0].state != "linked":
        unlink(dd)
        assert link(dd, relay)[0] == Code.LLM_SUCCESS
    assert np.array_equal(pull(dd), expected())


def test_clean_link_through_the_relay(setup):
    _prompt, relay, dd = setup
    assert link(dd, relay)[0] == Code.LLM_SUCCESS
    assert np.array_equal(pull(dd), expected())
    assert ext.counters(dd)["tampered_frames"] == 0


def test_rewritten_hello_ack_fails_the_link(setup):
    prompt, relay, dd = setup
    before = digest(prompt)
    # the last byte of HELLO_ACK is the server's nonce: both ends now hash different transcripts
    relay.s2c = lambda conn, index, item: [flip(item, len(item) - 1) if index == 0 else item]
    _status, per_cluster = link(dd, relay)
    assert per_cluster == [Code.LLM_LINK_FAILED]
    assert prompt.run("result = ext.counters(dd)['auth_failures']") == 1
    finishes_cleanly(prompt, dd, relay, before)


def test_flipped_encryption_flag_fails_the_link(setup):
    """Downgrade (encrypted to authenticated) or upgrade: either way the transcripts differ."""
    prompt, relay, dd = setup
    before = digest(prompt)
    flags_at = HEADER.size + 4 + 4 + 4 + 8  # status, message length, protocol, cluster id

    def flip_flag(conn: int, index: int, item: bytes) -> list[bytes]:
        if index != 0:
            return [item]
        return [item[:flags_at] + bytes([item[flags_at] ^ 2]) + item[flags_at + 1 :]]  # the encryption bit

    relay.s2c = flip_flag
    assert link(dd, relay)[1] == [Code.LLM_LINK_FAILED]
    finishes_cleanly(prompt, dd, relay, before)


def test_replayed_request_is_refused_and_served_once(setup):
    prompt, relay, dd = setup
    assert link(dd, relay)[0] == Code.LLM_SUCCESS
    before = digest(prompt)
    served = prompt.run("result = ext.counters(dd)['bytes_served']")
    # item 2 on the client's side is its first request after HELLO and AUTH: sent twice
    relay.c2s = lambda conn, index, item: [item, item] if index == 2 else [item]
    assert np.array_equal(pull(dd), expected())  # the genuine request is answered
    deadline = time.monotonic() + 10
    while prompt.run("result = ext.counters(dd)['tampered_frames']") != 1:
        assert time.monotonic() < deadline, "the prompt must refuse the replayed frame"
        time.sleep(0.05)
    assert prompt.run("result = ext.counters(dd)['bytes_served']") - served == BLOCKS * BLOCK_BYTES
    finishes_cleanly(prompt, dd, relay, before)


def test_injected_request_drops_the_connection(setup):
    prompt, relay, dd = setup
    assert link(dd, relay)[0] == Code.LLM_SUCCESS
    before = digest(prompt)

    def inject(conn: int, index: int, item: bytes) -> list[bytes]:
        if index != 2:
            return [item]
        forged = bytearray(item)
        forged[-TAG:] = bytes(TAG)  # same request, made-up tag
        return [bytes(forged)]

    relay.c2s = inject
    with pytest.raises(ld.LLMException) as err:
        pull(dd)
    assert err.value.status_code in (Code.LLM_TIMEOUT, Code.LLM_LINK_FAILED)
    assert prompt.run("result = ext.counters(dd)['tampered_frames']") == 1
    assert prompt.run("result = ext.counters(dd)['bytes_served']") == 0
    finishes_cleanly(prompt, dd, relay, before)


@pytest.mark.parametrize("attack", ["rewrite", "reorder", "replay"])
def test_tampered_bulk_records_fail_the_transfer(setup, attack):
    prompt, relay, dd = setup
    assert link(dd, relay)[0] == Code.LLM_SUCCESS
    before = digest(prompt)
    held: list[bytes] = []

    def tamper(conn: int, index: int, item: bytes) -> list[bytes]:
        # items 0-1: HELLO_ACK, SESSION; 2: the READ response; 3-6: its four bulk records
        if attack == "rewrite" and index == 3:
            return [flip(item, 10)]
        if attack == "reorder" and index == 3:
            held.append(item)
            return []
        if attack == "reorder" and index == 4:
            return [item, held.pop()]
        if attack == "replay" and index == 4:
            return [item, item]
        return [item]

    relay.s2c = tamper
    dst = dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [BLOCKS, BLOCK_BYTES], ld.DataType.DT_UINT8))
    blocks = list(range(BLOCKS))
    with pytest.raises(ld.LLMException) as err:
        dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, blocks, blocks)
    assert err.value.status_code == Code.LLM_LINK_FAILED
    assert "failed authentication" in str(err.value)
    if attack == "rewrite":
        assert not dst.numpy(0).any(), "a record that fails its check never reaches the destination"
    dd.cache_manager.deallocate_blocks_cache(dst)
    assert ext.counters(dd)["tampered_frames"] == 1
    assert ext.links(dd)[0].state == "linked", "the link survives; only that connection is dropped"
    finishes_cleanly(prompt, dd, relay, before)


@pytest.mark.parametrize("record", [1, 3])
def test_rewritten_later_record_keeps_the_checked_ones_and_wipes_the_rest(setup, record):
    """Records are received into the destination one at a time and opened there: those before the rewritten one
    checked out and stay; the rewritten one is zeroed, never left unauthenticated; those after it are never
    received, so the destination keeps what it held there."""
    prompt, relay, dd = setup
    assert link(dd, relay)[0] == Code.LLM_SUCCESS
    before = digest(prompt)
    relay.s2c = lambda conn, index, item: [flip(item, 1000) if index == 3 + record else item]
    dst = dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [BLOCKS, BLOCK_BYTES], ld.DataType.DT_UINT8))
    dst.numpy(0)[:] = 7  # so that a wiped record shows
    blocks = list(range(BLOCKS))
    with pytest.raises(ld.LLMException) as err:
        dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, blocks, blocks)
    assert err.value.status_code == Code.LLM_LINK_FAILED
    assert "failed authentication" in str(err.value)
    got = dst.numpy(0).reshape(-1)
    cut = record * RECORD
    assert np.array_equal(got[:cut], expected().reshape(-1)[:cut]), "records that checked out are genuine"
    assert not got[cut : cut + RECORD].any(), "the failed record is wiped"
    assert (got[cut + RECORD :] == 7).all(), "nothing after the failed record was written"
    dd.cache_manager.deallocate_blocks_cache(dst)
    assert ext.counters(dd)["tampered_frames"] == 1
    finishes_cleanly(prompt, dd, relay, before)


# ----------------------------------------------------------------------------------------- listener


def _hello(protocol: int = 2) -> bytes:
    body = struct.pack("<IQ", protocol, 99) + struct.pack("<I", 0) * 2 + struct.pack("<QQ", 0, 1)
    body += b"\x00" + struct.pack("<I", 0)
    return HEADER.pack(0x4B4E4C43, 1, HELLO, len(body)) + body


@pytest.fixture
def listener(peer_factory):
    def make(extra: dict[str, str]) -> tuple[object, tuple[str, int]]:
        peer = peer_factory()
        address = peer.run(init_code("PROMPT", 1, listen="127.0.0.1:0", extra=extra))
        host, port = address.rsplit(":", 1)
        return peer, (host, int(port))

    return make


def closed(sock: socket.socket, within: float = 20.0) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_flood_before_auth_hits_the_caps_and_honest_peers_still_link(listener, local_dd):
    peer, endpoint = listener(
        {"cachelink.max_connections_per_source": "4", "cachelink.max_server_connections": "8"}
    )
    flood = [socket.create_connection(endpoint) for _ in range(12)]
    try:
        # four are kept (until the handshake deadline), the rest are closed at once
        deadline = time.monotonic() + 20
        while peer.run("result = ext.counters(dd)['connections_refused']") < 8:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert peer.run("result = ext.linked_clients(dd)") == [], "greeted strangers are not clients"
    finally:
        for sock in flood:
            sock.close()
    dd = local_dd(ld.LLMRole.DECODER, 2)
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info(*endpoint)
    deadline = time.monotonic() + 20
    while (
        dd.link_clusters([info], timeout=2000)[0] != Code.LLM_SUCCESS
    ):  # once the flood's sockets are reaped
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_oversized_frame_before_auth_is_dropped(listener):
    _peer, endpoint = listener({})
    with socket.create_connection(endpoint) as sock:
        sock.sendall(HEADER.pack(0x4B4E4C43, 1, HELLO, 64 << 10))  # 64 KiB announced: above the pre-auth cap
        assert closed(sock)


def test_handshake_deadline_and_idle_timeout(listener):
    _peer, endpoint = listener({"cachelink.handshake_timeout_ms": "300", "cachelink.idle_timeout_ms": "300"})
    with socket.create_connection(endpoint) as silent:
        assert closed(silent), "a connection that never says HELLO is closed at the handshake deadline"
    with socket.create_connection(endpoint) as idle:
        idle.sendall(_hello())
        _recv_exact(idle, HEADER.size)
        assert closed(idle), "a greeted connection that stops before AUTH is closed too"


def test_version_mismatch_names_both_versions(listener):
    _peer, endpoint = listener({})
    with socket.create_connection(endpoint, timeout=10) as sock:
        sock.sendall(_hello(protocol=1))
        head = _recv_exact(sock, HEADER.size)
        body = _recv_exact(sock, HEADER.unpack(head)[3])
    code, length = struct.unpack_from("<II", body)
    message = body[8 : 8 + length].decode()
    assert code == Code.LLM_LINK_FAILED.value
    assert "peer speaks protocol 1" in message
    assert "this engine speaks protocol 2" in message


def test_encryption_needs_a_secret(local_dd):
    with pytest.raises(ld.LLMException) as err:
        local_dd(ld.LLMRole.DECODER, 2, extra={"cachelink.link_encryption": "1"})
    assert err.value.status_code == Code.LLM_PARAM_INVALID
    assert "cachelink.link_encryption" in str(err.value)


def test_link_to_a_protocol_1_engine_fails_naming_both_versions():
    """A protocol 1 engine (before this change) reads our HELLO, refuses it, and we report its message.

    The fake answers exactly as protocol 1's ``handle_hello`` did: its HELLO_ACK layout with the verdict first.
    """
    from llm_datadist import _native

    old = socket.create_server(("127.0.0.1", 0))

    def serve_once() -> None:
        conn, _ = old.accept()
        with conn:
            head = _recv_exact(conn, HEADER.size)
            body = _recv_exact(conn, HEADER.unpack(head)[3])
            (peer_protocol,) = struct.unpack_from("<I", body)
            message = f"protocol version mismatch: peer speaks {peer_protocol}, this engine 1".encode()
            ack = struct.pack("<II", Code.LLM_LINK_FAILED.value, len(message)) + message
            ack += struct.pack("<QIIQIBII", 1, 0, 0, 0, 0, 0, 0, 0)
            conn.sendall(HEADER.pack(0x4B4E4C43, 1, HELLO_ACK, len(ack)) + ack)

    thread = threading.Thread(target=serve_once)
    thread.start()
    config = _native.EngineConfig()
    config.cluster_id = 2
    engine = _native.Engine(config)
    engine.init()
    try:
        with pytest.raises(_native.CoreError) as err:
            engine.link(1, "127.0.0.1", old.getsockname()[1], 5000)
        code, message = err.value.args
        assert code == _native.Code.LINK_FAILED
        assert "peer speaks 2, this engine 1" in message
    finally:
        engine.finalize(True)
        thread.join(timeout=10)
        old.close()


def test_transfers_survive_the_idle_timeout(listener, local_dd):
    """The listener closes idle connections; the link drops them first and opens fresh ones."""
    extra = {"cachelink.idle_timeout_ms": "400"}
    peer, endpoint = listener(extra)
    peer.run("c = cm.allocate_blocks_cache(CacheDesc(1, [2, 4096], DataType.DT_UINT8), BlocksCacheKey(1, 0))")
    peer.run("c.numpy(0)[:] = 5")
    dd = local_dd(ld.LLMRole.DECODER, 2, extra={**extra, "cachelink.force_tcp": "1"})
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info(*endpoint)
    assert dd.link_clusters([info], timeout=5000)[0] == Code.LLM_SUCCESS
    dst = dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [2, 4096], ld.DataType.DT_UINT8))
    for pause in (0.0, 0.3, 0.6, 1.0):  # before, around and after the listener's idle timeout
        time.sleep(pause)
        dst.numpy(0)[:] = 0
        dd.cache_manager.pull_blocks(ld.BlocksCacheKey(1, 0), dst, [0, 1], [0, 1])
        assert (dst.numpy(0) == 5).all()
    assert ext.links(dd)[0].state == "linked"


def test_connections_before_auth_cost_no_thread(listener):
    """Handshakes run in the accept thread: fifty silent connections add no thread to the instance."""
    peer, endpoint = listener({})
    tasks = f"/proc/{peer.proc.pid}/task"  # type: ignore[attr-defined]
    before = len(os.listdir(tasks))
    flood = [socket.create_connection(endpoint) for _ in range(50)]
    try:
        for sock in flood[:25]:
            sock.sendall(_hello())  # half of them greeted, never authenticated
        for sock in flood[:25]:
            _recv_exact(sock, HEADER.size)
        assert len(os.listdir(tasks)) <= before + 2, "no thread per unauthenticated connection"
    finally:
        for sock in flood:
            sock.close()
