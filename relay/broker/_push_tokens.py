"""Which push OIDC tokens the broker signs: the rules a push config's `oidc_token` must meet.

Google signs a push token for a service account only if the caller of CreateSubscription (or
UpdateSubscription, ModifyPushConfig) holds `iam.serviceAccounts.actAs` on it. The broker cannot
authenticate callers, so it takes allow lists instead (`--push-service-accounts`,
`--push-audiences`; `relay up` passes its topology's push identities and function URLs), and,
stricter than Google on purpose, sends a token only to the endpoint its audience names: a caller
who may name a function's identity and audience still cannot have that token pushed to an
endpoint of its own. The rules are checked on every change of a push config and again before
every push (a stored subscription that breaks them is not pushed to). With --require-auth the
caller's actAs is checked too (`_required`), and the ID tokens the broker's metadata servers hand
out (`_metadata`) are bounded by the push audiences plus `--id-token-audiences` (the URLs of
functions called directly: `relay up` gives those some identity `invokes`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import grpc

from relay.broker._errors import BrokerError, invalid, shown

__all__ = ["PushTokens"]


class PushTokens:
    """The allow lists (None: any value) and the rules of the push tokens the broker signs."""

    def __init__(
        self,
        service_accounts: Collection[str] | None = None,
        audiences: Collection[str] | None = None,
        id_token_audiences: Collection[str] = (),
    ) -> None:
        self.service_accounts = None if service_accounts is None else frozenset(service_accounts)
        self.audiences = None if audiences is None else frozenset(audiences)
        self.id_token_audiences = frozenset(id_token_audiences)
        """More audiences of the ID tokens the broker signs on request (not of push tokens)."""

    def check(self, push_config: Any) -> None:
        """Raise the refusal of `push_config`'s oidc_token, if any."""
        refusal = self.refusal(push_config)
        if refusal is not None:
            raise refusal

    def refusal(self, push_config: Any) -> BrokerError | None:
        """Why the broker will not sign a token for `push_config` (None: it will, or it asks
        for none): INVALID_ARGUMENT for a malformed token config or an audience that is not the
        endpoint, PERMISSION_DENIED for a value outside an allow list (Google's answer to a
        caller without actAs)."""
        if not push_config.HasField("oidc_token") or not push_config.push_endpoint:
            return None
        email = push_config.oidc_token.service_account_email
        endpoint = push_config.push_endpoint
        audience = push_config.oidc_token.audience or endpoint
        if "@" not in email or not email.isprintable():
            return invalid(
                f"Invalid push_config.oidc_token.service_account_email: {shown(email)}; a "
                "service account email is required."
            )
        if self.service_accounts is not None and email not in self.service_accounts:
            return _denied(
                f"push_config.oidc_token.service_account_email {shown(email)} is not one of the "
                "service accounts this broker signs push tokens for (--push-service-accounts: "
                f"{_listed(self.service_accounts)})."
            )
        if audience != endpoint:
            return invalid(
                f"Invalid push_config.oidc_token.audience: {shown(audience)} is not the "
                f"push_endpoint {shown(endpoint)}. The relay broker sends a push token only to "
                "the endpoint its audience names (stricter than Google, which takes any "
                "audience): leave the audience empty or set it to the endpoint."
            )
        if self.audiences is not None and audience not in self.audiences:
            return _denied(
                f"push_config.oidc_token.audience {shown(audience)} (the endpoint) is not one of "
                f"the audiences this broker signs push tokens for ({self.audience_list})."
            )
        return None

    def allows_audience(self, audience: str) -> bool:
        """Whether the broker signs an ID token for `audience` on request (--require-auth: its
        metadata servers): a push audience or one of `id_token_audiences`."""
        return (
            self.audiences is None
            or audience in self.audiences
            or audience in self.id_token_audiences
        )

    @property
    def audience_list(self) -> str:
        """The allowed push audiences for a message."""
        if self.audiences is None:
            return "--push-audiences: any"
        return f"--push-audiences: {_listed(self.audiences)}"

    @property
    def id_token_audience_list(self) -> str:
        """The audiences ID tokens are signed for on request, for a message."""
        if self.audiences is None:
            return "--push-audiences: any"
        return f"{self.audience_list}; --id-token-audiences: {_listed(self.id_token_audiences)}"


def _denied(message: str) -> BrokerError:
    return BrokerError(grpc.StatusCode.PERMISSION_DENIED, message)


def _listed(values: frozenset[str], limit: int = 5) -> str:
    """The allowed values for a message: the first few, sorted ("none" for an empty list)."""
    if not values:
        return "none"
    names = sorted(values)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
