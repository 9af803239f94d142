"""Push token checks in front of a served function: bad tokens never reach the handler."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from ._tokens import AUDIENCE, PUSHER, SigningKey, certs_server
from .conftest import EXAMPLES, Completion, log_lines, post_push, request_event

KEY = SigningKey("test-kid")


@pytest.fixture(scope="module")
def certs_url() -> Iterator[str]:
    with certs_server({KEY.kid: KEY.cert_pem}) as (url, _):
        yield url


@pytest.fixture
def guarded(broker: Any, make_client: Any, certs_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The echo example with push auth configured through the environment."""
    monkeypatch.setenv("RELAY_PUSH_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("RELAY_PUSH_ALLOWED_EMAILS", PUSHER)
    monkeypatch.setenv("RELAY_PUSH_CERTS_URL", certs_url)
    return make_client("echo", EXAMPLES / "echo" / "main.py")


def _post(client: Any, completion: Completion, token: str | None) -> Any:
    request = request_event(completion, {"crash": 99})  # would answer 500 if it ran
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return post_push(client, request, headers=headers)


def test_valid_token_reaches_the_handler(guarded: Any, completion: Completion) -> None:
    request = request_event(completion, {"ok": True})
    headers = {"Authorization": f"Bearer {KEY.token()}"}
    assert post_push(guarded, request, headers=headers).status_code == 200
    (result,) = completion.pull(1)
    assert result.data == {"ok": True}


@pytest.mark.parametrize(
    ("token", "status"),
    [
        (None, 401),
        ("garbage", 401),
        (SigningKey("test-kid").token(), 401),
        (KEY.token(exp=int(time.time()) - 100, iat=int(time.time()) - 4000), 401),
        (KEY.token(aud="https://other.test"), 401),
        (KEY.token(email="someone@else.iam.gserviceaccount.com"), 403),
        (KEY.token(email_verified=False), 403),
    ],
)
def test_bad_tokens_never_reach_the_handler(
    guarded: Any,
    completion: Completion,
    token: str | None,
    status: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    response = _post(guarded, completion, token)
    assert response.status_code == status
    (line,) = log_lines(capsys.readouterr().out)
    assert line["outcome"] == {401: "unauthorized", 403: "forbidden"}[status]
    completion.assert_empty(0.2)
