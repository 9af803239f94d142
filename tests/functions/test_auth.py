"""Push token verification (PushAuth) against our own signing key and certs endpoint."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from relay.functions import PushAuth, PushAuthError

from ._tokens import AUDIENCE, PUSHER, SigningKey, certs_server

KEY = SigningKey("kid-1")
OTHER = SigningKey("kid-1")  # same kid, different key: a forged signature


@pytest.fixture(scope="module")
def certs() -> Iterator[tuple[str, list[str]]]:
    with certs_server({KEY.kid: KEY.cert_pem}) as served:
        yield served


@pytest.fixture
def auth(certs: tuple[str, list[str]]) -> PushAuth:
    return PushAuth(audience=AUDIENCE, allowed_emails=frozenset({PUSHER}), certs_url=certs[0])


def test_valid_token(auth: PushAuth) -> None:
    claims = auth.verify(f"Bearer {KEY.token()}")
    assert claims["email"] == PUSHER


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("", 401),
        ("Basic dXNlcjpwYXNz", 401),
        ("Bearer ", 401),
        ("Bearer not.a.jwt", 401),
        ("Bearer " + "A" * 5000, 401),
        (f"Bearer {OTHER.token()}", 401),  # wrong signature
        (f"Bearer {KEY.token(exp=int(time.time()) - 60, iat=int(time.time()) - 3700)}", 401),
        (f"Bearer {KEY.token(aud='https://elsewhere.test')}", 401),
        (f"Bearer {KEY.token(iss='https://evil.test')}", 401),
        (f"Bearer {KEY.token(email='intruder@relay-test.iam.gserviceaccount.com')}", 403),
        (f"Bearer {KEY.token(email_verified=False)}", 403),
        (f"Bearer {KEY.token(email_verified=None)}", 403),
        (f"Bearer {SigningKey('kid-2').token()}", 401),  # unknown key id
    ],
)
def test_rejected_tokens(auth: PushAuth, authorization: str | None, status: int) -> None:
    with pytest.raises(PushAuthError) as caught:
        auth.verify(authorization)
    assert caught.value.status == status


def test_certs_are_cached(certs: tuple[str, list[str]]) -> None:
    auth = PushAuth(audience=AUDIENCE, allowed_emails=frozenset({PUSHER}), certs_url=certs[0])
    before = len(certs[1])
    for _ in range(5):
        auth.verify(f"Bearer {KEY.token()}")
    assert len(certs[1]) == before + 1


def test_unreachable_certs_is_a_server_error() -> None:
    auth = PushAuth(
        audience=AUDIENCE, allowed_emails=frozenset({PUSHER}), certs_url="http://127.0.0.1:9/certs"
    )
    with pytest.raises(PushAuthError) as caught:
        auth.verify(f"Bearer {KEY.token()}")
    assert caught.value.status == 503


def test_configure_from_env() -> None:
    env = {
        "RELAY_PUSH_AUDIENCE": AUDIENCE,
        "RELAY_PUSH_ALLOWED_EMAILS": f" {PUSHER}, b@x.iam.gserviceaccount.com ",
        "RELAY_PUSH_CERTS_URL": "http://127.0.0.1:1/certs",
    }
    auth = PushAuth.configure(environ=env)
    assert auth is not None
    assert auth.allowed_emails == {PUSHER, "b@x.iam.gserviceaccount.com"}
    assert auth.certs_url == "http://127.0.0.1:1/certs"
    assert PushAuth.configure(environ={}) is None
    with pytest.raises(ValueError, match="allow-list"):
        PushAuth.configure(environ={"RELAY_PUSH_AUDIENCE": AUDIENCE})
