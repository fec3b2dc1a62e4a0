"""Attacks of one tenant on another, on real nodes: tenant B's pod goes after tenant A's KV cache.

Tenant A (namespace ``tenant-a-*``) links a prompt pod on node-a to a decode pod on node-b; its prompt pod
writes a KV cache and keeps it. Tenant B (``tenant-b-*``) runs its own CacheLink with a pod on node-a, the
same node as A's prompt instance, and from that pod (``kubectl exec``, Pod Security ``restricted``) tries
what a hostile tenant would: A's sockets and pool files, a CSI volume naming A's CacheLink, a host path,
A's engine port without the link secret, a flood and an oversized frame before AUTH, a NaN attach lease,
the agent API with another node's credential. Each attack gets its specific error; at the end A's cache is
unchanged and A's decode pod still pulls it (the last test).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cachelink_e2e_operator import OperatorEnv, Workload, pod_socket, wait_for, workload_pod_spec

from cachelink_dev.realnodes.product import METRICS_TOKEN_SECRET, SIGNING_KEY_SECRET

pytestmark = pytest.mark.e2e
POOL = 16 << 20


@dataclass
class Tenants:
    """What the attacks need to know of both tenants (as the test, not as tenant B)."""

    env: OperatorEnv
    a: str
    b: str
    a_link: dict[str, Any]
    a_instances: list[str]
    a_prompt: dict[str, Any]
    a_decode: dict[str, Any]
    b_pod: dict[str, Any]
    b_instances: list[str]
    writer: Workload
    written: dict[str, Any]

    def in_b(self, script: str, *args: str, stdin: str | None = None, timeout: float = 120) -> Any:
        """Run ``script`` in tenant B's pod; its last stdout line, parsed as JSON."""
        process = Workload(self.env, self.b_pod).spawn(["python", "-c", script, *args])
        out, err = process.communicate(stdin, timeout=timeout)
        assert process.returncode == 0, f"the script failed in B's pod ({process.returncode}):\n{err}"
        return json.loads(out.strip().splitlines()[-1])


def namespace(env: OperatorEnv, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    env.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
    return name


def cachelink(ns: str, name: str, prompt: str, decode: str) -> dict[str, Any]:
    return {
        "apiVersion": "cachelink.io/v1alpha1",
        "kind": "CacheLink",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "prompt": {"podSelector": {"matchLabels": {"app": prompt}}},
            "decode": {"podSelector": {"matchLabels": {"app": decode}}},
            "options": {"memPoolSizeBytes": POOL},
        },
    }


def pinned(env: OperatorEnv, ns: str, app: str, node: str, link: str) -> dict[str, Any]:
    return env.deployment(ns, app, 1, cachelink=link, node_selector={"kubernetes.io/hostname": node})


