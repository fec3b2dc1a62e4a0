"""The demo on real nodes (``cachelink demo``, as root): the chart's pods and the workloads are containers.

Builds what real nodes need (Debian packages, kubelet, kube-proxy and containerd from source, a Debian
base image and the product image from the unchanged ``Dockerfile``; all cached), starts the control plane
and two real nodes (:mod:`cachelink_dev.realnodes`), installs the chart with ``helm upgrade --install --wait``
(two operator replicas, agents in worker mode, the CSI node plugin), then a prompt pod on ``node-a`` and a
decode pod on ``node-b`` under Pod Security ``restricted``, each with the CSI volume of the demo's
CacheLink. The CacheLink selects the two pods; once Ready, the prompt pod writes a paged KV cache through
its instance and the decode pod pulls and verifies every byte (``kubectl exec`` into the pods). Then a real
model's KV cache crosses a second CacheLink between a prefill and a decode server pod
(:mod:`cachelink_dev.demo.inference`). The CacheLink is deleted and finalized. Prints which node and container
each part runs in.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

from cachelink.kvdemo.kvcache import KvShape
from cachelink_dev.demo import inference as demo_inference
from cachelink_dev.demo.cluster import kept_hint, sample_objects, say
from cachelink_dev.demo.pods import ATTACH_DIR, restricted_pod
from cachelink_dev.demo.report import summary
from cachelink_dev.demo.transfer import Wrap, transfer
from cachelink_dev.demo.watch import CACHELINK, Watch, is_ready
from cachelink_dev.devcluster import DevCluster
from cachelink_dev.devcluster.errors import DevClusterError
from cachelink_dev.procs import wait_for
from cachelink_dev.realnodes.cli import build
from cachelink_dev.realnodes.cluster import RealNodes
from cachelink_dev.realnodes.product import Product
from cachelink_dev.release.kube import Kube

NODES = ("node-a", "node-b")
RELEASE_NAMESPACE = "cachelink-system"
#: where the workload pods mount their CacheLink's CSI volume
#: the workload pods' labels; the demo's CacheLink selects them
PREFILL_LABELS = {"app": "demo-prefill"}
DECODE_LABELS = {"app": "demo-decode"}
READY_TIMEOUT_S = 240.0
HELM_TIMEOUT_S = 300


def demo_objects(image: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The sample policy, the namespace (Pod Security ``restricted`` enforced), the CacheLink selecting the
    two workload pods, and those pods."""
    policy, namespace, cachelink = sample_objects(*NODES)
    namespace = copy.deepcopy(namespace)
    namespace["metadata"].setdefault("labels", {})["pod-security.kubernetes.io/enforce"] = "restricted"
    cachelink = copy.deepcopy(cachelink)
    cachelink["spec"]["prompt"] = {"podSelector": {"matchLabels": PREFILL_LABELS}}
    cachelink["spec"]["decode"] = {"podSelector": {"matchLabels": DECODE_LABELS}}
    ns, link = namespace["metadata"]["name"], cachelink["metadata"]["name"]
    pods = [
        restricted_pod("demo-prefill", ns, NODES[0], PREFILL_LABELS, image, link),
        restricted_pod("demo-decode", ns, NODES[1], DECODE_LABELS, image, link),
    ]
    return policy, namespace, cachelink, pods


def in_pod(kube: Kube, namespace: str, pod: str) -> Wrap:
    """Run a workload command inside the pod's container (``kubectl exec -i``), with the image's Python."""

    def wrap(argv: list[str]) -> list[str]:
        python_args = argv[1:]  # drop this machine's interpreter; -P -m MODULE ... stays
        return [str(kube.kubectl_path), f"--kubeconfig={kube.kubeconfig}", "exec", "-i", "-n", namespace,
                pod, "--", "python", *python_args]  # fmt: skip

    return wrap


def where_each_part_runs(kube: Kube, namespaces: list[str]) -> list[str]:
    """One line per container of the product and the workloads: pod, node, containerd id."""
    lines = []
    for namespace in namespaces:
        for pod in kube.get("pods", "-n", namespace)["items"]:
            if pod["metadata"].get("deletionTimestamp"):
                continue  # a replica of an earlier rollout, going away
            for status in pod["status"].get("containerStatuses") or []:
                runtime_id = status.get("containerID", "")
                where = f"{namespace}/{pod['metadata']['name']}"
                node = pod["spec"].get("nodeName", "?")
                lines.append(f"    {where:<46} node {node:<7} {status['name']:<9} {runtime_id[:26]}")
    return lines


