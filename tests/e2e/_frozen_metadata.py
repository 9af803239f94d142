"""A metadata server in front of the broker's that hands out one access token forever.

The negative control of the --require-auth tests: a component that caches its first token (the
bug relay must never have) is made by pointing its GCE_METADATA_HOST here, with no change to the
component. Everything is passed through to the identity's real metadata server, except the access
token: the first one fetched, at start, is answered every time, claiming an hour of life, so
google-auth never asks again and keeps sending it after the broker has let it expire.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from _auth_client import access_token

_TOKEN_PATH = "/token"
_FLAVOR = "Metadata-Flavor"


class FrozenMetadata:
    """Serves on 127.0.0.1 (`host`: what GCE_METADATA_HOST takes) until `close()`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.token = access_token(upstream)
        self.tokens_served = 0
        frozen = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                frozen.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        if path.endswith(_TOKEN_PATH) and "/service-accounts/" in path:
            self.tokens_served += 1
            body = json.dumps(
                {"access_token": self.token, "expires_in": 3600, "token_type": "Bearer"}
            ).encode()
            self._send(handler, 200, body, "application/json")
            return
        request = urllib.request.Request(
            f"http://{self.upstream}{handler.path}",
            headers={_FLAVOR: handler.headers.get(_FLAVOR, "")},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, body = response.status, response.read()
                kind = response.headers.get("Content-Type", "text/plain")
        except urllib.error.HTTPError as exc:
            status, body, kind = exc.code, exc.read(), "text/plain"
        self._send(handler, status, body, kind)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
        handler.send_response(status)
        handler.send_header(_FLAVOR, "Google")
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
