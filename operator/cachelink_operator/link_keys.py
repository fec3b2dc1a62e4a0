"""Link secrets derived from one master key, so the operator stores and reads no Secret of a tenant.

A CacheLink's link secret is ``hex(HMAC-SHA256(master, "cachelink-link-secret" NUL namespace NUL name NUL
uid))``: the same on every operator replica and after every restart, different for every CacheLink (a
re-created CacheLink has a new uid, so a new secret), and unknown to anyone without the master, which
lives only in the operator's own namespace (the chart's link master Secret). Rotating the master rotates
every link secret: instances are re-initialised with the new one.
"""

from __future__ import annotations

import hashlib
import hmac

CONTEXT = b"cachelink-link-secret"
#: the master must be at least this long (the chart generates 48 characters)
MIN_MASTER_BYTES = 32


def check_key(value: bytes, minimum: int = MIN_MASTER_BYTES) -> bytes:
    """``value`` without surrounding whitespace; ``ValueError`` when it is too short to be a key."""
    key = value.strip()
    if len(key) < minimum:
        raise ValueError(f"the key has {len(key)} bytes; at least {minimum} are needed")
    return key


def link_secret(master: bytes, namespace: str, name: str, uid: str) -> str:
    """The link secret of CacheLink ``namespace/name`` with ``uid``."""
    message = b"\0".join([CONTEXT, namespace.encode(), name.encode(), uid.encode()])
    return hmac.new(master, message, hashlib.sha256).hexdigest()
