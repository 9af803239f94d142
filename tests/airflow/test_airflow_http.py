"""The direct HTTPS path: ID tokens minted from the connection's identity where the request is sent,
refreshed by google-auth when expired, never in trigger arguments; non-2xx retried with backoff."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from _airflow_fakes import EMAIL, FakeGoogle

from relay.airflow._http import http_parts
from relay.airflow._publish import build_requests
from relay.airflow.triggers import RelayHttpInvokeTrigger
from relay.protocol import EXAMPLE_ECHO

pytestmark = pytest.mark.timeout(60)


def http_trigger(fake: FakeGoogle, audience: str, **kwargs: Any) -> RelayHttpInvokeTrigger:
    (event,) = build_requests(
        EXAMPLE_ECHO,
        [{"x": 1}],
        source="/tests",
        reply_to="projects/relay-test/topics/results",
        correlation_ids=["g.0"],
    )
    headers, body = http_parts(event)
    import base64

    return RelayHttpInvokeTrigger(
        url=f"{fake.url}/flaky",
        headers=headers,
        body=base64.b64encode(body).decode(),
        audience=audience,
        deadline=time.time() + 30,
        backoff=0.05,
        gcp_conn_id="relay_adc",
        **kwargs,
    )


def claims(token: str) -> dict[str, Any]:
    from google.auth import jwt

    return dict(jwt.decode(token, verify=False))


async def test_tokens_are_minted_per_attempt_only_when_expired(fake_google: FakeGoogle) -> None:
    fake = fake_google
    # valid for an hour: one token serves all three attempts (two 503s, then 200)
    fake.flaky_statuses = [503, 503]
    payload = (await anext(http_trigger(fake, "https://fn-a.example").run())).payload
    assert payload["status"] == "ok"
    assert payload["attempts"] == 3
    tokens = [auth for auth, _ in fake.flaky_seen]
    assert len(fake.minted) == 1
    assert tokens == [f"Bearer {fake.minted[0][1]}"] * 3
    assert claims(fake.minted[0][1])["aud"] == "https://fn-a.example"
    assert claims(fake.minted[0][1])["email"] == EMAIL
    ce_ids = {ce_id for _, ce_id in fake.flaky_seen}
    assert len(ce_ids) == 1  # every retry re-sends the same CloudEvent id
    # tokens that expire within google-auth's refresh margin: a fresh one for every attempt
    fake.flaky_seen.clear()
    fake.id_token_ttl = 60
    fake.flaky_statuses = [500, 502]
    payload = (await anext(http_trigger(fake, "https://fn-b.example").run())).payload
    assert payload["status"] == "ok"
    assert payload["attempts"] == 3
    fresh = [token for audience, token in fake.minted if audience == "https://fn-b.example"]
    assert len(fresh) == 3
    assert len(set(fresh)) == 3
    assert [auth for auth, _ in fake.flaky_seen] == [f"Bearer {t}" for t in fresh]


async def test_giving_up_reports_status_and_attempts(fake_google: FakeGoogle) -> None:
    fake_google.flaky_statuses = [503] * 10
    payload = (
        await anext(http_trigger(fake_google, "https://fn.example", max_attempts=3).run())
    ).payload
    assert payload["status"] == "error"
    assert payload["attempts"] == 3
    assert payload["code"] == 503
    fake_google.flaky_statuses = [400]
    payload = (await anext(http_trigger(fake_google, "https://fn.example").run())).payload
    assert payload["status"] == "error"
    assert payload["attempts"] == 1


async def test_trigger_arguments_never_carry_a_token(fake_google: FakeGoogle) -> None:
    trigger = http_trigger(fake_google, f"https://fn-{uuid.uuid4().hex}.example")
    await anext(trigger.run())  # a token was minted and used...
    assert fake_google.minted
    classpath, kwargs = trigger.serialize()
    text = json.dumps(kwargs)  # ...but the serialized trigger knows nothing of it
    assert classpath == "relay.airflow.triggers.RelayHttpInvokeTrigger"
    for _, token in fake_google.minted:
        assert token not in text
    for marker in ("authorization", "bearer", "private_key", "token"):
        assert marker not in text.lower()
    with pytest.raises(ValueError, match="must not carry credentials"):
        RelayHttpInvokeTrigger(**{**kwargs, "headers": {"Authorization": "Bearer x"}})
    assert asyncio.get_running_loop()  # ran inside the loop, like a triggerer


async def test_the_http_trigger_fires_no_earlier_than_not_before(fake_google: FakeGoogle) -> None:
    """A fast POST still waits for the deferral's settle moment (apache/airflow#72716)."""
    fake_google.flaky_statuses = []
    moment = time.time() + 1.5
    trigger = http_trigger(fake_google, "https://fn.example", not_before=moment)
    assert trigger.serialize()[1]["not_before"] == moment
    payload = (await anext(trigger.run())).payload
    assert time.time() >= moment
    assert payload["status"] == "ok"
