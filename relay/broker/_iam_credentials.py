"""The IAM Service Account Credentials API of the token service (--require-auth): the
`generateAccessToken` and `generateIdToken` calls of google-auth's impersonated credentials,
which the Google provider's `impersonation_chain` builds.

google-auth takes their URL from a fixed template, `https://iamcredentials.googleapis.com/v1/
projects/-/serviceAccounts/EMAIL:METHOD` (google/auth/iam.py), and the provider passes no
endpoint, so the broker answers at that very URL: a process set up with standard variables only
(`https_proxy` naming the broker's CONNECT proxy, `_connect`, which tunnels that host and no
other to this server; `REQUESTS_CA_BUNDLE` trusting the broker's CA, which signs this server's
certificate for that name) runs google-auth's own code, unmodified, as on Google Cloud.

Checked as Google checks: a bearer token of the token service (401 UNAUTHENTICATED); for a call
by C with delegates D1..Dn for target T, `iam.serviceAccounts.implicitDelegation` for C on D1 and
each Di on the next, and `iam.serviceAccounts.getAccessToken` (`getOpenIdToken`) for the last of
them on T (403 PERMISSION_DENIED, Google's text), from the --grants file's service-account and
project bindings. Access tokens live the asked lifetime (at most 3600 s, Google's default cap)
and never longer than --token-lifetime; ID tokens only for the push audiences, as the metadata
servers' (`_metadata`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from relay.broker._access import identity_project, service_account_resource
from relay.broker._auth import Auth
from relay.broker._errors import BrokerError, shown
from relay.broker._http import serve_app
from relay.broker._oidc import TokenSigner
from relay.broker._push_tokens import PushTokens
from relay.broker._tls import ServerTls
from relay.broker._tokens import Principal

__all__ = ["HOST", "IamCredentials", "start_iam_credentials"]

HOST = "iamcredentials.googleapis.com"
"""The host google-auth sends these calls to (the default universe's)."""

GET_ACCESS_TOKEN = "iam.serviceAccounts.getAccessToken"
GET_OPEN_ID_TOKEN = "iam.serviceAccounts.getOpenIdToken"
IMPLICIT_DELEGATION = "iam.serviceAccounts.implicitDelegation"
_MAX_LIFETIME = 3600  # seconds: Google's cap without the lifetime-extension organization policy
_CERT_FILE = "tls-iamcredentials.pem"
_KEY_FILE = "tls-iamcredentials-key.pem"
_NAME = re.compile(
    r"projects/([^/]+)/serviceAccounts/([^/:]+):(generateAccessToken|generateIdToken)"
)
_DURATION = re.compile(r"\d{1,12}(\.\d{1,9})?s")
_MAX_BODY = 64 * 1024


class _Refused(Exception):
    """A call answered with Google's JSON error: HTTP status, status name, message (and the
    permission denied, for its ErrorInfo); `counted`: already in the refusal counts."""

    def __init__(
        self,
        http: int,
        status: str,
        message: str,
        permission: str | None = None,
        *,
        counted: bool = False,
    ) -> None:
        super().__init__(message)
        self.http, self.status, self.message, self.permission = http, status, message, permission
        self.counted = counted

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.http, "message": self.message, "status": self.status}
        if self.permission is not None:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "IAM_PERMISSION_DENIED",
                    "domain": "iam.googleapis.com",
                    "metadata": {"permission": self.permission},
                }
            ]
        return web.json_response({"error": error}, status=self.http)


def _invalid(message: str) -> _Refused:
    return _Refused(400, "INVALID_ARGUMENT", message)


