"""Every error path users hit: typed exceptions with the documented status codes, within the timeouts."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from native_harness import init_code

import llm_datadist as ld
from llm_datadist.ext import hosting as ext

Code = ld.LLMStatusCode


def link(dd: ld.LLMDataDist, remote_id: int, address: str, timeout: int = 3000):
    ip, port = address.split(":")
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = remote_id
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info(ip, int(port))
    return dd.link_clusters([info], timeout=timeout)


@pytest.fixture
def pair(peer_factory, local_dd):
    prompt = peer_factory()
    address = prompt.run(init_code("PROMPT", 1, listen="127.0.0.1:0", extra={"cachelink.force_tcp": "1"}))
    prompt.run("""
        kv = cm.allocate_cache(CacheDesc(2, [2, 1024], DataType.DT_UINT8), [CacheKey(1, req_id=1)])
        blk = cm.allocate_blocks_cache(CacheDesc(2, [4, 1024], DataType.DT_UINT8), BlocksCacheKey(1, 0))
    """)
    dd = local_dd(
        ld.LLMRole.DECODER, 2, extra={"cachelink.force_tcp": "1", "llm.SyncKvCacheWaitTime": "2000"}
    )
    status, _ = link(dd, 1, address)
    assert status == Code.LLM_SUCCESS
    return prompt, dd


def expect(code: Code, func, *args, **kwargs) -> ld.LLMException:
    with pytest.raises(ld.LLMException) as err:
        func(*args, **kwargs)
    assert err.value.status_code == code, err.value
    return err.value


def test_unknown_cache_key(pair):
    _, dd = pair
    dst = dd.cache_manager.allocate_cache(ld.CacheDesc(2, [2, 1024], ld.DataType.DT_UINT8))
    error = expect(Code.LLM_KV_CACHE_NOT_EXIST, dd.cache_manager.pull_cache, ld.CacheKey(1, req_id=99), dst)
    assert "req_id=99" in str(error)
    expect(
        Code.LLM_KV_CACHE_NOT_EXIST,
        dd.cache_manager.pull_blocks,
        ld.BlocksCacheKey(1, 42),
        dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(2, [4, 1024], ld.DataType.DT_UINT8)),
        [0],
        [0],
    )


def test_out_of_range_indices_and_size_mismatch(pair):
    _, dd = pair
    cm = dd.cache_manager
    blk = cm.allocate_blocks_cache(ld.CacheDesc(2, [4, 1024], ld.DataType.DT_UINT8))
    expect(Code.LLM_PARAM_INVALID, cm.pull_blocks, ld.BlocksCacheKey(1, 0), blk, [4], [0])  # remote block
    expect(Code.LLM_PARAM_INVALID, cm.pull_blocks, ld.BlocksCacheKey(1, 0), blk, [0], [4])  # local block
    dst = cm.allocate_cache(ld.CacheDesc(2, [2, 1024], ld.DataType.DT_UINT8))
    expect(Code.LLM_PARAM_INVALID, cm.pull_cache, ld.CacheKey(1, req_id=1), dst, batch_index=2)
    small = cm.allocate_cache(ld.CacheDesc(2, [2, 512], ld.DataType.DT_UINT8))
    error = expect(Code.LLM_PARAM_INVALID, cm.pull_cache, ld.CacheKey(1, req_id=1), small)
    assert "size mismatch" in str(error)
    other = cm.allocate_blocks_cache(ld.CacheDesc(2, [4, 512], ld.DataType.DT_UINT8))
    assert "block size mismatch" in str(
        expect(Code.LLM_PARAM_INVALID, cm.pull_blocks, ld.BlocksCacheKey(1, 0), other, [0], [0])
    )
    # a failed pull leaves the key in place: the full-size pull still works afterwards
    cm.pull_cache(ld.CacheKey(1, req_id=1), dst)


def test_python_side_validation(pair):
    _, dd = pair
    cm = dd.cache_manager
    blk = cm.allocate_blocks_cache(ld.CacheDesc(2, [4, 1024], ld.DataType.DT_UINT8))
    with pytest.raises(TypeError):
        cm.pull_blocks("key", blk, [0], [0])
    expect(Code.LLM_PARAM_INVALID, cm.pull_blocks, ld.BlocksCacheKey(1, 0), blk, [0, 1], [0])
    expect(Code.LLM_PARAM_INVALID, cm.pull_blocks, ld.BlocksCacheKey(1, 0), blk, [], [])
    dst = cm.allocate_cache(ld.CacheDesc(2, [2, 1024], ld.DataType.DT_UINT8))
    expect(Code.LLM_PARAM_INVALID, cm.pull_cache, ld.CacheKey(1, req_id=1), dst, size=0)
    with pytest.raises(TypeError):
        cm.pull_cache(ld.CacheKey(1, req_id=1), dst, tensor_num_per_layer="2")
    with pytest.raises(ValueError, match="tensor_num_per_layer"):
        cm.pull_cache(ld.CacheKey(1, req_id=1), dst, tensor_num_per_layer=-1)
    expect(Code.LLM_PARAM_INVALID, cm.pull_cache, ld.CacheKey(1, req_id=1), dst, tensor_num_per_layer=0)
    expect(
        Code.LLM_PARAM_INVALID, cm.push_blocks, ld.BlocksCacheKey(1, 0), blk, [0], [0]
    )  # not remote-accessible
    assert "exceeds the device pool" in str(
        expect(Code.LLM_OUT_OF_MEMORY, cm.allocate_cache, ld.CacheDesc(1, [1 << 30], ld.DataType.DT_FLOAT))
    )
    with pytest.raises(ld.LLMException) as err:
        cm.allocate_cache(ld.CacheDesc(1, [1, 60 << 20], ld.DataType.DT_UINT8))
        cm.allocate_cache(ld.CacheDesc(1, [1, 60 << 20], ld.DataType.DT_UINT8))
    assert err.value.status_code == Code.LLM_OUT_OF_MEMORY


def test_link_to_closed_port_fails_within_timeout(local_dd):
    dd = local_dd(ld.LLMRole.DECODER, 2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    status, per_cluster = link(dd, 1, f"127.0.0.1:{port}", timeout=500)
    assert status == Code.LLM_LINK_FAILED and per_cluster == [Code.LLM_LINK_FAILED]
    assert time.monotonic() - start < 2
    # an unroutable-but-loopback silent peer (listening, never answering) also fails within the timeout
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.monotonic()
        status, _ = link(dd, 3, "127.0.0.1:%d" % silent.getsockname()[1], timeout=300)
        assert status == Code.LLM_LINK_FAILED
        assert time.monotonic() - start < 2


def test_link_wrong_cluster_id_is_refused(peer_factory, local_dd):
    prompt = peer_factory()
    address = prompt.run(init_code("PROMPT", 1, listen="127.0.0.1:0"))
    dd = local_dd(ld.LLMRole.DECODER, 2)
    _status, per_cluster = link(dd, 7, address)
    assert per_cluster == [Code.LLM_LINK_FAILED]
    assert link(dd, 1, address)[0] == Code.LLM_SUCCESS
    assert link(dd, 1, address)[1] == [Code.LLM_ALREADY_LINK]


def test_peer_killed_mid_transfer(peer_factory, local_dd):
    prompt = peer_factory()
    address = prompt.run(init_code("PROMPT", 1, listen="127.0.0.1:0", pool_mb=64))
    prompt.run("""
        blk = cm.allocate_blocks_cache(CacheDesc(2, [16, 1 << 20], DataType.DT_UINT8), BlocksCacheKey(1, 0))
    """)
    dd = local_dd(
        ld.LLMRole.DECODER, 2, extra={"cachelink.force_tcp": "1", "llm.SyncKvCacheWaitTime": "3000"}
    )
    assert link(dd, 1, address)[0] == Code.LLM_SUCCESS
    cm = dd.cache_manager
    mine = cm.allocate_blocks_cache(ld.CacheDesc(2, [16, 1 << 20], ld.DataType.DT_UINT8))
    mine.numpy(0)[:] = 7
    keep = cm.allocate_cache(ld.CacheDesc(1, [1, 64], ld.DataType.DT_UINT8))
    keep.numpy(0)[:] = 9
    prompt.stop()  # the request reaches a frozen peer ...
    threading.Timer(0.3, prompt.kill).start()  # ... which then dies with the transfer in flight
    start = time.monotonic()
    error = expect(
        Code.LLM_TIMEOUT, cm.pull_blocks, ld.BlocksCacheKey(1, 0), mine, list(range(16)), list(range(16))
    )
    assert time.monotonic() - start < 3, "a dead peer must be detected before the timeout"
    assert "cluster 1" in str(error)
    assert ext.links(dd)[0].state == "broken"
    expect(Code.LLM_NOT_YET_LINK, cm.pull_blocks, ld.BlocksCacheKey(1, 0), mine, [0], [0])
    # the survivor's caches are intact and usable
    assert (keep.numpy(0) == 9).all()
    cm.copy_blocks(mine, {0: [1]})
    # the peer comes back (new process, same address): unlink + link again works
    port = address.split(":")[1]
    again = peer_factory()
    again.run(init_code("PROMPT", 1, listen=f"127.0.0.1:{port}"))
    again.run(
        "blk = cm.allocate_blocks_cache(CacheDesc(2, [16, 1 << 20], DataType.DT_UINT8), BlocksCacheKey(1, 0))\n"
        "blk.numpy(0)[3] = 5"
    )
    dd.unlink_clusters([_info(1, address)])
    assert link(dd, 1, address)[0] == Code.LLM_SUCCESS
    cm.pull_blocks(ld.BlocksCacheKey(1, 0), mine, [3], [0])
    assert (mine.numpy(0)[0] == 5).all()


def test_peer_frozen_times_out(peer_factory, local_dd):
    prompt = peer_factory()
    address = prompt.run(init_code("PROMPT", 1, listen="127.0.0.1:0"))
    prompt.run(
        "blk = cm.allocate_blocks_cache(CacheDesc(1, [4, 4096], DataType.DT_UINT8), BlocksCacheKey(1, 0))"
    )
    dd = local_dd(ld.LLMRole.DECODER, 2, extra={"llm.SyncKvCacheWaitTime": "400"})
    assert link(dd, 1, address)[0] == Code.LLM_SUCCESS
    mine = dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [4, 4096], ld.DataType.DT_UINT8))
    prompt.stop()
    start = time.monotonic()
    expect(Code.LLM_TIMEOUT, dd.cache_manager.pull_blocks, ld.BlocksCacheKey(1, 0), mine, [0], [0])
    assert 0.3 < time.monotonic() - start < 2
    prompt.kill()


def _info(remote_id: int, address: str) -> ld.LLMClusterInfo:
    ip, port = address.split(":")
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = remote_id
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info(ip, int(port))
    return info


def test_unlink_unknown_cluster_returns_failure(local_dd):
    dd = local_dd(ld.LLMRole.DECODER, 2)
    status, per_cluster = dd.unlink_clusters([_info(5, "127.0.0.1:1")])
    assert status == Code.LLM_NOT_YET_LINK and per_cluster == [Code.LLM_NOT_YET_LINK]


def test_link_argument_errors(local_dd):
    dd = local_dd(ld.LLMRole.DECODER, 2)
    with pytest.raises(TypeError):
        dd.link_clusters(_info(1, "127.0.0.1:1"))
    with pytest.raises(TypeError):
        dd.link_clusters([_info(1, "127.0.0.1:1")], timeout="1")
    with pytest.raises(ValueError, match="timeout"):
        dd.link_clusters([_info(1, "127.0.0.1:1")], timeout=2**31)
    expect(Code.LLM_PARAM_INVALID, dd.link_clusters, [_info(1, "127.0.0.1:1")], timeout=0)
    no_local = ld.LLMClusterInfo()
    no_local.remote_cluster_id = 1
    no_local.append_remote_ip_info("127.0.0.1", 1)
    assert "local_ip_info_list" in str(expect(Code.LLM_PARAM_INVALID, dd.link_clusters, [no_local]))
    status, per_cluster = dd.link_clusters([_info(i, "127.0.0.1:1") for i in range(17)])
    assert status == Code.LLM_CLUSTER_NUM_EXCEED_LIMIT and len(per_cluster) == 17


def test_calls_before_init_and_after_finalize(local_dd):
    dd = ld.LLMDataDist(ld.LLMRole.PROMPT, 1)
    with pytest.raises(RuntimeError, match="not initialized"):
        _ = dd.cache_manager
    with pytest.raises(RuntimeError, match="not initialized"):
        dd.link_clusters([])
    dd.finalize()  # no-op
    live = local_dd(ld.LLMRole.DECODER, 2)
    cm = live.cache_manager
    live.finalize()
    live.finalize()  # idempotent
    with pytest.raises(RuntimeError, match="not initialized"):
        live.unlink_clusters([])
    expect(Code.LLM_FAILED, cm.allocate_cache, ld.CacheDesc(1, [1, 8], ld.DataType.DT_UINT8))
    expect(Code.LLM_PARAM_INVALID, cm.remove_cache_key, ld.CacheKey(1, req_id=1))


def test_one_live_instance_per_process(local_dd):
    first = local_dd(ld.LLMRole.PROMPT, 1)
    second = ld.LLMDataDist(ld.LLMRole.DECODER, 2)
    cfg = ld.LLMConfig()
    cfg.device_id = 0
    cfg.enable_cache_manager = True
    error = expect(Code.LLM_FAILED, second.init, cfg.generate_options())
    assert "multiple" in str(error)
    first.init(cfg.generate_options())  # re-init of the live instance is ignored
    first.finalize()
    second.init(cfg.generate_options())
    second.finalize()


def test_bad_options(tmp_path):
    def init(options: dict) -> None:
        dd = ld.LLMDataDist(ld.LLMRole.PROMPT, 1)
        try:
            dd.init(options)
        finally:
            dd.finalize()

    base = {"ge.exec.deviceId": "0", "llm.EnableCacheManager": "1"}
    assert "device_id" in str(expect(Code.LLM_PARAM_INVALID, init, {"llm.EnableCacheManager": "1"}))
    expect(Code.LLM_PARAM_INVALID, init, {"ge.exec.deviceId": "0"})
    with pytest.raises(TypeError):
        init({**base, "llm.SyncKvCacheWaitTime": 5})
    with pytest.raises(TypeError):
        init([("ge.exec.deviceId", "0")])
    assert "cachelink.nope" in str(expect(Code.LLM_PARAM_INVALID, init, {**base, "cachelink.nope": "1"}))
    expect(Code.LLM_PARAM_INVALID, init, {**base, "cachelink.force_tcp": "yes"})
    expect(Code.LLM_PARAM_INVALID, init, {**base, "llm.MemPoolConfig": '{"memory_size": -1}'})
    expect(
        Code.LLM_PARAM_INVALID, init, {**base, "llm.MemPoolConfig": '{"memory_size": 1024, "page_shift": 40}'}
    )
    expect(Code.LLM_PARAM_INVALID, init, {**base, "llm.MemPoolConfig": "not json"})
    expect(Code.LLM_PARAM_INVALID, init, {**base, "llm.listenIpInfo": "127.0.0.1"})
    with pytest.raises(ValueError, match="port"):
        init({**base, "llm.listenIpInfo": "127.0.0.1:70000"})
    assert "10.255.255.1" in str(
        expect(Code.LLM_PARAM_INVALID, init, {**base, "llm.listenIpInfo": "10.255.255.1:0"})
    )
    expect(
        Code.LLM_PARAM_INVALID,
        init,
        {
            **base,
            "cachelink.pool_dir": str(tmp_path / "missing"),
            "llm.MemPoolConfig": '{"memory_size": 65536}',
        },
    )
    # nothing half-applied: a good init works right after the failures
    init(base)
