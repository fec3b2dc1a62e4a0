"""Real nodes joined to the development cluster: containerd, kubelet and kube-proxy per node.

``RealNodes(dev_cluster, ["real-a", "real-b"]).up()`` brings up, in order: the hub network namespace
and the API server's bridge (:mod:`.apiproxy`), the ``kubernetes`` Service's endpoint at the hub's
address, then per node its containerd in its own network and mount namespaces (:mod:`.node`), its veth,
pod CIDR and CNI bridge (:mod:`.network`), its images, its ``cgroupRoot`` (:mod:`.cgroups`), its kubelet
and kube-proxy (same module and version as the control plane), and waits until every node is Ready.
``down()`` removes every process, container, cgroup, namespace and mount it made; ``sweep()`` does the
same for what a killed run left. A component that fails stops the start with its name and log, after
everything started is removed again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from cachelink_dev.devcluster.build import Tools, ensure_tools
from cachelink_dev.devcluster.cluster import DevCluster
from cachelink_dev.devcluster.errors import ComponentExitedError, DevClusterError
from cachelink_dev.devcluster.kubeconfig import write_kubeconfig
from cachelink_dev.devcluster.pki import Pki, issue_client_certificate, issue_node_certificates
from cachelink_dev.devcluster.processes import Process
from cachelink_dev.realnodes import cgroups, network
from cachelink_dev.realnodes.images import PAUSE_REF, Podman
from cachelink_dev.realnodes.kubelet import cgroup_root, kube_proxy_configuration, kubelet_configuration
from cachelink_dev.realnodes.node import ContainerdNode, netns_prefix
from cachelink_dev.realnodes.node import sweep as sweep_namespaces

#: the API server's port on the hub's address (nodes and pods connect there)
HUB_API_PORT = 6443
#: the name in the API server's certificate that node components check (the hub address is not in it)
API_SERVER_NAME = "kubernetes"
NODE_READY_TIMEOUT_S = 180.0
PROXY_START_TIMEOUT_S = 30.0
REAL_NODE_LABEL = "cachelink.io/real-node"

Log = Callable[[str], None]
#: the API server's client certificate may use every kubelet's API (logs, exec, port-forward, metrics)
KUBELET_API_ACCESS = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "cachelink-dev:apiserver-kubelet-api"},
    "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:kubelet-api-admin",
    },
    "subjects": [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kube-apiserver-kubelet-client"}
    ],
}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class RealNodes:
    """The real nodes of one development cluster (its data directory holds their folders)."""

    def __init__(
        self,
        cluster: DevCluster,
        names: Sequence[str] = ("real-a", "real-b"),
        images: Sequence[str] = (),
        tools: Tools | None = None,
        log: Log = _stderr,
    ) -> None:
        self.cluster = cluster
        self.names = tuple(names)
        self.images = tuple(images)
        self._tools = tools
        self.log = log
        self.addressing = [network.NodeAddressing(name, i + 1) for i, name in enumerate(self.names)]
        self._runtimes: dict[str, ContainerdNode] = {}

    @property
    def tools(self) -> Tools:
        """containerd, ctr, kubelet and kube-proxy (built on first use)."""
        if self._tools is None:
            self._tools = ensure_tools(self.log, real_nodes=True)
        return self._tools

    @property
    def data_dir(self) -> Path:
        """The development cluster's data directory."""
        return self.cluster.data_dir

    @property
    def prefix(self) -> str:
        """Prefix of this cluster's namespaces and cgroups."""
        return netns_prefix(self.data_dir)

    def containerd(self, name: str) -> ContainerdNode:
        """The node's containerd (the same object from start to stop: it holds the child process)."""
        if name not in self._runtimes:
            self._runtimes[name] = ContainerdNode(
                name, self.data_dir, self.tools["containerd"], self.tools["ctr"], PAUSE_REF
            )
        return self._runtimes[name]

    def process(self, name: str) -> Process:
        """A recorded process of the real nodes (``apiproxy``, ``kubelet-<node>``, ``kube-proxy-<node>``)."""
        layout = self.cluster.layout
        return Process(name, layout.run, layout.logs / f"{name}.log")

    # -- up ---------------------------------------------------------------------------------------------

    def up(self) -> RealNodes:
        """Start every node and wait until all are Ready; on failure remove all of it and raise."""
        if os.geteuid() != 0:
            raise DevClusterError("real nodes need root (network namespaces, mounts, cgroups, containers)")
        started_at = time.monotonic()
        self.sweep()
        try:
            # a Node object left by an earlier run would report its stale Ready condition
            self.cluster.kubectl("delete", "node", "--ignore-not-found", "--wait=false", *self.names)
            self._start_network()
            pki = Pki(self.cluster.layout.pki)
            for node in self.addressing:
                self._start_node(node, pki)
            self._wait_ready()
        except BaseException:
            self.down()
            raise
        self.log(f"==> real nodes {', '.join(self.names)} Ready in {time.monotonic() - started_at:.1f}s")
        return self

    def _start_network(self) -> None:
        hub = network.create_hub(self.prefix)
        ports = self.cluster.ports
        if ports is None:
            raise DevClusterError("the development cluster is not started: run `cachelink dev-cluster up`")
        proxy = self.process("apiproxy")
        self.log(f"==> starting the API server's bridge to the nodes' network (log: {proxy.log})")
        proxy.start(
            [
                sys.executable,
                "-m",
                "cachelink_dev.realnodes.apiproxy",
                f"--netns=/run/netns/{hub}",
                f"--listen={network.HUB_ADDRESS}:{HUB_API_PORT}",
                f"--upstream=127.0.0.1:{ports.apiserver}",
                f"--egress={self.cluster.layout.egress_socket}",
            ]
        )
        proxy.wait_ready(self.cluster.layout.egress_socket.exists, PROXY_START_TIMEOUT_S, "listening")
        self._publish_api_endpoint()
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(KUBELET_API_ACCESS))

    def _publish_api_endpoint(self) -> None:
        """The ``kubernetes`` Service's endpoint: the hub's address (the API server manages none here)."""
        slice_ = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "cachelink-dev-cluster",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [network.HUB_ADDRESS], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": HUB_API_PORT, "protocol": "TCP"}],
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(slice_))

    def _node_kubeconfig(self, pki: Pki, node: str, client: str, component: str) -> Path:
        path = self.cluster.layout.root / "nodes" / node / f"{component}.kubeconfig"
        server = f"https://{network.HUB_ADDRESS}:{HUB_API_PORT}"
        user = f"system:node:{node}" if component == "kubelet" else "system:kube-proxy"
        return write_kubeconfig(path, server, pki, client, user, tls_server_name=API_SERVER_NAME)

    def _start_node(self, node: network.NodeAddressing, pki: Pki) -> None:
        runtime = self.containerd(node.name)
        (runtime.root / "cni").mkdir(parents=True, exist_ok=True)
        (runtime.root / "cni" / "10-cachelink.conflist").write_text(network.cni_config(node))
        self.log(f"==> node {node.name}: containerd (log: {runtime.log})")
        runtime.start()
        network.attach_node(self.prefix, runtime.netns, node, self.addressing)
        self._load_images(runtime)
        client, serving = issue_node_certificates(pki, node.name, node.address)
        root = cgroup_root(self.prefix, node.name)
        cgroups.create(root)
        folder = runtime.root
        config = kubelet_configuration(
            prefix=self.prefix,
            node=node.name,
            address=node.address,
            client_ca=pki.ca_cert,
            serving_cert=pki.cert(serving),
            serving_key=pki.key(serving),
        )
        (folder / "kubelet.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        enter = ["nsenter", f"--target={runtime.pid_file.read_text().strip()}", "--mount", "--net", "--"]
        kubelet = self.process(f"kubelet-{node.name}")
        self.log(f"==> node {node.name}: kubelet at {node.address} (log: {kubelet.log})")
        kubelet.start(
            [
                *enter,
                str(self.tools["kubelet"]),
                f"--config={folder / 'kubelet.yaml'}",
                f"--kubeconfig={self._node_kubeconfig(pki, node.name, client, 'kubelet')}",
                f"--hostname-override={node.name}",
                f"--node-ip={node.address}",
                f"--node-labels={REAL_NODE_LABEL}=true",
                "--v=1",
            ]
        )
        proxy_config = kube_proxy_configuration(
            node=node.name,
            kubeconfig=self._node_kubeconfig(
                pki, node.name, issue_client_certificate(pki, "kube-proxy", "system:kube-proxy"), "kube-proxy"
            ),
            cluster_cidr=network.CLUSTER_POD_CIDR,
        )
        (folder / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy_config, sort_keys=False))
        kube_proxy = self.process(f"kube-proxy-{node.name}")
        kube_proxy.start(
            [*enter, str(self.tools["kube-proxy"]), f"--config={folder / 'kube-proxy.yaml'}", "--v=1"]
        )

    def _load_images(self, runtime: ContainerdNode) -> None:
        present = runtime.ctr("images", "ls", "-q").split()
        podman = Podman()
        for ref in (PAUSE_REF, *self.images):
            if ref not in present and f"{ref}:latest" not in present:
                started = time.monotonic()
                runtime.load_image(podman.env(), ref)
                self.log(f"==> node {runtime.name}: loaded {ref} in {time.monotonic() - started:.1f}s")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + NODE_READY_TIMEOUT_S
        wanted = set(self.names)
        while not wanted <= self.cluster.ready_nodes():
            for name in self.names:
                for component in (f"kubelet-{name}", f"kube-proxy-{name}"):
                    process = self.process(component)
                    if not process.running():
                        raise process.exited_error(f"node {name} was starting")
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(wanted - self.cluster.ready_nodes()))
                raise ComponentExitedError(
                    f"nodes {missing} were not Ready within {NODE_READY_TIMEOUT_S:.0f}s; logs: "
                    + ", ".join(str(self.process(f"kubelet-{n}").log) for n in sorted(wanted))
                )
            time.sleep(0.5)

    # -- down -------------------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop every node's kubelet, kube-proxy and containers, then containerd, the network and cgroups."""
        for name in self.names:
            self.process(f"kubelet-{name}").stop()
            self.process(f"kube-proxy-{name}").stop()
            cgroups.remove(cgroup_root(self.prefix, name))
            self.containerd(name).stop()
        self.process("apiproxy").stop()
        self.cluster.layout.egress_socket.unlink(missing_ok=True)
        self.sweep()

    def sweep(self) -> list[str]:
        """Remove whatever a killed run of this data directory's nodes left; returns what it found."""
        # the namespaces' processes first (kubelets would restart containers), then what runs in cgroups
        found = [f"netns {namespace}" for namespace in sweep_namespaces(self.data_dir)]
        network.remove_hub(self.prefix)
        for path in cgroups.leftovers(self.prefix):
            found.append(f"cgroup {path}")
            cgroups.remove("/" + path.name)
        for name in ("apiproxy", *(f"{c}-{n}" for n in self.names for c in ("kubelet", "kube-proxy"))):
            if self.process(name).stop():
                found.append(f"process {name}")
        return found

    def leftovers(self) -> list[str]:
        """What of the nodes exists now (an empty list after ``down``)."""
        left = [f"cgroup {path}" for path in cgroups.leftovers(self.prefix)]
        left += [
            f"netns {ns}"
            for ns in network.run_ip("netns", "list").stdout.split()
            if ns.startswith(self.prefix)
        ]
        for name in ("apiproxy", *(f"{c}-{n}" for n in self.names for c in ("kubelet", "kube-proxy"))):
            if self.process(name).running():
                left.append(f"process {name}")
        return left
