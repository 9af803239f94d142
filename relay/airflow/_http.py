"""The direct HTTPS path: a binary-mode HTTP CloudEvent POSTed with an OIDC ID token, retried with
backoff. One attempt loop, run synchronously on a worker or asynchronously in the triggerer; the ID
token is minted right before each attempt, in the process that sends the request."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from relay.airflow.exceptions import RelayHttpError, RelayResultError
from relay.protocol import Event, to_binary

if TYPE_CHECKING:  # the triggerer imports this module on its event loop: keep it light
    from relay.airflow.hooks import RelayHook

_BODY_LIMIT = 65_536
# The function could not even read the request: resending the same bytes cannot help.
DEFAULT_FAIL_FAST_STATUSES = (400, 413)


def http_parts(event: Event) -> tuple[dict[str, str], bytes]:
    """Headers and body of the binary-mode HTTP CloudEvent (the same ce-* attributes as Pub/Sub)."""
    message = to_binary(event)
    headers = {
        ("Content-Type" if k == "content-type" else k): v for k, v in message.attributes.items()
    }
    return headers, message.data


@dataclass(frozen=True)
class HttpPolicy:
    """Retry policy of the direct path."""

    max_attempts: int = 5
    backoff: float = 1.0
    max_backoff: float = 30.0
    request_timeout: float = 60.0
    fail_fast_statuses: Collection[int] = DEFAULT_FAIL_FAST_STATUSES

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter after failed attempt `attempt` (1-based)."""
        return float(random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1))))

    def to_json(self) -> dict[str, Any]:
        """The policy as plain data (a trigger's kwargs)."""
        return {**asdict(self), "fail_fast_statuses": list(self.fail_fast_statuses)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> HttpPolicy:
        """Inverse of to_json."""
        return cls(**{**value, "fail_fast_statuses": tuple(value["fail_fast_statuses"])})


def _auth_headers(hook: RelayHook, audience: str) -> dict[str, str]:
    token = hook.fetch_id_token(audience)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _ok(attempts: int, status: int, body: bytes) -> dict[str, Any]:
    return {
        "status": "ok",
        "code": status,
        "attempts": attempts,
        "body": body[:_BODY_LIMIT].decode("utf-8", errors="replace"),
    }


def _error(attempts: int, status: int | None, detail: str) -> dict[str, Any]:
    return {"status": "error", "code": status, "attempts": attempts, "detail": detail[:2000]}


def _failure(status: int, body: bytes) -> str:
    return f"HTTP {status}: {body[:300].decode('utf-8', errors='replace')}"


@dataclass
class _Attempts:
    """What each attempt's outcome means, shared by post_sync and post_async."""

    hook: RelayHook
    url: str
    policy: HttpPolicy
    deadline: float
    status: int | None = None
    detail: str = "no attempt made"

    def answered(self, attempt: int, status: int, content: bytes) -> dict[str, Any] | None:
        """The final payload for this response, or None when it is worth another attempt."""
        self.status = status
        if 200 <= status < 300:
            return _ok(attempt, status, content)
        self.detail = _failure(status, content)
        if status in self.policy.fail_fast_statuses:
            return _error(attempt, status, self.detail)
        return None

    def broke(self, exc: Exception) -> None:
        """The attempt got no response at all (connection refused, timeout, ...)."""
        self.status, self.detail = None, f"{type(exc).__name__}: {exc}"

    def pause(self, attempt: int) -> float | None:
        """Log the failed attempt; the wait before the next one, None when out of tries or time."""
        self.hook.log.warning(
            "POST %s attempt %d/%d failed: %s",
            self.url,
            attempt,
            self.policy.max_attempts,
            self.detail,
        )
        pause = self.policy.delay(attempt)
        if attempt >= self.policy.max_attempts or time.time() + pause > self.deadline:
            return None
        return pause

    def given_up(self, attempt: int) -> dict[str, Any]:
        """The error payload after the last attempt."""
        return _error(attempt, self.status, self.detail)


def post_sync(
    hook: RelayHook,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    audience: str,
    policy: HttpPolicy,
    deadline: float,
) -> dict[str, Any]:
    """POST until a 2xx, a fail-fast status, the attempt limit or the deadline: a payload."""
    import httpx

    attempts = _Attempts(hook, url, policy, deadline)
    with httpx.Client(timeout=policy.request_timeout) as client:
        for attempt in range(1, policy.max_attempts + 1):
            try:
                response = client.post(
                    url, content=body, headers={**headers, **_auth_headers(hook, audience)}
                )
                payload = attempts.answered(attempt, response.status_code, response.content)
                if payload is not None:
                    return payload
            except httpx.HTTPError as exc:
                attempts.broke(exc)
            pause = attempts.pause(attempt)
            if pause is None:
                return attempts.given_up(attempt)
            time.sleep(pause)
    return attempts.given_up(policy.max_attempts)


async def post_async(
    hook: RelayHook,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    audience: str,
    policy: HttpPolicy,
    deadline: float,
) -> dict[str, Any]:
    """The asyncio twin of post_sync (token minting runs in a thread: google-auth is blocking)."""
    import httpx

    attempts = _Attempts(hook, url, policy, deadline)
    async with httpx.AsyncClient(timeout=policy.request_timeout) as client:
        for attempt in range(1, policy.max_attempts + 1):
            try:
                auth = await asyncio.to_thread(_auth_headers, hook, audience)
                response = await client.post(url, content=body, headers={**headers, **auth})
                payload = attempts.answered(attempt, response.status_code, response.content)
                if payload is not None:
                    return payload
            except httpx.HTTPError as exc:
                attempts.broke(exc)
            pause = attempts.pause(attempt)
            if pause is None:
                return attempts.given_up(attempt)
            await asyncio.sleep(pause)
    return attempts.given_up(policy.max_attempts)


def encode_body(body: bytes) -> str:
    """Bytes as text for trigger kwargs."""
    return base64.b64encode(body).decode("ascii")


def decode_body(text: str) -> bytes:
    """Inverse of encode_body."""
    return base64.b64decode(text.encode("ascii"))


def response_json(payload: Mapping[str, Any]) -> Any:
    """The 2xx response body as JSON when it is JSON, else as text."""
    body = str(payload.get("body", ""))
    try:
        return json.loads(body)
    except ValueError:
        return body


def http_failure(url: str, payload: Mapping[str, Any]) -> RelayHttpError | None:
    """The error of a POST that got no 2xx (a post_sync / post_async payload), None after a 2xx."""
    if payload.get("status") == "ok":
        return None
    return RelayHttpError(
        url, int(payload.get("attempts") or 0), payload.get("code"), str(payload.get("detail"))
    )


def http_answer(payload: Mapping[str, Any]) -> Any:
    """The function's answer to a 2xx POST, the task's return value without `wait_for_result`;
    RelayResultError when it answered with a failed or expired result."""
    answer = response_json(payload)
    if isinstance(answer, dict) and answer.get("outcome") in ("failed", "expired"):
        raise RelayResultError(
            str(answer.get("correlationid", "")),
            str(answer.get("outcome")),
            "the function answered with a failed result (wait_for_result=True has details)",
        )
    return answer
