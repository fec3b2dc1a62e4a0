"""Health probes of the components over loopback HTTP(S); each returns False rather than raising."""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request

from cachelink_dev.devcluster.pki import Pki

PROBE_TIMEOUT_S = 2.0


def _get(url: str, context: ssl.SSLContext | None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S, context=context) as response:  # noqa: S310
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, http.client.HTTPException):
        return 0, ""


def etcd_healthy(port: int) -> bool:
    """etcd answers ``/health`` with ``"health":"true"``."""
    status, body = _get(f"http://127.0.0.1:{port}/health", None)
    return status == 200 and '"true"' in body


def apiserver_ready(port: int, pki: Pki) -> bool:
    """The API server answers ``/readyz`` with 200 to the admin client certificate."""
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
    return _get(f"https://127.0.0.1:{port}/readyz", context)[0] == 200


def component_healthy(port: int) -> bool:
    """A controller-manager or scheduler answers ``/healthz`` (its serving cert is self-signed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return _get(f"https://127.0.0.1:{port}/healthz", context)[0] == 200
