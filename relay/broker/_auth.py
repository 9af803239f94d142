"""--require-auth on every RPC: who is calling (the bearer token) and may they (`_required`).

`Control.gate` calls `authenticate` on every call (a StreamingPull when it opens: gRPC carries
the token in the call's headers, never on stream messages) and `authorize` with the method's rule.
The caller of the running call is in `CALLER`, for what a method answers about its caller
(TestIamPermissions) and for a stream to end when its token expires.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import grpc

from relay.broker._access import Access
from relay.broker._core import Broker
from relay.broker._errors import BrokerError
from relay.broker._required import REQUIRED, Rule
from relay.broker._tokens import Principal, TokenError, TokenIssuer

__all__ = ["CALLER", "Auth"]

CALLER: ContextVar[Principal | None] = ContextVar("relay_broker_caller", default=None)

_EXPECTED = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_MISSING = f"Request is missing required authentication credential. {_EXPECTED}"
_INVALID = f"Request had invalid authentication credentials. {_EXPECTED}"


def _unauthenticated(message: str, why: str) -> BrokerError:
    return BrokerError(grpc.StatusCode.UNAUTHENTICATED, f"{message} (relay broker: {why})")


class Auth:
    """The token check and the permission check of one broker."""

    def __init__(self, issuer: TokenIssuer, access: Access, broker: Broker) -> None:
        self.issuer = issuer
        self.access = access
        self.broker = broker
        self.calls: Counter[str] = Counter()
        """Calls let through, by caller email."""
        self.refused: Counter[str] = Counter()
        """Calls refused, by status code name (UNAUTHENTICATED, PERMISSION_DENIED)."""
        self.streams_expired: Counter[str] = Counter()
        """Streams ended because the token they were opened with expired, by caller email."""
        self.impersonated: Counter[str] = Counter()
        """Tokens minted through the IAM Credentials API, by "METHOD TARGET_EMAIL"."""

    def stats(self) -> dict[str, Any]:
        """GET /stats: what was let through and refused, tokens minted, streams expired, tokens
        minted by impersonation."""
        return {
            "calls": dict(sorted(self.calls.items())),
            "refused": dict(sorted(self.refused.items())),
            "tokens_minted": dict(sorted(self.issuer.minted.items())),
            "streams_ended_at_token_expiry": dict(sorted(self.streams_expired.items())),
            "impersonated": dict(sorted(self.impersonated.items())),
        }

    @staticmethod
    def rule(method: str) -> Rule:
        """The permission rule of a gated method (a method without one cannot be served)."""
        try:
            return REQUIRED[method]
        except KeyError:
            raise RuntimeError(f"{method} has no permission rule in _required.REQUIRED") from None

    def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        """The principal of the call's `authorization: Bearer <token>`, else UNAUTHENTICATED."""
        values = [value for key, value in metadata or () if key == "authorization"]
        if not values:
            return self._refuse(_MISSING, "the call carries no authorization metadata")
        if len(values) > 1:
            return self._refuse(_INVALID, "the call carries more than one authorization value")
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._refuse(_INVALID, "the authorization value is not 'Bearer <token>'")
        try:
            return self.issuer.check(token.strip())
        except TokenError as exc:
            return self._refuse(_INVALID, exc.reason)

    def authorize(self, rule: Rule, request: Any, principal: Principal) -> None:
        """PERMISSION_DENIED unless `principal` holds what `rule` asks for `request`."""
        checks = rule(request, self.broker)
        if checks:
            try:
                self.access.require(principal, checks)
            except BrokerError as exc:
                self.refused[exc.code.name] += 1
                raise
        self.calls[principal.email] += 1

    def _refuse(self, message: str, why: str) -> Principal:
        self.refused[grpc.StatusCode.UNAUTHENTICATED.name] += 1
        raise _unauthenticated(message, why)
