"""Access tokens the broker issues to local identities and checks on every RPC (--require-auth).

A token is `ya29.relay.<claims>.<mac>`: base64url JSON claims (`sub` the service account, `iat`,
`exp` in seconds on the broker's wall clock) and an HMAC-SHA256 over them with a key kept in the
data directory, so tokens survive a broker restart and are checked without any lookup. Clients
treat it as opaque, as they treat Google's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_TOKEN_LIFETIME", "Principal", "TokenError", "TokenIssuer"]

DEFAULT_TOKEN_LIFETIME = 3600  # seconds, Google's
_PREFIX = "ya29.relay."
_KEY_FILE = "token-key"
_MAX_TOKEN = 2048


class TokenError(Exception):
    """The bearer token is missing, malformed, forged or expired (`reason` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Principal:
    """Who an access token speaks for, and until when (seconds since the epoch)."""

    email: str
    expires: int

    @property
    def member(self) -> str:
        """The IAM member string of this principal."""
        return f"serviceAccount:{self.email}"


class TokenIssuer:
    """Mints and checks access tokens; `now` is the broker's wall clock in seconds."""

    def __init__(self, key: bytes, now: Callable[[], float], lifetime: int) -> None:
        if lifetime < 1:
            raise ValueError("the token lifetime must be at least 1 second")
        self._key = key
        self.now = now
        self.lifetime = lifetime
        self.minted: Counter[str] = Counter()
        """Access tokens minted, by email (GET /stats)."""

    @classmethod
    def load_or_create(
        cls, data_dir: Path, now: Callable[[], float], lifetime: int = DEFAULT_TOKEN_LIFETIME
    ) -> TokenIssuer:
        """The issuer whose key lives in `data_dir` (created there, mode 0600, on first use)."""
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        path = Path(data_dir) / _KEY_FILE
        if not path.exists():
            tmp = path.with_name(f".{_KEY_FILE}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        key = path.read_bytes()
        if len(key) != 32:
            raise ValueError(f"{path} does not hold a 32-byte token key; delete it to make one")
        return cls(key, now, lifetime)

    def mint(self, email: str, lifetime: int | None = None) -> tuple[str, int]:
        """(an access token for `email`, its lifetime in seconds): the issuer's lifetime, or
        `lifetime` when that is shorter (a caller asked for less, as generateAccessToken
        allows)."""
        lived = self.lifetime if lifetime is None else max(1, min(lifetime, self.lifetime))
        issued = int(self.now())
        claims = {"sub": email, "iat": issued, "exp": issued + lived}
        self.minted[email] += 1
        body = _b64(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        return f"{_PREFIX}{body}.{_b64(self._mac(body))}", lived

    def check(self, token: str) -> Principal:
        """The principal of a valid, unexpired token; TokenError otherwise."""
        if len(token) > _MAX_TOKEN or not token.startswith(_PREFIX):
            raise TokenError("the access token was not issued by this broker's token service")
        body, _, mac = token[len(_PREFIX) :].partition(".")
        try:
            valid = hmac.compare_digest(_unb64(mac), self._mac(body))
            claims = json.loads(_unb64(body)) if valid else None
        except (ValueError, binascii.Error):
            valid, claims = False, None
        if not valid or not isinstance(claims, dict):
            raise TokenError("the access token is malformed or its signature does not match")
        email, expires = claims.get("sub"), claims.get("exp")
        if not isinstance(email, str) or not isinstance(expires, int):
            raise TokenError("the access token names no principal or expiry")
        if self.now() >= expires:
            raise TokenError(
                f"the access token of {email} expired {self.now() - expires:.0f} s ago"
            )
        return Principal(email, expires)

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
