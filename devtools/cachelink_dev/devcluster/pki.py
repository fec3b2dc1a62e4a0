"""Certificates and keys of the development cluster, made with ``cryptography``.

One CA signs the API server's serving certificate and every client certificate; a separate RSA key
signs service-account tokens. Everything lives in ``<data-dir>/pki`` and is reused on later starts.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)
#: (file stem, common name, organisation) of each client certificate
CLIENTS: tuple[tuple[str, str, str | None], ...] = (
    ("admin", "kubernetes-admin", "system:masters"),
    ("kube-controller-manager", "system:kube-controller-manager", None),
    ("kube-scheduler", "system:kube-scheduler", None),
    ("kwok", "kwok-controller", "system:masters"),
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "kubeadm:cluster-admins"),
    ("front-proxy-client", "front-proxy-client", None),
)
SERVER_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    """Paths of the cluster's certificates and keys."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        """The cluster CA certificate (PEM)."""
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The cluster CA private key (PEM)."""
        return self.dir / "ca.key"

    @property
    def sa_key(self) -> Path:
        """The service-account token signing key (RSA, PEM)."""
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        """The public half of :attr:`sa_key`."""
        return self.dir / "sa.pub"

    def cert(self, stem: str) -> Path:
        """Certificate ``<stem>.crt``."""
        return self.dir / f"{stem}.crt"

    def key(self, stem: str) -> Path:
        """Private key ``<stem>.key``."""
        return self.dir / f"{stem}.key"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Digital signature always; certificate and CRL signing for the CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=False,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str, organisation: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(attrs)


def _issue(
    pki: Pki,
    stem: str,
    subject: x509.Name,
    *,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, ca_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(pki.key(stem), key)
    pki.cert(stem).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_pki(directory: Path, service_ip: str) -> Pki:
    """Create the CA, serving and client certificates and the service-account key unless present."""
    pki = Pki(directory)
    if pki.ca_cert.exists() and pki.sa_pub.exists():
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("cachelink-dev-cluster-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki.ca_key, ca_key)
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVER_DNS]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip)]
    server_usage = ExtendedKeyUsageOID.SERVER_AUTH
    _issue(
        pki, "apiserver", _name("kube-apiserver"), usage=server_usage, san=san, ca_key=ca_key, ca_name=ca_name
    )
    for stem, common_name, organisation in CLIENTS:
        subject = _name(common_name, organisation)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
        _issue(pki, stem, subject, usage=usage, san=None, ca_key=ca_key, ca_name=ca_name)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    # the CA certificate is written last: its presence marks a complete set
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return pki


def _load_ca(pki: Pki) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki.ca_key} is not an EC key")
    return key, x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()).subject


def issue_node_certificates(pki: Pki, node: str, address: str) -> tuple[str, str]:
    """A real node's kubelet certificates, unless present: (client stem, serving stem).

    The client certificate is what the Node authorizer expects (``O=system:nodes``,
    ``CN=system:node:<node>``); the serving one names the node and the address the API server dials.
    """
    client, serving = f"node-{node}", f"node-{node}-serving"
    if pki.cert(client).exists() and pki.cert(serving).exists():
        return client, serving
    ca_key, ca_name = _load_ca(pki)
    _issue(
        pki,
        client,
        _name(f"system:node:{node}", "system:nodes"),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=None,
        ca_key=ca_key,
        ca_name=ca_name,
    )
    san: list[x509.GeneralName] = [x509.DNSName(node), x509.IPAddress(ipaddress.ip_address(address))]
    _issue(
        pki,
        serving,
        _name(f"system:node:{node}", "system:nodes"),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=san,
        ca_key=ca_key,
        ca_name=ca_name,
    )
    return client, serving


def issue_client_certificate(pki: Pki, stem: str, common_name: str, organisation: str | None = None) -> str:
    """A client certificate made after the cluster's set (e.g. kube-proxy's), unless present; its stem."""
    if pki.cert(stem).exists():
        return stem
    ca_key, ca_name = _load_ca(pki)
    _issue(
        pki,
        stem,
        _name(common_name, organisation),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=None,
        ca_key=ca_key,
        ca_name=ca_name,
    )
    return stem
