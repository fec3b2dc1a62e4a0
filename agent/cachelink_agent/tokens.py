"""Node bearer tokens: ``<node>:<hex HMAC-SHA256(secret, node)>``, minted by callers, checked by agents."""

from __future__ import annotations

import hashlib
import hmac


def node_token(secret: bytes, node_name: str) -> str:
    """The bearer token of ``node_name``."""
    digest = hmac.new(secret, node_name.encode(), hashlib.sha256).hexdigest()
    return f"{node_name}:{digest}"
