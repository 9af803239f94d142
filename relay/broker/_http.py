"""The broker's small HTTP side: GET /healthz and the OIDC certificates at GET /certs."""

from __future__ import annotations

import json

from aiohttp import web

from relay.broker._oidc import TokenSigner

__all__ = ["make_app", "start_http"]

_SIGNER_KEY = web.AppKey("signer", TokenSigner)
# Google serves its certs with a cache lifetime; verifiers (google-auth) refetch anyway.
_CERTS_CACHE_CONTROL = "public, max-age=3600, must-revalidate, no-transform"


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok", content_type="text/plain")


async def _certs(request: web.Request) -> web.Response:
    signer = request.app[_SIGNER_KEY]
    return web.Response(
        text=json.dumps(signer.certs()),
        content_type="application/json",
        headers={"Cache-Control": _CERTS_CACHE_CONTROL},
    )


def make_app(signer: TokenSigner) -> web.Application:
    """The aiohttp application: GET /healthz -> 200 "ok", GET /certs -> {kid: PEM}."""
    app = web.Application()
    app[_SIGNER_KEY] = signer
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/certs", _certs)
    return app


async def start_http(host: str, port: int, signer: TokenSigner) -> tuple[web.AppRunner, int]:
    """Serve the app on host:port (0 = a free port); return the runner and the bound port.

    Stop it with `await runner.cleanup()`.
    """
    runner = web.AppRunner(make_app(signer), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)
