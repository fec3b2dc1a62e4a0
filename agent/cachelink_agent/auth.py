"""Bearer-token check of one agent: operator-signed tokens for this node, and a metrics-only credential.

An agent holds only the verify (public) key; tokens are Ed25519-signed JWTs (``tokens.mint``). A token that
does not verify, has expired, claims too long a life, or is too big gets 401; a valid token for another node
gets 403 (it was minted for that node: someone replays it); the metrics credential gets 403 anywhere but
``GET /metrics``. Comparisons of the static credential are constant-time.
"""

from __future__ import annotations

import hmac
import os
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cachelink_agent import tokens
from cachelink_agent.errors import ApiError

METRICS_PATH = "/metrics"
#: at most this often the verify key file is looked at again (a rotated key is picked up)
RELOAD_INTERVAL_S = 5.0


class VerifyKeyFile:
    """The verify key, re-read when its file changes (a ConfigMap volume is updated in place)."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._stamp = self._stat()
        self._key = tokens.load_verify_key(self._path.read_bytes())
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self._path)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def key(self) -> Ed25519PublicKey:
        """The current key; a file that became unreadable or invalid keeps the last good one."""
        now = time.monotonic()
        if now - self._checked >= RELOAD_INTERVAL_S:
            self._checked = now
            try:
                stamp = self._stat()
                if stamp != self._stamp:
                    self._key, self._stamp = tokens.load_verify_key(self._path.read_bytes()), stamp
            except (OSError, ValueError):
                pass
        return self._key


class TokenChecker:
    """Checks ``Authorization`` headers for one node."""

    def __init__(
        self, verify_key: Ed25519PublicKey | VerifyKeyFile, node_name: str, metrics_token: bytes | None = None
    ) -> None:
        self._verify_key = verify_key
        self._node = node_name
        self._metrics_token = metrics_token

    def _key(self) -> Ed25519PublicKey:
        source = self._verify_key
        return source.key() if isinstance(source, VerifyKeyFile) else source

    def check(self, header: str | None, method: str = "GET", path: str = "/") -> None:
        """Return when the header may call ``method path`` on this node; raise 401/403 ``ApiError``."""
        if not header:
            raise ApiError(401, "unauthorized", "missing Authorization: Bearer <token> header")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "Authorization must be 'Bearer <token>'")
        if len(token) > tokens.MAX_TOKEN_BYTES:
            raise ApiError(401, "unauthorized", "token too long")
        if self._metrics_token is not None and hmac.compare_digest(token.encode(), self._metrics_token):
            if method in ("GET", "HEAD") and path == METRICS_PATH:
                return
            raise ApiError(403, "forbidden", f"the metrics credential may only read {METRICS_PATH}")
        claims = self._verified(token)
        if claims["sub"] != self._node:
            raise ApiError(403, "forbidden", f"this token is for node {claims['sub']!r}, not {self._node!r}")
        if claims.get("scope") != tokens.SCOPE_API:
            raise ApiError(403, "forbidden", f"token scope {claims.get('scope')!r} does not allow the API")

    def _verified(self, token: str) -> dict[str, object]:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self._key(),
                algorithms=[tokens.ALGORITHM],
                audience=tokens.AUDIENCE,
                leeway=tokens.LEEWAY_S,
                options={"require": ["sub", "aud", "iat", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "unauthorized", "token expired") from None
        except jwt.InvalidTokenError as error:
            raise ApiError(401, "unauthorized", f"invalid token ({type(error).__name__})") from None
        issued, expires = claims["iat"], claims["exp"]
        if not isinstance(issued, int) or not isinstance(expires, int):
            raise ApiError(401, "unauthorized", "invalid token (iat and exp must be integers)")
        if expires - issued > tokens.MAX_LIFETIME_S:
            raise ApiError(401, "unauthorized", f"token lifetime over {tokens.MAX_LIFETIME_S} s")
        if not isinstance(claims["sub"], str):
            raise ApiError(401, "unauthorized", "invalid token (sub must be a string)")
        return claims
