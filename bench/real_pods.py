"""The product on real nodes, timed: set-up steps, apply -> Ready, and KV-cache pulls between two real pods.

    .venv/bin/python bench/real_pods.py [--layers 32] [--blocks 64] [--runs 3]    # as root

Writes ``bench/results/real_pods.json`` (not run in CI). Needs root; everything it starts is removed.

1. **Set-up steps**, each timed as it ran now (a cached step takes its check's time; the report says which
   were cached): the Debian packages, the kubelet/kube-proxy/containerd builds, the Debian base image, the
   product image (``Dockerfile``), the pause image (:func:`cachelink_dev.realnodes.cli.build`); then the control
   plane, two real nodes Ready (the product image loaded into each node's containerd), and
   ``helm upgrade --install --wait`` of the chart with its defaults (two operator replicas, agents in worker
   mode with the CSI plugin) and only the image named.
2. **apply -> Ready**, as a user applies: two workload pods (Pod Security ``restricted``, the CacheLink's
   CSI volume) and the CacheLink selecting them, in one ``kubectl apply``; the time until the CacheLink is
   Ready and until both pods run. Once with both pods on one node (the link takes shared memory), once
   across the two nodes (TCP, authenticated).
3. **Transfers** between the two pods of each CacheLink: a prompt workload writes a paged KV cache
   (``--layers`` x ``--blocks``) through its instance, a decode workload pulls every block and verifies every
   byte (``kubectl exec`` into the pods); the pull is timed inside the decode pod. ``--runs`` pulls each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import results
from benchlib.stats import rounded

from cachelink.kvdemo.kvcache import KvShape
from cachelink_dev.demo.pods import restricted_pod
from cachelink_dev.demo.real import in_pod
from cachelink_dev.demo.transfer import transfer
from cachelink_dev.demo.watch import is_ready
from cachelink_dev.devcluster import DevCluster
from cachelink_dev.procs import wait_for
from cachelink_dev.realnodes.cli import build
from cachelink_dev.realnodes.cluster import RealNodes
from cachelink_dev.realnodes.product import Product, live

BENCH = "real_pods"
ROOT = Path(__file__).resolve().parents[1]
NODES = ("node-a", "node-b")
NAMESPACE = "bench-pods"
#: a step that took less than this was found in its cache, not done
CACHED_BELOW_S = 5.0
#: the placements measured: (prompt node, decode node) of each CacheLink
PLACEMENTS = {"same-node": (NODES[0], NODES[0]), "cross-node": (NODES[0], NODES[1])}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _objects(name: str, prompt_node: str, decode_node: str, image: str) -> list[dict[str, Any]]:
    """The CacheLink ``name`` and its two workload pods, pinned to their nodes."""
    labels = {"prompt": {"app": f"{name}-prompt"}, "decode": {"app": f"{name}-decode"}}
    cachelink = {
        "apiVersion": "cachelink.io/v1alpha1",
        "kind": "CacheLink",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "prompt": {"podSelector": {"matchLabels": labels["prompt"]}},
            "decode": {"podSelector": {"matchLabels": labels["decode"]}},
            "options": {"memPoolSizeBytes": 512 << 20},
        },
    }
    return [
        cachelink,
        restricted_pod(f"{name}-prompt", NAMESPACE, prompt_node, labels["prompt"], image, name),
        restricted_pod(f"{name}-decode", NAMESPACE, decode_node, labels["decode"], image, name),
    ]


def _apply_until_ready(product: Product, name: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the CacheLink and its pods at once; times to Ready and to both pods running."""
    kube = product.kube
    started = time.monotonic()
    kube.apply(*objects)

    def cachelink_ready() -> dict[str, Any] | None:
        found = kube.get("cachelinks.cachelink.io", name, "-n", NAMESPACE)
        return found if found is not None and is_ready(found) else None

    obj = wait_for(cachelink_ready, 300, f"CacheLink {name} Ready", interval=0.05)
    ready_s = time.monotonic() - started
    pods = [o["metadata"]["name"] for o in objects if o["kind"] == "Pod"]

    def running() -> bool:
        found = live(kube.get("pods", "-n", NAMESPACE)["items"])
        return {p["metadata"]["name"] for p in found} >= set(pods)

    wait_for(running, 300, f"the pods of {name} running", interval=0.05)
    (link,) = obj["status"]["links"]
    return {
        "apply_to_ready_s": rounded(ready_s),
        "apply_to_pods_running_s": rounded(time.monotonic() - started),
        "data_path": link.get("dataPath"),
        "link": link,
    }


