"""The broker's small HTTP side: GET /healthz, the OIDC certificates at GET /certs, GET /stats and
(only when the broker runs with --control) POST /control."""

from __future__ import annotations

import ipaddress
import json
import ssl

from aiohttp import web

from relay.broker._control import Control, ControlError
from relay.broker._oidc import TokenSigner

__all__ = ["make_app", "serve_app", "start_http"]

_SIGNER_KEY = web.AppKey("signer", TokenSigner)
_CONTROL_KEY = web.AppKey("control", Control)
# Google serves its certs with a cache lifetime; verifiers (google-auth) refetch anyway.
_CERTS_CACHE_CONTROL = "public, max-age=3600, must-revalidate, no-transform"
_MAX_CONTROL_BODY = 64 * 1024


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok", content_type="text/plain")


async def _certs(request: web.Request) -> web.Response:
    signer = request.app[_SIGNER_KEY]
    return web.Response(
        text=json.dumps(signer.certs()),
        content_type="application/json",
        headers={"Cache-Control": _CERTS_CACHE_CONTROL},
    )


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[_CONTROL_KEY].stats())


def _cross_site(request: web.Request) -> str | None:
    """Why a POST /control may come from a web page (None: it cannot): a browser sends a
    "simple" cross-site POST (text/plain) without asking, and a page on a domain that resolves
    to 127.0.0.1 (DNS rebinding) sends its own name as Host."""
    if request.content_type != "application/json":
        return f"Content-Type must be application/json, not {request.content_type!r}"
    host = request.url.host or ""
    if host.lower() != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return f"the Host header must be an IP address or localhost, not {host[:100]!r}"
    return None


async def _apply_control(request: web.Request) -> web.Response:
    refused = _cross_site(request)
    if refused is not None:
        return web.json_response({"error": refused}, status=403)
    if request.content_length is not None and request.content_length > _MAX_CONTROL_BODY:
        return web.json_response({"error": "the body is too large"}, status=413)
    try:
        body = json.loads(await request.text())
    except ValueError as exc:
        return web.json_response({"error": f"the body is not JSON: {exc}"}, status=400)
    try:
        settings = request.app[_CONTROL_KEY].apply(body)
    except ControlError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(settings)


def make_app(
    signer: TokenSigner, control: Control | None = None, *, control_enabled: bool = False
) -> web.Application:
    """GET /healthz -> "ok", GET /certs -> {kid: PEM}; with `control`, GET /stats and (only
    with `control_enabled`) POST /control."""
    app = web.Application(client_max_size=_MAX_CONTROL_BODY)
    app[_SIGNER_KEY] = signer
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/certs", _certs)
    if control is not None:
        app[_CONTROL_KEY] = control
        app.router.add_get("/stats", _stats)
        if control_enabled:
            app.router.add_post("/control", _apply_control)
    return app


async def start_http(
    host: str,
    port: int,
    signer: TokenSigner,
    control: Control | None = None,
    *,
    control_enabled: bool = False,
) -> tuple[web.AppRunner, int]:
    """Serve the app on host:port (0 = a free port); return the runner and the bound port.

    Stop it with `await runner.cleanup()`.
    """
    return await serve_app(make_app(signer, control, control_enabled=control_enabled), host, port)


async def serve_app(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 = a free port), over TLS with `ssl_context`: (runner, bound
    port); the one place the broker's HTTP servers (its own, the metadata servers, the IAM
    Credentials API) are started."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
