"""``cachelink real-nodes build|up|down``: a development cluster whose nodes are real kubelets.

Root is required (Debian packages, containers, network namespaces, mounts, cgroups).

- ``build`` installs and builds what real nodes need, each step cached (the packages once, the tools by
  ``cachelink dev-cluster build``'s cache, the base image by its recipe, the product image by its context
  digest); ``--json FILE`` writes the time of each step.
- ``up`` runs ``build``, starts the control plane in ``--data-dir`` and joins ``--nodes`` real nodes
  (containerd, kubelet, kube-proxy each) with the product image loaded; prints the ``KUBECONFIG``.
- ``down`` removes the nodes (every process, container, mount, namespace and cgroup) and stops the
  control plane.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cachelink_dev.devcluster.build import ensure_tools, hack_dir
from cachelink_dev.devcluster.cluster import DevCluster
from cachelink_dev.devcluster.errors import DevClusterError
from cachelink_dev.realnodes.cluster import RealNodes
from cachelink_dev.realnodes.images import BaseImage, PauseImage, ProductImage
from cachelink_dev.realnodes.model_image import ModelImage

DEFAULT_DATA_DIR = Path(".cachelink/real-cluster")


def add_parser(subparsers: Any) -> None:
    """Register the ``real-nodes`` sub-command on the ``cachelink`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "real-nodes",
        help="real kubelet + containerd nodes: install and build what they need (root)",
        description=__doc__,
    )
    parser.add_argument("action", choices=("build", "up", "down"), help="what to do")
    parser.add_argument("--source", default=".", help="the repository to build the image from (default .)")
    parser.add_argument(
        "--data-dir", default=str(DEFAULT_DATA_DIR), help=f"the cluster's files (default {DEFAULT_DATA_DIR})"
    )
    parser.add_argument("--nodes", default="real-a,real-b", help="node names, comma-separated")
    parser.add_argument("--json", help="write the time of each step to this JSON file")
    parser.set_defaults(handler=run)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Carry out one ``real-nodes`` action; returns the exit status."""
    try:
        if args.action == "down":
            cluster = DevCluster(args.data_dir, node_names=())
            RealNodes(cluster, recorded_nodes(cluster)).down()
            cluster.down()
            return 0
        steps = build(Path(args.source).resolve())
        if args.action == "up":
            nodes = up(Path(args.data_dir), args.nodes.split(","), str(steps["image"]))
            print(f"export KUBECONFIG={nodes.cluster.kubeconfig}  # image {steps['image']}")
            return 0
    except DevClusterError as exc:
        print(f"cachelink real-nodes {args.action}: error: {exc}", file=sys.stderr)
        return 1
    times = {name: value for name, value in steps.items() if isinstance(value, float)}
    for name, seconds in times.items():
        print(f"{name:<28} {seconds:7.1f} s")
    if args.json:
        record = {
            "steps_s": {name: round(seconds, 2) for name, seconds in times.items()},
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def recorded_nodes(cluster: DevCluster) -> list[str]:
    """The real nodes that have folders in the cluster's data directory."""
    folder = cluster.data_dir / "nodes"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def up(data_dir: Path, names: list[str], image: str) -> RealNodes:
    """The control plane (no simulated nodes) and ``names`` as real nodes with ``image`` loaded."""
    cluster = DevCluster(data_dir, node_names=()).up()
    return RealNodes(cluster, names, images=[image]).up()


def build(source: Path) -> dict[str, float | str]:
    """Every set-up step of real nodes, in order; returns seconds per step (and the references of the
    product and model images: ``image``, ``model_image``)."""
    if os.geteuid() != 0:
        raise DevClusterError("real nodes need root (packages, containers, network namespaces, mounts)")
    if not (source / "Dockerfile").is_file():
        raise DevClusterError(f"{source} has no Dockerfile: pass the repository with --source")
    steps: dict[str, float | str] = {}
    started = time.monotonic()
    script = hack_dir().parent / "hack" / "install-node-packages.sh"
    script = script if script.is_file() else source / "hack" / "install-node-packages.sh"
    if subprocess.run(["bash", str(script)], check=False).returncode != 0:
        raise DevClusterError(f"installing the Debian packages failed ({script})")
    steps["debian packages"] = time.monotonic() - started
    started = time.monotonic()
    ensure_tools(_log, real_nodes=True)
    steps["tools (kubelet, containerd)"] = time.monotonic() - started
    started = time.monotonic()
    base = BaseImage().ensure(_log)
    steps["base image"] = time.monotonic() - started
    started = time.monotonic()
    ref = ProductImage(source).ensure(base, _log)
    steps["product image"] = time.monotonic() - started
    _log(f"==> product image: {ref}")
    steps["image"] = ref
    started = time.monotonic()
    PauseImage().ensure(_log)
    steps["pause image"] = time.monotonic() - started
    started = time.monotonic()
    steps["model_image"] = ModelImage().ensure(ref, _log)
    steps["model image"] = time.monotonic() - started
    return steps
