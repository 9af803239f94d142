"""Worker side of a wait: take the results the trigger reported out of their completion
subscriptions, decode them, turn them into the task's return value or a clear error, and delete
the subscriptions.

The trigger only peeks (pull + nack). Here, on the worker, the result is pulled again by the
message id the trigger reported (so duplicates resolve to the same first result), decoded with
relay.protocol (resolving a claim-check `dataref` here, not in the triggerer), and only then acked
and its subscription deleted.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from relay.airflow._names import WAIT_ACK_DEADLINE_SECONDS
from relay.airflow._result_trigger import FAIL_FAST, Waits, wait_pairs
from relay.airflow.exceptions import (
    RelayNonRetryablePartialFailureError,
    RelayPartialFailureError,
    RelayResultLostError,
    RelayTimeoutError,
    result_error,
)
from relay.airflow.hooks import RelayHook
from relay.protocol import RESULT_FAILED, ErrorInfo, Event, ProtocolError, from_message

SUCCEEDED = "succeeded"
FAILED = "failed"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
# How long the worker keeps looking for a reported result: a lease held by a trigger run that died
# right after pulling expires after the subscription's ack deadline.
_FETCH_PATIENCE = WAIT_ACK_DEADLINE_SECONDS * 2 + 5


@dataclass(frozen=True)
class Outcome:
    """What became of one request: status, result data or error, and the ids to trace it."""

    correlation_id: str
    status: str
    data: Any = None
    error: dict[str, Any] | None = None
    result_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for XCom."""
        return asdict(self)

    def reason(self) -> str:
        """One line: why this request did not succeed."""
        if self.error is not None:
            return f"{self.error['type']}: {self.error['message']}"
        return {TIMEOUT: "no result before the timeout", CANCELLED: "not awaited (fail fast)"}.get(
            self.status, self.status
        )


def xcom_data(event: Event) -> Any:
    """Result data for XCom: JSON as is, text as str, other bytes as base64 text."""
    data = event.data
    if not isinstance(data, bytes):
        return data
    if event.datacontenttype.startswith("text/"):
        return data.decode("utf-8", errors="replace")
    return base64.b64encode(data).decode("ascii")


def outcome_of(correlation_id: str, event: Event) -> Outcome:
    """Turn a decoded result event into an Outcome."""
    if event.type == RESULT_FAILED:
        try:
            info = ErrorInfo.from_event(event)
            error = {
                "type": info.type,
                "message": info.message,
                "retryable": info.retryable,
                "attempt": info.attempt,
            }
        except ProtocolError as exc:
            error = {
                "type": "relay.InvalidResult",
                "message": f"unparseable failed result: {exc}",
                "retryable": False,
                "attempt": 0,
            }
        return Outcome(correlation_id, FAILED, error=error, result_id=event.id)
    return Outcome(correlation_id, SUCCEEDED, data=xcom_data(event), result_id=event.id)


def fetch_event(hook: RelayHook, subscription: str, message_id: str) -> Event:
    """Pull the message `message_id` from `subscription`, decode it, then ack what was pulled."""
    subscriber = hook.subscriber()
    ack_ids: list[str] = []
    deadline = time.monotonic() + _FETCH_PATIENCE
    try:
        while True:
            response = subscriber.pull(
                request={
                    "subscription": subscription,
                    "max_messages": 100,
                    "return_immediately": True,
                },
                timeout=30,
            )
            found = None
            for received in response.received_messages:
                ack_ids.append(received.ack_id)
                if received.message.message_id == message_id:
                    found = received.message
            if found is not None:
                return from_message(found.data, dict(found.attributes))
            if time.monotonic() > deadline:
                raise RelayResultLostError(
                    f"result message {message_id} reported by the trigger is no longer in "
                    f"{subscription}"
                )
            if not response.received_messages:
                time.sleep(0.5)
    finally:
        if ack_ids:
            try:
                subscriber.acknowledge(
                    request={"subscription": subscription, "ack_ids": ack_ids}, timeout=30
                )
            except Exception as exc:  # the subscription is deleted next anyway
                hook.log.info("could not ack in %s: %r", subscription, exc)