@dataclass(frozen=True)
class IamCredentials:
    """generateAccessToken and generateIdToken on the broker's token service and access checks."""

    auth: Auth
    signer: TokenSigner
    push_tokens: PushTokens

    async def handle(self, request: web.Request) -> web.Response:
        """POST /v1/projects/-/serviceAccounts/EMAIL:METHOD: a token, or Google's error."""
        try:
            match = _NAME.fullmatch(request.match_info["name"])
            if match is None:
                raise _Refused(404, "NOT_FOUND", f"{shown(request.path)} is not a method here")
            project, target, method = match.groups()
            if project != "-":
                raise _invalid(
                    f"Invalid resource name projects/{shown(project)}/...: the - wildcard is "
                    "required for the project; replacing it with a project ID is invalid."
                )
            caller = self._caller(request.headers.get("Authorization"))
            body = await _body(request)
            if identity_project(target) is None:
                raise _Refused(
                    404,
                    "NOT_FOUND",
                    f"Not found; Gaia id not found for email {shown(target)} (relay broker: a "
                    "service account is NAME@PROJECT.iam.gserviceaccount.com)",
                )
            chain = [*_delegates(body.get("delegates")), target]
            if method == "generateAccessToken":
                answer = self._access_token(caller, chain, body)
            else:
                answer = self._id_token(caller, chain, body)
        except _Refused as refused:
            if not refused.counted:
                self.auth.refused[refused.status] += 1
            return refused.response()
        self.auth.calls[caller.email] += 1
        self.auth.impersonated[f"{method} {target}"] += 1
        return web.json_response(answer)

    def _caller(self, authorization: str | None) -> Principal:
        metadata = [] if authorization is None else [("authorization", authorization)]
        try:
            return self.auth.authenticate(metadata)
        except BrokerError as exc:
            raise _Refused(401, "UNAUTHENTICATED", exc.message, counted=True) from None

    def _authorize(self, caller: Principal, chain: Sequence[str], last: str) -> None:
        """The caller and each delegate on the account after it in the chain: implicitDelegation
        on a delegate, `last` on the target; PERMISSION_DENIED naming the first hop that lacks
        it."""
        holders = [caller.email, *chain[:-1]]
        for hop, (holder, account) in enumerate(zip(holders, chain, strict=True)):
            permission = last if hop == len(chain) - 1 else IMPLICIT_DELEGATION
            checks = [(permission, service_account_resource(account))]
            lacks = self.auth.access.lacks(Principal(holder, caller.expires), checks)
            if lacks is not None:
                raise _Refused(
                    403,
                    "PERMISSION_DENIED",
                    f"Permission '{permission}' denied on resource (or it may not exist). "
                    f"(relay broker, {_hop(hop, len(chain))}: {lacks}; from the --grants file's "
                    "service-account and project bindings)",
                    permission,
                )

    def _access_token(self, caller: Principal, chain: list[str], body: dict[str, Any]) -> Any:
        scope = body.get("scope")
        if not isinstance(scope, list) or not scope or not all(isinstance(s, str) for s in scope):
            raise _invalid("Scope required: scope must list at least one OAuth 2.0 scope.")
        lifetime = _lifetime(body.get("lifetime"))
        self._authorize(caller, chain, GET_ACCESS_TOKEN)
        issuer = self.auth.issuer
        issued = int(issuer.now())  # at or before the token's own issue time
        token, lived = issuer.mint(chain[-1], lifetime)
        # On the broker's clock, where it expires: a client that trusts expireTime never holds
        # a token the broker has let expire (a clock advanced by /control makes it refresh).
        expires = dt.datetime.fromtimestamp(issued + lived, dt.UTC)
        return {"accessToken": token, "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def _id_token(self, caller: Principal, chain: list[str], body: dict[str, Any]) -> Any:
        audience = body.get("audience")
        if not isinstance(audience, str) or not audience:
            raise _invalid("audience is required: the intended audience of the ID token.")
        include_email = body.get("includeEmail", False)
        if not isinstance(include_email, bool):
            raise _invalid("includeEmail must be a boolean.")
        self._authorize(caller, chain, GET_OPEN_ID_TOKEN)
        if not self.push_tokens.allows_audience(audience):
            raise _Refused(
                403,
                "PERMISSION_DENIED",
                f"the relay broker signs ID tokens only for the audiences it signs push tokens "
                f"for ({self.push_tokens.audience_list}), not for {shown(audience)}",
            )
        token = self.signer.mint(
            audience,
            chain[-1],
            lifetime=self.auth.issuer.lifetime,
            include_email=include_email,
        )
        return {"token": token}


_SERVICE = web.AppKey("service", IamCredentials)


def _hop(hop: int, hops: int) -> str:
    """Which grant of the chain is missing, for the refusal."""
    if hops == 1:
        return "the caller on the target"
    if hop == 0:
        return "the caller on the first delegate"
    if hop == hops - 1:
        return "the last delegate on the target"
    return f"delegate {hop} on delegate {hop + 1}"


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.text())
    except ValueError as exc:
        raise _invalid(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(body, dict):
        raise _invalid("Invalid JSON payload received: expected an object.")
    return body


def _delegates(value: Any) -> list[str]:
    """The delegates' emails: `projects/-/serviceAccounts/EMAIL` (Google's documented form) or
    a bare EMAIL (what the Google provider sends for an `impersonation_chain`)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
        raise _invalid("delegates must be a list of service account names.")
    emails = []
    for delegate in value:
        project, _, email = delegate.removeprefix("projects/").rpartition("/serviceAccounts/")
        if delegate.startswith("projects/") and project != "-":
            raise _invalid(
                f"Invalid delegate {shown(delegate)}: the - wildcard is required for the "
                "project; replacing it with a project ID is invalid."
            )
        if identity_project(email) is None:
            raise _invalid(
                f"Invalid delegate {shown(delegate)}: expected projects/-/serviceAccounts/EMAIL "
                "of a service account NAME@PROJECT.iam.gserviceaccount.com."
            )
        emails.append(email)
    return emails


def _lifetime(value: Any) -> int | None:
    """Seconds asked for (a google.protobuf.Duration in JSON, "3600s"); None: the default."""
    if value is None:
        return None
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise _invalid(f"Invalid lifetime {shown(str(value))}: expected a duration like '3600s'.")
    seconds = math.ceil(float(value[:-1]))
    if not 1 <= seconds <= _MAX_LIFETIME:
        raise _invalid(
            f"Invalid lifetime {value}: the lifetime must be between 1 and {_MAX_LIFETIME} "
            "seconds (longer needs the constraints/iam.allowServiceAccountCredentialLifetime"
            "Extension organization policy, which the relay broker does not have)."
        )
    return seconds


async def _dispatch(request: web.Request) -> web.Response:
    service: IamCredentials = request.app[_SERVICE]
    return await service.handle(request)


async def start_iam_credentials(
    host: str, data_dir: Path, service: IamCredentials
) -> tuple[web.AppRunner, int]:
    """Serve `service` over TLS (a certificate for HOST from the data dir's CA) on a free port of
    `host`: (runner, bound port)."""
    ServerTls.for_names(data_dir, (HOST,), _CERT_FILE, _KEY_FILE)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(data_dir / _CERT_FILE, data_dir / _KEY_FILE)
    app = web.Application(client_max_size=_MAX_BODY)
    app[_SERVICE] = service
    app.router.add_post("/v1/{name:.+}", _dispatch)
    return await serve_app(app, host, 0, context)
