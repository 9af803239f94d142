"""The token service of --require-auth: access tokens and ID tokens through google-auth itself,
from a Compute Engine-style metadata server per identity."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.broker._metadata import Identity, start_metadata
from relay.broker._oidc import TokenSigner
from relay.broker._tokens import TokenError, TokenIssuer

EMAIL = "relay-airflow@relay-test.iam.gserviceaccount.com"


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_tokens_name_their_principal_and_expire(tmp_path: Path) -> None:
    clock = _Clock()
    issuer = TokenIssuer.load_or_create(tmp_path, clock, lifetime=60)
    token, lifetime = issuer.mint(EMAIL)
    assert (token.startswith("ya29."), lifetime) == (True, 60)
    assert issuer.check(token).email == EMAIL
    again = TokenIssuer.load_or_create(tmp_path, clock, lifetime=60)  # the key persists
    assert again.check(token).member == f"serviceAccount:{EMAIL}"
    clock.now += 60
    with pytest.raises(TokenError, match=f"access token of {EMAIL} expired"):
        issuer.check(token)
    assert (tmp_path / "token-key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: t.replace("ya29.relay.", "ya29.relay.e30", 1),  # claims changed
        lambda t: "ya29.other",
        lambda t: "",
        lambda t: "ya29.relay." + "é" * 10 + ".x",
        lambda t: t + "x" * 3000,
    ],
)
def test_forged_tokens_are_refused(tmp_path: Path, forge: object) -> None:
    issuer = TokenIssuer.load_or_create(tmp_path, time.time)
    token, _ = issuer.mint(EMAIL)
    assert callable(forge)
    with pytest.raises(TokenError):
        issuer.check(forge(token))
    other = TokenIssuer.load_or_create(tmp_path / "other", time.time)
    with pytest.raises(TokenError, match="signature"):
        other.check(token)


@pytest.fixture
def metadata_server(tmp_path: Path) -> Iterator[tuple[str, TokenIssuer, TokenSigner]]:
    """A metadata server for EMAIL on its own event loop thread: (host:port, issuer, signer)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    issuer = TokenIssuer.load_or_create(tmp_path, time.time, lifetime=5)
    signer = TokenSigner.load_or_create(tmp_path)
    identity = Identity(EMAIL, "relay-test", issuer, signer)
    started = asyncio.run_coroutine_threadsafe(start_metadata("127.0.0.1", 0, identity), loop)
    runner, port = started.result(10)
    yield f"127.0.0.1:{port}", issuer, signer
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


_CLIENT = """
import json, sys
import google.auth, google.auth.transport.requests
from google.oauth2 import id_token
credentials, project = google.auth.default()
request = google.auth.transport.requests.Request()
credentials.refresh(request)
first = credentials.token
credentials.refresh(request)
print(json.dumps({
    "project": project,
    "email": credentials.service_account_email,
    "tokens": [first, credentials.token],
    "expiry": credentials.expiry.isoformat(),
    "id_token": id_token.fetch_id_token(request, "https://echo.example.test"),
}))
"""


def test_google_auth_gets_tokens_from_it_unmodified(
    metadata_server: tuple[str, TokenIssuer, TokenSigner], tmp_path: Path
) -> None:
    """Application Default Credentials in a fresh process, as on Cloud Run: no relay code."""
    import json

    from google.auth import jwt

    host, issuer, signer = metadata_server
    env = {
        "PATH": "/usr/bin:/bin",
        "GCE_METADATA_HOST": host,
        "GCE_METADATA_IP": host,
        "CLOUDSDK_CONFIG": str(tmp_path / "no-gcloud"),
        "NO_GCE_CHECK": "False",
    }
    out = subprocess.run(
        [sys.executable, "-c", _CLIENT], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (got["project"], got["email"]) == ("relay-test", EMAIL)
    assert [issuer.check(token).email for token in got["tokens"]] == [EMAIL, EMAIL]
    verified = jwt.decode(  # type: ignore[no-untyped-call]
        got["id_token"], certs=signer.certs(), audience="https://echo.example.test"
    )
    assert (verified["email"], verified["email_verified"]) == (EMAIL, True)
    assert verified["exp"] - verified["iat"] == 5  # the token service's lifetime


def test_the_metadata_flavor_header_is_required(
    metadata_server: tuple[str, TokenIssuer, TokenSigner],
) -> None:
    import urllib.error
    import urllib.request

    host, _, _ = metadata_server
    url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 403
    other = f"http://{host}/computeMetadata/v1/instance/service-accounts/someone@x.iam/token"
    request = urllib.request.Request(other, headers={"Metadata-Flavor": "Google"})
    with pytest.raises(urllib.error.HTTPError) as unknown:
        urllib.request.urlopen(request, timeout=5)
    assert unknown.value.code == 404
