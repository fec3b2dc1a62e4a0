"""Multi-host: two agents in two network namespaces joined by a veth pair; cut the wire mid-transfer."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from cachelink_agent import models
from cachelink_agent.attach import attach

from llm_datadist import BlocksCacheKey, CacheDesc, DataType, LLMException, LLMStatusCode

from .conftest import engine_options, wait_for

P_IP, D_IP = "10.213.7.1", "10.213.7.2"
DESC = CacheDesc(2, [64, 128 * 1024], DataType.DT_FLOAT16)  # 64 blocks of 256 KiB per tensor
SYNC_TIMEOUT_MS = 1500
#: what a transfer over a cut wire fails with (documented in agent/README.md)
CUT_WIRE_CODES = {LLMStatusCode.LLM_TIMEOUT, LLMStatusCode.LLM_LINK_FAILED, LLMStatusCode.LLM_NOT_YET_LINK}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns_pair():
    suffix = f"{os.getpid() % 100000}"
    ns_p, ns_d, veth_p, veth_d = f"clp{suffix}", f"cld{suffix}", f"clvp{suffix}", f"clvd{suffix}"
    try:
        _ip("netns", "add", ns_p)
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        stderr = getattr(error, "stderr", b"") or b""
        pytest.skip(f"network namespaces are not permitted here: {stderr.decode().strip() or error}")
    try:
        _ip("netns", "add", ns_d)
        _ip("link", "add", veth_p, "type", "veth", "peer", "name", veth_d)
        for ns, veth, address in ((ns_p, veth_p, P_IP), (ns_d, veth_d, D_IP)):
            _ip("link", "set", veth, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", veth)
            _ip("-n", ns, "link", "set", veth, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield ns_p, ns_d, veth_d
    finally:
        for ns in (ns_p, ns_d):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)


@pytest.mark.netns
@pytest.mark.slow
def test_cut_wire_breaks_link_and_relink_works(agents, netns_pair) -> None:
    ns_p, ns_d, veth_d = netns_pair
    prompt = agents("node-p", P_IP, netns=ns_p)
    decode = agents("node-d", D_IP, netns=ns_d)
    sync = {"llm.SyncKvCacheWaitTime": str(SYNC_TIMEOUT_MS)}
    address = prompt.put_instance(
        "prefill", 1, options=engine_options(P_IP, 64 << 20, **sync)
    ).instance.listen_address
    decode.put_instance("decode", 2, role="decoder", options=engine_options(D_IP, 64 << 20, **sync))
    spec = models.LinkSpec(remote_address=address, timeout_ms=2000)
    assert decode.call(lambda c: c.put_link("decode", 1, spec)).link.state == "linked"
    node = decode.call(lambda c: c.get_node())
    assert D_IP in node.candidate_addresses

    with attach(prompt.run_dir, "prefill") as pm, attach(decode.run_dir, "decode") as dm:
        src = pm.allocate_blocks_cache(DESC, BlocksCacheKey(1, 0))
        src.numpy(0)[:] = 3
        dst = dm.allocate_blocks_cache(DESC, BlocksCacheKey(2, 0))
        blocks = list(range(64))
        dm.pull_blocks(BlocksCacheKey(1, 0), dst, blocks, blocks)
        assert (dst.numpy(0) == 3).all()

        failure: list[tuple[LLMException, float]] = []
        pulls = [0]

        def keep_pulling() -> None:
            while not failure:
                started = time.monotonic()
                try:
                    dm.pull_blocks(BlocksCacheKey(1, 0), dst, blocks, blocks)
                    pulls[0] += 1
                except LLMException as error:
                    failure.append((error, time.monotonic() - started))

        puller = threading.Thread(target=keep_pulling)
        puller.start()
        wait_for(lambda: pulls[0] >= 2, 10, "transfers to be under way", interval=0.01)
        _ip("-n", ns_d, "link", "set", veth_d, "down")
        puller.join(timeout=SYNC_TIMEOUT_MS / 1000 * 4 + 5)
        assert not puller.is_alive(), "the transfer did not fail within its timeout"
        error, took = failure[0]
        assert error.status_code in CUT_WIRE_CODES, error
        assert took < SYNC_TIMEOUT_MS / 1000 + 2.0

        link = wait_for(
            lambda: next((x for x in decode.instance("decode").links if x.state == "broken"), None),
            10,
            "the link to be reported broken",
        )
        assert link.remote_cluster_id == 1

        _ip("-n", ns_d, "link", "set", veth_d, "up")
        relinked = wait_for(lambda: _relink(decode, spec), 20, "a re-link to succeed", interval=0.5)
        assert relinked.link.state == "linked"
        dst.numpy(0)[:] = 0
        dm.pull_blocks(BlocksCacheKey(1, 0), dst, blocks, blocks)
        assert (dst.numpy(0) == 3).all()


def _relink(decode, spec: models.LinkSpec):
    from cachelink_agent.client import AgentError

    try:
        result = decode.call(lambda c: c.put_link("decode", 1, spec))
    except AgentError:
        return None
    return result if result.link.state == "linked" else None
