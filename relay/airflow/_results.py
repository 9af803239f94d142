"""Worker side of a wait: take the results the wait reported out of the task's completion
subscription, decode them, turn them into the task's return value or a clear error, and delete
the subscription.

The trigger only reads (pull, then nack). Here, on the worker, the results are pulled again by
correlation id, preferring the message id the wait reported (a duplicate carries the same result),
decoded with relay.protocol (resolving a claim-check `dataref` here, not in the triggerer), and
acked in batches once in hand; then the one subscription is deleted.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException

from relay.airflow._names import WAIT_ACK_DEADLINE_SECONDS
from relay.airflow._reader import Reading, Seen, SubscriptionGone
from relay.airflow._result_trigger import run_blocking
from relay.airflow._wait import ERROR, FAIL_FAST, ResultWait, WaitOutcome
from relay.airflow.exceptions import (
    RelayNonRetryablePartialFailureError,
    RelayPartialFailureError,
    RelayResultLostError,
    RelayTimeoutError,
    result_error,
)
from relay.protocol import RESULT_FAILED, ErrorInfo, Event, ProtocolError, from_message

if TYPE_CHECKING:
    from relay.airflow.hooks import RelayHook

SUCCEEDED = "succeeded"
FAILED = "failed"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
# How long the worker keeps looking for a reported result: a lease held by a trigger run that died
# right after pulling expires after the subscription's ack deadline.
_TAKE_PATIENCE = WAIT_ACK_DEADLINE_SECONDS * 2 + 5


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


def take_results(hook: RelayHook, wait: ResultWait, found: Mapping[str, str]) -> dict[str, Any]:
    """The result message of each correlation id in `found` (preferring the message id the wait
    reported; a duplicate of it is the same result), acked once in hand. RelayResultLostError
    names the ids whose results are no longer in their subscription."""
    return run_blocking(take_results_async(hook, wait, found))


async def take_results_async(
    hook: RelayHook, wait: ResultWait, found: Mapping[str, str]
) -> dict[str, Any]:
    """`take_results` on the running event loop (the triggerer's, for a task started there)."""
    client = hook.async_subscriber()
    taken: dict[str, Any] = {}
    for subscription, ids in wait.subscriptions().items():
        wanted = {cid: found[cid] for cid in ids if cid in found}
        if not wanted:
            continue
        reading = Reading(client, subscription, wanted)
        chosen: dict[str, Seen] = {}
        give_up = time.time() + _TAKE_PATIENCE
        try:
            while len(chosen) < len(wanted) and time.time() < give_up:
                for seen in await reading.pull():
                    earlier = chosen.get(seen.correlation_id)
                    if earlier is None or seen.message_id == wanted[seen.correlation_id]:
                        chosen[seen.correlation_id] = seen
        except SubscriptionGone:
            pass  # reported below as lost
        finally:
            await reading.release(take=chosen)
        missing = [cid for cid in wanted if cid not in chosen]
        if missing:
            raise RelayResultLostError(
                f"the results the wait reported for {len(missing)} correlation id(s) are no "
                f"longer in {subscription}: {', '.join(missing[:10])}"
            )
        taken.update((cid, seen.received.message) for cid, seen in chosen.items())
    return taken


def collect(hook: RelayHook, outcome: WaitOutcome) -> list[Outcome]:
    """Outcomes in item order from what a wait found: the results taken from the subscription
    and decoded (claim checks resolved here, on the worker)."""
    if outcome.status == ERROR:
        raise RelayResultLostError(outcome.message or "the wait failed")
    found = outcome.found()
    return decode(outcome, take_results(hook, outcome.wait, found) if found else {})


def decode(outcome: WaitOutcome, messages: Mapping[str, Any]) -> list[Outcome]:
    """Outcomes in item order from the result messages taken per correlation id (a claim-check
    `dataref` is fetched here: blocking, so off any event loop)."""
    missing = TIMEOUT if outcome.status == TIMEOUT else CANCELLED
    outcomes = []
    for cid in outcome.wait.correlation_ids:
        message = messages.get(cid)
        if message is None:
            outcomes.append(Outcome(cid, missing))
            continue
        try:
            event = from_message(message.data, dict(message.attributes))
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


def sensor_skips(
    error: BaseException, *, timed_out: bool, soft_fail: bool, never_fail: bool
) -> bool:
    """Whether a sensor with `soft_fail` / `never_fail` ends skipped rather than failed by `error`:
    an AirflowException (a non-retryable result is one), as Airflow's sensors skip after a
    deferral, and under soft_fail a wait that `timed_out` (results missing at its deadline), as
    they skip a timeout in poke mode."""
    if soft_fail and timed_out:
        return True
    return (soft_fail or never_fail) and isinstance(error, AirflowException)


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
    outcome: WaitOutcome,
    *,
    policy: str,
    timeout: float,
    single: bool,
    delete: bool = True,
) -> Any:
    """Resume after a wait: outcomes to XCom key "outcomes", return value or error; the wait's
    subscription deleted in every case (the task is finished with it)."""
    try:
        outcomes = collect(hook, outcome)
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key="outcomes", value=[o.to_dict() for o in outcomes])
        return conclude(outcomes, policy=policy, timeout=timeout, single=single)
    finally:
        if delete:
            hook.delete_subscriptions(list(outcome.wait.subscriptions()))
