"""``cachelink dev-cluster build|up|down|status|env``: the command line of the development cluster."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from cachelink_dev.devcluster.build import ensure_tools
from cachelink_dev.devcluster.cluster import DEFAULT_DATA_DIR, DevCluster, memory_summary
from cachelink_dev.devcluster.errors import DevClusterError

ACTIONS = ("build", "up", "down", "status", "env")


def add_parser(subparsers: Any) -> None:
    """Register the ``dev-cluster`` sub-command on the ``cachelink`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dev-cluster",
        help="a real local Kubernetes cluster (etcd, control plane, KWOK nodes) on loopback",
        description=__doc__,
    )
    parser.add_argument("action", choices=ACTIONS, help="build the tools, start, stop, inspect, or print env")
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help=f"where certificates, etcd data, logs and the kubeconfig live (default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--nodes", type=int, default=3, help="number of simulated nodes on first `up` (default 3)"
    )
    parser.add_argument(
        "--real-nodes",
        action="store_true",
        help="build: also the real nodes' container runtime (containerd 2.x; kubelet and kube-proxy always)",
    )
    parser.set_defaults(handler=run)


def _node_names(count: int) -> list[str]:
    return [f"node-{chr(ord('a') + i)}" if i < 26 else f"node-{i}" for i in range(count)]


def run(args: argparse.Namespace) -> int:
    """Carry out one ``dev-cluster`` action; returns the exit status."""
    try:
        return _run(args)
    except DevClusterError as exc:
        print(f"cachelink dev-cluster {args.action}: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.action == "build":
        tools = ensure_tools(real_nodes=args.real_nodes)
        for name, path in sorted(tools.paths.items()):
            print(f"{name:<24} {path}")
        return 0
    if not 1 <= args.nodes <= 200:
        raise DevClusterError("--nodes must be between 1 and 200 (each node gets 127.0.0.N)")
    cluster = DevCluster(args.data_dir, node_names=_node_names(args.nodes))
    if args.action == "up":
        cluster.up()
        print(f"export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}")
        return 0
    if args.action == "down":
        stopped = cluster.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if args.action == "env":
        print(f"export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}")
        if cluster.bin_dirs:
            print(f'export PATH={":".join(shlex.quote(d) for d in cluster.bin_dirs)}:"$PATH"')
        return 0
    status = cluster.status()
    for component in status.components:
        state = f"running (pid {component.pid})" if component.pid else "stopped"
        print(f"{component.name:<24} {state:<24} log: {component.log}")
    print(f"api server: {'ready at ' + cluster.server if status.apiserver_ready else 'not ready'}")
    print("nodes: " + ", ".join(f"{n.name}={n.ip}" for n in status.nodes))
    print(memory_summary(status))
    return 0 if status.running else 3
