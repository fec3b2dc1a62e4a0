"""The agents' serving certificates on real nodes (issue 14 item 4).

Each agent makes its key on its node and gets its certificate from the operator through the Kubernetes CSR
API; the operator signs a request only for the node of the pod whose token made it. So every agent serves
TLS for its own node's address and name (the operator and this suite verify it with the chart's CA), and a
compromised agent, holding its pod's token, cannot get a certificate for another node.
"""

from __future__ import annotations

import socket
import ssl
import uuid
from typing import Any

import pytest
from cachelink_agent import serving_cert
from cachelink_e2e_operator import OperatorEnv, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from cachelink_dev.realnodes.product import api_port

pytestmark = pytest.mark.e2e


def peer_certificate(ca: str, address: str, port: int, hostname: str) -> dict[str, Any]:
    """The certificate a TLS server at ``address:port`` shows, verified with ``ca`` for ``hostname``."""
    context = ssl.create_default_context(cadata=ca)
    with (
        socket.create_connection((address, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        return tls.getpeercert()


def test_each_agent_serves_tls_for_its_own_node_only(operator_env: OperatorEnv) -> None:
    product = operator_env.product
    ca = product.agent_ca()
    assert ca is not None, "the chart serves the agent API over TLS by default"
    pods = product.agent_pods()
    addresses = {node: pod["status"]["podIP"] for node, pod in pods.items()}
    for node, pod in pods.items():
        address, port = addresses[node], api_port(pod)
        assert port is not None
        cert = product.in_hub(lambda a=address, p=port: peer_certificate(ca, a, p, a))
        subject = dict(item for part in cert["subject"] for item in part)
        assert subject == {"commonName": serving_cert.common_name(node)}, cert
        assert set(cert["subjectAltName"]) == {("IP Address", address), ("DNS", node)}, cert
        # the same certificate does not pass for another node's address
        other = next(a for n, a in addresses.items() if n != node)
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            product.in_hub(lambda a=address, p=port, o=other: peer_certificate(ca, a, p, o))


def denied(env: OperatorEnv, name: str) -> dict[str, str]:
    """Wait for the operator's decision on a request; its Denied condition (fails if it was signed)."""

    def decided() -> dict[str, Any] | None:
        found = env.get("certificatesigningrequests.certificates.k8s.io", name)
        status = (found or {}).get("status") or {}
        return status if status.get("conditions") or status.get("certificate") else None

    status = wait_for(decided, 60, f"the operator's decision on {name}")
    assert not status.get("certificate"), f"{name} was signed"
    (condition,) = [c for c in status["conditions"] if c["type"] == "Denied"]
    return dict(condition)


def test_a_compromised_agent_gets_no_certificate_for_another_node(operator_env: OperatorEnv) -> None:
    """Node-a's agent token (bound to its pod) asks for node-b's address, and for node-b's name; a token of
    the agents' ServiceAccount bound to no pod asks for its own node: each is denied with its reason."""
    env, product = operator_env, operator_env.product
    pods = product.agent_pods()
    a_pod, b_address = pods["node-a"], pods["node-b"]["status"]["podIP"]
    account, namespace = a_pod["spec"]["serviceAccountName"], a_pod["metadata"]["namespace"]
    bound = env.kubectl(
        "create", "token", account, "-n", namespace, "--duration=10m",
        "--bound-object-kind=Pod", f"--bound-object-name={a_pod['metadata']['name']}",
    ).stdout.strip()  # fmt: skip
    unbound = env.kubectl("create", "token", account, "-n", namespace, "--duration=10m").stdout.strip()
    requests = []
    try:
        for token, node, address, reason in (
            (bound, "node-a", b_address, "WrongNames"),
            (bound, "node-b", b_address, "WrongSubject"),
            (unbound, "node-a", pods["node-a"]["status"]["podIP"], "NoNodeBinding"),
        ):
            body = serving_cert.request_object(node, serving_cert.new_request(node, address)[1], 3600)
            body["metadata"]["name"] += f"-{uuid.uuid4().hex[:6]}"
            as_agent(env, token).create_certificate_signing_request(body)
            requests.append(body["metadata"]["name"])
            condition = denied(env, body["metadata"]["name"])
            assert condition["reason"] == reason, condition
            events = env.kubectl(
                "get", "events", "-n", "default", "-o", "jsonpath={.items[*].reason}",
                f"--field-selector=involvedObject.name={body['metadata']['name']}",
            ).stdout.split()  # fmt: skip
            assert reason in events, events
    finally:
        if requests:
            env.kubectl("delete", "certificatesigningrequests.certificates.k8s.io", *requests, check=False)


def as_agent(env: OperatorEnv, token: str) -> k8s.CertificatesV1Api:
    """The CSR API called with ``token`` only (not the admin's client certificate)."""
    configuration = k8s.Configuration()
    kubeconfig = str(env.product.nodes.cluster.kubeconfig)
    k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.cert_file = configuration.key_file = None
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return k8s.CertificatesV1Api(k8s.ApiClient(configuration))
