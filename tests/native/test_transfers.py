"""Prompt and decode in two real processes: every transfer method, both data paths, bytes compared."""

from __future__ import annotations

import numpy as np
import pytest
from native_harness import init_code

import llm_datadist as ld
from llm_datadist.ext import hosting as ext

PATHS = {"shm": {}, "tcp": {"cachelink.force_tcp": "1"}}
PATTERN = """
def pattern(seed, nbytes):
    return np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)
def fill(cache, seed):
    for i in range(cache.cache_desc.num_tensors):
        cache.numpy(i).view(np.uint8).reshape(-1)[:] = pattern(seed + i, cache.cache_desc.size)
"""


def pattern(seed: int, nbytes: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)


def raw(cache: ld.Cache, tensor: int) -> np.ndarray:
    return cache.numpy(tensor).view(np.uint8).reshape(cache.cache_desc.shape[0], -1)


def link(dd: ld.LLMDataDist, remote_id: int, address: str) -> None:
    ip, port = address.split(":")
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = remote_id
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info(ip, int(port))
    status, per_cluster = dd.link_clusters([info], timeout=3000)
    assert status == ld.LLMStatusCode.LLM_SUCCESS, per_cluster


@pytest.fixture(params=sorted(PATHS))
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def prompt(peer_factory, path):
    peer = peer_factory()
    address = peer.run(
        init_code("PROMPT", 1, listen="127.0.0.1:0", extra=PATHS[path], remote_accessible=True)
    )
    peer.run(PATTERN)
    peer.address = address
    return peer


def make_decode(local_dd, prompt, path: str, *, remote_accessible: bool) -> ld.LLMDataDist:
    dd = local_dd(ld.LLMRole.DECODER, 2, extra=PATHS[path], remote_accessible=remote_accessible)
    link(dd, 1, prompt.address)
    assert [(lk.remote_cluster_id, lk.data_path) for lk in ext.links(dd)] == [(1, path)]
    return dd


@pytest.fixture
def decode(local_dd, prompt, path):
    return make_decode(local_dd, prompt, path, remote_accessible=False)


@pytest.fixture
def decode_ra(local_dd, prompt, path):
    """A decode side with enable_remote_cache_accessible (may push; names peer caches by id)."""
    return make_decode(local_dd, prompt, path, remote_accessible=True)


def test_pull_cache_by_key_whole_slot_and_layer_range(prompt, decode):
    prompt.run("""
        desc = CacheDesc(4, [2, 4096], DataType.DT_FLOAT16)
        kv = cm.allocate_cache(desc, [CacheKey(1, req_id=10), CacheKey(1, req_id=11)])
        fill(kv, 100)
    """)
    cm = decode.cache_manager
    dst = cm.allocate_cache(ld.CacheDesc(4, [3, 4096], ld.DataType.DT_FLOAT16))
    cm.pull_cache(ld.CacheKey(prompt_cluster_id=1, req_id=11), dst, batch_index=2)
    slot = 4096 * 2
    for t in range(4):
        assert np.array_equal(raw(dst, t)[2], pattern(100 + t, 2 * slot)[slot:])
        assert not raw(dst, t)[0].any()
    # a successful pull released the key: the prompt cache slot is gone from the index
    with pytest.raises(ld.LLMException) as err:
        cm.pull_cache(ld.CacheKey(1, 11), dst, batch_index=0)
    assert err.value.status_code == ld.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
    # layer-wise: only layer 1 (tensors 2, 3) of slot 0, into layer 0 of local slot 1
    cm.pull_cache(
        ld.CacheKey(1, 10), dst, batch_index=1, src_layer_range=range(1, 2), dst_layer_range=range(0, 1)
    )
    assert np.array_equal(raw(dst, 0)[1], pattern(102, 2 * slot)[:slot])
    assert np.array_equal(raw(dst, 1)[1], pattern(103, 2 * slot)[:slot])
    assert not raw(dst, 2)[1].any()


def test_pull_cache_partial_size_and_by_id(prompt, decode_ra):
    decode = decode_ra
    cache_id = prompt.run("""
        kv = cm.allocate_cache(CacheDesc(2, [2, 1024], DataType.DT_INT8))
        fill(kv, 7)
        result = kv.cache_id
    """)
    cm = decode.cache_manager
    dst = cm.allocate_cache(ld.CacheDesc(2, [2, 1024], ld.DataType.DT_INT8))
    cm.pull_cache(ld.CacheKeyByIdAndIndex(1, cache_id, 1), dst, batch_index=0, size=100)
    for t in range(2):
        assert np.array_equal(raw(dst, t)[0][:100], pattern(7 + t, 2048)[1024:1124])
        assert not raw(dst, t)[0][100:].any()


def test_pull_blocks_arbitrary_lists_and_tensor_num_per_layer(prompt, decode):
    prompt.run("""
        src = cm.allocate_blocks_cache(CacheDesc(6, [32, 128], DataType.DT_FLOAT), BlocksCacheKey(1, 5))
        fill(src, 50)
    """)
    cm = decode.cache_manager
    dst = cm.allocate_blocks_cache(ld.CacheDesc(6, [16, 128], ld.DataType.DT_FLOAT))
    src_blocks, dst_blocks = [31, 0, 7, 8, 9, 20], [3, 15, 0, 1, 2, 9]
    cm.pull_blocks(ld.BlocksCacheKey(1, 5), dst, src_blocks, dst_blocks)
    block = 128 * 4
    for t in range(6):
        src = pattern(50 + t, 32 * block).reshape(32, block)
        assert np.array_equal(raw(dst, t)[dst_blocks], src[src_blocks])
    # three tensors per layer: layer 1 = tensors 3..5 of the source into layer 0 = tensors 0..2
    fresh = cm.allocate_blocks_cache(ld.CacheDesc(6, [16, 128], ld.DataType.DT_FLOAT))
    cm.pull_blocks(
        ld.BlocksCacheKey(1, 5),
        fresh,
        [1],
        [4],
        src_layer_range=range(1, 2),
        dst_layer_range=range(0, 1),
        tensor_num_per_layer=3,
    )
    for t in range(3):
        assert np.array_equal(raw(fresh, t)[4], pattern(50 + 3 + t, 32 * block).reshape(32, block)[1])
    for t in range(3, 6):
        assert not raw(fresh, t).any()


