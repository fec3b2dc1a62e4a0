"""Property-based: any block lists and shapes move the right bytes (small fixed budget)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_harness import init_code

import llm_datadist as ld

SRC_BLOCKS = 24
SHAPES = [(2, 64), (4, 256), (2, 4096)]  # (num_tensors, bytes per block)


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    from native_harness import Peer

    peer = Peer(tmp_path_factory.mktemp("peer"))
    address = peer.run(init_code("PROMPT", 1, listen="127.0.0.1:0"))
    for index, (tensors, block) in enumerate(SHAPES):
        peer.run(f"""
            c = cm.allocate_blocks_cache(CacheDesc({tensors}, [{SRC_BLOCKS}, {block}], DataType.DT_UINT8),
                                         BlocksCacheKey(1, {index}))
            for t in range({tensors}):
                c.numpy(t)[:] = np.random.default_rng({index} * 10 + t).integers(0, 256, ({SRC_BLOCKS}, {block}),
                                                                                  dtype=np.uint8)
        """)
    dd = ld.LLMDataDist(ld.LLMRole.DECODER, 2)
    cfg = ld.LLMConfig()
    cfg.device_id = 0
    cfg.enable_cache_manager = True
    cfg.mem_pool_cfg = '{"memory_size": %d}' % (32 << 20)
    options = cfg.generate_options()
    options["cachelink.force_tcp"] = "1"
    dd.init(options)
    info = ld.LLMClusterInfo()
    info.remote_cluster_id = 1
    info.append_local_ip_info("127.0.0.1", 0)
    ip, port = address.split(":")
    info.append_remote_ip_info(ip, int(port))
    assert dd.link_clusters([info])[0] == ld.LLMStatusCode.LLM_SUCCESS
    dests = [
        dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(t, [SRC_BLOCKS, b], ld.DataType.DT_UINT8))
        for t, b in SHAPES
    ]
    yield dd, dests
    dd.finalize()
    peer.close()


@st.composite
def plans(draw):
    shape = draw(st.integers(0, len(SHAPES) - 1))
    count = draw(st.integers(1, SRC_BLOCKS))
    src = draw(st.lists(st.integers(0, SRC_BLOCKS - 1), min_size=count, max_size=count))
    dst = draw(st.permutations(range(SRC_BLOCKS)))[:count]
    tensors = SHAPES[shape][0]
    layers = tensors // 2
    first = draw(st.integers(0, layers - 1))
    span = draw(st.integers(1, layers - first))
    return shape, src, list(dst), range(first, first + span)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans())
def test_any_block_plan_moves_exact_bytes(linked, plan):
    dd, dests = linked
    shape, src_blocks, dst_blocks, layers = plan
    tensors, block = SHAPES[shape]
    dst = dests[shape]
    for t in range(tensors):
        dst.numpy(t)[:] = 0
    dd.cache_manager.pull_blocks(
        ld.BlocksCacheKey(1, shape),
        dst,
        src_blocks,
        dst_blocks,
        src_layer_range=layers,
        dst_layer_range=layers,
    )
    moved = set(range(layers.start * 2, layers.stop * 2))
    for t in range(tensors):
        expected = np.random.default_rng(shape * 10 + t).integers(0, 256, (SRC_BLOCKS, block), dtype=np.uint8)
        got = dst.numpy(t)
        if t in moved:
            assert np.array_equal(got[dst_blocks], expected[src_blocks])
            untouched = sorted(set(range(SRC_BLOCKS)) - set(dst_blocks))
            assert not got[untouched].any()
        else:
            assert not got.any()
