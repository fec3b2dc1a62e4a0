"""Command lines of the cluster's components: etcd, the control plane and the KWOK node simulator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cachelink_dev.devcluster.build import Tools
from cachelink_dev.devcluster.pki import Pki

HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
#: first address of SERVICE_CIDR: the ``kubernetes`` Service
SERVICE_IP = "10.96.0.1"
#: pod IPs that KWOK hands out to pods without hostNetwork: loopback, so nothing ever leaves the machine
POD_CIDR = "127.1.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: KWOK manages exactly the nodes with this annotation
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
#: components in start order (``down`` stops them in reverse)
ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
#: size (MB) at which the API server rotates its audit log, and how many rotated files it keeps
AUDIT_LOG_MAX_MB = 200
AUDIT_LOG_BACKUPS = 1
#: what the API server audits: every workload's ServiceAccount at Metadata level (the operator's
#: included), not kube-system's controller accounts (the controller manager's noise), nothing else
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


@dataclass(frozen=True)
class Ports:
    """Loopback ports of the components (kept in the state file so a restart reuses them)."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    def named(self) -> dict[str, int]:
        """Each port with the component (and role) that binds it, for error messages."""
        return {
            "etcd (client)": self.etcd_client,
            "etcd (peer)": self.etcd_peer,
            "kube-apiserver": self.apiserver,
            "kube-controller-manager": self.controller_manager,
            "kube-scheduler": self.scheduler,
        }


@dataclass(frozen=True)
class Layout:
    """Files and folders under the data directory."""

    root: Path

    @property
    def pki(self) -> Path:
        """Certificates and keys."""
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        """One ``<component>.log`` per component."""
        return self.root / "logs"

    @property
    def run(self) -> Path:
        """Pid files."""
        return self.root / "run"

    @property
    def state(self) -> Path:
        """The state file: ports and node addresses."""
        return self.root / "state.json"

    @property
    def admin_kubeconfig(self) -> Path:
        """The admin kubeconfig that users and tests use."""
        return self.root / "kubeconfig"

    def kubeconfig(self, component: str) -> Path:
        """The kubeconfig of one control-plane component."""
        return self.root / "kubeconfigs" / f"{component}.kubeconfig"

    @property
    def audit_policy(self) -> Path:
        """The API server's audit policy (:data:`AUDIT_POLICY`)."""
        return self.root / "audit-policy.yaml"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON event per line."""
        return self.logs / "audit.log"

    @property
    def egress_config(self) -> Path:
        """The API server's egress selector configuration (:func:`write_egress_config`)."""
        return self.root / "egress-selector.yaml"

    @property
    def egress_socket(self) -> Path:
        """The CONNECT proxy through which the API server reaches real nodes and pods
        (``cachelink_dev.realnodes.apiproxy``; absent while the cluster has no real nodes)."""
        return self.run / "egress.sock"


def write_egress_config(layout: Layout) -> Path:
    """Route the API server's ``cluster`` traffic (kubelets, pods, Services) through the egress socket."""
    config = {
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [
            {
                "name": "cluster",
                "connection": {
                    "proxyProtocol": "HTTPConnect",
                    "transport": {"uds": {"udsName": str(layout.egress_socket)}},
                },
            }
        ],
    }
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.egress_config.write_text(yaml.safe_dump(config, sort_keys=False))
    return layout.egress_config


def write_audit_policy(layout: Layout) -> Path:
    """Write :data:`AUDIT_POLICY` where the API server reads it; returns its path."""
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
    return layout.audit_policy


def command_lines(tools: Tools, layout: Layout, pki: Pki, ports: Ports) -> dict[str, list[str]]:
    """The argv of every component."""
    etcd_peer = f"http://{HOST}:{ports.etcd_peer}"
    etcd_client = f"http://{HOST}:{ports.etcd_client}"
    return {
        "etcd": [
            str(tools["etcd"]),
            "--name=dev",
            f"--data-dir={layout.root / 'etcd'}",
            f"--listen-client-urls={etcd_client}",
            f"--advertise-client-urls={etcd_client}",
            f"--listen-peer-urls={etcd_peer}",
            f"--initial-advertise-peer-urls={etcd_peer}",
            f"--initial-cluster=dev={etcd_peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",
            "--log-level=warn",
            "--quota-backend-bytes=2147483648",
        ],
        "kube-apiserver": [
            str(tools["kube-apiserver"]),
            f"--etcd-servers={etcd_client}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={pki.cert('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.ca_cert}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # no kube-proxy and a loopback advertise address: keep the kubernetes Service without endpoints
            "--endpoint-reconciler-type=none",
            f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
            f"--proxy-client-cert-file={pki.cert('front-proxy-client')}",
            f"--proxy-client-key-file={pki.key('front-proxy-client')}",
            f"--requestheader-client-ca-file={pki.ca_cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--audit-policy-file={layout.audit_policy}",
            f"--egress-selector-config-file={layout.egress_config}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--audit-log-path={layout.audit_log}",
            "--audit-log-format=json",
            f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}",
            f"--audit-log-maxbackup={AUDIT_LOG_BACKUPS}",
            "--profiling=false",
            "--v=1",
        ],
        "kube-controller-manager": [
            str(tools["kube-controller-manager"]),
            *_component_auth(layout, "kube-controller-manager", ports.controller_manager),
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca_cert}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,bootstrapsigner,tokencleaner",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ],
        "kube-scheduler": [
            str(tools["kube-scheduler"]),
            *_component_auth(layout, "kube-scheduler", ports.scheduler),
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ],
        "kwok": [
            str(tools["kwok"]),
            f"--kubeconfig={layout.kubeconfig('kwok')}",
            f"--config={tools['stages.yaml']}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}",
            f"--cidr={POD_CIDR}",
            f"--node-ip={HOST}",
            "--node-lease-duration-seconds=40",
        ],
    }


def _component_auth(layout: Layout, component: str, port: int) -> list[str]:
    kubeconfig = layout.kubeconfig(component)
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={HOST}",
        f"--secure-port={port}",
        f"--cert-dir={layout.root / component}",
    ]
