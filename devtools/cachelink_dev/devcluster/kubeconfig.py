"""Kubeconfig files for the admin and for each control-plane component (certificates embedded)."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from cachelink_dev.devcluster.pki import Pki

CLUSTER_NAME = "cachelink-dev"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path, server: str, pki: Pki, client: str, user: str, tls_server_name: str | None = None
) -> Path:
    """Write a kubeconfig for ``server`` that authenticates with the ``client`` certificate of ``pki``.

    ``tls_server_name`` is the name checked in the server's certificate when ``server``'s address is
    not in it (real nodes reach the API server through an address of their own network)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(pki.ca_cert),
                    **({"tls-server-name": tls_server_name} if tls_server_name else {}),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(pki.cert(client)),
                    "client-key-data": _b64(pki.key(client)),
                },
            }
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
