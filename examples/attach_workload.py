"""An inference engine on a decode node: attach to the operator's instance and pull a prompt's KV blocks.

    python examples/attach_workload.py /run/cachelink <instance> <prompt cluster id>

The first argument is where the pod's CSI volume (``driver: cachelink.io``, ``volumeAttributes:
{cachelink: NAME}``) is mounted, or the agent's run dir for a process on the node. The instance name and
the prompt's cluster id come from the pod's annotations (set by the operator).
"""

from __future__ import annotations

import sys

from cachelink_agent.attach import attach

from llm_datadist import BlocksCacheKey, CacheDesc, DataType


def main(run_dir: str, instance: str, prompt_cluster_id: int) -> None:
    desc = CacheDesc(4, [64, 8192], DataType.DT_FLOAT16)  # 64 blocks, 2 layers x (K, V)
    with attach(run_dir, instance) as cache_manager:
        kv = cache_manager.allocate_blocks_cache(desc)
        cache_manager.pull_blocks(BlocksCacheKey(prompt_cluster_id, 0), kv, [0, 1, 2], [5, 6, 7])
        print("first K block of layer 0:", kv.numpy(0)[5][:8])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
