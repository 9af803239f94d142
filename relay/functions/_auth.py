"""Opt-in verification of Pub/Sub push OIDC tokens for self-hosted endpoints.

A push carries `Authorization: Bearer <RS256 JWT>`. relay checks the signature against the
`{kid: PEM}` certificates at `certs_url` (Google's by default, relay broker's `/certs` locally),
`iss`, `aud`, `exp`/`iat`, `email_verified` and `email` against an allow-list. Failures never reach
the handler: 401 for a missing or invalid token, 403 for a valid token of a caller not allowed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.functions._errors import PushAuthError

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
_CLOCK_SKEW = 10  # seconds allowed between our clock and the issuer's
_MIN_REFETCH = 5.0  # seconds between fetches triggered by an unknown key id


class _Certs:
    """The `{kid: PEM}` certificates at one URL, cached for Cache-Control max-age (else 5 min)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._certs: dict[str, str] = {}
        self._expires = 0.0
        self._fetched = 0.0
        self._lock = threading.Lock()

    def get(self, kid: str | None) -> Mapping[str, str]:
        now = time.monotonic()
        with self._lock:
            stale = now >= self._expires
            unknown = kid is not None and kid not in self._certs
            if stale or (unknown and now - self._fetched >= _MIN_REFETCH):
                self._fetch(now)
            return dict(self._certs)

    def _fetch(self, now: float) -> None:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url, timeout=10) as response:
                document = json.loads(response.read())
                cache_control = response.headers.get("Cache-Control", "")
        except (OSError, ValueError) as exc:
            if self._certs:  # keep serving the known keys while the endpoint is down
                return
            raise PushAuthError(503, f"cannot fetch push token certificates: {exc}") from None
        if not isinstance(document, dict):
            raise PushAuthError(503, f"certificates at {self.url} are not a JSON object")
        self._certs = {str(k): str(v) for k, v in document.items()}
        self._fetched = now
        self._expires = now + _max_age(cache_control)


def _max_age(cache_control: str) -> float:
    for part in cache_control.split(","):
        name, _, value = part.strip().partition("=")
        if name.lower() == "max-age" and value.isdigit():
            return float(value)
    return 300.0


@dataclass(frozen=True)
class PushAuth:
    """Push token requirements. `audience`: the expected `aud`; `allowed_emails`: service accounts
    allowed to push or invoke it directly (must not be empty); `certs_url`: where the signing
    certificates are."""

    audience: str
    allowed_emails: frozenset[str]
    certs_url: str = GOOGLE_CERTS_URL
    _certs: _Certs = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.audience:
            raise ValueError("push auth needs an audience")
        if not self.allowed_emails:
            raise ValueError("push auth needs a non-empty allow-list of service account emails")
        object.__setattr__(self, "_certs", _Certs(self.certs_url))

    @classmethod
    def configure(
        cls,
        audience: str | None = None,
        allowed_emails: Iterable[str] | None = None,
        certs_url: str | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> PushAuth | None:
        """Arguments first, then RELAY_PUSH_AUDIENCE / _ALLOWED_EMAILS (comma-separated) /
        _CERTS_URL. None (auth off) when no audience is configured either way."""
        from relay.functions import _settings as settings

        audience = audience or environ.get(settings.PUSH_AUDIENCE_ENV) or None
        if audience is None:
            return None
        if allowed_emails is None:
            allowed_emails = environ.get(settings.PUSH_ALLOWED_EMAILS_ENV, "").split(",")
        emails = frozenset(e.strip() for e in allowed_emails if e.strip())
        url = certs_url or environ.get(settings.PUSH_CERTS_URL_ENV) or GOOGLE_CERTS_URL
        return cls(audience=audience, allowed_emails=emails, certs_url=url)

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """Return the token's claims, or raise PushAuthError (401 invalid, 403 not allowed)."""
        from google.auth import jwt

        if not authorization:
            raise PushAuthError(401, "missing Authorization header")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise PushAuthError(401, "Authorization is not a Bearer token")
        token = token.strip()
        try:
            kid = jwt.decode_header(token).get("kid")  # type: ignore[no-untyped-call]
        except Exception as exc:  # malformed tokens raise ValueError, TypeError, KeyError...
            raise PushAuthError(401, f"malformed token: {exc}") from None
        certs = self._certs.get(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]
                token, certs=certs, audience=self.audience, clock_skew_in_seconds=_CLOCK_SKEW
            )
        except Exception as exc:  # google.auth raises ValueError subclasses; be safe on garbage
            raise PushAuthError(401, f"invalid token: {exc}") from None
        if claims.get("iss") not in _ISSUERS:
            raise PushAuthError(401, f"token issuer {claims.get('iss')!r} is not Google")
        if claims.get("email_verified") is not True:
            raise PushAuthError(403, "token email is not verified")
        if claims.get("email") not in self.allowed_emails:
            raise PushAuthError(403, f"{claims.get('email')!r} may not invoke this function")
        return claims
