"""Benchmark of the node agent; prints JSON and writes it to ``bench/results/agent.json`` (not run in CI).

    .venv/bin/python bench/agent.py --pairs 100 --memory-instances 20 --rounds 50

Measures, for worker mode and in-process mode: time to init + link a pair of instances through the
API (p50/p99), memory per instance (PSS), status-read throughput; and the attach path's pull bandwidth
against the engine used directly (256 KiB blocks, TCP on loopback in both cases).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from benchlib import results
from benchlib.procfs import children, pss_kib
from benchlib.stats import percentile
from cachelink_agent import models, tokens
from cachelink_agent.attach import attach
from cachelink_agent.client import AgentClient

from cachelink_dev.devcluster.processes import free_port
from llm_datadist import BlocksCacheKey, CacheDesc, DataType, LLMClusterInfo, LLMRole
from llm_datadist.ext import hosting as ext

SIGNING_KEY = tokens.generate_signing_key()
BLOCK = 256 << 10
BLOCKS = 64
DESC = CacheDesc(2, [BLOCKS, BLOCK // 2], DataType.DT_FLOAT16)  # 2 tensors x 64 blocks x 256 KiB


def options(ip: str, pool: int = 8 << 20) -> dict[str, str]:
    return {
        "ge.exec.deviceId": "0",
        "llm.EnableCacheManager": "1",
        "llm.EnableRemoteCacheAccessible": "1",
        "llm.listenIpInfo": f"{ip}:0",
        "llm.MemPoolConfig": json.dumps({"memory_size": pool}),
        "llm.SyncKvCacheWaitTime": "10000",
    }


class Agent:
    def __init__(self, root: Path, node: str, host: str, in_process: bool) -> None:
        self.root, self.node, self.host = root, node, host
        root.mkdir(parents=True)
        (root / "verify.pem").write_bytes(tokens.public_pem(SIGNING_KEY))
        self.pool_dir = Path(tempfile.mkdtemp(prefix="cachelink-bench-", dir="/dev/shm"))
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.token = tokens.mint(SIGNING_KEY, node, lifetime_s=tokens.MAX_LIFETIME_S)
        # -P: the working directory (the repository's root) off sys.path, so that the installed package
        # (with its compiled core) is imported, not the source tree's llm_datadist, which has none
        argv = [
            sys.executable,
            "-P",
            "-m",
            "cachelink_agent",
            "--listen",
            f"{host}:{self.port}",
            "--verify-key-file",
            str(root / "verify.pem"),
            "--state-dir",
            str(root / "state"),
            "--run-dir",
            str(root / "run"),
            "--pool-dir",
            str(self.pool_dir),
            "--node-name",
            node,
            "--host-id",
            node,
            "--log-level",
            "WARNING",
            *(["--in-process"] if in_process else []),
        ]
        self.process = subprocess.Popen(argv, stderr=(root / "log").open("wb"))

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(self.node)

    def client(self) -> AgentClient:
        return AgentClient(self.url, self.token, timeout=60)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.pool_dir, ignore_errors=True)


async def init_link(prompt: Agent, decode: Agent, pairs: int) -> dict[str, float]:
    times = []
    async with prompt.client() as pc, decode.client() as dc:
        for index in range(pairs):
            started = time.perf_counter()
            spec = models.InstanceSpec(
                role="prompt", cluster_id=1000 + index, owner="bench", options=options(prompt.host)
            )
            created = await pc.put_instance(f"p{index}", spec)
            assert created.instance is not None
            await dc.put_instance(
                f"d{index}",
                models.InstanceSpec(
                    role="decoder", cluster_id=5000 + index, owner="bench", options=options(decode.host)
                ),
            )
            await dc.put_link(
                f"d{index}", 1000 + index, models.LinkSpec(remote_address=created.instance.listen_address)
            )
            times.append(time.perf_counter() - started)
            await dc.delete_instance(f"d{index}")
            await pc.delete_instance(f"p{index}")
    return {
        "p50_s": percentile(times, 0.5),
        "p99_s": percentile(times, 0.99),
        "mean_s": statistics.mean(times),
    }


async def memory(agent: Agent, count: int, in_process: bool) -> dict[str, float]:
    base = pss_kib(agent.process.pid)
    async with agent.client() as client:
        for index in range(count):
            await client.put_instance(
                f"m{index}",
                models.InstanceSpec(
                    role="prompt", cluster_id=index + 1, owner="bench", options=options(agent.host)
                ),
            )
        await asyncio.sleep(0.5)
        agent_pss = pss_kib(agent.process.pid)
        workers = sum(pss_kib(pid) for pid in children(agent.process.pid))
        per = (agent_pss - base) / count if in_process else (workers + agent_pss - base) / count
        throughput = await status_reads(agent, "m0")
        for index in range(count):
            await client.delete_instance(f"m{index}")
    return {
        "instances": count,
        "pss_per_instance_mib": per / 1024,
        "agent_pss_mib": agent_pss / 1024,
        "status_reads_per_s": throughput,
    }


async def status_reads(agent: Agent, name: str, seconds: float = 3.0, concurrency: int = 16) -> float:
    headers = {"Authorization": f"Bearer {agent.token}"}
    done = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers=headers) as session:

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.get(f"{agent.url}/v1/instances/{name}") as response:
                    await response.read()
                    assert response.status == 200
                done += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / seconds


def bandwidth(seconds: float, rounds: int) -> float:
    return rounds * BLOCKS * BLOCK * DESC.num_tensors / seconds / 1e9


PROMPT_SIDE = """
import json, sys
from llm_datadist import BlocksCacheKey, LLMDataDist, LLMRole
from llm_datadist.ext import hosting as ext
opts = json.loads(sys.argv[1])
dd = LLMDataDist(LLMRole.PROMPT, 1)
dd.init(opts)
from llm_datadist import CacheDesc, DataType
dd.cache_manager.allocate_blocks_cache(CacheDesc(2, [BLOCKS, HALF], DataType.DT_FLOAT16), BlocksCacheKey(1, 0))
print(ext.listen_address(dd), flush=True)
sys.stdin.read()
dd.finalize()
""".replace("BLOCKS", str(BLOCKS)).replace("HALF", str(BLOCK // 2))


def direct_pull(rounds: int) -> float:
    """The engine used directly, prompt and decode in two processes (as a workload would run them)."""
    pool_dir = tempfile.mkdtemp(prefix="cachelink-bench-", dir="/dev/shm")
    opts = options("127.0.0.2", 64 << 20)
    opts.update({"cachelink.pool_dir": pool_dir, "cachelink.pool_name": "bp", "cachelink.host_id": "bp"})
    server = subprocess.Popen(
        [sys.executable, "-P", "-c", PROMPT_SIDE, json.dumps(opts)],  # -P: see Agent
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    decode = ext.HostedDataDist(LLMRole.DECODER, 2)
    try:
        assert server.stdout is not None
        address = server.stdout.readline().strip()
        opts = options("127.0.0.3", 64 << 20)
        opts.update({"cachelink.pool_dir": pool_dir, "cachelink.pool_name": "bd", "cachelink.host_id": "bd"})
        decode.init(opts)
        info = LLMClusterInfo()
        info.remote_cluster_id = 1
        ip, port = address.split(":")
        info.append_local_ip_info("127.0.0.3", 0)
        info.append_remote_ip_info(ip, int(port))
        decode.link_clusters([info], 5000)
        dst = decode.cache_manager.allocate_blocks_cache(DESC, BlocksCacheKey(2, 0))
        blocks = list(range(BLOCKS))
        decode.cache_manager.pull_blocks(BlocksCacheKey(1, 0), dst, blocks, blocks)
        started = time.perf_counter()
        for _ in range(rounds):
            decode.cache_manager.pull_blocks(BlocksCacheKey(1, 0), dst, blocks, blocks)
        return bandwidth(time.perf_counter() - started, rounds)
    finally:
        decode.finalize()
        server.communicate("", timeout=30)
        shutil.rmtree(pool_dir, ignore_errors=True)


async def attached_pull(prompt: Agent, decode: Agent, rounds: int) -> float:
    async with prompt.client() as pc, decode.client() as dc:
        created = await pc.put_instance(
            "bwp",
            models.InstanceSpec(
                role="prompt", cluster_id=1, owner="bench", options=options(prompt.host, 64 << 20)
            ),
        )
        assert created.instance is not None
        await dc.put_instance(
            "bwd",
            models.InstanceSpec(
                role="decoder", cluster_id=2, owner="bench", options=options(decode.host, 64 << 20)
            ),
        )
        await dc.put_link("bwd", 1, models.LinkSpec(remote_address=created.instance.listen_address))

    def run() -> float:
        with attach(prompt.root / "run", "bwp") as pm, attach(decode.root / "run", "bwd") as dm:
            pm.allocate_blocks_cache(DESC, BlocksCacheKey(1, 0))
            dst = dm.allocate_blocks_cache(DESC, BlocksCacheKey(2, 0))
            blocks = list(range(BLOCKS))
            dm.pull_blocks(BlocksCacheKey(1, 0), dst, blocks, blocks)
            started = time.perf_counter()
            for _ in range(rounds):
                dm.pull_blocks(BlocksCacheKey(1, 0), dst, blocks, blocks)
            return bandwidth(time.perf_counter() - started, rounds)

    return await asyncio.to_thread(run)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=100, help="instance pairs made, linked and deleted")
    parser.add_argument("--memory-instances", type=int, default=20, help="instances whose memory is measured")
    parser.add_argument("--rounds", type=int, default=50, help="pulls of 64 blocks per bandwidth figure")
    parser.add_argument("--out", default=str(results.result_path("agent")), help="JSON file")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cachelink-bench-"))
    result: dict[str, object] = {"block_bytes": BLOCK, "blocks_per_pull": BLOCKS, "cpus": os.cpu_count()}
    try:
        direct = await asyncio.to_thread(direct_pull, args.rounds)
        result["direct_pull_gbps"] = direct
        for mode in ("worker", "in-process"):
            in_process = mode == "in-process"
            prompt = Agent(root / f"{mode}-p", "bench-p", "127.0.0.2", in_process)
            decode = Agent(root / f"{mode}-d", "bench-d", "127.0.0.3", in_process)
            try:
                await asyncio.gather(prompt.ready(), decode.ready())
                print(f"{mode}: init+link", file=sys.stderr)
                entry: dict[str, object] = {"init_link_pair": await init_link(prompt, decode, args.pairs)}
                entry["memory"] = await memory(prompt, args.memory_instances, in_process)
                entry["attach_pull_gbps"] = await attached_pull(prompt, decode, args.rounds)
                result[mode] = entry
            finally:
                prompt.stop()
                decode.stop()
        for mode in ("worker", "in-process"):
            entry = result[mode]
            assert isinstance(entry, dict)
            entry["attach_overhead_pct"] = 100 * (1 - entry["attach_pull_gbps"] / direct)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)
    print(results.write(args.out, result))


if __name__ == "__main__":
    asyncio.run(main())
