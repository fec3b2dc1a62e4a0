"""The agent-certificate signer at work: each pending request is checked, then approved and signed, or denied.

The checks are :mod:`cachelink_operator.agent_certs`; this module reads the node's addresses, writes the
decision and the certificate, and tells people about a denial (an Event on the request and a log line).
A request is handled on each watch event until it is decided: approving it changes it, and the change
brings it back here to be signed, so a failed write is retried with the next event or at the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cachelink_operator import agent_certs, kube

log = logging.getLogger(__name__)


async def handle(api: kube.Kube, ca: agent_certs.SigningCA, agent_user: str, body: Mapping[str, Any]) -> str:
    """Approve, sign or deny one request; returns what was done (``approved``, ``issued``, ``denied``)."""
    name = body["metadata"]["name"]
    spec = body.get("spec") or {}
    try:
        node = agent_certs.requesting_node(spec, agent_user)
        approved = agent_certs.check(body, agent_user, await api.node_addresses(node))
    except agent_certs.Refused as refused:
        await api.decide_certificate_request(body, "Denied", refused.reason, str(refused))
        await api.post_event(body, "Warning", refused.reason, f"agent certificate refused: {refused}")
        log.warning("denied certificate request %s: %s (%s)", name, refused, refused.reason)
        return "denied"
    if not agent_certs.is_approved(body):
        message = f"an agent of node {approved.node}, for that node's name and addresses"
        await api.decide_certificate_request(body, "Approved", "CacheLinkAgentNode", message)
        return "approved"
    await api.issue_certificate(body, agent_certs.sign(approved, ca))
    log.info("issued the serving certificate of node %s's agent (%s)", approved.node, name)
    return "issued"
