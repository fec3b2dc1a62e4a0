"""Two agents (prompt node, decode node) on loopback: init, link, move KV blocks both ways, unlink, finalize."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cachelink_agent import models
from cachelink_agent.attach import attach

from llm_datadist import BlocksCacheKey, CacheDesc, DataType, LLMException, LLMStatusCode

from .conftest import DECODE_IP, PROMPT_IP

DESC = CacheDesc(4, [16, 8192], DataType.DT_FLOAT16)  # 16 blocks of 16 KiB per tensor, 2 layers x (K, V)


def _fill(cache, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for index in range(DESC.num_tensors):
        cache.numpy(index)[:] = rng.standard_normal(cache.numpy(index).shape).astype(np.float16)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["worker", "in-process"])
def test_prompt_to_decode_and_back(agents, mode) -> None:
    extra = ("--in-process",) if mode == "in-process" else ()
    prompt = agents("node-p", PROMPT_IP, *extra)
    decode = agents("node-d", DECODE_IP, *extra)
    created = prompt.put_instance("prefill", 1, role="prompt")
    assert created.action == "created"
    assert created.instance is not None and created.instance.mode == mode
    address = created.instance.listen_address
    assert address.startswith(f"{PROMPT_IP}:") and not address.endswith(":0")
    assert decode.put_instance("decode", 2, role="decoder").action == "created"

    spec = models.LinkSpec(remote_address=address, timeout_ms=3000)
    linked = decode.call(lambda c: c.put_link("decode", 1, spec))
    assert linked.link is not None and linked.link.state == "linked"
    assert linked.link.data_path == "tcp" and linked.link.last_status == "LLM_SUCCESS"
    assert decode.call(lambda c: c.put_link("decode", 1, spec)).action == "unchanged"

    with attach(prompt.run_dir, "prefill") as pm, attach(decode.run_dir, "decode") as dm:
        assert pm.cluster_id == 1 and dm.cluster_id == 2
        src = pm.allocate_blocks_cache(DESC, BlocksCacheKey(1, 0))
        _fill(src, 7)
        dst = dm.allocate_blocks_cache(DESC, BlocksCacheKey(2, 0))
        dm.pull_blocks(BlocksCacheKey(1, 0), dst, list(range(8)), list(range(8, 16)))
        for index in range(DESC.num_tensors):
            assert dst.numpy(index)[8:16].tobytes() == src.numpy(index)[0:8].tobytes()
        # decode -> prompt: push two blocks back into the prompt's cache
        for index in range(DESC.num_tensors):
            dst.numpy(index)[8:10] = np.float16(index + 0.5)
        dm.push_blocks(BlocksCacheKey(1, 0), dst, [8, 9], [12, 13])
        for index in range(DESC.num_tensors):
            assert src.numpy(index)[12:14].tobytes() == dst.numpy(index)[8:10].tobytes()
        # errors keep their LLMStatusCode across the socket
        with pytest.raises(LLMException) as raised:
            dm.pull_blocks(BlocksCacheKey(9, 0), dst, [0], [0])
        assert raised.value.status_code == LLMStatusCode.LLM_NOT_YET_LINK

        status = decode.instance("decode")
        assert status.counters["bytes_pulled"] == 8 * 16384 * DESC.num_tensors
        assert status.attach_sessions == 1 and status.caches == 1
        metrics = decode.call(lambda c: c.metrics())
        assert 'cachelink_agent_transfers_total{direction="pull"}' in metrics
        assert 'cachelink_agent_errors_total{status_code="LLM_NOT_YET_LINK"}' in metrics

    unlinked = decode.call(lambda c: c.delete_link("decode", 1))
    assert unlinked.deleted
    assert decode.instance("decode").links == []
    assert decode.call(lambda c: c.delete_instance("decode", missing_ok=False)).deleted
    assert prompt.call(lambda c: c.delete_instance("prefill", missing_ok=False)).deleted
    for agent in (prompt, decode):
        assert agent.call(lambda c: c.get_instances()) == []
        assert json.loads((agent.state_dir / "state.json").read_text())["instances"] == {}
        assert list(agent.pool_dir.iterdir()) == []
        assert list(agent.run_dir.iterdir()) == []