def _pulls(product: Product, name: str, link: dict[str, Any], shape: KvShape, runs: int) -> dict[str, Any]:
    """``runs`` verified pulls from the prompt pod's cache into the decode pod's."""
    kube = product.kube
    pods = {role: kube.get("pod", f"{name}-{role}", "-n", NAMESPACE) for role in ("prompt", "decode")}
    sockets = {
        role: f"/run/cachelink/{pod['metadata']['annotations']['cachelink.io/instance']}.sock"
        for role, pod in pods.items()
    }
    seconds, moved = [], 0
    for _ in range(runs):
        done = transfer(
            sockets["prompt"], sockets["decode"], link["promptClusterId"], shape, log=_log,
            prompt_node=in_pod(kube, NAMESPACE, f"{name}-prompt"),
            decode_node=in_pod(kube, NAMESPACE, f"{name}-decode"),
        )  # fmt: skip
        if not done.verified:
            raise RuntimeError(f"{name}: the pulled KV cache differs from what the prompt pod wrote")
        seconds.append(done.seconds)
        moved = done.bytes
    return {
        "bytes": moved,
        "pull_s": [rounded(s, 4) for s in seconds],
        "pull_median_s": rounded(statistics.median(seconds), 4),
        "gbps_median": rounded(moved / statistics.median(seconds) / 1e9, 3),
        "gbps_best": rounded(moved / min(seconds) / 1e9, 3),
        "nodes": {role: pod["spec"]["nodeName"] for role, pod in pods.items()},
    }


def _timed(steps: dict[str, Any], name: str, func: Any) -> Any:
    started = time.monotonic()
    result = func()
    steps[name] = rounded(time.monotonic() - started, 1)
    _log(f"==> {name}: {steps[name]} s")
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement; the report's body."""
    build_steps = build(ROOT)
    image = str(build_steps.pop("image"))
    build_steps.pop("model_image")
    steps: dict[str, Any] = {name: rounded(float(s), 1) for name, s in build_steps.items()}
    cached = sorted(name for name, s in steps.items() if s < CACHED_BELOW_S)
    shape = KvShape(layers=args.layers, blocks=args.blocks)
    report: dict[str, Any] = {"image": image, "kv_cache": shape.describe()}
    with tempfile.TemporaryDirectory(prefix="cachelink-real-pods-") as tmp:
        cluster = DevCluster(Path(tmp) / "cluster", node_names=(), log=_log)
        nodes = RealNodes(cluster, NODES, images=[image], log=_log)
        product = Product(nodes, image)
        try:
            _timed(steps, "control plane", cluster.up)
            _timed(steps, "real nodes Ready (image loaded into each)", nodes.up)
            _timed(steps, "helm install --wait", product.install)
            product.kube.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": NAMESPACE,
                        "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                    },
                }
            )
            placements: dict[str, Any] = {}
            for label, (prompt_node, decode_node) in PLACEMENTS.items():
                objects = _objects(label, prompt_node, decode_node, image)
                measured = _apply_until_ready(product, label, objects)
                link = measured.pop("link")
                measured["pulls"] = _pulls(product, label, link, shape, args.runs)
                placements[label] = measured
                _log(f"==> {label}: {measured}")
            report["placements"] = placements
        finally:
            nodes.down()
            cluster.down()
    report["setup_steps_s"] = steps
    report["setup_steps_cached"] = cached
    return report


def main() -> int:
    """Measure, print the JSON report and write it to ``--out``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=32, help="model layers of the KV cache (default 32)")
    parser.add_argument("--blocks", type=int, default=64, help="KV blocks per tensor (default 64)")
    parser.add_argument("--runs", type=int, default=3, help="pulls per placement (default 3)")
    parser.add_argument("--out", default=str(results.result_path(BENCH)), help="JSON file")
    args = parser.parse_args()
    started = datetime.now(UTC)
    body = run(args)
    report = {
        "benchmark": BENCH,
        "command": results.command(),
        "date": started.isoformat(timespec="seconds"),
        "duration_s": rounded((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": results.machine(),
        **body,
        "notes": [
            f"setup steps under {CACHED_BELOW_S:g} s were found in their cache (setup_steps_cached); a cold "
            "machine builds them (see docs/real-nodes.md for cold figures)",
            "pull seconds are measured inside the decode pod around pull_blocks of every block (shuffled), "
            "before verification; kubectl exec and the write are not in them",
            "the 2-core machine also runs the control plane, two kubelets, containerds and kube-proxies, "
            "two agents and two operator replicas",
        ],
    }
    print(results.write(args.out, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
