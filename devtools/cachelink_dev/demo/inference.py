"""The demo's inference stage on real nodes: a real model's KV cache crosses CacheLink between two pods.

Gemma 3 270M (the model image: the product image plus the ``inference`` extra's wheel) runs as a prefill
server pod on ``node-a`` and a decode server pod on ``node-b``, under Pod Security ``restricted``. Each pod
attaches to its instance through its CacheLink CSI volume (``cachelink-inference ... --attach-dir``); the
operator links the two instances. A router pod sends a prompt to prefill, hands the transfer parameters to
decode, and streams the answer; the demo prints the text, the KV bytes pulled, the data path and the timings,
then runs the same prompt in one process (in the decode pod, the same image and weights) and compares the
token ids. The weights are dequantised by each server pod at start into a volume of its own (no host path).
"""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from cachelink_dev.demo import pods
from cachelink_dev.demo.cluster import say
from cachelink_dev.demo.watch import CACHELINK, Watch, is_ready
from cachelink_dev.procs import wait_for
from cachelink_dev.realnodes.product import Product

CACHELINK_NAME = "gemma"
PREFILL_LABELS = {"app": "gemma-prefill"}
DECODE_LABELS = {"app": "gemma-decode"}
PORT = 8000
NUM_BLOCKS, BLOCK_SIZE = 64, 16
#: K and V of 18 layers in NUM_BLOCKS blocks of BLOCK_SIZE x 256 float32, and the pool's bookkeeping
POOL_BYTES = 64 << 20
PROMPT = (
    "In a quiet harbour town, the lighthouse keeper kept a journal of every ship that passed. "
    "One stormy night he wrote"
)
MAX_TOKENS = 24
#: server pods load and dequantise the weights before they are Ready
SERVERS_READY_S = 420.0
REQUEST_TIMEOUT_S = 300.0


def _container(name: str, image: str, args: list[str], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["cachelink-inference"],
        "args": args,
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": PORT},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "securityContext": copy.deepcopy(pods.CONTAINER_SECURITY),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
    }


def _pod(
    name: str,
    namespace: str,
    node: str,
    labels: dict[str, str],
    container: dict[str, Any],
    volumes: list[Any],
) -> dict[str, Any]:
    """A pod Pod Security ``restricted`` admits: non-root, read-only root, no capability, no host path."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "securityContext": {**copy.deepcopy(pods.POD_SECURITY), "fsGroup": 1000},
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, *volumes],
        },
    }


def server_pod(name: str, namespace: str, node: str, role: str, image: str) -> dict[str, Any]:
    """A prefill or decode server attached through the CacheLink's CSI volume; weights in its own volume."""
    args = [
        role, "--attach-dir", pods.ATTACH_DIR, "--host", "$(POD_IP)", "--port", str(PORT),
        "--num-blocks", str(NUM_BLOCKS), "--block-size", str(BLOCK_SIZE), "--cache-dir", "/weights",
    ]  # fmt: skip
    mounts: list[dict[str, Any]] = [pods.attach_mount(), {"name": "weights", "mountPath": "/weights"}]
    volumes = [pods.csi_volume(CACHELINK_NAME), {"name": "weights", "emptyDir": {"sizeLimit": "3Gi"}}]
    labels = PREFILL_LABELS if role == "prefill" else DECODE_LABELS
    return _pod(name, namespace, node, labels, _container("server", image, args, mounts), volumes)


def router_pod(namespace: str, node: str, image: str, prefill_url: str, decode_url: str) -> dict[str, Any]:
    """The router: prefill first, then decode with the transfer parameters; streams the answer."""
    args = [
        "router",
        "--prefill",
        prefill_url,
        "--decode",
        decode_url,
        "--host",
        "$(POD_IP)",
        "--port",
        str(PORT),
    ]
    return _pod(
        "gemma-router", namespace, node, {"app": "gemma-router"}, _container("router", image, args, []), []
    )


def cachelink(namespace: str) -> dict[str, Any]:
    """The CacheLink selecting the two server pods; pools big enough for their KV blocks."""
    return {
        "apiVersion": "cachelink.io/v1alpha1",
        "kind": "CacheLink",
        "metadata": {"name": CACHELINK_NAME, "namespace": namespace},
        "spec": {
            "prompt": {"podSelector": {"matchLabels": PREFILL_LABELS}},
            "decode": {"podSelector": {"matchLabels": DECODE_LABELS}},
            "options": {"memPoolSizeBytes": POOL_BYTES},
        },
    }


def objects(namespace: str, nodes: tuple[str, str], image: str) -> list[dict[str, Any]]:
    """What the stage applies first: the CacheLink and the two server pods."""
    return [
        cachelink(namespace),
        server_pod("gemma-prefill", namespace, nodes[0], "prefill", image),
        server_pod("gemma-decode", namespace, nodes[1], "decode", image),
    ]


@dataclass
class Answer:
    """What the router streamed back, and when."""

    text: str
    token_ids: list[int]
    info: dict[str, Any]
    ttft_s: float
    total_s: float


