"""A Compute Engine-style metadata server for one local identity (--require-auth).

google-auth's Compute Engine credentials (what Cloud Run, Cloud Functions and GKE workloads use)
talk to it unmodified when a process runs with GCE_METADATA_HOST and GCE_METADATA_IP set to its
address: access tokens from the broker's token service, ID tokens signed with the broker's push
key (verifiable at the broker's /certs), the account's email and the project id. One server per
identity, because the metadata server, not the caller, decides whose tokens a process gets.

ID tokens only for the audiences the broker signs push tokens for (`--push-audiences`; any
without it) and those of `--id-token-audiences`: `relay up` gives the URLs of its push functions
and of every function an identity `invokes`, so a local identity gets tokens for those functions
and no other (each function still accepts only its own invokers, as Cloud Run does). They carry
real time (their receivers check them against their own clocks); access tokens are on the
broker's clock (the broker checks them: advancing it expires them).

`POST /token` is an OAuth 2.0 token endpoint (refresh-token grant) for the same identity: the
`token_uri` of google-auth's authorized-user credentials (what `gcloud auth application-default
login` writes), for a process that cannot set GCE_METADATA_HOST before google-auth is imported,
such as `relay up` itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from aiohttp import web

from relay.broker._http import serve_app
from relay.broker._oidc import TokenSigner
from relay.broker._push_tokens import PushTokens
from relay.broker._tokens import TokenIssuer

__all__ = ["Identity", "start_metadata"]

_FLAVOR = {"Metadata-Flavor": "Google"}
_ROOT = "/computeMetadata/v1/"
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


@dataclass(frozen=True)
class Identity:
    """The one service account a metadata server speaks for, and where its tokens come from."""

    email: str
    project: str
    issuer: TokenIssuer
    signer: TokenSigner
    push_tokens: PushTokens = field(default_factory=PushTokens)  # its audiences bound ID tokens


_IDENTITY = web.AppKey("identity", Identity)


def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="application/text", headers=_FLAVOR)


def _json(body: object) -> web.Response:
    return web.Response(text=json.dumps(body), content_type="application/json", headers=_FLAVOR)


async def _serve(request: web.Request) -> web.Response:
    if request.headers.get("Metadata-Flavor") != "Google":
        return _text("Missing required header: Metadata-Flavor: Google", 403)
    identity = request.app[_IDENTITY]
    path = request.path
    if path in ("/", _ROOT):
        return _text("computeMetadata/\n" if path == "/" else "instance/\nproject/\n")
    if not path.startswith(_ROOT):
        return _text(f"{path} not found", 404)
    path = path[len(_ROOT) :]
    if path == "project/project-id":
        return _text(identity.project)
    if path == "instance/service-accounts/":
        return _text(f"default/\n{identity.email}/\n")
    prefix, _, rest = path.partition("instance/service-accounts/")
    account, _, item = rest.partition("/")
    if prefix or account not in ("default", identity.email):
        return _text(f"{request.path} not found", 404)
    if item == "" and request.query.get("recursive") == "true":
        return _json({"aliases": ["default"], "email": identity.email, "scopes": _SCOPES})
    if item == "email":
        return _text(identity.email)
    if item == "scopes":
        return _text("\n".join(_SCOPES) + "\n")
    if item == "token":
        token, lifetime = identity.issuer.mint(identity.email)
        return _json({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})
    if item == "identity":
        audience = request.query.get("audience", "")
        if not audience:
            return _text("non-empty audience parameter required", 400)
        if not identity.push_tokens.allows_audience(audience):
            return _text(
                f"the relay broker signs ID tokens only for its push audiences and the "
                f"functions called directly ({identity.push_tokens.id_token_audience_list}), "
                f"not for {audience[:200]!r}",
                403,
            )
        token = identity.signer.mint(audience, identity.email, lifetime=identity.issuer.lifetime)
        return _text(token)
    return _text(f"{request.path} not found", 404)


async def _oauth_token(request: web.Request) -> web.Response:
    """The refresh-token grant of OAuth 2.0 (RFC 6749 section 6), answered for this identity."""
    form = await request.post()
    if form.get("grant_type") != "refresh_token" or not form.get("refresh_token"):
        return web.json_response(
            {
                "error": "unsupported_grant_type",
                "error_description": "this endpoint answers grant_type=refresh_token only",
            },
            status=400,
        )
    identity = request.app[_IDENTITY]
    token, lifetime = identity.issuer.mint(identity.email)
    return web.json_response(
        {
            "access_token": token,
            "expires_in": lifetime,
            "token_type": "Bearer",
            "scope": " ".join(_SCOPES),
        }
    )


async def start_metadata(host: str, port: int, identity: Identity) -> tuple[web.AppRunner, int]:
    """Serve `identity`'s metadata on host:port (0 = a free port): (runner, bound port)."""
    app = web.Application()
    app[_IDENTITY] = identity
    app.router.add_post("/token", _oauth_token)
    app.router.add_get("/{tail:.*}", _serve)
    return await serve_app(app, host, port)
