"""Local copies (copy_cache, copy_blocks, swap_blocks) and layer-wise transfer_cache_async."""

from __future__ import annotations

import numpy as np
import pytest
from native_harness import init_code

import llm_datadist as ld


def test_copy_cache_with_offset_and_size(local_dd):
    cm = local_dd(ld.LLMRole.PROMPT, 1).cache_manager
    src = cm.allocate_cache(ld.CacheDesc(2, [2, 100], ld.DataType.DT_UINT8))
    dst = cm.allocate_cache(ld.CacheDesc(2, [3, 100], ld.DataType.DT_UINT8))
    for t in range(2):
        src.numpy(t)[:] = np.arange(200, dtype=np.uint8).reshape(2, 100) + t
    cm.copy_cache(dst, src, dst_batch_index=2, src_batch_index=1, offset=10, size=20)
    for t in range(2):
        assert np.array_equal(dst.numpy(t)[2, 10:30], src.numpy(t)[1, 10:30])
        assert not dst.numpy(t)[2, :10].any() and not dst.numpy(t)[2, 30:].any()
    with pytest.raises(ld.LLMException):
        cm.copy_cache(dst, src, offset=90, size=20)
    with pytest.raises(ld.LLMException):
        cm.copy_cache(dst, src, src_batch_index=2)


def test_copy_blocks_and_swap_blocks(local_dd):
    cm = local_dd(ld.LLMRole.PROMPT, 1).cache_manager
    dev = cm.allocate_blocks_cache(ld.CacheDesc(2, [6, 32], ld.DataType.DT_INT32))
    for t in range(2):
        dev.numpy(t)[:] = np.arange(6 * 32, dtype=np.int32).reshape(6, 32) + 1000 * t
    cm.copy_blocks(dev, {0: [4, 5], 1: [3]})
    for t in range(2):
        assert np.array_equal(dev.numpy(t)[4], dev.numpy(t)[0]) and np.array_equal(
            dev.numpy(t)[5], dev.numpy(t)[0]
        )
        assert np.array_equal(dev.numpy(t)[3], dev.numpy(t)[1])
    host_mem = [np.zeros((4, 32), dtype=np.int32) for _ in range(2)]
    host = ld.Cache.create_cpu_cache(
        ld.CacheDesc(2, [4, 32], ld.DataType.DT_INT32, ld.Placement.HOST), [a.ctypes.data for a in host_mem]
    )
    cm.swap_blocks(dev, host, {1: 0, 2: 3})  # swap out
    for t in range(2):
        assert np.array_equal(host_mem[t][0], dev.numpy(t)[1]) and np.array_equal(
            host_mem[t][3], dev.numpy(t)[2]
        )
    host_mem[0][0] = -1
    cm.swap_blocks(host, dev, {0: 5})  # swap in
    assert (dev.numpy(0)[5] == -1).all()
    with pytest.raises(ld.LLMException):
        cm.swap_blocks(dev, dev, {0: 1})  # DEVICE -> DEVICE is not a swap
    with pytest.raises(ld.LLMException):
        cm.swap_blocks(dev, host, {6: 0})


class AllLayersReady(ld.LayerSynchronizer):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def synchronize_layer(self, layer_index: int, timeout_in_millis: int | None) -> bool:
        self.seen.append(layer_index)
        return True


def test_transfer_cache_async_layer_by_layer(peer_factory, local_dd):
    decode = peer_factory()
    address = decode.run(init_code("DECODER", 2, listen="127.0.0.1:0"))
    decode.run(
        "dst = cm.allocate_blocks_cache(CacheDesc(4, [8, 64], DataType.DT_UINT8), BlocksCacheKey(2, 1))"
    )
    prompt = local_dd(ld.LLMRole.PROMPT, 1, remote_accessible=True)
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 2
    info.append_local_ip_info("127.0.0.1", 0)
    ip, port = address.split(":")
    info.append_remote_ip_info(ip, int(port))
    assert prompt.link_clusters([info])[0] == ld.LLMStatusCode.LLM_SUCCESS
    cm = prompt.cache_manager
    src = cm.allocate_blocks_cache(ld.CacheDesc(4, [8, 64], ld.DataType.DT_UINT8))
    for t in range(4):
        src.numpy(t)[:] = t + 1
    sync = AllLayersReady()
    config = ld.TransferWithCacheKeyConfig(ld.BlocksCacheKey(2, 1), range(0, 2), range(0, 2))
    task = cm.transfer_cache_async(src, sync, [config], [0, 1], [6, 7])
    assert task.synchronize(5000) == ld.LLMStatusCode.LLM_SUCCESS
    assert task.get_results(1000) == [ld.LLMStatusCode.LLM_SUCCESS]
    assert sync.seen == [0, 1]
    assert decode.run("result = [int(dst.numpy(t)[[6, 7]].min()) for t in range(4)]") == [1, 2, 3, 4]
    assert decode.run("result = int(dst.numpy(0)[:6].max())") == 0


def test_transfer_cache_async_to_raw_addresses(peer_factory, local_dd):
    """TransferConfig: the decode side registers its own tensors; the prompt writes each layer's K and V there."""
    decode = peer_factory()
    address = decode.run(init_code("DECODER", 2, listen="127.0.0.1:0"))
    addrs = decode.run("""
        own = [np.zeros((2, 256), dtype=np.uint8) for _ in range(4)]
        reg = cm.register_cache(CacheDesc(4, [2, 256], DataType.DT_UINT8), [a.ctypes.data for a in own])
        result = [a.ctypes.data for a in own]
    """)
    prompt = local_dd(ld.LLMRole.PROMPT, 1)
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 2
    info.append_local_ip_info("127.0.0.1", 0)
    ip, port = address.split(":")
    info.append_remote_ip_info(ip, int(port))
    assert prompt.link_clusters([info])[0] == ld.LLMStatusCode.LLM_SUCCESS
    cm = prompt.cache_manager
    src = cm.allocate_cache(ld.CacheDesc(4, [2, 256], ld.DataType.DT_UINT8))
    for t in range(4):
        src.numpy(t)[:] = np.arange(512, dtype=np.uint8).reshape(2, 256) + 10 * t
    sync = AllLayersReady()
    # layer 1 only (tensors 2, 3), batch slot 1, into the first two registered tensors
    config = ld.TransferConfig(2, addrs[:2], range(1, 2), 1)
    task = cm.transfer_cache_async(src, sync, [config])
    assert task.synchronize(5000) == ld.LLMStatusCode.LLM_SUCCESS
    got = decode.run("result = [bytes(own[t][0]).hex() for t in range(4)]")
    assert bytes.fromhex(got[0]) == bytes(src.numpy(2)[1]) and bytes.fromhex(got[1]) == bytes(src.numpy(3)[1])
    assert got[2] == got[3] == "00" * 256
    # an address no cache holds fails that config with the documented status
    bad = ld.TransferConfig(2, [8, 16], range(0, 1))
    task = cm.transfer_cache_async(src, sync, [bad])
    assert task.synchronize(5000) == ld.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
    with pytest.raises(ld.LLMException):
        cm.transfer_cache_async(
            src, sync, [ld.TransferConfig(2, addrs[:1], range(1, 2))]
        )  # needs 2 addresses
