"""Parse-time side of a task started in the triggerer (`start_in_triggerer=True`, the operators'
and the sensor's): whether its inputs can be resolved there, and the StartTriggerArgs that carry
them to RelayRequestTrigger; and the worker side of a wait's resumption, including the one event
that resumes such a task on a worker.

What the triggerer can resolve: literal data, Jinja templates (rendered by the trigger), and a
plain XComArg of a non-mapped task (`items=list_files()`, read with map_index -1). It cannot pull
a mapped upstream's XComs (GetXComSequenceSlice is not served there), resolve a mapped or
zipped XComArg nor register outlets' asset events: those are refused here, at parse time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from airflow.triggers.base import StartTriggerArgs

from relay.airflow._defer_after import DEFER_GRACE
from relay.airflow._request_trigger import CLASSPATH, NON_RETRYABLE_EVENT, XCOM_MARKER
from relay.airflow._wait import WaitOutcome
from relay.airflow.exceptions import (
    RelayConfigError,
    RelayNonRetryablePartialFailureError,
    RelayNonRetryableResultError,
)

# The errors RelayRequestTrigger can hand to a worker to raise (by their serialize() classpath).
_NON_RETRYABLE = {
    f"{cls.__module__}.{cls.__name__}": cls
    for cls in (RelayNonRetryableResultError, RelayNonRetryablePartialFailureError)
}


def native_start(
    task: Any,
    *,
    kind: str,
    inputs: Mapping[str, Any],
    settings: Mapping[str, Any],
    timeout: float,
) -> None:
    """Make `task` start in the triggerer: Airflow's start_from_trigger with StartTriggerArgs for
    RelayRequestTrigger, set on the instance at parse time (never on the class). `timeout` is the
    wait's, in seconds; RelayConfigError names what cannot start there."""
    if task.outlets:
        raise refusal(
            task, "with outlets: a task started in the triggerer registers no asset events"
        )
    where = _where(task)
    spec = {
        "kind": kind,
        "inputs": {name: _marked(value, f"{where}: {name}") for name, value in inputs.items()},
        **{name: _plain(name, value) for name, value in settings.items()},
        "timeout": timeout,
        "grace": DEFER_GRACE.total_seconds(),
    }
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as exc:
        raise refusal(
            task, f"needs JSON inputs (they travel in the trigger's kwargs): {exc}"
        ) from None
    task.start_trigger_args = StartTriggerArgs(
        trigger_cls=CLASSPATH,
        trigger_kwargs={"spec": spec},
        next_method="execute_complete",
        next_kwargs=None,
        timeout=timedelta(seconds=timeout) + DEFER_GRACE,
    )
    task.start_from_trigger = True


def refusal(task: Any, reason: str) -> RelayConfigError:
    """The error saying why `task` cannot start in the triggerer."""
    return RelayConfigError(f"{_where(task)} {reason}")


def _where(task: Any) -> str:
    return f"{task.task_id}: start_in_triggerer=True"


def _marked(value: Any, where: str) -> Any:
    """`value` with each plain XComArg of a non-mapped task replaced by its marker."""
    from airflow.sdk.definitions.xcom_arg import PlainXComArg, XComArg

    if isinstance(value, PlainXComArg):
        if value.operator.is_mapped:
            raise RelayConfigError(
                f"{where} is an XComArg of the mapped task {value.operator.task_id}: the "
                "triggerer can read only a non-mapped task's XCom"
            )
        return {XCOM_MARKER: {"task_id": value.operator.task_id, "key": value.key}}
    if isinstance(value, XComArg):
        raise RelayConfigError(
            f"{where} is a {type(value).__name__} (.map/.zip/.concat): only a plain XComArg can "
            "be resolved in the triggerer"
        )
    if isinstance(value, Mapping):
        return {k: _marked(v, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_marked(v, where) for v in value]
    return value


def _plain(name: str, value: Any) -> Any:
    """A setting as JSON: timedeltas in seconds, an expiry as {"seconds"} or {"at"}."""
    if name == "expiry" and value is not None:
        if isinstance(value, timedelta):
            return {"seconds": value.total_seconds()}
        if isinstance(value, datetime):
            return {"at": value.isoformat()}
        raise RelayConfigError(f"expiry must be a datetime or timedelta, got {value!r}")
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def non_retryable_error(event: Mapping[str, Any] | None) -> Exception | None:
    """The non-retryable error RelayRequestTrigger asked the resuming worker to raise, if any."""
    if not isinstance(event, Mapping) or NON_RETRYABLE_EVENT not in event:
        return None
    sent = event[NON_RETRYABLE_EVENT]
    cls = _NON_RETRYABLE.get(str(sent.get("classpath")))
    if cls is None:
        raise RelayConfigError(f"not a relay non-retryable error: {sent!r:.300}")
    error: Exception = cls(*sent.get("args", ()), **sent.get("kwargs", {}))
    return error


def resume_wait(task: Any, context: Any, event: Mapping[str, Any]) -> Any:
    """A waiting task's execute_complete: raise the non-retryable error RelayRequestTrigger sent
    (a task started in the triggerer, failing without retries), else `task.finish_wait` with the
    outcome in RelayResultTrigger's event."""
    error = non_retryable_error(event)
    if error is not None:
        raise error
    topic = task.hook.topic_path(task.reply_topic)
    return task.finish_wait(context, WaitOutcome.from_event(event, completion_topic=topic))
