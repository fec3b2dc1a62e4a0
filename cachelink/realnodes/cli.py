"""``cachelink real-nodes build``: install and build what real nodes need, with the time of each step.

Root is required (Debian packages, and later containers, network namespaces and mounts). Every step is
cached: the packages are installed once, the tools by ``cachelink dev-cluster build``'s cache, the base
image by its recipe, the product image by its context digest. ``--json FILE`` writes the step times.
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

from cachelink.devcluster.build import ensure_tools, hack_dir
from cachelink.devcluster.errors import DevClusterError
from cachelink.realnodes.images import BaseImage, PauseImage, ProductImage


def add_parser(subparsers: Any) -> None:
    """Register the ``real-nodes`` sub-command on the ``cachelink`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "real-nodes",
        help="real kubelet + containerd nodes: install and build what they need (root)",
        description=__doc__,
    )
    parser.add_argument("action", choices=("build",), help="install packages, build tools and images")
    parser.add_argument("--source", default=".", help="the repository to build the image from (default .)")
    parser.add_argument("--json", help="write the time of each step to this JSON file")
    parser.set_defaults(handler=run)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Carry out one ``real-nodes`` action; returns the exit status."""
    try:
        steps = build(Path(args.source).resolve())
    except DevClusterError as exc:
        print(f"cachelink real-nodes {args.action}: error: {exc}", file=sys.stderr)
        return 1
    for name, seconds in steps.items():
        print(f"{name:<28} {seconds:7.1f} s")
    if args.json:
        record = {
            "steps_s": {name: round(seconds, 2) for name, seconds in steps.items()},
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def build(source: Path) -> dict[str, float]:
    """Every set-up step of real nodes, in order; returns seconds per step."""
    if os.geteuid() != 0:
        raise DevClusterError("real nodes need root (packages, containers, network namespaces, mounts)")
    if not (source / "Dockerfile").is_file():
        raise DevClusterError(f"{source} has no Dockerfile: pass the repository with --source")
    steps: dict[str, float] = {}
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
    started = time.monotonic()
    PauseImage().ensure(_log)
    steps["pause image"] = time.monotonic() - started
    return steps
