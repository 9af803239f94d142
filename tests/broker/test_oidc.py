"""Push OIDC tokens and the broker's HTTP side: google-auth verifies what the signer mints."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import google.auth.exceptions
import google.auth.jwt
import google.auth.transport.requests
import pytest
from google.oauth2 import id_token

from relay.broker._http import start_http
from relay.broker._oidc import ISSUER, TokenSigner

EMAIL = "invoker@relay-test.iam.gserviceaccount.com"
AUDIENCE = "http://127.0.0.1:9/push"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> TokenSigner:
    return TokenSigner.load_or_create(tmp_path_factory.mktemp("oidc"))


@pytest.fixture
async def certs_url(signer: TokenSigner) -> AsyncIterator[str]:
    runner, port = await start_http("127.0.0.1", 0, signer)
    try:
        yield f"http://127.0.0.1:{port}/certs"
    finally:
        await runner.cleanup()


def verify(token: str, certs_url: str, audience: str = AUDIENCE) -> Mapping[str, Any]:
    request = google.auth.transport.requests.Request()
    claims: Mapping[str, Any] = id_token.verify_token(
        token, request, audience=audience, certs_url=certs_url
    )
    return claims


def test_key_is_created_once_private_and_stable(tmp_path: Path) -> None:
    first = TokenSigner.load_or_create(tmp_path / "data")
    key_files = list((tmp_path / "data").glob("*key*"))
    assert len(key_files) == 1
    assert stat.S_IMODE(key_files[0].stat().st_mode) == 0o600
    key_bytes = key_files[0].read_bytes()
    second = TokenSigner.load_or_create(tmp_path / "data")
    assert second.kid == first.kid
    assert second.certs() == first.certs()
    assert key_files[0].read_bytes() == key_bytes
    # A token from the first instance verifies with the second's certificate.
    token = first.mint(AUDIENCE, EMAIL)
    claims = google.auth.jwt.decode(token, certs=second.certs(), audience=AUDIENCE)
    assert claims["email"] == EMAIL
    # Another data dir is another key.
    assert TokenSigner.load_or_create(tmp_path / "other").kid != first.kid


def test_certs_are_pem_certificates_keyed_by_kid(signer: TokenSigner) -> None:
    certs = signer.certs()
    assert list(certs) == [signer.kid]
    assert certs[signer.kid].startswith("-----BEGIN CERTIFICATE-----")
    header = google.auth.jwt.decode_header(signer.mint(AUDIENCE, EMAIL))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": signer.kid}


def test_claims_are_googles(signer: TokenSigner) -> None:
    now = time.time()
    token = signer.mint("https://fn.example/run", EMAIL, now=now, lifetime=600)
    claims = google.auth.jwt.decode(token, certs=signer.certs(), audience="https://fn.example/run")
    assert claims["iss"] == ISSUER == "https://accounts.google.com"
    assert claims["aud"] == "https://fn.example/run"
    assert claims["email"] == EMAIL
    assert claims["email_verified"] is True
    assert claims["iat"] == int(now)
    assert claims["exp"] == int(now) + 600
    assert claims["sub"].isdigit()
    assert (
        claims["sub"]
        == google.auth.jwt.decode(signer.mint("x", EMAIL), certs=signer.certs(), audience="x")[
            "sub"
        ]
    )


async def test_verify_token_against_the_certs_endpoint(signer: TokenSigner, certs_url: str) -> None:
    token = signer.mint(AUDIENCE, EMAIL)
    claims = await asyncio.to_thread(verify, token, certs_url)
    assert claims["email"] == EMAIL
    assert claims["email_verified"] is True
    assert claims["iss"] == "https://accounts.google.com"


async def test_wrong_audience_is_rejected(signer: TokenSigner, certs_url: str) -> None:
    token = signer.mint("https://someone-else", EMAIL)
    with pytest.raises(ValueError, match="audience"):
        await asyncio.to_thread(verify, token, certs_url)


async def test_expired_token_is_rejected(signer: TokenSigner, certs_url: str) -> None:
    token = signer.mint(AUDIENCE, EMAIL, now=time.time() - 7200, lifetime=3600)
    with pytest.raises(ValueError, match="expired"):
        await asyncio.to_thread(verify, token, certs_url)


async def test_token_from_another_key_is_rejected(
    signer: TokenSigner, certs_url: str, tmp_path: Path
) -> None:
    stranger = TokenSigner.load_or_create(tmp_path)
    token = stranger.mint(AUDIENCE, EMAIL)
    with pytest.raises(ValueError, match=r"signature|Certificate for key id"):
        await asyncio.to_thread(verify, token, certs_url)


async def test_healthz_and_certs_endpoints(signer: TokenSigner) -> None:
    runner, port = await start_http("127.0.0.1", 0, signer)
    try:
        assert port > 0
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                assert await response.text() == "ok"
            async with session.get(f"http://127.0.0.1:{port}/certs") as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                assert "max-age" in response.headers["Cache-Control"]
                assert json.loads(await response.text()) == signer.certs()
            async with session.get(f"http://127.0.0.1:{port}/nope") as response:
                assert response.status == 404
    finally:
        await runner.cleanup()


async def test_start_http_on_a_taken_port_raises(signer: TokenSigner) -> None:
    runner, port = await start_http("127.0.0.1", 0, signer)
    try:
        with pytest.raises(OSError, match=r"address already in use|Errno 98"):
            await start_http("127.0.0.1", port, signer)
    finally:
        await runner.cleanup()
