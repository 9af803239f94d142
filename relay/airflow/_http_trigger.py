"""RelayHttpInvokeTrigger: the direct path's POST, sent from the triggerer with retries.

Imported by the triggerer on its event loop, so it imports nothing heavy: the hook (and with it the
Google provider) is built in a worker thread on first use (relay.airflow._trigger_hooks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from relay.airflow._http import DEFAULT_FAIL_FAST_STATUSES, HttpPolicy, decode_body, post_async
from relay.airflow._identity import ImpersonationChain
from relay.airflow._settle import sleep_until
from relay.airflow._trigger_hooks import trigger_hook
from relay.airflow.exceptions import RelayConfigError


class RelayHttpInvokeTrigger(BaseTrigger):
    """POST a CloudEvent with retries from the triggerer; the ID token is minted here, per attempt.

    Kwargs hold the URL, the CloudEvent headers and body, the audience and the connection id: never
    a token or an Authorization header. `carry` (plain data for the resumed task) is echoed back in
    the event. Re-running it (triggerer failover) re-sends the same ce-id,
    which relay functions answer as a duplicate. The event is not yielded before `not_before`
    (epoch seconds: the deferring task's settle delay, see relay.airflow._settle).
    """

    def __init__(
        self,
        *,
        url: str,
        headers: dict[str, str],
        body: str,
        audience: str,
        deadline: float,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        request_timeout: float = 60.0,
        fail_fast_statuses: Collection[int] = DEFAULT_FAIL_FAST_STATUSES,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: ImpersonationChain = None,
        carry: dict[str, Any] | None = None,
        not_before: float = 0.0,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if any(k.lower() == "authorization" for k in headers):
            raise RelayConfigError("trigger headers must not carry credentials")
        self.url = url
        self.headers = dict(headers)
        self.body = body
        self.audience = audience
        self.deadline = float(deadline)
        self.policy = HttpPolicy(
            max_attempts, backoff, max_backoff, request_timeout, tuple(fail_fast_statuses)
        )
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = (
            impersonation_chain
            if impersonation_chain is None or isinstance(impersonation_chain, str)
            else list(impersonation_chain)
        )
        self.carry = dict(carry or {})
        self.not_before = float(not_before)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and kwargs (no credentials)."""
        return (
            "relay.airflow.triggers.RelayHttpInvokeTrigger",
            {
                "url": self.url,
                "headers": dict(self.headers),
                "body": self.body,
                "audience": self.audience,
                "deadline": self.deadline,
                "max_attempts": self.policy.max_attempts,
                "backoff": self.policy.backoff,
                "max_backoff": self.policy.max_backoff,
                "request_timeout": self.policy.request_timeout,
                "fail_fast_statuses": list(self.policy.fail_fast_statuses),
                "gcp_conn_id": self.gcp_conn_id,
                "impersonation_chain": self.impersonation_chain,
                "carry": dict(self.carry),
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """POST until success or give-up; yields {"status": "ok"|"error", "code", "attempts"...}."""
        hook = await trigger_hook(self.gcp_conn_id, self.impersonation_chain)
        payload = await post_async(
            hook,
            self.url,
            self.headers,
            decode_body(self.body),
            audience=self.audience,
            policy=self.policy,
            deadline=self.deadline,
        )
        await sleep_until(self.not_before)
        yield TriggerEvent({**payload, "carry": self.carry})  # type: ignore[no-untyped-call]
