"""Kubeconfig files for the admin and for each control-plane component (certificates embedded)."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from cachelink.devcluster.pki import Pki

CLUSTER_NAME = "cachelink-dev"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Pki, client: str, user: str) -> Path:
    """Write a kubeconfig for ``server`` that authenticates with the ``client`` certificate of ``pki``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(pki.ca_cert),
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
