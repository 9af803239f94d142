"""The control plane's HTTP side: source uploads (what GenerateUploadUrl hands out) and logs.

An upload URL takes one PUT of a zip with `Content-Type: application/zip`, as Google's signed URLs
do (another content type fails their signature: 403), at most 100 MB. Build and function logs are
served as text at the links an operation's stages and state messages name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_UPLOAD_BYTES = 100 * 2**20


class Uploads:
    """Upload slots by token: the bytes PUT to each, once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, tuple[str, str]] = {}
        self._objects: dict[tuple[str, str], bytes] = {}

    def expect(self, token: str, bucket: str, name: str) -> None:
        """Accept a PUT at `token` as the object bucket/name."""
        with self._lock:
            self._slots[token] = (bucket, name)

    def put(self, token: str, data: bytes) -> bool:
        """Store an upload; False for an unknown token."""
        with self._lock:
            where = self._slots.get(token)
            if where is None:
                return False
            self._objects[where] = data
            return True

    def get(self, bucket: str, name: str) -> bytes | None:
        """An uploaded object's bytes (None: nothing was uploaded there)."""
        with self._lock:
            return self._objects.get((bucket, name))


class HttpSide:
    """A threaded HTTP server: PUT /upload/<token>, GET /logs/<path under logs_root>."""

    def __init__(self, uploads: Uploads, logs_root: Path, host: str = "127.0.0.1") -> None:
        self.uploads = uploads
        self.logs_root = logs_root
        handler = _handler(uploads, logs_root)
        self._server = ThreadingHTTPServer((host, 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="relay-functions-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _handler(uploads: Uploads, logs_root: Path) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

        def _answer(self, status: int, text: str) -> None:
            body = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:
            if not self.path.startswith("/upload/"):
                self._answer(404, "no such upload URL")
                return
            if self.headers.get("Content-Type", "") != "application/zip":
                self._answer(
                    403, "SignatureDoesNotMatch: the upload needs Content-Type: application/zip"
                )
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD_BYTES:
                self._answer(400, f"EntityTooLarge: at most {MAX_UPLOAD_BYTES} bytes")
                return
            data = self.rfile.read(length)
            if not uploads.put(self.path.removeprefix("/upload/"), data):
                self._answer(404, "no such upload URL")
                return
            self._answer(200, "")

        def do_GET(self) -> None:
            relative = self.path.removeprefix("/logs/")
            path = (logs_root / relative).resolve()
            if not self.path.startswith("/logs/") or not path.is_relative_to(logs_root.resolve()):
                self._answer(404, "not found")
                return
            if not path.is_file():
                self._answer(404, "no such log")
                return
            self._answer(200, path.read_text(encoding="utf-8", errors="replace"))

    return Handler
