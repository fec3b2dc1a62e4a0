"""A stand-in inference engine: attaches to an instance's socket and writes or pulls a paged KV cache.

    python -m cachelink.kvdemo.workload write SOCKET --layers 32 --blocks 64
    python -m cachelink.kvdemo.workload pull SOCKET --peer-cluster-id N --layers 32 --blocks 64

``write`` (prompt side) fills ``BlocksCacheKey(own cluster id, 0)``, prints one JSON line and keeps the
cache until a line arrives on stdin; ``pull`` (decode side) pulls every block in a shuffled order,
verifies every byte and prints one JSON line: bytes, seconds, the tensors that differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cachelink_agent.attach import attach

from cachelink.kvdemo.kvcache import KvShape, fill, mismatches, shuffled_blocks
from llm_datadist import BlocksCacheKey, CacheDesc, DataType

MODEL_ID = 0


def _desc(shape: KvShape) -> CacheDesc:
    return CacheDesc(shape.tensors, [shape.blocks, shape.block_elems], DataType.DT_FLOAT16)


def _instance(socket: str) -> tuple[Path, str]:
    path = Path(socket)
    return path.parent, path.name.removesuffix(".sock")


def write(socket: str, shape: KvShape) -> int:
    """Prompt side: fill the cache, report, hold it until stdin says so."""
    run_dir, name = _instance(socket)
    with attach(run_dir, name) as manager:
        cache = manager.allocate_blocks_cache(_desc(shape), BlocksCacheKey(manager.cluster_id, MODEL_ID))
        started = time.perf_counter()
        fill(cache, shape)
        print(
            json.dumps(
                {
                    "cluster_id": manager.cluster_id,
                    "bytes": shape.cache_bytes,
                    "fill_s": time.perf_counter() - started,
                }
            ),
            flush=True,
        )
        sys.stdin.readline()
    return 0


def pull(socket: str, peer: int, shape: KvShape) -> int:
    """Decode side: pull every block of the peer's cache (shuffled), verify every byte, report."""
    run_dir, name = _instance(socket)
    with attach(run_dir, name, timeout=120.0) as manager:
        cache = manager.allocate_blocks_cache(_desc(shape))
        order = shuffled_blocks(shape)
        started = time.perf_counter()
        manager.pull_blocks(BlocksCacheKey(peer, MODEL_ID), cache, order, list(range(shape.blocks)))
        seconds = time.perf_counter() - started
        bad = mismatches(cache, shape, order)
        print(
            json.dumps(
                {
                    "cluster_id": manager.cluster_id,
                    "bytes": shape.cache_bytes,
                    "seconds": seconds,
                    "mismatched_tensors": bad,
                    "tensors": shape.tensors,
                }
            ),
            flush=True,
        )
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """Command line of the workload."""
    parser = argparse.ArgumentParser(prog="python -m cachelink.kvdemo.workload", description=__doc__)
    parser.add_argument("mode", choices=["write", "pull"])
    parser.add_argument("socket", help="the instance's attach socket")
    parser.add_argument("--peer-cluster-id", type=int, default=0, help="pull: the prompt's cluster id")
    parser.add_argument("--layers", type=int, default=KvShape.layers)
    parser.add_argument("--blocks", type=int, default=KvShape.blocks)
    args = parser.parse_args(argv)
    shape = KvShape(layers=args.layers, blocks=args.blocks)
    if args.mode == "write":
        return write(args.socket, shape)
    return pull(args.socket, args.peer_cluster_id, shape)


if __name__ == "__main__":
    sys.exit(main())