def test_pull_blocks_from_cache_key_scatters_slot(prompt, decode):
    prompt.run("""
        kv = cm.allocate_cache(CacheDesc(2, [1, 4 * 256], DataType.DT_UINT8), [CacheKey(1, req_id=3)])
        fill(kv, 9)
    """)
    cm = decode.cache_manager
    dst = cm.allocate_blocks_cache(ld.CacheDesc(2, [10, 256], ld.DataType.DT_UINT8))
    cm.pull_blocks(ld.CacheKey(1, req_id=3), dst, (), [9, 2, 5, 0])
    for t in range(2):
        src = pattern(9 + t, 1024).reshape(4, 256)
        assert np.array_equal(raw(dst, t)[[9, 2, 5, 0]], src)


def test_push_blocks_and_push_cache(prompt, decode_ra):
    decode = decode_ra
    cache_id = prompt.run("""
        dstb = cm.allocate_blocks_cache(CacheDesc(4, [8, 64], DataType.DT_INT16), BlocksCacheKey(1, 2))
        dstc = cm.allocate_cache(CacheDesc(4, [2, 64], DataType.DT_INT16))
        result = dstc.cache_id
    """)
    cm = decode.cache_manager
    src = cm.allocate_blocks_cache(ld.CacheDesc(4, [8, 64], ld.DataType.DT_INT16))
    for t in range(4):
        raw(src, t)[:] = pattern(200 + t, 8 * 128).reshape(8, 128)
    cm.push_blocks(ld.BlocksCacheKey(1, 2), src, [0, 1, 7], [6, 3, 0])
    got = prompt.run("result = [dstb.numpy(t).view(np.uint8)[[6, 3, 0]].tobytes().hex() for t in range(4)]")
    for t in range(4):
        assert bytes.fromhex(got[t]) == raw(src, t)[[0, 1, 7]].tobytes()
    srcc = cm.allocate_cache(ld.CacheDesc(4, [2, 64], ld.DataType.DT_INT16))
    for t in range(4):
        raw(srcc, t)[:] = pattern(300 + t, 256).reshape(2, 128)
    cm.push_cache(ld.CacheKeyByIdAndIndex(1, cache_id, 1), srcc, src_batch_index=0)
    got = prompt.run("result = [dstc.numpy(t).view(np.uint8)[1].tobytes().hex() for t in range(4)]")
    for t in range(4):
        assert bytes.fromhex(got[t]) == raw(srcc, t)[0].tobytes()


def test_caller_registered_memory_both_sides(prompt, decode):
    """Real clients register their own tensors: served over TCP even on a same-host link."""
    prompt.run("""
        own = [np.zeros((8, 512), dtype=np.uint8) for _ in range(2)]
        for t, arr in enumerate(own):
            arr[:] = pattern(400 + t, arr.size).reshape(arr.shape)
        reg = cm.register_blocks_cache(CacheDesc(2, [8, 512], DataType.DT_UINT8),
                                       [a.ctypes.data for a in own], BlocksCacheKey(1, 9))
    """)
    cm = decode.cache_manager
    mine = [np.zeros((8, 512), dtype=np.uint8) for _ in range(2)]
    blk = cm.register_blocks_cache(
        ld.CacheDesc(2, [8, 512], ld.DataType.DT_UINT8), [a.ctypes.data for a in mine]
    )
    cm.pull_blocks(ld.BlocksCacheKey(1, 9), blk, [0, 5], [7, 1])
    for t in range(2):
        src = pattern(400 + t, 8 * 512).reshape(8, 512)
        assert np.array_equal(mine[t][[7, 1]], src[[0, 5]])
        assert not mine[t][0].any()


def test_concurrent_pulls_from_threads(prompt, decode):
    from concurrent.futures import ThreadPoolExecutor

    prompt.run("""
        src = cm.allocate_blocks_cache(CacheDesc(2, [64, 4096], DataType.DT_UINT8), BlocksCacheKey(1, 1))
        fill(src, 600)
    """)
    cm = decode.cache_manager
    dsts = [cm.allocate_blocks_cache(ld.CacheDesc(2, [64, 4096], ld.DataType.DT_UINT8)) for _ in range(8)]
    rng = np.random.default_rng(0)
    plans = [rng.permutation(64)[:32].tolist() for _ in dsts]

    def pull(index: int) -> None:
        for _ in range(5):
            cm.pull_blocks(ld.BlocksCacheKey(1, 1), dsts[index], plans[index], list(range(32)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(pull, range(8)))
    for dst, plan in zip(dsts, plans, strict=True):
        for t in range(2):
            src = pattern(600 + t, 64 * 4096).reshape(64, 4096)
            assert np.array_equal(raw(dst, t)[:32], src[plan])
