"""A Compute Engine-style metadata server for one local identity (--require-auth).

google-auth's Compute Engine credentials (what Cloud Run, Cloud Functions and GKE workloads use)
talk to it unmodified when a process runs with GCE_METADATA_HOST and GCE_METADATA_IP set to its
address: access tokens from the broker's token service, ID tokens signed with the broker's push
key (verifiable at the broker's /certs), the account's email and the project id. One server per
identity, because the metadata server, not the caller, decides whose tokens a process gets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web

from relay.broker._oidc import TokenSigner
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
        issuer = identity.issuer
        token = identity.signer.mint(
            audience, identity.email, now=issuer.now(), lifetime=issuer.lifetime
        )
        return _text(token)
    return _text(f"{request.path} not found", 404)


async def start_metadata(host: str, port: int, identity: Identity) -> tuple[web.AppRunner, int]:
    """Serve `identity`'s metadata on host:port (0 = a free port): (runner, bound port)."""
    app = web.Application()
    app[_IDENTITY] = identity
    app.router.add_get("/{tail:.*}", _serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