def annotated(env: OperatorEnv, ns: str, app: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        pods = [
            p
            for p in env.pods(ns, f"app={app}")
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        ok = len(pods) == 1 and "cachelink.io/attach-socket" in (pods[0]["metadata"].get("annotations") or {})
        return pods[0] if ok else None

    return wait_for(found, 120, f"{ns}/{app} running with its attach annotations")


def ready(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") == "Ready"


@pytest.fixture(scope="module")
def tenants(operator_env: OperatorEnv) -> Iterator[Tenants]:
    env = operator_env
    a, b = namespace(env, "tenant-a"), namespace(env, "tenant-b")
    try:
        env.apply(
            pinned(env, a, "prefill", "node-a", "kv-a"),
            pinned(env, a, "decode", "node-b", "kv-a"),
            cachelink(a, "kv-a", "prefill", "decode"),
            pinned(env, b, "intruder", "node-a", "kv-b"),
            pinned(env, b, "accomplice", "node-b", "kv-b"),
            cachelink(b, "kv-b", "intruder", "accomplice"),
        )
        a_obj = env.wait_cachelink(a, "kv-a", ready, "Ready", 120)
        b_obj = env.wait_cachelink(b, "kv-b", ready, "Ready", 120)
        a_prompt, a_decode = annotated(env, a, "prefill"), annotated(env, a, "decode")
        b_pod = annotated(env, b, "intruder")
        writer = Workload(env, a_prompt)
        written = writer.write(int(a_prompt["metadata"]["annotations"]["cachelink.io/cluster-id"]))
        try:
            yield Tenants(
                env, a, b, a_obj["status"]["links"][0], [i["name"] for i in a_obj["status"]["instances"]],
                a_prompt, a_decode, b_pod, [i["name"] for i in b_obj["status"]["instances"]], writer, written,
            )  # fmt: skip
        finally:
            writer.close()
    finally:
        for ns in (a, b):
            env.kubectl("delete", "cachelinks.cachelink.io", "--all", "-n", ns, "--timeout=60s", check=False)
            env.kubectl("delete", "namespace", ns, "--wait=false", check=False)


LOOK_AROUND = r"""
import json, os, sys
from cachelink_agent.attach import attach
a_instances = json.loads(sys.argv[1])
seen = sorted(os.listdir("/run/cachelink"))
tried = {}
for name in a_instances:
    try:
        with attach("/run/cachelink", name, timeout=5):
            tried[name] = "attached"
    except Exception as error:  # what the attack gets is the result
        tried[name] = f"{type(error).__name__}: {error}"
print(json.dumps({"seen": seen, "tried": tried, "shm": sorted(os.listdir("/dev/shm")),
                  "host pool folder": os.path.exists("/dev/shm/cachelink")}))
"""


def test_b_sees_only_its_own_sockets_and_cannot_attach_to_a(tenants: Tenants) -> None:
    found = tenants.in_b(LOOK_AROUND, json.dumps(tenants.a_instances))
    own = pod_socket(tenants.b_pod).rsplit("/", 1)[1]
    assert own in found["seen"], found
    assert not any(name in entry for name in tenants.a_instances for entry in found["seen"]), found
    for name, outcome in found["tried"].items():
        assert outcome.startswith(("FileNotFoundError", "LLMException", "AttachError")), (name, outcome)
    # the pod has its own /dev/shm; the node's pool folder is not there
    assert found["host pool folder"] is False and not any("cachelink" in f for f in found["shm"]), found


def test_a_volume_naming_a_s_cachelink_is_never_mounted(tenants: Tenants) -> None:
    env = tenants.env
    spec = workload_pod_spec(env.image, "kv-a", {"kubernetes.io/hostname": "node-a"})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "borrower", "namespace": tenants.b},
        "spec": spec,
    }
    env.apply(pod)

    def refused() -> list[dict[str, Any]] | None:
        events = env.get("events", "-n", tenants.b, "--field-selector", "involvedObject.name=borrower")[
            "items"
        ]
        failed = [e for e in events if e["reason"] == "FailedMount"]
        return failed or None

    events = wait_for(refused, 90, "a FailedMount event for the borrowed CacheLink's volume")
    assert any("kv-a" in e["message"] for e in events), [e["message"] for e in events]
    assert env.get("pod", "borrower", "-n", tenants.b)["status"].get("phase") == "Pending"
    env.kubectl("delete", "pod", "borrower", "-n", tenants.b, "--wait=false")


def test_a_host_path_is_refused_at_admission(tenants: Tenants) -> None:
    spec = workload_pod_spec(tenants.env.image, None)
    spec["volumes"] = [{"name": "pools", "hostPath": {"path": "/dev/shm/cachelink"}}]
    spec["containers"][0]["volumeMounts"] = [{"name": "pools", "mountPath": "/pools"}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "digger", "namespace": tenants.b},
        "spec": spec,
    }
    done = tenants.env.apply(pod, check=False)
    assert done.returncode != 0
    assert 'violates PodSecurity "restricted' in done.stderr and "hostPath" in done.stderr, done.stderr


LINK_WITHOUT_SECRET = r"""
import json, sys
from llm_datadist import LLMClusterInfo, LLMConfig, LLMDataDist, LLMRole
host, port, remote = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
codes = {}
for guess in ("", "a-guessed-secret-of-tenant-b"):
    dd = LLMDataDist(LLMRole.DECODER, 4242)
    cfg = LLMConfig()
    cfg.device_id = 0
    cfg.enable_cache_manager = True
    cfg.mem_pool_cfg = '{"memory_size": 4194304}'
    options = cfg.generate_options()
    if guess:
        options["cachelink.link_secret"] = guess
    dd.init(options)
    info = LLMClusterInfo()
    info.remote_cluster_id = remote
    info.append_local_ip_info("0.0.0.0", 0)
    info.append_remote_ip_info(host, port)
    _status, per_cluster = dd.link_clusters([info], timeout=10000)
    codes[guess or "no secret"] = [c.name for c in per_cluster]
    dd.finalize()
print(json.dumps(codes))
"""


def a_endpoint(tenants: Tenants) -> tuple[str, str]:
    host, port = tenants.a_link["address"].rsplit(":", 1)
    return host, port


def test_a_s_engine_port_refuses_a_link_without_the_secret(tenants: Tenants) -> None:
    host, port = a_endpoint(tenants)
    codes = tenants.in_b(LINK_WITHOUT_SECRET, host, port, str(tenants.a_link["promptClusterId"]))
    assert codes == {"no secret": ["LLM_LINK_FAILED"], "a-guessed-secret-of-tenant-b": ["LLM_LINK_FAILED"]}


