"""``cachelink demo``: the whole product end to end, on a local Kubernetes cluster by default.

The cluster demo is part of the development tools (``cachelink_dev.demo.cluster``, the ``cachelink-dev``
distribution in ``devtools/``, which ``./dev`` installs; the runtime wheel and the image do not carry it).
It starts a local control plane with two real kubelet + containerd nodes, installs the Helm chart, has a
decode pod pull a 32-layer paged KV cache written by a prompt pod and verify every byte, runs a real model
as prefill and decode pods, finalizes the CacheLink and stops everything. ``--keep`` leaves it all running
and prints the KUBECONFIG to use (``--down`` stops it later). Only ``--kubeconfig`` makes the demo use
another cluster (where the chart must be installed); an exported ``KUBECONFIG`` never does.

``--engine-only`` runs just the engine, without a cluster or the development tools: a prompt process
allocates a blocks cache shaped like a 32-layer model's KV cache (K and V per layer), fills it, and
listens; the decode process links to it, pulls a shuffled block list over each data path (same-host
shared memory, then TCP), verifies every byte and prints what moved and how fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from cachelink.kvdemo.kvcache import KvShape, expected, fill

PROMPT_CLUSTER, DECODE_CLUSTER, MODEL_ID = 1, 2, 0


def _options(listen: str | None, shape: KvShape, force_tcp: bool) -> dict[str, str]:
    from llm_datadist import LLMConfig  # noqa: PLC0415 - imported in the child after spawn

    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.mem_pool_cfg = json.dumps({"memory_size": shape.cache_bytes + (16 << 20)})
    config.sync_kv_timeout = 60000
    if listen:
        config.listen_ip_info = listen
    options = config.generate_options()
    if force_tcp:
        options["cachelink.force_tcp"] = "1"
    return options


def _prompt_main(conn: Connection, shape: KvShape, force_tcp: bool) -> None:
    from llm_datadist import (  # noqa: PLC0415
        BlocksCacheKey,
        CacheDesc,
        DataType,
        LLMDataDist,
        LLMRole,
    )
    from llm_datadist.ext import hosting as ext  # noqa: PLC0415

    datadist = LLMDataDist(LLMRole.PROMPT, PROMPT_CLUSTER)
    datadist.init(_options("127.0.0.1:0", shape, force_tcp))
    desc = CacheDesc(shape.tensors, [shape.blocks, shape.block_elems], DataType.DT_FLOAT16)
    cache = datadist.cache_manager.allocate_blocks_cache(desc, BlocksCacheKey(PROMPT_CLUSTER, MODEL_ID))
    fill(cache, shape)
    conn.send(ext.listen_address(datadist))
    conn.recv()  # wait until the decode side is done
    datadist.finalize()


@dataclass(frozen=True)
class PathResult:
    """What one data path moved, and how fast."""

    path: str
    data_path: str
    link_ms: float
    bytes: int
    seconds: float

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9


def _run_path(label: str, shape: KvShape, force_tcp: bool) -> PathResult:
    from llm_datadist import (  # noqa: PLC0415
        BlocksCacheKey,
        CacheDesc,
        DataType,
        LLMClusterInfo,
        LLMDataDist,
        LLMRole,
        LLMStatusCode,
    )
    from llm_datadist.ext import hosting as ext  # noqa: PLC0415

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    prompt = ctx.Process(target=_prompt_main, args=(child, shape, force_tcp), name="prompt")
    prompt.start()
    try:
        address = parent.recv()
        decode = LLMDataDist(LLMRole.DECODER, DECODE_CLUSTER)
        decode.init(_options(None, shape, force_tcp))
        try:
            info = LLMClusterInfo()
            info.remote_cluster_id = PROMPT_CLUSTER
            info.append_local_ip_info("127.0.0.1", 0)
            ip, port = address.split(":")
            info.append_remote_ip_info(ip, int(port))
            started = time.perf_counter()
            status, per_cluster = decode.link_clusters([info], timeout=5000)
            link_ms = (time.perf_counter() - started) * 1000
            if status != LLMStatusCode.LLM_SUCCESS:
                raise SystemExit(f"link failed: {per_cluster}")
            manager = decode.cache_manager
            desc = CacheDesc(shape.tensors, [shape.blocks, shape.block_elems], DataType.DT_FLOAT16)
            local = manager.allocate_blocks_cache(desc)
            order = np.random.default_rng(0).permutation(shape.blocks).tolist()
            started = time.perf_counter()
            manager.pull_blocks(
                BlocksCacheKey(PROMPT_CLUSTER, MODEL_ID), local, order, list(range(shape.blocks))
            )
            seconds = time.perf_counter() - started
            for tensor in range(shape.tensors):
                want = expected(shape, tensor)[order]
                if not np.array_equal(local.numpy(tensor).view(np.uint16), want):
                    raise SystemExit(f"{label}: tensor {tensor} differs after the pull")
            data_path = ext.links(decode)[0].data_path
            decode.unlink_clusters([info])
        finally:
            decode.finalize()
    finally:
        parent.send("done")
        prompt.join(30)
    return PathResult(label, data_path, link_ms, shape.cache_bytes, seconds)


#: the cluster demo's module, in the development tools (``devtools/``); imported only when it runs
CLUSTER_DEMO = "cachelink_dev.demo.cluster"


def run_engine_only(args: argparse.Namespace) -> int:
    """The engine-only demo (two processes, no cluster); returns the exit status."""
    shape = KvShape(layers=args.layers, blocks=args.blocks)
    print(f"KV cache: {shape.describe()}")
    paths = {"same-host": False, "tcp": True}
    rows = [
        _run_path(label, shape, force_tcp)
        for label, force_tcp in paths.items()
        if args.path in ("both", label)
    ]
    print(
        f"{'path':<10} {'data path':<10} {'link ms':>8} {'MiB moved':>10} {'seconds':>8} {'GB/s':>7}"
        "  verified"
    )
    for row in rows:
        print(
            f"{row.path:<10} {row.data_path:<10} {row.link_ms:>8.1f} {row.bytes / 2**20:>10.0f} "
            f"{row.seconds:>8.3f} {row.gbps:>7.2f}  yes"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    """``cachelink demo``: the cluster demo, or the engine alone with ``--engine-only``."""
    if args.engine_only:
        return run_engine_only(args)
    try:
        cluster_demo = importlib.import_module(CLUSTER_DEMO)
    except ModuleNotFoundError as exc:
        if exc.name is None or not CLUSTER_DEMO.startswith(exc.name):
            raise
        print(
            "cachelink demo: the cluster demo is part of the development tools, which are not installed "
            "(in a checkout: ./dev demo, or pip install ./devtools); --engine-only runs without them",
            file=sys.stderr,
        )
        return 2
    result: int = cluster_demo.run(args)
    return result


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``cachelink demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole product end to end on a local Kubernetes cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        default=".cachelink/demo",
        help="where the demo's cluster, agents and logs live (default .cachelink/demo)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the cluster, the stack and the CacheLink running; prints the KUBECONFIG to use",
    )
    parser.add_argument("--down", action="store_true", help="stop what an earlier --keep left running")
    parser.add_argument(
        "--no-model",
        action="store_true",
        help="skip the stage where a real model (Gemma 3 270M) runs as prefill and decode pods",
    )
    parser.add_argument(
        "--kubeconfig",
        help="run on this existing cluster instead (the chart must be installed there); an exported "
        "KUBECONFIG is never used",
    )
    parser.add_argument("--prompt-node", default="node-a", help="with --kubeconfig: the prompt node")
    parser.add_argument("--decode-node", default="node-b", help="with --kubeconfig: the decode node")
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="no cluster: a prompt and a decode process move the KV cache over each data path",
    )
    parser.add_argument("--layers", type=int, default=32, help="model layers (default 32)")
    parser.add_argument("--blocks", type=int, default=64, help="KV blocks per tensor (default 64)")
    parser.add_argument(
        "--path",
        choices=["both", "same-host", "tcp"],
        default="both",
        help="with --engine-only: data paths to demonstrate (default both)",
    )
    parser.set_defaults(handler=run)