def collect(hook: RelayHook, waits: Waits, payload: Mapping[str, Any]) -> list[Outcome]:
    """Outcomes in `waits` order (item order when given as pairs, as the trigger event carries
    them) from a RelayResultTrigger payload."""
    if payload.get("status") == "error":
        raise RelayResultLostError(str(payload.get("message") or "the wait failed"))
    reported: Mapping[str, Mapping[str, Any]] = payload.get("results") or {}
    missing = TIMEOUT if payload.get("status") == TIMEOUT else CANCELLED
    outcomes = []
    for cid, subscription in wait_pairs(waits):
        info = reported.get(cid)
        if info is None:
            outcomes.append(Outcome(cid, missing))
            continue
        try:
            event = fetch_event(hook, subscription, str(info["message_id"]))
        except ProtocolError as exc:
            outcomes.append(
                Outcome(
                    cid,
                    FAILED,
                    error={
                        "type": f"relay.{type(exc).__name__}",
                        "message": f"undecodable result: {exc}",
                        "retryable": False,
                        "attempt": 0,
                    },
                )
            )
            continue
        outcomes.append(outcome_of(cid, event))
    return outcomes


def conclude(outcomes: Sequence[Outcome], *, policy: str, timeout: float, single: bool) -> Any:
    """The task's return value, or the error that says which request failed and how."""
    if single:
        (outcome,) = outcomes
        if outcome.status == SUCCEEDED:
            return outcome.data
        _raise_for(outcome, [outcome.correlation_id], timeout)
    bad = [o for o in outcomes if o.status != SUCCEEDED]
    if not bad:
        return [o.data for o in outcomes]
    if policy == FAIL_FAST:
        failed = next((o for o in bad if o.status == FAILED), None)
        if failed is not None:
            _raise_for(failed, [], timeout)
        raise RelayTimeoutError([o.correlation_id for o in bad if o.status == TIMEOUT], timeout)
    # Only non-retryable failures: an Airflow retry would re-send the same requests for nothing.
    final = all(o.status == FAILED and not _retryable(o) for o in bad)
    cls = RelayNonRetryablePartialFailureError if final else RelayPartialFailureError
    raise cls({o.correlation_id: o.reason() for o in bad}, [o.to_dict() for o in outcomes])


def _retryable(outcome: Outcome) -> bool:
    return bool(outcome.error is not None and outcome.error.get("retryable"))


def _raise_for(outcome: Outcome, pending: list[str], timeout: float) -> None:
    if outcome.status == FAILED and outcome.error is not None:
        # Non-retryable -> RelayNonRetryableResultError, an AirflowFailException: no task retries.
        raise result_error(
            outcome.correlation_id,
            str(outcome.error["type"]),
            str(outcome.error["message"]),
            retryable=_retryable(outcome),
            attempt=int(outcome.error.get("attempt") or 0),
        )
    raise RelayTimeoutError(pending or [outcome.correlation_id], timeout)


def finish(
    context: Mapping[str, Any],
    hook: RelayHook,
    waits: Waits,
    payload: Mapping[str, Any],
    *,
    policy: str,
    timeout: float,
    single: bool,
    delete: bool = True,
) -> Any:
    """Resume after a wait: outcomes to XCom key "outcomes", return value or error; subscriptions
    deleted in every case (the task is finished with them)."""
    try:
        outcomes = collect(hook, waits, payload)
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key="outcomes", value=[o.to_dict() for o in outcomes])
        return conclude(outcomes, policy=policy, timeout=timeout, single=single)
    finally:
        if delete:
            hook.delete_subscriptions([subscription for _, subscription in wait_pairs(waits)])