FLOOD = r"""
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port), timeout=10) for _ in range(count)]
time.sleep(2.0)  # well inside the 10 s handshake deadline
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        closed += s.recv(1) == b""
    except BlockingIOError:
        pass
    except ConnectionResetError:
        closed += 1
for s in socks:
    s.close()
print(json.dumps({"opened": count, "closed_at_once": closed}))
"""


def test_a_flood_before_auth_hits_the_per_source_cap(tenants: Tenants) -> None:
    host, port = a_endpoint(tenants)
    result = tenants.in_b(FLOOD, host, port, "300")
    # the listener keeps at most 256 connections from one source before they authenticate
    assert result["closed_at_once"] >= 300 - 256, result


OVERSIZED = r"""
import json, socket, struct, sys, time
host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port), timeout=20) as s:
    s.sendall(struct.pack("<IHHQ", 0x4B4E4C43, 1, 1, 1 << 30))  # a HELLO announcing 1 GiB
    started = time.monotonic()
    try:
        closed = s.recv(1) == b""
    except ConnectionResetError:
        closed = True
    print(json.dumps({"closed": closed, "after_s": time.monotonic() - started}))
"""


def test_an_oversized_frame_before_auth_is_dropped(tenants: Tenants) -> None:
    host, port = a_endpoint(tenants)
    result = tenants.in_b(OVERSIZED, host, port)
    assert result["closed"] and result["after_s"] < 5, result


NAN_LEASE = r"""
import json, os, sys
from cachelink_agent.attach import attach
name = sys.argv[1]
try:
    with attach("/run/cachelink", name, lease_seconds=float("nan"), timeout=5):
        print(json.dumps({"outcome": "attached"}))
except Exception as error:
    print(json.dumps({"outcome": f"{type(error).__name__}: {error}"}))
"""


def test_a_nan_lease_is_refused(tenants: Tenants) -> None:
    own = pod_socket(tenants.b_pod).rsplit("/", 1)[1].removesuffix(".sock")
    result = tenants.in_b(NAN_LEASE, own)
    assert result["outcome"].startswith("ValueError") and "finite" in result["outcome"], result


AGENT_API = r"""
import json, ssl, sys, urllib.error, urllib.request
url, calls, ca = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
tls = ssl.create_default_context(cadata=ca) if ca else None
out = {}
for label, token, path in calls:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=tls) as answer:
            out[label] = [answer.status, answer.read().decode()[:200]]
    except urllib.error.HTTPError as error:
        out[label] = [error.code, error.read().decode()[:200]]
print(json.dumps(out))
"""


def test_the_agent_api_refuses_another_node_s_credential(tenants: Tenants) -> None:
    """What node-a's agent sees (the operator's tokens for node-a, the metrics credential) does not open
    node-b's agent; no agent holds the key that signs tokens."""
    product = tenants.env.product
    metrics = product.secret_value(METRICS_TOKEN_SECRET, "token").decode()
    calls = [
        ("node-a's token", product.token("node-a"), "/v1/instances"),
        ("no token", "", "/v1/instances"),
        ("metrics credential on the API", metrics, "/v1/instances"),
        ("metrics credential on /metrics", metrics, "/metrics"),
    ]
    result = tenants.in_b(AGENT_API, product.agent_url("node-b"), json.dumps(calls), product.agent_ca() or "")
    status, body = result["node-a's token"]
    assert status == 403 and json.loads(body)["error"] == "forbidden", body
    assert "node 'node-a', not 'node-b'" in json.loads(body)["message"], body
    status, body = result["no token"]
    assert status == 401 and json.loads(body)["error"] == "unauthorized", body
    status, body = result["metrics credential on the API"]
    assert status == 403 and "metrics credential" in json.loads(body)["message"], body
    assert result["metrics credential on /metrics"][0] == 200
    # the agents mount the public key and the metrics credential; the signing key stays with the operator
    for pod in product.agent_pods().values():
        mounted = {v.get("secret", {}).get("secretName") for v in pod["spec"]["volumes"]}
        assert SIGNING_KEY_SECRET not in mounted, pod["spec"]["volumes"]


def test_a_is_unharmed_and_still_transfers(tenants: Tenants) -> None:
    """Last: after every attack, A's decode pod pulls exactly what A's prompt pod wrote."""
    pulled = Workload(tenants.env, tenants.a_decode).pull(tenants.written["cluster_id"])
    assert pulled["digest"] == tenants.written["digest"]
