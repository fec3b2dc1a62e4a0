"""The agent's TLS serving certificate, signed through the Kubernetes CSR API.

The private key is made on the node and never leaves it. The agent sends a CertificateSigningRequest for
signer ``cachelink.io/agent-serving`` with its pod's bound ServiceAccount token, so the API server records
the node that pod runs on (the user's extra ``authentication.kubernetes.io/node-name``); the operator signs
only a request whose names are that node's name and address (``cachelink_operator.agent_certs``). The
certificate is renewed after two thirds of its life; the server's ``ssl.SSLContext`` is reloaded in place,
so new connections get the new certificate and open ones are kept.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llm_datadist.status import CacheLinkError

SIGNER = "cachelink.io/agent-serving"
#: what a serving certificate is for, in the CSR API's words
USAGES = ("digital signature", "server auth")
#: the user extra the API server adds for a token bound to a pod: the pod's node
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
COMMON_NAME_PREFIX = "cachelink-agent:"
KEY_FILE, CERT_FILE = "tls.key", "tls.crt"
#: the CSR API refuses shorter lifetimes
MIN_LIFETIME_S = 600

_log = logging.getLogger("cachelink_agent.serving_cert")


class ServingCertError(CacheLinkError):
    """No serving certificate: the request was denied, failed, or not signed in time."""


class CsrApi(Protocol):
    """The two calls of the CSR API the agent makes (blocking; run in a thread)."""

    def create(self, body: dict[str, Any]) -> None:
        """Create a CertificateSigningRequest (an existing one of that name is not an error)."""

    def status(self, name: str) -> dict[str, Any]:
        """The ``status`` of the CertificateSigningRequest ``name``."""


def common_name(node: str) -> str:
    """The subject common name of ``node``'s agent certificate."""
    return f"{COMMON_NAME_PREFIX}{node}"


def new_request(node: str, address: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a CSR for ``node`` at ``address`` (an IP): (key PEM, CSR PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address)), x509.DNSName(node)])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name(node))]))
        .add_extension(names, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def request_object(node: str, csr_pem: bytes, lifetime_s: int) -> dict[str, Any]:
    """The CertificateSigningRequest object for ``csr_pem`` (named after the node and the request)."""
    digest = hashlib.sha256(csr_pem).hexdigest()[:12]
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {
            "name": f"cachelink-agent-{node}-{digest}"[:253],
            "labels": {"cachelink.io/agent": "serving"},
        },
        "spec": {
            "request": base64.b64encode(csr_pem).decode(),
            "signerName": SIGNER,
            "usages": list(USAGES),
            "expirationSeconds": lifetime_s,
        },
    }


def refusal(status: dict[str, Any]) -> str | None:
    """Why the request will never be signed (a Denied or Failed condition), else None."""
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("Denied", "Failed") and condition.get("status", "True") == "True":
            return (
                f"{condition['type']}: {condition.get('reason', '')} {condition.get('message', '')}".strip()
            )
    return None


def not_after(cert_pem: bytes) -> float:
    """When the first certificate of ``cert_pem`` expires (seconds since the epoch)."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.timestamp()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only, replaced atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    temporary.replace(path)


@dataclass
class ServingCert:
    """The agent's certificate and key in ``folder`` and the server context loaded from them."""

    folder: Path
    node: str
    address: str
    api: CsrApi
    timeout_s: float = 300.0
    lifetime_s: int = 7 * 24 * 3600
    poll_s: float = 1.0
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.expires_at = 0.0
        self.issued_at = 0.0

    @property
    def renew_at(self) -> float:
        """When to ask for the next certificate: after two thirds of this one's life."""
        return self.issued_at + (self.expires_at - self.issued_at) * 2 / 3

    def load_existing(self) -> bool:
        """Use the certificate an earlier run left, if it still has a third of its life; whether it did."""
        key, cert = self.folder / KEY_FILE, self.folder / CERT_FILE
        try:
            expires = not_after(cert.read_bytes())
            issued = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_before_utc.timestamp()
            if self.clock() >= issued + (expires - issued) * 2 / 3:
                return False
            self.context.load_cert_chain(cert, key)
        except (OSError, ValueError, ssl.SSLError):
            return False
        self.issued_at, self.expires_at = issued, expires
        return True

    async def obtain(self) -> None:
        """Request, wait for and load a new certificate; :class:`ServingCertError` when there is none."""
        key_pem, csr_pem = new_request(self.node, self.address)
        body = request_object(self.node, csr_pem, self.lifetime_s)
        name = body["metadata"]["name"]
        try:
            await asyncio.to_thread(self.api.create, body)
        except Exception as error:
            raise ServingCertError(f"cannot create CertificateSigningRequest {name}: {error}") from error
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                status = await asyncio.to_thread(self.api.status, name)
            except Exception as error:  # noqa: BLE001 - a transient API failure: retried until the deadline
                status = {}
                _log.warning("reading CertificateSigningRequest %s failed: %s", name, error)
            why = refusal(status)
            if why is not None:
                raise ServingCertError(f"CertificateSigningRequest {name} was refused ({why})")
            if status.get("certificate"):
                cert_pem = base64.b64decode(status["certificate"])
                break
            if time.monotonic() > deadline:
                raise ServingCertError(
                    f"CertificateSigningRequest {name} was not signed within {self.timeout_s:g} s "
                    f"(signer {SIGNER} is the CacheLink operator: is it running?)"
                )
            await asyncio.sleep(self.poll_s)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(self.folder / KEY_FILE, key_pem)
        _write_private(self.folder / CERT_FILE, cert_pem)
        self.context.load_cert_chain(self.folder / CERT_FILE, self.folder / KEY_FILE)
        certificate = x509.load_pem_x509_certificate(cert_pem)
        self.issued_at = certificate.not_valid_before_utc.timestamp()
        self.expires_at = certificate.not_valid_after_utc.timestamp()
        expires = datetime.datetime.fromtimestamp(self.expires_at, datetime.UTC).isoformat()
        _log.info("serving certificate from %s signed (expires %s)", name, expires)

    async def renew_forever(self, retry_s: float = 30.0) -> None:
        """Renew the certificate after two thirds of its life, forever; failures are logged and retried."""
        while True:
            await asyncio.sleep(max(1.0, self.renew_at - self.clock()))
            try:
                await self.obtain()
            except ServingCertError as error:
                _log.error("serving certificate not renewed (retrying in %g s): %s", retry_s, error)
                await asyncio.sleep(retry_s)


class KubernetesCsrApi:
    """:class:`CsrApi` through the ``kubernetes`` client, with the pod's in-cluster credentials."""

    def __init__(self, request_timeout_s: float = 10.0) -> None:
        from kubernetes import client, config  # noqa: PLC0415 - only agents that request certificates

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException as error:
            raise ServingCertError(
                f"no in-cluster Kubernetes credentials to request a certificate: {error}"
            ) from None
        self._api = client.CertificatesV1Api()
        self._timeout = request_timeout_s

    def create(self, body: dict[str, Any]) -> None:
        """Create the request; one of the same name (same key, a retried call) is already there."""
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        try:
            self._api.create_certificate_signing_request(
                body,  # type: ignore[arg-type] # the client serialises plain JSON as it is
                _request_timeout=self._timeout,
            )
        except ApiException as error:
            if error.status != 409:
                raise

    def status(self, name: str) -> dict[str, Any]:
        """The request's status as plain JSON."""
        status = self._api.read_certificate_signing_request(name, _request_timeout=self._timeout).status
        if status is None:
            return {}
        return {
            "certificate": status.certificate,
            "conditions": [c.to_dict() for c in status.conditions or []],
        }