def complete(url: str, prompt: str, max_tokens: int) -> Answer:
    """A streamed ``/v1/completions`` call: the text, token ids and CacheLink's report of the first chunk."""
    if not url.startswith("http://"):
        raise ValueError(f"the router is reached over http://, not {url!r}")
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "stream": True}).encode()
    request = urllib.request.Request(  # noqa: S310 - http:// only (checked above)
        url, data=body, headers={"Content-Type": "application/json"}
    )
    started = time.monotonic()
    first: float | None = None
    text, tokens, info = "", list[int](), dict[str, Any]()
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310 - http only
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            if "choices" not in event:
                continue
            first = first if first is not None else time.monotonic() - started
            info = info or event.get("cachelink", {})
            text += event["choices"][0]["text"]
            tokens += event["choices"][0]["token_ids"]
    return Answer(text, tokens, info, first or 0.0, time.monotonic() - started)


def _ready_pod(product: Product, namespace: str, name: str) -> dict[str, Any] | None:
    pod = product.kube.get("pod", name, "-n", namespace) or {}
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return pod if ready else None


def _wait_ready(product: Product, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pod = _ready_pod(product, namespace, name)
        if pod is None:
            found = product.kube.get("pod", name, "-n", namespace) or {}
            for status in (found.get("status") or {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                if status.get("restartCount", 0) > 0 or waiting.get("reason") in (
                    "ErrImageNeverPull",
                    "CrashLoopBackOff",
                ):
                    log = product.kube.kubectl("logs", name, "-n", namespace, "--tail=30", check=False).stdout
                    raise RuntimeError(f"pod {namespace}/{name} does not start ({waiting or status}):\n{log}")
        return pod

    return wait_for(ready, timeout, f"pod {namespace}/{name} Ready")


def reference(product: Product, namespace: str, pod: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The same prompt in one process (prefill and decode together), in ``pod``'s container."""
    args = ["exec", "-n", namespace, pod, "--", "cachelink-inference", "generate", "--prompt", prompt]
    args += ["--max-tokens", str(max_tokens), "--block-size", str(BLOCK_SIZE), "--cache-dir", "/weights"]
    out = product.kube.kubectl(*args).stdout
    (result,) = json.loads(out.strip().splitlines()[-1])
    return dict(result)


def _report(answer: Answer, link: dict[str, Any]) -> None:
    info = answer.info
    mib, pull_ms = info.get("kv_bytes", 0) / (1 << 20), info.get("pull_s", 0) * 1000
    say(f"    generated: {answer.text!r}")
    say(
        f"    KV cache pulled by decode: {mib:.2f} MiB in {pull_ms:.1f} ms over {link.get('dataPath', '?')}"
        f" (cluster {link.get('promptClusterId')} -> {link.get('decodeClusterId')}),"
        f" digest equal on both sides: {info.get('kv_digest') == info.get('prompt_kv_digest')}"
    )
    ttft_ms, count = answer.ttft_s * 1000, len(answer.token_ids)
    say(f"    time to first token {ttft_ms:.0f} ms, {count} tokens in {answer.total_s:.2f}s")


def run(product: Product, namespace: str, nodes: tuple[str, str], image: str, keep: bool) -> bool:
    """The stage; True when the disaggregated answer equals the single-process one, token for token."""
    kube = product.kube
    say(f"==> Gemma 3 270M on Kubernetes: CacheLink {namespace}/{CACHELINK_NAME} selects the prefill pod")
    say(f"    gemma-prefill ({nodes[0]}) and the decode pod gemma-decode ({nodes[1]}); model image {image}")
    kube.apply(*objects(namespace, nodes, image))
    watch = Watch(kube, namespace, CACHELINK_NAME, log=say)
    obj = watch.until(lambda o: o is not None and is_ready(o), SERVERS_READY_S, "to be Ready")
    started = time.monotonic()
    pods = {
        role: _wait_ready(product, namespace, f"gemma-{role}", SERVERS_READY_S)
        for role in ("prefill", "decode")
    }
    waited = time.monotonic() - started
    say(f"==> both servers attached and Ready (weights dequantised in each pod) in {waited:.0f}s")
    urls = {role: f"http://{pod['status']['podIP']}:{PORT}" for role, pod in pods.items()}
    kube.apply(router_pod(namespace, nodes[0], image, urls["prefill"], urls["decode"]))
    router = _wait_ready(product, namespace, "gemma-router", 120)
    url = f"http://{router['status']['podIP']}:{PORT}/v1/completions"
    say(f"==> prompt through the router ({url}): {PROMPT!r}")
    answer = product.in_hub(lambda: complete(url, PROMPT, MAX_TOKENS))
    _report(answer, (watch.get() or obj)["status"]["links"][0])
    single = reference(product, namespace, "gemma-decode", PROMPT, MAX_TOKENS)
    info = answer.info
    same = single["token_ids"] == answer.token_ids and info.get("kv_digest") == info.get("prompt_kv_digest")
    say(f"    single-process run (one pod, same image and weights): {single['text']!r}")
    say(f"==> disaggregated == single process, token for token: {same}")
    if not keep:
        pods_gone = ("pod", "gemma-router", "gemma-prefill", "gemma-decode", "-n", namespace, "--wait=false")
        kube.kubectl("delete", *pods_gone)
        kube.kubectl("delete", CACHELINK, CACHELINK_NAME, "-n", namespace, "--wait=false")
        watch.until(lambda o: o is None, 120, "to be finalized and gone")
    return same
