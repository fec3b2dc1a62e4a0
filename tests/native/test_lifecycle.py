"""Seed example, communication domains, pool adoption, fork safety and zero-copy views."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from native_harness import init_code

import llm_datadist as ld
from llm_datadist.ext import hosting as ext
from llm_datadist.ext import options as option_keys

Code = ld.LLMStatusCode

SEED_EXAMPLE = """
from llm_datadist import LLMDataDist, LLMRole, LLMConfig
llm_datadist = LLMDataDist(LLMRole.PROMPT, 0)
llm_config = LLMConfig()
llm_config.enable_cache_manager = True
llm_config.device_id = 0
engine_options = llm_config.generate_options()
llm_datadist.init(engine_options)
"""


def run_script(code: str, tmp_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_seed_calling_example_runs_verbatim(tmp_path):
    done = run_script(SEED_EXAMPLE + "\nllm_datadist.finalize()\nprint('finalized')", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "finalized"
    # and exactly as written (no finalize): the atexit hook cleans up
    done = run_script(SEED_EXAMPLE, tmp_path)
    assert done.returncode == 0, done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_table(ports: list[int]) -> str:
    return json.dumps(
        {
            "server_count": "2",
            "status": "completed",
            "version": "1.2",
            "server_list": [
                {
                    "server_id": str(i),
                    "host_ip": "127.0.0.1",
                    "device": [
                        {
                            "device_id": "0",
                            "device_ip": f"127.0.0.{i + 1}",
                            "device_port": str(port),
                            "rank_id": str(i),
                        }
                    ],
                }
                for i, port in enumerate(ports)
            ],
        }
    )


@pytest.mark.parametrize("path", ["shm", "tcp"])
def test_comm_domain_link_both_directions(peer_factory, local_dd, path):
    extra = {"cachelink.force_tcp": "1"} if path == "tcp" else {}
    table = rank_table([free_port(), free_port()])
    other = peer_factory()
    other.run(init_code("PROMPT", 11, extra=extra))
    other.run("""
        src = cm.allocate_blocks_cache(CacheDesc(2, [4, 256], DataType.DT_UINT8), BlocksCacheKey(11, 0))
        for t in range(2): src.numpy(t)[:] = np.arange(4 * 256, dtype=np.uint8).reshape(4, 256) + t
    """)
    dd = local_dd(ld.LLMRole.DECODER, 12, extra=extra)
    other.send_nowait(f"result = dd.link('domain', {{11: 0, 12: 1}}, {table!r})")
    comm_id = dd.link("domain", {11: 0, 12: 1}, table)
    assert other.read_reply() == 1 and comm_id == 1
    deadline = time.monotonic() + 10
    while (state := dd.query_register_mem_status(comm_id)) != ld.RegisterMemStatus.OK:
        assert state == ld.RegisterMemStatus.PREPARING and time.monotonic() < deadline
        time.sleep(0.05)
    cm = dd.cache_manager
    mine = cm.allocate_blocks_cache(ld.CacheDesc(2, [4, 256], ld.DataType.DT_UINT8), ld.BlocksCacheKey(12, 0))
    mine.numpy(1)[:] = 77
    cm.pull_blocks(ld.BlocksCacheKey(11, 0), mine, [2, 3], [0, 1])
    assert np.array_equal(mine.numpy(0)[:2], (np.arange(1024, dtype=np.uint8).reshape(4, 256))[2:])
    # the other member pulls from us over its own side of the domain
    pulled = other.run(f"""
        while dd.query_register_mem_status({comm_id}) != RegisterMemStatus.OK: pass
        got = cm.allocate_blocks_cache(CacheDesc(2, [4, 256], DataType.DT_UINT8))
        cm.pull_blocks(BlocksCacheKey(12, 0), got, [2], [3])
        result = int(got.numpy(1)[3].min()), int(got.numpy(1)[3].max())
    """)
    assert pulled == [77, 77]
    assert {lk.data_path for lk in ext.links(dd)} == {path}
    dd.unlink(comm_id)
    with pytest.raises(ld.LLMException) as err:
        cm.pull_blocks(ld.BlocksCacheKey(11, 0), mine, [0], [0])
    assert err.value.status_code == Code.LLM_NOT_YET_LINK


def test_comm_domain_argument_checks(local_dd):
    dd = local_dd(ld.LLMRole.DECODER, 12)
    table = rank_table([free_port(), free_port()])
    with pytest.raises(TypeError):
        dd.link(None, {11: 0, 12: 1}, table)
    with pytest.raises(ld.LLMException):
        dd.link("x" * 128, {11: 0, 12: 1}, table)
    with pytest.raises(ld.LLMException):
        dd.link("d", {12: 0}, table)
    with pytest.raises(ld.LLMException):
        dd.link("d", {11: 1, 12: 0}, table)
    with pytest.raises(ValueError):
        dd.link("d", {11: 0, 12: 2**32}, table)
    with pytest.raises(ld.LLMException) as err:
        dd.link("d", {11: 0, 12: 1}, '{"version": "9"}')
    assert "rank_table" in str(err.value)


def test_domain_peer_that_never_comes_fails(local_dd):
    dd = local_dd(ld.LLMRole.DECODER, 12, extra={"llm.LinkTotalTime": "1"})
    comm_id = dd.link("lonely", {11: 0, 12: 1}, rank_table([free_port(), free_port()]))
    deadline = time.monotonic() + 5
    while (state := dd.query_register_mem_status(comm_id)) == ld.RegisterMemStatus.PREPARING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state == ld.RegisterMemStatus.FAILED


def test_persistent_pool_is_adopted_after_sigkill(peer_factory, tmp_path):
    pool_opts = {
        "cachelink.pool_dir": str(tmp_path),
        "cachelink.pool_name": "node-a-prompt",
        "cachelink.persistent_pool": "1",
        "cachelink.adopt_pool": "1",
    }
    first = peer_factory()
    first.run(init_code("PROMPT", 1, extra=pool_opts))
    first.run("""
        kv = cm.allocate_cache(CacheDesc(2, [2, 512], DataType.DT_UINT8), [CacheKey(1, req_id=5), CacheKey(1, req_id=6)])
        for t in range(2): kv.numpy(t)[:] = np.arange(1024, dtype=np.uint8).reshape(2, 512) * (t + 1)
        blk = cm.allocate_blocks_cache(CacheDesc(1, [3, 64], DataType.DT_UINT8), BlocksCacheKey(1, 4))
        blk.numpy(0)[:] = 3
        gone = cm.allocate_cache(CacheDesc(1, [1, 64], DataType.DT_UINT8))
        cm.deallocate_cache(gone)
    """)
    first.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "node-a-prompt.device",
        "node-a-prompt.host",
        "node-a-prompt.index",
    ]
    second = peer_factory()
    second.run(init_code("PROMPT", 1, extra=pool_opts))
    adopted = second.run("""
        result = []
        for cache, keys in ext.caches(dd):
            result.append([cache.cache_id, cache.is_blocks_cache, list(cache.cache_desc.shape),
                           [k.req_id for k in keys], int(cache.numpy(0).sum()), int(cache.numpy(-1 + cache.cache_desc.num_tensors).sum())])
    """)
    expected_sum = int((np.arange(1024, dtype=np.uint8)).astype(np.int64).sum())
    doubled = int((np.arange(1024, dtype=np.uint8) * 2).astype(np.uint8).astype(np.int64).sum())
    assert adopted == [
        [1, False, [2, 512], [5, 6], expected_sum, doubled],
        [2, True, [3, 64], [], 9 * 64, 9 * 64],
    ]
    # new caches get fresh ids and never overlap the adopted ones
    assert second.run("result = cm.allocate_cache(CacheDesc(1, [1, 64], DataType.DT_UINT8)).cache_id") == 4
    second.run("dd.finalize()")
    assert list(tmp_path.iterdir()) == []


def test_fork_after_init_gives_clear_error_in_child(local_dd):
    dd = local_dd(ld.LLMRole.PROMPT, 1)
    cache = dd.cache_manager.allocate_cache(ld.CacheDesc(1, [1, 64], ld.DataType.DT_UINT8))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            dd.cache_manager.allocate_cache(ld.CacheDesc(1, [1, 64], ld.DataType.DT_UINT8))
        except ld.LLMException as error:
            code = 1 if "forked child" in str(error) and error.status_code == Code.LLM_FAILED else 2
        os.write(write, bytes([code]))
        os._exit(0)
    os.close(write)
    verdict = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert verdict == b"\x01"
    cache.numpy(0)[:] = 1  # the parent is unaffected
    dd.cache_manager.deallocate_cache(cache)


def test_numpy_views_are_zero_copy_and_dlpack(local_dd):
    dd = local_dd(ld.LLMRole.PROMPT, 1)
    cache = dd.cache_manager.allocate_cache(ld.CacheDesc(2, [4, 8], ld.DataType.DT_FLOAT16))
    view = cache.numpy(1)
    assert view.dtype == np.float16 and view.shape == (4, 8)
    assert view.__array_interface__["data"][0] == cache.tensor_addrs[1]
    view[:] = 1.5
    assert (cache.numpy(1) == 1.5).all()
    shared = np.from_dlpack(view)
    assert shared.__array_interface__["data"][0] == cache.tensor_addrs[1]
    dd.cache_manager.deallocate_cache(cache)
    assert cache.tensor_addrs == []
    with pytest.raises(RuntimeError):
        cache.numpy(0)


def test_pools_of_dead_processes_are_swept_at_init(peer_factory, tmp_path):
    victim = peer_factory()
    victim.run(init_code("PROMPT", 1, extra={"cachelink.pool_dir": str(tmp_path)}))
    alive = peer_factory()
    alive.run(init_code("PROMPT", 2, extra={"cachelink.pool_dir": str(tmp_path)}))
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=10)
    assert len(list(tmp_path.iterdir())) == 4  # a killed process cannot clean up after itself
    survivor = peer_factory()
    survivor.run(init_code("PROMPT", 3, extra={"cachelink.pool_dir": str(tmp_path)}))
    names = sorted(p.name.split("-")[1] for p in tmp_path.iterdir())
    assert names == ["2", "2", "3", "3"]  # the dead one's files are gone, the live ones untouched


def test_ext_validate_options_matches_init():
    good = {"ge.exec.deviceId": "0", "llm.EnableCacheManager": "1", "llm.listenIpInfo": "127.0.0.1:0"}
    completed = option_keys.validate_options(good, "Prompt", 1)
    assert completed["llm.Role"] == "Prompt" and completed["llm.ListenPort"] == "0"
    with pytest.raises(ld.LLMException) as err:
        option_keys.validate_options({**good, "cachelink.bogus": "1"}, "Prompt", 1)
    assert err.value.status_code == Code.LLM_PARAM_INVALID
    assert isinstance(err.value, option_keys.InvalidOption) and err.value.key == "cachelink.bogus"
    assert ld.LLMDataDist.llm_engine_instance is None, "validation starts no instance"


def test_ext_reports_blocks_key_bindings(local_dd):
    dd = local_dd(ld.LLMRole.PROMPT, 1)
    bound = dd.cache_manager.allocate_blocks_cache(
        ld.CacheDesc(1, [2, 64], ld.DataType.DT_UINT8), ld.BlocksCacheKey(1, 7)
    )
    dd.cache_manager.allocate_blocks_cache(ld.CacheDesc(1, [2, 64], ld.DataType.DT_UINT8))
    assert ext.blocks_keys(dd) == {bound.cache_id: ld.BlocksCacheKey(1, 7)}


def test_switch_role_moves_the_listener(peer_factory, local_dd):
    dd = local_dd(ld.LLMRole.DECODER, 2)
    assert ext.listen_address(dd) == ""
    port = free_port()
    dd.switch_role(ld.LLMRole.PROMPT, {"llm.listenIpInfo": f"127.0.0.1:{port}"})
    assert ext.listen_address(dd) == f"127.0.0.1:{port}"
    dd.cache_manager.allocate_blocks_cache(
        ld.CacheDesc(1, [2, 64], ld.DataType.DT_UINT8), ld.BlocksCacheKey(2, 0)
    )
    peer = peer_factory()
    peer.run(init_code("DECODER", 9))
    pulled = peer.run(f"""
        info = LLMClusterInfo(); info.remote_cluster_id = 2
        info.append_local_ip_info("127.0.0.1", 0); info.append_remote_ip_info("127.0.0.1", {port})
        assert dd.link_clusters([info])[0] == LLMStatusCode.LLM_SUCCESS
        got = cm.allocate_blocks_cache(CacheDesc(1, [2, 64], DataType.DT_UINT8))
        cm.pull_blocks(BlocksCacheKey(2, 0), got, [1], [0])
        result = True
    """)
    assert pulled is True
    with pytest.raises(ld.LLMException) as err:  # a linked peer: no switching under it
        dd.switch_role(ld.LLMRole.DECODER, {})
    assert err.value.status_code == Code.LLM_EXIST_LINK
    peer.run("dd.unlink_clusters([info])")
    deadline = time.monotonic() + 5
    while ext.linked_clients(dd):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    dd.switch_role(ld.LLMRole.DECODER, {})  # no listenIpInfo: a client, the port is closed
    assert ext.listen_address(dd) == ""
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
