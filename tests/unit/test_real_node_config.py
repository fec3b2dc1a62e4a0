"""A real node's kubelet certificates and configuration (no kubelet runs here)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cachelink_dev.devcluster.pki import ensure_pki, issue_node_certificates
from cachelink_dev.realnodes.kubelet import kubelet_configuration


def test_node_certificates_are_what_the_node_authorizer_and_the_api_server_expect(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki", "10.96.0.1")
    client, serving = issue_node_certificates(pki, "node-a", "10.77.0.2")
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    for stem, usage in (
        (client, ExtendedKeyUsageOID.CLIENT_AUTH),
        (serving, ExtendedKeyUsageOID.SERVER_AUTH),
    ):
        cert = x509.load_pem_x509_certificate(pki.cert(stem).read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:node-a"
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    san = x509.load_pem_x509_certificate(pki.cert(serving).read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["node-a"]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.77.0.2")]
    before = pki.cert(client).read_bytes()
    assert issue_node_certificates(pki, "node-a", "10.77.0.2") == (client, serving)
    assert pki.cert(client).read_bytes() == before  # kept on later starts


def test_kubelet_configuration_fits_this_host(tmp_path: Path) -> None:
    config = kubelet_configuration(
        prefix="cl123456",
        node="node-a",
        address="10.77.0.2",
        client_ca=tmp_path / "ca.crt",
        serving_cert=tmp_path / "s.crt",
        serving_key=tmp_path / "s.key",
    )
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupRoot"] == "/cl123456-node-a"  # one parent per node: teardown finds every cgroup
    assert config["readOnlyPort"] == 0 and config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authentication"]["x509"] == {"clientCAFile": str(tmp_path / "ca.crt")}
    assert config["address"] == "10.77.0.2"
    assert config["containerRuntimeEndpoint"] == "unix:///run/containerd/containerd.sock"