def run_real(data_dir: Path, shape: KvShape, keep: bool, source: Path, model: bool = True) -> int:
    """The demo on real nodes in ``data_dir``; removes everything unless ``keep``."""
    begun = time.monotonic()
    if os.geteuid() != 0:
        raise DevClusterError(
            "the demo runs the chart on real nodes (containers, network namespaces, mounts): run it as root"
        )
    say(f"CacheLink demo on real kubelet + containerd nodes (data: {data_dir}); root required")
    say(f"KV cache: {shape.describe()}")
    say("==> building what real nodes need (cached): packages, kubelet/containerd, base and product images")
    steps = build(source)
    image = str(steps["image"])
    model_image = str(steps["model_image"]) if model else None
    cluster = DevCluster(data_dir / "cluster", node_names=(), log=say)
    nodes = RealNodes(cluster, NODES, images=[image, *([model_image] if model_image else [])], log=say)
    ok = False
    try:
        cluster.up()
        nodes.up()
        status = _body(Product(nodes, image), shape, keep, model_image)
        ok = status == 0
        return status
    finally:
        if keep and ok:
            say(kept_hint(data_dir, cluster.kubeconfig))
        else:
            say("==> removing the nodes (containers, namespaces, cgroups, mounts) and the control plane")
            nodes.down()
            cluster.down()
            say(f"==> stopped; nothing of the demo runs any more ({time.monotonic() - begun:.0f}s in all)")


def _install(product: Product) -> None:
    say("==> helm upgrade --install --wait: the chart's defaults (2 operator replicas, agents in worker mode")
    say("    with the CSI node plugin), only the image named")
    started = time.monotonic()
    product.install(wait_s=HELM_TIMEOUT_S)
    say(f"==> chart installed and every pod ready in {time.monotonic() - started:.1f}s")


def _finalized(product: Product, uid: str) -> str:
    """Once the CacheLink is gone: what each node's agent still holds (none of its instances)."""

    def instances_gone() -> list[str] | None:
        found = {node: product.instances(node) for node in NODES}
        if any(i.owner == uid for listed in found.values() for i in listed):
            return None
        return [f"{node}: {len(listed)} instances" for node, listed in sorted(found.items())]

    return ", ".join(wait_for(instances_gone, 30, "the agents to have deleted the instances"))


def _body(product: Product, shape: KvShape, keep: bool, model_image: str | None) -> int:
    kube, image = product.kube, product.image
    _install(product)
    policy, namespace_obj, cachelink, pods = demo_objects(image)
    namespace, name = namespace_obj["metadata"]["name"], cachelink["metadata"]["name"]
    say(f"==> sample CacheLinkPolicy {policy['metadata']['name']}")
    say(f"==> namespace {namespace} enforces Pod Security restricted")
    kube.apply(policy, namespace_obj)
    say(f"==> CacheLink {namespace}/{name} selects pods demo-prefill ({NODES[0]}), demo-decode ({NODES[1]})")
    kube.apply(cachelink, *pods)
    watch = Watch(kube, namespace, name, log=say)
    applied = time.monotonic()
    obj = watch.until(lambda o: o is not None and is_ready(o), READY_TIMEOUT_S, "to be Ready")
    ready_s = time.monotonic() - applied

    def running(pod: str) -> dict[str, Any] | None:
        found = kube.get("pod", pod, "-n", namespace)
        return found if found and found["status"].get("phase") == "Running" else None

    prefill = wait_for(lambda: running("demo-prefill"), READY_TIMEOUT_S, "the prefill pod Running")
    decode = wait_for(lambda: running("demo-decode"), READY_TIMEOUT_S, "the decode pod Running")
    say("==> where each part runs (pod, node, container in that node's containerd):")
    for line in where_each_part_runs(kube, [RELEASE_NAMESPACE, namespace]):
        say(line)
    link = obj["status"]["links"][0]
    sockets = {
        role: f"{ATTACH_DIR}/{pod['metadata']['annotations']['cachelink.io/instance']}.sock"
        for role, pod in (("prompt", prefill), ("decode", decode))
    }
    say(f"==> workloads attach through their CSI volumes: {sockets['prompt']}, {sockets['decode']}")
    moved = transfer(
        sockets["prompt"],
        sockets["decode"],
        link["promptClusterId"],
        shape,
        log=say,
        prompt_node=in_pod(kube, namespace, "demo-prefill"),
        decode_node=in_pod(kube, namespace, "demo-decode"),
    )
    say("")
    say(summary(watch.get() or obj, ready_s, moved))
    say("")
    if not moved.verified:
        say("FAILED: the pulled KV cache differs from what the prompt side wrote")
        return 1
    if model_image and not demo_inference.run(product, namespace, NODES, model_image, keep):
        say("FAILED: the disaggregated answer differs from the single-process run")
        return 1
    say("")
    if keep:
        return 0
    say(f"==> deleting CacheLink {namespace}/{name}; the operator finalizes it")
    kube.kubectl("delete", CACHELINK, name, "-n", namespace, "--wait=false")
    watch.until(lambda o: o is None, 120, "to be finalized and gone")
    say(
        "==> finalized: CacheLink gone (the operator removed its finalizer after deleting the instances); "
        + _finalized(product, obj["metadata"]["uid"])
    )
    return 0
