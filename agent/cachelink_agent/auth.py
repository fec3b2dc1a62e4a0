"""Bearer-token check: one Secret for the whole DaemonSet, yet each token is good for one node only.

A node's token is ``<node>:<hex HMAC-SHA256(secret, node)>`` (``tokens.node_token``). The node name in
front lets the agent tell a token minted for another node (403) from a wrong one (401); every
comparison is constant-time.
"""

from __future__ import annotations

import hmac

from cachelink_agent.errors import ApiError
from cachelink_agent.tokens import node_token


class TokenChecker:
    """Checks ``Authorization`` headers for one node."""

    def __init__(self, secret: bytes, node_name: str) -> None:
        self._secret = secret
        self._node = node_name
        self._expected = node_token(secret, node_name).encode()

    def check(self, header: str | None) -> None:
        """Return when the header carries this node's token; raise 401/403 ``ApiError`` otherwise."""
        if not header:
            raise ApiError(401, "unauthorized", "missing Authorization: Bearer <token> header")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "Authorization must be 'Bearer <token>'")
        presented = token.strip().encode()
        if hmac.compare_digest(presented, self._expected):
            return
        node, sep, _digest = token.strip().rpartition(":")
        if sep and node and node != self._node and len(node) <= 253:
            other = node_token(self._secret, node).encode()
            if hmac.compare_digest(presented, other):
                raise ApiError(403, "forbidden", f"this token is for node {node!r}, not {self._node!r}")
        raise ApiError(401, "unauthorized", "invalid token")
