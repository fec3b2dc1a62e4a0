"""``examples/attach_workload.py``, run unchanged as the decode pod's workload, pulls the prompt's blocks.

The operator links a prefill and a decode Deployment; a writer in the prefill pod fills
``BlocksCacheKey(prompt cluster id, 0)``; the example, given what the decode pod's annotations say (its
instance and attach socket) and the prompt's cluster id, pulls blocks 0-2 into 5-7 and prints block 5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cachelink_e2e_operator import OperatorEnv, Workload, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "attach_workload.py"

_WRITER = r"""
import json, os, sys
import numpy as np
from cachelink_agent.attach import attach
from llm_datadist import BlocksCacheKey, CacheDesc, DataType
socket_path = sys.argv[1]
desc = CacheDesc(4, [64, 8192], DataType.DT_FLOAT16)  # the example's cache
with attach(os.path.dirname(socket_path), os.path.basename(socket_path)[: -len(".sock")]) as cm:
    cache = cm.allocate_blocks_cache(desc, BlocksCacheKey(cm.cluster_id, 0))
    rng = np.random.default_rng(7)
    for i in range(desc.num_tensors):
        cache.numpy(i)[:] = rng.standard_normal(cache.numpy(i).shape).astype(np.float16)
    print(json.dumps({"cluster_id": cm.cluster_id, "block0": str(cache.numpy(0)[0][:8])}), flush=True)
    sys.stdin.readline()
"""


def annotated_pod(env: OperatorEnv, namespace: str, app: str) -> dict[str, Any] | None:
    pods = [p for p in env.pods(namespace, f"app={app}") if p["status"].get("phase") == "Running"]
    if len(pods) == 1 and "cachelink.io/attach-socket" in (pods[0]["metadata"].get("annotations") or {}):
        return pods[0]
    return None


def test_attach_workload_example_pulls_the_prompt_blocks(operator_env: OperatorEnv, namespace: str) -> None:
    env = operator_env
    env.apply(
        env.deployment(namespace, "prefill", 1, cachelink="kv"),
        env.deployment(namespace, "decode", 1, cachelink="kv"),
    )
    env.apply(
        {
            "apiVersion": "cachelink.io/v1alpha1",
            "kind": "CacheLink",
            "metadata": {"name": "kv", "namespace": namespace},
            "spec": {
                "prompt": {"podSelector": {"matchLabels": {"app": "prefill"}}},
                "decode": {"podSelector": {"matchLabels": {"app": "decode"}}},
                "options": {"memPoolSizeBytes": 16 << 20},
            },
        }
    )
    env.wait_cachelink(
        namespace, "kv", lambda o: (o.get("status") or {}).get("phase") == "Ready", "Ready", 120
    )
    prompt_pod = wait_for(lambda: annotated_pod(env, namespace, "prefill"), 120, "the prefill pod annotated")
    decode_pod = wait_for(lambda: annotated_pod(env, namespace, "decode"), 120, "the decode pod annotated")
    p_ann, d_ann = prompt_pod["metadata"]["annotations"], decode_pod["metadata"]["annotations"]

    writer, reader = Workload(env, prompt_pod), Workload(env, decode_pod)
    process = writer.spawn(["python", "-c", _WRITER, writer.socket_path])
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, process.communicate(timeout=30)[1]
        wrote = json.loads(line)
        assert wrote["cluster_id"] == int(p_ann["cachelink.io/cluster-id"])

        # exactly the example's program (read from stdin) and command line, with what the decode pod's
        # annotations say, the socket folder being where the pod mounts its CSI volume
        run_dir = str(Path(reader.socket_path).parent)
        example = reader.spawn(
            ["python", "-", run_dir, d_ann["cachelink.io/instance"], str(wrote["cluster_id"])]
        )
        out, err = example.communicate(EXAMPLE.read_text(), timeout=120)
        assert example.returncode == 0, err
        assert out.strip() == f"first K block of layer 0: {wrote['block0']}", out
    finally:
        writer.process = process
        writer.close()
        reader.close()
