"""The real nodes' network: a hub namespace with a bridge, one veth per node, a pod CIDR per node.

Every address lives in a network namespace that this module creates and removes; the host's own
namespace gets no interface, route or rule. The layout (``/24`` each):

- hub namespace ``<prefix>-hub``: bridge ``clbr0`` at :data:`HUB_ADDRESS`, the API server's address for
  nodes and pods (``cachelink_dev.realnodes.apiproxy`` listens there), routes to every node's pod CIDR;
- node *i* (1-based): ``eth0`` at ``10.77.0.(i+1)`` in the node's namespace, its peer on the hub's bridge;
  pods in ``10.244.i.0/24`` on the node's CNI bridge; routes to the other nodes' pod CIDRs through their
  node address; forwarding and bridge netfilter on (kube-proxy's rules see bridged traffic).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass

from cachelink_dev.devcluster.errors import DevClusterError

NODE_SUBNET = ipaddress.ip_network("10.77.0.0/24")
HUB_ADDRESS = "10.77.0.1"
#: every node's pod CIDR is a /24 of this
CLUSTER_POD_CIDR = "10.244.0.0/16"
HUB_BRIDGE = "clbr0"
CNI_BRIDGE = "cni0"


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS``; raises with its stderr when ``check`` and it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise DevClusterError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _sysctl(netns: str, *settings: str) -> None:
    """Set sysctls inside ``netns`` (``/proc/sys/net`` is per namespace)."""
    for setting in settings:
        done = subprocess.run(
            ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", setting],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise DevClusterError(f"sysctl {setting} in {netns}: {done.stderr.strip()}")


@dataclass(frozen=True)
class NodeAddressing:
    """One node's place in the network."""

    name: str
    index: int  # 1-based

    @property
    def address(self) -> str:
        """The node's InternalIP (on ``eth0`` in its namespace)."""
        return str(NODE_SUBNET.network_address + self.index + 1)

    @property
    def pod_cidr(self) -> str:
        """The node's pod CIDR."""
        return f"10.244.{self.index}.0/24"

    @property
    def pod_gateway(self) -> str:
        """The node's CNI bridge address (the pods' default gateway)."""
        return f"10.244.{self.index}.1"

    @property
    def hub_link(self) -> str:
        """The veth end on the hub's bridge (15 characters at most)."""
        return f"v{self.index}-{self.name}"[:15]


def hub_netns(prefix: str) -> str:
    """The hub namespace of the cluster whose namespaces start with ``prefix``."""
    return f"{prefix}-hub"


def create_hub(prefix: str) -> str:
    """Make the hub namespace and its bridge (again, if a killed run left one); returns its name."""
    netns = hub_netns(prefix)
    run_ip("netns", "del", netns, check=False)
    run_ip("netns", "add", netns)
    run_ip("-n", netns, "link", "set", "lo", "up")
    run_ip("-n", netns, "link", "add", HUB_BRIDGE, "type", "bridge")
    run_ip("-n", netns, "addr", "add", f"{HUB_ADDRESS}/{NODE_SUBNET.prefixlen}", "dev", HUB_BRIDGE)
    run_ip("-n", netns, "link", "set", HUB_BRIDGE, "up")
    _sysctl(netns, "net.ipv4.ip_forward=1")
    return netns


def attach_node(prefix: str, node_netns: str, node: NodeAddressing, peers: list[NodeAddressing]) -> None:
    """Wire a node's namespace to the hub and route every node's pod CIDR (``peers`` includes ``node``)."""
    hub = hub_netns(prefix)
    run_ip("-n", hub, "link", "del", node.hub_link, check=False)
    run_ip(
        "-n", hub, "link", "add", node.hub_link, "type", "veth", "peer", "name", "eth0", "netns", node_netns
    )
    run_ip("-n", hub, "link", "set", node.hub_link, "master", HUB_BRIDGE, "up")
    run_ip("-n", node_netns, "addr", "add", f"{node.address}/{NODE_SUBNET.prefixlen}", "dev", "eth0")
    run_ip("-n", node_netns, "link", "set", "eth0", "up")
    run_ip("-n", node_netns, "route", "add", "default", "via", HUB_ADDRESS)
    run_ip("-n", hub, "route", "replace", node.pod_cidr, "via", node.address)
    for peer in peers:
        if peer.index != node.index:
            run_ip("-n", node_netns, "route", "replace", peer.pod_cidr, "via", peer.address)
    _sysctl(node_netns, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.route_localnet=1")
    # kube-proxy needs bridged pod traffic to pass iptables (br_netfilter; per namespace on current kernels)
    _sysctl(node_netns, "net.bridge.bridge-nf-call-iptables=1")


def route_peer(node_netns: str, peer: NodeAddressing) -> None:
    """Route a node added later: its pod CIDR through its address."""
    run_ip("-n", node_netns, "route", "replace", peer.pod_cidr, "via", peer.address)


def remove_hub(prefix: str) -> None:
    """Remove the hub namespace (its bridge and veth ends go with it)."""
    run_ip("netns", "del", hub_netns(prefix), check=False)


def cni_config(node: NodeAddressing) -> str:
    """The node's CNI configuration list: a bridge with host-local addresses in its pod CIDR, and portmap."""
    conflist = {
        "cniVersion": "1.0.0",
        "name": "cachelink-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conflist, indent=2) + "\n"
