"""A fake of Google Cloud itself for Airflow tests: the GCE metadata server (project id, access
tokens, OIDC identity tokens signed with our own RSA key, served certs) plus a flaky HTTP endpoint.
It records every call so tests can check what was asked, when and with which token."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

EMAIL = "airflow@relay-test.iam.gserviceaccount.com"
KID = "relay-fake-metadata"


class FakeGoogle:
    """Serves http://127.0.0.1:PORT: metadata server paths, /certs, and /flaky (see `flaky`)."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay fake google")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.certs = {KID: cert.public_bytes(serialization.Encoding.PEM).decode()}
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._signer = crypt.RSASigner.from_string(pem, key_id=KID)
        self.id_token_ttl = 3600
        self.minted: list[tuple[str, str]] = []  # (audience, token), in order
        self.calls: list[str] = []
        # /flaky answers these statuses in turn, then 200; records (authorization, ce-id)
        self.flaky_statuses: list[int] = []
        self.flaky_seen: list[tuple[str | None, str | None]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> FakeGoogle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _id_token(self, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": EMAIL,
            "email": EMAIL,
            "email_verified": True,
            "sub": "1234567890",
            "iat": now,
            "exp": now + self.id_token_ttl,
            "n": len(self.minted),
        }
        token = jwt.encode(self._signer, claims).decode()
        self.minted.append((audience, token))
        return token

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any, content_type: str = "text/plain") -> None:
                data = body if isinstance(body, bytes) else str(body).encode()
                self.send_response(status)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with fake._lock:
                    fake.calls.append(parts.path)
                    base = "/computeMetadata/v1/"
                    path = parts.path.removeprefix(base)
                    if parts.path == "/":
                        self._send(200, "")
                    elif parts.path == "/certs":
                        self._send(200, json.dumps(fake.certs), "application/json")
                    elif self.headers.get("Metadata-Flavor") != "Google":
                        self._send(403, "missing Metadata-Flavor")
                    elif path == "project/project-id":
                        self._send(200, "relay-test")
                    elif path.startswith("instance/service-accounts/default/identity"):
                        self._send(200, fake._id_token(query["audience"]))
                    elif path.startswith("instance/service-accounts/default/token"):
                        body = {
                            "access_token": "fake-access",
                            "expires_in": 3600,
                            "token_type": "Bearer",
                        }
                        self._send(200, json.dumps(body), "application/json")
                    elif path.startswith("instance/service-accounts/default"):
                        body = {
                            "email": EMAIL,
                            "aliases": ["default"],
                            "scopes": ["cloud-platform"],
                        }
                        self._send(200, json.dumps(body), "application/json")
                    else:
                        self._send(404, f"unknown {parts.path}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with fake._lock:
                    fake.flaky_seen.append(
                        (self.headers.get("Authorization"), self.headers.get("ce-id"))
                    )
                    status = fake.flaky_statuses.pop(0) if fake.flaky_statuses else 200
                self._send(status, json.dumps({"outcome": "succeeded"}), "application/json")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def use_as_metadata_server(fake: FakeGoogle, monkeypatch: Any, tmp_path: Any) -> None:
    """Point google-auth's Application Default Credentials at `fake` (as on a GCE VM)."""
    from google.auth.compute_engine import _metadata

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", fake.host)
    monkeypatch.setenv("GCE_METADATA_IP", fake.host)
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", fake.host)  # read once at import
