"""The signer ``cachelink.io/agent-serving``: agents' serving certificates, signed after checking who asks.

An agent requests its certificate with its pod's bound ServiceAccount token (see
``cachelink_agent.serving_cert``), so the API server records in the request the agent's ServiceAccount and
the node its pod runs on. A request
is approved and signed only when all of these hold, and denied with the reason otherwise:

- it was made by the agents' ServiceAccount, with a token bound to a pod on node N (the user extra
  ``authentication.kubernetes.io/node-name``);
- its subject is ``cachelink-agent:N``, its names are N and addresses of node N (``status.addresses``) only;
- it asks for server authentication only, with a valid signature.

So an agent (or anyone holding its token) can get a certificate for its own node only: one node's compromise
does not let it pose as another node's agent to the operator or Prometheus.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachelink_agent import serving_cert
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: usages an agent may ask for ("key encipherment" is what RSA key exchange needs)
ALLOWED_USAGES = frozenset({*serving_cert.USAGES, "key encipherment"})
#: the longest certificate the signer issues, whatever a request asks for
MAX_LIFETIME_S = 30 * 24 * 3600
#: issued certificates start this much before now (clocks of nodes differ a little)
BACKDATE_S = 300


class Refused(ValueError):
    """A request the signer denies; ``reason`` is the condition's reason (CamelCase)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SigningCA:
    """The certificate authority agents' certificates chain to (a Secret made by the chart)."""

    cert: x509.Certificate
    key: Any

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> SigningCA:
        """Load the CA; ValueError when the key is not the certificate's or the certificate is no CA."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ValueError("the key does not belong to the certificate")
        try:
            if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise ValueError("the certificate is not a CA")
        except x509.ExtensionNotFound:
            raise ValueError("the certificate is not a CA") from None
        return cls(cert, key)

    @classmethod
    def generate(cls, name: str = "cachelink-agent-ca", days: int = 3650) -> SigningCA:
        """A new self-signed P-256 CA (what the chart's ``genCA`` makes, for installs without the chart)."""
        key = ec.generate_private_key(ec.SECP256R1())
        public_bits = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=BACKDATE_S))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            # its key identifier made as Go makes it (truncated SHA-256): like the chart's genCA
            .add_extension(
                x509.SubjectKeyIdentifier(hashlib.sha256(public_bits).digest()[:20]), critical=False
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def key_pem(self) -> bytes:
        """The CA's private key (PKCS#8 PEM)."""
        return bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate (what clients of the agents trust)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Approved:
    """A request that passed every check."""

    node: str
    csr: x509.CertificateSigningRequest
    lifetime_s: int


def is_pending_agent_request(body: Mapping[str, Any]) -> bool:
    """A request for this signer that is neither decided nor issued."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    if spec.get("signerName") != serving_cert.SIGNER or status.get("certificate"):
        return False
    decided = {c.get("type") for c in status.get("conditions") or []}
    return not decided & {"Denied", "Failed"}


def is_approved(body: Mapping[str, Any]) -> bool:
    """The request carries an Approved condition."""
    return any(c.get("type") == "Approved" for c in (body.get("status") or {}).get("conditions") or [])


def requesting_node(spec: Mapping[str, Any], agent_user: str) -> str:
    """The node whose agent made the request; :class:`Refused` when it is not an agent's request."""
    if spec.get("username") != agent_user:
        raise Refused("NotTheAgent", f"requested by {spec.get('username')!r}, not by {agent_user}")
    nodes = (spec.get("extra") or {}).get(serving_cert.NODE_NAME_EXTRA) or []
    if len(nodes) != 1 or not nodes[0]:
        raise Refused("NoNodeBinding", "the request was not made with a token bound to a pod on a node")
    return str(nodes[0])


def _parsed(spec: Mapping[str, Any]) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(base64.b64decode(spec.get("request") or ""))
    except ValueError as error:
        raise Refused("BadRequest", f"the request is not a PEM certificate request: {error}") from None
    if not csr.is_signature_valid:
        raise Refused("BadRequest", "the request's signature does not verify")
    key = csr.public_key()
    good_key = (
        (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 256)
        or isinstance(key, ed25519.Ed25519PublicKey)
        or (isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048)
    )
    if not good_key:
        raise Refused("WeakKey", "keys must be EC P-256 or larger, Ed25519 or RSA 2048 or larger")
    return csr


def _names(csr: x509.CertificateSigningRequest, node: str, addresses: Sequence[str]) -> None:
    subject = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    want = serving_cert.common_name(node)
    if len(csr.subject) != 1 or [a.value for a in subject] != [want]:
        raise Refused(
            "WrongSubject", f"the subject must be CN={want} only, not {csr.subject.rfc4514_string()}"
        )
    try:
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Refused("WrongNames", "the request names no address") from None
    dns = names.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    if len(dns) + len(ips) != len(list(names)):
        raise Refused("WrongNames", "only DNS and IP names are allowed")
    if any(name != node for name in dns):
        raise Refused("WrongNames", f"DNS names {dns} are not the node's name {node!r}")
    own = {str(ipaddress.ip_address(a)) for a in addresses}
    if not ips or not set(ips) <= own:
        raise Refused("WrongNames", f"addresses {ips} are not node {node}'s addresses {sorted(own)}")
    extra = [
        e.oid.dotted_string for e in csr.extensions if not isinstance(e.value, x509.SubjectAlternativeName)
    ]
    if extra:
        raise Refused("WrongExtensions", f"the request may carry only its names, not extensions {extra}")


def check(body: Mapping[str, Any], agent_user: str, addresses: Sequence[str]) -> Approved:
    """Every check of the module docstring; :class:`Refused` with the reason of the first that fails.

    ``addresses`` are those of the node named by the requesting token (empty when that node is unknown).
    """
    spec = body.get("spec") or {}
    node = requesting_node(spec, agent_user)
    usages = set(spec.get("usages") or [])
    if "server auth" not in usages or not usages <= ALLOWED_USAGES:
        raise Refused(
            "WrongUsages", f"usages {sorted(usages)}: server auth and {sorted(ALLOWED_USAGES)} only"
        )
    csr = _parsed(spec)
    _names(csr, node, addresses)
    asked = int(spec.get("expirationSeconds") or MAX_LIFETIME_S)
    return Approved(node, csr, max(serving_cert.MIN_LIFETIME_S, min(asked, MAX_LIFETIME_S)))


def _authority_key_identifier(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The CA's own key identifier when it has one (Go, hence Helm's ``genCA``, makes it from SHA-256, not
    SHA-1: recomputing it would not match, and TLS clients would not find the issuer)."""
    try:
        own = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(own)


def sign(approved: Approved, ca: SigningCA, now: datetime.datetime | None = None) -> bytes:
    """The serving certificate for an approved request (PEM)."""
    now = now or datetime.datetime.now(datetime.UTC)
    names = approved.csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    is_rsa = isinstance(approved.csr.public_key(), rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(approved.csr.subject)
        .issuer_name(ca.cert.subject)
        .public_key(approved.csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=BACKDATE_S))
        .not_valid_after(now + datetime.timedelta(seconds=approved.lifetime_s))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(names, critical=False)
        .add_extension(_authority_key_identifier(ca.cert), critical=False)
    )
    algorithm = None if isinstance(ca.key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(ca.key, algorithm).public_bytes(serialization.Encoding.PEM)
