"""The agent-certificate signer's checks: an agent gets a certificate for its own node only, and a
certificate that verifies against the CA, for exactly its node's name and address."""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from typing import Any

import pytest
from cachelink_agent import serving_cert
from cachelink_operator import agent_certs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AGENT = "system:serviceaccount:cachelink-system:cachelink-agent"
NODE, IP = "node-a", "10.77.0.2"


def request(
    csr_pem: bytes | None = None,
    user: str = AGENT,
    node_extra: list[str] | None = None,
    usages: list[str] | None = None,
    lifetime: int = 3600,
) -> dict[str, Any]:
    """A CertificateSigningRequest as the API server holds one the agent of NODE made."""
    body = serving_cert.request_object(NODE, csr_pem or serving_cert.new_request(NODE, IP)[1], lifetime)
    body["spec"]["username"] = user
    body["spec"]["extra"] = {serving_cert.NODE_NAME_EXTRA: [NODE] if node_extra is None else node_extra}
    if usages is not None:
        body["spec"]["usages"] = usages
    return body


def csr_pem(
    common_name: str = f"cachelink-agent:{NODE}",
    names: list[x509.GeneralName] | None = None,
    key: Any = None,
    extra: x509.ExtensionType | None = None,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName(
            names if names is not None else [x509.IPAddress(ipaddress.ip_address(IP)), x509.DNSName(NODE)]
        ),
        critical=False,
    )
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_the_agents_request_is_signed_for_its_node_and_verifies_against_the_ca(tmp_path) -> None:
    ca = agent_certs.SigningCA.generate()
    key_pem, request_pem = serving_cert.new_request(NODE, IP)
    approved = agent_certs.check(request(request_pem), AGENT, [IP, "fd00::2"])
    assert approved.node == NODE and approved.lifetime_s == 3600
    cert_pem = agent_certs.sign(approved, ca)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == datetime.timedelta(seconds=3600 + agent_certs.BACKDATE_S)
    # a TLS client trusting only the CA accepts it for the node's address, and for no other address
    (tmp_path / "tls.key").write_bytes(key_pem)
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    assert handshake(server, client, IP) is None
    assert "IP address mismatch" in str(handshake(server, client, "10.77.0.3"))


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> ssl.SSLError | None:
    """A TLS handshake over a socket pair, the client connecting to ``hostname``; its error, or None."""
    server_end, client_end = socket.socketpair()
    server_end.settimeout(10)
    client_end.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(ssl.SSLError, OSError), server.wrap_socket(server_end, server_side=True):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(client_end, server_hostname=hostname):
            return None
    except ssl.SSLError as error:
        return error
    finally:
        client_end.close()  # the server end sees the close (or the alert) and its handshake ends
        thread.join(10)
        server_end.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"user": "system:serviceaccount:tenant-b:default"}, "NotTheAgent"),
        ({"user": "kubernetes-admin"}, "NotTheAgent"),
        ({"node_extra": []}, "NoNodeBinding"),  # a token not bound to a pod (kubectl create token)
        ({"node_extra": ["node-a", "node-b"]}, "NoNodeBinding"),
        ({"usages": ["digital signature", "server auth", "client auth"]}, "WrongUsages"),
        ({"usages": ["digital signature"]}, "WrongUsages"),
        ({"csr": "other node's name"}, "WrongSubject"),
        ({"csr": "other node's address"}, "WrongNames"),
        ({"csr": "a wildcard name"}, "WrongNames"),
        ({"csr": "a URI name"}, "WrongNames"),
        ({"csr": "no address"}, "WrongNames"),
        ({"csr": "a CA flag"}, "WrongExtensions"),
        ({"csr": "a small RSA key"}, "WeakKey"),
        ({"csr": "not PEM"}, "BadRequest"),
    ],
)
def test_every_other_request_is_refused_with_its_reason(change: dict[str, Any], reason: str) -> None:
    csrs = {
        "other node's name": lambda: csr_pem(common_name="cachelink-agent:node-b"),
        "other node's address": lambda: csr_pem(names=[x509.IPAddress(ipaddress.ip_address("10.77.0.3"))]),
        "a wildcard name": lambda: csr_pem(
            names=[x509.IPAddress(ipaddress.ip_address(IP)), x509.DNSName("*.cluster.local")]
        ),
        "a URI name": lambda: csr_pem(
            names=[
                x509.IPAddress(ipaddress.ip_address(IP)),
                x509.UniformResourceIdentifier("spiffe://x/y"),
            ]
        ),
        "no address": lambda: csr_pem(names=[x509.DNSName(NODE)]),
        "a CA flag": lambda: csr_pem(extra=x509.BasicConstraints(ca=True, path_length=None)),
        "a small RSA key": lambda: csr_pem(key=rsa.generate_private_key(65537, 1024)),
        "not PEM": lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n",
    }
    made = csrs[change["csr"]]() if "csr" in change else None
    body = request(made, **{k: v for k, v in change.items() if k != "csr"})
    with pytest.raises(agent_certs.Refused) as refused:
        agent_certs.check(body, AGENT, [IP])
    assert refused.value.reason == reason, refused.value


def test_a_node_that_does_not_exist_has_no_address_to_sign() -> None:
    with pytest.raises(agent_certs.Refused) as refused:
        agent_certs.check(request(), AGENT, [])
    assert refused.value.reason == "WrongNames"


def test_lifetimes_are_bounded_and_pending_requests_are_told_apart() -> None:
    assert agent_certs.check(request(lifetime=10**9), AGENT, [IP]).lifetime_s == agent_certs.MAX_LIFETIME_S
    body = request()
    assert agent_certs.is_pending_agent_request(body) and not agent_certs.is_approved(body)
    body["status"] = {"conditions": [{"type": "Approved", "status": "True"}]}
    assert agent_certs.is_pending_agent_request(body) and agent_certs.is_approved(body)
    body["status"]["certificate"] = base64.b64encode(b"x").decode()
    assert not agent_certs.is_pending_agent_request(body)
    denied = {**request(), "status": {"conditions": [{"type": "Denied", "status": "True"}]}}
    assert not agent_certs.is_pending_agent_request(denied)
    other = request()
    other["spec"]["signerName"] = "kubernetes.io/kubelet-serving"
    assert not agent_certs.is_pending_agent_request(other)


def test_a_ca_secret_that_does_not_fit_is_refused() -> None:
    ca, other = agent_certs.SigningCA.generate(), agent_certs.SigningCA.generate()
    other_key = other.key_pem
    with pytest.raises(ValueError, match="does not belong"):
        agent_certs.SigningCA.from_pem(ca.cert_pem, other_key)
