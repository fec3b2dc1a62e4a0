"""The product on real nodes: its Helm chart installed with ``--wait``, and how tests and benches act on it.

Every part runs as the chart's pods run on any cluster: the agents as the DaemonSet's containers, the
operator as the Deployment's replicas, all of them containerd tasks on the real nodes. What a test does to
them is what an operator of a cluster can do: read logs (``kubectl logs``), stop or freeze a container
through its node's containerd (``ctr tasks kill|pause|resume``; the kubelet restarts it), and call an
agent's API at its pod's address from inside the nodes' network (the hub namespace), with the token the
operator would use.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cachelink_agent import models, tokens
from cachelink_agent.client import AgentClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cachelink_dev.procs import wait_for
from cachelink_dev.realnodes import network
from cachelink_dev.realnodes.cluster import RealNodes
from cachelink_dev.realnodes.netns import call_in_netns
from cachelink_dev.release.chart import Release
from cachelink_dev.release.kube import Kube

T = TypeVar("T")
RELEASE_NAMESPACE = "cachelink-system"
AGENT_SELECTOR = "app.kubernetes.io/component=agent,app.kubernetes.io/name=cachelink"
OPERATOR_SELECTOR = "app.kubernetes.io/component=operator,app.kubernetes.io/name=cachelink"
SIGNING_KEY_SECRET = "cachelink-agent-signing-key"  # noqa: S105 - a Secret's name
METRICS_TOKEN_SECRET = "cachelink-agent-metrics"  # noqa: S105 - a Secret's name
VERIFY_KEY_CONFIGMAP = "cachelink-agent-verify-key"
#: the CA of the agents' serving certificates (a Secret for the operator; its certificate in a ConfigMap)
AGENT_CA = "cachelink-agent-ca"
LEASE_NAME = "cachelink-operator"
HELM_WAIT_S = 300
AGENT_CALL_TIMEOUT_S = 30.0


def api_port(pod: dict[str, Any]) -> int | None:
    """The container port named ``api`` of a pod."""
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == "api":
                return int(port["containerPort"])
    return None


def live(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods that run and are not being deleted."""
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def pod_ready(pod: dict[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


class Product:
    """The chart's release on a cluster of real nodes."""

    def __init__(
        self,
        nodes: RealNodes,
        image: str,
        values: dict[str, Any] | None = None,
        namespace: str = RELEASE_NAMESPACE,
    ) -> None:
        self.nodes, self.image, self.namespace = nodes, image, namespace
        cluster = nodes.cluster
        self.kube = Kube(cluster.kubectl_path, cluster.kubeconfig)
        repository, tag = image.rsplit(":", 1)
        self.values = {
            **(values or {}),
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        }
        self.release = Release(cluster.helm_path, cluster.kubeconfig, cluster.data_dir, namespace)
        self._signing_key: Ed25519PrivateKey | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def install(self, wait_s: int = HELM_WAIT_S) -> Product:
        """``helm upgrade --install --wait``: every pod of the chart ready on return."""
        self.release.install(self.values, wait_s=wait_s)
        self._signing_key = None
        return self

    def release_finalizers(self) -> None:
        """Drop the operator's finalizer from every CacheLink left (when no operator will finalize them)."""
        found = self.kube.get("cachelinks.cachelink.io", "-A") or {}
        for item in found.get("items", []):
            meta = item["metadata"]
            if meta.get("finalizers"):
                self.kube.kubectl(
                    "patch", "cachelinks.cachelink.io", meta["name"], "-n", meta["namespace"],
                    "--type=merge", "-p", '{"metadata": {"finalizers": null}}', check=False,
                )  # fmt: skip

    def uninstall(self) -> None:
        """Drop the operator's finalizers left on CacheLinks, uninstall, wait for the namespace to go."""
        self.release_finalizers()
        with contextlib.suppress(Exception):
            self.release.uninstall()
        self.kube.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        with contextlib.suppress(Exception):
            self.kube.wait_namespace_gone(self.namespace, timeout=120)

    def in_hub(self, func: Callable[[], T]) -> T:
        """Run ``func`` in a thread inside the nodes' network (the hub namespace): pod IPs answer there."""
        return call_in_netns(f"/run/netns/{network.hub_netns(self.nodes.prefix)}", func)

    # -- the agents -----------------------------------------------------------------------------------

    def secret_value(self, name: str, key: str) -> bytes:
        """One key of a Secret of the release namespace, decoded."""
        found = self.kube.get("secret", name, "-n", self.namespace)
        return base64.b64decode(found["data"][key])

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        """The key that signs the agents' tokens, read from the chart's Secret through the API (as the
        operator reads it; no pod mounts it)."""
        if self._signing_key is None:
            self._signing_key = tokens.load_signing_key(self.secret_value(SIGNING_KEY_SECRET, "key.pem"))
        return self._signing_key

    def token(self, node: str) -> str:
        """A fresh API token for ``node``'s agent, signed as the operator signs them."""
        return tokens.mint(self.signing_key, node)

    def agent_pods(self, ready: bool = True) -> dict[str, dict[str, Any]]:
        """The running agent pod of each node that has one (only Ready ones when ``ready``)."""
        pods = live(self.kube.get("pods", "-n", self.namespace, "-l", AGENT_SELECTOR)["items"])
        return {p["spec"]["nodeName"]: p for p in pods if pod_ready(p) or not ready}

    def wait_agents(self, timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        """Wait until every node's agent pod is Ready."""

        def all_ready() -> dict[str, dict[str, Any]] | None:
            found = self.agent_pods()
            return found if set(found) == set(self.nodes.names) else None

        return wait_for(all_ready, timeout, "a Ready agent pod on every node")

    def agent_ca(self) -> str | None:
        """The PEM certificate the agents' serving certificates chain to (None: the release serves HTTP)."""
        found = self.kube.get("configmap", AGENT_CA, "-n", self.namespace)
        return None if found is None else str(found["data"]["ca.crt"])

    def agent_tls(self) -> ssl.SSLContext | None:
        """A client context trusting only the agents' CA (None: the release serves plain HTTP)."""
        ca = self.agent_ca()
        return None if ca is None else ssl.create_default_context(cadata=ca)

    def agent_url(self, node: str) -> str:
        """``https://POD_IP:PORT`` (``http`` without TLS) of the node's agent (reached from the nodes)."""
        pod = self.agent_pods(ready=False)[node]
        scheme = "http" if self.agent_ca() is None else "https"
        return f"{scheme}://{pod['status']['podIP']}:{api_port(pod)}"

    def agent_call(
        self, node: str, func: Callable[[AgentClient], Awaitable[T]], token: str | None = None
    ) -> T:
        """One API call to the node's agent, made from the hub namespace with the node's token."""
        url, chosen, tls = (
            self.agent_url(node),
            self.token(node) if token is None else token,
            self.agent_tls(),
        )

        async def run() -> T:
            async with AgentClient(url, chosen, timeout=AGENT_CALL_TIMEOUT_S, ssl_context=tls) as client:
                return await func(client)

        return self.in_hub(lambda: asyncio.run(run()))

    def instances(self, node: str) -> list[models.InstanceStatus]:
        """``GET /v1/instances`` of the node's agent."""
        return self.agent_call(node, lambda c: c.get_instances())

    def owned(self, uid: str) -> dict[str, models.InstanceStatus]:
        """Instances owned by a CacheLink UID on every node with a Ready agent, by instance name."""
        return {i.name: i for node in self.agent_pods() for i in self.instances(node) if i.owner == uid}

    # -- the operator ---------------------------------------------------------------------------------

    def operator_pods(self) -> list[dict[str, Any]]:
        """The operator's running replicas."""
        return live(self.kube.get("pods", "-n", self.namespace, "-l", OPERATOR_SELECTOR)["items"])

    def leader(self) -> str | None:
        """The pod holding the leader Lease (its holder identity is the pod's name)."""
        lease = self.kube.get("lease", LEASE_NAME, "-n", self.namespace)
        return None if lease is None else lease["spec"].get("holderIdentity")

    def wait_leader(self, timeout: float = 90.0) -> str:
        """Wait until a running, ready replica holds the Lease; its pod name."""

        def leading() -> str | None:
            holder = self.leader()
            ready = {p["metadata"]["name"] for p in self.operator_pods() if pod_ready(p)}
            return holder if holder in ready else None

        return wait_for(leading, timeout, "an operator replica holding the leader Lease")

    # -- containers -----------------------------------------------------------------------------------

    def pod(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        """A pod of the release's namespace (or ``namespace``)."""
        found: dict[str, Any] = self.kube.get("pod", name, "-n", namespace or self.namespace)
        return found

    def container_id(self, pod: dict[str, Any], container: str) -> str:
        """The containerd id of a container of ``pod``."""
        for status in pod["status"].get("containerStatuses") or []:
            if status["name"] == container and status.get("containerID"):
                return str(status["containerID"]).split("://", 1)[1]
        raise LookupError(f"pod {pod['metadata']['name']}: no running container {container}")

    def ctr_task(self, pod_name: str, container: str, *action: str, namespace: str | None = None) -> None:
        """``ctr tasks ACTION... ID`` on the pod's node (``kill -s SIGKILL``, ``pause``, ``resume``)."""
        pod = self.pod(pod_name, namespace)
        runtime = self.nodes.containerd(pod["spec"]["nodeName"])
        runtime.ctr("tasks", *action, self.container_id(pod, container))

    def task_pid(self, pod_name: str, container: str, namespace: str | None = None) -> int:
        """The host pid of the container's main process (``ctr tasks ls`` on its node)."""
        pod = self.pod(pod_name, namespace)
        container_id = self.container_id(pod, container)
        listed = self.nodes.containerd(pod["spec"]["nodeName"]).ctr("tasks", "ls")
        for line in listed.splitlines():
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1])
        raise LookupError(f"pod {pod_name}: container {container} has no task on its node")

    def restart_count(self, pod_name: str, container: str, namespace: str | None = None) -> int:
        """How often the kubelet restarted the container."""
        for status in self.pod(pod_name, namespace)["status"].get("containerStatuses") or []:
            if status["name"] == container:
                return int(status.get("restartCount", 0))
        return 0

    def logs(
        self, pod_name: str, container: str, namespace: str | None = None, previous: bool = False
    ) -> str:
        """``kubectl logs`` of a container ('' when there is none, e.g. no previous instance)."""
        args = ["logs", pod_name, "-c", container, "-n", namespace or self.namespace]
        done = self.kube.kubectl(*args, *(["--previous"] if previous else []), check=False)
        return done.stdout if done.returncode == 0 else ""
