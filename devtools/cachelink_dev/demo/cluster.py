"""The cluster demo (``cachelink demo``): the whole product end to end on a Kubernetes cluster.

By default on a local cluster of real nodes (:mod:`cachelink_dev.demo.real`); with ``--kubeconfig`` on an
existing cluster where the chart is installed (:func:`run_external`); ``--down`` stops what ``--keep`` left
running.
This module holds what both share: the sample objects, the progress lines, the entry point. Only
``--kubeconfig`` points the demo at another cluster; an exported ``KUBECONFIG`` is never used.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cachelink.kvdemo.kvcache import KvShape
from cachelink_dev.demo.report import summary
from cachelink_dev.demo.watch import CACHELINK, Watch, is_ready
from cachelink_dev.release import resources
from cachelink_dev.release.kube import Kube, KubeError

DEFAULT_DATA_DIR = Path(".cachelink/demo")
NODES = ("node-a", "node-b")


def say(line: str) -> None:
    """Print one progress line now (a closed stdout never stops the demo, nor its clean-up)."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


def resolve_kubeconfig(args: argparse.Namespace) -> Path | None:
    """The external cluster's kubeconfig: only an explicit ``--kubeconfig`` (``KUBECONFIG`` is ignored)."""
    return Path(args.kubeconfig).resolve() if args.kubeconfig else None


# ------------------------------------------------------------------------------------------ samples


def sample_objects(
    prompt_node: str, decode_node: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The sample CacheLinkPolicy, the demo namespace and the demo CacheLink (nodes substituted)."""
    (policy,) = resources.load_documents("demo-cachelinkpolicy.yaml")
    namespace, cachelink = resources.load_documents("demo-cachelink.yaml")
    cachelink["spec"]["prompt"]["nodeNames"] = [prompt_node]
    cachelink["spec"]["decode"]["nodeNames"] = [decode_node]
    return policy, namespace, cachelink


# ---------------------------------------------------------------------------------- the local demo


def _quiet(_line: str) -> None:
    """Discard a progress line."""


def down(data_dir: Path) -> int:
    """``--down``: stop what ``--keep`` left running in ``data_dir``."""
    from cachelink_dev.devcluster import DevCluster  # noqa: PLC0415
    from cachelink_dev.realnodes.cli import recorded_nodes  # noqa: PLC0415
    from cachelink_dev.realnodes.cluster import RealNodes  # noqa: PLC0415

    stopped: list[str] = []
    if (data_dir / "cluster").is_dir():
        cluster = DevCluster(data_dir / "cluster", node_names=(), log=_quiet)
        real = recorded_nodes(cluster)
        if real:
            RealNodes(cluster, real, log=_quiet).down()
            stopped += [f"real node {name}" for name in real]
        stopped += cluster.down()
    say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


# ------------------------------------------------------------------------------- an external cluster


def run_external(args: argparse.Namespace, kubeconfig: Path) -> int:
    """The demo on the cluster of ``--kubeconfig``: the chart must be installed there (agents, operator).

    Applies the CRDs if missing, the sample policy and a CacheLink between ``--prompt-node`` and
    ``--decode-node``, waits until Ready and prints the links; no transfer (a workload must run on the
    node; see examples/attach_workload.py). Removes what it created unless ``--keep``.
    """
    kube = Kube(kubectl_binary(), kubeconfig)
    say(f"CacheLink demo on the cluster of {kubeconfig} (expects the chart installed: agents, operator)")
    missing = [crd for crd in resources.CRD_NAMES if kube.get("crd", crd) is None]
    if missing:
        say(f"==> CRDs: {', '.join(missing)}")
        kube.apply(*[c for c in resources.crds() if c["metadata"]["name"] in missing], server_side=True)
        kube.wait_crds_established(missing)
    policy, namespace_obj, cachelink = sample_objects(args.prompt_node, args.decode_node)
    namespace, name = cachelink["metadata"]["namespace"], cachelink["metadata"]["name"]
    created = [
        (kind, obj["metadata"]["name"])
        for kind, obj in (("cachelinkpolicies.cachelink.io", policy), ("namespace", namespace_obj))
        if kube.get(kind, obj["metadata"]["name"]) is None
    ]
    if ("cachelinkpolicies.cachelink.io", policy["metadata"]["name"]) in created:
        kube.apply(policy)
    if ("namespace", namespace) in created:
        kube.apply(namespace_obj)
    say(f"==> CacheLink {namespace}/{name}: prompt on {args.prompt_node}, decode on {args.decode_node}")
    kube.apply(cachelink)
    watch = Watch(kube, namespace, name, log=say)
    applied = time.monotonic()
    obj = watch.until(lambda o: o is not None and is_ready(o), 300, "to be Ready")
    say("")
    say(summary(obj, time.monotonic() - applied, None))
    say("(no transfer: a workload must run on the decode node; see examples/attach_workload.py)")
    if args.keep:
        say(
            "==> left running (--keep): "
            f"kubectl --kubeconfig {shlex.quote(str(kubeconfig))} get cachelinks -A"
        )
        return 0
    say(f"==> deleting CacheLink {namespace}/{name}; the operator finalizes it")
    kube.kubectl("delete", CACHELINK, name, "-n", namespace, "--wait=false")
    watch.until(lambda o: o is None, 120, "to be finalized and gone")
    say("==> finalized: CacheLink gone (the operator removed its finalizer after deleting the instances)")
    for kind, created_name in created:
        kube.kubectl("delete", kind, created_name, "--wait=false", check=False)
    return 0


# -------------------------------------------------------------------------------------- entry point


def run(args: argparse.Namespace) -> int:
    """``cachelink demo`` (cluster mode); returns the exit status."""
    data_dir = Path(args.data_dir).resolve()
    external = resolve_kubeconfig(args)
    try:
        if args.down:
            return down(data_dir)
        if external is not None:
            return run_external(args, external)
        shape = KvShape(layers=args.layers, blocks=args.blocks)
        from cachelink_dev.demo.real import run_real  # noqa: PLC0415 - real nodes' imports are heavier

        return run_real(data_dir, shape, keep=args.keep, source=Path.cwd(), model=not args.no_model)
    except (KubeError, TimeoutError, RuntimeError, OSError) as exc:
        print(f"cachelink demo: error: {exc}", file=sys.stderr)
        if external is None and not args.down:
            print(f"cachelink demo: the logs are under {data_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cachelink demo: interrupted; what it started was stopped", file=sys.stderr)
        return 130


def kept_hint(data_dir: Path, kubeconfig: Path) -> str:
    """What to run after ``--keep``."""
    stop = f"cachelink demo --down --data-dir {shlex.quote(str(data_dir))}"
    return (
        "==> left running (--keep). Use it with kubectl:\n"
        f"    export KUBECONFIG={shlex.quote(str(kubeconfig))}\n"
        "    kubectl get cachelinks -A\n"
        f"==> stop it with: {stop}"
    )


def kubectl_binary() -> Path:
    """kubectl for an external cluster: the one on PATH, else the dev cluster's (built on first use)."""
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    from cachelink_dev.devcluster import ensure_tools  # noqa: PLC0415

    return ensure_tools(log=say).kubectl
