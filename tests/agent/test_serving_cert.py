"""The agent's serving certificate: requested through a CSR API, kept on the node, reused while young,
and refused or timed out with a clear error. The signer is the operator's (its checks and signing)."""

from __future__ import annotations

import asyncio
import base64
import stat
from pathlib import Path
from typing import Any

import pytest
from cachelink_agent import serving_cert
from cachelink_operator import agent_certs

AGENT = "system:serviceaccount:cachelink-system:cachelink-agent"


class SigningApi:
    """A CSR API whose signer is the operator's, the requests made as ``node``'s agent pod."""

    def __init__(self, node: str, addresses: list[str], answer: str = "sign") -> None:
        self.node, self.addresses, self.answer = node, addresses, answer
        self.ca = agent_certs.SigningCA.generate()
        self.created: list[dict[str, Any]] = []

    def create(self, body: dict[str, Any]) -> None:
        body["spec"].update(username=AGENT, extra={serving_cert.NODE_NAME_EXTRA: [self.node]})
        self.created.append(body)

    def status(self, name: str) -> dict[str, Any]:
        (body,) = [b for b in self.created if b["metadata"]["name"] == name]
        if self.answer == "wait":
            return {}
        try:
            approved = agent_certs.check(body, AGENT, self.addresses)
        except agent_certs.Refused as refused:
            return {"conditions": [{"type": "Denied", "reason": refused.reason, "message": str(refused)}]}
        return {"certificate": base64.b64encode(agent_certs.sign(approved, self.ca)).decode()}


def test_a_signed_certificate_is_kept_private_loaded_and_reused(tmp_path: Path) -> None:
    api = SigningApi("node-a", ["10.77.0.2"])
    cert = serving_cert.ServingCert(
        tmp_path / "tls", "node-a", "10.77.0.2", api, lifetime_s=3600, poll_s=0.01
    )
    asyncio.run(cert.obtain())
    for name in (serving_cert.KEY_FILE, serving_cert.CERT_FILE):
        assert stat.S_IMODE((tmp_path / "tls" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    assert cert.context.get_ca_certs() == []  # a server context: no client certificates asked for
    assert cert.expires_at - cert.issued_at == pytest.approx(3600 + agent_certs.BACKDATE_S)
    assert cert.issued_at < cert.renew_at < cert.expires_at
    # a restarted agent reuses it while it is young, and asks again once two thirds of its life are gone
    again = serving_cert.ServingCert(tmp_path / "tls", "node-a", "10.77.0.2", api)
    assert again.load_existing() and again.expires_at == cert.expires_at
    late = serving_cert.ServingCert(
        tmp_path / "tls", "node-a", "10.77.0.2", api, clock=lambda: cert.renew_at + 1
    )
    assert not late.load_existing()
    assert len(api.created) == 1


def test_a_request_for_another_nodes_address_is_refused_with_the_signers_reason(tmp_path: Path) -> None:
    api = SigningApi("node-a", ["10.77.0.2"])
    cert = serving_cert.ServingCert(tmp_path / "tls", "node-a", "10.77.0.3", api, poll_s=0.01)
    with pytest.raises(serving_cert.ServingCertError, match=r"refused \(Denied: WrongNames"):
        asyncio.run(cert.obtain())
    assert not (tmp_path / "tls").exists()


def test_an_unsigned_request_times_out_naming_the_signer(tmp_path: Path) -> None:
    api = SigningApi("node-a", ["10.77.0.2"], answer="wait")
    cert = serving_cert.ServingCert(tmp_path, "node-a", "10.77.0.2", api, timeout_s=0.2, poll_s=0.05)
    with pytest.raises(
        serving_cert.ServingCertError, match=r"not signed within 0\.2 s.*cachelink\.io/agent-serving"
    ):
        asyncio.run(cert.obtain())


def test_a_damaged_certificate_is_not_reused(tmp_path: Path) -> None:
    (tmp_path / serving_cert.CERT_FILE).write_text("not a certificate")
    (tmp_path / serving_cert.KEY_FILE).write_text("not a key")
    cert = serving_cert.ServingCert(tmp_path, "node-a", "10.77.0.2", SigningApi("node-a", ["10.77.0.2"]))
    assert not cert.load_existing()
