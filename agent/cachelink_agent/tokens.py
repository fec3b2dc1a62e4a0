"""Agent API bearer tokens: short-lived JWTs (EdDSA, Ed25519) that the operator signs for one node.

Only the operator holds the signing key (a Secret of its namespace); every agent holds only the public key,
so an agent, or a node, that is taken over cannot mint a token for another node. A token names its node
(``sub``), its audience, when it was issued and when it expires, and its scope (``api``: every route; the
agents also accept a separate, static metrics-only credential for ``GET /metrics``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

AUDIENCE = "cachelink-agent"
ALGORITHM = "EdDSA"
SCOPE_API = "api"
#: the lifetime of the tokens the operator mints
DEFAULT_LIFETIME_S = 600
#: the longest lifetime an agent accepts (a token that claims more is refused)
MAX_LIFETIME_S = 3600
#: clock difference tolerated between the operator and an agent
LEEWAY_S = 60
#: longer Authorization values are refused before any parsing
MAX_TOKEN_BYTES = 4096


def generate_signing_key() -> Ed25519PrivateKey:
    """A new signing key (the chart makes the real one; tests and tools make their own)."""
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of a signing key (the form the chart's ``genPrivateKey "ed25519"`` writes)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the verifying key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_signing_key(pem: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM; ``ValueError`` for anything else."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a PEM private key: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the signing key must be Ed25519, not {type(key).__name__}")
    return key


def load_verify_key(pem: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key of a PEM public key or certificate (the chart ships a self-signed one)."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            key: object = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a PEM public key or certificate: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"the verify key must be Ed25519, not {type(key).__name__}")
    return key


def mint(
    key: Ed25519PrivateKey,
    node: str,
    *,
    lifetime_s: float = DEFAULT_LIFETIME_S,
    now: float | None = None,
    scope: str = SCOPE_API,
) -> str:
    """A token for ``node``, valid ``lifetime_s`` seconds from ``now``."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": node, "aud": AUDIENCE, "iat": issued, "exp": issued + int(lifetime_s), "scope": scope}
    return jwt.encode(claims, key, algorithm=ALGORITHM)


@dataclass
class Minter:
    """Mints and caches one token per node, renewed when less than half of its lifetime is left."""

    key: Ed25519PrivateKey
    lifetime_s: float = DEFAULT_LIFETIME_S

    def __post_init__(self) -> None:
        self._tokens: dict[str, tuple[float, str]] = {}

    def token(self, node: str) -> str:
        """A valid token for ``node``."""
        now = time.time()
        known = self._tokens.get(node)
        if known is not None and known[0] - now > self.lifetime_s / 2:
            return known[1]
        made = mint(self.key, node, lifetime_s=self.lifetime_s, now=now)
        self._tokens[node] = (int(now) + int(self.lifetime_s), made)
        return made
